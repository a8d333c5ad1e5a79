#!/usr/bin/env python3
"""Chaos test of a real server domain: seeded faults, concurrent clients, a checker.

One *schedule* (a pure function of its seed, apart from the daemons' own timing):

1. **Cluster.** ``--members`` (3 or 5) real ``twistd -n hqnlsd`` daemons on
   127.0.0.1..N (``tests/daemons.py``), one permit whose server domain is all of
   them, one product with ``--count`` floating licences and policy ``UVIS`` only
   (no GRAB, no timeouts: nothing is ever taken back legitimately, so a licence
   that disappears was lost). Every peer byte goes through a `FaultProxy`
   (``tests/faultproxy.py``): each member listens for peers on port P and dials
   them on port Q, where the proxy forwards to P from the dialler's address.
2. **Clients.** ``--workers`` threads, each a sequence of *sessions*: REQUEST
   with a fresh ``client=`` token (user ``wI``, pid unique to the session) ->
   1-3 UPDATEs -> RELEASE. Every operation is retried, as the client library
   does, until it gets a definitive answer: ``TRY_SERVER n=K`` goes to member K,
   ``NEW_MASTER`` / ``LOSTMASTER`` / ``NOTVERIFIED`` are retried with a backoff
   (then another member), a timeout or a dropped connection moves to the next
   member, and a REQUEST is always retried with the *same* token. Every attempt
   and operation is recorded (invocation, completion, outcome: ``ok``,
   ``failed`` with its status, or ``unknown``).
3. **Nemesis.** A seeded sequence of faults, each logged with its time:
   SIGKILL and restart, SIGSTOP and SIGCONT, a kill of the current primary,
   restart storms (members killed and restarted in quick succession),
   partitions of every shape: any split into 2 or 3 groups, the primary
   isolated, a single link cut (not transitive), one-way cuts (a member's
   sends lost, or its receipts), silent (the proxy drops bytes and keeps the
   connections open) or loud (connections reset); and heals.
4. **End.** Heal, SIGCONT, restart every member; wait (bounded) until the
   domain has converged (one primary, every other member redirects to it);
   let the clients run ``--quiet`` seconds more; stop them; final check.

The checker (`check`) reads the history and the final state (``USERS`` on the
final primary, ``UPDATE`` of every handle) and reports **violations**:

- ``over-count``: at some instant more licences were *confirmed* held than the
  count. A licence is counted, conservatively, from the completion of its
  OK'd REQUEST to the invocation of its first RELEASE attempt.
- ``lost``: a confirmed licence (OK'd REQUEST, no RELEASE sent) answered
  ``BADHANDLE`` / ``LOSTLICENCE`` to UPDATE or RELEASE, is missing from the
  final USERS listing, or does not UPDATE at the end.
- ``resurrected``: a licence whose RELEASE was answered OK is listed at the
  end, or answers UPDATE OK at the end.
- ``phantom``: a listed licence of a session that was denied or never existed.
- ``double-handle``: one handle granted to two client tokens.
- ``final-count``: the final listing holds more licences than the count.
- ``no-convergence`` / ``restart-failed``: after the heal the domain did not
  converge, or a daemon did not come back after a restart (liveness).

and **figures**: faults by kind, operations by outcome, and *availability*: of
the one-second buckets in which a majority of the members had been up and
mutually connected (both ways) for at least ``--availability-bound`` seconds,
the fraction in which some client got a served answer (OK or a denial such as
NOLICENCES; not NEW_MASTER / LOSTMASTER / NOTVERIFIED, a redirect or a
timeout). Availability is a figure, not a violation: with view-based quorums a
majority of the domain is not always a quorum of the last view
(docs/domains.md, "Liveness").

Usage (from the repository root)::

    python bench/chaos.py --members 3 --seed 1 --schedules 5 --duration 30 [--json]

Schedule k of a run uses seed ``S + k``; a failing schedule is replayed with
``--seed S+k --schedules 1``: each fault step draws from its own generator
(seed, step number), so the kinds, pauses and targets of the faults repeat,
except where a step depends on the live state (who is primary now, which
members are down after an earlier step) or on timing; the daemons' timing does
not repeat, so a race may need a few tries. Exit status: 0 when no
schedule found a violation, 1 when one did, 2 on bad arguments. Every wait is
bounded; every daemon is SIGCONTed and killed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    # Run as a script from anywhere: the repository root holds hqnlsd, tests/ and bench/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hqnlsd.domain.timing import DomainTimers
from hqnlsd.permits.policy import Policy
from hqnlsd.protocols import client_side
from hqnlsd.protocols.replies import Err, FieldValue, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonError,
    DaemonHarness,
    LineClient,
    domain_daemons,
    free_port_on_all,
    loopback,
    product_permit,
)
from tests.faultproxy import FaultProxy

PUBLISHER = "Chaos Publisher"
PRODUCT = "Chaos Widget"
VERSION = "1.0"
#: How long the daemons may take to start (each, and a member's restart).
START_BOUND = 45.0
#: How long the domain may take to converge: at the start, and after the final heal.
CONVERGE_BOUND = 90.0
#: Timeout of one client call: a grant may wait `submit_timeout` for its commit.
CALL_TIMEOUT = DomainTimers().submit_timeout + 2.0
#: Timeout of a client's connect (a member that is down refuses at once).
CONNECT_TIMEOUT = 2.0
#: Timeout of the nemesis's and the checker's probes (USERS to find the primary).
PROBE_TIMEOUT = 3.0
#: How long past the end of the quiet period clients may take to finish the
#: operation they are in (each retries until it has an answer or this passes).
FINISH_BOUND = 40.0
#: Statuses that mean "nobody serves here now, try again" (the client library's set).
RETRY_STATUSES = frozenset({Status.NEW_MASTER, Status.LOSTMASTER, Status.NOTVERIFIED})
#: Answers that are not a service: retry statuses, redirects, INTERNAL.
UNSERVED = frozenset({*RETRY_STATUSES, Status.TRY_SERVER, Status.TRY_DOMAIN, Status.INTERNAL})


# -- configuration and history -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChaosConfig:
    """One schedule's parameters."""

    members: int = 3
    seed: int = 1
    #: seconds of faults (the nemesis's active phase)
    duration: float = 20.0
    #: concurrent client threads
    workers: int = 6
    #: floating licences of the product (fewer than workers: they contend)
    count: int = 3
    #: seconds the clients keep running after the domain converged at the end
    quiet: float = 4.0
    #: a majority must have been connected this long before a bucket counts
    availability_bound: float = 8.0
    #: pause between two faults: uniform in this range (seconds)
    pause: tuple[float, float] = (1.0, 3.0)
    #: include calm steps (10-14 s without faults: availability windows); short
    #: schedules leave them out so that their seconds go to faults
    calm: bool = True


@dataclasses.dataclass
class Attempt:
    """One call to one member."""

    member: int
    invoked: float
    completed: float
    #: ``OK``, a status name, ``timeout``, ``reset`` (lost after sending) or ``refused``
    answer: str


@dataclasses.dataclass
class Operation:
    """One client operation with all its attempts."""

    worker: int
    session: int
    verb: str
    invoked: float
    completed: float = 0.0
    #: ``ok``, ``failed`` (a definitive refusal: ``status``) or ``unknown``
    outcome: str = "unknown"
    status: str = ""
    handle: str = ""
    #: an attempt was answered in a way that leaves the outcome open
    maybe_applied: bool = False
    attempts: list[Attempt] = dataclasses.field(default_factory=list)

    def trace(self) -> str:
        """The operation and its attempts, one line."""
        steps = ", ".join(
            f"{a.invoked:.2f}-{a.completed:.2f} m{a.member} {a.answer}" for a in self.attempts
        )
        status = f" {self.status}" if self.status else ""
        return (
            f"{self.verb} w{self.worker}/s{self.session} {self.handle or '-'} "
            f"[{self.invoked:.2f}-{self.completed:.2f}] {self.outcome}{status}: {steps}"
        )


@dataclasses.dataclass
class Session:
    """One client session: REQUEST, UPDATEs, RELEASE."""

    worker: int
    index: int
    token: str
    user: str
    pid: int
    handle: str = ""
    #: completion time of the OK'd REQUEST (None: no licence confirmed)
    granted: float | None = None
    #: ``denied`` (a definitive refusal), ``unknown`` (REQUEST unresolved)
    request_outcome: str = ""
    #: invocation of the first RELEASE attempt (None: never sent)
    release_sent: float | None = None
    #: completion of the RELEASE that was answered OK (or BADHANDLE after an
    #: attempt that may have applied); None: not confirmed
    released: float | None = None
    operations: list[Operation] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Violation:
    """A broken promise, with where to look."""

    kind: str
    at: float
    message: str
    trace: str = ""

    def render(self, nemesis_log: Sequence[tuple[float, str]]) -> str:
        """The violation with the faults of the 15 s before it."""
        near = [
            f"    {t:8.2f} {line}"
            for t, line in nemesis_log
            if self.at - 15.0 <= t <= self.at + 1.0
        ]
        text = f"  {self.kind} at {self.at:.2f} s: {self.message}"
        if self.trace:
            text += "\n    " + self.trace.replace("\n", "\n    ")
        if near:
            text += "\n    faults just before:\n" + "\n".join(near)
        return text


@dataclasses.dataclass
class Snapshot:
    """The members' situation from time ``at`` on: who is up, which sends are lost."""

    at: float
    up: frozenset[int]
    #: directed rank pairs (a, b): what a sends to b is lost
    lost: frozenset[tuple[int, int]]


def connected(snapshot: Snapshot, group: Sequence[int]) -> bool:
    """Every member of ``group`` is up and reaches every other one, both ways."""
    return all(rank in snapshot.up for rank in group) and all(
        (a, b) not in snapshot.lost for a in group for b in group if a != b
    )


def majorities(size: int) -> list[tuple[int, ...]]:
    """Every smallest majority of ranks 1..size (a larger one contains one of them)."""
    return list(itertools.combinations(range(1, size + 1), size // 2 + 1))


def majority_connected(snapshot: Snapshot, size: int) -> bool:
    """Some majority of the members is up and mutually connected."""
    return any(connected(snapshot, group) for group in majorities(size))


def stable_majority(
    timeline: Sequence[Snapshot], size: int, bound: float, end: float
) -> list[tuple[float, float]]:
    """The times at which one and the same majority had been up and mutually
    connected for at least ``bound`` seconds, as sorted disjoint (start, end) intervals."""
    spans: list[tuple[float, float]] = []
    for group in majorities(size):
        since: float | None = None
        for index, snapshot in enumerate(timeline):
            until = timeline[index + 1].at if index + 1 < len(timeline) else end
            if connected(snapshot, group):
                since = snapshot.at if since is None else since
                if until > since + bound:
                    spans.append((max(since + bound, snapshot.at), until))
            else:
                since = None
    merged: list[tuple[float, float]] = []
    for start, until in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], until))
        else:
            merged.append((start, until))
    return merged


class History:
    """Everything the clients did and the nemesis did, on one clock (seconds since start)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.sessions: list[Session] = []
        self.operations: list[Operation] = []
        self.nemesis: list[tuple[float, str]] = []
        self.faults: collections.Counter[str] = collections.Counter()
        self.timeline: list[Snapshot] = []
        self.violations: list[Violation] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the history started."""
        return time.monotonic() - self.started

    def log(self, kind: str, text: str) -> None:
        """Record one nemesis action (counted under ``kind`` unless empty)."""
        with self._lock:
            self.nemesis.append((self.now(), text))
            if kind:
                self.faults[kind] += 1

    def add_session(self, session: Session) -> None:
        """Record a session as it starts."""
        with self._lock:
            self.sessions.append(session)

    def add_operation(self, session: Session, operation: Operation) -> None:
        """Record an operation as it starts."""
        with self._lock:
            session.operations.append(operation)
            self.operations.append(operation)

    def violation(self, kind: str, at: float, message: str, trace: str = "") -> None:
        """Record a violation found while running."""
        with self._lock:
            self.violations.append(Violation(kind, at, message, trace))

    def snapshot(self, up: Sequence[int], lost: Sequence[tuple[int, int]]) -> None:
        """Record the members' situation from now on."""
        with self._lock:
            self.timeline.append(Snapshot(self.now(), frozenset(up), frozenset(lost)))


# -- talking to members -----------------------------------------------------------------


def call_member(
    daemon: Daemon, verb: str, fields: dict[str, FieldValue], timeout: float
) -> tuple[Ok | Err | None, str]:
    """One call on a new connection: the reply, or None and why not (``refused``:
    nothing was sent; ``timeout`` / ``reset``: sent, the outcome is open)."""
    try:
        client = LineClient(daemon.address, daemon.port, timeout=CONNECT_TIMEOUT)
    except OSError:
        return None, "refused"
    try:
        client.timeout = timeout
        client.sock.settimeout(timeout)
        return client.call(verb, **fields), ""
    except TimeoutError:
        return None, "timeout"
    except (OSError, client_side.ReplyParseError):
        return None, "reset"
    finally:
        client.close()


def users_of(daemon: Daemon, timeout: float = PROBE_TIMEOUT) -> list[str] | Ok | Err | None:
    """USERS of the product at ``daemon``: the listing lines, the reply, or None."""
    try:
        with daemon.client(timeout=timeout) as client:
            return client.listing("USERS", publisher=PUBLISHER, product=PRODUCT, version=VERSION)
    except (OSError, client_side.ReplyParseError):
        return None


def answer_name(reply: Ok | Err | None, problem: str) -> str:
    """``OK``, the status name, or the transport problem."""
    if reply is None:
        return problem
    return "OK" if isinstance(reply, Ok) else reply.status.name


# -- the cluster ------------------------------------------------------------------------


class Cluster:
    """The members, the proxy, and which members the nemesis has down or stopped."""

    def __init__(self, members: list[Daemon], proxy: FaultProxy, history: History) -> None:
        self.members = members
        self.proxy = proxy
        self.history = history
        self.size = len(members)
        self.down: set[int] = set()
        self.stopped: set[int] = set()
        self.lost: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def daemon(self, rank: int) -> Daemon:
        """The member of rank ``rank`` (1-based)."""
        return self.members[rank - 1]

    @property
    def ranks(self) -> list[int]:
        """Every rank."""
        return list(range(1, self.size + 1))

    def up(self) -> list[int]:
        """Members running and not stopped."""
        return [r for r in self.ranks if r not in self.down and r not in self.stopped]

    def record(self) -> None:
        """Snapshot the situation into the history's timeline."""
        self.history.snapshot(self.up(), sorted(self.lost))

    def primary(self, rng: random.Random | None = None) -> int | None:
        """The member serving now, found with USERS (a primary lists, a backup
        redirects); None if no up member names one that lists."""
        candidates = self.up()
        if rng is not None:
            rng.shuffle(candidates)
        for rank in candidates:
            answer = users_of(self.daemon(rank))
            if isinstance(answer, list):
                return rank
            if isinstance(answer, Err) and answer.status is Status.TRY_SERVER:
                named = int(answer.get("n") or 0)
                if named in self.up() and isinstance(users_of(self.daemon(named)), list):
                    return named
        return None

    def converged(self) -> int | None:
        """The primary if every member is up, one lists and all others redirect to it."""
        if len(self.up()) != self.size:
            return None
        answers = {rank: users_of(self.daemon(rank)) for rank in self.ranks}
        primaries = [rank for rank, answer in answers.items() if isinstance(answer, list)]
        if len(primaries) != 1:
            return None
        primary = primaries[0]
        for rank, answer in answers.items():
            if rank == primary:
                continue
            if not (
                isinstance(answer, Err)
                and answer.status is Status.TRY_SERVER
                and answer.get("n") == str(primary)
            ):
                return None
        return primary

    def wait_converged(self, bound: float) -> int | None:
        """`converged`, polled for at most ``bound`` seconds."""
        deadline = time.monotonic() + bound
        while True:
            primary = self.converged()
            if primary is not None or time.monotonic() >= deadline:
                return primary
            time.sleep(0.25)

    # -- faults ------------------------------------------------------------------------

    def kill(self, rank: int) -> None:
        """SIGKILL a member (stopped or not) and reap it."""
        daemon = self.daemon(rank)
        daemon.kill()
        with self._lock:
            self.down.add(rank)
            self.stopped.discard(rank)
        self.record()

    def start(self, rank: int) -> None:
        """Start a member that is down (does not wait for it)."""
        self.daemon(rank).start()

    def ready(self, rank: int) -> bool:
        """Wait (bounded) for a started member to answer; False (and a violation) if not."""
        daemon = self.daemon(rank)
        try:
            daemon.wait_ready(START_BOUND)
        except DaemonError as error:
            self.history.violation(
                "restart-failed", self.history.now(), f"hqnserver{rank} did not come back",
                str(error)[-3000:],
            )
            daemon.cleanup()
            return False
        with self._lock:
            self.down.discard(rank)
        self.record()
        return True

    def stop(self, rank: int) -> None:
        """SIGSTOP a member."""
        os.kill(self.daemon(rank).pid, signal.SIGSTOP)
        with self._lock:
            self.stopped.add(rank)
        self.record()

    def cont(self, rank: int) -> None:
        """SIGCONT a stopped member."""
        if self.daemon(rank).running:
            os.kill(self.daemon(rank).pid, signal.SIGCONT)
        with self._lock:
            self.stopped.discard(rank)
        self.record()

    def cut(self, groups: Sequence[Sequence[int]] | None, pairs: Sequence[tuple[int, int]],
            loud: bool) -> None:
        """Split into ``groups`` (None: no split) and lose the sends of ``pairs``."""
        everyone = [loopback(r) for r in self.ranks]
        lost: set[tuple[int, int]] = set(pairs)
        if groups is None:
            self.proxy.partition([everyone], loud=loud)
        else:
            self.proxy.partition([[loopback(r) for r in g] for g in groups], loud=loud)
            group_of = {r: i for i, g in enumerate(groups) for r in g}
            lost |= {
                (a, b) for a in self.ranks for b in self.ranks
                if a != b and group_of.get(a, -1 - a) != group_of.get(b, -1 - b)
            }
        self.proxy.cut([(loopback(a), loopback(b)) for a, b in pairs], loud=loud)
        with self._lock:
            self.lost = lost
        self.record()

    def heal(self) -> None:
        """End every cut."""
        self.proxy.heal()
        with self._lock:
            self.lost = set()
        self.record()

    def release_all(self) -> None:
        """SIGCONT every stopped member (before any cleanup kills them)."""
        for rank in sorted(self.stopped):
            with contextlib.suppress(OSError, DaemonError):
                self.cont(rank)


# -- the nemesis ------------------------------------------------------------------------


class Nemesis:
    """Seeded faults (module docstring); every action logged with its time."""

    def __init__(self, cluster: Cluster, rng: random.Random, config: ChaosConfig) -> None:
        self.cluster = cluster
        self.history = cluster.history
        self.rng = rng
        self.config = config
        self.until = 0.0

    def log(self, kind: str, text: str) -> None:
        """Log one action."""
        self.history.log(kind, text)

    def run(self, until: float) -> None:
        """Inject faults until the history's clock reaches ``until``."""
        self.until = until
        steps = 0
        while self.history.now() < until:
            # A fresh generator per step: a step whose choices depended on the
            # live state (who is primary) does not shift the draws of later ones.
            steps += 1
            self.rng = random.Random(f"{self.config.seed}-nemesis-{steps}")
            self.step()
            pause = self.rng.uniform(*self.config.pause)
            time.sleep(max(0.0, min(pause, until - self.history.now())))

    def step(self) -> None:
        """Pick and inject one fault (weights depend on the situation)."""
        c = self.cluster
        choices: list[tuple[str, float]] = []
        unavailable = len(c.down) + len(c.stopped)
        if c.stopped:
            choices.append(("cont", 3.0))
        if c.down:
            choices.append(("restart", 3.0))
        if c.lost:
            choices.append(("heal", 2.5))
        if unavailable < c.size - 1:
            choices += [("kill", 1.5), ("kill-primary", 1.5), ("stop", 1.0)]
        choices.append(("partition", 2.5))
        if not c.down and not c.stopped:
            choices.append(("storm", 0.7))
        if self.config.calm:
            choices.append(("calm", 0.8))
        kinds, weights = zip(*choices, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        getattr(self, "do_" + kind.replace("-", "_"))()

    def do_cont(self) -> None:
        """SIGCONT a stopped member."""
        rank = self.rng.choice(sorted(self.cluster.stopped))
        self.cluster.cont(rank)
        self.log("sigcont", f"SIGCONT hqnserver{rank}")

    def do_restart(self) -> None:
        """Restart a member that is down; wait (bounded) until it answers."""
        rank = self.rng.choice(sorted(self.cluster.down))
        self.log("restart", f"restart hqnserver{rank}")
        self.cluster.start(rank)
        if self.cluster.ready(rank):
            self.log("", f"hqnserver{rank} answers again")

    def do_heal(self) -> None:
        """End every cut."""
        self.cluster.heal()
        self.log("heal", "heal every cut")

    def do_kill(self) -> None:
        """SIGKILL any member still running (stopped ones too)."""
        candidates = [r for r in self.cluster.ranks if r not in self.cluster.down]
        rank = self.rng.choice(candidates)
        self.cluster.kill(rank)
        self.log("sigkill", f"SIGKILL hqnserver{rank}")

    def do_kill_primary(self) -> None:
        """SIGKILL the member serving now (a random one if none serves)."""
        primary = self.cluster.primary(self.rng)
        if primary is None:
            self.log("", "kill-primary: no member serves now; SIGKILL a random one instead")
            self.do_kill()
            return
        self.cluster.kill(primary)
        self.log("sigkill-primary", f"SIGKILL the primary hqnserver{primary}")

    def do_stop(self) -> None:
        """SIGSTOP a member: the primary half of the time."""
        up = self.cluster.up()
        primary = self.cluster.primary(self.rng) if self.rng.random() < 0.5 else None
        rank = primary if primary is not None else self.rng.choice(up)
        self.cluster.stop(rank)
        self.log("sigstop", f"SIGSTOP hqnserver{rank}" + (" (primary)" if primary else ""))

    def do_partition(self) -> None:
        """Cut the network in one of the shapes of the module docstring."""
        c = self.cluster
        ranks = c.ranks
        loud = self.rng.random() < 0.25
        how = "loud" if loud else "silent"
        shape = self.rng.choice(["split", "split", "isolate-primary", "three", "link", "one-way"])
        if shape == "isolate-primary":
            primary = c.primary(self.rng)
            if primary is None:
                shape = "split"
            else:
                groups = [[primary], [r for r in ranks if r != primary]]
                c.cut(groups, [], loud)
                self.log("partition", f"{how} partition isolating the primary: {groups}")
                return
        if shape == "three" and c.size >= 3:
            shuffled = ranks[:]
            self.rng.shuffle(shuffled)
            cuts = sorted(self.rng.sample(range(1, c.size), 2))
            groups = [
                sorted(shuffled[: cuts[0]]), sorted(shuffled[cuts[0]: cuts[1]]),
                sorted(shuffled[cuts[1]:]),
            ]
            c.cut(groups, [], loud)
            self.log("partition", f"{how} partition into three: {groups}")
            return
        if shape == "link":
            a, b = self.rng.sample(ranks, 2)
            c.cut(None, [(a, b), (b, a)], loud)
            self.log("partition", f"{how} cut of the one link hqnserver{a}-hqnserver{b}")
            return
        if shape == "one-way":
            victim = self.rng.choice(ranks)
            others = [r for r in ranks if r != victim]
            chosen = self.rng.sample(others, self.rng.randint(1, len(others)))
            if self.rng.random() < 0.5:
                pairs = [(victim, o) for o in chosen]
                what = f"what hqnserver{victim} sends to {sorted(chosen)} is lost"
            else:
                pairs = [(o, victim) for o in chosen]
                what = f"what {sorted(chosen)} send to hqnserver{victim} is lost"
            c.cut(None, pairs, False)
            self.log("one-way", f"silent one-way cut: {what}")
            return
        shuffled = ranks[:]
        self.rng.shuffle(shuffled)
        size = self.rng.randint(1, c.size - 1)
        groups = [sorted(shuffled[:size]), sorted(shuffled[size:])]
        c.cut(groups, [], loud)
        self.log("partition", f"{how} partition {groups}")

    def do_calm(self) -> None:
        """Restore a majority (heal, SIGCONT, restart down members until a majority
        is up), then inject nothing for 10-14 s: an availability window."""
        c = self.cluster
        c.heal()
        for rank in sorted(c.stopped):
            c.cont(rank)
        need = c.size // 2 + 1
        down = sorted(c.down)
        self.rng.shuffle(down)
        restarted: list[int] = []
        while len(c.up()) + len(restarted) < need and down:
            rank = down.pop()
            if not c.daemon(rank).running:
                c.start(rank)
            restarted.append(rank)
        for rank in restarted:
            c.ready(rank)
        quiet = min(self.rng.uniform(10.0, 14.0), max(0.0, self.until - self.history.now()))
        self.log("calm", f"calm for {quiet:.1f} s: healed, SIGCONT, up {c.up()}")
        time.sleep(quiet)

    def do_storm(self) -> None:
        c = self.cluster
        rounds = self.rng.randint(2, max(2, c.size))
        self.log("storm", f"restart storm: {rounds} kills and restarts in quick succession")
        started: list[int] = []
        for _ in range(rounds):
            rank = self.rng.choice(c.ranks)
            if rank in c.down and not c.daemon(rank).running:
                c.start(rank)
                self.log("restart", f"storm: restart hqnserver{rank}")
                started.append(rank)
            else:
                c.kill(rank)
                self.log("sigkill", f"storm: SIGKILL hqnserver{rank}")
                c.start(rank)
                self.log("restart", f"storm: restart hqnserver{rank} at once")
                started.append(rank)
            time.sleep(self.rng.uniform(0.3, 1.5))
        for rank in sorted(set(started)):
            if c.daemon(rank).running and c.ready(rank):
                self.log("", f"storm: hqnserver{rank} answers again")

    def finish(self) -> None:
        """Heal, SIGCONT and restart everything (the end of every schedule)."""
        c = self.cluster
        c.heal()
        self.log("", "end: heal every cut")
        for rank in sorted(c.stopped):
            c.cont(rank)
            self.log("", f"end: SIGCONT hqnserver{rank}")
        down = sorted(c.down)
        for rank in down:
            if not c.daemon(rank).running:
                c.start(rank)
                self.log("", f"end: restart hqnserver{rank}")
        for rank in down:
            if c.daemon(rank).running and c.ready(rank):
                self.log("", f"end: hqnserver{rank} answers again")


# -- the clients -------------------------------------------------------------------------


class Worker(threading.Thread):
    """A client thread: sessions of REQUEST, UPDATEs, RELEASE, each retried (module docstring)."""

    def __init__(
        self, index: int, cluster: Cluster, config: ChaosConfig, stop: threading.Event,
        deadline: list[float],
    ) -> None:
        super().__init__(name=f"chaos-worker-{index}", daemon=True)
        self.index = index
        self.cluster = cluster
        self.history = cluster.history
        self.config = config
        self.rng = random.Random(f"{config.seed}-worker-{index}")
        self.stop_event = stop
        #: history time after which an operation gives up (a list: set by the runner)
        self.deadline = deadline
        self.target = 1 + (index % cluster.size)
        self.sessions = 0

    def run(self) -> None:
        """Sessions until told to stop."""
        while not self.stop_event.is_set():
            self.session()

    def session(self) -> None:
        """One session; stops early (holding the licence) when told to stop."""
        self.sessions += 1
        session = Session(
            worker=self.index,
            index=self.sessions,
            token=f"chaos{self.config.seed}-w{self.index}-s{self.sessions}",
            user=f"w{self.index}",
            pid=self.index * 100000 + self.sessions,
        )
        self.history.add_session(session)
        request = self.operation(session, "REQUEST", {
            "publisher": PUBLISHER, "product": PRODUCT, "version": VERSION,
            "user": session.user, "host": "chaoshost", "pid": session.pid,
            "client": session.token,
        })
        if request.outcome != "ok":
            session.request_outcome = "denied" if request.outcome == "failed" else "unknown"
            self.stop_event.wait(self.rng.uniform(0.2, 0.6))
            return
        session.handle = request.handle
        session.granted = request.completed
        for _ in range(self.rng.randint(1, 3)):
            if self.stop_event.wait(self.rng.uniform(0.1, 0.5)):
                return
            update = self.operation(session, "UPDATE", {"handle": session.handle})
            if update.outcome == "failed":
                self.history.violation(
                    "lost", update.completed,
                    f"confirmed licence {session.handle} of {session.token} answered "
                    f"{update.status} to UPDATE", update.trace(),
                )
                return
            if update.outcome != "ok":
                return
        if self.stop_event.is_set():
            return
        session.release_sent = self.history.now()
        release = self.operation(session, "RELEASE", {"handle": session.handle})
        if release.outcome == "ok":
            session.released = release.completed
        elif release.outcome == "failed" and release.maybe_applied and release.status in (
            "BADHANDLE", "LOSTLICENCE"
        ):
            session.released = release.completed  # an earlier attempt took effect
        elif release.outcome == "failed":
            self.history.violation(
                "lost", release.completed,
                f"confirmed licence {session.handle} of {session.token} answered "
                f"{release.status} to its first RELEASE", release.trace(),
            )

    def operation(
        self, session: Session, verb: str, fields: dict[str, FieldValue]
    ) -> Operation:
        """Run one operation to a definitive answer, or until the deadline (unknown)."""
        operation = Operation(self.index, session.index, verb, self.history.now())
        operation.handle = str(fields.get("handle", ""))
        self.history.add_operation(session, operation)
        busy = 0
        redirects = 0
        while True:
            if self.history.now() > self.deadline[0]:
                # Gave up: unknown (even if no attempt could have applied, a
                # "failed" here would read as a definitive refusal).
                operation.outcome = "unknown"
                operation.completed = self.history.now()
                return operation
            rank = self.target
            invoked = self.history.now()
            reply, problem = call_member(self.cluster.daemon(rank), verb, fields, CALL_TIMEOUT)
            completed = self.history.now()
            answer = answer_name(reply, problem)
            operation.attempts.append(Attempt(rank, invoked, completed, answer))
            if reply is None:
                if problem != "refused":
                    operation.maybe_applied = True
                self.next_member()
                self.stop_event.wait(0.05 if problem == "refused" else 0.0)
                continue
            if isinstance(reply, Ok):
                operation.outcome = "ok"
                operation.completed = completed
                if verb == "REQUEST":
                    operation.handle = reply.get("handle") or ""
                return operation
            status = reply.status
            if status is Status.TRY_SERVER:
                redirects += 1
                named = int(reply.get("n") or 0)
                if 1 <= named <= self.cluster.size and named != rank:
                    self.target = named
                else:
                    self.next_member()
                if redirects % (2 * self.cluster.size) == 0:
                    time.sleep(0.2)  # a loop of redirects: let the view settle
                continue
            if status in RETRY_STATUSES:
                if status is Status.NEW_MASTER:
                    operation.maybe_applied = True  # "not confirmed before a change"
                busy += 1
                time.sleep(min(1.0, 0.1 * 2 ** min(busy, 4)) * self.rng.uniform(0.5, 1.0))
                if busy % 3 == 0:
                    self.next_member()
                continue
            operation.outcome = "failed"
            operation.status = status.name
            operation.completed = completed
            return operation

    def next_member(self) -> None:
        """Move on to the next member."""
        self.target = 1 + (self.target % self.cluster.size)


# -- the checker -------------------------------------------------------------------------


@dataclasses.dataclass
class FinalState:
    """What the domain says at the end."""

    primary: int | None
    #: (user, pid) of every holder listed by USERS on the primary
    listed: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: handle -> the answer to UPDATE at the end
    updates: dict[str, str] = dataclasses.field(default_factory=dict)
    problem: str = ""


def final_state(cluster: Cluster, sessions: Sequence[Session], bound: float) -> FinalState:
    """Find the primary, list the holders, UPDATE every handle ever granted; all
    again (bounded) if any answer was not a served one (the view changed meanwhile)."""
    deadline = time.monotonic() + bound
    handles = sorted({s.handle for s in sessions if s.handle})
    problem = "no member served"
    while time.monotonic() < deadline:
        time.sleep(0.25)
        primary = cluster.primary()
        if primary is None:
            problem = "no member served"
            continue
        daemon = cluster.daemon(primary)
        listing = users_of(daemon, CALL_TIMEOUT)
        if not isinstance(listing, list):
            problem = f"hqnserver{primary} answered USERS with {listing}"
            continue
        state = FinalState(primary)
        for line in listing:
            fields = client_side.parse_fields(line)
            state.listed.append((fields.get("user", ""), int(fields.get("pid", "-1"))))
        try:
            with daemon.client(timeout=CALL_TIMEOUT) as client:
                for handle in handles:
                    answer = answer_name(client.call("UPDATE", handle=handle), "")
                    state.updates[handle] = answer
        except (OSError, client_side.ReplyParseError) as error:
            problem = f"UPDATE at hqnserver{primary} failed: {error}"
            continue
        unserved = [a for a in state.updates.values() if a != "OK" and Status[a] in UNSERVED]
        if unserved:
            problem = f"hqnserver{primary} answered UPDATE with {unserved[0]}"
            continue
        return state
    return FinalState(None, problem=f"final check: not within {bound:g} s ({problem})")


def check(history: History, count: int, final: FinalState, end: float) -> list[Violation]:
    """Every violation of the promises in the history and the final state (module docstring)."""
    found: list[Violation] = []
    sessions = history.sessions

    # (1) confirmed licences held at once never exceed the count.
    edges: list[tuple[float, int, Session]] = []
    for s in sessions:
        if s.granted is None:
            continue
        until = s.release_sent if s.release_sent is not None else end
        if until > s.granted:
            edges += [(s.granted, +1, s), (until, -1, s)]
    edges.sort(key=lambda edge: (edge[0], edge[1]))  # ends before starts at one instant
    held: dict[str, Session] = {}
    for at, step, s in edges:
        if step < 0:
            held.pop(s.token, None)
            continue
        held[s.token] = s
        if len(held) > count:
            found.append(Violation(
                "over-count", at,
                f"{len(held)} licences confirmed held at once, the count is {count}",
                "\n".join(
                    f"{h.token} {h.handle} held from {h.granted:.2f} s" for h in held.values()
                ),
            ))

    # (4) no handle granted to two tokens.
    owners: dict[str, set[str]] = collections.defaultdict(set)
    first: dict[str, Operation] = {}
    for s in sessions:
        for op in s.operations:
            if op.verb == "REQUEST" and op.outcome == "ok" and op.handle:
                owners[op.handle].add(s.token)
                first.setdefault(op.handle, op)
    for handle, tokens in owners.items():
        if len(tokens) > 1:
            found.append(Violation(
                "double-handle", first[handle].completed,
                f"handle {handle} granted to {len(tokens)} tokens: {sorted(tokens)}",
            ))

    # Final state: (2) confirmed licences still held, (3) released ones not back.
    if final.primary is None or final.problem:
        found.append(Violation("no-convergence", end, final.problem or "no primary at the end"))
        return found
    by_holder = {(s.user, s.pid): s for s in sessions}
    listed = collections.Counter(final.listed)
    if len(final.listed) > count:
        found.append(Violation(
            "final-count", end, f"{len(final.listed)} licences listed, the count is {count}"
        ))
    for s in sessions:
        if s.granted is not None and s.release_sent is None:
            if listed[(s.user, s.pid)] != 1:
                found.append(Violation(
                    "lost", end, f"confirmed licence {s.handle} of {s.token} (pid {s.pid}) is "
                    f"listed {listed[(s.user, s.pid)]} times at the end",
                    "\n".join(op.trace() for op in s.operations),
                ))
            answer = final.updates.get(s.handle, "missing")
            if answer != "OK":
                found.append(Violation(
                    "lost", end, f"confirmed licence {s.handle} of {s.token} answered "
                    f"{answer} to UPDATE at the end",
                    "\n".join(op.trace() for op in s.operations),
                ))
        if s.released is not None:
            if listed[(s.user, s.pid)]:
                found.append(Violation(
                    "resurrected", s.released,
                    f"licence {s.handle} of {s.token} (pid {s.pid}) released at "
                    f"{s.released:.2f} s is listed at the end",
                    "\n".join(op.trace() for op in s.operations),
                ))
            if final.updates.get(s.handle) == "OK":
                found.append(Violation(
                    "resurrected", s.released,
                    f"licence {s.handle} of {s.token} released at {s.released:.2f} s answers "
                    "UPDATE OK at the end",
                    "\n".join(op.trace() for op in s.operations),
                ))
    for holder, times in listed.items():
        owner = by_holder.get(holder)
        if owner is None:
            found.append(Violation(
                "phantom", end, f"listed holder {holder} is no session of this run"
            ))
        elif owner.request_outcome == "denied":
            found.append(Violation(
                "phantom", end,
                f"{owner.token} (pid {owner.pid}) was denied, yet holds a licence",
                "\n".join(op.trace() for op in owner.operations),
            ))
        elif times > 1:
            found.append(Violation("phantom", end, f"{owner.token} is listed {times} times"))
    return found


def availability(history: History, size: int, bound: float, end: float) -> dict[str, Any]:
    """Served one-second buckets among those where a majority was connected long enough."""
    served: set[int] = set()
    for op in history.operations:
        for attempt in op.attempts:
            if attempt.answer == "OK" or (
                attempt.answer in Status.__members__
                and Status[attempt.answer] not in UNSERVED
            ):
                served.add(int(attempt.completed))
    eligible: set[int] = set()
    for start, until in stable_majority(history.timeline, size, bound, end):
        eligible.update(range(math.ceil(start), math.floor(until)))  # whole buckets inside
    hits = len(eligible & served)
    # What clients were told in the eligible seconds nobody was served: with an
    # honest domain, NOTVERIFIED / LOSTMASTER (waiting for members), not NEW_MASTER.
    told: collections.Counter[str] = collections.Counter(
        attempt.answer
        for op in history.operations
        for attempt in op.attempts
        if int(attempt.completed) in eligible - served
    )
    longest = gap = 0
    previous = None
    for bucket in sorted(eligible):
        if previous is not None and bucket != previous + 1:
            gap = 0  # a new eligible stretch
        gap = 0 if bucket in served else gap + 1
        longest = max(longest, gap)
        previous = bucket
    return {
        "eligible_seconds": len(eligible),
        "served_seconds": hits,
        "fraction": round(hits / len(eligible), 4) if eligible else None,
        "longest_unserved_seconds": longest,
        "unserved_answers": dict(told),
    }


# -- one schedule ------------------------------------------------------------------------


@dataclasses.dataclass
class ScheduleResult:
    """What one schedule did and found."""

    config: ChaosConfig
    faults: dict[str, int]
    operations: dict[str, dict[str, int]]
    sessions: int
    attempts: int
    availability: dict[str, Any]
    violations: list[Violation]
    nemesis_log: list[tuple[float, str]]
    converge_seconds: float | None
    final_primary: int | None
    final_listed: int
    internal_errors: list[str]
    seconds: float
    log_tails: str = ""

    def summary(self) -> str:
        """A few lines for people."""
        c = self.config
        ops = "; ".join(
            f"{verb} " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            for verb, kinds in sorted(self.operations.items())
        )
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        avail = self.availability
        fraction = "n/a" if avail["fraction"] is None else f"{avail['fraction']:.2f}"
        lines = [
            f"schedule seed {c.seed}: {c.members} members, {c.workers} clients, count "
            f"{c.count}, {c.duration:g} s of faults, {self.seconds:.0f} s in all",
            f"  faults: {faults}",
            f"  operations: {ops} ({self.sessions} sessions, {self.attempts} attempts)",
            f"  availability: {fraction} ({avail['served_seconds']} of "
            f"{avail['eligible_seconds']} s with a majority connected >= "
            f"{c.availability_bound:g} s; longest unserved {avail['longest_unserved_seconds']} s"
            + (f"; told then: {avail['unserved_answers']}" if avail["unserved_answers"] else "")
            + ")",
            "  end: converged in "
            + ("NEVER" if self.converge_seconds is None else f"{self.converge_seconds:.1f} s")
            + f", primary hqnserver{self.final_primary}, {self.final_listed} licences listed",
        ]
        if self.internal_errors:
            lines.append(f"  internal errors logged by daemons: {len(self.internal_errors)}")
            lines += [f"    {line}" for line in self.internal_errors[:5]]
        if self.violations:
            lines.append(f"  VIOLATIONS: {len(self.violations)} (replay: --seed {c.seed} "
                         f"--members {c.members} --duration {c.duration:g} --schedules 1)")
            lines += [v.render(self.nemesis_log) for v in self.violations[:8]]
        else:
            lines.append("  violations: none")
        return "\n".join(lines)

    def nemesis_text(self) -> str:
        """The nemesis log, one timed line per action."""
        return "\n".join(f"  {t:8.2f} {line}" for t, line in self.nemesis_log)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "seed": self.config.seed,
            "members": self.config.members,
            "workers": self.config.workers,
            "count": self.config.count,
            "duration": self.config.duration,
            "seconds": round(self.seconds, 2),
            "faults": self.faults,
            "operations": self.operations,
            "sessions": self.sessions,
            "attempts": self.attempts,
            "availability": self.availability,
            "converge_seconds": self.converge_seconds,
            "final_primary": self.final_primary,
            "final_listed": self.final_listed,
            "internal_errors": self.internal_errors,
            "violations": [dataclasses.asdict(v) for v in self.violations],
            "nemesis": [[round(t, 3), line] for t, line in self.nemesis_log],
        }


def internal_errors(members: Sequence[Daemon]) -> list[str]:
    """Critical log lines and tracebacks of every daemon (all its starts)."""
    return [
        f"{member.name}: {line.strip()}"
        for member in members
        for line in member.log_text().splitlines()
        if "#critical]" in line or "Traceback" in line
    ]


@contextlib.contextmanager
def domain(
    root: Path, config: ChaosConfig, tails: io.StringIO
) -> Iterator[tuple[list[Daemon], FaultProxy]]:
    """The members (not started) behind a fault proxy; all killed at the end."""
    addresses = [loopback(n) for n in range(1, config.members + 1)]
    peer_port = free_port_on_all(addresses)
    dial_port = free_port_on_all(addresses, avoid=[peer_port])
    harness = DaemonHarness(root)
    try:
        with FaultProxy.for_members(
            addresses, listen_port=dial_port, target_port=peer_port
        ) as proxy:
            members = domain_daemons(
                harness,
                config.members,
                [product_permit(
                    PRODUCT, publisher=PUBLISHER, version=VERSION, policy=int(Policy.UVIS),
                    floating_count=config.count,
                )],
                peer_port=peer_port,
                peer_dial_port=dial_port,
            )
            yield members, proxy
    finally:
        for daemon in harness.daemons.values():
            if daemon.running:
                with contextlib.suppress(OSError):
                    os.kill(daemon.pid, signal.SIGCONT)  # never leave a stopped process
        with contextlib.redirect_stdout(tails):
            harness.close()


def run_schedule(config: ChaosConfig, root: Path) -> ScheduleResult:
    """Run one schedule in ``root`` (made; must be short: admin sockets live there)."""
    root.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    tails = io.StringIO()
    history = History()
    rng = random.Random(f"{config.seed}-nemesis")
    stop = threading.Event()
    workers: list[Worker] = []
    converge: float | None = None
    final = FinalState(None, problem="not reached")
    end = 0.0
    with domain(root, config, tails) as (members, proxy):
        cluster = Cluster(members, proxy, history)
        try:
            for daemon in members:
                daemon.start()
            for daemon in members:
                daemon.wait_ready(START_BOUND)
            if cluster.wait_converged(CONVERGE_BOUND) is None:
                raise DaemonError(f"the domain did not converge within {CONVERGE_BOUND:g} s")
            history.started = time.monotonic()
            history.log("", "start: every member up, converged")
            cluster.record()
            deadline = [float("inf")]
            workers = [
                Worker(i, cluster, config, stop, deadline) for i in range(1, config.workers + 1)
            ]
            for worker in workers:
                worker.start()
            Nemesis(cluster, rng, config).run(config.duration)
            Nemesis(cluster, rng, config).finish()
            healed = history.now()
            primary = cluster.wait_converged(CONVERGE_BOUND)
            if primary is not None:
                converge = history.now() - healed
                history.log("", f"end: converged, primary hqnserver{primary}")
                time.sleep(config.quiet)
            else:
                history.violation(
                    "no-convergence", history.now(),
                    f"not converged {CONVERGE_BOUND:g} s after the heal with every member up",
                )
            deadline[0] = history.now() + FINISH_BOUND
            stop.set()
            for worker in workers:
                worker.join(FINISH_BOUND + CALL_TIMEOUT + 5.0)
            end = history.now()
            history.log("", "end: clients stopped; final check")
            final = final_state(cluster, history.sessions, CONVERGE_BOUND)
        finally:
            stop.set()
            cluster.release_all()
        errors = internal_errors(members)
    violations = history.violations + check(history, config.count, final, end)
    operations: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for op in history.operations:
        operations[op.verb][op.outcome if op.outcome != "failed" else op.status] += 1
    result = ScheduleResult(
        config=config,
        faults=dict(history.faults),
        operations={verb: dict(kinds) for verb, kinds in operations.items()},
        sessions=len(history.sessions),
        attempts=sum(len(op.attempts) for op in history.operations),
        availability=availability(history, config.members, config.availability_bound, end),
        violations=sorted(violations, key=lambda v: v.at),
        nemesis_log=list(history.nemesis),
        converge_seconds=converge,
        final_primary=final.primary,
        final_listed=len(final.listed),
        internal_errors=errors,
        seconds=time.monotonic() - began,
    )
    if violations:
        result.log_tails = tails.getvalue()
    return result


# -- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, choices=(3, 5), default=3)
    parser.add_argument("--seed", type=int, default=1, help="seed of the first schedule")
    parser.add_argument("--schedules", type=int, default=1, help="schedules to run (seeds S..)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of faults each")
    parser.add_argument("--workers", type=int, default=6, help="concurrent clients")
    parser.add_argument("--count", type=int, default=None,
                        help="floating licences (default: members)")
    parser.add_argument("--quiet", type=float, default=4.0,
                        help="seconds the clients run after the final convergence")
    parser.add_argument("--availability-bound", type=float, default=8.0,
                        help="seconds a majority must be connected before a bucket counts")
    parser.add_argument("--no-calm", action="store_true",
                        help="no calm steps (short schedules: every second to faults)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the daemons' trees here (short path: AF_UNIX sockets)")
    parser.add_argument("--log", action="store_true", help="print every nemesis action")
    parser.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = parser.parse_args(argv)
    if args.schedules < 1 or args.duration <= 0 or args.workers < 1:
        parser.error("--schedules, --duration and --workers must be positive")
    if args.count is not None and args.count < 1:
        parser.error("--count must be positive")
    return args


def config_of(args: argparse.Namespace, seed: int) -> ChaosConfig:
    """The configuration of the schedule with ``seed``."""
    return ChaosConfig(
        members=args.members,
        seed=seed,
        duration=args.duration,
        workers=args.workers,
        count=args.count if args.count is not None else args.members,
        quiet=args.quiet,
        availability_bound=args.availability_bound,
        calm=not args.no_calm,
    )


def totals(results: Sequence[ScheduleResult]) -> dict[str, Any]:
    """Faults, operations and availability summed over schedules."""
    faults: collections.Counter[str] = collections.Counter()
    operations: collections.Counter[str] = collections.Counter()
    eligible = served = 0
    for result in results:
        faults.update(result.faults)
        for verb, kinds in result.operations.items():
            operations.update({f"{verb} {kind}": n for kind, n in kinds.items()})
        eligible += result.availability["eligible_seconds"]
        served += result.availability["served_seconds"]
    return {
        "schedules": len(results),
        "faults": dict(faults),
        "fault_total": sum(faults.values()),
        "operations": dict(operations),
        "availability": round(served / eligible, 4) if eligible else None,
        "eligible_seconds": eligible,
        "violations": sum(len(r.violations) for r in results),
    }


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: leave through the ``finally`` clauses, which kill every daemon."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the schedules; the exit status (module docstring)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    results: list[ScheduleResult] = []
    try:
        with contextlib.ExitStack() as stack:
            if args.workdir is None:
                base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
            else:
                args.workdir.mkdir(parents=True, exist_ok=True)
                base = Path(tempfile.mkdtemp(prefix="chaos-", dir=args.workdir))
            for k in range(args.schedules):
                config = config_of(args, args.seed + k)
                result = run_schedule(config, base / f"s{config.seed}")
                results.append(result)
                print(result.summary())
                if args.log or result.violations:
                    print("  nemesis log:\n" + result.nemesis_text())
                if result.violations and result.log_tails:
                    print(result.log_tails, file=sys.stderr)
                sys.stdout.flush()
    except DaemonError as error:
        print(f"chaos: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chaos: interrupted; every daemon was killed", file=sys.stderr)
        return 130
    summary = totals(results)
    print(
        f"{summary['schedules']} schedules of {args.members} members: "
        f"{summary['fault_total']} faults, availability "
        + ("n/a" if summary["availability"] is None else f"{summary['availability']:.2f}")
        + f" over {summary['eligible_seconds']} eligible s, "
        f"{summary['violations']} violations"
    )
    if args.json:
        print(json.dumps(
            {"totals": summary, "schedules": [r.as_dict() for r in results]}, sort_keys=True
        ))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
