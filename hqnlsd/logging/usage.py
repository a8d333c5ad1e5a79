"""The usage report: one JSON object per line for every licence transaction.

``usage.jsonl`` in the state directory, append-only, records (``"event"``):

=========  ===============================================================
grant      a licence given (handle, indices, type, who, where)
release    a licence given back by its holder
denial     a REQUEST refused: ``status``, ``code`` and the ``reason`` text
denials    REQUESTs refused beyond the burst of one address in an interval,
           counted, not recorded one by one (see below)
revoked    a licence taken back: ``reason`` crashout, timeout,
           locked-priority, named-user (the reclaims), killed, reinit, ...
role       this server's role in a domain changed (a failover or failback)
=========  ===============================================================

Every record has ``ts`` (ISO 8601 UTC) and ``at`` (seconds since the epoch,
from the injected clock), then the fields of its kind, always all of them
(``null`` when unknown) so that a reader sees one schema per kind.

The first 20 denials of a source address in an interval (60 s; ``[limits]
denials-logged`` and ``log-interval``) are ``denial`` records; the others are
counted (`hqnlsd.logging.denials`) and, when the interval ends, written as ONE
``denials`` record per address: ``address`` (null for the addresses beyond the
256 tracked per interval, counted together), ``sources`` (1, or how many such
addresses, counted up to 4,096), ``count`` (the denials it counts), ``interval``
(seconds), ``since`` (``at`` of the address's first denial in the interval;
the record's ``at`` is the interval's end) and ``denials``: a list of
``{"publisher", "product", "version", "status", "code", "count"}``, most
frequent first, whose counts add up to ``count``. Past 32 distinct
(publisher, product, version, status) for one address, denials are counted by
status alone (publisher, product and version null). So the ``denial`` records
and the ``count`` of the ``denials`` records add up to every REQUEST refused.

Writing never holds the reactor for long: records are queued in memory and
written on the next reactor turn, one ``os.write`` for the whole batch (at most
``batch_lines`` lines a turn; the rest on the following turns). Nothing is
buffered in user space, so a record is in the operating system once its batch
is written; the report is not fsynced (licence state is made durable by the
journal, not by this report). When the file reaches ``max_bytes`` it is rotated
(``usage.jsonl`` -> ``.1`` -> ... -> ``.<backups>``, the oldest dropped). If
the disk refuses a write, the records wait (at most ``max_pending``; beyond that
the oldest are dropped and counted) and the write is retried later.

Values a client supplied (user, host, product...) are JSON strings, and every
character of them that is not printable (controls, DEL, U+2028, bidi
overrides...) is written as a ``\\uXXXX`` escape (`json_line`): a record is
always exactly one line of printable text, however a reader splits lines, and
decodes to the exact value sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from twisted.logger import Logger

from hqnlsd.licensing.requester import Requester
from hqnlsd.securefiles import open_private

#: The report's file name inside the state directory.
USAGE_FILE = "usage.jsonl"
#: Rotate when the file reaches this size (bytes).
MAX_BYTES = 16 * 1024 * 1024
#: Rotated files kept (``usage.jsonl.1`` .. ``usage.jsonl.N``).
BACKUPS = 5
#: Lines written per reactor turn at most.
BATCH_LINES = 2000
#: Records kept in memory while the disk refuses writes; beyond, the oldest go.
MAX_PENDING = 100_000
#: Seconds before retrying after a failed write.
RETRY_SECONDS = 5.0


def _json_escape(ch: str) -> str:
    point = ord(ch)
    if point < 0x10000:
        return f"\\u{point:04x}"
    point -= 0x10000  # a UTF-16 surrogate pair, as JSON writes it
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


# Made once: `json.dumps` with options builds a new encoder for every record.
# The same options as ``json.dumps(record, separators=(",", ":"), ensure_ascii=False)``.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def iso_stamp(when: float) -> str:
    """``when`` as the report's ``ts``: what
    ``datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")`` gives."""
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")


#: The start of the last second `datetime` can show (9999-12-31T23:59:59).
_LAST_SECOND = 253_402_300_799.0


class StampCache:
    """`iso_stamp`, the date and time of day made once per second.

    The milliseconds are those `datetime.fromtimestamp` shows: its microseconds,
    ``when``'s fraction of a second times a million rounded half to even (the
    same double and the same rounding as CPython's), truncated to milliseconds
    by ``isoformat``. A time whose microseconds round up into the next second,
    a negative time or one that is not a float goes to `iso_stamp` itself.
    """

    def __init__(self) -> None:
        self._second = -1.0
        self._prefix = ""

    def __call__(self, when: float) -> str:
        if type(when) is not float or not 0.0 <= when < _LAST_SECOND:
            return iso_stamp(when)
        fraction, second = math.modf(when)
        micro = round(fraction * 1e6)
        if micro >= 1_000_000:
            return iso_stamp(when)
        if second != self._second:
            whole = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._prefix = whole.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{micro // 1000:03d}+00:00"


def json_line(record: dict[str, Any]) -> str:
    """``record`` as compact JSON on one line of printable text (UTF-8 kept readable).

    `json.dumps` escapes the C0 controls; any other character that is not
    printable can only be inside a string, where ``\\uXXXX`` means the same.
    """
    text = _ENCODER.encode(record)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def requester_fields(who: Requester | None, *, group: bool = False) -> dict[str, Any]:
    """The requester's part of a record (and of a licence line), in record order:
    ``user``, ``uid``, (``group``,) ``host``, ``address``, ``pid``; all null for
    a requester the caller does not know."""
    if who is None:
        return dict.fromkeys(_WHO_WITH_GROUP if group else _WHO, None)
    if group:
        return {
            "user": who.user,
            "uid": who.uid,
            "group": who.group,
            "host": who.host,
            "address": who.address,
            "pid": who.pid,
        }
    return {
        "user": who.user,
        "uid": who.uid,
        "host": who.host,
        "address": who.address,
        "pid": who.pid,
    }


_WHO = ("user", "uid", "host", "address", "pid")
_WHO_WITH_GROUP = ("user", "uid", "group", "host", "address", "pid")


class Clock(Protocol):
    """What the report needs of a reactor (``IReactorTime``; tests use ``task.Clock``)."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""
        ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any) -> Any:
        """Call ``callable(*args)`` after ``delay`` seconds; returns an IDelayedCall."""
        ...


@dataclasses.dataclass(slots=True)
class UsageStats:
    """Counters for logs, metrics and tests."""

    records: int = 0
    written: int = 0
    batches: int = 0
    rotations: int = 0
    dropped: int = 0
    write_errors: int = 0


class UsageReport:
    """Appends usage records to ``<directory>/usage.jsonl`` (see the module doc)."""

    log = Logger()

    def __init__(
        self,
        directory: Path,
        clock: Clock,
        *,
        name: str = USAGE_FILE,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
        batch_lines: int = BATCH_LINES,
        max_pending: int = MAX_PENDING,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        if max_bytes < 1 or backups < 0 or batch_lines < 1 or max_pending < 1:
            raise ValueError("usage report: sizes must be positive (backups may be 0)")
        self.path = Path(directory) / name
        self._clock = clock
        self.max_bytes = max_bytes
        self.backups = backups
        self.batch_lines = batch_lines
        self.max_pending = max_pending
        self.retry_seconds = retry_seconds
        self.stats = UsageStats()
        self._pending: deque[str] = deque()
        self._unwritten = b""  # the tail of a batch a failed write left behind
        self._fd: int | None = None
        self._size = 0
        self._call: Any = None
        self._closed = False
        self._failing = False
        self._stamped_at: float | None = None  # the time `_stamp` shows
        self._stamp = ""
        self._stamps = StampCache()

    # -- records ----------------------------------------------------------------------

    def grant(
        self,
        *,
        publisher: str,
        product: str,
        version: str | None,
        handle: str,
        indices: Sequence[int],
        licence_type: str | None,
        who: Requester,
        at: float | None = None,
    ) -> None:
        """A licence was given to ``who``."""
        if self._refused("grant"):
            return
        when, stamp = self._time(at)
        # One literal in the record's order (a hot path: every licence given).
        self._add(
            {
                "ts": stamp,
                "at": when,
                "event": "grant",
                "publisher": publisher,
                "product": product,
                "version": version,
                "handle": handle,
                "indices": list(indices),
                "type": licence_type,
                "user": who.user,
                "uid": who.uid,
                "group": who.group,
                "host": who.host,
                "address": who.address,
                "pid": who.pid,
            }
        )

    def release(
        self,
        *,
        publisher: str | None,
        product: str | None,
        version: str | None,
        handle: str,
        indices: Sequence[int] | None,
        who: Requester | None,
        held_seconds: float | None = None,
        at: float | None = None,
    ) -> None:
        """A holder (``who``, None if unknown) gave its licence back (``held_seconds``
        since the grant, if known)."""
        if self._refused("release"):
            return
        when, stamp = self._time(at)
        record = {
            "ts": stamp,
            "at": when,
            "event": "release",
            "publisher": publisher,
            "product": product,
            "version": version,
            "handle": handle,
            "indices": None if indices is None else list(indices),
        }
        record.update(requester_fields(who))
        record["held_seconds"] = held_seconds
        self._add(record)

    def denial(
        self,
        *,
        publisher: str,
        product: str,
        version: str | None,
        status: str,
        code: int | None,
        reason: str,
        who: Requester,
        at: float | None = None,
    ) -> None:
        """A REQUEST from ``who`` was refused: ``status`` name, numeric ``code``,
        ``reason`` text."""
        self._record(
            "denial",
            at,
            publisher=publisher,
            product=product,
            version=version,
            status=status,
            code=None if code is None else f"{code:#x}",
            reason=reason,
            **requester_fields(who),
        )

    def denials(
        self,
        *,
        address: str | None,
        sources: int,
        count: int,
        interval: float,
        since: float,
        rows: Sequence[dict[str, Any]],
        at: float | None = None,
    ) -> None:
        """Denials from ``address`` counted, not recorded one by one (see the module doc)."""
        self._record(
            "denials",
            at,
            address=address,
            sources=sources,
            count=count,
            interval=interval,
            since=since,
            denials=[
                {**row, "code": None if row["code"] is None else f"{row['code']:#x}"}
                for row in rows
            ],
        )

    def revoked(
        self,
        *,
        publisher: str | None,
        product: str | None,
        version: str | None,
        handle: str,
        indices: Sequence[int] | None,
        reason: str,
        who: Requester | None,
        held_seconds: float | None = None,
        at: float | None = None,
    ) -> None:
        """A licence was taken back from ``who`` (None if unknown; ``reason``: a
        `hqnlsd.licensing.events.Reason`)."""
        self._record(
            "revoked",
            at,
            publisher=publisher,
            product=product,
            version=version,
            handle=handle,
            indices=None if indices is None else list(indices),
            reason=reason,
            **requester_fields(who),
            held_seconds=held_seconds,
        )

    def role(
        self,
        *,
        domain: str,
        role: str,
        previous: str | None,
        rank: int | None,
        epoch: int | None,
        primary: int | None,
        reason: str = "",
        at: float | None = None,
    ) -> None:
        """This server's role in ``domain`` (its members' addresses) changed."""
        self._record(
            "role",
            at,
            domain=domain,
            role=role,
            previous=previous,
            rank=rank,
            epoch=epoch,
            primary=primary,
            reason=reason,
        )

    def _record(self, kind: str, at: float | None, **fields: Any) -> None:
        if self._refused(kind):
            return
        when, stamp = self._time(at)
        record = {"ts": stamp, "at": when, "event": kind}
        record.update(fields)
        self._add(record)

    def _refused(self, kind: str) -> bool:
        if self._closed:
            self.log.warn("usage report closed; {kind} record not written", kind=kind)
        return self._closed

    def _time(self, at: float | None) -> tuple[float, str]:
        """The record's time (``at``, or now) and its ISO stamp."""
        when = self._clock.seconds() if at is None else at
        if when != self._stamped_at:
            # The records of one batch of events share their time: one stamp for all.
            self._stamp = self._stamps(when)
            self._stamped_at = when
        return when, self._stamp

    def _add(self, record: dict[str, Any]) -> None:
        self._pending.append(json_line(record))
        self.stats.records += 1
        if len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.stats.dropped += 1
        if self._call is None and not self._failing:
            self._call = self._clock.callLater(0, self.flush)

    # -- writing ----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    def flush(self, *, everything: bool = False) -> None:
        """Write one batch (``everything``: all pending records) now."""
        self._call = None
        try:
            while True:
                self._write_batch()
                if not self._pending or not everything:
                    break
        except OSError as error:
            self._failed(error)
            return
        if self._failing:
            self._failing = False
            self.log.info("usage report {path} is written again", path=str(self.path))
        if self._pending and self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def _write_batch(self) -> None:
        if not self._unwritten:
            count = min(self.batch_lines, len(self._pending))
            if count == 0:
                return
            lines = [self._pending.popleft() for _ in range(count)]
            self._unwritten = ("\n".join(lines) + "\n").encode("utf-8")
            self.stats.written += count
            fd = self._open()
            if self._size and self._size + len(self._unwritten) > self.max_bytes:
                # Rotate before, not after: the live file never passes the limit
                # (unless one batch alone does) and is never left empty.
                self._rotate()
        fd = self._open()
        while self._unwritten:
            done = os.write(fd, self._unwritten)
            self._unwritten = self._unwritten[done:]
            self._size += done
        self.stats.batches += 1

    def _open(self) -> int:
        if self._fd is None:
            # Never through a link or into a FIFO someone put in its place.
            self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _rotate(self) -> None:
        self._close_fd()
        if self.backups == 0:
            os.unlink(self.path)
        else:
            for number in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if os.path.lexists(older):
                    os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.stats.rotations += 1

    def _failed(self, error: OSError) -> None:
        self.stats.write_errors += 1
        self._close_fd()
        if not self._failing:
            # Once per outage, not once per retry: a full disk must not flood the log.
            self.log.warn(
                "usage report {path}: {error}; {pending} record(s) kept, retrying every {retry}s",
                path=str(self.path),
                error=str(error),
                pending=len(self._pending),
                retry=self.retry_seconds,
            )
        self._failing = True
        if not self._closed and self._call is None:
            self._call = self._clock.callLater(self.retry_seconds, self.flush)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Write everything still pending (best effort) and close the file."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._closed = True
        try:
            while self._pending or self._unwritten:
                self._write_batch()
        except OSError as error:
            self.stats.write_errors += 1
            self.log.warn(
                "usage report {path}: {error}; {pending} record(s) lost at close",
                path=str(self.path),
                error=str(error),
                pending=len(self._pending),
            )
        self._close_fd()
