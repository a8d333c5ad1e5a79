"""`DomainRuntime`: the daemon's multi-host domains, wired to peers, disk and engines.

One `DomainNode` per multi-host domain this host serves (a host may serve
several, with a different role in each), each with its own licence `Engine`
(wrapped by `EngineMachine`), its own `SqliteDomainStorage` in the state
directory, and one shared `PeerNetwork` for the links. Single-host products
stay with the daemon's own engine and journal; this service only answers for
products of multi-host domains.

For the client dispatcher, `route` (by product) and `route_for_handle` give a
`DomainRoute`: ``serve()``, the command to call before deciding (it takes over
first if this member has just become primary, and answers None or a `Refusal`:
why this member may not grant, ``TRY_SERVER`` with the primary to ask,
``NEW_MASTER``, ``LOSTMASTER`` or ``NOTVERIFIED``, each with the domain's
addresses; the dispatcher writes it as the client's ``ERR``); ``refusal()``,
the same answer read without taking over; the domain's ``engine`` to decide
with; ``sink``, the member as an `hqnlsd.commit.EventSink` whose ``commit``
Deferred to await before answering (a grant is confirmed only once a quorum
holds it); and ``held()``, to wait out a hand-over of this member to itself (a
log compaction) instead of refusing.

A domain is identified by its server section (`domain_id`: the members'
addresses and unique ids), so permits with the same servers share one domain,
one node and one engine, and every member computes the same id. Ranks come
from this host's hosts file (`DomainDecision.ranks`); all members must agree
(the peer hello checks it).

On becoming primary of a view the runtime makes the engine resume its holders
and load the products this host read (`DomainMember.take_over_if_primary`),
before the first client request is decided (the role watch does it every tick,
and `DomainRoute.serve` before every decision).
So the acting primary's permit files are the ones the domain serves: keep
them the same on every member.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from hqnlsd.commit import CommitFailed, EventSink, NotReplicated, OutcomeUnknown, Refused
from hqnlsd.domain.adapter import EngineMachine
from hqnlsd.domain.clock import ReactorMonotonicClock
from hqnlsd.domain.messages import Ack, Append, Decided, Message
from hqnlsd.domain.node import DomainNode, NotServing
from hqnlsd.domain.node import OutcomeUnknown as NodeOutcomeUnknown
from hqnlsd.domain.peers import (
    DEFAULT_PEER_PORT,
    PeerCallError,
    PeerInfo,
    PeerNetwork,
    PeerTimers,
)
from hqnlsd.domain.role import Refusal, Role, RoleInfo
from hqnlsd.domain.sqlstore import DomainStoreError, SqliteDomainStorage, domain_file_name
from hqnlsd.domain.storage import Amnesia, MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Ballot, initial_view
from hqnlsd.licensing.engine import Engine, random_handle
from hqnlsd.licensing.events import Event
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.reader import Catalogue, Serving
from hqnlsd.persistence.store import InlineWriter, Writer, writer_for
from hqnlsd.status import Status
from hqnlsd.tls import DomainCredentials

Address = ipaddress.IPv4Address

#: The longest damage reason shown to clients and in sinfo.
_REASON_CHARS = 300


def proven_epoch(message: Message) -> int:
    """The highest epoch ``message`` shows was decided (a member speaks of epoch
    *e + 1* only once it has installed *e*)."""
    if isinstance(message, Decided):
        return message.value.view.epoch
    if isinstance(message, (Append, Ack)):
        return message.epoch
    return max(0, message.epoch - 1)


class RecoveryRefused(Exception):
    """``recover`` cannot run now; the message says why and what to do."""


def domain_id(servers: Iterable[HostId]) -> str:
    """The identity of a server domain: its members, sorted (``"ADDR 0xID,..."``)."""
    return ",".join(str(server) for server in sorted(servers))


def handle_tag(domain_key: str) -> str:
    """The prefix of every handle a domain grants (the same on every member).

    It lets a member route a handle it has not seen yet (granted moments ago by
    the primary, not yet replicated here) to its domain, and so answer
    TRY_SERVER rather than BADHANDLE.
    """
    return "d" + hashlib.sha256(domain_key.encode("utf-8")).hexdigest()[:6]


def tagged_handles(domain_key: str) -> Callable[[], str]:
    """A handle maker for a domain's engine: ``<tag>-<16 hex digits>``."""
    tag = handle_tag(domain_key)
    return lambda: f"{tag}-{random_handle()}"


@dataclass(frozen=True)
class DomainSpec:
    """A multi-host domain this host serves: who ranks where, and its products."""

    domain_id: str
    #: every member's rank (hqnserverN), by address
    ranks: Mapping[Address, int]
    #: the products of this domain read here (from every permit of this domain)
    products: tuple[ProductPermit, ...]

    @property
    def addresses(self) -> tuple[Address, ...]:
        """The members' addresses in rank order."""
        return tuple(sorted(self.ranks, key=lambda address: self.ranks[address]))


def domains_from_catalogue(catalogue: Catalogue) -> list[DomainSpec]:
    """The multi-host domains served here, from the permit catalogue.

    Products come from ``catalogue.served`` (after versioning: first permit
    wins); ranks from each permit's `DomainDecision`.
    """
    ranks: dict[str, Mapping[Address, int]] = {}
    for report in catalogue.files:
        permit, decision = report.file.permit, report.decision
        if permit is None or decision is None or decision.serving is not Serving.HERE:
            continue
        if len(permit.servers) > 1 and decision.ranks:
            ranks.setdefault(domain_id(permit.servers), dict(decision.ranks))
    products: dict[str, list[ProductPermit]] = {key: [] for key in ranks}
    for offer in catalogue.served.values():
        key = domain_id(offer.domain)
        if key in products:
            products[key].append(offer.product)
    return [DomainSpec(key, ranks[key], tuple(products[key])) for key in sorted(ranks)]


class DomainMember:
    """This host's membership of one domain: node, engine, storage, take-over."""

    log = Logger()

    def __init__(
        self,
        spec: DomainSpec,
        me: Address,
        clock: Any,
        engine: Engine,
        storage: SqliteDomainStorage | None,
        send: Callable[[str, Address, Message], None],
        timers: DomainTimers,
        damaged: str | None = None,
        writer: Writer | None = None,
    ) -> None:
        """Build the (stopped) member; `start` starts its node. Without ``storage``
        (its file could not be opened: ``damaged`` says why) it never starts.
        ``writer`` runs the storage's calls (`DomainNode`); at once by default."""
        self.spec = spec
        self.rank = spec.ranks[me]
        self.address_of = {rank: address for address, rank in spec.ranks.items()}
        self.engine = engine
        self.machine = EngineMachine(engine)
        self.storage = storage
        self.writer: Writer = writer if writer is not None else InlineWriter()
        self.node = DomainNode(
            self.rank,
            frozenset(spec.ranks.values()),
            clock,
            self._send,
            storage if storage is not None else MemoryStorage(),
            self.machine,
            timers,
            self.writer,
        )
        self._send_to = send
        self._ready_epoch: int | None = None
        self.last_role: Role | None = None
        #: called with (domain id, events) once events committed here are confirmed
        self.event_listeners: list[Callable[[str, Sequence[Event]], None]] = []
        #: times this member took over as primary (a fail-over or failback here)
        self.takeovers = 0
        #: why this member's stored state for the domain cannot be used (None: it can)
        self.damaged = damaged
        #: while damaged: the highest epoch and ballot round peers' messages showed
        self.observed_epoch: int | None = None
        self.observed_round = 0

    def _send(self, rank: int, message: Message) -> None:
        """Send to member ``rank`` (a rank the hosts file does not know is skipped:
        only a bug could make the node address one)."""
        address = self.address_of.get(rank)
        if address is not None:
            self._send_to(self.spec.domain_id, address, message)

    def start(self) -> None:
        """Start the node from its storage; if that cannot be loaded or restored,
        mark the member damaged (it then takes no part in the domain) instead of
        failing the daemon."""
        if self.storage is None:
            self._report_damage(self.damaged or "the domain database cannot be opened")
            return
        blank = self.machine.snapshot()
        try:
            self.node.start()
        except Exception as error:
            self.node.stop()
            self.writer.stop()
            self.machine.restore(blank)  # no half-restored state in listings
            self._report_damage(f"{type(error).__name__}: {error}")

    def _report_damage(self, reason: str) -> None:
        """Mark the member damaged and say so, once, at error level."""
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 3] + "..."
        self.damaged = reason
        self.log.error(
            "domain {domain}: hqnserver{rank}'s stored state for this domain is damaged "
            "and was not used ({reason}); this member takes no part in the domain until "
            "an administrator runs 'hqn_lsa recover' (see README, server domains)",
            domain=self.spec.domain_id,
            rank=self.rank,
            reason=reason,
        )

    def observe(self, message: Message) -> None:
        """A peer's message while damaged: remember the highest epoch and round it shows
        (the recovery's bound on what this member may have voted in)."""
        epoch = proven_epoch(message)
        self.observed_epoch = epoch if self.observed_epoch is None else max(
            self.observed_epoch, epoch
        )
        for value in vars(message).values():
            if isinstance(value, Ballot):
                self.observed_round = max(self.observed_round, value.round)

    def stop(self) -> None:
        """Write what is pending, stop the node (waiting commits fail), close the storage."""
        try:
            self.node.flush()
        except Exception:
            self.log.failure("domain {domain}: final write failed", domain=self.spec.domain_id)
        self.node.stop()
        self.writer.stop()  # nothing runs on the storage after this
        if self.storage is not None:
            self.storage.close()

    def take_over_if_primary(self) -> bool:
        """A command: True if this member may decide now, having taken over first.

        On its first call as primary of a new epoch it commits the take-over
        events (holders resumed, the products read here loaded:
        `EngineMachine.take_over_events`), so the epoch's first decision comes
        after them. Call it before every decision (`DomainRoute.serve` does);
        the role watch calls it every tick too.
        """
        if not self.node.can_serve:
            return False
        epoch = self.node.view.epoch
        if self._ready_epoch != epoch:
            self._ready_epoch = epoch
            self.takeovers += 1
            self.log.info(
                "domain {domain}: hqnserver{rank} is the primary of epoch {epoch}; "
                "resuming holders and loading {count} product(s)",
                domain=self.spec.domain_id,
                rank=self.rank,
                epoch=epoch,
                count=len(self.spec.products),
            )
            self._commit_own(self.machine.take_over_events(self.spec.products))
        return self.node.can_serve

    def commit(self, events: Sequence[Event]) -> Deferred[None]:
        """This member as an `hqnlsd.commit.EventSink`: fire once a quorum holds ``events``.

        ``events`` are what the domain's engine applied (in this reactor turn,
        after `take_over_if_primary` said this member may decide); they are
        replicated as that one batch (`EngineMachine.replicate_applied`) and the
        `event_listeners` hear of them once confirmed. With no events it waits
        until everything applied before is held by a quorum (`DomainNode.barrier`).

        Fails only with: `Refused` at once (nothing happened; the engine was
        rebuilt without the events; the `Refusal` of that moment says whom to
        ask), `OutcomeUnknown` (authority or quorum lost before the quorum held
        them), `NotReplicated` (anything else, such as the log failing).
        """
        if not events:
            return self.node.barrier().addErrback(self._typed)
        done = self.machine.replicate_applied(self.node, events)
        if self.event_listeners:
            done.addCallback(self._confirmed, tuple(events))
        return done.addErrback(self._typed)

    def _typed(self, failure: Failure) -> None:
        """The node's failure as the sinks' typed outcome (the cause chained)."""
        error = failure.value
        refusal = None if self.node.can_serve else refusal_of(self)
        raise commit_failure(error, refusal, self.spec.addresses) from error

    def _confirmed(self, result: None, events: tuple[Event, ...]) -> None:
        for listener in self.event_listeners:
            try:
                listener(self.spec.domain_id, events)
            except Exception:
                self.log.failure("domain event listener failed")
        return result

    def _commit_own(self, events: Sequence[Event]) -> None:
        """Commit events this member decided on its own (take-over, housekeeping, a
        re-read); a failure is logged. Without events there is nothing to wait for."""
        if events:
            self.commit(events).addErrback(self._take_over_failed)

    def housekeep(self) -> None:
        """Periodic work of the primary: forget old tombstones."""
        if self.take_over_if_primary():
            self._commit_own(self.engine.expire().events)

    def reload(self, spec: DomainSpec) -> None:
        """New products for this domain (SIGHUP); the primary loads them now."""
        self.spec = spec
        if self.node.can_serve and self._ready_epoch == self.node.view.epoch:
            self._commit_own(self.engine.load_products(spec.products).events)

    def _take_over_failed(self, failure: Failure) -> None:
        if failure.check(Refused):
            # Refused at once (the lease ran out that very moment): nothing was
            # applied, so take over again when this member next serves.
            self._ready_epoch = None
        if failure.check(Refused, OutcomeUnknown):
            self.log.info(
                "domain {domain}: take-over events not confirmed: {why}",
                domain=self.spec.domain_id,
                why=str(failure.value),
            )
            return
        self.log.failure("domain {domain}: take-over failed", failure, domain=self.spec.domain_id)


def commit_failure(
    error: BaseException | None, refusal: Refusal | None, domain: Sequence[Address]
) -> CommitFailed:
    """What a domain member's commit failed with, as `hqnlsd.commit`'s typed outcome.

    `NotServing` (nothing happened) is `Refused` with ``refusal``, the member's
    refusal read at that moment; the node's `OutcomeUnknown` (authority or
    quorum lost first) is `OutcomeUnknown`; anything else `NotReplicated`.
    ``domain``: the domain's addresses in rank order.
    """
    if isinstance(error, NotServing):
        return Refused(str(error), refusal, domain)
    if isinstance(error, NodeOutcomeUnknown):
        return OutcomeUnknown(str(error), domain)
    return NotReplicated(str(error))


def waiting_words(member: DomainMember, info: RoleInfo) -> str:
    """The members ``info`` waits for: ``hqnserver1 at 127.0.0.1 and hqnserver2 at ...``."""
    names = [
        f"hqnserver{rank} at {member.address_of[rank]}"
        for rank in sorted(info.waiting)
        if rank in member.address_of
    ]
    if len(names) < 2:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def refusal_of(member: DomainMember) -> Refusal:
    """Why ``member``, which does not serve now, may not grant (a query).

    While no view change can complete (``RoleInfo.waiting``), the message
    names the members the domain waits for.
    """
    info = member.node.role()
    domain = member.spec.addresses
    if member.damaged is not None:
        return Refusal(
            Status.NOTVERIFIED,
            "this member's stored state for this domain is damaged; try another member "
            "(an administrator recovers it with 'hqn_lsa recover')",
            domain,
        )
    status = info.status or Status.NOTVERIFIED
    address = None if info.primary is None else member.address_of.get(info.primary)
    if status is Status.TRY_SERVER and info.primary is not None and address is not None:
        return Refusal(
            status,
            f"this server is a backup; ask the primary hqnserver{info.primary} at {address}",
            domain,
            primary=info.primary,
            primary_address=address,
        )
    messages = {
        Status.NEW_MASTER: "a new primary is taking over; try again in a moment",
        Status.LOSTMASTER: "this backup lost its primary; a take-over will follow",
    }
    text = messages.get(
        status, "this server has not been verified by its domain; try another member"
    )
    if info.waiting:
        # No take-over can complete: say so, and who is missing.
        missing = waiting_words(member, info)
        text = (
            f"this backup lost its primary and the domain cannot elect another "
            f"until it reaches {missing}"
            if status is Status.LOSTMASTER
            else f"this server cannot be verified by its domain until it reaches {missing}"
        )
    if status is Status.TRY_SERVER:
        status = Status.NOTVERIFIED  # a backup that knows no primary to name
    return Refusal(status, text, domain)


class DomainRoute:
    """What the client dispatcher needs to answer for one domain."""

    def __init__(self, member: DomainMember) -> None:
        """A route through ``member``."""
        self.member = member

    @property
    def domain_id(self) -> str:
        """The domain's identity."""
        return self.member.spec.domain_id

    @property
    def engine(self) -> Engine:
        """The domain's licence engine: decide with it only once `serve` said None."""
        return self.member.engine

    @property
    def sink(self) -> EventSink:
        """Where the domain's decisions are committed: this member (`DomainMember.commit`)."""
        return self.member

    def serve(self) -> Refusal | None:
        """A command, to call before deciding: None if this member may decide now,
        else why not (`refusal`).

        If this member has just become primary of a new epoch it takes over
        first (`DomainMember.take_over_if_primary`: commits the take-over events),
        so nothing is decided before them.
        """
        if self.member.take_over_if_primary():
            return None
        return refusal_of(self.member)

    def refusal(self) -> Refusal | None:
        """Why this member may not grant now, or None if it serves (a query: it never
        takes over; decide only after `serve`)."""
        if self.member.node.can_serve:
            return None
        return refusal_of(self.member)

    def role(self) -> RoleInfo:
        """This member's role in the domain."""
        return self.member.node.role()

    def domain_words(self) -> str:
        """The domain's addresses in rank order, for ``domain="..."``."""
        return " ".join(str(address) for address in self.member.spec.addresses)

    def waiting_words(self, info: RoleInfo) -> str:
        """The members ``info`` waits for: ``hqnserver1 at 127.0.0.1 and hqnserver2 at ...``."""
        return waiting_words(self.member, info)

    def held(self) -> Deferred[bool] | None:
        """Wait while this member only hands over to itself (see `DomainNode.held`).

        None: answer `refusal` now. Else run the command again when the Deferred
        fires (True: it serves again; False: answer the refusal of that moment).
        """
        return self.member.node.held()


class DomainRuntime(MultiService):
    """Every multi-host domain of this daemon (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        me: Address,
        credentials: DomainCredentials,
        state_dir: Path,
        *,
        listen_port: int = DEFAULT_PEER_PORT,
        port_of: Callable[[Address], int | None] | None = None,
        timers: DomainTimers | None = None,
        peer_timers: PeerTimers | None = None,
        check_source: bool = True,
        clock: Any = None,
        engine_factory: Callable[[str], Engine] | None = None,
    ) -> None:
        """The runtime of the daemon on ``me``; `configure` tells it its domains."""
        super().__init__()
        self.reactor = reactor
        self.me = me
        self.state_dir = Path(state_dir)
        self.timers = timers if timers is not None else DomainTimers()
        self.clock = clock if clock is not None else ReactorMonotonicClock(reactor)
        self._engine_factory: Callable[[str], Engine] = (
            engine_factory
            if engine_factory is not None
            else (lambda key: Engine(reactor, new_handle=tagged_handles(key)))
        )
        self.members: dict[str, DomainMember] = {}
        self.network = PeerNetwork(
            reactor,
            self.clock,
            me,
            credentials,
            listen_port=listen_port,
            port_of=port_of,
            deliver=self._deliver,
            link_changed=self._link_changed,
            timers=peer_timers,
            check_source=check_source,
        )
        self.network.call_handler = self._on_call
        self.network.setName("peers")
        self.network.setServiceParent(self)
        self._watch_call: Any = None
        #: called with (domain id, RoleInfo) whenever this member's role changes
        self.role_listeners: list[Callable[[str, RoleInfo], None]] = []
        #: called with (domain id, events) when events decided here are confirmed
        #: (grants, releases, reclaims...: for the licence log, usage report, metrics)
        self.event_listeners: list[Callable[[str, Sequence[Event]], None]] = []
        #: called with (domain id, how many other members our links reach) on link changes
        self.peer_listeners: list[Callable[[str, int], None]] = []
        #: called with (domain id, damage reason or None) when a member starts or recovers
        self.damage_listeners: list[Callable[[str, str | None], None]] = []
        #: runs a change a member forwarded to this (acting primary) member:
        #: (domain id, the caller's address, body) -> reply body or a Deferred of it;
        #: raise `PeerCallError` to refuse. Set by the admin layer.
        self.forwarded: (
            Callable[[str, Address, dict[str, Any]], dict[str, Any] | Deferred[dict[str, Any]]]
            | None
        ) = None

    # -- configuration ---------------------------------------------------------------

    def configure(self, specs: Iterable[DomainSpec]) -> None:
        """Serve exactly these domains (at start and on SIGHUP).

        A new domain gets a member (started if the runtime runs); a domain
        whose ranks changed is restarted from its storage; a domain no longer
        served is stopped (its storage stays in the state directory).
        """
        wanted = {spec.domain_id: spec for spec in specs if self.me in spec.ranks}
        for key in sorted(set(self.members) - set(wanted)):
            self.log.info("domain {domain}: no longer served here", domain=key)
            self.members.pop(key).stop()
        for key, spec in sorted(wanted.items()):
            member = self.members.get(key)
            if member is not None and dict(member.spec.ranks) == dict(spec.ranks):
                member.reload(spec)
                continue
            if member is not None:
                member.stop()
            try:
                storage: SqliteDomainStorage | None = SqliteDomainStorage.in_state_dir(
                    self.state_dir, key
                )
                damaged = None
            except DomainStoreError as error:
                if not error.corrupt:
                    raise  # locked, unreadable, another domain's: fix the set-up
                storage, damaged = None, str(error)
            member = self._new_member(spec, storage, damaged)
            self.members[key] = member
            if self.running:
                self._start_member(key, member)
        self.network.set_domains({key: spec.ranks for key, spec in wanted.items()})

    def _new_member(
        self, spec: DomainSpec, storage: SqliteDomainStorage | None, damaged: str | None = None
    ) -> DomainMember:
        member = DomainMember(
            spec,
            self.me,
            self.clock,
            self._engine_factory(spec.domain_id),
            storage,
            self.network.send,
            self.timers,
            damaged,
            writer_for(self.reactor, name="hqnlsd-domain"),
        )
        member.event_listeners = self.event_listeners
        return member

    def _start_member(self, key: str, member: DomainMember) -> None:
        member.start()
        for listener in self.damage_listeners:
            listener(key, member.damaged)

    def recover(self, key: str) -> dict[str, Any]:
        """Recover this member of domain ``key`` whose stored state is damaged.

        Its storage is rewritten, in one transaction, to an empty log and state
        marked *amnesiac* (`Amnesia`) up to the highest epoch it can have voted
        in: the stored view's epoch if it can still be read, and every epoch
        peers showed while it was damaged. Its promises need no keeping: an
        amnesiac votes only once readmitted in a view above that bound, for
        epochs it never promised anything in (docs/domains.md). Then the member
        starts again.

        @raise RecoveryRefused: the domain is not served here, its state is not
            damaged, or no bound on its epoch is known yet (no peer heard from).
        """
        member = self.members.get(key)
        if member is None:
            raise RecoveryRefused(f"no domain {key} is served here")
        if member.damaged is None:
            raise RecoveryRefused(
                "this member's state for the domain is not damaged: nothing to recover"
            )
        ranks = frozenset(member.spec.ranks.values())
        # The damaged member's node never started: the new member takes the same
        # open database, or a new one if SQLite could not open the old.
        storage = member.storage
        stored_epoch, stored_round = (None, 0) if storage is None else storage.salvage(ranks)
        observed = member.observed_epoch
        if stored_epoch is not None:
            # The stored view is the latest this member installed (views are
            # written before they are acted on): an exact bound.
            bound = stored_epoch if observed is None else max(stored_epoch, observed)
        elif observed is not None:
            # Unreadable: the peers' latest epoch, plus one for a view this member
            # may have decided and installed before any peer learnt of it.
            bound = observed + 1
        else:
            raise RecoveryRefused(
                "the stored epoch cannot be read and no peer of the domain has been "
                "heard from yet; try again once a peer is connected (sinfo shows the links)"
            )
        amnesia = Amnesia(bound, max(stored_round, member.observed_round))
        if storage is None:
            path = self.state_dir / domain_file_name(key)
            aside = SqliteDomainStorage.set_aside(path, f"damaged-{int(self.reactor.seconds())}")
            self.log.warn(
                "domain {domain}: the corrupt database was kept as {aside}", domain=key, aside=aside
            )
            storage = SqliteDomainStorage.in_state_dir(self.state_dir, key)
        fresh = self._new_member(member.spec, storage)
        storage.reset_amnesiac(initial_view(ranks), fresh.machine.snapshot(), amnesia)
        self.log.warn(
            "domain {domain}: hqnserver{rank} recovered by an administrator: empty state, "
            "amnesiac up to epoch {epoch} (ballot round {round}); it votes again once a "
            "later view readmits it",
            domain=key,
            rank=member.rank,
            epoch=amnesia.epoch,
            round=amnesia.round,
        )
        self.members[key] = fresh
        if self.running:
            self._start_member(key, fresh)
        return {
            "domain": " ".join(str(a) for a in fresh.spec.addresses),
            "rank": fresh.rank,
            "epoch_bound": amnesia.epoch,
            "round": amnesia.round,
            "damaged": fresh.damaged,
        }

    # -- queries for the dispatcher and admin tools -----------------------------------

    def route(self, publisher: str, product: str) -> DomainRoute | None:
        """The route for a product of a multi-host domain served here, or None."""
        for member in self.members.values():
            if any(p.key == (publisher, product) for p in member.spec.products):
                return DomainRoute(member)
        return None

    def route_for_handle(self, handle: str) -> DomainRoute | None:
        """The route of the domain whose engine knows ``handle`` (held or taken back).

        A backup's engine lags its primary by at most the commits in flight, so
        a handle granted moments ago may not be known here yet: its prefix
        (`handle_tag`) still names its domain.
        """
        for member in self.members.values():
            if member.machine.knows_handle(handle):
                return DomainRoute(member)
        tag, dash, _ = handle.partition("-")
        if dash:
            for key, member in self.members.items():
                if handle_tag(key) == tag:
                    return DomainRoute(member)
        return None

    def forward(
        self, domain_key: str, body: Mapping[str, Any], timeout: float
    ) -> Deferred[dict[str, Any]]:
        """Send a change to the acting primary of ``domain_key`` (see `forwarded`).

        Fails with `PeerCallError`: NOTVERIFIED / NEW_MASTER / LOSTMASTER when
        this member knows no acting primary to ask, or the primary's refusal.
        """
        member = self.members.get(domain_key)
        if member is None:
            return fail(PeerCallError("BADPRODUCT", f"no domain {domain_key} is served here"))
        info = member.node.role()
        if info.primary is None or info.primary == member.rank:
            refusal = DomainRoute(member).refusal()
            status = refusal.status.name if refusal is not None else "NOTVERIFIED"
            why = refusal.msg if refusal is not None else "not verified"
            return fail(PeerCallError(status, f"the domain has no acting primary to ask ({why})"))
        address = member.address_of.get(info.primary)
        if address is None:
            return fail(PeerCallError("NOTVERIFIED", f"no address known for rank {info.primary}"))
        return self.network.call(domain_key, address, body, timeout)

    def primary_address(self, domain_key: str) -> Address | None:
        """The address of the acting primary of ``domain_key`` as this member knows it."""
        member = self.members.get(domain_key)
        if member is None:
            return None
        primary = member.node.role().primary
        return None if primary is None else member.address_of.get(primary)

    def housekeep(self) -> None:
        """Periodic work (call it from the daemon's housekeeping): the primaries
        purge old tombstones. Logs its own errors."""
        for key, member in self.members.items():
            try:
                member.housekeep()
            except Exception:
                self.log.failure("domain {domain}: housekeeping failed", domain=key)

    def roles(self) -> dict[str, RoleInfo]:
        """This member's role in every domain, by domain id."""
        return {key: member.node.role() for key, member in self.members.items()}

    def peers(self) -> list[PeerInfo]:
        """Every peer's link state."""
        return self.network.peers()

    # -- service -----------------------------------------------------------------------

    def startService(self) -> None:
        """Start the peer links, then every domain node, then the role watch."""
        super().startService()
        for key, member in self.members.items():
            self._start_member(key, member)
        self._watch_call = self.clock.callLater(self.timers.tick, self._watch)

    def stopService(self) -> Deferred[None] | None:
        """Stop the nodes (waiting submissions fail), close storage, stop the links."""
        if self._watch_call is not None and self._watch_call.active():
            self._watch_call.cancel()
        self._watch_call = None
        for member in self.members.values():
            member.stop()
        return super().stopService()  # type: ignore[no-any-return]

    # -- internals ----------------------------------------------------------------------

    def _watch(self) -> None:
        """Take over promptly on becoming primary; report role changes. Never raises."""
        self._watch_call = None
        try:
            for key, member in self.members.items():
                member.take_over_if_primary()
                info = member.node.role()
                if info.role is not member.last_role:
                    member.last_role = info.role
                    self.log.info(
                        "domain {domain}: hqnserver{rank} is now {role} (epoch {epoch}, "
                        "primary {primary})",
                        domain=key,
                        rank=member.rank,
                        role=info.role.value,
                        epoch=info.epoch,
                        primary=info.primary,
                    )
                    for listener in self.role_listeners:
                        listener(key, info)
        except Exception:
            self.log.failure("domain role watch failed")
        if self.running:
            self._watch_call = self.clock.callLater(self.timers.tick, self._watch)

    def _on_call(
        self, domain_key: str, address: Address, body: dict[str, Any]
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        member = self.members.get(domain_key)
        if member is None or address not in member.spec.ranks:
            raise PeerCallError("BADPRODUCT", f"{address} is not a member of that domain here")
        if self.forwarded is None:
            raise PeerCallError("NOTVERIFIED", "this member takes no forwarded changes")
        return self.forwarded(domain_key, address, body)

    def _deliver(self, domain_key: str, address: Address, message: Message) -> str | None:
        """Hand a peer's message to its domain's node; what is invalid about it, or None."""
        member = self.members.get(domain_key)
        if member is None:
            return None
        rank = member.spec.ranks.get(address)
        if rank is None:
            return None
        if member.damaged is not None:
            member.observe(message)  # no votes: only learn how far the domain has got
            return None
        return member.node.receive(rank, message)

    def _link_changed(self, address: Address, up: bool) -> None:
        for key, member in self.members.items():
            rank = member.spec.ranks.get(address)
            if rank is None:
                continue
            if up:
                member.node.connected(rank)
            else:
                member.node.disconnected(rank)
            reached = sum(
                1 for other in member.spec.ranks if other != self.me and self.network.is_up(other)
            )
            for listener in self.peer_listeners:
                listener(key, reached)

    def serving_engines(self) -> list[Engine]:
        """The engines of the domains this member is the acting primary of now."""
        return [member.engine for member in self.members.values() if member.node.can_serve]
