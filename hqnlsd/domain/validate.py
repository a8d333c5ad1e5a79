"""Is a peer's message plausible for *this* member? The node's check before it acts.

`hqnlsd.domain.messages.check` (run by ``decode``) checks each field's type and
absolute range. This module checks the message against the receiving member:

- every rank it names (ballots, view members, origins) is a member of this
  domain, and a view's members are a non-empty subset of it;
- epochs are at most `MAX_EPOCH_JUMP` beyond this member's epoch, and ballot
  rounds at most `MAX_ROUND_JUMP` beyond the highest round it has seen, so a
  member cannot be pushed to the end of the number range (2**53), where the
  domain could elect no more;
- a value is complete (an epoch of 1 or more, the ballot that built it), and in
  an `Accept` or a `Promise` it is for the epoch the message is about;
- an `Ack` claims no more entries than this member (as primary) holds;
- a `Promise` the current candidacy uses starts within the candidate's log;
- every log batch passes the application's ``check_batch`` and every state
  snapshot that could be installed or accepted passes ``check_snapshot``
  (`hqnlsd.domain.node.StateMachine`). The snapshot check can be costly (the
  engine restores it on a scratch copy), so it runs only for a value this
  member would act on, after every cheaper check.

Everything here is pure: `problem` reads the node's facts from `Facts` and
returns a description of what is wrong (``"field: why"``), or None.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from hqnlsd.domain.messages import (
    Accept,
    Ack,
    Append,
    Decided,
    Message,
    MessageError,
    Promise,
    Refuse,
    check,
)
from hqnlsd.domain.view import Ballot, Batch, Value

#: The furthest an epoch in a message may be ahead of the receiver's (a member
#: that was down while the domain changed view 4 billion times is not expected).
MAX_EPOCH_JUMP = 2**32
#: The furthest a ballot round may be ahead of the highest round the receiver saw.
MAX_ROUND_JUMP = 2**32


class Checker(Protocol):
    """The application's validation hooks (part of `StateMachine`)."""

    def check_snapshot(self, snapshot: object) -> None:
        """Raise ValueError unless ``snapshot`` is a state this application can restore."""

    def check_batch(self, batch: Batch) -> None:
        """Raise ValueError unless every entry of ``batch`` is one the application applies."""


@dataclass(frozen=True)
class Facts:
    """What the receiving member knows that a message is judged against."""

    domain: frozenset[int]
    epoch: int
    max_round: int
    #: entries in this member's log of the current view
    log_length: int
    #: this member is the primary of its view (its Acks are counted)
    is_primary: bool
    #: the (epoch, ballot) of this member's candidacy while it collects promises
    candidacy: tuple[int, Ballot] | None


def _ballots(message: Message) -> Iterator[tuple[str, Ballot]]:
    if not isinstance(message, Decided | Append | Ack):
        yield "ballot", message.ballot
    if isinstance(message, Promise) and message.accepted_ballot is not None:
        yield "accepted_ballot", message.accepted_ballot
    if isinstance(message, Refuse) and message.promised is not None:
        yield "promised", message.promised
    value = _value_of(message)
    if value is not None and value[1].view.origin is not None:
        yield f"{value[0]}.view.origin", value[1].view.origin


def _value_of(message: Message) -> tuple[str, Value] | None:
    if isinstance(message, Accept | Decided):
        return "value", message.value
    if isinstance(message, Promise) and message.accepted_value is not None:
        return "accepted_value", message.accepted_value
    return None


def _epochs(message: Message) -> Iterator[tuple[str, int]]:
    if not isinstance(message, Decided):
        yield "epoch", message.epoch
    if isinstance(message, Refuse):
        yield "known_epoch", message.known_epoch
    value = _value_of(message)
    if value is not None:
        yield f"{value[0]}.view.epoch", value[1].view.epoch


def _batches(message: Message) -> tuple[str, tuple[Batch, ...]] | None:
    if isinstance(message, Append):
        return "batches", message.batches
    if isinstance(message, Promise):
        return "entries", message.entries
    return None


def _snapshot_needed(message: Message, facts: Facts) -> bool:
    """True if this member might install or accept the message's value."""
    if isinstance(message, Decided):
        return message.value.view.epoch > facts.epoch
    if isinstance(message, Accept):
        return message.epoch == facts.epoch + 1
    if isinstance(message, Promise):
        return facts.candidacy == (message.epoch, message.ballot)
    return False


def problem(message: Message, facts: Facts, app: Checker) -> str | None:
    """What makes ``message`` invalid for this member (``"field: why"``), or None."""
    try:
        check(message)
    except MessageError as error:
        return f"{error.field}: {error}"
    for field, ballot in _ballots(message):
        if ballot.rank not in facts.domain:
            return f"{field}: rank {ballot.rank} is not a member of this domain"
        if ballot.round > facts.max_round + MAX_ROUND_JUMP:
            return f"{field}: round {ballot.round} is implausibly far beyond {facts.max_round}"
    for field, epoch in _epochs(message):
        if epoch > facts.epoch + MAX_EPOCH_JUMP:
            return f"{field}: epoch {epoch} is implausibly far beyond {facts.epoch}"
    if isinstance(message, Promise) and (message.accepted_ballot is None) != (
        message.accepted_value is None
    ):
        return "accepted_value: accepted_ballot and accepted_value go together"
    value = _value_of(message)
    if value is not None:
        field, decided = value
        # Only epochs from 1 on are decided (epoch 0 is known to all), by a proposer.
        if decided.view.epoch < 1 or decided.view.origin is None:
            return f"{field}.view: epoch {decided.view.epoch} with origin {decided.view.origin}"
        if not decided.view.members <= facts.domain:
            strangers = sorted(decided.view.members - facts.domain)
            return f"{field}.view.members: ranks {strangers} are not members of this domain"
        if isinstance(message, Accept | Promise) and decided.view.epoch != message.epoch:
            return f"{field}.view.epoch: {decided.view.epoch} is not the message's {message.epoch}"
    if (
        isinstance(message, Ack)
        and facts.is_primary
        and message.epoch == facts.epoch
        and message.match > facts.log_length
    ):
        return f"match: {message.match} entries claimed, the primary holds {facts.log_length}"
    if (
        isinstance(message, Promise)
        and facts.candidacy == (message.epoch, message.ballot)
        and message.start > facts.log_length
    ):
        return f"start: {message.start} is beyond the candidate's {facts.log_length} entries"
    batches = _batches(message)
    if batches is not None:
        field, listed = batches
        for number, batch in enumerate(listed):
            try:
                app.check_batch(batch)
            except (ValueError, TypeError) as error:
                return f"{field}[{number}]: {_short(error)}"
    if value is not None and _snapshot_needed(message, facts):
        try:
            app.check_snapshot(value[1].state)
        except (ValueError, TypeError) as error:
            return f"{value[0]}.state: {_short(error)}"
    return None


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 160 else text[:157] + "..."

