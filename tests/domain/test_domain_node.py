"""Scenario tests for hqnlsd.domain.node.DomainNode on the simulated network.

Every scenario runs on `tests.sim.harness.Simulation`, which checks the safety
invariants (at most one member serves; it holds every confirmed licence, none
released, never more than the count; one view per epoch) after every single
event, so each test also fails on any safety violation along the way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from twisted.python.failure import Failure

from hqnlsd.domain.node import AuthorityLost, DomainNode, NotServing, SubmitTimeout
from hqnlsd.domain.role import Role
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.status import Status
from tests.sim.harness import InvariantViolation, SimSettings, Simulation


def simulation(size: int, timers: DomainTimers | None = None, **kw: object) -> Simulation:
    """A quiet simulation of ``size`` members, nobody started yet."""
    settings = SimSettings(size=size, timers=timers or DomainTimers(), **kw)  # type: ignore[arg-type]
    return Simulation(settings, seed=0)


def start(sim: Simulation, ranks: object, rate: float = 1.0) -> None:
    """Start the members ``ranks`` with clocks running at ``rate``."""
    for rank in sorted(ranks):  # type: ignore[call-overload]
        sim.restart(rank, rate)


def run_until(sim: Simulation, condition: Callable[[], bool], bound: float) -> float:
    """Run until ``condition`` holds; the simulated seconds it took (fails after ``bound``)."""
    begin = sim.clock.seconds()
    while not condition():
        if sim.clock.seconds() - begin > bound:
            raise AssertionError(f"not within {bound}s\n" + "\n".join(sim.trace[-40:]))
        sim.advance(0.01)
    return sim.clock.seconds() - begin


def full_view(sim: Simulation) -> int:
    """Run until a primary serves with every member in its view; its rank."""

    def ready() -> bool:
        rank = sim.serving_member()
        return rank is not None and sim.nodes[rank].view.members == sim.ranks

    run_until(sim, ready, 20.0)
    rank = sim.serving_member()
    assert rank is not None
    return rank


def confirmed_grant(sim: Simulation, rank: int) -> str:
    """Grant a licence at ``rank`` and check the client is told it is confirmed."""
    outcome: list[str] = []
    handle = sim.grant(rank, outcome)
    run_until(sim, lambda: bool(outcome), 2.0)
    assert outcome == ["ok"]
    return handle


def test_single_member_domain() -> None:
    """A one-member domain serves on its own and confirms once its own write is done
    (group commit: at the end of the reactor turn, no time later)."""
    sim = simulation(1)
    start(sim, {1})
    run_until(sim, lambda: sim.serving_member() == 1, 3.0)
    outcome: list[str] = []
    sim.grant(1, outcome)
    assert outcome == []  # applied, not yet durable
    sim.advance(0)
    assert outcome == ["ok"]  # its own disk is the quorum


@pytest.mark.parametrize(
    ("size", "up", "serves"),
    [
        (2, {1}, True),  # exactly half, with the lowest rank
        (2, {2}, False),  # exactly half, without it
        (3, {1}, False),
        (3, {2, 3}, True),
        (4, {1, 2}, True),
        (4, {1, 4}, True),
        (4, {3, 4}, False),
        (5, {1, 2}, False),
        (5, {3, 4, 5}, True),
        (20, set(range(1, 11)), True),
        (20, set(range(11, 21)), False),
    ],
)
def test_startup_rule(size: int, up: set[int], serves: bool) -> None:
    """Start-up validation: serve only with at least half the members, exactly
    half only with the lowest-ranked member; the lowest live rank is primary."""
    sim = simulation(size)
    start(sim, up)
    if serves:
        run_until(sim, lambda: sim.serving_member() is not None, 5.0)
        assert sim.serving_member() == min(up)
    else:
        sim.advance(15.0)
        assert sim.serving_member() is None
        for rank in up:
            info = sim.nodes[rank].role()
            assert info.role is Role.NOTVERIFIED
            assert info.status is Status.NOTVERIFIED


def test_backups_redirect_to_the_primary() -> None:
    """Verified backups answer TRY_SERVER with the primary's rank and refuse to grant."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    assert full_view(sim) == 1
    for rank in (2, 3):
        info = sim.nodes[rank].role()
        assert (info.role, info.primary, info.status) == (Role.BACKUP, 1, Status.TRY_SERVER)
        failures: list[Failure] = []
        sim.nodes[rank].submit([["grant", "x"]]).addErrback(failures.append)
        assert len(failures) == 1
        error = failures[0].value
        assert isinstance(error, NotServing)
        assert error.info.primary == 1
    info = sim.nodes[1].role()
    assert (info.role, info.status, info.can_serve) == (Role.PRIMARY, None, True)


def test_unverified_member_is_not_a_candidate() -> None:
    """A member outside the view stays NOTVERIFIED until the primary admits it."""
    sim = simulation(3)
    start(sim, {1, 2})
    run_until(sim, lambda: sim.serving_member() == 1, 5.0)
    assert sim.nodes[1].view.members == frozenset({1, 2})
    start(sim, {3})
    sim.advance(0.5)
    assert sim.nodes[3].role().role is Role.NOTVERIFIED
    run_until(sim, lambda: sim.nodes[3].role().role is Role.BACKUP, 5.0)
    assert sim.nodes[1].view.members == frozenset({1, 2, 3})


def test_lostmaster_then_new_master_then_redirect() -> None:
    """After the primary dies a backup says LOSTMASTER, NEW_MASTER during the
    take-over, then redirects to the new primary."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.crash(1)
    seen: list[Status | None] = []

    def watch() -> bool:
        info = sim.nodes[3].role()
        if not seen or seen[-1] != info.status:
            seen.append(info.status)
        return info.role is Role.BACKUP and info.primary == 2

    run_until(sim, watch, 5.0)
    assert seen[0] is Status.LOSTMASTER
    assert Status.NEW_MASTER in seen
    assert seen[-1] is Status.TRY_SERVER
    # A backup can learn the new view a moment before its primary holds the lease.
    run_until(sim, lambda: sim.serving_member() == 2, 1.0)


@pytest.mark.parametrize("size", [3, 4, 5, 20])
@pytest.mark.parametrize("skew", [(0.99, 1.01), (1.01, 0.99)])
def test_failover_within_five_seconds(size: int, skew: tuple[float, float]) -> None:
    """A backup serves within 5 s of the primary's death, keeping every grant."""
    sim = simulation(size)
    start(sim, {1}, skew[0])
    start(sim, sim.ranks - {1}, skew[1])
    assert full_view(sim) == 1
    handles = {confirmed_grant(sim, 1) for _ in range(3)}
    sim.crash(1)
    took = run_until(sim, lambda: sim.serving_member() is not None, 5.0)
    assert took < 5.0
    assert sim.serving_member() == 2
    assert handles <= sim.apps[2].held


def test_two_member_domain_needs_the_first() -> None:
    """In a domain of two, only hqnserver1 may serve alone (the tie-break)."""
    sim = simulation(2)
    start(sim, {1, 2})
    assert full_view(sim) == 1
    sim.crash(1)
    sim.advance(10.0)
    assert sim.serving_member() is None
    sim.restart(1)
    run_until(sim, lambda: sim.serving_member() == 1, 3.0)
    sim.crash(2)
    sim.advance(5.0)
    assert sim.serving_member() == 1


def test_failback_is_a_clean_hand_over() -> None:
    """The restarted lowest rank takes the role back: no grant lost, no client
    left with an unknown outcome while the role moves."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    full_view(sim)
    first = {confirmed_grant(sim, 1), confirmed_grant(sim, 1)}
    sim.crash(1)
    run_until(sim, lambda: sim.serving_member() == 2, 5.0)
    sim.release(2, sorted(first)[0])
    second = confirmed_grant(sim, 2)
    sim.restart(1)
    outcomes: list[str] = []
    unknown_before = sim.stats.unknown

    busy: list[str] = []

    def busy_until_one_serves() -> bool:
        serving = sim.serving_member()
        if serving is not None and len(sim.apps[serving].held) < sim.settings.count:
            busy.append(sim.grant(serving, outcomes))
        elif serving is not None and busy:
            sim.release(serving, busy.pop(0), outcomes)
        return serving == 1

    run_until(sim, busy_until_one_serves, 10.0)
    sim.advance(1.0)
    assert sim.stats.unknown == unknown_before
    assert "unknown" not in outcomes
    assert second in sim.apps[1].held
    assert sim.confirmed <= sim.apps[1].held


def test_even_split_never_serves_twice() -> None:
    """A 2+2 split of four members: only the half with hqnserver1 serves."""
    sim = simulation(4)
    start(sim, {1, 2, 3, 4})
    full_view(sim)
    for halves in ([{1, 2}, {3, 4}], [{1, 3}, {2, 4}], [{1, 4}, {2, 3}]):
        sim.network.partition(halves)
        sim.advance(8.0)
        assert sim.serving_member() == 1
        for rank in halves[1]:
            assert not sim.nodes[rank].can_serve
        sim.network.heal()
        sim.advance(4.0)
    sim.network.partition([{1}, {2, 3, 4}])
    run_until(sim, lambda: sim.serving_member() == 2, 5.0)


def test_all_restart_keeps_confirmed_grants() -> None:
    """Every member crashing at once loses nothing confirmed (state is on disk)."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    full_view(sim)
    handles = {confirmed_grant(sim, 1), confirmed_grant(sim, 1)}
    for rank in (1, 2, 3):
        sim.crash(rank)
    sim.advance(1.0)
    start(sim, {3, 2, 1}, 1.01)
    run_until(sim, lambda: sim.serving_member() == 1, 8.0)
    assert handles <= sim.apps[1].held


def test_submit_timeout_without_quorum() -> None:
    """A primary cut off from its quorum cannot confirm: the client learns the
    outcome is unknown, and the cut-off primary stops serving."""
    sim = simulation(3, timers=DomainTimers(submit_timeout=3.0))
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.network.partition([{1}, {2, 3}])
    failures: list[Failure] = []
    sim.nodes[1].submit([["grant", "lonely"]]).addErrback(failures.append)
    sim.advance(2.5)
    assert not sim.nodes[1].can_serve
    assert not failures
    sim.advance(1.0)
    assert len(failures) == 1
    assert isinstance(failures[0].value, SubmitTimeout)


def test_deposed_primary_loses_authority() -> None:
    """A primary that learns of a newer view fails what it could not confirm."""
    sim = simulation(3, timers=DomainTimers(submit_timeout=30.0))
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.network.partition([{1}, {2, 3}])
    failures: list[Failure] = []
    sim.nodes[1].submit([["grant", "lonely"]]).addErrback(failures.append)
    run_until(sim, lambda: sim.serving_member() == 2, 5.0)
    sim.network.heal()
    run_until(sim, lambda: bool(failures), 3.0)
    assert isinstance(failures[0].value, AuthorityLost)
    assert "lonely" not in sim.apps[2].held


def test_log_compaction_by_view_change() -> None:
    """After max_entries the primary starts a new view: the log restarts from a
    snapshot and nothing confirmed is lost."""
    sim = simulation(3, timers=DomainTimers(max_entries=4))
    start(sim, {1, 2, 3})
    full_view(sim)
    epoch = sim.nodes[1].view.epoch
    handles = set()
    for _ in range(3):
        handle = confirmed_grant(sim, 1)
        handles.add(handle)
        sim.release(1, handle)
        run_until(sim, lambda h=handle: h in sim.released, 2.0)  # type: ignore[misc]
    run_until(sim, lambda: sim.nodes[1].view.epoch > epoch and sim.nodes[1].can_serve, 5.0)
    assert sim.nodes[2].view == sim.nodes[1].view
    assert not sim.apps[1].held & handles
    assert sim.nodes[1].log_length < 4


def test_compaction_pauses_service_for_round_trips_not_ticks() -> None:
    """A compaction with nothing in flight stands at once (not at the next tick), and
    the primary serves again a few network round trips later."""
    sim = simulation(3, timers=DomainTimers(max_entries=4))
    sim.network.min_delay = sim.network.max_delay = 0.002
    start(sim, {1, 2, 3})
    full_view(sim)
    epoch = sim.nodes[1].view.epoch
    for _ in range(2):
        handle = confirmed_grant(sim, 1)
        sim.release(1, handle)
        run_until(sim, lambda h=handle: h in sim.released, 2.0)  # type: ignore[misc]
    run_until(sim, lambda: not sim.nodes[1].can_serve, 5.0)
    paused = run_until(
        sim, lambda: sim.nodes[1].view.epoch > epoch and sim.nodes[1].can_serve, 5.0
    )
    assert paused < 0.05, f"compaction stopped service for {paused:.3f}s"


def closed_loop(sim: Simulation, clients: int, seconds: float) -> tuple[dict[str, int], int]:
    """``clients`` closed-loop clients grant then release at member 1 for ``seconds``.

    Each client sends its next operation as soon as the last one was answered.
    Returns the answers by kind (``ok``, ``not serving``: refused, ``unknown``:
    an unknown outcome, ``denied``) and how many views member 1 went through.
    """
    answers = {"ok": 0, "not serving": 0, "unknown": 0, "denied": 0}
    holding: dict[int, str | None] = dict.fromkeys(range(clients))
    outcomes: dict[int, list[str]] = {}
    epoch = sim.nodes[1].view.epoch

    def next_operation(client: int) -> None:
        outcome: list[str] = []
        outcomes[client] = outcome
        handle = holding[client]
        if handle is None:
            holding[client] = sim.grant(1, outcome)
        else:
            sim.release(1, handle, outcome)

    for client in range(clients):
        next_operation(client)
    end = sim.clock.seconds() + seconds
    while sim.clock.seconds() < end:
        sim.advance(0.001)
        for client, outcome in list(outcomes.items()):
            if not outcome:
                continue
            answers[outcome[0]] += 1
            # Released, or a grant that did not happen: the next operation is a grant.
            if outcome[0] == "ok":
                finished = holding[client] in sim.released
            else:
                finished = holding[client] not in sim.confirmed
            if finished:
                holding[client] = None
            next_operation(client)
    return answers, sim.nodes[1].view.epoch - epoch


def compaction_loop() -> tuple[dict[str, int], int]:
    """Closed-loop clients through a 3-member primary that compacts every 6 entries."""
    sim = simulation(3, timers=DomainTimers(max_entries=6))
    sim.network.min_delay, sim.network.max_delay = 0.0005, 0.002
    start(sim, {1, 2, 3})
    full_view(sim)
    return closed_loop(sim, clients=3, seconds=8.0)


def test_compaction_never_refuses_a_client() -> None:
    """Clients of a primary that compacts its log over and over are never refused and
    never told an unknown outcome: their commands wait out each hand-over (`held`)."""
    answers, views = compaction_loop()
    assert views >= 5, f"only {views} compactions"
    assert answers["ok"] > 500
    assert answers["not serving"] == answers["unknown"] == answers["denied"] == 0, answers


def test_compaction_without_holding_refuses_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same loop, with holding switched off, is refused (the test above can fail)."""
    monkeypatch.setattr(DomainNode, "held", lambda self: None)
    answers, views = compaction_loop()
    assert views >= 5
    assert answers["not serving"] > 0, answers


def slow_compaction() -> Simulation:
    """Three members, 50 ms links, and a primary that has just begun a compaction."""
    sim = simulation(3, timers=DomainTimers(max_entries=4))
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.network.min_delay = sim.network.max_delay = 0.05
    for _ in range(2):
        handle = confirmed_grant(sim, 1)
        sim.release(1, handle)
        run_until(sim, lambda h=handle: h in sim.released, 2.0)  # type: ignore[misc]
    run_until(sim, lambda: not sim.nodes[1].can_serve, 5.0)
    return sim


def test_held_commands_are_let_go_when_the_hand_over_fails() -> None:
    """A primary cut off during its compaction fires its held commands with False
    (answer the refusal of that moment), within the hold bound, having decided nothing."""
    sim = slow_compaction()
    node = sim.nodes[1]
    waiting = node.held()
    assert waiting is not None, "a compaction holds commands"
    results: list[bool] = []
    waiting.addCallback(results.append)
    sim.network.partition([{1}, {2, 3}])
    timers = node.timers
    bound = timers.drain_timeout + timers.candidacy_timeout + timers.lease + 2 * timers.tick
    run_until(sim, lambda: bool(results), bound)
    assert results == [False] and not node.can_serve
    assert node.held() is None, "no longer handing over to itself: refuse at once"


def test_backups_send_clients_to_a_primary_handing_over_to_itself() -> None:
    """A backup that promised its own primary's ballot (a compaction) redirects
    clients to that primary (which holds them), rather than answering NEW_MASTER."""
    sim = slow_compaction()
    backup = sim.nodes[2]
    run_until(sim, lambda: backup._promised is not None, 2.0)
    info = backup.role()
    assert (info.role, info.primary, info.status) == (Role.BACKUP, 1, Status.TRY_SERVER)
    run_until(sim, lambda: sim.nodes[1].can_serve, 5.0)


#: The primary never drops a silent member from its view here, so that only its
#: lease (not a voluntary step-down) stands between it and a successor.
PATIENT = DomainTimers(peer_timeout=60.0)


def lease_race(timers: DomainTimers) -> Simulation:
    """The tightest race for the lease: near-zero latency, the primary's clock
    1 % slow and everyone else's 1 % fast, then the primary is cut off."""
    sim = simulation(3, timers=timers, clock_drift=0.01)
    sim.network.min_delay, sim.network.max_delay = 0.00005, 0.0001
    start(sim, {1}, 0.99)
    start(sim, {2, 3}, 1.01)
    full_view(sim)
    sim.network.partition([{1}, {2, 3}])
    run_until(sim, lambda: sim.serving_member() == 2, 5.0)
    return sim


def test_lease_holds_in_the_tightest_race() -> None:
    """With the documented drift bound and margin, the cut-off primary's lease
    ends before its successor's authority begins, even with clocks at the bound."""
    sim = lease_race(PATIENT)
    assert sim.serving_member() == 2


def test_lease_race_catches_a_lease_that_ignores_drift() -> None:
    """Timers that ignore the 1 % drift of the clocks let two members serve at
    once: the checker sees it (so the passing test above is meaningful)."""
    with pytest.raises(InvariantViolation, match="serve at the same instant"):
        lease_race(replace(PATIENT, drift=0.0, margin=0.0))


def quarantine_race(monkeypatch: pytest.MonkeyPatch, quarantine: bool) -> Simulation:
    """Member 3 restarts while it binds a lease to primary 1, then 2 and 3 are
    cut off from 1 and 2 asks 3 for its promise."""
    if not quarantine:
        original = DomainNode.start

        def start_without_quarantine(self: DomainNode) -> None:
            original(self)
            self._quarantine_until = float("-inf")

        monkeypatch.setattr(DomainNode, "start", start_without_quarantine)
    sim = simulation(3, timers=PATIENT)
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.network.cut.add(frozenset((1, 2)))
    sim.network.update_links()
    sim.advance(4.0)  # 2 stands, but 3 is bound to 1 and refuses
    assert sim.serving_member() == 1
    sim.crash(3)
    sim.restart(3)
    sim.network.partition([{1}, {2, 3}])
    sim.advance(6.0)
    return sim


def test_restarted_member_keeps_forgotten_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted member refuses promises for one lease period: it may have
    granted a lease it no longer remembers."""
    sim = quarantine_race(monkeypatch, quarantine=True)
    assert sim.serving_member() == 2


def test_quarantine_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the restart quarantine, the same race serves twice (checker works)."""
    with pytest.raises(InvariantViolation, match="serve at the same instant"):
        quarantine_race(monkeypatch, quarantine=False)


def test_stop_fails_waiting_submissions() -> None:
    """Stopping a member fails what it had not confirmed, with AuthorityLost."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.network.partition([{1}, {2, 3}])
    failures: list[Failure] = []
    sim.nodes[1].submit([["grant", "x"]]).addErrback(failures.append)
    sim.crash(1)
    assert len(failures) == 1
    assert isinstance(failures[0].value, AuthorityLost)


def test_barrier_waits_for_everything_before_it() -> None:
    """`barrier` (an answer read from the state without changing it, issue 10):
    at once when every entry is committed; else when the entries before it are,
    or with their unknown outcome; NotServing at once on a backup."""
    sim = simulation(3, timers=DomainTimers(submit_timeout=3.0))
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.advance(1.0)
    primary = sim.nodes[1]
    fired: list[object] = []
    primary.barrier().addBoth(fired.append)
    assert fired == [None]  # nothing in flight: at once
    submitted: list[object] = []
    primary.submit([["grant", "a"]]).addBoth(submitted.append)
    waiting: list[object] = []
    primary.barrier().addBoth(waiting.append)
    assert waiting == []  # the grant before it is not committed yet
    run_until(sim, lambda: bool(waiting), 1.0)
    assert submitted == [None] and waiting == [None]
    refused: list[Failure] = []
    sim.nodes[2].barrier().addErrback(refused.append)
    assert len(refused) == 1 and isinstance(refused[0].value, NotServing)
    # Cut off: the barrier behind an unconfirmed entry fails with it.
    sim.network.partition([{1}, {2, 3}])
    lost: list[Failure] = []
    primary.submit([["release", "a"]]).addErrback(lost.append)
    primary.barrier().addErrback(lost.append)
    sim.advance(3.5)
    assert len(lost) == 2 and all(isinstance(f.value, SubmitTimeout) for f in lost)


def wiped_member_scenario(amnesiac: bool) -> Simulation:
    """Member 3 is the only link between a commit quorum ({1, 3}) and the next
    phase-1 quorum ({2, 3}); its storage is then wiped and it is recovered.

    1 is primary of {1, 2, 3}; the link 1-2 is cut, so a grant commits on 1 and 3
    only. 1 and 3 crash, 3 loses its storage and is recovered, 2 and 3 restart
    together without 1 (a quorum of the view), and later 1 returns.
    """
    sim = simulation(3, timers=PATIENT)
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.network.cut.add(frozenset((1, 2)))
    sim.network.update_links()
    handle = confirmed_grant(sim, 1)
    assert handle in sim.confirmed
    sim.crash(1)
    sim.crash(3)
    sim.wipe_and_recover(3, amnesiac=amnesiac)
    sim.network.heal()
    sim.restart(3)
    sim.advance(10.0)  # 2 and 3 are a quorum of {1, 2, 3}: may they act?
    # With amnesia they may not: 3 refuses to vote in the view it forgot.
    assert sim.serving_member() is None
    # The amnesia is durable: a restart does not end it.
    sim.crash(3)
    sim.restart(3)
    assert sim.nodes[3].amnesia is not None
    sim.advance(3.0)
    assert sim.serving_member() is None
    sim.restart(1)
    full_view(sim)
    return sim


def test_wiped_member_recovered_as_amnesiac_loses_no_licence() -> None:
    """A recovered (amnesiac) member refuses to vote in views it may have voted
    in before it forgot, so 2 waits for 1; once 1 is back, the confirmed grant
    is served and 3 is readmitted (no longer amnesiac) in a newer view."""
    sim = wiped_member_scenario(amnesiac=True)
    node = sim.nodes[3]
    run_until(sim, lambda: node.amnesia is None and 3 in node.view.members, 20.0)
    primary = full_view(sim)
    assert sim.confirmed and sim.confirmed <= sim.apps[primary].held
    stored = sim.storage[3].load()
    assert stored is not None and stored.amnesia is None
    assert any("wipe 3 (amnesiac" in line for line in sim.trace)


def test_wiped_member_without_amnesia_loses_a_confirmed_licence() -> None:
    """The same scenario with the member simply restarted afresh (its state file
    deleted by hand): 2 and 3 decide a view without the grant, and the checker
    sees a confirmed licence lost (so the passing test above is meaningful)."""
    with pytest.raises(InvariantViolation, match="serves without confirmed grants"):
        wiped_member_scenario(amnesiac=False)


def test_amnesia_rule_is_what_saves_the_licence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: the member recovered as an amnesiac, but the node ignoring
    the rule (it votes in the view it forgot): the checker sees the licence lost."""
    monkeypatch.setattr(DomainNode, "_voteless", lambda self: False)
    with pytest.raises(InvariantViolation, match="serves without confirmed grants"):
        wiped_member_scenario(amnesiac=True)


def drop_and_restart(sim: Simulation, rank: int) -> None:
    """Crash member ``rank``, run until the primary has dropped it from its view
    (and a little longer, as a real daemon takes a moment to start), restart it."""
    sim.crash(rank)
    run_until(sim, lambda: sim.nodes[1].view.members == sim.ranks - {rank}, 5.0)
    sim.advance(1.5)
    sim.restart(rank)


def admitted(sim: Simulation, rank: int) -> Callable[[], bool]:
    """True once ``rank`` is a backup in a view its primary serves in."""

    def check() -> bool:
        serving = sim.serving_member()
        return (
            serving is not None
            and rank in sim.nodes[serving].view.members
            and sim.nodes[rank].role().role is Role.BACKUP
        )

    return check


def test_restarted_member_is_admitted_within_two_seconds() -> None:
    """A member that restarts after the primary dropped it is a backup in a served view
    within 2 s of starting (default timers): no settle wait for a clean restart, and
    its restart quarantine does not make it refuse the view that admits it."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    full_view(sim)
    drop_and_restart(sim, 3)
    took = run_until(sim, admitted(sim, 3), 2.0)
    print(f"admitted {took:.3f} s after the restart")


def test_a_flapping_member_still_waits_to_settle() -> None:
    """A member that dies again soon after its admission is admitted again only after
    answering for `settle`: a flapping member cannot make the view change at its pace."""
    timers = DomainTimers()
    sim = simulation(3, timers=timers)
    start(sim, {1, 2, 3})
    full_view(sim)
    drop_and_restart(sim, 3)
    run_until(sim, admitted(sim, 3), 2.0)
    drop_and_restart(sim, 3)
    sim.advance(timers.settle * 0.9)
    assert 3 not in sim.nodes[1].view.members
    took = run_until(sim, admitted(sim, 3), 5.0)
    assert took > timers.settle * 0.1


@pytest.mark.parametrize("size", [2, 3])
def test_primary_dies_just_after_a_member_restarts(size: int) -> None:
    """The issue's scenario: the view has lost a member (3 members: {1, 2}; 2 members:
    {1}); it restarts, and 2 s after it answers the primary dies. The survivors are
    a quorum of the domain: a primary must serve again within the fail-over bound
    (before, the restarted member was still outside the view and nothing served)."""
    sim = simulation(size)
    start(sim, sim.ranks)
    full_view(sim)
    drop_and_restart(sim, size)
    sim.advance(2.0)
    sim.crash(1)
    if size == 2:
        # {2} alone is no quorum of {1, 2}: the tie-break keeps the domain waiting.
        sim.advance(5.0)
        assert sim.serving_member() is None
        return
    run_until(sim, lambda: sim.serving_member() is not None, 5.0)


def watch_statuses(sim: Simulation, rank: int, seconds: float) -> set[Status | None]:
    """Every status ``rank`` would answer during ``seconds`` of simulated time."""
    seen: set[Status | None] = set()
    end = sim.clock.seconds() + seconds
    while sim.clock.seconds() < end:
        seen.add(sim.nodes[rank].role().status)
        sim.advance(0.01)
    return seen


def test_survivor_without_a_quorum_says_whom_it_waits_for() -> None:
    """Two of three members die: the survivor cannot elect, so it never says NEW_MASTER
    ("a take-over is in progress"): it says LOSTMASTER, naming the members it waits for."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.crash(1)
    sim.crash(2)
    assert watch_statuses(sim, 3, 10.0) == {Status.LOSTMASTER}
    info = sim.nodes[3].role()
    assert (info.role, info.waiting) == (Role.LOSTMASTER, frozenset({1, 2}))
    sim.restart(2)
    run_until(sim, lambda: sim.serving_member() == 2, 6.0)
    assert sim.nodes[3].role().waiting == frozenset()


def test_two_member_view_without_its_first_waits_for_it() -> None:
    """In a view of {1, 2}, member 2 alone can never elect: LOSTMASTER waiting for 1; a
    member outside that view says NOTVERIFIED, waiting for 1 too."""
    sim = simulation(3)
    start(sim, {1, 2})
    run_until(
        sim,
        lambda: sim.serving_member() == 1 and sim.nodes[2].role().role is Role.BACKUP,
        5.0,
    )
    sim.crash(1)
    start(sim, {3})
    # An Append 1 sent just before it died may still arrive: 2 then believes in
    # its primary for one election timeout (TRY_SERVER), never in a take-over.
    assert Status.NEW_MASTER not in watch_statuses(sim, 2, 1.5)
    assert watch_statuses(sim, 2, 8.0) == {Status.LOSTMASTER}
    info = sim.nodes[2].role()
    assert (info.role, info.waiting) == (Role.LOSTMASTER, frozenset({1}))
    outside = sim.nodes[3].role()
    assert (outside.role, outside.waiting) == (Role.NOTVERIFIED, frozenset({1}))


def test_cut_off_primary_and_lonely_starter_name_the_missing() -> None:
    """A primary cut off from both backups says NOTVERIFIED waiting for them; the one
    member up of a fresh domain waits for the others; a take-over that can complete
    still says NEW_MASTER (with nobody to wait for)."""
    sim = simulation(3)
    start(sim, {1})
    sim.advance(3.0)
    info = sim.nodes[1].role()
    assert (info.role, info.waiting) == (Role.NOTVERIFIED, frozenset({2, 3}))
    start(sim, {2, 3})
    full_view(sim)
    sim.network.partition([{1}, {2, 3}])
    seen = watch_statuses(sim, 1, 6.0)
    assert Status.NEW_MASTER not in seen
    info = sim.nodes[1].role()
    assert (info.role, info.waiting) == (Role.NOTVERIFIED, frozenset({2, 3}))
    assert sim.serving_member() == 2
    sim.network.heal()
    primary = full_view(sim)
    sim.crash(primary)
    seen = watch_statuses(sim, 3, 4.0)
    assert Status.NEW_MASTER in seen


def test_member_restarted_outside_the_view_is_admitted_within_two_seconds() -> None:
    """A member whose stored view already leaves it out (it learned it was dropped,
    then crashed) granted nothing in that view, so its restart quarantine must not
    make it refuse the view change that admits it."""
    sim = simulation(3)
    start(sim, {1, 2, 3})
    full_view(sim)
    sim.network.partition([{1, 2}, {3}])
    run_until(sim, lambda: sim.nodes[1].view.members == frozenset({1, 2}), 5.0)
    sim.network.heal()
    run_until(sim, lambda: sim.nodes[3].view == sim.nodes[1].view, 2.0)
    sim.crash(3)
    assert 3 not in sim.storage[3].load().view.members  # type: ignore[union-attr]
    sim.advance(12.0)  # long enough for the flap window to pass
    sim.restart(3)
    took = run_until(sim, admitted(sim, 3), 2.0)
    print(f"admitted {took:.3f} s after the restart")
