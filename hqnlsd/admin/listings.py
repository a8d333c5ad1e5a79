"""The admin listings: ``id``, ``sinfo``, ``listhqn``, ``listp`` and ``listu``.

Listings show this daemon's own products first, then the products of each
multi-host domain it is a member of, as this member's copy of the domain state
has them (a backup's copy lags its primary by at most the changes in flight),
each with its ``listp`` number (`hqnlsd.admin.numbering`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import hqnlsd
from hqnlsd.admin import wire
from hqnlsd.admin.context import AdminError
from hqnlsd.admin.numbering import ProductNumbers
from hqnlsd.admin.policywords import flag_names
from hqnlsd.admin.targets import Target, Targets
from hqnlsd.identity import HostsTable, format_unique_id
from hqnlsd.licensing.results import Denied, HolderInfo, ProductStatus
from hqnlsd.licensing.settings import FULL_ACCESS
from hqnlsd.permits.policy import describe

if TYPE_CHECKING:
    from hqnlsd.admin.daemon import AdministeredDaemon
    from hqnlsd.admin.numbering import Listed
    from hqnlsd.domain.runtime import DomainRoute, DomainRuntime


def _access_level(status: ProductStatus, user: str, group: str | None) -> int:
    """A holder's access level now: the user's entry, else the group's, else full (8)."""
    users, groups = dict(status.user_access), dict(status.group_access)
    level = users.get(user)
    if level is None and group is not None:
        level = groups.get(group)
    return FULL_ACCESS if level is None else level


def _status_dict(index: int, status: ProductStatus) -> dict[str, Any]:
    """A product's ``listp`` record (its domain fields apart)."""
    return {
        "index": index,
        "publisher": status.publisher,
        "product": status.product,
        "version": status.version,
        "policy": status.policy,
        "policy_text": describe(status.policy),
        "admin_locked": flag_names(status.admin_locks),
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


def holder_record(status: ProductStatus, holder: HolderInfo) -> dict[str, Any]:
    """One holder of ``status``'s product as ``listu`` lists it."""
    return {
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


def domain_list(domains: DomainRuntime | None) -> list[dict[str, Any]]:
    """Each multi-host domain: this member's rank and role, the view, the primary,
    and the members it waits for (if it reaches no quorum of its view)."""
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


class Listings:
    """The listings of one daemon (see the module docstring)."""

    def __init__(
        self, root: AdministeredDaemon, numbers: ProductNumbers, targets: Targets
    ) -> None:
        self.root = root
        self.numbers = numbers
        self.targets = targets
        #: When the handler started (``sinfo``).
        self.started = root.reactor.seconds()

    def domain_fields(self, route: DomainRoute | None) -> dict[str, Any]:
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

    def id(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """``id``: this host's address and unique id."""
        me = self.root.me
        return {
            "address": str(me.address),
            "unique_id": me.unique_id,
            "unique_id_hex": format_unique_id(me.unique_id),
        }

    def sinfo(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """``sinfo``: identity, roles, domains, peer links, permit files read, journal health."""
        root = self.root
        server = root.server
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
            "role": self.role_summary(),
            "domains": self.domain_list(),
            "peers": self.peer_list(),
            "started": self.started,
            "now": root.reactor.seconds(),
            "state_dir": str(root.config.state_dir),
            "journal_healthy": root.journal.healthy,
            "permit_source": discovery.source if discovery is not None else None,
            "searched": [str(path) for path in discovery.searched] if discovery else [],
            "search_problems": list(discovery.problems) if discovery else [],
            "files": files,
            "served": len(self.root.engine.served()),
            "held": self.root.engine.held_count(),
            "log_switches": str(root.switches),
        }

    def role_summary(self) -> str:
        """This daemon's role in words: single-host, or member of which domains."""
        domains = self.root.domains
        if domains is None:
            return "single-host server (no server domains: no --domain-ca)"
        roles = [info.role.value for info in domains.roles().values()]
        if not roles:
            return "server domains on, but no permit names a multi-host domain with this host"
        return f"member of {len(roles)} server domain(s): {', '.join(roles)}"

    def domain_list(self) -> list[dict[str, Any]]:
        """Each multi-host domain (`domain_list`)."""
        return domain_list(self.root.domains)

    def peer_list(self) -> list[dict[str, Any]]:
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

    def listhqn(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """``listhqn``: the ``hqnserverN`` aliases of the hosts file."""
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

    def listp(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """Every product, or (``listp p``) the one named, with all its details."""
        statuses = self.numbers.listed()
        if args.get("product") is not None:
            statuses = self._only(statuses, self.targets.product(args, change=False))
        return {
            "products": [
                {**_status_dict(index, status), **self.domain_fields(route)}
                for index, status, route in statuses
            ]
        }

    @staticmethod
    def _only(
        statuses: list[Listed], wanted: Target
    ) -> list[Listed]:
        return [
            (index, status, route)
            for index, status, route in statuses
            if (status.publisher, status.product) == (wanted.publisher, wanted.product)
            and (route is None) == (wanted.route is None)
        ]

    def listu(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        """``listu [p]``: the licence holders of every product, or of the one named."""
        statuses = self.numbers.listed()
        if args.get("product") is not None:
            statuses = self._only(statuses, self.targets.product(args, change=False))
        products = []
        for index, status, route in statuses:
            engine = route.engine if route is not None else self.root.engine
            found = engine.holders(status.publisher, status.product)
            holders = [] if isinstance(found, Denied) else found
            products.append(
                {
                    "index": index,
                    "publisher": status.publisher,
                    "product": status.product,
                    "version": status.version,
                    **self.domain_fields(route),
                    "holders": [holder_record(status, holder) for holder in holders],
                }
            )
        return {"products": products}
