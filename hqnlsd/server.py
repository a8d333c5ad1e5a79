"""`LicenceServer`: the dispatcher between the client protocol and the core.

It owns the permit catalogue, the licensing engine and the journal of one daemon,
maps each typed protocol command onto the engine, and answers only once the
events the command caused are durable. It knows nothing of sockets: the protocol
calls `dispatch`, tests call it directly with a `task.Clock`.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from hqnlsd.answers import client_reply, refusal_reply
from hqnlsd.commit import EventSink, NotRecorded, OutcomeUnknown, Refused
from hqnlsd.identity import HostsTable
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.results import Denied, Grant, HolderInfo, LicenceRequest
from hqnlsd.logging.badinput import DEFAULT_INTERVAL, DEFAULT_MAX_SOURCES, BadInputLog
from hqnlsd.logging.denials import DEFAULT_BURST, Clock, DenialLog
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.permits.discovery import Discovery, discover
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.reader import Catalogue, Offer, read_catalogue
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.permits.servercert import ServerKeys
from hqnlsd.persistence.store import Journal
from hqnlsd.protocols import grammar
from hqnlsd.protocols.replies import Err, Listing, Ok, Reply
from hqnlsd.protocols.signing import sign_reply
from hqnlsd.status import Status

if TYPE_CHECKING:
    from hqnlsd.domain.runtime import DomainRoute, DomainRuntime

#: Dates on the wire, as in permit files.
DATE_FORMAT = "%d/%m/%Y"
#: MESSAGE texts logged whole per client address per minute; the rest are counted.
MESSAGE_BURST = 10


@functools.lru_cache(maxsize=256)
def _date(day: datetime.date) -> str:
    # A grant's start and expiry dates are those of its permit: a handful in all.
    return day.strftime(DATE_FORMAT)


def _denied(denied: Denied, **fields: Any) -> Err:
    return Err.of(denied.status, denied.message, **fields)


def _serve(route: DomainRoute) -> Err | None:
    """Ready the domain of ``route`` to decide here (`DomainRoute.serve`: a member
    that has just become primary takes over first); the reply if it may not, or None."""
    refusal = route.serve()
    return None if refusal is None else refusal_reply(refusal)


def _domain_words(offer: Offer) -> str:
    return " ".join(str(server.address) for server in offer.domain)


class PermitSource:
    """Where permits come from: the search path, trusted keys, hosts file, this host."""

    def __init__(
        self,
        *,
        permit_dirs: Sequence[Path] | None,
        environ: dict[str, str],
        publisher_keys: Path,
        hosts_file: Path,
        me: HostId,
        server_keys: Path | None = None,
        cwd: Callable[[], Path] = lambda: Path(os.getcwd()),
    ) -> None:
        self.permit_dirs = permit_dirs
        self.environ = environ
        self.publisher_keys = publisher_keys
        self.hosts_file = hosts_file
        self.me = me
        self.server_keys = server_keys
        self._cwd = cwd

    def read(self) -> tuple[Discovery, TrustedKeys, Catalogue]:
        """Search for permits and read them against the trusted keys (blocking I/O)."""
        found = discover(self.permit_dirs, environ=self.environ, cwd=self._cwd())
        trusted = TrustedKeys.load(self.publisher_keys)
        hosts = HostsTable.load(self.hosts_file)
        return found, trusted, read_catalogue(found.files, trusted, self.me, hosts)


class LicenceServer:
    """Answers client commands from the catalogue, the engine and the journal."""

    log = Logger()

    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        source: PermitSource,
        feed: LicenceFeed | None = None,
        server_keys: ServerKeys | None = None,
        domains: DomainRuntime | None = None,
        *,
        clock: Clock,
        log_interval: float = DEFAULT_INTERVAL,
        log_sources: int = DEFAULT_MAX_SOURCES,
        denial_burst: int = DEFAULT_BURST,
    ) -> None:
        self.engine = engine
        #: Multi-host server domains (``--domain-ca``): their products are decided by
        #: each domain's own engine and replicated to its members, never journalled
        #: here. None: they are all answered NOTVERIFIED.
        self.domains = domains
        self.journal = journal
        self.source = source
        #: Licence lines (switch-tagged) and usage records for every transaction.
        self.feed = feed if feed is not None else LicenceFeed(usage=None)
        #: Server keys by permit number, for challenge/response (`--server-keys`).
        self.server_keys = server_keys if server_keys is not None else ServerKeys({})
        self.catalogue = Catalogue((), {}, {}, ())
        self.discovery: Discovery | None = None
        self.trusted: TrustedKeys | None = None
        #: Products the last `load_permits` read but does not serve (each logged why).
        self.read_not_served = 0
        #: Products the last `load_permits` serves (in their dates; a multi-host
        #: domain's once that domain verifies this server).
        self.serving_now = 0
        #: MESSAGE texts, logged whole up to 10 a minute per client address and then
        #: counted (`BadInputLog`), so that MESSAGE cannot flood the log.
        self.messages = BadInputLog(
            self.log, clock, noun="message", level=LogLevel.info, burst=MESSAGE_BURST,
            line_format="client message from {source}: {detail}",
            max_detail=grammar.MAX_LINE_BYTES, interval=log_interval, max_sources=log_sources,
        )
        #: Denied REQUESTs: each logged and recorded up to ``denial_burst`` per
        #: client address per ``log_interval``, the rest counted and summarised
        #: (`DenialLog`).
        self.denials = DenialLog(
            self.feed, clock, burst=denial_burst, interval=log_interval,
            max_sources=log_sources,
        )

    # -- permits ----------------------------------------------------------------------

    def load_permits(self) -> Deferred[None]:
        """(Re)read the permits and serve their products; licences of unchanged ones stay.

        Products of a multi-host domain are read (sinfo shows them) but not handed
        to this engine. With server domains (`domains`) each such domain gets its
        own member, engine and storage (`DomainRuntime.configure`), and serves them
        once the domain has verified this host; without, they are answered
        NOTVERIFIED.
        """
        found, trusted, catalogue = self.source.read()
        self.discovery, self.trusted, self.catalogue = found, trusted, catalogue
        for problem in found.problems:
            self.log.warn("permit search: {problem}", problem=problem)
        for key_problem in trusted.problems:
            self.log.warn("publisher keys: {problem}", problem=key_problem)
        if self.source.server_keys is not None:
            self.server_keys = ServerKeys.load(self.source.server_keys, trusted)
            for key_problem in self.server_keys.problems:
                self.log.warn("server keys: {problem}", problem=key_problem)
        if not found.files:
            self.log.warn(
                "no permit files found (searched {dirs}); idle until reinit",
                dirs=", ".join(str(d) for d in found.searched),
            )
        for error in catalogue.errors:
            self.log.error(
                "permit error: {error}", error=str(error), condition=int(error.condition)
            )
        single = [offer.product for offer in catalogue.served.values() if len(offer.domain) == 1]
        out_of_date = self._out_of_date(catalogue)
        if self.domains is not None:
            from hqnlsd.domain.runtime import domains_from_catalogue

            self.domains.configure(domains_from_catalogue(catalogue))
        serving = unverified = 0
        for key, offer in catalogue.served.items():
            if key in out_of_date:
                continue  # logged as not served, with its dates
            if len(offer.domain) > 1 and self.domains is not None:
                serving += 1
                self.log.info(
                    "serving {publisher} {product} {version} from {path} in the multi-host "
                    "domain {domain}, once that domain has verified this server",
                    publisher=offer.product.publisher,
                    product=offer.product.product,
                    version=offer.product.version,
                    path=offer.path,
                    domain=_domain_words(offer),
                )
                continue
            if len(offer.domain) > 1:
                unverified += 1
                self.log.info(
                    "not yet serving {publisher} {product} {version} from {path}: its "
                    "multi-host domain ({domain}) has not verified this server",
                    publisher=offer.product.publisher,
                    product=offer.product.product,
                    version=offer.product.version,
                    path=offer.path,
                    domain=_domain_words(offer),
                )
                continue
            self.log.info(
                "serving {publisher} {product} {version} from {path}",
                publisher=offer.product.publisher,
                product=offer.product.product,
                version=offer.product.version,
                path=offer.path,
            )
            serving += 1
        self.serving_now = serving
        self.read_not_served = unverified + self._log_not_served(catalogue)
        outcome = self.engine.load_products(single)
        return self.journal.commit(outcome.events)

    def _out_of_date(self, catalogue: Catalogue) -> dict[tuple[str, str], str]:
        """Products of this domain outside their dates today, and why (the engine
        has them, and answers PERMITEXPIRED or PERMITOUTOFDATE)."""
        # The engine's own clock: the date it decides requests by.
        today = self.engine._today(self.engine._clock.seconds())
        found: dict[tuple[str, str], str] = {}
        for key, offer in catalogue.served.items():
            product = offer.product
            if today > product.expiry:
                found[key] = f"expired on {product.expiry} (requests get PERMITEXPIRED)"
            elif today < product.start:
                found[key] = (
                    f"not yet started: valid from {product.start} (until then PERMITOUTOFDATE)"
                )
        return found

    def _log_not_served(self, catalogue: Catalogue) -> int:
        """One line per product read but not served, saying why; how many."""
        lines: list[tuple[ProductPermit, str, str]] = []
        me = self.source.me.address
        for offer in catalogue.elsewhere.values():
            lines.append(
                (
                    offer.product,
                    offer.path,
                    f"this daemon's address {me} is not in its permit's server domain "
                    f"({_domain_words(offer)}); clients are sent there (TRY_DOMAIN)",
                )
            )
        for unserved in catalogue.not_served:
            lines.append((unserved.product, unserved.path, unserved.reason))
        for key, why in self._out_of_date(catalogue).items():
            offer = catalogue.served[key]
            lines.append((offer.product, offer.path, why))
        for product, path, why in lines:
            self.log.warn(
                "not serving {publisher} {product} {version} from {path}: {why}",
                publisher=product.publisher,
                product=product.product,
                version=product.version,
                path=path,
                why=why,
            )
        return len(lines)

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self, command: grammar.DispatchedCommand, peer: Any) -> Reply | Deferred[Reply]:
        """Answer one client command (the protocol's `Dispatcher` interface)."""
        waiting = self._held(command, peer)
        if waiting is not None:
            return waiting
        if isinstance(command, grammar.Request):
            names = (command.publisher, command.product, command.version)
            return self._signed(command, names, self._request(command, peer))
        if isinstance(command, grammar.Update):
            route = self._route_for_handle(command.handle)
            engine = route.engine if route is not None else self.engine
            # Before the UPDATE: a licence it finds lost has no product afterwards.
            held = engine.product_of(command.handle)
            return self._signed(command, held, self._update(command, route))
        if isinstance(command, grammar.Release):
            return self._release(command, self._route_for_handle(command.handle))
        if isinstance(command, grammar.Query):
            return self._query(command, self._route_for_handle(command.handle))
        if isinstance(command, grammar.Users):
            return self._users(command)
        if isinstance(command, grammar.Message):
            source = str(getattr(peer, "host", peer))
            self.messages.note(source, command.text)
            return Ok.of()
        return Err.of(Status.UNKNOWN_COMMAND, f"{type(command).__name__} is not served here")

    def _held(self, command: grammar.DispatchedCommand, peer: Any) -> Deferred[Reply] | None:
        """Hold a command for a domain whose primary (this member) hands over to itself.

        A log compaction, or admitting or dropping a higher-ranked member, keeps
        this member primary but stops it deciding for a few round trips: the
        command waits (`DomainRoute.held`, bounded in number and time) and is
        dispatched again, in arrival order, the moment it serves again, instead
        of being refused with NEW_MASTER. None: dispatch it now.
        """
        if self.domains is None:
            return None
        route: DomainRoute | None = None
        if isinstance(command, grammar.Request | grammar.Users):
            route = self.domains.route(command.publisher, command.product)
        elif isinstance(command, grammar.Update | grammar.Release | grammar.Query):
            route = self.domains.route_for_handle(command.handle)
        if route is None or route.refusal() is None:
            return None
        waiting = route.held()
        if waiting is None:
            return None

        def again(_: bool) -> Reply | Deferred[Reply]:
            return self.dispatch(command, peer)

        return waiting.addCallback(again)

    def _signed(
        self,
        command: grammar.Request | grammar.Update,
        names: tuple[str, str, str] | None,
        answer: Reply | Deferred[Reply],
    ) -> Reply | Deferred[Reply]:
        """Challenge/response: sign the reply with the server key of the product's permit.

        Without a challenge, or without a key for that permit (`--server-keys`),
        the reply goes unsigned, and a client that asked for a signature knows.
        """
        if command.challenge is None or names is None:
            return answer
        offer = self.catalogue.find(names[0], names[1])
        key = self.server_keys.get(offer.permit.number) if offer is not None else None
        challenge = command.challenge

        def sign(reply: Reply) -> Reply:
            if isinstance(reply, Listing):
                return reply
            handle = (
                command.handle if isinstance(command, grammar.Update) else reply.get("handle") or ""
            )
            return sign_reply(
                key,
                challenge=challenge,
                verb=command.verb,
                handle=handle,
                publisher=names[0],
                product=names[1],
                version=names[2],
                reply=reply,
            )

        if isinstance(answer, Deferred):
            return answer.addCallback(sign)
        return sign(answer)

    def _route_for_handle(self, handle: str) -> DomainRoute | None:
        """The domain whose engine knows ``handle``, or None for this daemon's own."""
        if self.domains is None:
            return None
        return self.domains.route_for_handle(handle)

    def _product_offer(self, publisher: str, product: str) -> Offer | DomainRoute | Err:
        """Where a product is served here: this engine (its offer), a domain that may
        grant now (its route), or the error to answer."""
        offer = self.catalogue.find(publisher, product)
        if offer is None:
            return Err.of(
                Status.BADPRODUCT,
                f"no permit for {publisher} {product} has been read by this server",
            )
        if not offer.here:
            domain = _domain_words(offer)
            return Err.of(
                Status.TRY_DOMAIN,
                f"{publisher} {product} is served by another server domain: ask {domain}",
                domain=domain,
            )
        if len(offer.domain) > 1:
            route = self.domains.route(publisher, product) if self.domains is not None else None
            if route is not None:
                refusal = _serve(route)
                return refusal if refusal is not None else route
            return Err.of(
                Status.NOTVERIFIED,
                f"{publisher} {product} belongs to the multi-host domain "
                f"{_domain_words(offer)}; this server has not been verified by that domain",
                domain=_domain_words(offer),
            )
        return offer

    def _request(self, command: grammar.Request, peer: Any) -> Reply | Deferred[Reply]:
        offer = self._product_offer(command.publisher, command.product)
        if isinstance(offer, Err):
            self._log_denial(command, peer, offer.status, offer.msg)
            return offer
        engine = offer.engine if not isinstance(offer, Offer) else self.engine
        outcome = engine.request(
            LicenceRequest(
                publisher=command.publisher,
                product=command.product,
                version=command.version,
                user=command.user,
                host=command.host,
                pid=command.pid,
                address=peer.host,  # the engine validates and normalises it
                uid=command.uid,
                group=command.group,
                units=command.units,
                client=command.client,
                hostid=command.hostid,
            )
        )
        result = outcome.result
        if isinstance(result, Denied):
            self._log_denial(command, peer, result.status, result.message)
            return self._settled(offer, outcome.events, _denied(result))
        # The grant's log line and usage record come from its Granted event, which
        # the feed sees as the journal takes it (Journal.listeners), or as the
        # domain confirms it (DomainRuntime.event_listeners).
        return self._settled(offer, outcome.events, self._granted(result))

    def _log_denial(self, command: grammar.Request, peer: Any, status: Status, reason: str) -> None:
        who = Requester(
            user=command.user,
            host=command.host,
            address=str(getattr(peer, "host", peer)),
            pid=command.pid,
            uid=command.uid,
            group=command.group,
            hostid=command.hostid,
            client=command.client,
        )
        self.denials.note(
            publisher=command.publisher,
            product=command.product,
            version=command.version,
            status=status.name,
            code=status.code,
            reason=reason,
            who=who,
        )

    @staticmethod
    def _granted(grant: Grant) -> Ok:
        fields: dict[str, Any] = {
            "handle": grant.handle,
            "period": grant.period,
            "type": grant.type,
            "access": grant.access,
            "data": " ".join(map(str, grant.data)),
            "start": _date(grant.start),
            "expiry": _date(grant.expiry),
            "index": ",".join(map(str, grant.indices)),
        }
        if grant.duplicate:
            fields["duplicate"] = 1
        return Ok.of(**fields)

    def _update(
        self, command: grammar.Update, route: DomainRoute | None
    ) -> Reply | Deferred[Reply]:
        """UPDATE: answered OK at once (``wait=False``); a denial waits like any answer.

        Safe to answer before the commit, unlike RELEASE: an OK to UPDATE promises
        nothing that a lost ``Updated`` event could take back. The event only moves
        the holder's last-update time; after a crash every holder is counted as
        updated at restart (`Engine.resume`), and after a failover at the take-over
        (`EngineMachine.take_over_events`), both later than any UPDATE answered
        before them. The handle itself was granted only once durable (a grant
        always waits), so the holder an UPDATE confirms survives too. A denial
        (BADHANDLE, LOSTLICENCE) waits for the state it was decided on.
        """
        if route is not None and (refusal := _serve(route)) is not None:
            return refusal
        where: Offer | DomainRoute | None = route
        outcome = (route.engine if route is not None else self.engine).update(command.handle)
        result = outcome.result
        if isinstance(result, Denied):
            return self._settled(where, outcome.events, _denied(result, handle=command.handle))
        return self._settled(
            where, outcome.events, Ok.of(handle=result.handle, period=result.period), wait=False
        )

    def _release(
        self, command: grammar.Release, route: DomainRoute | None
    ) -> Reply | Deferred[Reply]:
        """RELEASE: answered OK only once the release is durable (single host) or held
        by a quorum of the domain, so an OK is never undone by a crash or failover.

        If the domain refuses at once (`Refused`) nothing happened: the refusal
        is the answer. If the outcome is unknown (the primary lost its authority or
        quorum first) the answer is NEW_MASTER "send it again": a RELEASE sent again
        of a licence that was in fact released answers BADHANDLE, and that answer
        too waits until the state it was read from is durable (`_settled` without
        events), so a client may take it as "released".
        """
        if route is not None and (refusal := _serve(route)) is not None:
            return refusal
        where: Offer | DomainRoute | None = route
        outcome = (route.engine if route is not None else self.engine).release(command.handle)
        result = outcome.result
        if isinstance(result, Denied):
            return self._settled(where, outcome.events, _denied(result, handle=command.handle))
        return self._settled(where, outcome.events, Ok.of(handle=result.handle))

    def _query(self, command: grammar.Query, route: DomainRoute | None) -> Reply:
        if route is not None and (refusal := _serve(route)) is not None:
            return refusal
        engine = route.engine if route is not None else self.engine
        answer = engine.query(command.handle, command.what.value)
        if isinstance(answer, Denied):
            return _denied(answer, handle=command.handle)
        fields: dict[str, Any] = {"handle": command.handle, "what": answer.what}
        for key, value in answer.values.items():
            fields[key] = _field_value(value)
        return Ok.of(**fields)

    def _users(self, command: grammar.Users) -> Reply:
        offer = self._product_offer(command.publisher, command.product)
        if isinstance(offer, Err):
            return offer
        engine = offer.engine if not isinstance(offer, Offer) else self.engine
        holders = engine.users(command.publisher, command.product, command.version)
        if isinstance(holders, Denied):
            return _denied(holders)
        return Listing.of_records([_user_record(holder) for holder in holders])

    # -- durability -------------------------------------------------------------------

    def _settled(
        self,
        where: Offer | DomainRoute | None,
        events: Sequence[Event],
        reply: Reply,
        *,
        wait: bool = True,
    ) -> Reply | Deferred[Reply]:
        """Answer ``reply`` once ``events`` (and everything before them) are durable.

        They are committed (`hqnlsd.commit.EventSink`) to this daemon's journal
        for its own products (``where`` None or an `Offer`), or for a domain's
        (``where`` its route) to this member, which answers once a quorum of the
        domain holds them. Call in the same reactor turn as the engine command.
        A failed commit is answered from `hqnlsd.answers.client_reply`: a
        domain's refusal (nothing happened), NEW_MASTER "send it again" (the
        outcome is unknown), or INTERNAL (not recorded).

        Without events the answer still waits until everything applied before
        is durable (a commit of nothing is a barrier), as it was read from that
        state. ``wait=False`` (UPDATE only: see `_update`) answers at once,
        unless the commit has already failed (a domain that refused at once:
        nothing happened, the refusal is the answer); a later failure is only
        logged. Its loss in a crash takes back nothing its OK promised. A grant
        and a RELEASE always wait: a grant a crash could forget is how a permit
        gets served twice, and a RELEASE a crash could forget brings back a
        licence its client was told it gave up (held again for ever under a
        policy without GRAB).
        """
        sink: EventSink = self.journal if where is None or isinstance(where, Offer) else where.sink
        done: Deferred[Any] = sink.commit(events)
        if not wait and not done.called:
            done.addErrback(self._failed_after_answer)
            return reply
        done.addCallbacks(lambda _: reply, self._failed_reply)
        return _now_or_later(done)

    def _failed_reply(self, failure: Failure) -> Reply:
        """The client's reply to a failed commit (`hqnlsd.answers`); INTERNAL is logged."""
        if not failure.check(Refused, OutcomeUnknown):
            self.log.failure("{what}; answering INTERNAL", failure, what=_what_failed(failure))
        return client_reply(failure.value)

    def _failed_after_answer(self, failure: Failure) -> None:
        """A commit that failed after its (``wait=False``) answer: logged unless refused
        or unknown (an UPDATE so lost takes back nothing its OK promised)."""
        if not failure.check(Refused, OutcomeUnknown):
            self.log.failure("{what} (already answered)", failure, what=_what_failed(failure))


def _what_failed(failure: Failure) -> str:
    """What a commit that was not recorded failed at, in the words of the log."""
    error = failure.value
    return error.what if isinstance(error, NotRecorded) else "commit failed"


def _now_or_later(done: Deferred[Reply]) -> Reply | Deferred[Reply]:
    """The reply itself if ``done`` has already fired (with a reply), else ``done``."""
    if not done.called:
        return done
    fired: list[Reply | Failure] = []
    done.addBoth(fired.append)
    (result,) = fired
    if isinstance(result, Failure):
        result.raiseException()
    assert not isinstance(result, Failure)
    return result


def _field_value(value: object) -> Any:
    if isinstance(value, datetime.date):
        return _date(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, tuple | list):
        return " ".join(map(str, value))
    return value


def _user_record(holder: HolderInfo) -> dict[str, Any]:
    return {
        "index": ",".join(map(str, holder.indices)),
        "type": holder.type,
        "user": holder.who.user,
        "host": holder.who.host,
        "address": holder.who.address,
        "pid": holder.who.pid,
        "since": datetime.datetime.fromtimestamp(holder.granted).strftime("%d/%m/%Y %H:%M:%S"),
    }
