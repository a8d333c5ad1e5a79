"""The admin commands on the daemon as a whole: ``loglevel``, ``reread``,
``reinit``, ``recover`` and ``down``.

``reinit`` revokes this daemon's own licences and those of every domain it is a
member of (each on its primary: here, or forwarded there); a forwarded reinit
does only its domain. ``reread`` re-reads as SIGHUP does and answers once what
it changed is durable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from hqnlsd.admin import wire
from hqnlsd.admin.context import ADMIN_LOG, AdminError, Running, domain_words, integer_arg
from hqnlsd.admin.durability import Durability
from hqnlsd.admin.forwarding import Forwarding
from hqnlsd.admin.targets import Target
from hqnlsd.logging.switches import PRESETS, LogLevelError, Switch, preset_name
from hqnlsd.logging.switches import describe as describe_switches
from hqnlsd.tls import Role

if TYPE_CHECKING:
    from hqnlsd.admin.daemon import AdministeredDaemon
    from hqnlsd.domain.runtime import DomainRoute


# The domain runtime is imported where it is used, not at the top: hqn_lsa imports
# this package (for the admin service's names) and need not load it to run.


class Lifecycle:
    """The daemon-wide admin commands of one daemon (see the module docstring)."""


    def __init__(
        self,
        root: AdministeredDaemon,
        running: Running,
        durability: Durability,
        forwarding: Forwarding,
    ) -> None:
        self.root = root
        #: An instance attribute, not a class one: a `Logger` on a class names its
        #: lines after that class, and these keep the namespace they always had.
        self.log = ADMIN_LOG
        self.running = running
        self.durability = durability
        self.forwarding = forwarding

    def loglevel(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """``loglevel [words]``: list the log switches, or change them (logged under ADMIN)."""
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

    def reread(self, args: Mapping[str, Any], who: str) -> Any:
        """Re-read the configuration file and the permits as SIGHUP does: products whose
        permits did not change keep their licences (unlike reinit)."""
        root = self.root
        server = root.server
        before = self.root.engine.held_count()
        root.reload()
        # The re-read's events are committed by reload; an empty commit answers after them.
        done: Deferred[Any] = self.durability.settled([], "reread")

        def answered(_: object) -> dict[str, Any]:
            served = len(self.root.engine.served())
            revoked = max(0, before - self.root.engine.held_count())
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
        if self.running.local:
            return True
        peer = self.running.peer
        return peer is not None and peer.role is Role.ADMIN and peer.allow_down

    def down(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Stop the daemon (as SIGTERM: listeners stop, the journal is flushed); through
        the local admin socket, or over TLS with an admin certificate that allows it."""
        if not self._may_stop():
            self.log.warn(
                "admin {who}: down refused: the certificate does not allow stopping the daemon",
                log_switch="ADMIN",
                who=who,
            )
            peer = self.running.peer
            holder = str(peer) if peer is not None else "a remote administrator"
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

    def reinit(self, args: Mapping[str, Any], who: str) -> Any:
        """Revoke every licence, forget the admin settings, re-read the permits.

        This daemon's own products here; each domain's on its acting primary
        (here, or forwarded). A forwarded reinit does only its domain.
        """
        root = self.root
        server = root.server
        if self.running.forwarded_domain is not None:
            return self._reinit_forwarded(self.running.forwarded_domain, who)
        # Serving no product first drops every product's state, so the settings
        # made with hqn_lsa go too: the permits' own values apply again.
        revoked = self.root.engine.reinit([])
        root.journal.commit(revoked.events).addErrback(lambda failure: None)
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
        served = len(self.root.engine.served())
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
                    answer["domains"].append({"domain": domain_words(key), "error": text})
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
        return self.forwarding.forward("reinit", {}, who, Target(route.engine, route))

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
        return self.durability.durable(events, route).addCallback(lambda _: answer)

    def _reinit_forwarded(self, key: str, who: str) -> Deferred[dict[str, Any]]:
        """A member's reinit of domain ``key``, on this (its primary): re-read, then reinit."""
        from hqnlsd.domain.runtime import DomainRoute

        server, domains = self.root.server, self.root.domains
        assert domains is not None
        server.load_permits().addErrback(
            lambda failure: self.log.failure("reinit: recording the permits failed", failure)
        )
        member = domains.members.get(key)
        if member is None:
            raise AdminError("BADPRODUCT", "that domain is no longer served here")
        route = DomainRoute(member)
        if route.serve() is not None:
            raise self.forwarding.not_primary(Target(route.engine, route))
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


    def recover(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Recover this member of a domain whose stored state is damaged (the domain's
        number in sinfo): see `DomainRuntime.recover` and docs/domains.md."""
        from hqnlsd.domain.runtime import RecoveryRefused

        domains = self.root.domains
        keys = sorted(domains.members) if domains is not None else []
        number = integer_arg(args, "domain", "domain number")
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
