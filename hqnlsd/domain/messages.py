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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from hqnlsd.domain.view import Ballot, Batch, Value


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
    """A wire message that does not decode."""


def _ballot(data: object) -> Ballot | None:
    return None if data is None else Ballot.from_json(data)


def _ballot_json(ballot: Ballot | None) -> object:
    return None if ballot is None else ballot.to_json()


def _batches(data: object) -> tuple[Batch, ...]:
    if not isinstance(data, list) or not all(isinstance(batch, list) for batch in data):
        raise MessageError(f"entries must be a list of lists, not {data!r}")
    return tuple(tuple(batch) for batch in data)


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(f"{key} must be an integer in {data!r}")
    return value


def _float(data: dict[str, object], key: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MessageError(f"{key} must be a number in {data!r}")
    return float(value)


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
    return Prepare(_int(data, "epoch"), Ballot.from_json(data.get("ballot")), _count(data, "have"))


def _decode_promise(data: dict[str, object]) -> Message:
    value = data.get("accepted_value")
    return Promise(
        _int(data, "epoch"),
        Ballot.from_json(data.get("ballot")),
        _ballot(data.get("accepted_ballot")),
        None if value is None else Value.from_json(value),
        _batches(data.get("entries")),
        _count(data, "start"),
    )


def _count(data: dict[str, object], key: str) -> int:
    """A non-negative whole number; 0 if absent (a peer that predates the field)."""
    if key not in data:
        return 0
    value = _int(data, key)
    if value < 0:
        raise MessageError(f"{key} must not be negative in {data!r}")
    return value


def _decode_refuse(data: dict[str, object]) -> Message:
    return Refuse(
        _int(data, "epoch"),
        Ballot.from_json(data.get("ballot")),
        RefuseReason(data.get("reason")),
        _ballot(data.get("promised")),
        _float(data, "wait"),
        _int(data, "known_epoch"),
    )


def _decode_accept(data: dict[str, object]) -> Message:
    return Accept(
        _int(data, "epoch"),
        Ballot.from_json(data.get("ballot")),
        Value.from_json(data.get("value")),
    )


def _decode_accepted(data: dict[str, object]) -> Message:
    return Accepted(_int(data, "epoch"), Ballot.from_json(data.get("ballot")))


def _decode_decided(data: dict[str, object]) -> Message:
    return Decided(Value.from_json(data.get("value")))


def _decode_append(data: dict[str, object]) -> Message:
    return Append(
        _int(data, "epoch"),
        _float(data, "sent_at"),
        _int(data, "start"),
        _batches(data.get("batches")),
        _int(data, "commit"),
    )


def _decode_ack(data: dict[str, object]) -> Message:
    granted = data.get("granted")
    if not isinstance(granted, bool):
        raise MessageError(f"granted must be a boolean in {data!r}")
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

    @raise MessageError: for anything that is not a well-formed message.
    """
    if not isinstance(data, dict):
        raise MessageError(f"a message is a JSON object, not {data!r}")
    kind = data.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise MessageError(f"unknown message type {kind!r}")
    try:
        return decoder(data)
    except MessageError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise MessageError(str(error)) from error
