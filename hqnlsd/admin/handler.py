"""Every ``hqn_lsa`` command, on the live daemon: `AdminHandler`.

`AdminHandler.handle` takes a command name, its arguments (decoded JSON) and
who asked, and returns the result (JSON-safe values) or a Deferred of it. A
refusal raises `AdminError` with an error name (a licence status name such as
BADPRODUCT or ILLEGAL, or one of `hqnlsd.admin.wire`'s) and a clear message.

The handler only composes the package's parts, one concern each:

- `hqnlsd.admin.table`: the one table of commands (what runs each, whether it
  changes state, whether it is forwarded);
- `hqnlsd.admin.listings` and `hqnlsd.admin.numbering`: the listings and the
  products' ``listp`` numbers;
- `hqnlsd.admin.changes` and `hqnlsd.admin.lifecycle`: the changes of a product,
  and those of the daemon as a whole (loglevel, reread, reinit, recover, down);
- `hqnlsd.admin.durability`: a change is answered once its events are durable,
  through the one commit path (`hqnlsd.commit`, `hqnlsd.answers`);
- `hqnlsd.admin.targets` and `hqnlsd.admin.forwarding`: where a command acts,
  and a domain product's change made on the domain's acting primary.

A product is named by its number in ``listp`` (``{"index": 1}``) or by
``{"publisher": ..., "product": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from hqnlsd.admin import wire
from hqnlsd.admin.changes import Changes
from hqnlsd.admin.context import AdminError, Running
from hqnlsd.admin.durability import Durability
from hqnlsd.admin.forwarding import FORWARD_TIMEOUT, Forwarding
from hqnlsd.admin.lifecycle import Lifecycle
from hqnlsd.admin.listings import Listings, domain_list
from hqnlsd.admin.numbering import ProductNumbers
from hqnlsd.admin.policywords import PolicyPlan, parse_policy, plan_policy
from hqnlsd.admin.table import CHANGES, COMMANDS, FORWARDED, Parts
from hqnlsd.admin.targets import Forward, Targets
from hqnlsd.tls import PeerIdentity

if TYPE_CHECKING:
    from ipaddress import IPv4Address

    from twisted.internet.defer import Deferred

    from hqnlsd.admin.daemon import AdministeredDaemon

__all__ = [
    "CHANGES",
    "FORWARDED",
    "FORWARD_TIMEOUT",
    "AdminError",
    "AdminHandler",
    "PolicyPlan",
    "parse_policy",
    "plan_policy",
]


class AdminHandler:
    """The admin commands of one daemon (see the module docstring)."""


    def __init__(self, root: AdministeredDaemon) -> None:
        #: The daemon administered: only what `AdministeredDaemon` offers is used.
        self.root = root
        #: The command running now: who asked, and for which domain if forwarded.
        self.running = Running()
        numbers = ProductNumbers(root)
        targets = Targets(root, numbers, self.running)
        durability = Durability(root)
        self.forwarding = Forwarding(root, self.running, self.handle, FORWARDED)
        self.listings = Listings(root, numbers, targets)
        self.started = self.listings.started
        parts = Parts(
            listings=self.listings,
            changes=Changes(targets, durability),
            lifecycle=Lifecycle(root, self.running, durability, self.forwarding),
        )
        self._commands: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
            command.name: partial(command.run, parts) for command in COMMANDS
        }

    @property
    def commands(self) -> tuple[str, ...]:
        """The command names this handler answers."""
        return tuple(self._commands)

    @property
    def _forwarded_domain(self) -> str | None:
        """The domain a forwarded command came for, while it runs."""
        return self.running.forwarded_domain

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
        self.running.local = local
        self.running.peer = peer
        method = self._commands.get(command)
        if method is None:
            raise AdminError(
                wire.UNKNOWN_COMMAND,
                f"no admin command {command!r}; commands: {', '.join(self._commands)}",
            )
        try:
            return method(args, who)
        except Forward as forward:
            return self.forwarding.route_change(command, args, who, forward.target)

    def handle_forwarded(
        self, domain_key: str, address: IPv4Address, body: Mapping[str, Any]
    ) -> Deferred[dict[str, Any]]:
        """Run a change another member of ``domain_key`` forwarded (this is its primary).

        The change must be on a product (or handle) of that domain; the answer or
        refusal goes back to the member as a `PeerCallError`
        (`Forwarding.run_forwarded`).
        """
        return self.forwarding.run_forwarded(domain_key, address, body)

    def _domain_list(self) -> list[dict[str, Any]]:
        """``sinfo``'s domains (`hqnlsd.admin.listings.domain_list`); needs only ``root``."""
        return domain_list(self.root.domains)
