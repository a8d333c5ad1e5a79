"""Message-level tests of one DomainNode: the acceptor and candidate rules.

The node is driven by hand with a `task.Clock` and a list that captures what
it sends, so each Paxos and lease rule is checked in isolation.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from hqnlsd.domain.messages import (
    Accept,
    Accepted,
    Ack,
    Append,
    Message,
    Prepare,
    Promise,
    Refuse,
    RefuseReason,
)
from hqnlsd.domain.node import DomainNode
from hqnlsd.domain.storage import MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Ballot, Value, View
from tests.sim.app import LicencePool

DOMAIN = frozenset({1, 2, 3})
VIEW1 = View(1, DOMAIN, Ballot(1, 1))


def member(
    rank: int, storage: MemoryStorage | None = None, wait_quarantine: bool = True
) -> tuple[DomainNode, Clock, list[tuple[int, Message]]]:
    """Member ``rank`` of a three-member domain, installed in VIEW1 (primary 1).

    It never stands on its own (long election timeout) unless told its primary
    is gone; by default its restart quarantine is over when it is returned.
    """
    if storage is None:
        storage = MemoryStorage()
        storage.save_view(VIEW1, {"held": []})
    clock = Clock()
    sent: list[tuple[int, Message]] = []
    node = DomainNode(
        rank,
        DOMAIN,
        clock,
        lambda to, message: sent.append((to, message)),
        storage,
        LicencePool(3),
        DomainTimers(election_timeout=100.0),
    )
    node.start()
    if wait_quarantine:
        clock.advance(2.1)
    sent.clear()
    return node, clock, sent


def replies(sent: list[tuple[int, Message]], to: int) -> list[Message]:
    """What was sent to ``to``, emptying the capture."""
    found = [message for rank, message in sent if rank == to]
    sent.clear()
    return found


def test_backup_grants_lease_and_refuses_rivals_until_it_ends() -> None:
    """An acknowledged Append binds the backup for `lease`; then it promises."""
    node, clock, sent = member(2)
    node.receive(1, Append(1, 50.0, 0, ((["grant", "a"],),), 0))
    assert replies(sent, 1) == [], "no Ack before the entry is durable (group commit)"
    clock.advance(0)
    assert replies(sent, 1) == [Ack(1, 50.0, 1, True)]
    node.receive(3, Prepare(2, Ballot(5, 3)))
    (refusal,) = replies(sent, 3)
    assert isinstance(refusal, Refuse)
    assert refusal.reason is RefuseReason.LEASE
    assert 1.9 < refusal.wait <= 2.0
    clock.advance(2.0)
    node.receive(3, Prepare(2, Ballot(5, 3)))
    (promise,) = replies(sent, 3)
    assert isinstance(promise, Promise)
    assert promise.entries == ((["grant", "a"],),)
    # Having promised, it never helps view 1 commit again.
    node.receive(1, Append(1, 53.0, 1, ((["grant", "b"],),), 0))
    assert replies(sent, 1) == [Ack(1, 53.0, 1, False)]


def test_primary_may_prepare_despite_its_own_lease() -> None:
    """The lease binds a member against *other* candidates, not the primary's hand-over."""
    node, _, sent = member(2)
    node.receive(1, Append(1, 50.0, 0, (), 0))
    sent.clear()
    node.receive(1, Prepare(2, Ballot(2, 1)))
    assert isinstance(replies(sent, 1)[0], Promise)


def test_lower_ballot_refused_with_the_promised_one() -> None:
    """Paxos: after promising b, a lower ballot is refused, naming b."""
    node, _, sent = member(2)
    node.receive(3, Prepare(2, Ballot(7, 3)))
    sent.clear()
    node.receive(1, Prepare(2, Ballot(6, 1)))
    (refusal,) = replies(sent, 1)
    assert isinstance(refusal, Refuse)
    assert (refusal.reason, refusal.promised) == (RefuseReason.BALLOT, Ballot(7, 3))
    node.receive(1, Accept(2, Ballot(6, 1), Value(View(2, DOMAIN, Ballot(6, 1)), {"held": []})))
    assert isinstance(replies(sent, 1)[0], Refuse)


def test_promise_reports_the_accepted_value_and_it_survives_restart() -> None:
    """An accepted value is durable and reported to every later candidate."""
    storage = MemoryStorage()
    storage.save_view(VIEW1, {"held": []})
    node, _, sent = member(2, storage)
    value = Value(View(2, frozenset({2, 3}), Ballot(4, 3)), {"held": ["x"]})
    node.receive(3, Accept(2, Ballot(4, 3), value))
    assert replies(sent, 3) == [Accepted(2, Ballot(4, 3))]
    node.stop()
    again, _, sent = member(2, storage)
    again.receive(1, Prepare(2, Ballot(9, 1)))
    (promise,) = replies(sent, 1)
    assert isinstance(promise, Promise)
    assert (promise.accepted_ballot, promise.accepted_value) == (Ballot(4, 3), value)


def test_restarted_backup_is_quarantined() -> None:
    """A backup restarted in someone else's view refuses promises for one lease."""
    storage = MemoryStorage()
    storage.save_view(VIEW1, {"held": []})
    node, _, sent = member(2, storage, wait_quarantine=False)
    node.receive(3, Prepare(2, Ballot(5, 3)))
    (refusal,) = replies(sent, 3)
    assert isinstance(refusal, Refuse)
    assert refusal.reason is RefuseReason.QUARANTINE


def test_candidate_reproposes_the_highest_accepted_value() -> None:
    """Paxos phase 2: a candidate that learns of an accepted value proposes it."""
    node, clock, sent = member(3)
    node.disconnected(1)
    clock.advance(10.0)  # primary silent, no lease bound: 3 stands
    prepares = [m for _, m in sent if isinstance(m, Prepare)]
    assert prepares
    ballot = prepares[0].ballot
    sent.clear()
    theirs = Value(View(2, frozenset({1, 2}), Ballot(0, 2)), {"held": ["kept"]})
    node.receive(2, Promise(2, ballot, Ballot(0, 2), theirs, ()))
    accepts = [m for _, m in sent if isinstance(m, Accept)]
    assert accepts
    assert all(m.value == theirs for m in accepts)


def test_candidate_builds_state_from_the_longest_log() -> None:
    """Without accepted values the new state is the base plus the longest log."""
    node, clock, sent = member(3)
    node.disconnected(1)
    clock.advance(10.0)
    ballot = next(m.ballot for _, m in sent if isinstance(m, Prepare))
    sent.clear()
    log = ((["grant", "a"],), (["grant", "b"],))
    node.receive(2, Promise(2, ballot, None, None, log))
    accept = next(m for _, m in sent if isinstance(m, Accept))
    assert accept.value.view == View(2, frozenset({2, 3}), ballot)
    assert accept.value.state == {"held": ["a", "b"]}


def test_appends_of_one_turn_share_one_write_and_one_ack() -> None:
    """Group commit at a backup: two Appends in one reactor turn are written once and
    acknowledged once, with the later Append's time and both entries."""
    storage = MemoryStorage()
    storage.save_view(VIEW1, {"held": []})
    node, clock, sent = member(2, storage)
    writes = storage.writes
    node.receive(1, Append(1, 50.0, 0, ((["grant", "a"],),), 0))
    node.receive(1, Append(1, 50.5, 1, ((["grant", "b"],),), 0))
    assert replies(sent, 1) == [] and storage.writes == writes
    clock.advance(0)
    assert replies(sent, 1) == [Ack(1, 50.5, 2, True)]
    assert storage.writes == writes + 1
    durable = storage.load()
    assert durable is not None and len(durable.entries) == 2


def test_submissions_of_one_turn_share_one_write() -> None:
    """Group commit at a primary: submissions in one turn are written once, and none is
    confirmed before that write."""
    storage = MemoryStorage()
    clock = Clock()
    node = DomainNode(1, frozenset({1}), clock, lambda to, m: None, storage, LicencePool(9))
    node.start()
    for _ in range(300):
        clock.advance(0.01)
    assert node.can_serve
    writes = storage.writes
    confirmed: list[object] = []
    for n in range(5):
        node.submit([["grant", f"h{n}"]]).addCallback(confirmed.append)
    assert confirmed == [] and storage.writes == writes
    clock.advance(0)
    assert confirmed == [None] * 5
    assert storage.writes == writes + 1
    node.stop()
