"""The admin commands, in one table: each command's name, what runs it, whether
it changes state and whether a domain member forwards it to the domain's acting
primary. The handler's dispatch (`hqnlsd.admin.handler.AdminHandler`), the set
of changes (`CHANGES`) and the set a primary accepts from a member
(`FORWARDED`) are all read from it; ``hqn_lsa``'s commands
(`hqnlsd.admin.commands`) send only names it holds (tests/admin check both ways).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hqnlsd.admin.changes import Changes
from hqnlsd.admin.lifecycle import Lifecycle
from hqnlsd.admin.listings import Listings


@dataclass(frozen=True)
class Parts:
    """The parts of a handler a command runs on."""

    listings: Listings
    changes: Changes
    lifecycle: Lifecycle


#: Runs one command on a handler's parts: ``(parts, args, who)`` -> result or Deferred.
Run = Callable[[Parts, Mapping[str, Any], str], Any]


@dataclass(frozen=True)
class AdminCommand:
    """One admin command of the protocol."""

    name: str
    run: Run
    #: It changes state: logged under ADMIN, answered after the commit.
    changes: bool = False
    #: A member forwards it to the acting primary of the product's domain, and a
    #: primary accepts it forwarded (`hqnlsd.admin.forwarding`).
    forwarded: bool = False


def _listing(method: Callable[[Listings, Mapping[str, Any], str], Any]) -> Run:
    def run(parts: Parts, args: Mapping[str, Any], who: str) -> Any:
        return method(parts.listings, args, who)

    return run


def _change(method: Callable[[Changes, Mapping[str, Any], str], Any]) -> Run:
    def run(parts: Parts, args: Mapping[str, Any], who: str) -> Any:
        return method(parts.changes, args, who)

    return run


def _daemon(method: Callable[[Lifecycle, Mapping[str, Any], str], Any]) -> Run:
    def run(parts: Parts, args: Mapping[str, Any], who: str) -> Any:
        return method(parts.lifecycle, args, who)

    return run


def _product_change(
    name: str, method: Callable[[Changes, Mapping[str, Any], str], Any]
) -> AdminCommand:
    """A change of one product (or licence): on a domain's product, made on its primary."""
    return AdminCommand(name, _change(method), changes=True, forwarded=True)


#: Every admin command, in the order ``UNKNOWN_COMMAND`` lists them.
COMMANDS: tuple[AdminCommand, ...] = (
    AdminCommand("id", _listing(Listings.id)),
    AdminCommand("sinfo", _listing(Listings.sinfo)),
    AdminCommand("listhqn", _listing(Listings.listhqn)),
    AdminCommand("listp", _listing(Listings.listp)),
    AdminCommand("listu", _listing(Listings.listu)),
    _product_change("policy", Changes.policy),
    # This daemon's own log switches: never forwarded.
    AdminCommand("loglevel", _daemon(Lifecycle.loglevel), changes=True),
    _product_change("crashout", Changes.crashout),
    _product_change("timeout", Changes.timeout),
    _product_change("kill", Changes.kill),
    _product_change("addnode", Changes.addnode),
    _product_change("rmnode", Changes.rmnode),
    _product_change("ftol", Changes.ftol),
    _product_change("ltof", Changes.ltof),
    _product_change("exhost", Changes.exhost),
    _product_change("unexhost", Changes.unexhost),
    _product_change("adduser", Changes.adduser),
    _product_change("remuser", Changes.remuser),
    _product_change("adduacc", Changes.adduacc),
    _product_change("remuacc", Changes.remuacc),
    _product_change("addgacc", Changes.addgacc),
    _product_change("remgacc", Changes.remgacc),
    # A member forwards each of its domains' reinit to that domain's primary.
    AdminCommand("reinit", _daemon(Lifecycle.reinit), changes=True, forwarded=True),
    # This member's own stored state of a domain: never forwarded.
    AdminCommand("recover", _daemon(Lifecycle.recover), changes=True),
    AdminCommand("reread", _daemon(Lifecycle.reread)),
    AdminCommand("down", _daemon(Lifecycle.down)),
)

#: The command names, in table order.
NAMES: tuple[str, ...] = tuple(command.name for command in COMMANDS)
#: Commands that change state (logged under ADMIN, answered after the commit).
CHANGES = frozenset(command.name for command in COMMANDS if command.changes)
#: Changes a member forwards to the acting primary of a domain product's domain.
FORWARDED = frozenset(command.name for command in COMMANDS if command.forwarded)
