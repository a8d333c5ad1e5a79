"""A domain member as an `hqnlsd.commit.EventSink`, and the take-over as a command.

Real `DomainMember`s (real `DomainNode`, `EngineMachine`, `Engine`, in-memory
storage) on a `task.Clock`: a domain of one, which serves alone, and a member of
three whose peers never answer, which never serves. `DomainMember.commit` fires
once a quorum holds the events, or fails with exactly one of the typed outcomes;
`DomainRoute.refusal` reads without taking over, `DomainRoute.serve` takes over.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from hqnlsd.commit import EventSink, NotReplicated, OutcomeUnknown, Refused
from hqnlsd.domain.node import AuthorityLost, NotServing
from hqnlsd.domain.role import Refusal
from hqnlsd.domain.runtime import DomainMember, DomainRoute, DomainSpec, commit_failure
from hqnlsd.domain.storage import MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event
from hqnlsd.licensing.results import Grant, LicenceRequest
from hqnlsd.permits.model import ProductPermit
from hqnlsd.status import Status

PRODUCT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=0x01,
    node_count=0,
    floating_count=2,
    start=datetime.date(2020, 1, 1),
    expiry=datetime.date(2099, 12, 31),
    update_minutes=5,
)
ADDRESSES = tuple(ipaddress.IPv4Address(f"127.0.0.{n}") for n in (1, 2, 3))
#: Simulated time starts here (inside the permit's dates).
NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()


def member_of(size: int) -> tuple[DomainMember, Clock]:
    """A started member (rank 1) of a domain of ``size`` whose peers never answer."""
    clock = Clock()
    clock.advance(NOW)
    ranks = {address: rank for rank, address in enumerate(ADDRESSES[:size], 1)}
    spec = DomainSpec("the domain", ranks, (PRODUCT,))
    member = DomainMember(
        spec,
        ADDRESSES[0],
        clock,
        Engine(clock),
        MemoryStorage(),  # type: ignore[arg-type]
        lambda domain, to, message: None,
        DomainTimers(),
    )
    member.start()
    for _ in range(300):
        clock.advance(0.01)
    return member, clock


def serving() -> tuple[DomainMember, Clock]:
    """A domain of one that serves, taken over (its products loaded and confirmed)."""
    member, clock = member_of(1)
    assert DomainRoute(member).serve() is None, "a domain of one serves alone"
    clock.advance(0)
    return member, clock


def request(pid: int) -> LicenceRequest:
    """A request for PRODUCT from process ``pid``."""
    return LicenceRequest(
        "Harlequin", "LispWorks", "8.0", "alice", "alpha", pid, "10.0.0.1", client=f"t{pid}"
    )


def granted(member: DomainMember, pid: int) -> tuple[Event, ...]:
    """The events of a grant the member's engine decided (applied, not yet committed)."""
    outcome = member.engine.request(request(pid))
    assert isinstance(outcome.result, Grant), outcome.result
    return outcome.events


def outcome_of(member: DomainMember, events: Sequence[Event]) -> list[Any]:
    """Commit ``events`` through the member as an `EventSink`; the list gets the outcome."""
    sink: EventSink = member
    got: list[Any] = []
    sink.commit(events).addBoth(got.append)
    return got


def test_commit_fires_once_held_and_tells_the_listeners() -> None:
    """A commit fires with None once the domain holds the events; the listeners hear of
    them then (not before), and a commit of nothing waits for what came before it."""
    member, clock = serving()
    heard: list[tuple[str, tuple[Event, ...]]] = []
    member.event_listeners.append(lambda key, events: heard.append((key, tuple(events))))
    events = granted(member, 1)
    got = outcome_of(member, events)
    barrier = outcome_of(member, [])
    assert got == [] and barrier == [] and heard == []
    clock.advance(0)
    assert got == [None] and barrier == [None]
    assert heard == [("the domain", events)]
    assert outcome_of(member, []) == [None], "nothing pending: the barrier fires at once"


def test_commit_at_a_member_that_may_not_decide_is_refused_with_its_refusal() -> None:
    """At a member that does not serve, a commit (or a barrier) fails at once with
    `Refused` carrying the refusal of that moment; the engine forgets the events."""
    member, _ = member_of(3)
    route = DomainRoute(member)
    refusal = route.refusal()
    assert refusal is not None and refusal.status is Status.NOTVERIFIED
    member.engine.load_products([PRODUCT])
    events = granted(member, 1)
    for got in (outcome_of(member, events), outcome_of(member, [])):
        (failure,) = got
        assert isinstance(failure, Failure) and isinstance(failure.value, Refused), failure
        assert failure.value.refusal == refusal
        assert failure.value.domain == ADDRESSES
        assert isinstance(failure.value.__cause__, NotServing)
    assert member.engine.held_count() == 0, "a refused commit leaves nothing applied"


def test_commit_whose_authority_is_lost_has_an_unknown_outcome() -> None:
    """A member that stops being primary before the quorum holds the events fails the
    commit with `OutcomeUnknown` (they may or may not survive)."""
    member, _ = serving()
    got = outcome_of(member, granted(member, 1))
    member.node.stop()
    (failure,) = got
    assert isinstance(failure, Failure) and isinstance(failure.value, OutcomeUnknown), failure
    assert isinstance(failure.value.__cause__, AuthorityLost)
    assert failure.value.domain == (ADDRESSES[0],)


def test_any_other_failure_is_not_replicated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything else the node raises comes out as `NotReplicated`, the engine rebuilt
    without the events."""
    member, _ = serving()

    def broken(entries: Sequence[object]) -> None:
        raise RuntimeError("the log is broken")

    monkeypatch.setattr(member.node, "submit", broken)
    got = outcome_of(member, granted(member, 1))
    (failure,) = got
    assert isinstance(failure, Failure) and failure.check(NotReplicated), failure
    assert str(failure.value) == "the log is broken"
    assert member.engine.held_count() == 0


def test_commit_failure_types_each_node_error() -> None:
    """`commit_failure`: NotServing -> Refused (with the refusal given), the node's
    OutcomeUnknown -> OutcomeUnknown, anything else -> NotReplicated."""
    refusal = Refusal(Status.LOSTMASTER, "lost", ADDRESSES)
    info = DomainRoute(member_of(3)[0]).role()
    refused = commit_failure(NotServing(info), refusal, ADDRESSES)
    assert isinstance(refused, Refused) and refused.refusal is refusal
    unknown = commit_failure(AuthorityLost("gone"), refusal, ADDRESSES)
    assert isinstance(unknown, OutcomeUnknown) and str(unknown) == "gone"
    other = commit_failure(OSError("disk full"), refusal, ADDRESSES)
    assert isinstance(other, NotReplicated) and str(other) == "disk full"


def test_refusal_is_a_query_and_serve_takes_over() -> None:
    """`DomainRoute.refusal` only reads (no take-over); `DomainRoute.serve` takes over
    on its first call of the epoch, committing the take-over events, and not again."""
    member, clock = member_of(1)
    route = DomainRoute(member)
    assert route.refusal() is None and route.refusal() is None
    assert member.takeovers == 0 and member.engine.product("Harlequin", "LispWorks") is None
    assert route.serve() is None
    assert member.takeovers == 1
    assert member.engine.product("Harlequin", "LispWorks") is not None
    clock.advance(0)
    assert route.serve() is None and member.takeovers == 1
