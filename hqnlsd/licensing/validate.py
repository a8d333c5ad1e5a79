"""Pure validators of the engine's JSON forms: event dicts and snapshots.

What arrives from another domain member (a log entry, a state snapshot) is
checked here before the engine sees it: every field has the type and range
the engine produces, numbers are finite and exact in JSON and SQLite (below
2**53), counts and indices stay within what a permit can hold (so a restore
cannot be made to allocate without bound). `check_event_dict` and
`check_snapshot` raise `EventError` (a ``ValueError``) naming the field; they
never change anything. The engine's own semantic checks (a handle held twice,
indices not free) are made by restoring or applying on a scratch copy, see
`hqnlsd.domain.adapter.EngineMachine`.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
from collections.abc import Callable, Mapping

from hqnlsd.licensing.events import EVENT_TYPES, EventError, Reason
from hqnlsd.licensing.requester import REQUESTER_FIELDS
from hqnlsd.licensing.snapshot import SNAPSHOT_FORMAT
from hqnlsd.permits.format import MAX_LICENCES, MAX_UPDATE_MINUTES

#: Counters and sizes are below this: exact in a JSON double.
SAFE_INT = 2**53
#: Longest text field accepted in an event or snapshot (far beyond any the engine
#: makes: request fields are at most 256 characters; the bound keeps memory sane).
MAX_TEXT = 65536

Check = Callable[[object, str], None]


def _fail(where: str, why: str) -> EventError:
    return EventError(f"{where}: {why}")


def _brief(value: object) -> str:
    """At most 40 characters about ``value``, without recursing into containers."""
    if isinstance(value, str | int | float | bool) or value is None:
        try:
            return repr(value)[:40]
        except ValueError:  # an int of more digits than str() allows
            return type(value).__name__
    return f"a {type(value).__name__}"


def _int_in(low: int, high: int) -> Check:
    """An integer (not a bool) in ``low <= x < high``."""

    def check(value: object, where: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(where, f"must be an integer, not {type(value).__name__}")
        if not low <= value < high:
            raise _fail(where, f"must be in [{low}, {high}), not {_brief(value)}")

    return check


_whole = _int_in(0, SAFE_INT)
#: Numbers the engine does not bound itself (pid, uid, policy words): any 64-bit value.
#: The validator must never be stricter than the engine, or a backup would refuse
#: what its primary decided and replication would stall.
_word = _int_in(0, 2**64)
_count = _int_in(0, MAX_LICENCES + 1)
_index = _int_in(1, 2 * MAX_LICENCES + 1)
_id32 = _int_in(0, 2**32)
_level = _int_in(0, 9)


def _number(value: object, where: str) -> None:
    """A finite number (JSON has no infinity; the engine makes none)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _fail(where, f"must be a number, not {type(value).__name__}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        finite = False
    if not finite:
        raise _fail(where, f"must be a finite number, not {_brief(value)}")


def _text(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise _fail(where, f"must be text, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise _fail(where, f"longer than {MAX_TEXT} characters")


def _bool(value: object, where: str) -> None:
    if not isinstance(value, bool):
        raise _fail(where, f"must be true or false, not {type(value).__name__}")


def _address(value: object, where: str) -> None:
    _text(value, where)
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise _fail(where, "must be an IPv4 address") from None


def _date(value: object, where: str) -> None:
    _text(value, where)
    try:
        datetime.date.fromisoformat(value)  # type: ignore[arg-type]
    except ValueError:
        raise _fail(where, "must be an ISO date") from None


def _optional(check: Check) -> Check:
    def optional(value: object, where: str) -> None:
        if value is not None:
            check(value, where)

    return optional


def _list_of(check: Check, limit: int = SAFE_INT) -> Check:
    def listed(value: object, where: str) -> None:
        if not isinstance(value, list | tuple):
            raise _fail(where, f"must be a list, not {type(value).__name__}")
        if len(value) > limit:
            raise _fail(where, f"more than {limit} items")
        for number, item in enumerate(value):
            check(item, f"{where}[{number}]")

    return listed


def _pair(first: Check, second: Check) -> Check:
    def pair(value: object, where: str) -> None:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise _fail(where, "must be a pair")
        first(value[0], f"{where}[0]")
        second(value[1], f"{where}[1]")

    return pair


def _record(fields: Mapping[str, Check], *, optional: frozenset[str] = frozenset()) -> Check:
    """A dict with exactly ``fields`` (those in ``optional`` may be missing)."""

    def record(value: object, where: str) -> None:
        if not isinstance(value, Mapping):
            raise _fail(where, f"must be an object, not {type(value).__name__}")
        extra = [key for key in value if key not in fields]
        if extra:
            raise _fail(where, f"unknown field {_brief(extra[0])}")
        for name, check in fields.items():
            if name not in value:
                if name in optional:
                    continue
                raise _fail(where, f"missing field {name!r}")
            check(value[name], f"{where}.{name}")

    return record


def _reason(value: object, where: str) -> None:
    _text(value, where)
    if value not in {reason.value for reason in Reason}:
        raise _fail(where, f"unknown reason {_brief(value)}")


_indices = _list_of(_index, MAX_LICENCES)
_locked_node = _pair(_address, _id32)
_product = _record(
    {
        "publisher": _text,
        "product": _text,
        "version": _text,
        "policy": _word,
        "node_count": _count,
        "floating_count": _count,
        "start": _date,
        "expiry": _date,
        "update_minutes": _int_in(0, MAX_UPDATE_MINUTES + 1),
        "data": _list_of(_int_in(-(2**63), 2**64), MAX_LICENCES + 1),
        "locked_nodes": _list_of(_locked_node, MAX_LICENCES),
    }
)

#: A checker per annotation of an event's fields (``from __future__`` strings).
_BY_ANNOTATION: dict[str, Check] = {
    "str": _text,
    "int": _whole,
    "float": _number,
    "bool": _bool,
    "int | None": _optional(_whole),
    "str | None": _optional(_text),
    "float | None": _optional(_number),
    "tuple[int, ...]": _indices,
    "tuple[ProductPermit, ...]": _list_of(_product, 100_000),
}

#: The stored fields of a `Requester` (flat in a Granted event and in a holder).
_REQUESTER = {
    "user": _text,
    "host": _text,
    "address": _address,
    "pid": _word,
    "uid": _optional(_word),
    "group": _optional(_text),
    "hostid": _optional(_id32),
    "client": _optional(_text),
}
if tuple(_REQUESTER) != REQUESTER_FIELDS:  # pragma: no cover - a new field needs a checker
    raise RuntimeError(f"validate: requester checks {tuple(_REQUESTER)} != {REQUESTER_FIELDS}")

#: Checkers for fields whose range differs from their type's default.
_BY_FIELD: dict[tuple[str, str], Check] = {
    **{("Granted", name): check for name, check in _REQUESTER.items()},
    ("PolicyChanged", "flags"): _word,
    ("PolicyLocked", "locks"): _word,
    ("Granted", "access"): _level,
    ("Revoked", "reason"): _reason,
    ("LockedNodeAdded", "address"): _address,
    ("LockedNodeAdded", "unique_id"): _id32,
    ("LockedNodeRemoved", "address"): _address,
    ("LockedNodeRemoved", "unique_id"): _id32,
    ("PoolsResized", "node_count"): _count,
    ("PoolsResized", "floating_count"): _count,
    ("UserAccessSet", "level"): _optional(_level),
    ("GroupAccessSet", "level"): _optional(_level),
}


def _event_checks() -> dict[str, dict[str, Check]]:
    checks: dict[str, dict[str, Check]] = {}
    for name, cls in EVENT_TYPES.items():
        fields: dict[str, Check] = {}
        for field, annotation in cls.dict_fields():
            check = _BY_FIELD.get((name, field)) or _BY_ANNOTATION.get(annotation)
            if check is None:  # pragma: no cover - a new event type needs a checker
                raise RuntimeError(f"no validator for {name}.{field}: {annotation}")
            fields[field] = check
        checks[name] = fields
    return checks


_EVENTS = _event_checks()


def check_event_dict(data: object, where: str = "entry") -> None:
    """Check that ``data`` is the dict form of an event, every field in range.

    @raise EventError: naming the first field that is wrong.
    """
    if not isinstance(data, Mapping):
        raise _fail(where, f"an event is an object, not {type(data).__name__}")
    kind = data.get("type")
    fields = _EVENTS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise _fail(f"{where}.type", f"unknown event type {_brief(kind)}")
    _record({"type": _text, **fields})(data, where)


_settings = _record(
    {
        "flags": _optional(_word),
        "locks": _word,
        "crashout": _optional(_number),
        "timeout": _optional(_number),
        "counts": _optional(_pair(_count, _count)),
        "locked_nodes": _optional(_list_of(_locked_node, MAX_LICENCES)),
        "excluded": _list_of(_text),
        "named_users": _list_of(_text),
        "user_access": lambda value, where: _mapping(value, where),
        "group_access": lambda value, where: _mapping(value, where),
    },
    optional=frozenset(
        {
            "excluded",
            "named_users",
            "user_access",
            "group_access",
            "counts",
            "locked_nodes",
            "locks",
        }
    ),
)


def _mapping(value: object, where: str) -> None:
    if not isinstance(value, Mapping):
        raise _fail(where, f"must be an object, not {type(value).__name__}")
    for key, level in value.items():
        _text(key, f"{where} key")
        _level(level, f"{where}.{_brief(key)}")


_holder = _record(
    {
        "handle": _text,
        "indices": _indices,
        "locked": _bool,
        "on_locked_node": _bool,
        **_REQUESTER,
        "access": _level,
        "granted_at": _number,
        "last_update": _number,
    }
)


def _tombstone(value: object, where: str) -> None:
    if not isinstance(value, list | tuple) or len(value) != 5:
        raise _fail(where, "a tombstone is [handle, publisher, product, reason, at]")
    for number in range(3):
        _text(value[number], f"{where}[{number}]")
    _reason(value[3], f"{where}[3]")
    _number(value[4], f"{where}[4]")


_snapshot = _record(
    {
        "format": _int_in(SNAPSHOT_FORMAT, SNAPSHOT_FORMAT + 1),
        "latest": _number,
        "products": _list_of(
            _record({"permit": _product, "settings": _settings, "holders": _list_of(_holder)}),
            100_000,
        ),
        "tombstones": _list_of(_tombstone),
    }
)


def check_snapshot(data: object, where: str = "state") -> None:
    """Check that ``data`` has the form of an engine snapshot, every field in range.

    @raise EventError: naming the first field that is wrong.
    """
    _snapshot(data, where)
