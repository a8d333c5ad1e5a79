"""The multi-host server domains of a daemon (``--domain-ca``): the
`DomainRuntime` with its peer links, wired to the licence feed and the metrics."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from hqnlsd.config import DaemonConfig
from hqnlsd.daemon.core import count_events
from hqnlsd.daemon.startup import StartupError
from hqnlsd.domain.role import Role, RoleInfo
from hqnlsd.domain.runtime import DomainRuntime
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.metrics import DomainPeers, DomainRole, Metrics


def make_domains(
    config: DaemonConfig, reactor: Any, *, feed: LicenceFeed, metrics: Metrics
) -> DomainRuntime:
    """The domain runtime: peer links, one node per multi-host domain, its listeners.

    Its events go to the licence feed and the metrics like the journal's; role
    changes to the metrics and the feed (`DomainRoles`); the metrics read each
    domain's peers from it at scrape time (`domain_peers`). StartupError if the
    domain credentials cannot be used.
    """
    # Late: the TLS stack is loaded only by a daemon that has domains.
    from hqnlsd.domain.timing import DomainTimers
    from hqnlsd.tls import DomainCredentials, TLSConfigError

    ca, cert, key = config.domain_ca, config.domain_cert, config.domain_key
    assert ca is not None and cert is not None and key is not None  # DaemonConfig.build
    try:
        credentials = DomainCredentials.load(ca, cert, key)
    except TLSConfigError as error:
        raise StartupError(f"server domains: {error}") from None
    timers = None
    if config.domain_timers:  # checked together by DaemonConfig.build
        timers = DomainTimers(**config.domain_timers)  # type: ignore[arg-type]
    domains = DomainRuntime(
        reactor,
        config.address,
        credentials,
        config.state_dir,
        listen_port=config.peer_port,
        port_of=_dial_port(config),
        check_source=config.peer_source_check,
        timers=timers,
    )
    domains.setName("domains")
    domains.event_listeners.append(lambda key, events: feed.observe(events))
    domains.event_listeners.append(lambda key, events: count_events(metrics, events))
    domains.role_listeners.append(DomainRoles(feed, metrics).changed)
    metrics.set_peer_provider(lambda: domain_peers(domains))
    domains.damage_listeners.append(metrics.set_domain_damaged)
    return domains


def domain_peers(domains: DomainRuntime) -> list[DomainPeers]:
    """Each domain's other members and how many of them this member's links reach."""
    figures = []
    for key, member in domains.members.items():
        others = [address for address in member.spec.ranks if address != domains.me]
        up = sum(1 for address in others if domains.network.is_up(address))
        figures.append(DomainPeers(key, len(others), up))
    return figures


class DomainRoles:
    """This daemon's role in each domain, told to the metrics and the licence feed."""

    def __init__(self, feed: LicenceFeed, metrics: Metrics) -> None:
        self._feed = feed
        self._metrics = metrics
        self._roles: dict[str, Role] = {}

    def changed(self, domain: str, info: RoleInfo) -> None:
        """A role change in a domain: metrics, the licence feed, failover count."""
        previous = self._roles.get(domain)
        self._roles[domain] = info.role
        gauge = {Role.PRIMARY: DomainRole.PRIMARY, Role.BACKUP: DomainRole.BACKUP}
        self._metrics.set_domain_role(domain, gauge.get(info.role, DomainRole.NONE))
        self._metrics.set_domain_epoch(domain, info.epoch)
        if info.role is Role.PRIMARY and previous is not None:
            self._metrics.failover(domain)
        self._feed.role(
            domain=domain,
            role=info.role.value,
            previous=previous.value if previous is not None else None,
            rank=info.rank,
            epoch=info.epoch,
            primary=info.primary,
        )


def _dial_port(config: DaemonConfig) -> Callable[[IPv4Address], int | None] | None:
    """The peer port to dial (``--peer-dial-port``), or None to dial ``--peer-port``."""
    dial = config.peer_dial_port
    if dial is None:
        return None
    return lambda address: dial
