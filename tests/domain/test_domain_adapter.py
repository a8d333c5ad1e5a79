"""Tests of hqnlsd.domain.adapter: the real licence engine replicated by DomainNodes.

Three members with real `Engine`s are wired through the simulated network
(`tests.sim.network`) on one `task.Clock`: grants decided on the primary are
applied there once (not twice), reach the backups, and survive the primary's
death; a refused submission leaves the engine as the node believes it is.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from hqnlsd.domain.adapter import EngineMachine, entry_of, event_of
from hqnlsd.domain.node import DomainNode, NotServing, OutcomeUnknown
from hqnlsd.domain.storage import MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Batch
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import EventError, Granted
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.results import Denied, Grant, LicenceRequest, Outcome, UpdateAck
from hqnlsd.permits.model import ProductPermit
from hqnlsd.status import Status
from tests.sim.network import SimNetwork

#: 2026-05-31, inside the product's validity; the engine's wall clock.
EPOCH = 1_780_000_000.0
PRODUCT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=0x41,
    node_count=0,
    floating_count=2,
    start=datetime.date(2026, 1, 1),
    expiry=datetime.date(2030, 12, 31),
    update_minutes=5,
)
RANKS = frozenset({1, 2, 3})


class WallClock:
    """The engine's wall clock: a fixed date plus the shared test clock."""

    def __init__(self, clock: Clock) -> None:
        """Follow ``clock``."""
        self.clock = clock

    def seconds(self) -> float:
        """Now, as wall-clock seconds."""
        return EPOCH + self.clock.seconds()


def request(pid: int, client: str | None = None) -> LicenceRequest:
    """A floating-licence REQUEST from process ``pid``."""
    return LicenceRequest(
        publisher=PRODUCT.publisher,
        product=PRODUCT.product,
        version=PRODUCT.version,
        user="alice",
        host="box",
        pid=pid,
        address="10.0.0.9",
        client=client,
    )


def updating(handle: str) -> Callable[[Engine], Outcome[UpdateAck | Denied]]:
    """The engine command UPDATE ``handle``."""
    return lambda engine: engine.update(handle)


class Domain:
    """Three members with real engines on a simulated network."""

    def __init__(self) -> None:
        """Start all three members."""
        self.clock = Clock()
        self.network = SimNetwork(self.clock, RANKS, random.Random(4), lambda: None)
        self.storage = {rank: MemoryStorage() for rank in RANKS}
        self.nodes: dict[int, DomainNode] = {}
        self.machines: dict[int, EngineMachine] = {}
        for rank in sorted(RANKS):
            self.start(rank)

    def start(self, rank: int) -> None:
        """(Re)start member ``rank`` from its storage with a fresh engine."""
        machine = EngineMachine(Engine(WallClock(self.clock)))
        network = self.network

        def send(to: int, message: object, rank: int = rank) -> None:
            network.send(rank, to, message)  # type: ignore[arg-type]

        node = DomainNode(
            rank, RANKS, self.clock, send, self.storage[rank], machine, DomainTimers()
        )
        self.nodes[rank], self.machines[rank] = node, machine
        node.start()
        network.attach(rank, node)

    def crash(self, rank: int) -> None:
        """SIGKILL member ``rank``: only its storage survives."""
        self.network.detach(rank)
        self.nodes.pop(rank).stop()
        del self.machines[rank]

    def serving(self) -> list[int]:
        """The members that may grant right now."""
        return [rank for rank, node in self.nodes.items() if node.can_serve]

    def run_until(self, condition: Callable[[], bool], limit: float) -> float:
        """Advance simulated time in small steps until ``condition``; the time it took."""
        started = self.clock.seconds()
        while not condition():
            assert len(self.serving()) <= 1, "two members serving at once"
            if self.clock.seconds() - started > limit:
                raise AssertionError(f"not within {limit} simulated seconds")
            self.clock.advance(0.01)
        return self.clock.seconds() - started

    def primary(self, limit: float) -> int:
        """Wait for a serving member, make it take over with the product; its rank."""
        self.run_until(lambda: len(self.serving()) == 1, limit)
        (rank,) = self.serving()
        self.settle(self.machines[rank].take_over(self.nodes[rank], [PRODUCT]))
        return rank

    def settle(self, deferred: Deferred[Any]) -> object:
        """Run the clock until ``deferred`` has fired; its result (or raise its failure)."""
        results: list[object] = []
        deferred.addBoth(results.append)
        self.run_until(lambda: bool(results), 6.0)
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def grant(self, rank: int, pid: int) -> Grant | Denied:
        """Decide a REQUEST on member ``rank`` and wait until it is confirmed."""
        machine = self.machines[rank]
        node = self.nodes[rank]
        decided = machine.decide(node, node.can_serve, lambda engine: engine.request(request(pid)))
        assert decided is not None
        result = self.settle(decided)
        assert isinstance(result, Grant | Denied)
        return result


def test_grants_survive_the_primarys_death() -> None:
    """Confirmed grants reach every backup and are still held after a fail-over."""
    domain = Domain()
    first = domain.primary(limit=12.0)
    assert first == 1
    handles = []
    for pid in (101, 102):
        grant = domain.grant(first, pid)
        assert isinstance(grant, Grant)
        handles.append(grant.handle)
    refused = domain.grant(first, 103)
    assert isinstance(refused, Denied) and refused.status is Status.NOLICENCES
    domain.run_until(lambda: all(m.engine.held_count() == 2 for m in domain.machines.values()), 2.0)

    domain.crash(first)
    took = domain.run_until(lambda: len(domain.serving()) == 1, 5.0)
    assert took < 5.0
    second = domain.primary(limit=1.0)
    assert second != first
    engine = domain.machines[second].engine
    assert {h.handle for h in engine.holders(PRODUCT.publisher, PRODUCT.product)} == set(handles)  # type: ignore[union-attr]
    for handle in handles:
        update = domain.machines[second].decide(domain.nodes[second], True, updating(handle))
        assert update is not None
        assert not isinstance(domain.settle(update), Denied)
    still_full = domain.grant(second, 104)
    assert isinstance(still_full, Denied) and still_full.status is Status.NOLICENCES

    domain.start(first)
    back = domain.run_until(lambda: domain.nodes[first].can_serve, 15.0)
    assert back < 15.0
    domain.settle(domain.machines[first].take_over(domain.nodes[first], [PRODUCT]))
    assert domain.machines[first].engine.held_count() == 2, "failback keeps the licences"


def test_the_primary_applies_its_own_decision_once() -> None:
    """The engine applied the grant when deciding; the node's apply does not repeat it."""
    domain = Domain()
    rank = domain.primary(limit=12.0)
    machine = domain.machines[rank]
    before = machine.engine.applied
    grant = domain.grant(rank, 7)
    assert isinstance(grant, Grant)
    assert machine.engine.applied == before + 1  # one Granted, applied once
    assert machine.engine.held_count() == 1
    assert machine.rebuilds == 0


def test_a_refused_submission_leaves_no_trace() -> None:
    """NotServing after the engine decided: the engine is rebuilt without the grant."""
    clock = Clock()
    machine = EngineMachine(Engine(WallClock(clock)))
    node = DomainNode(1, RANKS, clock, lambda to, m: None, MemoryStorage(), machine)
    node.start()
    loaded = machine.engine.load_products([PRODUCT])
    # Pretend the products were replicated before (a backup's engine after an Append).
    machine.apply([entry_of(event) for event in loaded.events])
    outcome = machine.engine.request(request(1))
    assert isinstance(outcome.result, Grant)
    assert machine.engine.held_count() == 1
    failures: list[Failure] = []
    machine.replicate_applied(node, outcome.events).addErrback(failures.append)
    assert failures and failures[0].check(NotServing)
    assert machine.engine.held_count() == 0
    assert machine.engine.product(PRODUCT.publisher, PRODUCT.product) == PRODUCT
    assert machine.rebuilds == 1
    assert machine.decide(node, node.can_serve, lambda e: e.request(request(2))) is None
    node.stop()


def test_failing_storage_is_never_confirmed() -> None:
    """A storage error at the group write: the submission is not confirmed (its
    outcome is unknown, the client retries with its token); once the disk works
    again the entry is written, and nothing was confirmed that was not durable."""

    class Flaky(MemoryStorage):
        """Memory storage whose appends fail while ``broken`` is set."""

        broken = False

        def append(self, start: int, batches: Sequence[Batch]) -> None:
            if self.broken:
                raise OSError("disk full")
            super().append(start, batches)

    clock = Clock()
    storage = Flaky()
    machine = EngineMachine(Engine(WallClock(clock)))
    node = DomainNode(1, frozenset({1}), clock, lambda to, m: None, storage, machine)
    node.start()
    for _ in range(300):
        clock.advance(0.01)
    assert node.can_serve, "a domain of one serves alone"
    loaded: list[object] = []
    machine.take_over(node, [PRODUCT]).addBoth(loaded.append)
    clock.advance(0)
    assert loaded == [None]
    storage.broken = True
    outcome = machine.engine.request(request(1))
    assert isinstance(outcome.result, Grant)
    results: list[object] = []
    machine.replicate_applied(node, outcome.events).addBoth(results.append)
    for _ in range(10):
        clock.advance(0.05)
    assert results == [], "confirmed without a durable copy"
    before = storage.load()
    assert before is not None and len(before.entries) == 1, "only the take-over is durable"
    for _ in range(int(node.timers.submit_timeout / 0.05) + 2):
        clock.advance(0.05)
    (failure,) = results
    assert isinstance(failure, Failure) and failure.check(OutcomeUnknown)
    storage.broken = False
    for _ in range(5):
        clock.advance(0.05)
    durable = storage.load()
    assert durable is not None and len(durable.entries) == 2, "written once the disk works"
    node.stop()


def test_entries_are_plain_json() -> None:
    """An entry is the event's dict form with lists, and it decodes back to the event."""
    event = Granted(
        handle="abc",
        publisher="P",
        product="Q",
        indices=(1, 2),
        locked=False,
        on_locked_node=False,
        who=Requester(user="u", host="h", address="10.0.0.1", pid=3),
        access=8,
        at=EPOCH,
    )
    entry = entry_of(event)
    assert json.loads(json.dumps(entry)) == entry
    assert entry["indices"] == [1, 2]
    assert event_of(entry) == event
    with pytest.raises(EventError):
        event_of(["not", "a", "dict"])


def test_restore_refuses_what_is_not_a_snapshot() -> None:
    """A state that is not an engine snapshot is refused, not half-installed."""
    machine = EngineMachine(Engine(WallClock(Clock())))
    with pytest.raises(EventError):
        machine.restore(["held"])
    assert machine.knows_handle("nope") is False
