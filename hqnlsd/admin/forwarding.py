"""Changes made on a domain's acting primary.

Products of a multi-host domain are changed on the domain's acting primary. A
member that is not the primary forwards the command over the authenticated
peer link (`DomainRuntime.forward`) and relays the primary's answer
(`Forwarding.forward`); the primary runs it (`Forwarding.run_forwarded`),
checks that the product (or handle) belongs to the domain the call came for,
logs the change as ``WHO via ADDRESS`` and never forwards again. A member that
only hands over to itself (a log compaction, an admission) runs the change
again once it serves again (`Forwarding.held`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from hqnlsd.admin import wire
from hqnlsd.admin.context import AdminError, Running
from hqnlsd.admin.targets import Target

if TYPE_CHECKING:
    from ipaddress import IPv4Address

    from hqnlsd.admin.daemon import AdministeredDaemon

# The domain's modules are imported where they are used, not at the top: hqn_lsa
# imports this package (for the admin service's names) and need not load them to run.

#: How long a member waits for the acting primary to answer a forwarded change.
FORWARD_TIMEOUT = 8.0

#: Runs one command as `AdminHandler.handle` does (``command, args, who, local=, peer=``).
Handle = Callable[..., Any]


class Forwarding:
    """Forwarding of one daemon's admin changes (see the module docstring)."""

    def __init__(
        self,
        root: AdministeredDaemon,
        running: Running,
        handle: Handle,
        forwarded: frozenset[str],
    ) -> None:
        self.root = root
        self.running = running
        #: Runs a command again (a held change) or a forwarded one.
        self.handle = handle
        #: The commands another member may forward here.
        self.forwarded = forwarded

    def run_forwarded(
        self, domain_key: str, address: IPv4Address, body: Mapping[str, Any]
    ) -> Deferred[dict[str, Any]]:
        """Run a change another member of ``domain_key`` forwarded (this is its primary).

        The change must be on a product (or handle) of that domain; the answer or
        refusal goes back to the member as a `PeerCallError`.
        """
        from hqnlsd.domain.peers import PeerCallError
        from hqnlsd.domain.view import brief

        command, args, who = body.get("command"), body.get("args"), body.get("who")
        if not isinstance(command, str) or command not in self.forwarded:
            return fail(PeerCallError(wire.BAD_REQUEST, f"{brief(command)} cannot be forwarded"))
        if not isinstance(args, Mapping) or not isinstance(who, str):
            return fail(
                PeerCallError(
                    wire.BAD_REQUEST,
                    f"a forwarded {command} needs 'args' (an object) and 'who' (text), "
                    f"not {brief(args)} and {brief(who)}",
                )
            )
        self.running.forwarded_domain = domain_key
        try:
            result = self.handle(command, args, f"{who} via {address}")
        except AdminError as error:
            return fail(PeerCallError(error.name, error.message))
        finally:
            self.running.forwarded_domain = None
        done: Deferred[dict[str, Any]] = result if isinstance(result, Deferred) else succeed(result)

        def refused(failure: Failure) -> Failure:
            if isinstance(failure.value, AdminError):
                return Failure(PeerCallError(failure.value.name, failure.value.message))
            return failure

        return done.addErrback(refused)

    def forward(
        self, command: str, args: Mapping[str, Any], who: str, target: Target
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

    def held(
        self, command: str, args: Mapping[str, Any], who: str, target: Target
    ) -> Deferred[Any] | None:
        """Run a change again once this member serves again, if it only hands over to
        itself (a log compaction, an admission: `DomainRoute.held`); None if not."""
        waiting = target.route.held() if target.route is not None else None
        if waiting is None:
            return None
        running = self.running
        forwarded, local, peer = running.forwarded_domain, running.local, running.peer

        def again(_: bool) -> Any:
            running.forwarded_domain = forwarded
            try:
                return self.handle(command, args, who, local=local, peer=peer)
            finally:
                running.forwarded_domain = None

        return waiting.addCallback(again)

    def not_primary(self, target: Target) -> AdminError:
        """The refusal of a change this member may no longer make (it lost the primary role)."""
        refusal = target.route.refusal() if target.route is not None else None
        if refusal is None:
            return AdminError("NEW_MASTER", "this member just lost the primary role; try again")
        return AdminError(
            refusal.status.name, f"this member is no longer the primary: {refusal.msg}"
        )

    def route_change(
        self, command: str, args: Mapping[str, Any], who: str, target: Target
    ) -> Any:
        """What becomes of a change whose target's primary is not this member: held
        (a hand-over to itself), refused (a forwarded change never travels again),
        or forwarded to the acting primary."""
        held = self.held(command, args, who, target)
        if held is not None:
            return held
        if self.running.forwarded_domain is not None:
            raise self.not_primary(target) from None
        return self.forward(command, args, who, target)
