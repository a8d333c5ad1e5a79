"""One line of ``usage.jsonl`` as a typed record, or `MalformedRecord`.

The records are the ones `hqnlsd.logging.usage.UsageReport` writes. Their text
fields came from the network (user, host, product...): they are kept exactly as
decoded, and escaped by whoever shows them. A line of a kind this reader does
not know (a newer daemon's) parses to None; anything else that is not a
well-formed record of its kind raises `MalformedRecord`, with what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

#: The revocation reasons that are reclaims (housekeeping taking a licence back to
#: give it to someone else), as opposed to an administrator's or a permit's doing.
RECLAIM_REASONS = frozenset({"crashout", "timeout", "locked-priority", "named-user"})


class MalformedRecord(ValueError):
    """A line that is not a well-formed usage record."""


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A licence given: ``units`` licence numbers of one product."""

    at: float
    publisher: str
    product: str
    handle: str
    units: int
    user: str | None
    host: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class End:
    """A licence given back (``kind`` release) or taken back (revoked, with ``reason``).

    What it held (product, units, holder, ``held_seconds``) is null when the daemon
    did not know it.
    """

    at: float
    kind: str
    handle: str
    reason: str | None
    publisher: str | None
    product: str | None
    units: int | None
    user: str | None
    host: str | None
    held_seconds: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Denial:
    """A REQUEST refused."""

    at: float
    publisher: str | None
    product: str | None
    status: str
    reason: str | None
    user: str | None
    host: str | None
    address: str | None
    pid: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class DenialRow:
    """One line of a `DenialCount`: ``count`` denials of one product and status."""

    publisher: str | None
    product: str | None
    status: str
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class DenialCount:
    """Denials of one address in an interval counted, not recorded one by one."""

    at: float
    since: float | None
    address: str | None
    count: int
    rows: tuple[DenialRow, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RoleChange:
    """A daemon's role in a domain changed (a failover or a failback)."""

    at: float
    domain: str | None
    role: str
    previous: str | None
    rank: int | None
    epoch: int | None


Record = Grant | End | Denial | DenialCount | RoleChange


#: The times a record may carry (2000-01-01 to 2100-01-01 UTC, epoch seconds): a
#: record far outside them (a damaged or forged line) would stretch the hourly and
#: daily series over centuries.
EARLIEST = 946_684_800.0
LATEST = 4_102_444_800.0


def parse_record(line: str) -> Record | None:
    """The record on ``line`` (None for an unknown kind); `MalformedRecord` if bad."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError) as error:
        raise MalformedRecord(f"not JSON ({error})") from None
    if not isinstance(raw, dict):
        raise MalformedRecord("not a JSON object")
    fields = _Fields(raw)
    event = fields.text("event")
    at = fields.number("at")
    parse = _KINDS.get(event)
    if parse is None:
        return None
    if not EARLIEST <= at < LATEST:
        raise MalformedRecord("'at' is not a time from 2000 to 2099")
    return parse(fields, at, event)


class _Fields:
    """Typed access to a record's fields: a wrong or missing one is `MalformedRecord`."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def _get(self, name: str, optional: bool) -> Any:
        if name not in self.raw and not optional:
            raise MalformedRecord(f"no {name!r} field")
        return self.raw.get(name)

    def text(self, name: str) -> str:
        value = self._get(name, False)
        if not isinstance(value, str):
            raise MalformedRecord(f"{name!r} is not a string")
        return value

    def maybe_text(self, name: str) -> str | None:
        value = self._get(name, True)
        if value is not None and not isinstance(value, str):
            raise MalformedRecord(f"{name!r} is not a string or null")
        return value

    def number(self, name: str) -> float:
        value = self._get(name, False)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedRecord(f"{name!r} is not a number")
        if not math.isfinite(value):
            raise MalformedRecord(f"{name!r} is not a finite number")
        return float(value)

    def maybe_number(self, name: str) -> float | None:
        return None if self._get(name, True) is None else self.number(name)

    def count(self, name: str) -> int:
        value = self._get(name, False)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MalformedRecord(f"{name!r} is not a count")
        return value

    def maybe_int(self, name: str) -> int | None:
        value = self._get(name, True)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise MalformedRecord(f"{name!r} is not an integer or null")
        return value

    def units(self, optional: bool) -> int | None:
        value = self._get("indices", optional)
        if value is None and optional:
            return None
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)
        ):
            raise MalformedRecord("'indices' is not a list of licence numbers")
        return len(value)


def _grant(fields: _Fields, at: float, event: str) -> Grant:
    units = fields.units(False)
    assert units is not None
    return Grant(
        at=at,
        publisher=fields.text("publisher"),
        product=fields.text("product"),
        handle=fields.text("handle"),
        units=units,
        user=fields.maybe_text("user"),
        host=fields.maybe_text("host"),
    )


def _end(fields: _Fields, at: float, event: str) -> End:
    held = fields.maybe_number("held_seconds")
    if held is not None and held < 0:
        raise MalformedRecord("'held_seconds' is negative")
    if held is not None and at - held < EARLIEST:
        raise MalformedRecord("'held_seconds' reaches back before 2000")
    return End(
        at=at,
        kind=event,
        handle=fields.text("handle"),
        reason=fields.text("reason") if event == "revoked" else None,
        publisher=fields.maybe_text("publisher"),
        product=fields.maybe_text("product"),
        units=fields.units(True),
        user=fields.maybe_text("user"),
        host=fields.maybe_text("host"),
        held_seconds=held,
    )


def _denial(fields: _Fields, at: float, event: str) -> Denial:
    return Denial(
        at=at,
        publisher=fields.maybe_text("publisher"),
        product=fields.maybe_text("product"),
        status=fields.text("status"),
        reason=fields.maybe_text("reason"),
        user=fields.maybe_text("user"),
        host=fields.maybe_text("host"),
        address=fields.maybe_text("address"),
        pid=fields.maybe_int("pid"),
    )


def _denials(fields: _Fields, at: float, event: str) -> DenialCount:
    rows_raw = fields._get("denials", False)
    if not isinstance(rows_raw, list):
        raise MalformedRecord("'denials' is not a list")
    rows = []
    for item in rows_raw:
        if not isinstance(item, dict):
            raise MalformedRecord("a row of 'denials' is not an object")
        row = _Fields(item)
        rows.append(
            DenialRow(
                publisher=row.maybe_text("publisher"),
                product=row.maybe_text("product"),
                status=row.text("status"),
                count=row.count("count"),
            )
        )
    count = fields.count("count")
    if sum(row.count for row in rows) != count:
        raise MalformedRecord("the counts of 'denials' do not add up to 'count'")
    return DenialCount(
        at=at,
        since=fields.maybe_number("since"),
        address=fields.maybe_text("address"),
        count=count,
        rows=tuple(rows),
    )


def _role(fields: _Fields, at: float, event: str) -> RoleChange:
    return RoleChange(
        at=at,
        domain=fields.maybe_text("domain"),
        role=fields.text("role"),
        previous=fields.maybe_text("previous"),
        rank=fields.maybe_int("rank"),
        epoch=fields.maybe_int("epoch"),
    )


_KINDS: dict[str, Callable[[_Fields, float, str], Record]] = {
    "grant": _grant,
    "release": _end,
    "revoked": _end,
    "denial": _denial,
    "denials": _denials,
    "role": _role,
}


def identity(record: Record) -> tuple[Any, ...]:
    """What makes ``record`` one transaction, wherever it was read.

    A licence's handle is unique (64 random bits, replicated with the licence in a
    domain), and a licence is granted once and ends once: a grant is known by its
    handle, an end (release or revocation) by its handle. A denial, a summary of
    denials and a role change have no handle: they are the same transaction only
    if every field, the time (full precision) included, is the same.
    """
    if isinstance(record, Grant):
        return ("grant", record.handle)
    if isinstance(record, End):
        return ("end", record.handle)
    return (type(record).__name__, record)
