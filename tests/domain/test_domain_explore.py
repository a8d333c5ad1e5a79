"""Exhaustive small-scope check of the domain core (`tests/sim/explore.py`).

Every interleaving of deliveries, duplicates, timer firings, crashes,
restarts, link cuts and client operations up to a depth, from several
starting states, with the invariants of ``docs/domains.md`` checked in every
state. The depths are chosen so that the whole module takes well under three
minutes on a busy two-core machine; ``python -m tests.sim.explore`` runs
deeper and prints states per second.

The mutation tests put a deliberate bug into the core and assert that the
explorer *does* find a violation, with a trace that replays: without them a
passing exploration would prove nothing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.sim.explore import EXPLORE_TIMERS, Bounds, Result, explore, main


def report(result: Result) -> None:
    """Print the figures (visible with ``pytest -s``) and fail on a violation."""
    print()
    print(result.summary())
    assert result.violation is None, result.summary()
    assert result.complete
    assert result.depth_reached == result.depth, "the space ran out early: a bound is wrong"


# (scenario, depth) for 3 members: deeper where the space is narrow.
THREE = [
    ("boot", 7),
    ("serving", 5),
    ("isolated", 5),
    ("contested", 5),
    ("restarted", 5),
]


@pytest.mark.parametrize(("scenario", "depth"), THREE)
def test_three_members(scenario: str, depth: int) -> None:
    """3 members: no invariant breaks in any state within the depth (default
    bounds: 1 crash, 1 cut, 1 grant, 1 release, 1 duplicate)."""
    result = explore(3, depth, scenario)
    report(result)
    if scenario == "serving":
        # every kind of action (drops are off by default) really happened
        assert set(result.kinds) == {
            "deliver",
            "dup",
            "fire",
            "crash",
            "restart",
            "cut",
            "heal",
            "grant",
            "release",
        }, result.kinds


@pytest.mark.parametrize(("scenario", "depth"), [("split", 4), ("serving", 4)])
def test_four_members(scenario: str, depth: int) -> None:
    """4 members, including the 2+2 split (the upper half standing): no
    invariant breaks in any state within the depth."""
    report(explore(4, depth, scenario))


#: Only the lease (not a voluntary step-down of the primary) protects these races.
PATIENT = replace(EXPLORE_TIMERS, peer_timeout=60.0)
#: No fault or client operation beyond the scenario's: the races need none.
QUIET = Bounds(crashes=0, cuts=0, grants=0, releases=0, duplicates=0)


#: (mutation, members, scenario, actions after the scenario that find it)
MUTATIONS = [
    ("lease-ignores-drift", 3, "isolated", 4),
    ("promise-during-lease", 3, "contested", 4),
    ("no-quarantine", 3, "restarted", 7),
    ("ack-after-promise", 3, "promised", 7),
    ("no-tie-break", 4, "split", 4),
]


@pytest.mark.parametrize(("mutation", "members", "scenario", "found_by"), MUTATIONS)
def test_mutation_is_caught(mutation: str, members: int, scenario: str, found_by: int) -> None:
    """A deliberate bug in the core makes two members serve at once, and the
    explorer finds it within ``found_by`` actions of the scenario, with a trace
    that replays (`explore` replays it): the clean explorations are
    meaningful. (`lease-ignores-drift`: drift and margin left out of the lease
    while the clocks are 1 % off; `promise-during-lease`: a member promises
    while bound by its lease grant; `no-quarantine`: a restarted member
    promises at once; `ack-after-promise`: a member acknowledges the old
    primary after promising a candidate; `no-tie-break`: exactly half of a view
    is a quorum even without its lowest rank.)"""
    result = explore(members, found_by, scenario, QUIET, mutation_name=mutation, timers=PATIENT)
    print(result.summary())
    assert result.violation is not None, result.summary()
    assert result.violation.startswith("I4:"), result.violation
    assert len(result.trace) <= found_by


@pytest.mark.parametrize(("mutation", "members", "scenario", "found_by"), MUTATIONS)
def test_clean_core_passes_the_mutation_scenario(
    mutation: str, members: int, scenario: str, found_by: int
) -> None:
    """The same scenario, depth, bounds and timers without the mutation: no
    violation, so the mutation test fails because of its bug, not its setup."""
    report(explore(members, found_by, scenario, QUIET, timers=PATIENT))


def test_command_line_prints_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m tests.sim.explore`` prints the figures and exits 0 when clean."""
    assert main(["--members", "3", "--depth", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for words in ("states explored=", "distinct=", "depth reached=2", "states/s=", "no violation"):
        assert words in out
