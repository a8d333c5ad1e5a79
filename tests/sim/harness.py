"""Seeded random fault schedules for a simulated server domain, with invariant checks.

A `Simulation` wires ``size`` `DomainNode` members through a `SimNetwork` on one
shared `task.Clock` (each member's clock drifts within the documented bound),
then plays a schedule drawn from ``random.Random(seed)``: crashes (only the
`MemoryStorage` survives), restarts, partitions, single cut links, heals,
changes of delay and loss, and client grants and releases of a product with
``count`` licences. After every single event (message delivery or timer) it
checks the safety invariants; at intervals it heals everything and checks
liveness (a primary serves within the bound), then kills the primary and checks
a backup serves within the fail-over bound.

The run is a pure function of (size, seed, settings): replay a failure with
``python -m tests.sim.harness --size N --seed S``.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from hqnlsd.domain.membership import is_quorum
from hqnlsd.domain.messages import Accepted, Ack, Append, Promise
from hqnlsd.domain.node import DomainNode
from hqnlsd.domain.storage import Amnesia, MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Ballot, initial_view
from tests.sim.app import LicencePool
from tests.sim.network import SimNetwork, SkewedClock
from tests.sim.writer import SimWriter


class InvariantViolation(AssertionError):
    """A safety or liveness property failed; the message holds the replay trace."""


@dataclass
class SimSettings:
    """Everything that shapes a run besides the seed."""

    size: int
    count: int = 3
    #: simulated seconds of faults (liveness phases come on top)
    duration: float = 60.0
    #: simulated seconds of faults between two liveness phases
    liveness_every: float = 20.0
    #: a primary must serve this long after everything is healed and restarted
    liveness_bound: float = 12.0
    #: a backup must serve this long after the primary of a full view dies
    failover_bound: float = 5.0
    timers: DomainTimers = field(default_factory=DomainTimers)
    #: the real rate error of the simulated clocks (by default the timers' bound)
    clock_drift: float | None = None
    #: some crashes also lose the member's state and log, and it is recovered as an
    #: amnesiac (off by default: the schedules of the other settings stay as they were)
    wipes: bool = False
    #: above 0, every member's storage writes complete up to this many simulated
    #: seconds after they are made (`tests.sim.writer.SimWriter`, as the daemon's
    #: writer thread), and a crash loses the writes still in flight; at 0 they
    #: complete at once (the schedules of the other settings stay as they were)
    disk_delay: float = 0.0

    @property
    def drift(self) -> float:
        """How far from 1 the simulated clock rates may be."""
        return self.timers.drift if self.clock_drift is None else self.clock_drift


@dataclass
class Stats:
    """What a run observed, for reports."""

    events: int = 0
    grants: int = 0
    releases: int = 0
    unknown: int = 0
    #: client operations refused at once (`NotServing`: the member did not serve)
    refused: int = 0
    #: client operations held while their primary handed over to itself
    held: int = 0
    views: int = 0
    failovers: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    #: liveness phases skipped because amnesiac members were needed for a quorum
    blocked: int = 0


class Simulation:
    """One seeded run (see the module docstring)."""

    def __init__(self, settings: SimSettings, seed: int, verbose: bool = False) -> None:
        """Build the domain; nothing runs until `run`."""
        self.settings = settings
        self.seed = seed
        self.verbose = verbose
        self.rng = random.Random(seed)
        self.net_rng = random.Random(seed * 7919 + settings.size)
        self.clock = Clock()
        self.ranks = frozenset(range(1, settings.size + 1))
        self.network = SimNetwork(self.clock, self.ranks, self.net_rng, self.check)
        self.storage = {rank: MemoryStorage() for rank in self.ranks}
        self.disk_rng = random.Random(seed * 104729 + settings.size)
        #: each running member's writer, when ``disk_delay`` is set
        self.writers: dict[int, SimWriter] = {}
        self.nodes: dict[int, DomainNode] = {}
        self.apps: dict[int, LicencePool] = {}
        self.trace: list[str] = []
        self.stats = Stats()
        self.confirmed: set[str] = set()
        self.released: set[str] = set()
        self.limbo: set[str] = set()
        self.decided: dict[int, tuple[frozenset[int], Ballot | None]] = {}
        self._handles = 0
        self._ops = 0
        self._latest: dict[str, int] = {}
        self._serving: int | None = None

    # -- the run -----------------------------------------------------------

    def run(self) -> Stats:
        """Play the whole schedule; raise `InvariantViolation` on any failure."""
        self.note(f"start size={self.settings.size} seed={self.seed}")
        for rank in sorted(self.ranks):
            self.restart(rank)
        next_liveness = self.settings.liveness_every
        while self.clock.seconds() < self.settings.duration:
            self.random_step()
            if self.clock.seconds() >= next_liveness:
                self.liveness_phase()
                next_liveness = self.clock.seconds() + self.settings.liveness_every
        self.liveness_phase()
        for rank in sorted(self.nodes):
            self.nodes[rank].stop()
        return self.stats

    def random_step(self) -> None:
        """One random action of the schedule, then some simulated time."""
        rng = self.rng
        action = rng.choices(
            [
                "run",
                "crash",
                "restart",
                "bounce",
                "partition",
                "cut",
                "heal",
                "net",
                "grant",
                "release",
            ],
            weights=[8, 2, 2, 1, 2, 2, 1, 1, 6, 4],
        )[0]
        alive = sorted(self.nodes)
        dead = sorted(self.ranks - set(self.nodes))
        if action == "crash" and alive:
            rank = rng.choice(alive)
            self.crash(rank)
            if self.settings.wipes and rng.random() < 0.25:
                self.wipe_and_recover(rank)
        elif action == "restart" and dead:
            self.restart(rng.choice(dead))
        elif action == "bounce" and alive:
            # A process restarted by its supervisor: back before anyone notices.
            rank = rng.choice(alive)
            if rng.random() < 0.5:
                # Killed in the very turn it decided grants: not yet written
                # (group commit), so they die with it unconfirmed.
                for _ in range(rng.randint(1, 3)):
                    self.grant(rank)
            self.crash(rank)
            self.advance(rng.uniform(0.0, 0.5))
            self.restart(rank)
        elif action == "partition" and self.settings.size > 1:
            groups: list[set[int]] = [set() for _ in range(rng.randint(2, 3))]
            for rank in sorted(self.ranks):
                rng.choice(groups).add(rank)
            self.note(f"partition {[sorted(g) for g in groups if g]}")
            self.network.partition(groups)
        elif action == "cut" and self.settings.size > 1:
            a, b = rng.sample(sorted(self.ranks), 2)
            self.note(f"cut {a}-{b}")
            self.network.cut.add(frozenset((a, b)))
            self.network.update_links()
        elif action == "heal":
            self.note("heal")
            self.network.heal()
        elif action == "net":
            self.network.loss = rng.choice([0.0, 0.0, 0.05, 0.3])
            self.network.max_delay = rng.choice([0.0002, 0.005, 0.02, 0.2, 1.5])
            self.network.min_delay = min(0.0001, self.network.max_delay)
            self.note(f"net loss={self.network.loss} delay<={self.network.max_delay}")
        elif action == "grant":
            for _ in range(rng.randint(1, 3)):
                self.grant(self.redirected(rng.choice(sorted(self.ranks))))
        elif action == "release":
            handles = sorted(self.confirmed | self.limbo)
            if handles:
                self.release(self.redirected(rng.choice(sorted(self.ranks))), rng.choice(handles))
        self.advance(rng.uniform(0.0, 1.5) if action == "run" else rng.uniform(0.0, 0.3))

    def liveness_phase(self) -> None:
        """Heal, restart everyone: a primary must serve within the bound and
        confirm an operation; then, once the view holds every member, kill the
        primary: a backup must serve within the fail-over bound."""
        self.note("liveness: heal, restart all, clean network")
        self.network.heal()
        self.network.loss = 0.0
        self.network.min_delay, self.network.max_delay = 0.001, 0.02
        for rank in sorted(self.ranks - set(self.nodes)):
            self.restart(rank)
        start = self.clock.seconds()
        primary = self.wait_for_primary(self.settings.liveness_bound)
        if primary is None and self.blocked_by_amnesia():
            # Expected: the members that remember are no quorum of the last view,
            # and what only the forgetful ones held may be gone; waiting is safe.
            self.note("liveness: blocked by amnesiac members (expected), skipped")
            self.stats.blocked += 1
            return
        if primary is None:
            self.fail(f"no primary within {self.settings.liveness_bound}s of a full heal")
        self.stats.recoveries.append(self.clock.seconds() - start)
        assert primary is not None
        self.confirm_operation(primary)
        # Wait for the primary to admit everyone (failback included).
        deadline = self.clock.seconds() + 6 * self.settings.timers.settle + 6.0
        while self.clock.seconds() < deadline:
            primary = self.serving_member()
            if primary is not None and self.nodes[primary].view.members == self.ranks:
                break
            self.advance(0.1)
        else:
            self.fail("the primary did not admit every member of a healthy domain")
        assert primary is not None
        if primary != min(self.ranks):
            self.fail(f"member {primary} serves while lower-ranked members are healthy")
        view = self.nodes[primary].view
        survivors = view.members - {primary}
        self.crash(primary)
        if not is_quorum(view.members, survivors):
            self.advance(self.settings.failover_bound)
            return
        start = self.clock.seconds()
        successor = self.wait_for_primary(self.settings.failover_bound)
        if successor is None:
            self.fail(
                f"no backup served within {self.settings.failover_bound}s of the primary's death"
            )
        self.stats.failovers.append(self.clock.seconds() - start)
        assert successor is not None
        self.confirm_operation(successor)

    def blocked_by_amnesia(self) -> bool:
        """True if the latest view's members that are not amnesiac are no quorum of it."""
        latest = max(self.nodes.values(), key=lambda node: node.view.epoch).view
        amnesiacs = {rank for rank, node in self.nodes.items() if node.amnesia is not None}
        voters = set(self.nodes) - amnesiacs
        return bool(amnesiacs & latest.members) and not is_quorum(latest.members, voters)

    def wait_for_primary(self, bound: float) -> int | None:
        """Run until some member serves (its rank) or ``bound`` passes (None)."""
        deadline = self.clock.seconds() + bound
        while True:
            serving = self.serving_member()
            if serving is not None:
                return serving
            if self.clock.seconds() >= deadline:
                return None
            self.advance(min(0.02, deadline - self.clock.seconds()))

    def confirm_operation(self, rank: int) -> None:
        """A client operation on the serving member must be confirmed promptly."""
        app = self.apps[rank]
        outcome: list[str] = []
        if len(app.held) < app.count:
            handle = self.grant(rank, outcome)
        else:
            handle = sorted(app.held)[0]
            self.release(rank, handle, outcome)
        self.advance(1.0)
        if outcome != ["ok"]:
            self.fail(f"operation on {handle} at serving member {rank} not confirmed: {outcome}")

    # -- faults ------------------------------------------------------------

    def crash(self, rank: int) -> None:
        """Kill member ``rank``: only its storage survives."""
        node = self.nodes.pop(rank, None)
        if node is None:
            return
        self.note(f"crash {rank}")
        self.network.detach(rank)
        writer = self.writers.pop(rank, None)
        if writer is not None:
            writer.crash()  # before the node stops: nothing more reaches its disk
        node.stop()
        del self.apps[rank]

    def restart(self, rank: int, rate: float | None = None) -> None:
        """Start member ``rank`` from its storage, with a fresh drifting clock.

        ``rate`` is the clock's rate; by default a random one within the drift
        bound (its extremes two times out of three).
        """
        if rank in self.nodes:
            return
        if rate is None:
            drift = self.settings.drift
            rate = self.rng.choice([1 - drift, 1 + drift, self.rng.uniform(1 - drift, 1 + drift)])
        offset = self.rng.uniform(0, 10_000)
        self.note(f"start {rank} rate={rate:.4f}")
        clock = SkewedClock(self.clock, rate, offset, self.check)
        app = LicencePool(self.settings.count)
        network = self.network

        def send(to: int, message: object, rank: int = rank) -> None:
            self.check_durable(rank, message)
            network.send(rank, to, message)  # type: ignore[arg-type]

        writer = None
        if self.settings.disk_delay > 0:
            bound = self.settings.disk_delay
            writer = self.writers[rank] = SimWriter(
                clock, lambda: self.disk_rng.uniform(0.0, bound)
            )
        node = DomainNode(
            rank, self.ranks, clock, send, self.storage[rank], app, self.settings.timers, writer
        )
        self.nodes[rank] = node
        self.apps[rank] = app
        node.start()
        self.network.attach(rank, node)

    def wipe_and_recover(self, rank: int, amnesiac: bool = True) -> None:
        """Member ``rank`` (crashed) lost its storage; an admin recovers it.

        With ``amnesiac`` it is recovered as the daemon's ``recover`` does: empty
        log and state, marked amnesiac up to the highest epoch it can have
        voted in: its stored view's epoch (readable: only its state and log
        were lost) and the epochs its running peers are at (what the daemon
        observes from their messages while the member is damaged). Without, it
        is simply started afresh: the unsafe "delete the state file" that the
        amnesia rule exists to forbid.
        """
        if rank in self.nodes:
            raise ValueError(f"member {rank} must be crashed before its storage is wiped")
        old = self.storage[rank].load()
        storage = MemoryStorage()
        if amnesiac:
            epochs = [node.view.epoch for node in self.nodes.values()]
            if old is not None:
                epochs.append(old.view.epoch)
                if old.amnesia is not None:
                    epochs.append(old.amnesia.epoch)
            observed = max(epochs, default=0)
            empty = LicencePool(self.settings.count).snapshot()
            storage.reset_amnesiac(initial_view(self.ranks), empty, Amnesia(observed))
        self.note(f"wipe {rank} ({'amnesiac' if amnesiac else 'fresh'} recovery)")
        self.storage[rank] = storage

    # -- clients -----------------------------------------------------------

    def redirected(self, rank: int) -> int:
        """Where a client that first asks ``rank`` ends up: it follows one
        ``TRY_SERVER`` redirect, as the client library does."""
        node = self.nodes.get(rank)
        if node is None:
            return rank
        primary = node.role().primary
        return primary if primary is not None and not node.can_serve else rank

    def grant(self, rank: int, outcome: list[str] | None = None) -> str:
        """A client asks member ``rank`` for a licence (a new handle)."""
        self._handles += 1
        handle = f"h{self._handles}"
        self._grant(rank, handle, outcome)
        return handle

    def _grant(self, rank: int, handle: str, outcome: list[str] | None) -> None:
        node = self.nodes.get(rank)
        if node is None or not node.can_serve:
            if self._held(node, lambda: self._grant(rank, handle, outcome)):
                self.note(f"grant {handle} at {rank}: held")
                return
            self.note(f"grant {handle} at {rank}: not serving")
            self.stats.refused += 1
            if outcome is not None:
                outcome.append("not serving")
            return
        entries = self.apps[rank].decide_grant(handle)
        if entries is None:
            self.note(f"grant {handle} at {rank}: no licence free")
            if outcome is not None:
                outcome.append("denied")
            return
        self.note(f"grant {handle} at {rank}")
        self.follow(node.submit(entries), handle, granted=True, outcome=outcome)

    def _held(self, node: DomainNode | None, retry: Callable[[], None]) -> bool:
        """Hold a client operation as the daemon's dispatcher does (`DomainNode.held`):
        run ``retry`` when the member serves again or gives up; False: not held."""
        waiting = node.held() if node is not None else None
        if waiting is None:
            return False
        self.stats.held += 1
        waiting.addCallback(lambda _: retry())
        return True

    def release(self, rank: int, handle: str, outcome: list[str] | None = None) -> None:
        """A client releases ``handle`` at member ``rank``."""
        node = self.nodes.get(rank)
        if node is None or not node.can_serve:
            if self._held(node, lambda: self.release(rank, handle, outcome)):
                self.note(f"release {handle} at {rank}: held")
                return
            self.stats.refused += 1
            if outcome is not None:
                outcome.append("not serving")
            return
        self.note(f"release {handle} at {rank}")
        self.confirmed.discard(handle)
        self.limbo.add(handle)
        entries = self.apps[rank].decide_release(handle)
        self.follow(node.submit(entries), handle, granted=False, outcome=outcome)

    def follow(
        self, deferred: Deferred[None], handle: str, granted: bool, outcome: list[str] | None
    ) -> None:
        """Record what the client learns from ``deferred``."""

        self._ops += 1
        op = self._latest[handle] = self._ops

        def ok(_: None) -> None:
            if self._latest[handle] != op:
                return  # a later operation on this handle decides what the client knows
            self.limbo.discard(handle)
            if granted:
                self.stats.grants += 1
                self.confirmed.add(handle)
            else:
                self.stats.releases += 1
                self.released.add(handle)
            self.note(f"confirmed {'grant' if granted else 'release'} {handle}")
            if outcome is not None:
                outcome.append("ok")

        def failed(reason: Failure) -> None:
            self.stats.unknown += 1
            self.limbo.add(handle)
            self.note(f"unknown {handle}: {reason.type.__name__ if reason.type else reason}")
            if outcome is not None:
                outcome.append("unknown")

        deferred.addCallbacks(ok, failed)

    # -- time and checks ---------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Run the shared clock ``seconds`` forward, one event time at a time."""
        end = self.clock.seconds() + seconds
        while True:
            calls = self.clock.getDelayedCalls()
            due = min((c.getTime() for c in calls), default=None)
            if due is None or due > end:
                break
            self.clock.rightNow = max(self.clock.rightNow, due)
            self.clock.advance(0)
            self.stats.events += 1
        self.clock.rightNow = max(self.clock.rightNow, end)

    def serving_member(self) -> int | None:
        """The member that serves now, if any."""
        serving = [rank for rank in sorted(self.nodes) if self.nodes[rank].can_serve]
        return serving[0] if serving else None

    def check(self) -> None:
        """The safety invariants, after every event."""
        serving = [rank for rank in sorted(self.nodes) if self.nodes[rank].can_serve]
        if len(serving) > 1:
            self.fail(f"members {serving} serve at the same instant")
        for rank in serving:
            held = self.apps[rank].held
            if len(held) > self.settings.count:
                self.fail(f"member {rank} holds {len(held)} > {self.settings.count} licences")
            lost = self.confirmed - held
            if lost:
                self.fail(f"member {rank} serves without confirmed grants {sorted(lost)}")
            back = self.released & held
            if back:
                self.fail(f"member {rank} holds released licences {sorted(back)}")
        if serving and serving[0] != self._serving:
            self.note(f"member {serving[0]} serves, epoch {self.nodes[serving[0]].view.epoch}")
        self._serving = serving[0] if serving else None
        for rank, node in self.nodes.items():
            view = node.view
            if view.epoch == 0:
                continue
            known = self.decided.setdefault(view.epoch, (view.members, view.origin))
            if known == (view.members, view.origin):
                continue
            self.fail(
                f"member {rank} installed epoch {view.epoch} as {sorted(view.members)}, "
                f"another as {sorted(known[0])}"
            )
        self.stats.views = len(self.decided)

    def check_durable(self, rank: int, message: object) -> None:
        """What member ``rank`` sends is backed by its storage: it never acknowledges,
        sends, promises or accepts what its disk does not hold yet (group commit and
        the writer may hold writes back; a crash loses what they hold)."""
        storage = self.storage[rank]
        if isinstance(storage, MemoryStorage):
            # (the fast way: the simulation sends many messages)
            data = storage._data
            if data is None:
                self.fail(f"member {rank} sends {message} with nothing stored")
                return
            view, entries = data["view"], data["entries"]
            assert isinstance(view, dict) and isinstance(entries, list)
            epoch, held = view["epoch"], len(entries)
            promised, accepted = data["promised"], data["accepted"]
            accepted_ballot = accepted[0] if isinstance(accepted, list) else None
        else:
            durable = storage.load()
            if durable is None:
                self.fail(f"member {rank} sends {message} with nothing stored")
                return
            epoch, held = durable.view.epoch, len(durable.entries)
            promised = None if durable.promised is None else durable.promised.to_json()
            accepted_ballot = None if durable.accepted is None else durable.accepted[0].to_json()
        if isinstance(message, Ack) and message.granted and message.epoch == epoch:
            if message.match > held:
                self.fail(f"member {rank} acknowledges {message.match} entries, stores {held}")
        elif isinstance(message, Append) and message.epoch == epoch:
            if message.start + len(message.batches) > held:
                self.fail(
                    f"member {rank} sends entries up to {message.start + len(message.batches)}, "
                    f"stores {held}"
                )
        elif isinstance(message, Promise):
            if promised != message.ballot.to_json():
                self.fail(f"member {rank} promises {message.ballot} before storing it")
            if message.start + len(message.entries) > held:
                self.fail(f"member {rank} promises entries it does not store")
        elif isinstance(message, Accepted) and accepted_ballot != message.ballot.to_json():
            self.fail(f"member {rank} accepts {message.ballot} before storing it")

    def note(self, text: str) -> None:
        """Add a line to the trace."""
        line = f"{self.clock.seconds():9.3f} {text}"
        self.trace.append(line)
        if self.verbose:
            print(line)

    def fail(self, text: str) -> None:
        """Raise `InvariantViolation` with the replayable trace."""
        self.note(f"VIOLATION: {text}")
        raise InvariantViolation(
            f"{text}\nreplay: python -m tests.sim.harness --size {self.settings.size} "
            f"--seed {self.seed}\n--- trace (seed {self.seed}) ---\n" + "\n".join(self.trace)
        )


def main(argv: list[str] | None = None) -> int:
    """Replay one seed with its trace printed as it runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--duration", type=float, default=SimSettings.duration)
    parser.add_argument("--disk-delay", type=float, default=SimSettings.disk_delay)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    simulation = Simulation(
        SimSettings(size=args.size, duration=args.duration, disk_delay=args.disk_delay),
        args.seed,
        verbose=not args.quiet,
    )
    try:
        stats = simulation.run()
    except InvariantViolation as error:
        print(str(error).split("\n--- trace")[0])
        return 1
    print(stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
