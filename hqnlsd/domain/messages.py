"""The messages domain members exchange, and their JSON-safe wire form.

The peer link (TLS, one line of JSON per message) is the daemon's business;
this module only says what is said. `encode` gives a dict of JSON types with a
``"type"`` key; `decode` checks it and gives the message back.

Paxos, one instance per epoch (deciding view ``epoch``):
`Prepare` -> `Promise` | `Refuse`; `Accept` -> `Accepted` | `Refuse`;
`Decided` announces the outcome and doubles as state transfer for a member that
is behind. Within a view: `Append` (entries and heartbeat, from the primary) ->
`Ack` (which also grants the primary its lease).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from hqnlsd.domain.membership import MAX_RANK
from hqnlsd.domain.view import SAFE_INT, Ballot, Batch, Value, View, brief, is_whole


class RefuseReason(enum.Enum):
    """Why an acceptor did not promise or accept."""

    #: it promised a higher ballot (``promised`` says which)
    BALLOT = "ballot"
    #: it granted a lease to the view's primary that has not run out (``wait`` s)
    LEASE = "lease"
    #: it restarted and may have granted a lease it no longer remembers
    QUARANTINE = "quarantine"
    #: it has not installed the previous view (``known_epoch`` says which it has)
    BEHIND = "behind"


@dataclass(frozen=True)
class Prepare:
    """Paxos phase 1a: a candidate asks for promises for deciding ``epoch``.

    ``have``: how many entries of the view the candidate holds, so promisers
    send only the entries beyond (the logs of a view are prefixes of each other).
    """

    epoch: int
    ballot: Ballot
    have: int = 0


@dataclass(frozen=True)
class Promise:
    """Paxos phase 1b: a promise, the last value accepted, and the view's entries.

    ``entries`` are the promiser's entries from index ``start`` on (``start`` is at
    most what the candidate said it holds: it has the ones before).
    """

    epoch: int
    ballot: Ballot
    accepted_ballot: Ballot | None
    accepted_value: Value | None
    entries: tuple[Batch, ...]
    start: int = 0

    @property
    def length(self) -> int:
        """How many entries of the view the promiser holds."""
        return self.start + len(self.entries)


@dataclass(frozen=True)
class Refuse:
    """An acceptor's refusal of a `Prepare` or `Accept`, with the reason."""

    epoch: int
    ballot: Ballot
    reason: RefuseReason
    promised: Ballot | None = None
    wait: float = 0.0
    known_epoch: int = 0


@dataclass(frozen=True)
class Accept:
    """Paxos phase 2a: a candidate asks acceptors to accept ``value``."""

    epoch: int
    ballot: Ballot
    value: Value


@dataclass(frozen=True)
class Accepted:
    """Paxos phase 2b: ``value`` accepted at ``ballot`` for ``epoch``."""

    epoch: int
    ballot: Ballot


@dataclass(frozen=True)
class Decided:
    """The decided value of an epoch: install this view and state."""

    value: Value


@dataclass(frozen=True)
class Append:
    """The primary's entries ``start``, ``start + 1``, ... of view ``epoch``.

    With no batches it is a heartbeat. ``sent_at`` is the primary's monotonic
    clock when it sent this, echoed back in the `Ack` to measure the lease.
    """

    epoch: int
    sent_at: float
    start: int
    batches: tuple[Batch, ...]
    commit: int


@dataclass(frozen=True)
class Ack:
    """A member's answer to an `Append`.

    ``match``: how many entries of view ``epoch`` it holds. ``granted``: it is
    a member of the view, holds them durably and grants the primary its lease
    from the moment it received ``sent_at``'s message. ``epoch`` is the member's
    own epoch, so a primary learns a member is behind from it.
    """

    epoch: int
    sent_at: float
    match: int
    granted: bool


Message = Union[Prepare, Promise, Refuse, Accept, Accepted, Decided, Append, Ack]  # noqa: UP007


class MessageError(ValueError):
    """A wire message that does not decode, or a field out of range.

    ``field`` names the offending field (``"epoch"``, ``"value.view.members"``...),
    for the log line that reports the drop.
    """

    def __init__(self, message: str, field: str = "message") -> None:
        """``message`` for people; ``field`` the field at fault."""
        super().__init__(message)
        self.field = field


#: Longest wait a `Refuse` may ask for, in seconds (a lease or a quarantine is a
#: few seconds; anything longer is a bug or an attack, and would stall a candidacy).
MAX_WAIT = 60.0


def _short(data: object) -> str:
    """At most 80 characters about ``data`` (`brief`): never a whole line echoed."""
    return brief(data, 80)


def _ballot(data: object, field: str) -> Ballot | None:
    try:
        return None if data is None else Ballot.from_json(data)
    except ValueError as error:
        raise MessageError(str(error), field) from None


def _required_ballot(data: dict[str, object], field: str) -> Ballot:
    ballot = _ballot(data.get(field), field)
    if ballot is None:
        raise MessageError(f"{field} is required", field)
    return ballot


def _value(data: object, field: str) -> Value:
    if not isinstance(data, dict) or "view" not in data or "state" not in data:
        raise MessageError(f"{field} must be an object with a view and a state", field)
    try:
        return Value(View.from_json(data["view"]), data["state"])
    except ValueError as error:
        raise MessageError(str(error), f"{field}.view") from None


def _ballot_json(ballot: Ballot | None) -> object:
    return None if ballot is None else ballot.to_json()


def _batches(data: object, field: str) -> tuple[Batch, ...]:
    if not isinstance(data, list) or not all(isinstance(batch, list) for batch in data):
        raise MessageError(f"{field} must be a list of lists, not {_short(data)}", field)
    return tuple(tuple(batch) for batch in data)


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    if not is_whole(value):
        raise MessageError(f"{key} must be an integer in [0, 2**53), not {_short(value)}", key)
    return value


def _float(data: dict[str, object], key: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MessageError(f"{key} must be a number, not {_short(value)}", key)
    if not math.isfinite(value) or abs(value) >= SAFE_INT:
        raise MessageError(f"{key} must be finite and below 2**53, not {_short(value)}", key)
    return float(value)


# -- checks of a message object (built here, or in process) ------------------------


def _check_int(value: object, field: str, low: int = 0, high: int = SAFE_INT) -> None:
    if not is_whole(value, low, high):
        raise MessageError(
            f"{field} must be an integer in [{low}, {high}), not {_short(value)}", field
        )


def _check_float(value: object, field: str, low: float = -SAFE_INT, high: float = SAFE_INT) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise MessageError(
            f"{field} must be a finite number in [{low}, {high}], not {_short(value)}", field
        )


def _check_ballot(ballot: object, field: str) -> None:
    if not isinstance(ballot, Ballot):
        raise MessageError(f"{field} must be a ballot, not {_short(ballot)}", field)
    _check_int(ballot.round, f"{field}.round")
    _check_int(ballot.rank, f"{field}.rank", 1, MAX_RANK + 1)


def _check_value(value: object, field: str) -> None:
    if not isinstance(value, Value) or not isinstance(value.view, View):
        raise MessageError(f"{field} must be a decided value, not {_short(value)}", field)
    view = value.view
    _check_int(view.epoch, f"{field}.view.epoch")
    if view.origin is not None:
        _check_ballot(view.origin, f"{field}.view.origin")
    members = view.members
    if (
        not isinstance(members, frozenset)
        or not members
        or not all(is_whole(rank, 1, MAX_RANK + 1) for rank in members)
    ):
        raise MessageError(f"{field}.view.members must be 1 to 20 ranks", f"{field}.view.members")


def _check_batches(batches: object, field: str) -> None:
    if not isinstance(batches, tuple) or not all(isinstance(batch, tuple) for batch in batches):
        raise MessageError(f"{field} must be a sequence of batches", field)


def check(message: object) -> None:
    """Check the type and range of every field of ``message``.

    Integers are in ``[0, 2**53)`` (exact in JSON and SQLite), ranks in 1..20,
    numbers finite, ``wait`` at most `MAX_WAIT`. Whether ranks are members of
    *this* domain, epochs plausible against ours and values complete is the
    receiving node's check (`hqnlsd.domain.validate`).

    @raise MessageError: naming the first field that is wrong.
    """
    if isinstance(message, Prepare | Promise | Refuse | Accept | Accepted):
        _check_int(message.epoch, "epoch")
        _check_ballot(message.ballot, "ballot")
    if isinstance(message, Prepare):
        _check_int(message.have, "have")
    elif isinstance(message, Promise):
        if message.accepted_ballot is not None:
            _check_ballot(message.accepted_ballot, "accepted_ballot")
        if message.accepted_value is not None:
            _check_value(message.accepted_value, "accepted_value")
        _check_batches(message.entries, "entries")
        _check_int(message.start, "start")
    elif isinstance(message, Refuse):
        if not isinstance(message.reason, RefuseReason):
            raise MessageError(f"unknown reason {_short(message.reason)}", "reason")
        if message.promised is not None:
            _check_ballot(message.promised, "promised")
        _check_float(message.wait, "wait", 0.0, MAX_WAIT)
        _check_int(message.known_epoch, "known_epoch")
    elif isinstance(message, Accept | Decided):
        _check_value(message.value, "value")
    elif isinstance(message, Append):
        _check_int(message.epoch, "epoch")
        _check_float(message.sent_at, "sent_at")
        _check_int(message.start, "start")
        _check_batches(message.batches, "batches")
        _check_int(message.commit, "commit")
    elif isinstance(message, Ack):
        _check_int(message.epoch, "epoch")
        _check_float(message.sent_at, "sent_at")
        _check_int(message.match, "match")
        if not isinstance(message.granted, bool):
            raise MessageError("granted must be a boolean", "granted")
    elif not isinstance(message, Accepted):
        raise MessageError(f"not a domain message: {type(message).__name__}", "type")


def encode(message: Message) -> dict[str, object]:
    """The JSON-safe wire form of ``message``."""
    if isinstance(message, Prepare):
        return {
            "type": "prepare",
            "epoch": message.epoch,
            "ballot": message.ballot.to_json(),
            "have": message.have,
        }
    if isinstance(message, Promise):
        return {
            "type": "promise",
            "epoch": message.epoch,
            "ballot": message.ballot.to_json(),
            "accepted_ballot": _ballot_json(message.accepted_ballot),
            "accepted_value": None
            if message.accepted_value is None
            else message.accepted_value.to_json(),
            "entries": [list(batch) for batch in message.entries],
            "start": message.start,
        }
    if isinstance(message, Refuse):
        return {
            "type": "refuse",
            "epoch": message.epoch,
            "ballot": message.ballot.to_json(),
            "reason": message.reason.value,
            "promised": _ballot_json(message.promised),
            "wait": message.wait,
            "known_epoch": message.known_epoch,
        }
    if isinstance(message, Accept):
        return {
            "type": "accept",
            "epoch": message.epoch,
            "ballot": message.ballot.to_json(),
            "value": message.value.to_json(),
        }
    if isinstance(message, Accepted):
        return {"type": "accepted", "epoch": message.epoch, "ballot": message.ballot.to_json()}
    if isinstance(message, Decided):
        return {"type": "decided", "value": message.value.to_json()}
    if isinstance(message, Append):
        return {
            "type": "append",
            "epoch": message.epoch,
            "sent_at": message.sent_at,
            "start": message.start,
            "batches": [list(batch) for batch in message.batches],
            "commit": message.commit,
        }
    return {
        "type": "ack",
        "epoch": message.epoch,
        "sent_at": message.sent_at,
        "match": message.match,
        "granted": message.granted,
    }


def _decode_prepare(data: dict[str, object]) -> Message:
    return Prepare(_int(data, "epoch"), _required_ballot(data, "ballot"), _count(data, "have"))


def _decode_promise(data: dict[str, object]) -> Message:
    value = data.get("accepted_value")
    return Promise(
        _int(data, "epoch"),
        _required_ballot(data, "ballot"),
        _ballot(data.get("accepted_ballot"), "accepted_ballot"),
        None if value is None else _value(value, "accepted_value"),
        _batches(data.get("entries"), "entries"),
        _count(data, "start"),
    )


def _count(data: dict[str, object], key: str) -> int:
    """A non-negative whole number; 0 if absent (a peer that predates the field)."""
    if key not in data:
        return 0
    return _int(data, key)


def _decode_refuse(data: dict[str, object]) -> Message:
    try:
        reason = RefuseReason(data.get("reason"))
    except ValueError:
        raise MessageError(f"unknown reason {_short(data.get('reason'))}", "reason") from None
    return Refuse(
        _int(data, "epoch"),
        _required_ballot(data, "ballot"),
        reason,
        _ballot(data.get("promised"), "promised"),
        _float(data, "wait"),
        _int(data, "known_epoch"),
    )


def _decode_accept(data: dict[str, object]) -> Message:
    return Accept(
        _int(data, "epoch"),
        _required_ballot(data, "ballot"),
        _value(data.get("value"), "value"),
    )


def _decode_accepted(data: dict[str, object]) -> Message:
    return Accepted(_int(data, "epoch"), _required_ballot(data, "ballot"))


def _decode_decided(data: dict[str, object]) -> Message:
    return Decided(_value(data.get("value"), "value"))


def _decode_append(data: dict[str, object]) -> Message:
    return Append(
        _int(data, "epoch"),
        _float(data, "sent_at"),
        _int(data, "start"),
        _batches(data.get("batches"), "batches"),
        _int(data, "commit"),
    )


def _decode_ack(data: dict[str, object]) -> Message:
    granted = data.get("granted")
    if not isinstance(granted, bool):
        raise MessageError(f"granted must be a boolean, not {_short(granted)}", "granted")
    return Ack(_int(data, "epoch"), _float(data, "sent_at"), _int(data, "match"), granted)


_DECODERS: dict[str, Callable[[dict[str, object]], Message]] = {
    "prepare": _decode_prepare,
    "promise": _decode_promise,
    "refuse": _decode_refuse,
    "accept": _decode_accept,
    "accepted": _decode_accepted,
    "decided": _decode_decided,
    "append": _decode_append,
    "ack": _decode_ack,
}


def decode(data: object) -> Message:
    """The message whose wire form (see `encode`) is ``data``.

    Every field is checked for type and range (`check`).

    @raise MessageError: for anything that is not a well-formed message.
    """
    if not isinstance(data, dict):
        raise MessageError(f"a message is a JSON object, not {_short(data)}", "message")
    kind = data.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise MessageError(f"unknown message type {_short(kind)}", "type")
    try:
        message = decoder(data)
    except MessageError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise MessageError(_short(str(error)), "message") from None
    check(message)
    return message
