"""Exhaustive small-scope check of the pure domain core (`hqnlsd.domain.node`).

A *world* is ``N`` `DomainNode` members, each with its `MemoryStorage`, its
`LicencePool` and its own clock, a multiset of messages in flight (each one in
its JSON wire form, as the peer links carry it), the set of cut links, and what
clients were told. From a starting state (a *scenario*) the explorer tries every
action in every reachable state, breadth first, up to a depth:

- ``deliver``: hand the oldest in-flight message of a link to its receiver
  (a peer link is one ordered stream; ``--reorder`` delivers any);
- ``dup``: hand it over and keep it in flight (a duplicate);
- ``drop``: lose it (off by default: for safety, never delivering a message
  reaches every state a drop does, except against the in-flight bound);
- ``fire``: run a member's next timer (tick, group-commit flush, a retry) that
  is due, or if none is due the earliest, moving the shared time to its
  deadline (``--late-timers``: any member's, so others' run late). Messages
  arrive at the instant of the latest event (no delay: the tightest case for
  the lease arithmetic);
- ``crash``: the member stops, keeping only its storage; messages to it are lost
  (its connections are reset), messages it sent still arrive;
- ``restart``: it starts again from its storage (its monotonic clock continues,
  as on one host);
- ``cut``/``heal``: a link goes down (its messages are lost, both ends are told
  ``disconnected``) or back up;
- ``grant``/``release``: a client asks the serving member for a new licence or
  releases one it was granted; the outcome is recorded when the submission's
  Deferred fires.

Member clocks run at the documented drift bound (by default hqnserver1 slow,
the others fast: the worst case for the first primary) on one shared time that
only moves forward. States are deduplicated by a hash of a canonical form:
every field of every node (durable and volatile; times relative to the owner's
clock now), storage, engine state, pending timers, the in-flight multiset, cut
links, client knowledge, decided views so far and the remaining budgets.

In every state the invariants of ``docs/domains.md`` are checked: at most one
member serves (I4); every member that installed or stored epoch ``e`` has the
same view and state for it (I1); the serving member holds every confirmed
grant and no confirmed release (I3) and at most the count (I5). An exception
from the core is a violation too. A violation is printed with the shortest
action trace that reaches it (breadth first), replayed from the start to make
sure it reproduces.

The starting states (``--scenario``) are reached by a scripted fair run (oldest
message first, else the earliest timer), itself checked: ``boot`` (everyone
just started, epoch 0); ``serving`` (hqnserver1 serves every member, one
licence confirmed, nothing in flight); ``isolated`` (the primary cut off from
everyone, a backup has just stood); ``contested`` (only the link 1-2 cut, 2
has just stood while 3 is still bound to 1); ``restarted`` (2 stood and was
refused, then 3 crashed and restarted: its quarantine); ``promised`` (as
isolated, until 3 has promised, then the link 1-3 heals); ``split`` (the lower
half of the members cut from the upper half until one of the upper stands).

Run ``python -m tests.sim.explore --members 3 --depth 7``; ``--help`` lists the
bounds and the mutations (deliberate bugs the explorer must catch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

import hqnlsd.domain.node as node_module
from hqnlsd.domain import membership
from hqnlsd.domain.messages import Message, decode, encode
from hqnlsd.domain.node import DomainNode
from hqnlsd.domain.storage import MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import View
from tests.sim.app import LicencePool

#: Timers coarse enough that a few firings span a lease, an election timeout
#: or a settle period (the safety argument needs only the lease inequality,
#: which `DomainTimers` itself enforces); small ``max_entries`` makes the
#: primary compact (a view change) after two batches.
EXPLORE_TIMERS = DomainTimers(
    tick=1.0,
    lease=2.5,
    election_timeout=1.5,
    stagger=0.5,
    candidacy_timeout=3.0,
    peer_timeout=2.0,
    settle=2.0,
    drain_timeout=2.0,
    submit_timeout=6.0,
    max_entries=2,
)

#: A state of the world that cannot be compared: its hash.
Digest = bytes
#: An action, as a hashable tuple whose first item is its kind.
Action = tuple[Any, ...]


class Violation(AssertionError):
    """An invariant failed in an explored state; the message names it."""


# -- time --------------------------------------------------------------------


class ScheduledCall:
    """A call a member's clock will run (`hqnlsd.domain.node.Timer`)."""

    def __init__(
        self,
        owner: MemberClock,
        deadline: float,
        seq: int,
        func: Callable[..., object],
        args: tuple[object, ...],
        kw: dict[str, object],
    ) -> None:
        """A call of ``func(*args, **kw)`` at shared time ``deadline``."""
        self.owner = owner
        self.deadline = deadline
        self.seq = seq
        self.func = func
        self.args = args
        self.kw = kw
        self.pending = True

    def active(self) -> bool:
        """True until it has run or been cancelled."""
        return self.pending

    def cancel(self) -> None:
        """Do not run it."""
        if self.pending:
            self.pending = False
            self.owner.calls.remove(self)


class MemberClock:
    """A member's monotonic clock: ``offset + rate * world.now`` (it never jumps back)."""

    def __init__(self, world: World, rate: float, offset: float) -> None:
        """A clock at ``rate`` on the shared time of ``world``."""
        self.world = world
        self.rate = rate
        self.offset = offset
        self.calls: list[ScheduledCall] = []

    def seconds(self) -> float:
        """This member's now."""
        return self.offset + self.rate * self.world.now

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> ScheduledCall:
        """Run ``callable`` after ``delay`` seconds of this clock."""
        self.world.seq += 1
        call = ScheduledCall(
            self, self.world.now + max(0.0, delay) / self.rate, self.world.seq, callable, args, kw
        )
        self.calls.append(call)
        return call

    def next_call(self) -> ScheduledCall | None:
        """The call that runs first (earliest deadline, then first scheduled)."""
        return min(self.calls, key=lambda c: (c.deadline, c.seq), default=None)


# -- the world ---------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """What one exploration may do besides deliver messages and fire timers."""

    crashes: int = 1
    cuts: int = 1
    grants: int = 1
    releases: int = 1
    duplicates: int = 1
    drops: int = 0
    #: a state with more messages in flight is counted but not expanded
    max_inflight: int = 8
    #: deliver the messages of one link in any order (peer links are ordered streams)
    reorder: bool = False
    #: let any member's timer run while others' are overdue (see `World.fireable`)
    late_timers: bool = False


@dataclass
class Budget:
    """How much of each bounded action a path has used (part of the state)."""

    crashes: int = 0
    cuts: int = 0
    grants: int = 0
    releases: int = 0
    duplicates: int = 0
    drops: int = 0


@dataclass
class InFlight:
    """One message on its way: the wire text without ``sent_at``, and that time.

    ``sent_at`` is read on the clock of member ``clock_of`` (the sender for an
    Append, the receiver for an Ack, which echoes it), so the canonical form can
    make it relative.
    """

    sender: int
    to: int
    wire: str
    shape: str
    clock_of: int
    sent_at: float | None


class World:
    """Everything the explorer copies: members, storage, network, clients, history."""

    def __init__(
        self, size: int, count: int, timers: DomainTimers, rates: dict[int, float], bounds: Bounds
    ) -> None:
        """``size`` members, all stopped, at shared time 0."""
        self.ranks = tuple(range(1, size + 1))
        self.domain = frozenset(self.ranks)
        self.count = count
        self.timers = timers
        self.bounds = bounds
        self.now = 0.0
        self.seq = 0
        self.clocks = {r: MemberClock(self, rates[r], 1000.0 * r) for r in self.ranks}
        self.storage = {r: MemoryStorage() for r in self.ranks}
        self.nodes: dict[int, DomainNode] = {}
        self.apps: dict[int, LicencePool] = {}
        self.inflight: list[InFlight] = []
        self.cut: set[tuple[int, int]] = set()
        self.used = Budget()
        # clients: what they were told, as in tests/sim/harness.py
        self.handles = 0
        self.confirmed: set[str] = set()
        self.released: set[str] = set()
        self.limbo: set[str] = set()
        self.latest: dict[str, int] = {}
        #: epoch -> the canonical (view, state) first seen installed or stored for it
        self.decided: dict[int, str] = {}
        self.error: str | None = None

    # -- network -----------------------------------------------------------

    def link_up(self, a: int, b: int) -> bool:
        """Both ends run and the link is not cut."""
        return a in self.nodes and b in self.nodes and (min(a, b), max(a, b)) not in self.cut

    def send(self, sender: int, to: int, message: Message) -> None:
        """Put ``message`` in flight (through its wire form), unless the link is down."""
        if not self.link_up(sender, to):
            return
        data = encode(message)
        wire = json.dumps(data, sort_keys=True, allow_nan=False)
        sent_at = data.pop("sent_at", None)
        shape = json.dumps(data, sort_keys=True) if sent_at is not None else wire
        clock_of = to if data["type"] == "ack" else sender
        self.inflight.append(
            InFlight(sender, to, wire, shape, clock_of, None if sent_at is None else float(sent_at))  # type: ignore[arg-type]
        )

    # -- members -----------------------------------------------------------

    def start(self, rank: int) -> None:
        """Start (or restart) ``rank`` from its storage and tell the links."""
        app = LicencePool(self.count)
        node = DomainNode(
            rank,
            self.domain,
            self.clocks[rank],
            Sender(self, rank),
            self.storage[rank],
            app,
            self.timers,
        )
        self.nodes[rank] = node
        self.apps[rank] = app
        node.start()
        for other in self.ranks:
            if other != rank and self.link_up(rank, other):
                node.connected(other)
                self.nodes[other].connected(rank)

    def crash(self, rank: int) -> None:
        """Kill ``rank``: only its storage survives; what was sent to it is lost."""
        node = self.nodes.pop(rank)
        del self.apps[rank]
        node.stop()
        clock = self.clocks[rank]
        for call in list(clock.calls):
            call.cancel()
        self.inflight = [m for m in self.inflight if m.to != rank]
        for other in self.nodes:
            if (min(rank, other), max(rank, other)) not in self.cut:
                self.nodes[other].disconnected(rank)

    def set_cut(self, a: int, b: int, cut: bool) -> None:
        """Cut or heal the link between ``a`` and ``b`` (``a < b``)."""
        was_up = self.link_up(a, b)
        if cut:
            self.cut.add((a, b))
            self.inflight = [m for m in self.inflight if {m.sender, m.to} != {a, b}]
            if was_up:
                self.nodes[a].disconnected(b)
                self.nodes[b].disconnected(a)
        else:
            self.cut.discard((a, b))
            if self.link_up(a, b):
                self.nodes[a].connected(b)
                self.nodes[b].connected(a)

    def fire(self, rank: int) -> None:
        """Run ``rank``'s earliest timer, moving time to its deadline if later."""
        call = self.clocks[rank].next_call()
        assert call is not None
        call.cancel()
        self.now = max(self.now, call.deadline)
        call.func(*call.args, **call.kw)

    def fireable(self) -> list[int]:
        """The members whose next timer may run now.

        On time (the default): those whose timer is due; if none is, those
        with the earliest deadline (time moves to it). With ``late_timers``:
        every member with a timer (time moves to its deadline, so the others'
        due timers run late, as in a paused process).
        """
        nexts = {
            r: call.deadline
            for r in sorted(self.nodes)
            if (call := self.clocks[r].next_call()) is not None
        }
        if self.bounds.late_timers or not nexts:
            return list(nexts)
        due = [r for r, t in nexts.items() if t <= self.now]
        if due:
            return due
        first = min(nexts.values())
        return [r for r, t in nexts.items() if t == first]

    def serving(self) -> list[int]:
        """The members that may grant now."""
        return [r for r in sorted(self.nodes) if self.nodes[r].can_serve]

    # -- clients -----------------------------------------------------------

    def grant(self, rank: int) -> None:
        """A client asks ``rank`` for a new licence."""
        self.handles += 1
        handle = f"h{self.handles}"
        entries = self.apps[rank].decide_grant(handle)
        assert entries is not None
        self._follow(self.nodes[rank].submit(entries), handle, True)

    def release(self, rank: int, handle: str) -> None:
        """A client releases ``handle`` at ``rank``."""
        self.confirmed.discard(handle)
        self.limbo.add(handle)
        self._follow(self.nodes[rank].submit(self.apps[rank].decide_release(handle)), handle, False)

    def _follow(self, deferred: Deferred[None], handle: str, granted: bool) -> None:
        op = self.latest[handle] = self.latest.get(handle, 0) + 1
        deferred.addCallbacks(
            self._ok,
            self._unknown,
            callbackArgs=(handle, granted, op),
            errbackArgs=(handle,),
            # plain dicts: the default keywords are a mappingproxy, which does not pickle
            callbackKeywords={},
            errbackKeywords={},
        )

    def _ok(self, _: None, handle: str, granted: bool, op: int) -> None:
        if self.latest[handle] != op:
            return  # a later operation on this handle decides what the client knows
        self.limbo.discard(handle)
        (self.confirmed if granted else self.released).add(handle)

    def _unknown(self, reason: Failure, handle: str) -> None:
        self.limbo.add(handle)

    # -- invariants --------------------------------------------------------

    def check(self) -> str | None:
        """The first invariant this state breaks, described, or None."""
        if self.error is not None:
            return self.error
        serving = self.serving()
        if len(serving) > 1:
            return f"I4: members {serving} serve at the same instant"
        for rank in serving:
            held = self.apps[rank].held
            if len(held) > self.count:
                return f"I5: member {rank} holds {len(held)} > {self.count} licences"
            lost = self.confirmed - held
            if lost:
                return f"I3: member {rank} serves without confirmed grants {sorted(lost)}"
            back = self.released & held
            if back:
                return f"I3: member {rank} serves holding released licences {sorted(back)}"
        for rank in self.ranks:
            seen: list[tuple[int, str]] = []
            node = self.nodes.get(rank)
            if node is not None and node.view.epoch > 0:
                seen.append((node.view.epoch, _value_key(node.view.to_json(), node._base)))
            data = self.storage[rank]._data
            if data is not None and data["view"]["epoch"] > 0:  # type: ignore[index]
                seen.append((data["view"]["epoch"], _value_key(data["view"], data["base"])))  # type: ignore[index]
            for epoch, key in seen:
                known = self.decided.setdefault(epoch, key)
                if known != key:
                    return f"I1: member {rank} has epoch {epoch} as {key}, another as {known}"
        return None

    # -- canonical form ----------------------------------------------------

    def digest(self) -> Digest:
        """A hash of everything that can influence what happens next."""
        parts: list[object] = []
        for rank in self.ranks:
            clock = self.clocks[rank]
            node = self.nodes.get(rank)
            parts.append(
                (
                    rank,
                    None if node is None else _node_canon(node, clock),
                    None if node is None else sorted(self.apps[rank].held),
                    self.storage[rank]._data,
                    [
                        (
                            _rel(clock, clock.offset + clock.rate * c.deadline),
                            c.func.__name__,
                            _canon(c.args, clock, False, ()),
                        )
                        for c in sorted(clock.calls, key=lambda c: (c.deadline, c.seq))
                    ],
                )
            )
        # by link, keeping each link's order (a stable sort): links are ordered streams
        parts.append(
            [
                (
                    m.sender,
                    m.to,
                    m.shape,
                    None if m.sent_at is None else _rel(self.clocks[m.clock_of], m.sent_at),
                )
                for m in sorted(self.inflight, key=lambda m: (m.sender, m.to))
            ]
        )
        parts.append(
            (
                sorted(self.cut),
                vars(self.used),
                self.handles,
                sorted(self.confirmed),
                sorted(self.released),
                sorted(self.limbo),
                sorted(self.latest.items()),
                sorted(self.decided.items()),
            )
        )
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


class Sender:
    """A member's ``send`` callable (a class, so that the world pickles)."""

    def __init__(self, world: World, rank: int) -> None:
        """Messages from ``rank`` go into ``world``'s network."""
        self.world = world
        self.rank = rank

    def __call__(self, to: int, message: Message) -> None:
        """Send ``message`` to ``to``."""
        self.world.send(self.rank, to, message)


def _value_key(view: object, state: object) -> str:
    return json.dumps([view, state], sort_keys=True)


#: Node attributes that are not state: wiring and configuration.
#: (``_log_generation`` only tells writes in flight from older logs: the explorer's
#: writes complete at once, so it never changes what a node does next)
_SKIP = frozenset(
    {
        "_clock",
        "_send",
        "_storage",
        "_writer",
        "_log_generation",
        "_app",
        "timers",
        "domain",
        "rank",
    }
)
_CANDIDACY_FIELDS = frozenset(
    {
        "epoch",
        "ballot",
        "started",
        "handover",
        "admit",
        "promises",
        "value",
        "own_value",
        "accepted_by",
        "retries",
    }
)
#: Node (and nested) attributes that hold times of the node's own clock.
_TIMES = frozenset(
    {
        "_quarantine_until",
        "_grant_until",
        "_last_heard",
        "_since",
        "_primary_heard",
        "_installed_at",
        "_backoff_until",
        "_granted_at",
        "_lease_until",
        "_drain",
        "_owed_ack",
        "started",
        "deadline",
    }
)


def _view(view: View) -> object:
    return (view.epoch, sorted(view.members), view.origin)


def _node_canon(node: DomainNode, clock: MemberClock) -> list[object]:
    """`_canon` of a node's fields, with fast forms for the fields we know.

    Every attribute is included: one without a fast form goes through the
    generic `_canon`, so a field added to `DomainNode` later is never ignored.
    """
    now = clock.seconds()

    def rel(t: float) -> object:
        return t if math.isinf(t) else round(t - now, 6)

    out: list[object] = []
    for key, value in node.__dict__.items():
        if key in _SKIP:
            continue
        if value is None or isinstance(value, bool | int):
            out.append((key, value))
        elif key in _TIMES and isinstance(value, float):
            out.append((key, rel(value)))
        elif key in ("_last_heard", "_since", "_granted_at"):
            out.append((key, sorted((r, rel(t)) for r, t in value.items())))
        elif key in ("_peer_epoch", "_match"):
            out.append((key, sorted(value.items())))
        elif key in ("_connected", "_stale"):
            out.append((key, sorted(value)))
        elif key == "_view":
            out.append((key, _view(value)))
        elif key in ("_base", "_entries", "_promised"):
            out.append((key, value))  # JSON data and ballots: their repr is canonical
        elif key == "_accepted":
            out.append((key, (value[0], _view(value[1].view), value[1].state)))
        elif key in ("_tick_call", "_flush_call"):
            out.append(
                (key, (rel(clock.offset + clock.rate * value.deadline), value.func.__name__))
            )
        elif key == "_candidacy":
            c = value
            out.append(
                (
                    key,
                    c.epoch,
                    c.ballot,
                    rel(c.started),
                    c.handover,
                    sorted(c.admit),
                    [
                        (
                            r,
                            p.epoch,
                            p.ballot,
                            p.accepted_ballot,
                            None
                            if p.accepted_value is None
                            else (_view(p.accepted_value.view), p.accepted_value.state),
                            p.entries,
                            p.start,
                        )
                        for r, p in sorted(c.promises.items())
                    ],
                    None if c.value is None else (_view(c.value.view), c.value.state),
                    c.own_value,
                    sorted(c.accepted_by),
                    [
                        (r, rel(clock.offset + clock.rate * t.deadline), t.active())
                        for r, t in sorted(c.retries.items())
                    ],
                )
            )
            if set(vars(c)) != _CANDIDACY_FIELDS:
                raise TypeError(f"_Candidacy has fields {sorted(vars(c))}: update _node_canon")
        elif key == "_pending":
            out.append(
                (key, [(p.index, p.deferred._callbacks[0][0][1], rel(p.deadline)) for p in value])
            )
        else:
            out.append((key, _canon(value, clock, key in _TIMES, ())))
    return out


def _rel(clock: MemberClock, t: float) -> object:
    if math.isinf(t):
        return t
    return round(t - clock.seconds(), 6)


def _canon(
    value: object, clock: MemberClock, timey: bool, skip: frozenset[str] | tuple[()]
) -> object:
    """A comparable form of ``value``: times relative to ``clock``'s now."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _rel(clock, value) if timey else round(value, 6)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return sorted(
            (
                (_canon(k, clock, False, ()), _canon(v, clock, timey or k in _TIMES, ()))
                for k, v in value.items()
                if k not in skip
            ),
            key=repr,
        )
    if isinstance(value, set | frozenset):
        return sorted((_canon(v, clock, timey, ()) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [_canon(v, clock, timey, ()) for v in value]
    if isinstance(value, Deferred):
        # which client operation waits on it
        return ["deferred", _canon(value._callbacks[0][0][1], clock, False, ())]
    if isinstance(value, ScheduledCall):
        return [
            "call",
            _rel(clock, clock.offset + clock.rate * value.deadline),
            value.func.__name__,
        ]
    if hasattr(value, "__dict__"):
        return [type(value).__name__, _canon(vars(value), clock, timey, ())]
    raise TypeError(f"cannot make {value!r} canonical")


# -- actions -----------------------------------------------------------------


def actions(world: World) -> Iterator[Action]:
    """Every action possible in ``world``, in a fixed order."""
    bounds, used = world.bounds, world.used
    seen: set[tuple[int, int, str]] = set()
    links: set[tuple[int, int]] = set()
    for m in world.inflight:
        key = (m.sender, m.to, m.wire)
        if key in seen or (not bounds.reorder and (m.sender, m.to) in links):
            continue  # a peer link is one ordered stream: only its oldest message is next
        seen.add(key)
        links.add((m.sender, m.to))
        yield ("deliver", *key)
        if used.duplicates < bounds.duplicates:
            yield ("dup", *key)
        if used.drops < bounds.drops:
            yield ("drop", *key)
    yield from (("fire", rank) for rank in world.fireable())
    serving = world.serving()
    if serving:
        rank = serving[0]
        if used.grants < bounds.grants and len(world.apps[rank].held) < world.count:
            yield ("grant", rank)
        if used.releases < bounds.releases:
            for handle in sorted(world.confirmed | world.limbo):
                if world.latest.get(handle, 0) < 2:  # one release per handle
                    yield ("release", rank, handle)
    for rank in world.ranks:
        if rank in world.nodes:
            if used.crashes < bounds.crashes:
                yield ("crash", rank)
        else:
            yield ("restart", rank)
    for a in world.ranks:
        for b in world.ranks:
            if a < b:
                if (a, b) in world.cut:
                    yield ("heal", a, b)
                elif used.cuts < bounds.cuts:
                    yield ("cut", a, b)


def apply(world: World, action: Action) -> None:
    """Do ``action`` in ``world``; an exception from the core is recorded as a violation."""
    try:
        _apply(world, action)
    except Exception as error:  # any exception of the core is a finding
        world.error = f"exception in the core: {type(error).__name__}: {error}"


def _take(world: World, sender: int, to: int, wire: str) -> InFlight:
    for i, m in enumerate(world.inflight):
        if (m.sender, m.to, m.wire) == (sender, to, wire):
            return world.inflight.pop(i)
    raise KeyError("no such message in flight")


def _apply(world: World, action: Action) -> None:
    kind = action[0]
    used = world.used
    if kind in ("deliver", "dup", "drop"):
        _, sender, to, wire = action
        if kind == "dup":
            used.duplicates += 1
        else:
            _take(world, sender, to, wire)
        if kind == "drop":
            used.drops += 1
        else:
            world.nodes[to].receive(sender, decode(json.loads(wire)))
    elif kind == "fire":
        world.fire(action[1])
    elif kind == "crash":
        used.crashes += 1
        world.crash(action[1])
    elif kind == "restart":
        world.start(action[1])
    elif kind == "cut":
        used.cuts += 1
        world.set_cut(action[1], action[2], True)
    elif kind == "heal":
        world.set_cut(action[1], action[2], False)
    elif kind == "grant":
        used.grants += 1
        world.grant(action[1])
    elif kind == "release":
        used.releases += 1
        world.release(action[1], action[2])
    else:
        raise ValueError(f"unknown action {action!r}")


def describe(action: Action) -> str:
    """One line for a trace."""
    kind = action[0]
    if kind in ("deliver", "dup", "drop"):
        _, sender, to, wire = action
        data = json.loads(wire)
        kind_of = data.pop("type")
        for key in ("value", "accepted_value"):
            if isinstance(data.get(key), dict):
                value = data[key]
                data[key] = {
                    "epoch": value["view"]["epoch"],
                    "members": value["view"]["members"],
                    "state": value["state"],
                }
        return f"{kind} {sender}->{to} {kind_of} {json.dumps(data, sort_keys=True)}"
    return " ".join(str(part) for part in action)


# -- scenarios ---------------------------------------------------------------


SCENARIOS = ("serving", "boot", "isolated", "contested", "restarted", "promised", "split")


def fair_step(world: World) -> Action:
    """The next action of a scripted, fair run: oldest message first, else the
    earliest timer of any member."""
    if world.inflight:
        m = world.inflight[0]
        return ("deliver", m.sender, m.to, m.wire)
    rank = min(
        (r for r in world.nodes if world.clocks[r].calls),
        key=lambda r: (world.clocks[r].next_call().deadline, r),  # type: ignore[union-attr]
    )
    return ("fire", rank)


def run_until(
    world: World, done: Callable[[World], bool], trace: list[Action], limit: int = 5000
) -> None:
    """Play the fair run until ``done`` holds (checking invariants all along)."""
    for _ in range(limit):
        if done(world):
            return
        action = fair_step(world)
        apply(world, action)
        trace.append(action)
        problem = world.check()
        if problem is not None:
            raise Violation(f"in the scripted prefix: {problem}")
    raise AssertionError("the scripted prefix did not reach its goal")


def _full_view(world: World) -> bool:
    serving = world.serving()
    return bool(serving) and world.nodes[serving[0]].view.members == world.domain


def scenario(world: World, name: str) -> list[Action]:
    """Bring ``world`` to the scenario's starting state; the actions it took."""
    trace: list[Action] = []
    for rank in world.ranks:
        world.start(rank)
    if name == "boot":
        return trace  # everyone just started, epoch 0
    # "serving": a fair run until hqnserver1 serves every member with one
    # licence granted and confirmed, and no message in flight.
    run_until(world, _full_view, trace)
    primary = world.serving()[0]
    action: Action = ("grant", primary)
    apply(world, action)
    trace.append(action)
    run_until(world, lambda w: bool(w.confirmed) and not w.inflight, trace)
    if name == "serving":
        return trace

    def do(action: Action) -> None:
        apply(world, action)
        trace.append(action)

    if name == "isolated":
        # The primary is cut off from every backup; the fair run goes on until
        # a backup stands (its Prepares are in flight): the lease race.
        for other in world.ranks[1:]:
            do(("cut", 1, other))
        run_until(world, lambda w: any(n._candidacy is not None for n in w.nodes.values()), trace)
        return trace
    if name == "promised":
        # As "isolated", until hqnserver3 has promised the candidate (its
        # Promise is in flight); then the link from the primary to 3 heals.
        for other in world.ranks[1:]:
            do(("cut", 1, other))
        run_until(world, lambda w: w.nodes[3]._promised is not None, trace)
        do(("heal", 1, 3))
        return trace
    if name == "split":
        # An even split: the lower half (with hqnserver1) against the upper
        # half; the fair run goes on until a member of the upper half stands.
        half = len(world.ranks) // 2
        low, high = world.ranks[:half], world.ranks[half:]
        for a in low:
            for b in high:
                do(("cut", a, b))
        run_until(world, lambda w: any(w.nodes[r]._candidacy is not None for r in high), trace)
        return trace
    if name == "contested":
        # The primary lost its link to hqnserver2 only; 2 stands (its Prepare
        # to 3 is in flight) while 3 still binds a lease to the primary.
        do(("cut", 1, 2))
        run_until(world, lambda w: w.nodes[2]._candidacy is not None, trace)
        return trace
    if name == "restarted":
        # The primary lost its link to hqnserver2 but keeps its lease through
        # hqnserver3; 2 stands and is refused (3 is bound by its lease); then
        # 3 restarts, forgetting the lease it granted: the quarantine race.
        do(("cut", 1, 2))
        run_until(world, lambda w: w.nodes[2]._candidacy is not None and not w.inflight, trace)
        do(("crash", 3))
        do(("restart", 3))
        return trace
    raise ValueError(f"unknown scenario {name!r}")


# -- mutations (deliberate bugs the explorer must find) -----------------------


def _keep_name(func: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    # a pickled bound method is found again by its name
    func.__name__ = original.__name__
    func.__qualname__ = original.__qualname__
    return func


@contextmanager
def mutation(name: str | None) -> Iterator[None]:
    """Patch `DomainNode` with the bug ``name`` while the block runs."""
    if name is None or name == "lease-ignores-drift":
        yield  # the drift mutation is in the timers (see `explore`)
        return
    patches: dict[str, Callable[..., Any]] = {}
    if name == "no-quarantine":
        start = DomainNode.start

        def no_quarantine(self: DomainNode) -> None:
            start(self)
            self._quarantine_until = -math.inf

        patches["start"] = _keep_name(no_quarantine, start)
    elif name == "ack-after-promise":
        on_append = DomainNode._on_append

        def ack_after_promise(self: DomainNode, sender: int, append: Any, now: float) -> None:
            promised, self._promised = self._promised, None
            try:
                on_append(self, sender, append, now)
            finally:
                self._promised = promised

        patches["_on_append"] = _keep_name(ack_after_promise, on_append)
    elif name == "send-before-durable":
        send_appends = DomainNode._send_appends

        def send_before_durable(self: DomainNode, now: float, only_new: bool = False) -> None:
            durable, self._durable = self._durable, len(self._entries)
            try:
                send_appends(self, now, only_new)
            finally:
                self._durable = durable

        patches["_send_appends"] = _keep_name(send_before_durable, send_appends)
    elif name == "promise-during-lease":
        refusal = DomainNode._refusal

        def promise_during_lease(self: DomainNode, *args: Any) -> Any:
            grant, self._grant_to = self._grant_to, None
            try:
                return refusal(self, *args)
            finally:
                self._grant_to = grant

        patches["_refusal"] = _keep_name(promise_during_lease, refusal)
    elif name == "no-tie-break":
        # exactly half of a view counts as a quorum even without its lowest rank
        def half_is_quorum(members: Any, present: Any) -> bool:
            here = {rank for rank in present if rank in members}
            return bool(members) and 2 * len(here) >= len(members)

        with (
            _patched(membership, "is_quorum", half_is_quorum),
            _patched(node_module, "is_quorum", half_is_quorum),
        ):
            yield
        return
    else:
        raise ValueError(f"unknown mutation {name!r}")
    saved = {attr: DomainNode.__dict__[attr] for attr in patches}
    try:
        for attr, func in patches.items():
            setattr(DomainNode, attr, func)
        yield
    finally:
        for attr, func in saved.items():
            setattr(DomainNode, attr, func)


@contextmanager
def _patched(module: Any, name: str, value: object) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


MUTATIONS = (
    "no-quarantine",
    "lease-ignores-drift",
    "ack-after-promise",
    "send-before-durable",
    "promise-during-lease",
    "no-tie-break",
)


# -- the search --------------------------------------------------------------


@dataclass
class Result:
    """What an exploration saw."""

    members: int
    scenario: str
    depth: int
    bounds: Bounds
    mutation: str | None
    states: int = 0
    distinct: int = 0
    pruned: int = 0
    depth_reached: int = 0
    seconds: float = 0.0
    complete: bool = True
    prefix: int = 0
    violation: str | None = None
    trace: list[Action] = field(default_factory=list)
    #: how many times each kind of action was tried
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """States explored per second."""
        return self.states / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """The report printed by the command line."""
        lines = [
            f"members={self.members} scenario={self.scenario} mutation={self.mutation} "
            f"depth={self.depth} bounds={self.bounds}",
            f"states explored={self.states} distinct={self.distinct} "
            f"pruned(in-flight bound)={self.pruned} depth reached={self.depth_reached} "
            f"{'complete' if self.complete else 'STOPPED at --max-states'}",
            f"time={self.seconds:.1f}s states/s={self.rate:.0f}",
            "actions tried: " + ", ".join(f"{k}={n}" for k, n in sorted(self.kinds.items())),
        ]
        if self.violation is None:
            lines.append("no violation")
        else:
            lines.append(f"VIOLATION at depth {len(self.trace)}: {self.violation}")
            lines.append(f"shortest trace (after the {self.prefix}-action scripted prefix):")
            lines.extend(f"  {i + 1:3d}. {describe(a)}" for i, a in enumerate(self.trace))
        return "\n".join(lines)


def default_rates(size: int, drift: float) -> dict[int, float]:
    """hqnserver1's clock slow, the others' fast: the tightest lease race for it."""
    return {r: (1 - drift if r == 1 else 1 + drift) for r in range(1, size + 1)}


def new_world(
    size: int,
    count: int,
    timers: DomainTimers,
    bounds: Bounds,
    name: str,
    mutation_name: str | None,
) -> tuple[World, list[Action]]:
    """A world in the scenario's starting state, and the prefix that got it there."""
    rates = default_rates(size, timers.drift)
    if mutation_name == "lease-ignores-drift":
        # the clocks still drift at 1 %, but the lease arithmetic ignores it
        timers = replace(timers, drift=0.0, margin=0.0)
    world = World(size, count, timers, rates, bounds)
    prefix = scenario(world, name)
    world.used = Budget()
    return world, prefix


def explore(
    members: int,
    depth: int,
    scenario_name: str = "serving",
    bounds: Bounds | None = None,
    max_states: int | None = None,
    mutation_name: str | None = None,
    count: int = 2,
    timers: DomainTimers = EXPLORE_TIMERS,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Breadth-first search of every action sequence up to ``depth`` (see the module doc)."""
    bounds = bounds if bounds is not None else Bounds()
    result = Result(members, scenario_name, depth, bounds, mutation_name)
    begin = time.perf_counter()
    with mutation(mutation_name):
        world, prefix = new_world(members, count, timers, bounds, scenario_name, mutation_name)
        result.prefix = len(prefix)
        root = world.digest()
        parent: dict[Digest, tuple[Digest, Action] | None] = {root: None}
        frontier: list[tuple[Digest, bytes]] = [
            (root, pickle.dumps(world, pickle.HIGHEST_PROTOCOL))
        ]
        result.states = result.distinct = 1
        problem = world.check()
        if problem is not None:
            result.violation = problem
        level = 0
        while frontier and level < depth and result.violation is None:
            level += 1
            next_frontier: list[tuple[Digest, bytes]] = []
            for digest, blob in frontier:
                for action in actions(pickle.loads(blob)):
                    child = pickle.loads(blob)
                    apply(child, action)
                    result.states += 1
                    result.kinds[action[0]] = result.kinds.get(action[0], 0) + 1
                    key = child.digest()
                    if key in parent:
                        continue
                    parent[key] = (digest, action)
                    result.distinct += 1
                    result.depth_reached = level
                    problem = child.check()
                    if problem is not None:
                        result.violation = problem
                        result.trace = _trace(parent, key)
                        break
                    if len(child.inflight) > bounds.max_inflight:
                        result.pruned += 1
                        continue
                    next_frontier.append((key, pickle.dumps(child, pickle.HIGHEST_PROTOCOL)))
                    if max_states is not None and result.states >= max_states:
                        break
                if result.violation is not None:
                    break
                if max_states is not None and result.states >= max_states:
                    result.complete = False
                    break
            if progress is not None:
                progress(
                    f"depth {level}: {result.states} states, {result.distinct} distinct, "
                    f"frontier {len(next_frontier)}, {time.perf_counter() - begin:.1f}s"
                )
            if not result.complete:
                break
            frontier = next_frontier
        if result.violation is not None and result.trace:
            _confirm(result, members, count, timers, bounds, scenario_name, mutation_name)
    result.seconds = time.perf_counter() - begin
    return result


def _trace(parent: dict[Digest, tuple[Digest, Action] | None], key: Digest) -> list[Action]:
    trace: list[Action] = []
    link = parent[key]
    while link is not None:
        key, action = link
        trace.append(action)
        link = parent[key]
    return trace[::-1]


def _confirm(
    result: Result,
    members: int,
    count: int,
    timers: DomainTimers,
    bounds: Bounds,
    scenario_name: str,
    mutation_name: str | None,
) -> None:
    """Replay the trace from a fresh world: it must reach the same violation."""
    world, _ = new_world(members, count, timers, bounds, scenario_name, mutation_name)
    problem = None
    for action in result.trace:
        apply(world, action)
        problem = world.check()
    if problem != result.violation:
        raise AssertionError(
            f"replaying the trace gave {problem!r}, not {result.violation!r}: "
            "the world is not deterministic or not copied faithfully"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: explore and print the figures (exit 1 on a violation)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.sim.explore", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--max-states", type=int, default=None)
    parser.add_argument("--scenario", choices=SCENARIOS, default="serving")
    parser.add_argument("--mutation", choices=MUTATIONS, default=None)
    parser.add_argument("--count", type=int, default=2, help="licences in the pool")
    defaults = Bounds()
    for name in ("crashes", "cuts", "grants", "releases", "duplicates", "drops", "max_inflight"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--reorder", action="store_true", help="reorder messages on a link")
    parser.add_argument("--late-timers", action="store_true", help="timers may run late")
    parser.add_argument(
        "--timer",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="change one of the explorer's timers (e.g. peer_timeout=60)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-depth progress")
    args = parser.parse_args(argv)
    bounds = Bounds(
        **{
            name: getattr(args, name)
            for name in (
                "crashes",
                "cuts",
                "grants",
                "releases",
                "duplicates",
                "drops",
                "max_inflight",
                "reorder",
                "late_timers",
            )
        }
    )
    timers = EXPLORE_TIMERS
    for setting in args.timer:
        name, _, number = setting.partition("=")
        timers = replace(timers, **{name: type(getattr(timers, name))(number)})
    result = explore(
        args.members,
        args.depth,
        args.scenario,
        bounds,
        args.max_states,
        args.mutation,
        args.count,
        timers,
        progress=None if args.quiet else lambda line: print(line, file=sys.stderr),
    )
    print(result.summary())
    return 1 if result.violation is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
