"""Every ``hqn_lsa`` command, on the live daemon: listings, changes, reinit.

`AdminHandler.handle` takes a command name, its arguments (decoded JSON) and
who asked, and returns the result (JSON-safe values) or a Deferred of it. A
refusal raises `AdminError` with an error name (a licence status name such as
BADPRODUCT or ILLEGAL, or one of `hqnlsd.admin.wire`'s) and a clear message.

Changes go through the licensing engine, which expresses each as events; the
events are committed to the journal and the answer waits for their commit, as
a REQUEST's does, so an admin never hears "done" of a change a crash could
forget. A failed commit is answered from `hqnlsd.answers.admin_answer`, the
table the client dispatcher's answers come from too. Every change is logged
under the ADMIN log switch with who made it.

A product is named by its number in ``listp`` (``{"index": 1}``) or by
``{"publisher": ..., "product": ...}``. Listings show this daemon's own products
first, then the products of each multi-host domain it is a member of, as this
member's copy of the domain state has them (a backup's copy lags its primary by
at most the changes in flight).

Products of a multi-host domain are changed on the domain's acting primary:
there the change goes to the domain's engine and is answered once a quorum of
the domain holds it (`DomainMember.commit`), like a REQUEST. A member that is not
the primary forwards the command over the authenticated peer link
(`DomainRuntime.forward`) and relays the primary's answer; the primary checks
that the product (or handle) belongs to the domain the call came for, logs the
change as ``WHO via ADDRESS`` and never forwards again. ``reinit`` revokes this
daemon's own licences and those of every domain it is a member of (each on its
primary).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

import hqnlsd
from hqnlsd.admin import wire
from hqnlsd.answers import admin_answer
from hqnlsd.commit import CommitFailed, EventSink, NotRecorded
from hqnlsd.identity import HostsTable, format_unique_id
from hqnlsd.licensing.events import Event
from hqnlsd.licensing.results import AdminDone, Denied, Outcome, ProductStatus
from hqnlsd.licensing.settings import FULL_ACCESS
from hqnlsd.logging.switches import PRESETS, LogLevelError, Switch, preset_name
from hqnlsd.logging.switches import describe as describe_switches
from hqnlsd.permits.policy import KNOWN_FLAGS, Policy, describe
from hqnlsd.tls import PeerIdentity, Role

if TYPE_CHECKING:
    from ipaddress import IPv4Address

    from hqnlsd.admin.daemon import AdministeredDaemon
    from hqnlsd.domain.runtime import DomainRoute
    from hqnlsd.licensing.engine import Engine

#: How long a member waits for the acting primary to answer a forwarded change.
FORWARD_TIMEOUT = 8.0

#: Commands that change state (logged under ADMIN, answered after the commit).
CHANGES = frozenset(
    {
        "policy",
        "crashout",
        "timeout",
        "kill",
        "addnode",
        "rmnode",
        "ftol",
        "ltof",
        "exhost",
        "unexhost",
        "adduser",
        "remuser",
        "adduacc",
        "remuacc",
        "addgacc",
        "remgacc",
        "reinit",
        "loglevel",
        "recover",
    }
)

#: Changes a member forwards to the acting primary of a domain product's domain.
FORWARDED = CHANGES - {"loglevel", "recover"}

_POLICY_WORD = re.compile(r"^([A-Za-z]+)([+!-]?)$")
_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")


class AdminError(Exception):
    """A refused admin command: an error name and a message for the admin."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class _Target:
    """Where a command acts: a product (or handle) and the engine that holds it.

    ``route`` is None for this daemon's own products (journal), else the
    route of the multi-host domain that serves it.
    """

    engine: Engine
    route: DomainRoute | None
    publisher: str = ""
    product: str = ""

    @property
    def label(self) -> str:
        """``PUBLISHER PRODUCT`` for logs and answers."""
        return f"{self.publisher} {self.product}"


class _Forward(Exception):
    """Raised before any change: this member is not the primary of the target's domain."""

    def __init__(self, target: _Target) -> None:
        super().__init__(target.label)
        self.target = target


@dataclass(frozen=True)
class PolicyPlan:
    """What ``policy`` words do: the flags after them, the flags they lock
    (``MNEM!``), and the flags whose change was ignored because they are locked."""

    flags: int
    lock: int
    ignored: list[str]


def plan_policy(text: str, current: int, locks: int, admin_locks: int = 0) -> PolicyPlan:
    """The manual's ``policy p [val | mnemonic[-|!] ...]``, relative to ``current`` flags.

    A number (``0x41``, ``65``) replaces the whole word except the locked flags; its
    high 16 bits, if any, must be the publisher's locks as they are. ``MNEM`` turns a
    flag on (``MNEM+`` too), ``MNEM-`` off, ``MNEM!`` locks it as it is until the
    permit is re-read. Changes to a flag locked by the publisher (``locks``) or the
    administrator (``admin_locks``, or an earlier ``!`` in the same words) are
    ignored and named in ``ignored``. Raises AdminError for a bad word.
    """
    words = text.replace(",", " ").split()
    if not words:
        raise AdminError("ILLEGAL", "policy: give a number or flag names")
    frozen = locks | admin_locks
    ignored: list[str] = []

    def note(bits: int) -> None:
        for flag in Policy:
            if bits & int(flag) and flag.name and flag.name not in ignored:
                ignored.append(flag.name)

    if len(words) == 1 and _NUMBER.match(words[0]):
        number = int(words[0], 0)
        if number >> 32:
            raise AdminError("ILLEGAL", f"policy {words[0]} is more than 32 bits")
        high = number >> 16
        if high and high != locks:
            raise AdminError(
                "ILLEGAL",
                f"policy {words[0]}: the high 16 bits are the publisher's locks "
                f"(0x{locks:04x} for this product) and cannot be changed",
            )
        wanted = number & 0xFFFF & KNOWN_FLAGS
        note((wanted ^ current) & frozen)
        return PolicyPlan((wanted & ~frozen) | (current & frozen), 0, ignored)
    flags, lock = current, 0
    known = {flag.name: int(flag) for flag in Policy if flag.name}
    for word in words:
        match = _POLICY_WORD.match(word)
        name = match.group(1).upper() if match else ""
        if match is None or name not in known:
            raise AdminError(
                "ILLEGAL",
                f"policy: {word!r} is not a policy word; flags: {' '.join(known)} "
                "(NAME turns one on, NAME- off, NAME! locks it until the permit is re-read)",
            )
        bit, sign = known[name], match.group(2)
        if sign == "!":
            lock |= bit & ~locks
            continue
        wanted = flags & ~bit if sign == "-" else flags | bit
        if (wanted ^ flags) & (frozen | lock):
            note(bit)
            continue
        flags = wanted
    return PolicyPlan(flags & KNOWN_FLAGS, lock & ~admin_locks, ignored)


def parse_policy(text: str, current: int, locks: int) -> int:
    """The policy flags after ``policy`` text (see `plan_policy`), relative to ``current``."""
    return plan_policy(text, current, locks).flags


def _access_level(status: ProductStatus, user: str, group: str | None) -> int:
    """A holder's access level now: the user's entry, else the group's, else full (8)."""
    users, groups = dict(status.user_access), dict(status.group_access)
    level = users.get(user)
    if level is None and group is not None:
        level = groups.get(group)
    return FULL_ACCESS if level is None else level


def _names(flags: int) -> list[str]:
    """The names of the policy flags set in ``flags``."""
    return [flag.name for flag in Policy if flags & int(flag) and flag.name]


def _status_dict(index: int, status: ProductStatus) -> dict[str, Any]:
    return {
        "index": index,
        "publisher": status.publisher,
        "product": status.product,
        "version": status.version,
        "policy": status.policy,
        "policy_text": describe(status.policy),
        "admin_locked": _names(status.admin_locks),
        "node_count": status.node_count,
        "floating_count": status.floating_count,
        "locked_used": status.locked_used,
        "floating_used": status.floating_used,
        "start": status.start.isoformat(),
        "expiry": status.expiry.isoformat(),
        "period": status.period,
        "crashout": status.crashout,
        "timeout": status.timeout,
        "locked_nodes": [[address, unique_id] for address, unique_id in status.locked_nodes],
        "excluded": list(status.excluded),
        "named_users": list(status.named_users),
        "user_access": dict(status.user_access),
        "group_access": dict(status.group_access),
    }


def _text(args: Mapping[str, Any], key: str, what: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise AdminError(wire.BAD_REQUEST, f"give the {what}")
    return value.strip()


def _integer(args: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(wire.BAD_REQUEST, f"the {what} must be a whole number")
    return value


class AdminHandler:
    """The admin commands of one daemon (see the module docstring)."""

    log = Logger()

    def __init__(self, root: AdministeredDaemon) -> None:
        #: The daemon administered: only what `AdministeredDaemon` offers is used.
        self.root = root
        #: the domain a forwarded command came for, while it runs (see handle_forwarded)
        self._forwarded_domain: str | None = None
        #: Product numbers (listp), kept while the daemon runs: a product keeps its
        #: number across re-reads, and a number is never given to another product.
        self._numbers: dict[tuple[str, str, str], int] = {}
        self.started = root.reactor.seconds()
        self._commands: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
            "id": self._id,
            "sinfo": self._sinfo,
            "listhqn": self._listhqn,
            "listp": self._listp,
            "listu": self._listu,
            "policy": self._policy,
            "loglevel": self._loglevel,
            "crashout": self._crashout,
            "timeout": self._timeout,
            "kill": self._kill,
            "addnode": self._addnode,
            "rmnode": self._rmnode,
            "ftol": self._ftol,
            "ltof": self._ltof,
            "exhost": self._exhost,
            "unexhost": self._unexhost,
            "adduser": self._adduser,
            "remuser": self._remuser,
            "adduacc": self._adduacc,
            "remuacc": self._remuacc,
            "addgacc": self._addgacc,
            "remgacc": self._remgacc,
            "reinit": self._reinit,
            "recover": self._recover,
            "reread": self._reread,
            "down": self._down,
        }
        #: Whether the command running now came through the local admin socket.
        self._local = True
        #: Who asked it over TLS (None through the local socket): what its certificate allows.
        self._peer: PeerIdentity | None = None

    @property
    def commands(self) -> tuple[str, ...]:
        """The command names this handler answers."""
        return tuple(self._commands)

    def handle(
        self,
        command: str,
        args: Mapping[str, Any],
        who: str,
        *,
        local: bool = True,
        peer: PeerIdentity | None = None,
    ) -> Any:
        """Run one command; its result, or a Deferred of it; AdminError if refused.

        ``local``: asked through the local admin socket (False: remote, over TLS);
        ``peer``: the remote admin's verified identity (`hqnlsd.tls.classify_certificate`).
        """
        self._local = local
        self._peer = peer
        method = self._commands.get(command)
        if method is None:
            raise AdminError(
                wire.UNKNOWN_COMMAND,
                f"no admin command {command!r}; commands: {', '.join(self._commands)}",
            )
        if self.root.server is None or self.root.journal is None:
            raise AdminError(wire.STARTING, "the server is starting up; try again shortly")
        try:
            return method(args, who)
        except _Forward as forward:
            held = self._held(command, args, who, forward.target)
            if held is not None:
                return held
            if self._forwarded_domain is not None:
                raise self._not_primary(forward.target) from None
            return self._forward(command, args, who, forward.target)

    def handle_forwarded(
        self, domain_key: str, address: IPv4Address, body: Mapping[str, Any]
    ) -> Deferred[dict[str, Any]]:
        """Run a change another member of ``domain_key`` forwarded (this is its primary).

        The change must be on a product (or handle) of that domain; the answer or
        refusal goes back to the member as a `PeerCallError`.
        """
        from hqnlsd.domain.peers import PeerCallError
        from hqnlsd.domain.view import brief

        command, args, who = body.get("command"), body.get("args"), body.get("who")
        if not isinstance(command, str) or command not in FORWARDED:
            return fail(PeerCallError(wire.BAD_REQUEST, f"{brief(command)} cannot be forwarded"))
        if not isinstance(args, Mapping) or not isinstance(who, str):
            return fail(
                PeerCallError(
                    wire.BAD_REQUEST,
                    f"a forwarded {command} needs 'args' (an object) and 'who' (text), "
                    f"not {brief(args)} and {brief(who)}",
                )
            )
        self._forwarded_domain = domain_key
        try:
            result = self.handle(command, args, f"{who} via {address}")
        except AdminError as error:
            return fail(PeerCallError(error.name, error.message))
        finally:
            self._forwarded_domain = None
        done: Deferred[dict[str, Any]] = result if isinstance(result, Deferred) else succeed(result)

        def refused(failure: Failure) -> Failure:
            if isinstance(failure.value, AdminError):
                return Failure(PeerCallError(failure.value.name, failure.value.message))
            return failure

        return done.addErrback(refused)

    def _forward(
        self, command: str, args: Mapping[str, Any], who: str, target: _Target
    ) -> Deferred[dict[str, Any]]:
        """Send a change to the acting primary of the target's domain; relay its answer."""
        from hqnlsd.domain.peers import PeerCallError

        domains = self.root.domains
        assert domains is not None and target.route is not None
        key = target.route.domain_id
        sent = dict(args)
        if target.publisher:
            sent["product"] = {"publisher": target.publisher, "product": target.product}
        primary = domains.primary_address(key)
        done = domains.forward(key, {"command": command, "args": sent, "who": who}, FORWARD_TIMEOUT)

        def answered(answer: dict[str, Any]) -> dict[str, Any]:
            answer["forwarded_to"] = str(primary)
            return answer

        def refused(failure: Failure) -> Failure:
            if isinstance(failure.value, PeerCallError):
                where = f"the acting primary {primary}" if primary else "the domain"
                return Failure(AdminError(failure.value.name, f"{where}: {failure.value.message}"))
            return failure

        return done.addCallbacks(answered, refused)

    def _held(
        self, command: str, args: Mapping[str, Any], who: str, target: _Target
    ) -> Deferred[Any] | None:
        """Run a change again once this member serves again, if it only hands over to
        itself (a log compaction, an admission: `DomainRoute.held`); None if not."""
        waiting = target.route.held() if target.route is not None else None
        if waiting is None:
            return None
        forwarded, local, peer = self._forwarded_domain, self._local, self._peer

        def again(_: bool) -> Any:
            self._forwarded_domain = forwarded
            try:
                return self.handle(command, args, who, local=local, peer=peer)
            finally:
                self._forwarded_domain = None

        return waiting.addCallback(again)

    def _not_primary(self, target: _Target) -> AdminError:
        refusal = target.route.refusal() if target.route is not None else None
        if refusal is None:
            return AdminError("NEW_MASTER", "this member just lost the primary role; try again")
        return AdminError(
            refusal.status.name, f"this member is no longer the primary: {refusal.msg}"
        )

    # -- helpers ------------------------------------------------------------------------

    @property
    def _engine(self) -> Any:
        return self.root.engine

    def _statuses(self) -> list[tuple[int, ProductStatus, DomainRoute | None]]:
        """Every product listed here with its number, in number order.

        Numbers are given from 1 in the order first seen (this daemon's own products,
        then each domain's by domain id) and kept while the daemon runs, so ``p 1``
        names the same product after a re-read; a product that is no longer served
        keeps its number for when it comes back, and no other product gets it.
        """
        listed: list[tuple[ProductStatus, DomainRoute | None]] = [
            (status, None) for status in self._engine.status()
        ]
        domains = self.root.domains
        if domains is not None:
            from hqnlsd.domain.runtime import DomainRoute

            for _key, member in sorted(domains.members.items()):
                route = DomainRoute(member)
                listed.extend((status, route) for status in member.engine.status())
        numbered: list[tuple[int, ProductStatus, DomainRoute | None]] = []
        for status, where in listed:
            key = (where.domain_id if where is not None else "", status.publisher, status.product)
            number = self._numbers.get(key)
            if number is None:
                number = self._numbers[key] = len(self._numbers) + 1
            numbered.append((number, status, where))
        return sorted(numbered, key=lambda entry: entry[0])

    def _domain_fields(self, route: DomainRoute | None) -> dict[str, Any]:
        """A listed product's domain, role here and primary (None: this daemon's own)."""
        if route is None:
            return {"domain": None, "role": None, "primary": None}
        info = route.role()
        primary = route.member.address_of.get(info.primary) if info.primary else None
        return {
            "domain": route.domain_words(),
            "role": info.role.value,
            "primary": str(primary) if primary is not None else None,
        }

    def _target(self, publisher: str, product: str, route: DomainRoute | None) -> _Target:
        engine = route.engine if route is not None else self._engine
        return _Target(engine, route, publisher, product)

    def _checked(self, target: _Target, change: bool) -> _Target:
        """``target``, once it may be acted on here; `_Forward` if its primary must act."""
        forwarded = self._forwarded_domain
        if forwarded is not None and (target.route is None or target.route.domain_id != forwarded):
            raise AdminError(
                "BADPRODUCT",
                f"{target.label or 'that licence'} is not served by the domain the change "
                "was forwarded for",
            )
        if change and target.route is not None and target.route.serve() is not None:
            raise _Forward(target)
        return target

    def _product(self, args: Mapping[str, Any], *, change: bool = True) -> _Target:
        """The product a command names and where it is held; AdminError if none.

        For a change (``change``) on a domain product when this member is not
        the domain's acting primary, raises `_Forward` (nothing has changed).
        """
        return self._checked(self._find_product(args), change)

    def _find_product(self, args: Mapping[str, Any]) -> _Target:
        ref = args.get("product")
        listed = self._statuses()
        if not isinstance(ref, Mapping):
            raise AdminError(
                wire.BAD_REQUEST,
                "name a product: its number in listp, or PUBLISHER PRODUCT",
            )
        if "index" in ref:
            index = ref["index"]
            if isinstance(index, bool) or not isinstance(index, int):
                raise AdminError(wire.BAD_REQUEST, "a product number must be a whole number")
            for number, chosen, where in listed:
                if number == index:
                    return self._target(chosen.publisher, chosen.product, where)
            raise AdminError(
                "BADPRODUCT",
                f"there is no product {index} here: this server serves {len(listed)} "
                "product(s); listp shows their numbers (they stay as they are when the "
                "permits are re-read)",
            )
        publisher, product = ref.get("publisher"), ref.get("product")
        if not isinstance(publisher, str) or not isinstance(product, str):
            raise AdminError(wire.BAD_REQUEST, "name a product: PUBLISHER PRODUCT")
        if self._engine.product(publisher, product) is not None:
            return self._target(publisher, product, None)
        for _number, status, where in listed:
            if where is not None and (status.publisher, status.product) == (publisher, product):
                return self._target(publisher, product, where)
        domains = self.root.domains
        route = domains.route(publisher, product) if domains is not None else None
        if route is not None:
            # Read here, not in this member's copy of the domain state yet.
            return self._target(publisher, product, route)
        server = self.root.server
        offer = server.catalogue.find(publisher, product) if server is not None else None
        if offer is not None:
            domain = " ".join(str(host.address) for host in offer.domain)
            if not offer.here:
                raise AdminError(
                    "TRY_DOMAIN",
                    f"{publisher} {product} is served by another server domain "
                    f"({domain}): administer it there",
                )
            if len(offer.domain) > 1:
                raise AdminError(
                    "NOTVERIFIED",
                    f"{publisher} {product} belongs to the multi-host domain {domain}, and "
                    "this daemon runs no server domains (start it with --domain-ca, "
                    "--domain-cert and --domain-key)",
                )
        raise AdminError(
            "BADPRODUCT",
            f"{publisher} {product} is not served here; listp shows what is",
        )

    def _commit(
        self,
        outcome: Outcome[AdminDone | Denied],
        command: str,
        target: str,
        who: str,
        route: DomainRoute | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Refuse a Denied; else answer once the change's events are durable, and log it."""
        result = outcome.result
        if isinstance(result, Denied):
            raise AdminError(result.status.name, result.message)
        answer = {"message": result.message, "revoked": result.revoked}
        return self._after(outcome.events, answer, command, target, who, route)

    def _durable(self, events: Sequence[Event], route: DomainRoute | None) -> Deferred[Any]:
        """Commit ``events`` to the journal, or for a domain to this member (its quorum).

        A refusal or an unknown outcome fails as its `AdminError`
        (`hqnlsd.answers.admin_answer`); a commit not recorded stays
        `NotRecorded`, for `_after` to log with the command (a reinit reports
        it per domain as it is).
        """
        sink: EventSink
        if route is None:
            assert self.root.journal is not None
            sink = self.root.journal
        else:
            sink = route.sink

        def failed(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, CommitFailed) and not isinstance(error, NotRecorded):
                return Failure(AdminError(*admin_answer(error)))
            return failure

        return sink.commit(events).addErrback(failed)

    def _after(
        self,
        events: Sequence[Event],
        answer: dict[str, Any],
        command: str,
        target: str,
        who: str,
        route: DomainRoute | None = None,
    ) -> Deferred[dict[str, Any]]:
        done: Deferred[Any] = self._durable(events, route)

        def committed(_: object) -> dict[str, Any]:
            self.log.info(
                "admin {who}: {command} {target}: {message}",
                log_switch="ADMIN",
                who=who,
                command=command,
                target=target,
                message=answer.get("message", ""),
            )
            return answer

        def failed(failure: Failure) -> dict[str, Any]:
            if failure.check(AdminError):
                failure.raiseException()
            self.log.failure("admin {command}: journal commit failed", failure, command=command)
            raise AdminError(*admin_answer(failure.value))

        done.addCallbacks(committed, failed)
        return done

    # -- listings -------------------------------------------------------------------------

    def _id(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        me = self.root.me
        return {
            "address": str(me.address),
            "unique_id": me.unique_id,
            "unique_id_hex": format_unique_id(me.unique_id),
        }

    def _sinfo(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        root = self.root
        server = root.server
        assert server is not None and root.journal is not None
        discovery = server.discovery
        files = []
        for report in server.catalogue.files:
            permit = report.file.permit
            error = report.file.error
            decision = report.decision
            condition = decision.condition if decision is not None else None
            files.append(
                {
                    "path": report.file.path,
                    "number": permit.number if permit is not None else None,
                    "servers": ([str(host.address) for host in permit.servers] if permit else []),
                    "products": [
                        f"{p.publisher} {p.product} {p.version}" for p in report.file.products
                    ],
                    "serving": decision.serving.value if decision is not None else None,
                    "error": str(error) if error is not None else None,
                    "condition": str(condition) if condition is not None else None,
                }
            )
        return {
            "version": hqnlsd.__version__,
            "address": str(root.me.address),
            "unique_id": root.me.unique_id,
            "unique_id_hex": format_unique_id(root.me.unique_id),
            "role": self._role_summary(),
            "domains": self._domain_list(),
            "peers": self._peer_list(),
            "started": self.started,
            "now": root.reactor.seconds(),
            "state_dir": str(root.config.state_dir),
            "journal_healthy": root.journal.healthy,
            "permit_source": discovery.source if discovery is not None else None,
            "searched": [str(path) for path in discovery.searched] if discovery else [],
            "search_problems": list(discovery.problems) if discovery else [],
            "files": files,
            "served": len(self._engine.served()),
            "held": self._engine.held_count(),
            "log_switches": str(root.switches),
        }

    def _role_summary(self) -> str:
        domains = self.root.domains
        if domains is None:
            return "single-host server (no server domains: no --domain-ca)"
        roles = [info.role.value for info in domains.roles().values()]
        if not roles:
            return "server domains on, but no permit names a multi-host domain with this host"
        return f"member of {len(roles)} server domain(s): {', '.join(roles)}"

    def _domain_list(self) -> list[dict[str, Any]]:
        """Each multi-host domain: this member's rank and role, the view, the primary,
        and the members it waits for (if it reaches no quorum of its view)."""
        domains = self.root.domains
        if domains is None:
            return []
        listed: list[dict[str, Any]] = []
        for _key, member in sorted(domains.members.items()):
            info = member.node.role()
            primary = member.address_of.get(info.primary) if info.primary else None
            amnesia = member.node.amnesia
            listed.append(
                {
                    "number": len(listed) + 1,
                    "domain": " ".join(str(a) for a in member.spec.addresses),
                    "rank": info.rank,
                    "role": "damaged" if member.damaged is not None else info.role.value,
                    "damaged": member.damaged,
                    "amnesiac": amnesia.epoch if amnesia is not None else None,
                    "epoch": info.epoch,
                    # A rank this host's hosts file does not know (only a bug could
                    # put one in a view: peer messages are validated) is shown, not fatal.
                    "view": [
                        str(member.address_of.get(r, f"unknown-rank-{r}"))
                        for r in sorted(info.members)
                    ],
                    "primary": str(primary) if primary is not None else None,
                    "primary_rank": info.primary,
                    # the members it waits for: no view change can complete without them
                    "waiting": [
                        {"rank": rank, "address": str(member.address_of[rank])}
                        for rank in sorted(info.waiting)
                    ],
                    "products": len(member.engine.served()),
                    "held": member.engine.held_count(),
                    "takeovers": member.takeovers,
                }
            )
        return listed

    def _recover(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Recover this member of a domain whose stored state is damaged (the domain's
        number in sinfo): see `DomainRuntime.recover` and docs/domains.md."""
        from hqnlsd.domain.runtime import RecoveryRefused

        domains = self.root.domains
        keys = sorted(domains.members) if domains is not None else []
        number = _integer(args, "domain", "domain number")
        if not 1 <= number <= len(keys) or domains is None:
            raise AdminError(
                wire.BAD_REQUEST,
                f"no server domain number {number} here (sinfo numbers them 1..{len(keys)})",
            )
        try:
            answer = domains.recover(keys[number - 1])
        except RecoveryRefused as error:
            raise AdminError(wire.NOT_AVAILABLE, str(error)) from None
        self.log.warn(
            "admin {who}: recover domain {domain}: amnesiac up to epoch {epoch}",
            who=who,
            domain=answer["domain"],
            epoch=answer["epoch_bound"],
        )
        return answer

    def _peer_list(self) -> list[dict[str, Any]]:
        """Each peer link: up (ours), inbound (theirs), seconds since heard, round trip,
        messages dropped as invalid and links closed for them."""
        domains = self.root.domains
        if domains is None:
            return []
        now = domains.clock.seconds()
        return [
            {
                "address": str(peer.address),
                "up": peer.up,
                "inbound": peer.inbound,
                "last_seen_ago": None if peer.last_seen is None else now - peer.last_seen,
                "rtt": peer.rtt,
                "connects": peer.connects,
                "invalid": peer.invalid,
                "invalid_closes": peer.invalid_closes,
            }
            for peer in domains.peers()
        ]

    def _listhqn(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        path = self.root.source.hosts_file
        try:
            table = HostsTable.load(path)
        except OSError as error:
            raise AdminError(wire.INTERNAL, f"cannot read the hosts file {path}: {error}") from None
        me = self.root.me.address
        servers = [
            {
                "rank": rank,
                "alias": f"hqnserver{rank}",
                "address": str(address),
                "this": address == me,
            }
            for rank, address in sorted(table.rank_addresses().items())
        ]
        return {"hosts_file": str(path), "servers": servers}

    def _listp(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Every product, or (``listp p``) the one named, with all its details."""
        statuses = self._statuses()
        if args.get("product") is not None:
            statuses = self._only(statuses, self._product(args, change=False))
        return {
            "products": [
                {**_status_dict(index, status), **self._domain_fields(route)}
                for index, status, route in statuses
            ]
        }

    @staticmethod
    def _only(
        statuses: list[tuple[int, ProductStatus, DomainRoute | None]], wanted: _Target
    ) -> list[tuple[int, ProductStatus, DomainRoute | None]]:
        return [
            (index, status, route)
            for index, status, route in statuses
            if (status.publisher, status.product) == (wanted.publisher, wanted.product)
            and (route is None) == (wanted.route is None)
        ]

    def _listu(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        statuses = self._statuses()
        if args.get("product") is not None:
            statuses = self._only(statuses, self._product(args, change=False))
        products = []
        for index, status, route in statuses:
            engine = route.engine if route is not None else self._engine
            found = engine.holders(status.publisher, status.product)
            holders = [] if isinstance(found, Denied) else found
            products.append(
                {
                    "index": index,
                    "publisher": status.publisher,
                    "product": status.product,
                    "version": status.version,
                    **self._domain_fields(route),
                    "holders": [
                        {
                            "handle": holder.handle,
                            "indices": list(holder.indices),
                            "type": holder.type,
                            "user": holder.who.user,
                            "host": holder.who.host,
                            "address": holder.who.address,
                            "pid": holder.who.pid,
                            "uid": holder.who.uid,
                            "group": holder.who.group,
                            "access": _access_level(status, holder.who.user, holder.who.group),
                            "granted": holder.granted,
                            "last_update": holder.last_update,
                        }
                        for holder in holders
                    ],
                }
            )
        return {"products": products}

    # -- changes ------------------------------------------------------------------------

    def _current(self, target: _Target) -> ProductStatus:
        for status in target.engine.status():
            if (status.publisher, status.product) == (target.publisher, target.product):
                found: ProductStatus = status
                return found
        if target.route is not None:
            raise AdminError(
                "NOTVERIFIED",
                f"{target.label} is not in this member's copy of its domain's state yet "
                "(the domain has not verified this member); try again shortly",
            )
        raise AdminError("BADPRODUCT", f"{target.label} is not served here")

    def _change(
        self,
        target: _Target,
        outcome: Outcome[AdminDone | Denied],
        command: str,
        who: str,
        label: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """`_commit` a change to ``target``: through its journal or its domain."""
        return self._commit(outcome, command, label or target.label, who, target.route)

    def _policy(self, args: Mapping[str, Any], who: str) -> Any:
        value = args.get("value")
        query = value is None or (isinstance(value, str) and not value.strip())
        target = self._product(args, change=not query)
        status = self._current(target)
        if query:
            return {
                "policy": status.policy,
                "policy_text": describe(status.policy),
                "admin_locked": _names(status.admin_locks),
            }
        if not isinstance(value, str):
            raise AdminError(wire.BAD_REQUEST, "the policy value must be text")
        plan = plan_policy(
            value, status.policy & 0xFFFF, status.policy >> 16, status.admin_locks
        )
        outcome = target.engine.set_policy(
            target.publisher, target.product, plan.flags, plan.lock
        )

        def add_word(answer: dict[str, Any]) -> dict[str, Any]:
            now = self._current(target)
            answer.update(
                policy=now.policy,
                policy_text=describe(now.policy),
                admin_locked=_names(now.admin_locks),
                locked=_names(plan.lock),
                ignored=plan.ignored,
            )
            return answer

        return self._change(target, outcome, "policy", who).addCallback(add_word)

    def _seconds_setting(self, args: Mapping[str, Any], who: str, what: str) -> Any:
        query = not args.get("default") and "seconds" not in args
        target = self._product(args, change=not query)
        status = self._current(target)
        if query:
            return {what: getattr(status, what)}
        if args.get("default"):
            seconds: float | None = None
        else:
            raw = args["seconds"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise AdminError(wire.BAD_REQUEST, f"the {what} must be a number of seconds")
            try:
                seconds = float(raw)
            except OverflowError:
                seconds = math.inf
            if not math.isfinite(seconds):
                raise AdminError(wire.BAD_REQUEST, f"the {what} must be a finite number of seconds")
        engine = target.engine
        setter = engine.set_crashout if what == "crashout" else engine.set_timeout
        outcome = setter(target.publisher, target.product, seconds)

        def add_value(answer: dict[str, Any]) -> dict[str, Any]:
            answer[what] = getattr(self._current(target), what)
            return answer

        return self._change(target, outcome, what, who).addCallback(add_value)

    def _crashout(self, args: Mapping[str, Any], who: str) -> Any:
        return self._seconds_setting(args, who, "crashout")

    def _timeout(self, args: Mapping[str, Any], who: str) -> Any:
        return self._seconds_setting(args, who, "timeout")

    def _kill(self, args: Mapping[str, Any], who: str) -> Any:
        handle = args.get("handle")
        if isinstance(handle, str) and handle:
            domains = self.root.domains
            route = domains.route_for_handle(handle) if domains is not None else None
            target = self._checked(self._target("", "", route), change=True)
            return self._change(target, target.engine.kill(handle), "kill", who, handle)
        target = self._product(args)
        index = _integer(args, "index", "licence number")
        outcome = target.engine.kill_index(target.publisher, target.product, index)
        return self._change(target, outcome, "kill", who, f"{target.label} licence {index}")

    def _node(self, args: Mapping[str, Any], who: str, *, add: bool) -> Any:
        target = self._product(args)
        address = _text(args, "address", "locked node's IPv4 address")
        engine = target.engine
        if add:
            unique_id = _integer(args, "unique_id", "unique id", 0)
            outcome = engine.add_node(target.publisher, target.product, address, unique_id)
        else:
            # rmnode HOST without an id: the host's listing that addnode added.
            given = _integer(args, "unique_id", "unique id") if "unique_id" in args else None
            outcome = engine.remove_node(target.publisher, target.product, address, given)
        return self._change(target, outcome, "addnode" if add else "rmnode", who)

    def _addnode(self, args: Mapping[str, Any], who: str) -> Any:
        return self._node(args, who, add=True)

    def _rmnode(self, args: Mapping[str, Any], who: str) -> Any:
        return self._node(args, who, add=False)

    def _pools(self, args: Mapping[str, Any], who: str, *, to_locked: bool) -> Any:
        target = self._product(args)
        count = _integer(args, "count", "number of licences", 1)
        engine = target.engine
        method = engine.float_to_locked if to_locked else engine.locked_to_float
        outcome = method(target.publisher, target.product, count)
        return self._change(target, outcome, "ftol" if to_locked else "ltof", who)

    def _ftol(self, args: Mapping[str, Any], who: str) -> Any:
        return self._pools(args, who, to_locked=True)

    def _ltof(self, args: Mapping[str, Any], who: str) -> Any:
        return self._pools(args, who, to_locked=False)

    def _named(self, args: Mapping[str, Any], who: str, command: str, key: str, what: str) -> Any:
        target = self._product(args)
        name = _text(args, key, what)
        engine = target.engine
        methods: dict[str, Callable[[str, str, str], Outcome[AdminDone | Denied]]] = {
            "exhost": engine.exclude_host,
            "unexhost": engine.unexclude_host,
            "adduser": engine.add_named_user,
            "remuser": engine.remove_named_user,
            "remuacc": engine.remove_user_access,
            "remgacc": engine.remove_group_access,
        }
        outcome = methods[command](target.publisher, target.product, name)
        return self._change(target, outcome, command, who)

    def _exhost(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "exhost", "host", "host name or address")

    def _unexhost(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "unexhost", "host", "host name or address")

    def _adduser(self, args: Mapping[str, Any], who: str) -> Any:
        done = self._named(args, who, "adduser", "user", "user name")
        return done.addCallback(self._warn_off, self._product(args), Policy.USRL, "named users")

    def _warn_off(
        self, answer: dict[str, Any], target: _Target, flag: Policy, what: str
    ) -> dict[str, Any]:
        """Add a warning to ``answer`` if the policy that makes the change matter is off."""
        if not self._current(target).policy & int(flag):
            answer["message"] = (
                f"{answer['message']} (warning: policy {flag.name} is off, so {what} have "
                f"no effect until it is turned on: policy PRODUCT {flag.name})"
            )
        return answer

    def _remuser(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "remuser", "user", "user name")

    def _remuacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "remuacc", "user", "user name")

    def _remgacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "remgacc", "group", "group name")

    def _access(self, args: Mapping[str, Any], who: str, *, group: bool) -> Any:
        target = self._product(args)
        key = "group" if group else "user"
        name = _text(args, key, f"{key} name")
        level = _integer(args, "level", "access level (0..8)")
        engine = target.engine
        method = engine.set_group_access if group else engine.set_user_access
        outcome = method(target.publisher, target.product, name, level)
        done = self._change(target, outcome, "addgacc" if group else "adduacc", who)
        return done.addCallback(self._warn_off, target, Policy.ACCL, "access levels")

    def _adduacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._access(args, who, group=False)

    def _addgacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._access(args, who, group=True)

    def _loglevel(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        switches = getattr(self.root, "switches", None) or getattr(self.root, "log_switches", None)
        if switches is None:
            raise AdminError(wire.NOT_AVAILABLE, "log switches are not available yet")
        text = args.get("text") or ""
        if not isinstance(text, str):
            raise AdminError(wire.BAD_REQUEST, "loglevel text must be text")
        before = str(switches)
        try:
            now = switches.apply(text)
        except LogLevelError as error:
            raise AdminError("ILLEGAL", str(error)) from None
        except OSError as error:
            raise AdminError(
                wire.INTERNAL, f"cannot save the log switches ({error}); nothing changed"
            ) from None
        if text.split() and now != before:
            self.log.info(
                "admin {who}: loglevel {text}: log switches now {switches}",
                log_switch="ADMIN",
                who=who,
                text=text,
                switches=now,
            )
        value = int(switches.value)
        listed = [
            {"number": bit + 1, "name": switch.name, "on": bool(value & int(switch))}
            for bit, switch in enumerate(Switch)
        ]
        presets = {name: describe_switches(preset) for name, preset in PRESETS.items()}
        return {
            "switches": now,
            "preset": preset_name(switches.value),
            "list": listed,
            "presets": presets,
            # lg alone: the manual lists every switch with this server's state
            "listing": not text.split(),
        }

    def _reread(self, args: Mapping[str, Any], who: str) -> Any:
        """Re-read the configuration file and the permits as SIGHUP does: products whose
        permits did not change keep their licences (unlike reinit)."""
        root = self.root
        server = root.server
        assert server is not None
        before = self._engine.held_count()
        root.reload()
        assert root.journal is not None
        # The re-read's events are submitted by reload; an empty submit answers after them.
        done: Deferred[Any] = root.journal.submit([])

        def answered(_: object) -> dict[str, Any]:
            served = len(self._engine.served())
            revoked = max(0, before - self._engine.held_count())
            message = (
                f"configuration and permits re-read; {served} product(s) served; "
                f"{revoked} licence(s) revoked (only of products whose permits changed)"
            )
            self.log.info(
                "admin {who}: reread: {message}", log_switch="ADMIN", who=who, message=message
            )
            return {
                "message": message,
                "served": served,
                "revoked": revoked,
                "errors": [str(error) for error in server.catalogue.errors],
            }

        return done.addCallback(answered)

    def _may_stop(self) -> bool:
        """Whether the command running now may stop the daemon: through the local admin
        socket, or from a remote admin whose certificate carries the down usage."""
        if self._local:
            return True
        peer = self._peer
        return peer is not None and peer.role is Role.ADMIN and peer.allow_down

    def _down(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Stop the daemon (as SIGTERM: listeners stop, the journal is flushed); through
        the local admin socket, or over TLS with an admin certificate that allows it."""
        if not self._may_stop():
            self.log.warn(
                "admin {who}: down refused: the certificate does not allow stopping the daemon",
                log_switch="ADMIN",
                who=who,
            )
            holder = str(self._peer) if self._peer is not None else "a remote administrator"
            raise AdminError(
                wire.NOT_ALLOWED,
                f"down is refused for {holder}: this admin certificate does not allow "
                "stopping the daemon remotely; stop it on its own machine (hqn_lsa -down "
                "there, or its service manager), or use an admin certificate made with "
                "hqn_ca admin CA NAME --allow-down",
            )
        stop = getattr(self.root.reactor, "stop", None)
        if stop is None:
            raise AdminError(wire.NOT_AVAILABLE, "this daemon cannot be stopped from here")
        self.log.warn("admin {who}: down: stopping the daemon", who=who)
        # After the answer is written: the reactor's shutdown stops every service.
        self.root.reactor.callLater(0.2, stop)
        return {"message": f"stopping the daemon on {self.root.me.address}"}

    def _reinit(self, args: Mapping[str, Any], who: str) -> Any:
        """Revoke every licence, forget the admin settings, re-read the permits.

        This daemon's own products here; each domain's on its acting primary
        (here, or forwarded). A forwarded reinit does only its domain.
        """
        root = self.root
        server = root.server
        assert server is not None and root.journal is not None
        if self._forwarded_domain is not None:
            return self._reinit_forwarded(self._forwarded_domain, who)
        # Serving no product first drops every product's state, so the settings
        # made with hqn_lsa go too: the permits' own values apply again.
        revoked = self._engine.reinit([])
        root.journal.submit(revoked.events).addErrback(lambda failure: None)
        try:
            loaded = server.load_permits()
        except Exception as problem:
            self.log.failure("reinit: reading the permits failed")
            raise AdminError(
                wire.INTERNAL,
                f"licences revoked, but the permits could not be re-read: {problem}",
            ) from None
        for permit_error in server.catalogue.errors:
            root.metrics.permit_read_error(int(permit_error.condition))
        switches = getattr(root, "switches", None) or getattr(root, "log_switches", None)
        if switches is not None:
            switches.reset()
        result = revoked.result
        served = len(self._engine.served())
        answer: dict[str, Any] = {
            "message": f"{result.message}; {served} product(s) served",
            "revoked": result.revoked,
            "served": served,
            "errors": [str(error) for error in server.catalogue.errors],
            "domains": [],
        }
        domains = root.domains
        keys = sorted(domains.members) if domains is not None else []
        each = DeferredList([self._reinit_domain(key, who) for key in keys], consumeErrors=True)
        done: Deferred[dict[str, Any]] = Deferred()

        def domains_done(results: list[tuple[bool, Any]]) -> None:
            for key, (ok, outcome) in zip(keys, results, strict=True):
                if ok:
                    answer["domains"].append(outcome)
                    answer["revoked"] += outcome.get("revoked", 0)
                else:
                    error = outcome.value
                    text = (
                        f"{error.name}: {error.message}"
                        if isinstance(error, AdminError)
                        else str(error)
                    )
                    answer["domains"].append({"domain": _words(key), "error": text})
            self.log.info(
                "admin {who}: reinit: {message}",
                log_switch="ADMIN",
                who=who,
                message=answer["message"],
            )
            done.callback(answer)

        def committed(_: object) -> None:
            each.addCallback(domains_done)

        def failed(failure: Failure) -> None:
            self.log.failure("admin reinit: journal commit failed", failure)
            done.errback(
                AdminError(wire.INTERNAL, "the reinit could not be recorded durably; see the log")
            )

        loaded.addCallbacks(committed, failed)
        return done

    def _reinit_domain(self, key: str, who: str) -> Deferred[dict[str, Any]]:
        """Reinit one domain: here if this member is its primary, else on its primary."""
        from hqnlsd.domain.runtime import DomainRoute

        domains = self.root.domains
        assert domains is not None
        route = DomainRoute(domains.members[key])
        if route.serve() is None:
            return self._reinit_domain_here(route)
        target = _Target(route.engine, route)
        return self._forward("reinit", {}, who, target)

    def _reinit_domain_here(self, route: DomainRoute) -> Deferred[dict[str, Any]]:
        """Revoke the domain's licences and serve its products afresh (this is its primary)."""
        engine = route.engine
        revoked = engine.reinit([])
        products = route.member.spec.products
        events = [*revoked.events, *engine.load_products(products).events]
        answer = {
            "domain": route.domain_words(),
            "revoked": revoked.result.revoked,
            "served": len(engine.served()),
            "on": str(self.root.me.address),
        }
        return self._durable(events, route).addCallback(lambda _: answer)

    def _reinit_forwarded(self, key: str, who: str) -> Deferred[dict[str, Any]]:
        """A member's reinit of domain ``key``, on this (its primary): re-read, then reinit."""
        from hqnlsd.domain.runtime import DomainRoute

        server, domains = self.root.server, self.root.domains
        assert server is not None and domains is not None
        server.load_permits().addErrback(
            lambda failure: self.log.failure("reinit: recording the permits failed", failure)
        )
        member = domains.members.get(key)
        if member is None:
            raise AdminError("BADPRODUCT", "that domain is no longer served here")
        route = DomainRoute(member)
        if route.serve() is not None:
            raise self._not_primary(_Target(route.engine, route))
        done = self._reinit_domain_here(route)

        def logged(answer: dict[str, Any]) -> dict[str, Any]:
            self.log.info(
                "admin {who}: reinit of domain {domain}: {revoked} licence(s) revoked",
                log_switch="ADMIN",
                who=who,
                domain=answer["domain"],
                revoked=answer["revoked"],
            )
            return answer

        return done.addCallback(logged)


def _words(domain_key: str) -> str:
    """A domain id (``ADDR 0xID,...``) as its addresses (``ADDR ADDR ...``)."""
    return " ".join(part.split()[0] for part in domain_key.split(",") if part.strip())
