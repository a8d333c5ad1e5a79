"""Seeded random fault schedules for domains of 1, 2, 3, 4, 5 and 20 members.

Each seed is a full `tests.sim.harness.Simulation`: a minute of crashes,
restarts, partitions, delays, loss and client grants/releases, with the safety
invariants checked after every event and liveness/fail-over checked at
intervals. CI runs the default seeds; ``--seeds N`` runs N per size (and
``--seed-start S`` moves the window). A failure prints the seed, the replay
command and the event list.
"""

from __future__ import annotations

import os

import pytest

from hqnlsd.domain.timing import DomainTimers
from tests.sim.harness import InvariantViolation, SimSettings, Simulation

#: Seeds per size when no --seeds is given: a few hundred runs, well under a minute.
DEFAULT_SEEDS = {1: 50, 2: 100, 3: 100, 4: 100, 5: 100, 20: 15}


def _seeds(config: pytest.Config, size: int) -> range:
    wanted = config.getoption("--seeds", default=None) or os.environ.get("HQNLSD_SIM_SEEDS")
    first = config.getoption("--seed-start", default=None) or 1
    count = int(wanted) if wanted else DEFAULT_SEEDS[size]
    if wanted and size == 20:
        count = max(1, count // 10)  # twenty members cost ~20 times more per seed
    return range(int(first), int(first) + count)


@pytest.mark.parametrize("size", sorted(DEFAULT_SEEDS))
def test_random_schedules(size: int, pytestconfig: pytest.Config) -> None:
    """No seed breaks safety, liveness after a heal, or the 5 s fail-over bound."""
    seeds = _seeds(pytestconfig, size)
    failovers: list[float] = []
    for seed in seeds:
        # Every other seed compacts the log after a few entries, so that
        # hand-overs to the same primary (and the clients held through them)
        # happen under every kind of fault.
        timers = DomainTimers(max_entries=3) if seed % 2 else DomainTimers()
        simulation = Simulation(SimSettings(size=size, count=1 + seed % 4, timers=timers), seed)
        try:
            stats = simulation.run()
        except InvariantViolation as violation:
            pytest.fail(f"size {size} seed {seed}: {violation}", pytrace=False)
        assert stats.recoveries, "every run ends with a liveness phase"
        failovers.extend(stats.failovers)
    if size >= 3:
        assert failovers, "fail-over was exercised"
        assert max(failovers) < 5.0


def test_a_run_is_a_pure_function_of_its_seed() -> None:
    """Replaying a seed gives the same trace, event for event."""
    first = Simulation(SimSettings(size=4, duration=20.0), 7)
    second = Simulation(SimSettings(size=4, duration=20.0), 7)
    first.run()
    second.run()
    assert first.trace == second.trace
    assert len(first.trace) > 20


def test_violation_carries_a_replayable_trace() -> None:
    """A failing run names its seed, the replay command and the events so far."""
    simulation = Simulation(SimSettings(size=3, duration=5.0), 11)
    simulation.restart(1)
    with pytest.raises(InvariantViolation) as caught:
        simulation.fail("demonstration")
    text = str(caught.value)
    assert "replay: python -m tests.sim.harness --size 3 --seed 11" in text
    assert "start 1" in text


#: Seeds per size of the schedules in which some crashes also wipe the member's
#: state (it is recovered as an amnesiac): a few seconds each.
WIPE_SEEDS = {2: 40, 3: 60, 4: 40, 5: 40}


@pytest.mark.parametrize("size", sorted(WIPE_SEEDS))
def test_random_schedules_with_wiped_members(size: int, pytestconfig: pytest.Config) -> None:
    """A quarter of the crashes also lose the member's log and state, and it is
    recovered as an amnesiac: safety holds in every state of every seed, and
    liveness wherever the members that remember are a quorum of the last view
    (otherwise waiting is the only safe answer: the phase is counted as blocked)."""
    wanted = pytestconfig.getoption("--seeds", default=None)
    seeds = range(1, 1 + (int(wanted) if wanted else WIPE_SEEDS[size]))
    wipes = blocked = 0
    for seed in seeds:
        simulation = Simulation(SimSettings(size=size, count=1 + seed % 4, wipes=True), seed)
        try:
            stats = simulation.run()
        except InvariantViolation as violation:
            pytest.fail(f"size {size} seed {seed} (wipes): {violation}", pytrace=False)
        wipes += sum(1 for line in simulation.trace if "(amnesiac recovery)" in line)
        blocked += stats.blocked
    print(f"size {size}: {len(seeds)} seeds, {wipes} wipes, {blocked} blocked liveness phases")
    assert wipes, "members were wiped and recovered"


def test_wipes_without_the_amnesia_rule_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: the same schedules with the amnesia rule disabled in the node
    (a recovered member votes at once) break safety, and the checker sees it."""
    from hqnlsd.domain.node import DomainNode

    monkeypatch.setattr(DomainNode, "_voteless", lambda self: False)
    caught = []
    for seed in range(1, 41):
        simulation = Simulation(SimSettings(size=3, count=1 + seed % 4, wipes=True), seed)
        try:
            simulation.run()
        except InvariantViolation as violation:
            caught.append((seed, str(violation).splitlines()[0]))
    assert caught, "no seed caught a recovered member voting at once"
