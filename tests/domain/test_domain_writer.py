"""A member whose storage writes complete later (the daemon's writer thread).

`DomainNode` makes its storage calls through a `Writer`; in the daemon a thread
of its own, so a write is still in flight while the reactor receives and sends.
These scenarios run on `tests.sim.harness.Simulation` with `tests.sim.writer.SimWriter`
(writes complete when the test or the simulated disk lets them) and check: nothing
is acknowledged, counted toward a quorum, sent, or answered before it is durable;
a crash before a write completes loses only work nobody was told about. The
simulation's invariants (`Simulation.check` after every event, and
`Simulation.check_durable` on every message sent) hold throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hqnlsd.domain.messages import Ack
from hqnlsd.domain.node import DomainNode
from hqnlsd.domain.timing import DomainTimers
from tests.sim.harness import InvariantViolation, SimSettings, Simulation


def simulation(size: int = 3, disk_delay: float = 0.002, seed: int = 0) -> Simulation:
    """A quiet simulation whose members' writes complete up to ``disk_delay`` later."""
    return Simulation(SimSettings(size=size, disk_delay=disk_delay), seed=seed)


def run_until(sim: Simulation, condition: Callable[[], bool], bound: float) -> None:
    """Run until ``condition`` holds (fails after ``bound`` simulated seconds)."""
    end = sim.clock.seconds() + bound
    while not condition():
        if sim.clock.seconds() > end:
            raise AssertionError(f"not within {bound}s\n" + "\n".join(sim.trace[-40:]))
        sim.advance(0.01)


def serving_full_view(sim: Simulation) -> int:
    """Start everyone; the rank of the primary once it serves a view of all."""
    for rank in sorted(sim.ranks):
        sim.restart(rank, 1.0)

    def ready() -> bool:
        rank = sim.serving_member()
        return rank is not None and sim.nodes[rank].view.members == sim.ranks

    run_until(sim, ready, 20.0)
    primary = sim.serving_member()
    assert primary is not None
    sim.advance(0.5)  # every take-over write settled
    return primary


def stored(sim: Simulation, rank: int) -> int:
    """Log entries member ``rank``'s storage holds."""
    data = sim.storage[rank]._data
    assert data is not None
    entries = data["entries"]
    assert isinstance(entries, list)
    return len(entries)


def test_primary_confirms_and_sends_only_once_its_own_write_is_durable() -> None:
    sim = simulation()
    primary = serving_full_view(sim)
    backups = sorted(sim.ranks - {primary})
    before = {rank: stored(sim, rank) for rank in sim.ranks}
    sim.writers[primary].held = True  # its disk stalls
    outcome: list[str] = []
    sim.grant(primary, outcome)
    sim.advance(1.0)  # ticks, heartbeats, acknowledgements of the older entries
    assert outcome == []
    assert sim.writers[primary].in_flight == 1
    assert sim.nodes[primary].log_length == before[primary] + 1  # applied, not durable
    for rank in sim.ranks:
        assert stored(sim, rank) == before[rank]  # not sent: no backup holds it either
    sim.writers[primary].release()
    run_until(sim, lambda: bool(outcome), 1.0)
    assert outcome == ["ok"]
    for rank in backups:
        assert stored(sim, rank) == before[rank] + 1


def test_backups_acknowledge_only_once_durable() -> None:
    sim = simulation()
    primary = serving_full_view(sim)
    first, second = sorted(sim.ranks - {primary})
    for rank in (first, second):
        sim.writers[rank].held = True
    acks: list[tuple[int, Ack]] = []
    send = sim.network.send

    def spy(sender: int, to: int, message: Any) -> None:
        if isinstance(message, Ack):
            acks.append((sender, message))
        send(sender, to, message)

    sim.network.send = spy  # type: ignore[method-assign]
    length = sim.nodes[primary].log_length
    outcome: list[str] = []
    sim.grant(primary, outcome)
    sim.advance(3.0)  # longer than a lease (2 s)
    # The backups received the entry and keep granting the lease, but neither
    # acknowledges it while its write is in flight: no quorum, no answer.
    assert outcome == []
    assert sim.serving_member() == primary
    assert acks and all(ack.match <= length for _, ack in acks)
    assert all(sim.nodes[rank].log_length == length + 1 for rank in (first, second))
    sim.writers[first].release()  # one backup's disk: with the primary's, a quorum
    run_until(sim, lambda: bool(outcome), 1.0)
    assert outcome == ["ok"]
    assert any(s == first and a.match == length + 1 for s, a in acks)
    assert not any(s == second and a.match > length for s, a in acks)


def test_primary_killed_before_its_write_completes_loses_only_the_unanswered() -> None:
    sim = simulation(seed=1)
    primary = serving_full_view(sim)
    confirmed: list[str] = []
    kept = sim.grant(primary, confirmed)
    run_until(sim, lambda: bool(confirmed), 1.0)
    sim.writers[primary].held = True
    lost: list[str] = []
    doomed = sim.grant(primary, lost)
    sim.advance(0.05)
    assert lost == []
    sim.crash(primary)  # its write never reached the disk
    assert lost == ["unknown"]  # the client was never told it holds the licence
    run_until(sim, lambda: sim.serving_member() is not None, 6.0)
    survivor = sim.serving_member()
    assert survivor is not None and survivor != primary
    held = sim.apps[survivor].held
    assert kept in held
    assert doomed not in held  # nobody ever stored it
    sim.restart(primary)
    sim.advance(3.0)
    assert all(doomed not in app.held for app in sim.apps.values())


def test_backup_killed_before_its_write_completes_loses_nothing_confirmed() -> None:
    sim = simulation(seed=2)
    primary = serving_full_view(sim)
    slow, _fast = sorted(sim.ranks - {primary})
    sim.writers[slow].held = True
    outcome: list[str] = []
    handle = sim.grant(primary, outcome)
    run_until(sim, lambda: bool(outcome), 1.0)
    assert outcome == ["ok"]  # the primary's and the fast backup's disks: a quorum
    sim.crash(slow)
    sim.restart(slow)
    sim.crash(primary)
    run_until(sim, lambda: sim.serving_member() not in (None, primary), 6.0)
    survivor = sim.serving_member()
    assert survivor is not None
    assert handle in sim.apps[survivor].held


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_random_schedules_with_slow_disks(size: int) -> None:
    """The seeded fault schedules (`tests/domain/test_domain_sim.py`) with every write
    completing up to 50 ms later and crashes losing writes in flight."""
    for seed in range(1, 31):
        timers = DomainTimers(max_entries=3) if seed % 2 else DomainTimers()
        settings = SimSettings(size=size, count=1 + seed % 4, timers=timers, disk_delay=0.05)
        try:
            Simulation(settings, seed).run()
        except InvariantViolation as violation:
            pytest.fail(f"size {size} seed {seed}: {violation}", pytrace=False)


def test_the_durability_check_catches_an_acknowledgement_before_the_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Simulation.check_durable` is what these tests rely on: a backup that
    acknowledges entries as soon as they arrive (not once written) is caught."""
    on_append = DomainNode._on_append

    def eager(self: DomainNode, sender: int, append: Any, now: float) -> None:
        on_append(self, sender, append, now)
        if self._owed_ack is not None:
            _, epoch, sent_at = self._owed_ack
            self._send(sender, Ack(epoch, sent_at, self.log_length, True))

    monkeypatch.setattr(DomainNode, "_on_append", eager)
    sim = simulation()
    primary = serving_full_view(sim)
    with pytest.raises(InvariantViolation, match="acknowledges"):
        sim.grant(primary)
        sim.advance(1.0)


def test_a_failed_write_in_flight_is_not_taken_as_durable_by_a_sync() -> None:
    """A sync (a clean shutdown's flush, or before a promise) while the write in flight
    fails: the log is written again from what is durable, so what the member counts
    as durable is what its storage holds (it had counted the failed entries)."""
    sim = simulation()
    primary = serving_full_view(sim)
    node, writer, storage = sim.nodes[primary], sim.writers[primary], sim.storage[primary]
    writer.held = True
    outcome: list[object] = []
    sim.grant(primary, outcome)
    sim.clock.advance(0)  # the turn ends: the append is handed to the writer
    real = storage.append

    def failing(start: int, batches: Any) -> None:
        storage.append = real  # type: ignore[method-assign]
        raise OSError("disk full (simulated)")

    storage.append = failing  # type: ignore[method-assign]
    node.flush()
    assert stored(sim, primary) == node.log_length
    writer.release()
    sim.advance(3.0)
    assert stored(sim, primary) == node.log_length
