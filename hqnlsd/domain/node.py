"""One member of a server domain: the pure state machine behind its role.

`DomainNode` decides who may grant licences for the domain and replicates every
state change to a quorum before it is confirmed. It does no I/O of its own: it
takes a clock (monotonic in production), a ``send(to_rank, message)`` callable,
a `DomainStorage` and the application `StateMachine` (the licence engine), and
is driven by `receive`, `connected`/`disconnected`, its own timer and `submit`.
The design and the reasons it is safe are in ``docs/domains.md``; the comments
here point at the invariant each rule keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from hqnlsd.domain.membership import best_quorum_value, is_quorum, validate_ranks
from hqnlsd.domain.messages import (
    Accept,
    Accepted,
    Ack,
    Append,
    Decided,
    Message,
    Prepare,
    Promise,
    Refuse,
    RefuseReason,
)
from hqnlsd.domain.role import Role, RoleInfo
from hqnlsd.domain.storage import Amnesia, DomainStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.validate import Facts, problem
from hqnlsd.domain.view import Ballot, Batch, Value, View, initial_view
from hqnlsd.persistence.store import InlineWriter, Writer

#: Most batches sent to one member in one `Append`.
_MAX_BATCHES_PER_APPEND = 256

#: Most client commands held at once while the primary hands over to itself
#: (see `DomainNode.held`); beyond that they are refused as before.
MAX_HELD = 1000


class Timer(Protocol):
    """A scheduled call (`twisted.internet.interfaces.IDelayedCall`)."""

    def active(self) -> bool:
        """True until the call has run or been cancelled."""

    def cancel(self) -> None:
        """Do not run the call."""


class MonotonicClock(Protocol):
    """The part of `twisted.internet.interfaces.IReactorTime` a node uses.

    In production `hqnlsd.domain.clock.ReactorMonotonicClock` (the reactor's own
    ``seconds`` is wall-clock time, which can be stepped); in tests,
    `twisted.internet.task.Clock`.
    """

    def seconds(self) -> float:
        """Now, in seconds."""

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> Any:
        """Call ``callable`` after ``delay`` seconds; returns a `Timer`."""


class StateMachine(Protocol):
    """The replicated application: the licence engine, seen from the domain.

    Entries are JSON-safe; after a trip through storage or the network a tuple
    arrives as a list, so ``apply`` must accept the JSON form.
    """

    def apply(self, entries: Sequence[object]) -> None:
        """Apply one batch of entries (events) to the state."""

    def snapshot(self) -> object:
        """The whole state, JSON-safe."""

    def restore(self, snapshot: object) -> None:
        """Replace the whole state with ``snapshot`` (from `snapshot`)."""

    def check_snapshot(self, snapshot: object) -> None:
        """Raise ValueError unless `restore` would accept ``snapshot`` (a peer's).

        Changes nothing. Called before a snapshot from the network is stored.
        """

    def check_batch(self, batch: Batch) -> None:
        """Raise ValueError unless every entry of ``batch`` has a form `apply` takes.

        Changes nothing. `apply` may still refuse a well-formed batch that does
        not fit the state (raising ValueError): it must then leave the state as
        it was before the batch.
        """


class NotServing(Exception):
    """A submission refused because this member may not grant now: nothing happened."""

    def __init__(self, info: RoleInfo) -> None:
        """Keep the role, so the caller can redirect the client."""
        super().__init__(f"member {info.rank} is {info.role.value}, not serving")
        self.info = info


class OutcomeUnknown(Exception):
    """A submission whose entries may or may not survive: the client must retry.

    Retrying with the same client token is safe: the engine answers a repeated
    request with the licence it already granted.
    """


class AuthorityLost(OutcomeUnknown):
    """This member stopped being the primary before the entries reached a quorum."""


class SubmitTimeout(OutcomeUnknown):
    """The entries did not reach a quorum within the submit timeout."""


@dataclass
class _Pending:
    """A submission waiting for its quorum."""

    index: int
    deferred: Deferred[None]
    deadline: float


@dataclass
class _Candidacy:
    """This member's attempt to decide the next view (one ballot)."""

    epoch: int
    ballot: Ballot
    started: float
    handover: bool
    admit: frozenset[int]
    promises: dict[int, Promise] = field(default_factory=dict)
    value: Value | None = None
    own_value: bool = False
    accepted_by: set[int] = field(default_factory=set)
    retries: dict[int, Timer] = field(default_factory=dict)


class DomainNode:
    """The domain logic of one member (see the module docstring).

    Lifecycle: `start` (loads storage, starts the timer), then events, then
    `stop` (a crash, as far as the node knows: nothing is persisted by stopping).
    """

    log = Logger()

    def __init__(
        self,
        rank: int,
        domain: frozenset[int],
        clock: MonotonicClock,
        send: Callable[[int, Message], None],
        storage: DomainStorage,
        app: StateMachine,
        timers: DomainTimers | None = None,
        writer: Writer | None = None,
    ) -> None:
        """Build a stopped member ``rank`` of ``domain``; call `start` next.

        ``writer`` runs every call of ``storage`` (`hqnlsd.persistence.store.Writer`):
        the default `InlineWriter` at once on the calling thread (deterministic under
        ``task.Clock``); a daemon's `ThreadWriter` off the reactor thread, so the
        reactor goes on receiving and sending while the disk works.
        """
        self.rank = rank
        self.domain = validate_ranks(domain)
        if rank not in self.domain:
            raise ValueError(f"rank {rank} is not a member of {sorted(self.domain)}")
        self.timers = timers if timers is not None else DomainTimers()
        self._clock = clock
        self._send = send
        self._storage = storage
        self._writer: Writer = writer if writer is not None else InlineWriter()
        self._app = app
        self._running = False
        self._tick_call: Timer | None = None
        # durable state, mirrored
        self._view = initial_view(self.domain)
        self._base: object = None
        self._entries: list[Batch] = []
        self._promised: Ballot | None = None
        self._accepted: tuple[Ballot, Value] | None = None
        #: set while this member is a recovered amnesiac (docs/domains.md)
        self._amnesia: Amnesia | None = None
        # volatile state
        self._max_round = 0
        self._quarantine_until = -math.inf
        self._grant_to: int | None = None
        self._grant_until = -math.inf
        self._last_heard: dict[int, float] = {}
        self._since: dict[int, float] = {}
        self._peer_epoch: dict[int, int] = {}
        self._connected: set[int] = set()
        self._primary_heard = 0.0
        self._installed_at = 0.0
        self._backoff_until = -math.inf
        self._candidacy: _Candidacy | None = None
        # primary state
        self._match: dict[int, int] = {}
        #: where the next `Append` to each member starts, unless a tick resends (the
        #: entries before were sent on the current link; not yet all acknowledged)
        self._sent: dict[int, int] = {}
        self._granted_at: dict[int, float] = {}
        self._stale: set[int] = set()
        self._lease_until: float | None = None
        self._had_lease = False
        self._commit = 0
        self._pending: list[_Pending] = []
        self._drain: tuple[float, frozenset[int]] | None = None
        #: when this primary last stood to admit each member (flap damping)
        self._admitted: dict[int, float] = {}
        #: while handing over to a view it stays primary of: when holding ends
        self._hold_until: float | None = None
        self._held: list[Deferred[bool]] = []
        # group commit (see `_append`): the first _durable entries of the log are
        # durable here; those up to _queued are with the writer (_writing: one write
        # in flight); the rest wait for the next write
        self._durable = 0
        self._queued = 0
        self._writing = False
        #: changes whenever the log is replaced or the node stops: a write that
        #: completes for an older log changes nothing
        self._log_generation = 0
        self._flush_call: Timer | None = None
        #: the Ack owed to the primary once the entries are durable (sender, epoch, sent_at)
        self._owed_ack: tuple[int, int, float] | None = None
        #: the state machine holds exactly base + this member's log (not a longer
        #: log a candidacy rebuilt it with)
        self._app_is_log = True
        #: peer messages dropped as invalid since start (see `receive`)
        self.invalid_count = 0
        #: why the message being received was (partly) refused by the application
        self._refused: str | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Load what was persisted, restore the application, start the timer.

        A member that restarts in a view whose primary is someone else may have
        granted that primary a lease it no longer remembers: it promises nothing
        to a candidate for one lease period (the quarantine). Installing a newer
        view ends it (see `_install`).
        """
        now = self._now()
        storage = self._storage
        durable = self._writer.call(storage.load)
        if durable is None:
            self._view = initial_view(self.domain)
            self._base = self._app.snapshot()
            view, base = self._view, self._base
            self._writer.call(lambda: storage.save_view(view, base))
        else:
            # Restore first: a stored state that cannot be restored raises and
            # leaves this node as it was (stopped, epoch 0), not half-loaded.
            if not durable.view.members <= self.domain or not durable.view.members:
                raise ValueError(
                    f"the stored view names ranks {sorted(durable.view.members)} "
                    f"outside the domain {sorted(self.domain)}"
                )
            self._app.restore(durable.base)
            for batch in durable.entries:
                self._app.apply(batch)
            self._view = durable.view
            self._base = durable.base
            self._entries = list(durable.entries)
            self._durable = self._queued = len(self._entries)
            self._promised = durable.promised
            self._accepted = durable.accepted
            self._amnesia = durable.amnesia
            # (Not if the stored view leaves this member out: it granted nothing
            # in that view, and grants made in older views are void.)
            if (
                self._view.epoch > 0
                and self._view.primary != self.rank
                and self.rank in self._view.members
            ):
                self._quarantine_until = now + self.timers.lease
        self._max_round = max(
            [0]
            + [b.round for b in (self._promised, self._view.origin) if b is not None]
            + ([self._accepted[0].round] if self._accepted is not None else [])
            + ([self._amnesia.round] if self._amnesia is not None else [])
        )
        self._primary_heard = now
        self._installed_at = now
        self._running = True
        self._tick_call = self._clock.callLater(0, self._tick)

    def stop(self) -> None:
        """Stop the timer and fail every waiting submission (the process ends).

        Entries not yet written (group commit) are lost, as in a crash: none of
        them was acknowledged or confirmed by this member. A write already with the
        writer may still complete; nothing here hears of it.
        """
        self._running = False
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._new_log()
        self._owed_ack = None
        self._candidacy = None
        self._fail_pending(AuthorityLost(f"member {self.rank} stopped"))
        self._wake()

    def flush(self) -> None:
        """Write now, and wait for, everything group commit has yet to make durable
        (a clean shutdown calls it before `stop`)."""
        if self._running:
            self._sync()

    # -- queries -----------------------------------------------------------

    @property
    def view(self) -> View:
        """The latest view this member installed."""
        return self._view

    @property
    def amnesia(self) -> Amnesia | None:
        """Set while this member is a recovered amnesiac that has not been readmitted."""
        return self._amnesia

    @property
    def log_length(self) -> int:
        """How many batches this member holds in its current view's log."""
        return len(self._entries)

    @property
    def can_serve(self) -> bool:
        """True if this member may grant licences for the domain right now."""
        return self._serving(self._now())

    @property
    def primary_rank(self) -> int | None:
        """The rank clients should be sent to, if this member knows one."""
        return self.role().primary

    def role(self) -> RoleInfo:
        """This member's role now (see `Role`).

        A member that reaches no quorum of its view cannot complete a take-over,
        so it never says TAKEOVER (clients would hear "a new primary is taking
        over" for as long as the domain waits): a backup says LOSTMASTER and a
        primary NOTVERIFIED, and ``waiting`` names the members it waits for.
        """
        now = self._now()
        view = self._view
        known = view.primary if view.epoch > 0 else None
        if view.epoch == 0 or self.rank not in view.members or self._amnesia is not None:
            role = Role.NOTVERIFIED
        elif (
            self._candidacy is None
            and self._promised is not None
            and self._promised.rank == view.primary != self.rank
            and now - self._primary_heard < self.timers.election_timeout
        ):
            # It promised its own primary, which is handing over (a compaction or an
            # admission): clients go on to that primary, which holds their commands.
            role = Role.BACKUP
        elif self._candidacy is not None or self._promised is not None:
            role, known = Role.TAKEOVER, None
        elif view.primary == self.rank:
            if self._serving(now):
                role = Role.PRIMARY
            elif self._drain is not None or not self._had_lease:
                role = Role.TAKEOVER
            else:
                role = Role.NOTVERIFIED
        elif now - self._primary_heard < self.timers.election_timeout:
            role = Role.BACKUP
        else:
            role = Role.LOSTMASTER
        waiting: frozenset[int] = frozenset()
        if role in (Role.TAKEOVER, Role.LOSTMASTER, Role.NOTVERIFIED):
            waiting = self._unreachable()
        if role is Role.TAKEOVER and waiting:
            role = Role.NOTVERIFIED if view.primary == self.rank else Role.LOSTMASTER
        return RoleInfo(self.rank, role, known, view.epoch, view.members, waiting)

    def _unreachable(self) -> frozenset[int]:
        """The members of the view this member cannot reach, if those it can are no
        quorum of the view (no view change can complete); else empty.

        Reach is the transport's word (`connected`): a take-over needs to send to a
        quorum, and a peer link that hears nothing for its ping timeout drops.
        """
        members = self._view.members
        reached = {r for r in members if r == self.rank or r in self._connected}
        return frozenset() if is_quorum(members, reached) else members - reached

    # -- inputs ------------------------------------------------------------

    def connected(self, rank: int) -> None:
        """The transport reached member ``rank`` (a hint; messages are the truth)."""
        self._connected.add(rank)
        self._sent.pop(rank, None)  # a new link: what the old one carried may be lost

    def disconnected(self, rank: int) -> None:
        """The transport lost member ``rank``.

        Losing the primary lets a backup stand as soon as the lease it granted
        runs out, instead of waiting for the election timeout as well.
        """
        self._connected.discard(rank)
        self._sent.pop(rank, None)
        if rank == self._view.primary and rank != self.rank:
            self._primary_heard = min(
                self._primary_heard, self._now() - self.timers.election_timeout
            )

    def receive(self, sender: int, message: Message) -> str | None:
        """Handle ``message`` from member ``sender``.

        A message that is not valid for this member (`hqnlsd.domain.validate`)
        is dropped before it touches anything: returns what is wrong with it
        (``"field: why"``, for the transport's rate-limited log) and counts it
        in `invalid_count`. Returns None otherwise.
        """
        if not self._running or sender not in self.domain or sender == self.rank:
            return None
        why = self._invalid(message)
        if why is not None:
            self.invalid_count += 1
            return why
        self._refused = None
        now = self._now()
        if now - self._last_heard.get(sender, -math.inf) > self.timers.peer_timeout:
            self._since[sender] = now
        self._last_heard[sender] = now
        if isinstance(message, Append):
            self._on_append(sender, message, now)
        elif isinstance(message, Ack):
            self._on_ack(sender, message, now)
        elif isinstance(message, Prepare):
            self._on_prepare(sender, message, now)
        elif isinstance(message, Promise):
            self._on_promise(sender, message, now)
        elif isinstance(message, Accept):
            self._on_accept(sender, message, now)
        elif isinstance(message, Accepted):
            self._on_accepted(sender, message, now)
        elif isinstance(message, Refuse):
            self._on_refuse(sender, message, now)
        else:
            self._install(message.value, now)
        self._wake()
        return self._refused

    def _invalid(self, message: Message) -> str | None:
        """What makes a peer's ``message`` invalid here (see `receive`), or None."""
        candidacy = self._candidacy
        facts = Facts(
            domain=self.domain,
            epoch=self._view.epoch,
            max_round=self._max_round,
            log_length=len(self._entries),
            is_primary=self._is_primary(),
            candidacy=(
                (candidacy.epoch, candidacy.ballot)
                if candidacy is not None and candidacy.value is None
                else None
            ),
        )
        return problem(message, facts, self._app)

    def submit(self, entries: Sequence[object]) -> Deferred[None]:
        """Apply ``entries`` here and replicate them; fire once a quorum holds them.

        Only the serving primary accepts: elsewhere the Deferred fails at once
        with `NotServing` (nothing happened). The entries are applied to the
        local state machine before this returns, so the next decision sees them.
        The Deferred fires with None once a quorum of the view holds them
        durably (they then survive any failover), or fails with an
        `OutcomeUnknown` if authority is lost or the submit timeout passes.
        """
        now = self._now()
        if not self._serving(now):
            return fail(NotServing(self.role()))
        batch: Batch = tuple(entries)
        self._append([batch])
        self._app.apply(batch)
        deferred: Deferred[None] = Deferred()
        self._pending.append(
            _Pending(len(self._entries), deferred, now + self.timers.submit_timeout)
        )
        # Written from the end of this turn (`_flush`), sent once durable here: the
        # primary's own durable log is always at least as long as any backup's.
        return deferred

    def barrier(self) -> Deferred[None]:
        """Fire once every entry now in the log is held by a quorum (at once if all are).

        For an answer read from the state without changing it (a BADHANDLE to a
        RELEASE sent again): it must not be given before the entries it depends
        on are confirmed. Fails like `submit`: `NotServing` at once if this member
        does not serve, `OutcomeUnknown` if authority is lost first.
        """
        now = self._now()
        if not self._serving(now):
            return fail(NotServing(self.role()))
        if self._commit >= len(self._entries):
            return succeed(None)
        deferred: Deferred[None] = Deferred()
        self._pending.append(
            _Pending(len(self._entries), deferred, now + self.timers.submit_timeout)
        )
        return deferred

    def held(self) -> Deferred[bool] | None:
        """Wait for this member to serve again, if it is only handing over to itself.

        While the primary changes to a view it stays primary of (a log
        compaction, or admitting or dropping higher-ranked members) it may not
        decide for a moment: a client command that arrives then should wait
        rather than be refused. Returns None when that is not the case (the
        caller answers its refusal as usual) or when `MAX_HELD` commands already
        wait; else a Deferred that fires, in the order asked, with True the
        moment this member serves again (decide the command then, in that
        callback) or False if the hand-over failed or did not finish in time
        (the caller answers the refusal of that moment). Nothing is decided
        while held, so holding changes no invariant.
        """
        now = self._now()
        if self._serving(now) or not self._handing_over(now) or len(self._held) >= MAX_HELD:
            return None
        waiter: Deferred[bool] = Deferred()
        self._held.append(waiter)
        return waiter

    def _handing_over(self, now: float) -> bool:
        """True while a hand-over to a view this member stays primary of is on track."""
        if not self._running or self._hold_until is None or now >= self._hold_until:
            return False
        if self._drain is not None:
            return True
        candidacy = self._candidacy
        if candidacy is not None:
            return candidacy.handover
        # Its own new view installed: acquiring the new view's lease.
        return self._is_primary()

    def _wake(self) -> None:
        """Release the held commands once serving again, or once the hand-over failed.

        Called at the end of every input (message, timer, group write), never in
        the middle of one, so the commands run against a consistent member.
        """
        if self._hold_until is None:
            return
        now = self._now()
        serving = self._serving(now)
        if not serving and self._handing_over(now):
            return
        self._hold_until = None
        held, self._held = self._held, []
        for waiter in held:
            waiter.callback(serving)

    # -- group commit ------------------------------------------------------

    def _append(self, batches: Sequence[Batch]) -> None:
        """Put ``batches`` at the end of the log now; make them durable from `_flush` on.

        Submissions and Appends that arrive in one reactor turn share one write
        (one fsync), and while a write is in flight everything that arrives
        meanwhile waits and forms the next one. Until its write is durable an
        entry does not count as held here: the primary counts its own copy
        toward a quorum, sends it to the backups, and a backup acknowledges it,
        only once its write has completed (`_written`).
        """
        self._entries.extend(batches)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _durable_length(self) -> int:
        return self._durable

    def _new_log(self) -> None:
        """The log is replaced (a view installed) or the node stops: writes in flight
        no longer concern this log."""
        self._log_generation += 1
        self._durable = self._queued = 0
        self._writing = False

    def _flush(self) -> None:
        self._flush_call = None
        if self._running:
            self._write_next()

    def _write_next(self) -> None:
        """Hand the writer the entries not yet given to it, unless a write is in flight
        (then they go once it completes)."""
        if self._writing or self._queued >= len(self._entries):
            return
        start, batches = self._queued, tuple(self._entries[self._queued :])
        generation, storage = self._log_generation, self._storage
        failure: list[BaseException] = []

        def work() -> None:
            try:
                storage.append(start, batches)
            except Exception as error:
                failure.append(error)

        self._writing = True
        self._queued = start + len(batches)
        self._writer.submit(work, lambda: self._written(generation, start + len(batches), failure))

    def _written(self, generation: int, end: int, failure: list[BaseException]) -> None:
        """A write of the log up to ``end`` completed (on the reactor thread)."""
        if not self._running or generation != self._log_generation:
            return  # for a log since replaced, or after a stop
        self._writing = False
        if failure:
            self._queued = self._durable
            self.log.failure(
                "domain {rank}: writing {count} log batch(es) failed; they do not count as "
                "held here until a retry succeeds",
                failure=Failure(failure[0]),
                rank=self.rank,
                count=end - self._durable,
            )
            return  # the next tick tries again
        self._durable = max(self._durable, end)
        self._write_next()  # what arrived meanwhile: the disk works while we send
        self._on_durable()

    def _on_durable(self) -> None:
        """Entries became durable here: acknowledge them (a backup), count them and
        send them (the primary)."""
        owed = self._owed_ack
        if owed is not None:
            if self._durable >= len(self._entries):
                self._owed_ack = None
            sender, epoch, sent_at = owed
            if epoch == self._view.epoch and self._promised is None and self._candidacy is None:
                self._send(sender, Ack(epoch, sent_at, self._durable, True))
        self._advance_commit()
        if self._pending and self._is_primary():
            self._send_appends(self._now(), only_new=True)
        self._wake()

    def _sync(self) -> None:
        """Make the whole log durable now, waiting for the writer (before any other
        write, so that the log is on disk before a promise or an acceptance, and at
        a clean shutdown). Raises if the write fails.
        """
        start = self._durable
        if start >= len(self._entries):
            return  # nothing to write, nor in flight (when not writing, queued == durable)
        # Everything from what is known durable, after the write in flight if any (the
        # writer keeps the order; append replaces from ``start``): whether that write
        # succeeds or fails, the log is on disk once this returns, or this raises.
        batches, storage = tuple(self._entries[start:]), self._storage
        self._writer.call(lambda: storage.append(start, batches))
        self._durable = self._queued = len(self._entries)

    def _store(self, write: Callable[[DomainStorage], None]) -> None:
        """Run one storage write through the writer, after the log, and wait for it."""
        self._sync()
        storage = self._storage
        self._writer.call(lambda: write(storage))

    # -- time --------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    def _tick(self) -> None:
        self._tick_call = None
        if not self._running:
            return
        now = self._now()
        if self._flush_call is None:
            self._write_next()  # a failed group write, tried again
        self._expire_pending(now)
        candidacy = self._candidacy
        if candidacy is not None:
            if now - candidacy.started > self.timers.candidacy_timeout:
                self._abandon(now, self.timers.stagger * (1 + self._position()))
            else:
                self._resend_candidacy(candidacy)
                self._check_promises(candidacy, now)
        elif self._is_primary():
            self._primary_tick(now)
        elif self._may_stand(now):
            self._stand(now, handover=False, admit=frozenset())
        if self._running and self._tick_call is None:
            delay = self.timers.tick
            if self._candidacy is None and not self._is_primary():
                # Wake exactly when standing becomes allowed: a take-over
                # starts the moment the last lease granted here runs out.
                delay = min(delay, max(0.001, self._stand_time() - now))
            self._tick_call = self._clock.callLater(delay, self._tick)
        self._wake()

    def _expire_pending(self, now: float) -> None:
        expired = [p for p in self._pending if p.deadline <= now]
        if expired:
            self._pending = [p for p in self._pending if p.deadline > now]
            for pending in expired:
                pending.deferred.errback(SubmitTimeout("no quorum within the submit timeout"))

    # -- primary -----------------------------------------------------------

    def _is_primary(self) -> bool:
        """Primary of the installed view, and promised nothing to anyone since."""
        return (
            self._view.epoch > 0
            and self._view.primary == self.rank
            and self._promised is None
            and self._candidacy is None
            and self._amnesia is None
        )

    def _serving(self, now: float) -> bool:
        return (
            self._running
            and self._is_primary()
            and self._drain is None
            and self._lease_until is not None
            and now < self._lease_until
        )

    def _primary_tick(self, now: float) -> None:
        self._update_lease()
        self._send_appends(now)
        if self._drain is not None:
            self._end_drain(now)
            return
        if now - self._installed_at < self.timers.settle:
            return
        desired = self._desired_members(now)
        for rank in desired - self._view.members:
            self._admitted[rank] = now
        if (
            desired != self._view.members
            or self._stale
            or len(self._entries) >= self.timers.max_entries
        ):
            # A new view: admit members that answer (a lower rank takes over:
            # failback), drop the silent, heal members stuck on a dead ballot,
            # or compact the log. In-flight entries finish first (clean hand-over).
            self.log.info(
                "domain {rank}: changing view {members} -> {desired}",
                rank=self.rank,
                members=sorted(self._view.members),
                desired=sorted(desired),
            )
            self._drain = (now, desired)
            if min(desired) == self.rank:
                # It stays primary: clients wait (`held`) instead of being refused,
                # for at most a drain, a candidacy and a new lease.
                timers = self.timers
                self._hold_until = (
                    now + timers.drain_timeout + timers.candidacy_timeout + timers.lease
                )
            self._end_drain(now)

    def _end_drain(self, now: float) -> None:
        """Stand for the next view once nothing is in flight (or the drain timed out).

        Checked on every tick and as soon as the last in-flight entry is
        confirmed, so a log compaction pauses service for a round trip or two,
        not a tick.
        """
        if self._drain is None or not self._is_primary():
            return
        started, desired = self._drain
        if not self._pending or now - started >= self.timers.drain_timeout:
            self._drain = None
            self._stand(now, handover=True, admit=desired)

    def _desired_members(self, now: float) -> frozenset[int]:
        alive = {
            r
            for r in self.domain
            if r != self.rank
            and now - self._last_heard.get(r, -math.inf) <= self.timers.peer_timeout
        }
        keep = alive & self._view.members
        # A member joins once it answers at the current epoch. Waiting `settle`
        # for it protects the view from a flapping member (each admission and
        # each removal is a view change); only a member admitted within
        # `flap_window` has to prove itself that way, so a clean restart is
        # admitted at once.
        join = {
            r
            for r in alive - self._view.members
            if self._peer_epoch.get(r) == self._view.epoch
            and (
                now - self._since.get(r, now) >= self.timers.settle
                or now - self._admitted.get(r, -math.inf) > self.timers.flap_window
            )
        }
        return frozenset({self.rank} | keep | join)

    def _send_appends(self, now: float, only_new: bool = False) -> None:
        """Send each member the durable entries it lacks (an empty Append: a heartbeat).

        Only entries durable here are sent, so no backup ever holds an entry its
        primary could lose in a crash: after a restart the primary's log is still
        the longest of its view, and every backup's is a prefix of it.

        Every tick (and on installing a view) each member gets everything from what
        it acknowledged on (what a lost message or a new link missed). With
        ``only_new`` (entries just became durable) only the members of the view
        are sent, and only what was not sent to them yet on this link (`_sent`):
        entries already on their way are not sent again before they are
        acknowledged. Members at the same point share one `Append` object, which
        the transport encodes once.
        """
        view = self._view
        durable = self._durable_length()
        shared: dict[tuple[int, int], Append] = {}
        for rank in sorted(self.domain - {self.rank}):
            if rank in view.members:
                start = min(self._match.get(rank, 0), durable)
                if only_new:
                    start = max(start, min(self._sent.get(rank, 0), durable))
                end = min(start + _MAX_BATCHES_PER_APPEND, durable)
                if only_new and end <= start:
                    continue
                self._sent[rank] = end
            elif only_new:
                continue
            else:
                start = end = durable
            message = shared.get((start, end))
            if message is None:
                batches = tuple(self._entries[start:end])
                message = Append(view.epoch, now, start, batches, self._commit)
                shared[(start, end)] = message
            self._send(rank, message)

    def _on_ack(self, sender: int, ack: Ack, now: float) -> None:
        self._peer_epoch[sender] = ack.epoch
        if ack.epoch < self._view.epoch and self._view.epoch > 0:
            self._send(sender, Decided(self._current_value()))
            return
        if not self._is_primary() or ack.epoch != self._view.epoch:
            return
        if sender not in self._view.members:
            return
        if not ack.granted:
            self._stale.add(sender)
            return
        if ack.sent_at > now:
            return  # not from this boot of our clock: worthless as a lease grant
        self._stale.discard(sender)
        self._granted_at[sender] = max(self._granted_at.get(sender, -math.inf), ack.sent_at)
        self._match[sender] = max(self._match.get(sender, 0), ack.match)
        self._update_lease()
        self._advance_commit()

    def _update_lease(self) -> None:
        """Hold the lease while a quorum's grants are fresh (see timing.py)."""
        values: dict[int, float] = {
            r: t for r, t in self._granted_at.items() if r in self._view.members
        }
        values[self.rank] = math.inf
        best = best_quorum_value(self._view.members, values)
        if best is None:
            return
        until = math.inf if best == math.inf else best + self.timers.safe_lease
        if self._lease_until is None or until > self._lease_until:
            self._lease_until = until
            self._had_lease = True

    def _advance_commit(self) -> None:
        """Confirm every entry a quorum of the view holds durably."""
        if not self._is_primary():
            return
        values: dict[int, float] = {
            r: float(m) for r, m in self._match.items() if r in self._view.members
        }
        values[self.rank] = float(self._durable_length())
        best = best_quorum_value(self._view.members, values)
        if best is None or best <= self._commit:
            return
        self._commit = int(best)
        done = [p for p in self._pending if p.index <= self._commit]
        self._pending = [p for p in self._pending if p.index > self._commit]
        for pending in done:
            pending.deferred.callback(None)
        if self._drain is not None and not self._pending:
            self._end_drain(self._now())

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            item.deferred.errback(error)

    def _current_value(self) -> Value:
        return Value(self._view, self._base)

    # -- backup ------------------------------------------------------------

    def _on_append(self, sender: int, append: Append, now: float) -> None:
        view = self._view
        if append.epoch < view.epoch:
            # A deposed primary: tell it what happened.
            self._send(sender, Decided(self._current_value()))
            return
        if append.epoch > view.epoch:
            self._send(sender, Ack(view.epoch, append.sent_at, len(self._entries), False))
            return
        if sender != view.primary:
            return
        if (
            self.rank not in view.members
            or self._promised is not None
            or self._candidacy is not None
            or self._voteless()
        ):
            # Having promised a candidate, a member never again helps the old
            # view commit: that is what lets the candidate see every commit.
            self._send(sender, Ack(view.epoch, append.sent_at, len(self._entries), False))
            return
        have = len(self._entries)
        fresh: list[Batch] = []
        if append.start <= have:
            fresh = list(append.batches[have - append.start :])
            if fresh:
                fresh = self._apply_fitting(fresh)
                if fresh:
                    self._append(fresh)
        self._grant_to = sender
        self._grant_until = now + self.timers.lease
        self._primary_heard = now
        if fresh:
            # Acknowledge once durable (`_on_durable`); the latest Append's time is
            # the freshest lease grant, and its match covers the earlier ones.
            self._owed_ack = (sender, view.epoch, append.sent_at)
        else:
            # Nothing new: grant the lease at once, acknowledging only what is
            # durable (a write still in flight is acknowledged when it completes,
            # so a slow disk delays commits, never the lease).
            self._send(sender, Ack(view.epoch, append.sent_at, self._durable, True))
            if self._owed_ack is not None:
                self._owed_ack = (sender, view.epoch, append.sent_at)

    def _apply_fitting(self, batches: list[Batch]) -> list[Batch]:
        """Apply ``batches`` in order up to the first the application refuses (a
        well-formed batch that does not fit its state: it leaves the state as it
        was); the ones applied. A refusal counts as an invalid message."""
        for number, batch in enumerate(batches):
            try:
                self._app.apply(batch)
            except ValueError as error:
                self.invalid_count += 1
                self._refused = f"batches: entry {number} does not apply: {str(error)[:160]}"
                return batches[:number]
        return batches

    def _position(self) -> int:
        """Live members of the view ranked below this one (not the primary)."""
        view = self._view
        return sum(
            1
            for r in view.members
            if r < self.rank and r in self._connected and (view.epoch == 0 or r != view.primary)
        )

    def _stand_time(self) -> float:
        """The earliest time this member may stand for the next view."""
        if self.rank not in self._view.members or self._amnesia is not None:
            return math.inf  # not verified, or amnesiac: only the primary can admit it
        silent_enough = (
            self._primary_heard
            + self.timers.election_timeout
            + self.timers.stagger * self._position()
        )
        grant = self._grant_until if self._grant_to is not None else -math.inf
        return max(self._backoff_until, self._quarantine_until, grant, silent_enough)

    def _voteless(self) -> bool:
        """An amnesiac member of its installed view: it may have forgotten entries
        it acknowledged, or promises it made, in this view (invariant I2), so it
        neither promises, accepts nor acknowledges here."""
        return self._amnesia is not None and self.rank in self._view.members

    def _may_stand(self, now: float) -> bool:
        return now >= self._stand_time()

    # -- candidate ---------------------------------------------------------

    def _stand(self, now: float, handover: bool, admit: frozenset[int]) -> None:
        """Try to decide the next view with a fresh ballot."""
        epoch = self._view.epoch + 1
        ballot = Ballot(self._max_round + 1, self.rank)
        self._max_round = ballot.round
        self._promised = ballot
        self._store(lambda storage: storage.save_promise(ballot))
        if not handover:
            self._fail_pending(AuthorityLost("a take-over started"))
        self._lease_until = None
        self.log.info(
            "domain {rank}: standing for epoch {epoch} with ballot {ballot}",
            rank=self.rank,
            epoch=epoch,
            ballot=tuple(ballot),
        )
        candidacy = _Candidacy(epoch, ballot, now, handover, admit)
        candidacy.promises[self.rank] = self._promise(epoch, ballot)
        self._candidacy = candidacy
        self._resend_candidacy(candidacy)
        self._check_promises(candidacy, now)

    def _promise(self, epoch: int, ballot: Ballot, have: int | None = None) -> Promise:
        """This member's promise; with ``have``, only the entries beyond the first
        ``have`` (the candidate holds those: logs of a view are prefixes of each other)."""
        accepted_ballot, accepted_value = self._accepted if self._accepted else (None, None)
        start = 0 if have is None else min(have, len(self._entries))
        return Promise(
            epoch, ballot, accepted_ballot, accepted_value, tuple(self._entries[start:]), start
        )

    def _resend_candidacy(self, candidacy: _Candidacy) -> None:
        if candidacy.value is None:
            for rank in sorted(self.domain - set(candidacy.promises)):
                self._send(rank, Prepare(candidacy.epoch, candidacy.ballot, len(self._entries)))
        else:
            for rank in sorted(self._view.members - candidacy.accepted_by):
                self._send(rank, Accept(candidacy.epoch, candidacy.ballot, candidacy.value))

    def _on_promise(self, sender: int, promise: Promise, now: float) -> None:
        candidacy = self._candidacy
        if (
            candidacy is None
            or candidacy.value is not None
            or promise.epoch != candidacy.epoch
            or promise.ballot != candidacy.ballot
        ):
            return
        candidacy.promises[sender] = promise
        self._check_promises(candidacy, now)

    def _check_promises(self, candidacy: _Candidacy, now: float) -> None:
        if candidacy.value is not None or not is_quorum(self._view.members, candidacy.promises):
            return
        # A bare quorum is enough to be safe, but waiting briefly for everyone
        # expected (the members to admit, or the reachable members of the view)
        # saves another view change to add them afterwards.
        wanted = candidacy.admit if candidacy.handover else self._view.members & self._connected
        missing = wanted - set(candidacy.promises) - {self.rank}
        if missing and now - candidacy.started < self.timers.candidacy_timeout / 2:
            return
        # Paxos: re-propose the value accepted at the highest ballot, if any.
        accepted = [
            (p.accepted_ballot, p.accepted_value)
            for p in candidacy.promises.values()
            if p.accepted_ballot is not None and p.accepted_value is not None
        ]
        if accepted:
            value = max(accepted, key=lambda pair: pair[0])[1]
        else:
            # Every log of a view is a prefix of its primary's log, and every
            # committed entry is in some promiser's log: the longest has them all.
            # A promise carries its entries from `start` on; this candidate's log
            # (frozen while it stands) supplies the ones before.
            longest = max(candidacy.promises.values(), key=lambda p: p.length)
            if longest.length > len(self._entries) or not self._app_is_log:
                self._app.restore(self._base)
                try:
                    for batch in (*self._entries[: longest.start], *longest.entries):
                        self._app.apply(batch)
                except ValueError:
                    # Entries that do not apply: drop that promise (an invalid
                    # message) and wait for others; the state is our own log again.
                    self.invalid_count += 1
                    self._refused = "entries: a promise's entries do not apply"
                    del candidacy.promises[
                        next(r for r, p in candidacy.promises.items() if p is longest)
                    ]
                    self._app.restore(self._base)
                    for batch in self._entries:
                        self._app.apply(batch)
                    self._app_is_log = True
                    return
                self._app_is_log = longest.length == len(self._entries)
            # else its own log is the longest, and its state machine holds just that.
            members = frozenset(
                r
                for r in candidacy.promises
                if r in self._view.members or (candidacy.handover and r in candidacy.admit)
            )
            value = Value(View(candidacy.epoch, members, candidacy.ballot), self._app.snapshot())
            candidacy.own_value = True
        candidacy.value = value
        self._accepted = (candidacy.ballot, value)
        ballot = candidacy.ballot
        self._store(lambda storage: storage.save_accepted(ballot, value))
        candidacy.accepted_by.add(self.rank)
        self._resend_candidacy(candidacy)
        self._check_accepted(candidacy, now)

    def _on_accepted(self, sender: int, accepted: Accepted, now: float) -> None:
        candidacy = self._candidacy
        if (
            candidacy is None
            or candidacy.value is None
            or accepted.epoch != candidacy.epoch
            or accepted.ballot != candidacy.ballot
        ):
            return
        candidacy.accepted_by.add(sender)
        self._check_accepted(candidacy, now)

    def _check_accepted(self, candidacy: _Candidacy, now: float) -> None:
        value = candidacy.value
        if value is None or not is_quorum(self._view.members, candidacy.accepted_by):
            return
        # Our own value holds our whole log, so a hand-over loses no submission.
        keep = candidacy.handover and candidacy.own_value
        # Decided first: on a peer link (one ordered stream) it then reaches each
        # member before the new view's first Append, which it can acknowledge at
        # once, so the new primary has its lease a round trip later, not a tick.
        for rank in sorted(self.domain - {self.rank}):
            self._send(rank, Decided(value))
        self._install(value, now, keep_pending=keep)

    def _on_refuse(self, sender: int, refuse: Refuse, now: float) -> None:
        if refuse.promised is not None:
            self._max_round = max(self._max_round, refuse.promised.round)
        if refuse.reason is RefuseReason.BEHIND:
            if refuse.known_epoch < self._view.epoch and self._view.epoch > 0:
                self._send(sender, Decided(self._current_value()))
            return
        candidacy = self._candidacy
        if (
            candidacy is None
            or refuse.epoch != candidacy.epoch
            or refuse.ballot != candidacy.ballot
        ):
            return
        if refuse.reason is RefuseReason.BALLOT:
            # Someone promised a higher ballot: let that candidate finish.
            self._abandon(now, self.timers.candidacy_timeout)
        elif sender not in candidacy.retries:
            # Ask again the moment the member's lease or quarantine ends: that
            # is what makes a take-over fast (and tests the lease bound hard).
            candidacy.retries[sender] = self._clock.callLater(
                refuse.wait + 0.001, self._retry, sender, candidacy.ballot
            )

    def _retry(self, rank: int, ballot: Ballot) -> None:
        candidacy = self._candidacy
        if not self._running or candidacy is None or candidacy.ballot != ballot:
            return
        del candidacy.retries[rank]
        if candidacy.value is None and rank not in candidacy.promises:
            self._send(rank, Prepare(candidacy.epoch, candidacy.ballot, len(self._entries)))

    def _abandon(self, now: float, backoff: float) -> None:
        self._candidacy = None
        self._fail_pending(AuthorityLost("the hand-over did not complete"))
        self._backoff_until = now + backoff

    # -- acceptor ----------------------------------------------------------

    def _refusal(self, sender: int, epoch: int, ballot: Ballot, now: float) -> Refuse | None:
        if self._promised is not None and ballot < self._promised:
            return Refuse(epoch, ballot, RefuseReason.BALLOT, promised=self._promised)
        if self._voteless():
            return Refuse(epoch, ballot, RefuseReason.QUARANTINE, wait=self.timers.lease)
        if now < self._quarantine_until:
            return Refuse(epoch, ballot, RefuseReason.QUARANTINE, wait=self._quarantine_until - now)
        if self._grant_to is not None and self._grant_to != sender and now < self._grant_until:
            # The lease this member granted binds it: no successor yet.
            return Refuse(epoch, ballot, RefuseReason.LEASE, wait=self._grant_until - now)
        if self._serving(now) and self._lease_until is not None:
            # A primary that is a quorum alone holds an endless lease: ask the
            # candidate to try again after one lease period (a finite number on
            # the wire; JSON has no infinity).
            wait = min(self._lease_until - now, self.timers.lease)
            return Refuse(epoch, ballot, RefuseReason.LEASE, wait=wait)
        return None

    def _stale_or_ahead(self, sender: int, epoch: int, ballot: Ballot) -> bool:
        """Answer a Paxos message for an epoch other than ours; True if done."""
        if epoch <= self._view.epoch:
            if self._view.epoch > 0:
                self._send(sender, Decided(self._current_value()))
            return True
        if epoch > self._view.epoch + 1:
            self._send(
                sender,
                Refuse(epoch, ballot, RefuseReason.BEHIND, known_epoch=self._view.epoch),
            )
            return True
        return False

    def _on_prepare(self, sender: int, prepare: Prepare, now: float) -> None:
        if self._stale_or_ahead(sender, prepare.epoch, prepare.ballot):
            return
        refusal = self._refusal(sender, prepare.epoch, prepare.ballot, now)
        if refusal is not None:
            self._send(sender, refusal)
            return
        self._promise_to(prepare.ballot, now)
        self._send(sender, self._promise(prepare.epoch, prepare.ballot, prepare.have))

    def _on_accept(self, sender: int, accept: Accept, now: float) -> None:
        if self._stale_or_ahead(sender, accept.epoch, accept.ballot):
            return
        if self._promised is not None and accept.ballot < self._promised:
            self._send(
                sender,
                Refuse(accept.epoch, accept.ballot, RefuseReason.BALLOT, promised=self._promised),
            )
            return
        if self._serving(now):
            self._send(sender, Refuse(accept.epoch, accept.ballot, RefuseReason.LEASE))
            return
        if self._voteless():
            wait = self.timers.lease
            self._send(
                sender, Refuse(accept.epoch, accept.ballot, RefuseReason.QUARANTINE, wait=wait)
            )
            return
        self._promise_to(accept.ballot, now, persist=False)
        self._accepted = (accept.ballot, accept.value)
        self._store(lambda storage: storage.save_accepted(accept.ballot, accept.value))
        self._send(sender, Accepted(accept.epoch, accept.ballot))

    def _promise_to(self, ballot: Ballot, now: float, persist: bool = True) -> None:
        """Promise ``ballot``: from now on, never help the current view commit."""
        self._max_round = max(self._max_round, ballot.round)
        if self._promised != ballot:
            self._promised = ballot
            if persist:
                self._store(lambda storage: storage.save_promise(ballot))
        candidacy = self._candidacy
        if candidacy is not None and candidacy.ballot != ballot:
            self._abandon(now, self.timers.candidacy_timeout)
        if self._pending:
            self._fail_pending(AuthorityLost("another member is taking over"))
        self._lease_until = None
        self._drain = None
        self._primary_heard = now

    # -- views -------------------------------------------------------------

    def _install(self, value: Value, now: float, keep_pending: bool = False) -> None:
        """Install a decided view and the state it starts from."""
        view = value.view
        if view.epoch <= self._view.epoch:
            return
        # The new view's state replaces the log: entries not yet written need not be
        # (a write in flight is written before the view: the writer keeps the order).
        self._new_log()
        self._owed_ack = None
        amnesia = self._amnesia
        self._writer.call(lambda: self._storage.save_view(view, value.state))
        if amnesia is not None and self.rank in view.members and view.epoch > amnesia.epoch:
            # A view newer than any this member could have voted in before it
            # forgot: it knows everything a member of this view must know.
            self._amnesia = None
            self._writer.call(lambda: self._storage.save_amnesia(None))
            self.log.info(
                "domain {rank}: readmitted in epoch {epoch}; no longer amnesiac",
                rank=self.rank,
                epoch=view.epoch,
            )
        self._view = view
        self._base = value.state
        self._entries = []
        self._promised = None
        self._accepted = None
        self._app.restore(value.state)
        self._app_is_log = True
        if view.origin is not None:
            self._max_round = max(self._max_round, view.origin.round)
        self._candidacy = None
        self._drain = None
        # Grants to an older view's primary are void: that view's successor was
        # decided, which needed a quorum whose grants had all run out.
        self._grant_to = None
        self._grant_until = -math.inf
        # So are the grants a restart made this member forget (the quarantine's
        # reason): they were all made in views older than this one. Without this,
        # a restarted member would refuse the very view change that admits it.
        self._quarantine_until = -math.inf
        self._primary_heard = now
        self._installed_at = now
        self._match = {}
        self._sent = {}
        self._granted_at = {}
        self._stale = set()
        self._lease_until = None
        self._had_lease = False
        self._commit = 0
        self.log.info(
            "domain {rank}: installed epoch {epoch} members {members} primary {primary}",
            rank=self.rank,
            epoch=view.epoch,
            members=sorted(view.members),
            primary=view.primary,
        )
        pending, self._pending = self._pending, []
        for item in pending:
            if keep_pending:
                item.deferred.callback(None)
            else:
                item.deferred.errback(AuthorityLost(f"epoch {view.epoch} was installed"))
        if self._is_primary():
            self._update_lease()
            self._send_appends(now)
