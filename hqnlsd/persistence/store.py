"""The durable journal of licensing events: SQLite in WAL mode, group commit.

Shape: one snapshot of the engine's state plus the log of events applied since
(both in one database file, ``hqnlsd.sqlite3`` in ``--state-dir``). Starting up
= restore the snapshot, replay the log, then compact (write a fresh snapshot and
empty the log, in one transaction).

Serving: the caller applies events to the engine (the engine's commands do it)
and, *in the same reactor turn*, hands them to ``Journal.submit``, which returns
a Deferred. Every submission of a turn is taken on the next turn
(``clock.callLater(0, flush)``) as one *batch*, written in ONE transaction by the
journal's `Writer`; the Deferreds fire, in submission order, after the COMMIT
returns (errback on failure), and only then does the service answer the client.

The daemon's writer is a `ThreadWriter`: one thread of its own, so the commit and
its fsync run off the reactor thread and the reactor keeps parsing and answering
while the disk works. One batch is in flight at a time; whatever is submitted
meanwhile waits and is taken, all together, as the next batch once the previous
one is settled. Durability therefore costs one fsync per batch, not one per
request, and more requests share an fsync the busier the daemon is. Every use of
the SQLite connection (open, load, restore's compaction, the batches, close) runs
on the writer, one at a time, so nothing else touches it while a batch is written.
The default writer, `InlineWriter`, writes on the calling thread at once: the
same sequence of batches, deterministic under ``task.Clock`` (tests, tools).

``Journal.commit`` is the same as an `hqnlsd.commit.EventSink` (what the
dispatcher and the admin handler call): a failed commit fails with
`hqnlsd.commit.NotRecorded`.

What is durable when:

* A submission is durable when its Deferred fires with a result. With the
  default ``synchronous="FULL"`` that survives ``kill -9`` and power loss (the
  WAL is fsynced at each commit); with ``"NORMAL"`` it survives ``kill -9`` of
  the daemon but not a crash of the operating system.
* Events whose commit failed are NOT dropped: they stay queued ahead of newer
  ones and are written, in order, by the next successful commit (retried with
  backoff even if no new work comes). Their Deferreds errback (the client gets
  INTERNAL) but the disk never skips an event that the memory applied, so the
  log always replays to a prefix of the in-memory state.
* The database is opened in exclusive locking mode: a second daemon pointed at
  the same state directory fails at start-up instead of serving the same
  licences twice.

Compaction while serving writes ``engine.snapshot()`` (taken on the reactor
thread when the batch is taken) and deletes the log in the batch's transaction,
only when the number of events the engine has applied equals the number the
journal has been given (so the snapshot is exactly the log's state), and only
after ``max(compact_after, 4 x holders)`` events so its cost per event stays
constant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from hqnlsd.commit import NotRecorded
from hqnlsd.licensing.events import JSON, Event, EventError, event_from_dict
from hqnlsd.securefiles import UnsafePathError, open_private, require_regular_all, sqlite_files

#: The database file inside the state directory.
DATABASE_NAME = "hqnlsd.sqlite3"
#: Version of the schema below.
SCHEMA_VERSION = 1
#: Compact the log after at least this many events (more with many holders).
COMPACT_AFTER = 10_000
#: Retry delays after a failed commit: first, growth factor, ceiling (seconds).
RETRY_FIRST = 0.1
RETRY_FACTOR = 2.0
RETRY_MAX = 5.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS snapshot ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, written REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
)


def _connect(path: str) -> sqlite3.Connection:
    # Short busy timeout: the only contender for the lock is another daemon.
    return sqlite3.connect(path, timeout=0.5)


_T = TypeVar("_T")


class JournalError(Exception):
    """The journal could not read or write the durable state; the message says why."""


class Scheduler(Protocol):
    """What the journal needs of a reactor (``IReactorTime``; tests use ``task.Clock``)."""

    def seconds(self) -> float:
        """Now."""
        ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any) -> Any:
        """Call ``callable(*args)`` after ``delay`` seconds; returns an IDelayedCall."""
        ...


class Restorable(Protocol):
    """The engine, as the journal sees it."""

    applied: int

    def restore(self, state: dict[str, JSON]) -> None:
        """Replace the whole state with a snapshot."""
        ...

    def apply(self, event: Event) -> None:
        """Apply one event."""
        ...

    def snapshot(self) -> dict[str, JSON]:
        """The whole state, JSON-safe."""
        ...

    def held_count(self) -> int:
        """Licences held (sizes the compaction interval)."""
        ...


class Writer(Protocol):
    """Where the journal's SQLite work runs: one piece of work at a time, in order.

    `InlineWriter` runs it at once on the calling thread; `ThreadWriter` on a
    thread of its own, off the reactor.
    """

    def submit(self, work: Callable[[], None], done: Callable[[], None]) -> None:
        """Run ``work`` after what was submitted before, then ``done`` on the reactor
        thread. ``work`` must not raise (a batch records its own outcome)."""
        ...

    def call(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` after what was submitted before; wait for it and return its
        result (or raise its exception). For start-up and close, which may block."""
        ...

    def stop(self) -> None:
        """Wait for the work submitted and end (the journal is closed)."""
        ...


class InlineWriter:
    """A `Writer` that runs everything at once on the calling thread.

    The journal then commits on the reactor thread, as before issue 14: the
    default, so that tests driven by ``task.Clock`` stay deterministic.
    """

    def submit(self, work: Callable[[], None], done: Callable[[], None]) -> None:
        """Run ``work`` then ``done``, now."""
        work()
        done()

    def call(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` now."""
        return work()

    def stop(self) -> None:
        """Nothing to wait for."""


_log = Logger()

#: A piece of a `ThreadWriter`'s work: the work, and what to call on the reactor
#: thread after it (None for `ThreadWriter.call`, which waits for it instead).
_Work = tuple[Callable[[], None], Callable[[], None] | None]


class ThreadWriter:
    """A `Writer` with one thread of its own: the commits and their fsyncs run off
    the reactor thread; ``done`` comes back through ``reactor.callFromThread``.

    The thread takes work from a `queue.SimpleQueue` (a submission is one ``put``:
    no future, no lock, no executor bookkeeping on the reactor thread, which submits
    once per commit). It is started by the first piece of work (the journal's
    `Journal.open`, at start, after twistd has forked), not when the writer is
    made, and is a daemon thread: a process that exits without `stop` is not held
    up by it (SQLite's transactions keep the files whole).
    """

    def __init__(self, reactor: IReactorFromThreads, *, name: str = "hqnlsd-journal") -> None:
        self._reactor = reactor
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] | None = None
        self._thread: threading.Thread | None = None

    def _started(self) -> queue.SimpleQueue[_Work | None]:
        work = self._queue
        if work is None:
            work = self._queue = queue.SimpleQueue()
            # One thread: the SQLite connection is used from this thread only.
            self._thread = threading.Thread(
                target=self._run, args=(work,), name=self._name, daemon=True
            )
            self._thread.start()
        return work

    def _run(self, work: queue.SimpleQueue[_Work | None]) -> None:
        """The thread: each piece of work in turn until the end marker."""
        call_from_thread = self._reactor.callFromThread
        while (item := work.get()) is not None:
            task, done = item
            try:
                task()
            except BaseException:  # a bug (`submit`'s work records its own outcome)
                call_from_thread(self._report, Failure())
            if done is not None:
                call_from_thread(done)

    def _report(self, failure: Failure) -> None:
        """On the reactor thread: work given to `submit` raised."""
        _log.failure("{writer}: work raised", failure, writer=self._name)

    def submit(self, work: Callable[[], None], done: Callable[[], None]) -> None:
        """Queue ``work`` on the writer thread; ``done`` on the reactor thread after it."""
        self._started().put((work, done))

    def call(self, work: Callable[[], _T]) -> _T:
        """Queue ``work`` and block until it has run."""
        future: Future[_T] = Future()

        def task() -> None:
            try:
                future.set_result(work())
            except BaseException as error:
                future.set_exception(error)

        self._started().put((task, None))
        return future.result()

    def stop(self) -> None:
        """Wait for the queued work and join the thread."""
        work, thread = self._queue, self._thread
        if work is None or thread is None:
            return
        work.put(None)
        thread.join()
        self._queue = self._thread = None


def writer_for(reactor: object, name: str = "hqnlsd-journal") -> Writer:
    """The writer a daemon's journal (or a domain member's storage) should use with
    ``reactor``: a `ThreadWriter` (its thread called ``name``) for a real reactor, an
    `InlineWriter` for a fake one (``task.Clock``, ``MemoryReactor``), which cannot
    take calls from another thread."""
    if IReactorFromThreads.providedBy(reactor):
        return ThreadWriter(reactor, name=name)
    return InlineWriter()


@dataclasses.dataclass(slots=True)
class JournalStats:
    """Counters for logs, metrics and tests."""

    commits: int = 0
    events_written: int = 0
    failures: int = 0
    compactions: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RestoreReport:
    """What ``Journal.restore`` found on disk."""

    had_snapshot: bool
    replayed: int


def open_journal(
    state_dir: Path,
    clock: Scheduler,
    *,
    synchronous: str = "FULL",
    compact_after: int = COMPACT_AFTER,
    connect: Callable[[str], sqlite3.Connection] | None = None,
    writer: Writer | None = None,
) -> Journal:
    """Open (creating if needed, mode 0700 / 0600) the journal in ``state_dir``."""
    journal = Journal(
        state_dir / DATABASE_NAME,
        clock,
        synchronous=synchronous,
        compact_after=compact_after,
        connect=connect,
        writer=writer,
    )
    journal.open()
    return journal


@dataclasses.dataclass(eq=False, slots=True)
class _Batch:
    """Events taken together and written in one transaction, and who waits for them.

    ``work`` runs on the writer and records its outcome here; the journal settles
    the batch (fires or fails ``waiters``) on the reactor thread, exactly once.
    """

    events: list[Event]
    waiters: list[Deferred[None]]
    #: The snapshot to store in the same transaction (compaction), already encoded.
    snapshot: str | None = None
    written_at: float = 0.0
    error: BaseException | None = None
    settled: bool = False


class Journal:
    """Group-committed event log with snapshot (see the module docstring).

    Made without touching the disk: `open` creates and opens the database
    (`open_journal` does both at once).
    """

    log = Logger()
    _db: sqlite3.Connection

    def __init__(
        self,
        path: Path,
        clock: Scheduler,
        *,
        synchronous: str = "FULL",
        compact_after: int = COMPACT_AFTER,
        connect: Callable[[str], sqlite3.Connection] | None = None,
        writer: Writer | None = None,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = path
        self._clock = clock
        self._writer: Writer = writer if writer is not None else InlineWriter()
        self.compact_after = compact_after
        self.stats = JournalStats()
        self._engine: Restorable | None = None
        self._given = 0  # events the engine has applied that the journal knows of
        self._since_compaction = 0
        self._pending: list[Event] = []
        self._waiters: list[Deferred[None]] = []
        self._unwritten: list[Event] = []  # from failed commits, written first next time
        self._in_flight: _Batch | None = None  # the batch the writer has now, if any
        self._flush_call: Any = None
        self._retry_call: Any = None
        self._retry_delay = RETRY_FIRST
        self.last_error: BaseException | None = None
        #: Called with every submitted batch of events, before it is queued: the
        #: licence log and usage report see every change, whatever made it.
        self.listeners: list[Callable[[Sequence[Event]], None]] = []
        self._closed = False
        self._opened = False
        self._synchronous = synchronous.upper()
        self._connect = connect or _connect

    def open(self) -> None:
        """Create (mode 0700 / 0600) and open the database; JournalError says why not.

        Separate from the constructor so that the journal can be handed to what commits
        to it when the daemon is built, and its files created only at start, once
        twistd has shed its privileges (they then belong to the daemon's user).
        """
        path, state_dir = self.path, self.path.parent
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # SQLite follows links: nothing of ours in the state directory may be one.
            require_regular_all(sqlite_files(path))
            os.close(open_private(path, os.O_CREAT | os.O_RDWR))
        except UnsafePathError as error:
            raise JournalError(str(error)) from None
        except OSError as error:
            raise JournalError(
                f"cannot create the state database in {state_dir}: {error}"
            ) from None
        # Connected on the writer: the connection is used from that thread only.
        self._db = self._writer.call(lambda: self._open_database(path))
        self._opened = True

    def _open_database(self, path: Path) -> sqlite3.Connection:
        try:
            db = self._connect(str(path))
            db.isolation_level = None  # we issue BEGIN / COMMIT ourselves
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{path}: cannot use WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise JournalError(f"{path}: schema version {row[0]} is not {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.Error as error:
            message = str(error)
            if "locked" in message:
                message += " (is another hqnlsd using this state directory?)"
            raise JournalError(f"cannot open the state database {path}: {message}") from None
        return db

    # -- start-up -------------------------------------------------------------------

    def load(self) -> tuple[dict[str, JSON] | None, list[Event]]:
        """The stored snapshot (None if none yet) and the events logged after it."""
        row, rows = self._writer.call(self._read_all)
        snapshot = None
        if row is not None:
            try:
                snapshot = json.loads(row[0])
            except ValueError as error:
                raise JournalError(f"{self.path}: the snapshot is damaged: {error}") from None
        events = []
        for seq, body in rows:
            try:
                events.append(event_from_dict(json.loads(body)))
            except (ValueError, EventError) as error:
                raise JournalError(f"{self.path}: event {seq} is damaged: {error}") from None
        return snapshot, events

    def _read_all(self) -> tuple[Any, list[Any]]:
        try:
            row = self._db.execute("SELECT state FROM snapshot WHERE id = 1").fetchone()
            rows = self._db.execute("SELECT seq, body FROM events ORDER BY seq").fetchall()
        except sqlite3.Error as error:
            raise JournalError(f"cannot read {self.path}: {error}") from None
        return row, rows

    def restore(self, engine: Restorable) -> RestoreReport:
        """Load the durable state into ``engine``, compact, and journal for it from now on.

        Synchronous (the daemon serves nobody before it returns). A state that does
        not replay (a damaged file) raises JournalError: better to refuse to start
        than to serve licences already granted.
        """
        snapshot, events = self.load()
        try:
            if snapshot is not None:
                engine.restore(snapshot)
            for event in events:
                engine.apply(event)
        except EventError as error:
            raise JournalError(f"{self.path}: the stored state does not replay: {error}") from None
        self._engine = engine
        self._given = engine.applied
        self._compact_now()
        return RestoreReport(had_snapshot=snapshot is not None, replayed=len(events))

    # -- serving --------------------------------------------------------------------

    def submit(self, events: Sequence[Event]) -> Deferred[None]:
        """Queue events for the next group commit; the Deferred fires once they are durable.

        Call it in the same reactor turn as the engine command that produced the
        events. With no events, the Deferred waits for what was submitted before
        (the batch being written, the one queued), or for the events of a failed
        commit to be written, so an answer never overtakes the state it depends on.
        Deferreds fire in the order of their submissions.
        """
        if self._closed:
            raise JournalError("the journal is closed")
        if not self._opened:
            raise JournalError("the journal is not open yet")
        in_flight = self._in_flight
        queued = bool(self._pending or self._waiters)
        if not events and not queued:
            if in_flight is not None:
                # A barrier behind the batch being written: it shares that batch's fate.
                barrier: Deferred[None] = Deferred()
                in_flight.waiters.append(barrier)
                return barrier
            if not self._unwritten:
                return succeed(None)
        if events:
            for listener in self.listeners:
                try:
                    listener(events)
                except Exception:
                    # Observers must never cost a licence its durability.
                    self.log.failure("journal listener {listener!r} failed", listener=listener)
        self._pending.extend(events)
        self._given += len(events)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._flush_call is None and in_flight is None:
            self._flush_call = self._clock.callLater(0, self.flush)
        return waiter

    def commit(self, events: Sequence[Event]) -> Deferred[None]:
        """`submit`, as an `hqnlsd.commit.EventSink`: a failed commit fails with
        `NotRecorded` (the events stay queued and are retried, as for `submit`).

        @raise JournalError: if the journal is closed (nothing commits after
            `close`: a caller that still commits is wrong, not unlucky).
        """
        return self.submit(events).addErrback(_not_recorded)

    def flush(self) -> None:
        """Take everything queued now as one batch and hand it to the writer.

        With the `InlineWriter` the batch is written, and its Deferreds fired,
        before this returns. While a batch is being written this does nothing:
        what is queued is taken as soon as that batch is settled.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._in_flight is not None:
            return
        batch = self._take_batch()
        if batch is None:
            return
        self._in_flight = batch
        self._writer.submit(lambda: self._write(batch), lambda: self._settle(batch))

    @property
    def healthy(self) -> bool:
        """False from a failed commit until its events have been written."""
        return self.last_error is None

    def close(self) -> None:
        """Write what is queued (best effort), close the database and end the writer."""
        if self._closed:
            return
        if not self._opened:
            self._closed = True
            self._writer.stop()
            return
        in_flight = self._in_flight
        if in_flight is not None:
            self._writer.call(lambda: None)  # the writer has finished the batch
            self._settle(in_flight)
        batch = self._take_batch()
        if batch is not None:
            self._in_flight = batch
            self._writer.call(lambda: self._write(batch))
            self._settle(batch)
        for call in (self._flush_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._closed = True
        self._writer.call(self._db.close)
        self._writer.stop()

    # -- internals ------------------------------------------------------------------

    def _take_batch(self) -> _Batch | None:
        """What is queued, as the next batch; waiters with nothing to write fire now."""
        waiters, self._waiters = self._waiters, []
        events = self._unwritten + self._pending
        self._pending = []
        self._unwritten = []
        if not events:
            for waiter in waiters:
                waiter.callback(None)
            return None
        batch = _Batch(events, waiters)
        engine = self._engine
        if engine is not None:
            due = max(self.compact_after, 4 * engine.held_count())
            # Every event given is in this batch or already durable (one batch at a
            # time), so the engine's state now is exactly the log's after this batch.
            if self._since_compaction + len(events) >= due and engine.applied == self._given:
                batch.snapshot = _encode(engine.snapshot())
                batch.written_at = self._clock.seconds()
        return batch

    def _write(self, batch: _Batch) -> None:
        """On the writer: the batch in one transaction; the outcome kept in the batch."""
        try:
            rows = [
                (_encode(event.to_dict()),) for event in batch.events
            ]
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO events (body) VALUES (?)", rows)
                if batch.snapshot is not None:
                    self._store_snapshot(batch.snapshot, batch.written_at)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except Exception as error:  # sqlite3.Error, or an event that will not encode
            batch.error = error

    def _settle(self, batch: _Batch) -> None:
        """On the reactor thread: fire (or fail) the batch's Deferreds, in order, once."""
        if batch.settled:
            return
        batch.settled = True
        if self._in_flight is batch:
            self._in_flight = None
        error = batch.error
        if error is None:
            self.stats.commits += 1
            self.stats.events_written += len(batch.events)
            if batch.snapshot is not None:
                self.stats.compactions += 1
                self._since_compaction = 0
            else:
                self._since_compaction += len(batch.events)
            self.last_error = None
            self._retry_delay = RETRY_FIRST
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
            self._retry_call = None
            outcome: JournalError | None = None
        else:
            # Never dropped: written first by the next batch, ahead of anything newer.
            self._unwritten = batch.events + self._unwritten
            self.stats.failures += 1
            self.last_error = error
            self.log.error(
                "journal commit of {count} events failed ({error}); will retry",
                count=len(batch.events),
                error=str(error),
            )
            if not self._closed:
                self._schedule_retry()
            outcome = JournalError(f"could not write the licence state: {error}")
        for waiter in batch.waiters:
            if outcome is None:
                waiter.callback(None)
            else:
                waiter.errback(outcome)
        if (self._pending or self._waiters) and self._flush_call is None and not self._closed:
            self._flush_call = self._clock.callLater(0, self.flush)

    def _store_snapshot(self, body: str, written_at: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO snapshot (id, state, written) VALUES (1, ?, ?)",
            (body, written_at),
        )
        self._db.execute("DELETE FROM events")

    def _compact_now(self) -> None:
        engine = self._engine
        assert engine is not None
        body = _encode(engine.snapshot())
        written_at = self._clock.seconds()
        self._writer.call(lambda: self._write_snapshot(body, written_at))
        self._since_compaction = 0
        self.stats.compactions += 1

    def _write_snapshot(self, body: str, written_at: float) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            self._store_snapshot(body, written_at)
            db.execute("COMMIT")
        except sqlite3.Error as error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise JournalError(f"cannot write {self.path}: {error}") from None

    def _schedule_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            return
        delay = self._retry_delay
        self._retry_delay = min(self._retry_delay * RETRY_FACTOR, RETRY_MAX)
        self._retry_call = self._clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        if (
            self._unwritten
            and self._flush_call is None
            and self._in_flight is None
            and not self._closed
        ):
            self.flush()


# Made once: `json.dumps` with options builds a new encoder for every call. The
# same options as ``json.dumps(obj, separators=(",", ":"))``, so the same text.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _not_recorded(failure: Failure) -> None:
    """A failed group commit as the sinks' typed outcome (the cause chained)."""
    raise NotRecorded(str(failure.value)) from failure.value
