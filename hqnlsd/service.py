"""The daemon's service tree: the root composes the parts of `hqnlsd.daemon`.

Children of `HqnlsdService`, in the order they start (each built before what
depends on it, so nothing is bound late):

1. `LogSetup`: the log switch filter, before anything else logs;
2. `LicenceCore`: opens the journal in the state directory, restores the engine
   from it and reads the permits, so no client is ever answered from a state that
   is not yet restored; its dispatcher was given to the client listener's factory
   when the tree was built;
3. `ReloadService`: SIGHUP;
4. the listeners (`build_service`): client first, metrics, web console, manhole,
   admin, domains;
5. the systemd notifier, last (READY=1 once every sibling has started).

On stop the listeners stop first; only then does the core flush and close the
journal, and the log filter goes last.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from hqnlsd.admin.service import make_admin_services, runtime_socket_path
from hqnlsd.config import DaemonConfig
from hqnlsd.daemon.adminview import AdminView
from hqnlsd.daemon.core import LicenceCore
from hqnlsd.daemon.domains import make_domains
from hqnlsd.daemon.logsetup import LogSetup
from hqnlsd.daemon.reload import RESTART_ONLY, ReloadService
from hqnlsd.daemon.startup import (
    FailureReport,
    StartupError,
    explain_cannot_listen,
    explain_os_error,
    preflight,
)
from hqnlsd.domain.runtime import DomainRuntime
from hqnlsd.identity import local_unique_id
from hqnlsd.licensing.engine import Engine
from hqnlsd.limits import client_connection_cap, limit_listener, soft_nofile
from hqnlsd.listeners import Listener
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.switches import LogSwitches
from hqnlsd.logging.usage import UsageReport
from hqnlsd.metrics import JournalHealth, Metrics, licence_counts, make_metrics_service
from hqnlsd.permits.model import HostId
from hqnlsd.persistence.store import Journal
from hqnlsd.protocols.client import ClientProtocolFactory
from hqnlsd.sdnotify import SystemdNotifier
from hqnlsd.server import LicenceServer, PermitSource
from hqnlsd.web.recent import RecentEvents, RecordingUsageReport

__all__ = [
    "RESTART_ONLY",
    "HqnlsdService",
    "StartupError",
    "build_service",
    "preflight",
]


class HqnlsdService(MultiService):
    """Root service: composes the licence core, reload, the listeners (see the module)."""

    log = Logger()

    def __init__(self, config: DaemonConfig, reactor: Any, *, me: HostId | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        #: Daemonised by twistd: where a failed start is also told in full (twistd
        #: itself passes only 100 bytes to the terminal). Set by `hqnlsd.tap`.
        self.terminal: FailureReport | None = None
        #: hqn_lsa loglevel: apply(text); reset() on reinit.
        self.switches = LogSwitches.load(config.state_dir, domain_logging=config.domain_logging)
        #: The latest denials and reclaims, for the web console (only when it is on:
        #: its usage report feeds them, and writes what a plain one writes).
        self.recent: RecentEvents | None = None
        self.usage: UsageReport
        if config.web_listen is not None:
            self.recent = RecentEvents()
            self.usage = RecordingUsageReport(config.state_dir, reactor, recent=self.recent)
        else:
            self.usage = UsageReport(config.state_dir, reactor)
        self.feed = LicenceFeed(usage=self.usage, switches=self.switches)
        # Read at scrape time only, when the core below exists.
        self.metrics = Metrics(lambda: licence_counts(self._licence_figures()))
        self.notifier = SystemdNotifier(dict(config.environ))
        #: Multi-host server domains (only with --domain-ca): `make_domains`.
        self.domains: DomainRuntime | None = None
        if config.domain_ca is not None:
            self.domains = make_domains(config, reactor, feed=self.feed, metrics=self.metrics)
        self.core = LicenceCore(
            config,
            reactor,
            me=me or HostId(config.address, local_unique_id()),
            feed=self.feed,
            usage=self.usage,
            metrics=self.metrics,
            domains=self.domains,
        )
        journal = self.core.journal
        self.metrics.set_journal_provider(
            lambda: JournalHealth(journal.healthy, journal.stats.failures)
        )
        self.reloader = ReloadService(config, self.core, self.notifier, reactor)
        self.factory = ClientProtocolFactory(
            self.core.dispatcher,
            reactor,
            idle_timeout=config.limits.client_idle_timeout,
            log_interval=config.limits.log_interval,
            on_idle_close=lambda: self.metrics.connection_timed_out("client", "idle"),
        )
        self._log_setup = LogSetup(self.switches, enabled=config.install_log_filter)
        #: Started first and stopped last, once every other child has stopped.
        self._foundation = (self._log_setup, self.core)
        for name, child in (
            ("log-setup", self._log_setup),
            ("licence-core", self.core),
            ("reload", self.reloader),
        ):
            child.setName(name)
            child.setServiceParent(self)

    # The parts, as the manhole, the admin tests and `AdministeredDaemon` name them.

    @property
    def config(self) -> DaemonConfig:
        """The configuration in force (after any reload)."""
        return self.reloader.config

    @property
    def me(self) -> HostId:
        """This host's address and unique id."""
        return self.core.me

    @property
    def engine(self) -> Engine:
        """The licensing engine of this daemon's own products."""
        return self.core.engine

    @property
    def journal(self) -> Journal:
        """The engine's journal (opened when the core starts)."""
        return self.core.journal

    @property
    def server(self) -> LicenceServer:
        """The permit server."""
        return self.core.server

    @property
    def source(self) -> PermitSource:
        """Where permits and the hosts file are read from."""
        return self.core.source

    def reload(self) -> None:
        """Re-read the configuration file and the permits, as SIGHUP does."""
        self.reloader.reload()

    def admin_view(self) -> AdminView:
        """What the admin handler is given of this daemon."""
        return AdminView(self.core, self.reloader, switches=self.switches, metrics=self.metrics)

    def _licence_figures(self) -> list[Any]:
        """Every product's pools for the metrics: this daemon's own, and those of the
        domains it is the acting primary of (a backup's copy would count them twice)."""
        statuses: list[Any] = list(self.engine.status())
        if self.domains is not None:
            for engine in self.domains.serving_engines():
                statuses.extend(engine.status())
        return statuses

    def privilegedStartService(self) -> None:
        """Bind the listeners; a failed bind stops start-up with a message that says why."""
        try:
            try:
                super().privilegedStartService()
            except CannotListenError as error:
                raise StartupError(explain_cannot_listen(self.config, error)) from None
            except OSError as error:
                raise StartupError(explain_os_error(self.config, error)) from None
        except StartupError as error:
            self._cannot_start(str(error))
            raise
        for label, listener in _listeners(self):
            _log_listener(self.log, label, listener)

    def startService(self) -> None:
        """Start the children in order: state restored and permits read before the
        listeners start (`LicenceCore`)."""
        try:
            super().startService()
        except StartupError as error:
            self._cannot_start(str(error))
            raise
        if self.terminal is not None:
            self.terminal.close()  # started: the launching terminal is not held open

    def stopService(self) -> Deferred[None]:
        """Stop the listeners (and the rest), then the core (flush and close the
        journal), then the log filter."""
        # Service's own (not running any more): the children are stopped here, in two rounds.
        super(MultiService, self).stopService()
        others = [
            maybeDeferred(child.stopService)
            for child in reversed(list(self))
            if child not in self._foundation
        ]

        def stop_foundation(result: object) -> None:
            for child in reversed(self._foundation):
                child.stopService()

        return DeferredList(others).addCallback(stop_foundation)

    def _cannot_start(self, reason: str) -> None:
        """Log why the start failed (one line), and tell the launching terminal too."""
        self.log.critical("cannot start: {reason}", reason=reason)
        if self.terminal is not None:
            self.terminal.failed(reason)

    def manhole_namespace(self) -> dict[str, object]:
        """The live objects a manhole session sees (built afresh for each session)."""
        server = self.server
        return {
            "service": self,
            "config": self.config,
            "engine": self.engine,
            "journal": self.journal,
            "server": server,
            "permits": server.catalogue,
            "licences": {
                f"{status.publisher} {status.product}": self.engine.holders(
                    status.publisher, status.product
                )
                for status in self.engine.status()
            },
            "domains": self.domains,
            "peers": self.domains.peers() if self.domains is not None else None,
        }


def build_service(config: DaemonConfig, reactor: Any) -> IService:
    """The whole daemon: the root with its parts (`HqnlsdService`), then the listeners
    (client first, metrics, manhole, admin, domains), the systemd notifier last."""
    root = HqnlsdService(config, reactor)
    others = _other_listeners(root, config, reactor)
    client = _client_factory(root, reactor, others)
    listener = Listener.from_description(reactor, config.client_listen, client)
    listener.setName("client-listener")
    listener.setServiceParent(root)
    for service in others:
        service.setServiceParent(root)
    # "Starting factory <... object at 0x...>" on every bind says nothing an admin
    # can use; the listener lines of `privilegedStartService` say where each is.
    for _label, service in _listeners(root):
        factory = getattr(service, "factory", None)
        while factory is not None:
            factory.noisy = False
            factory = getattr(factory, "wrappedFactory", None)
    # Last: READY=1 once every sibling has started, STOPPING=1 before any stops.
    root.notifier.setName("systemd-notifier")
    root.notifier.setServiceParent(root)
    return root


def _other_listeners(root: HqnlsdService, config: DaemonConfig, reactor: Any) -> list[IService]:
    """The listeners besides the client's, each under its limits, in start order:
    metrics, web console, manhole, admin, the domains' peer listener."""
    others: list[IService] = []
    if config.metrics_listen is not None:
        metrics = make_metrics_service(config.metrics_listen, root.metrics, reactor)
        metrics.setName("metrics")
        _limit_listener(root, metrics, "metrics", reactor)
        others.append(metrics)
    if config.web_listen is not None:
        others.append(_web_service(root, config, reactor))
    if config.manhole_listen is not None:
        from hqnlsd.manhole import make_manhole_service

        assert config.manhole_keys is not None  # DaemonConfig.build insists
        manhole = make_manhole_service(
            config.manhole_listen,
            authorized_keys=config.manhole_keys,
            state_dir=config.state_dir,
            namespace=root.manhole_namespace,
            reactor=reactor,
        )
        manhole.setName("manhole")
        _limit_listener(root, manhole, "manhole", reactor)
        others.append(manhole)
    others.extend(_admin_services(root, config, reactor))
    if root.domains is not None:
        _limit_listener(root, root.domains.network.listener, "peer", reactor)
        others.append(root.domains)
    return others


def _web_service(root: HqnlsdService, config: DaemonConfig, reactor: Any) -> IService:
    """The web console: the admin handler's read-only view (`HqnlsdService.admin_view`)
    and the recent events; TLS with the domain certificates if asked."""
    from hqnlsd.web.site import make_web_service
    from hqnlsd.web.view import ConsoleView

    assert config.web_listen is not None
    credentials = _domain_credentials(config, "web console") if config.web_tls else None
    web = make_web_service(
        config.web_listen, ConsoleView(root.admin_view(), root.recent), reactor, credentials
    )
    _limit_listener(root, web, "web_tls" if credentials is not None else "web", reactor)
    return web


def _domain_credentials(config: DaemonConfig, what: str) -> Any:
    """The domain CA, certificate and key ``what`` serves TLS with (the config has
    checked they are given), a `hqnlsd.tls.DomainCredentials`; StartupError naming
    ``what`` if they cannot be used."""
    from hqnlsd.tls import DomainCredentials, TLSConfigError

    assert config.domain_ca and config.domain_cert and config.domain_key
    try:
        return DomainCredentials.load(config.domain_ca, config.domain_cert, config.domain_key)
    except TLSConfigError as error:
        raise StartupError(f"{what}: {error}") from None


def _admin_services(
    root: HqnlsdService, config: DaemonConfig, reactor: Any
) -> list[IService]:
    """The admin listeners: the local socket (file permissions), and TLS if asked.

    The admin handler is given `HqnlsdService.admin_view`, an
    `hqnlsd.admin.daemon.AdministeredDaemon`: the admin package uses only that and
    never imports this module."""

    credentials = None
    if config.admin_tls is not None:
        credentials = _domain_credentials(config, "remote administration")
    try:
        services = make_admin_services(
            root.admin_view(),
            socket_path=config.admin_socket,
            socket_mode=config.admin_socket_mode,
            socket_group=config.admin_socket_group,
            runtime_socket=runtime_socket_path(config),
            tls_listen=config.admin_tls,
            tls_credentials=credentials,
            reactor=reactor,
        )
    except ValueError as error:
        raise StartupError(str(error)) from None
    for service in services:
        if getattr(service, "name", None) == "admin-tls":
            _limit_listener(root, service, "admin_tls", reactor)
    return list(services)


def _client_factory(root: HqnlsdService, reactor: Any, others: Iterable[IService]) -> Any:
    """The client listener's factory under its caps: at most what the descriptor
    limit leaves after the reserve and the caps of the other listeners (``others``,
    as built: each one under a connection cap counts)."""
    config = root.config
    capped = sum(1 for _label, listener in _listeners(others) if listener.limit_label is not None)
    nofile = soft_nofile()
    cap = client_connection_cap(config.limits, other_listeners=capped, nofile=nofile)
    root.metrics.set_connection_limit("client", cap)
    root.log.info(
        "client connections: at most {cap} at once, {per_source} per address "
        "(descriptor limit {nofile})",
        cap=cap,
        per_source=config.limits.client_per_source or "any number",
        nofile=nofile,
    )
    return limit_listener(
        "client", root.factory, config.limits, reactor, root.metrics, client_cap=cap
    )


def _limit_listener(root: HqnlsdService, service: Any, label: str, reactor: Any) -> None:
    """Put the factory of ``service``'s listener (itself, or its child listener) under
    the limits of ``label`` (`hqnlsd.limits.limit_listener`), outside its other wrappers."""
    listener = service
    if not isinstance(listener, Listener):
        listener = next(child for child in service if isinstance(child, Listener))
    limits, metrics = root.config.limits, root.metrics
    listener.wrap(lambda factory: limit_listener(label, factory, limits, reactor, metrics))
    listener.limit_label = label
    metrics.set_connection_limit(label, limits.listener_max_connections)


#: How the start-up log names each listener (by the name of its service or parent).
_LISTENER_LABELS = {
    "client-listener": "client listener",
    "metrics": "metrics listener",
    "web": "web console listener",
    "manhole": "manhole listener",
    "admin-socket": "admin socket",
    "admin-tls": "admin TLS listener",
    "peers": "domain peer listener",
}


def _listeners(
    service: Iterable[IService], label: str | None = None
) -> Iterator[tuple[str, Listener]]:
    """Every listening service below ``service`` (a service, or a list of them),
    with the label the log gives it."""
    for child in service:
        name = _LISTENER_LABELS.get(getattr(child, "name", None) or "", label)
        if isinstance(child, Listener):
            yield name or "listener", child
        if isinstance(child, MultiService):
            yield from _listeners(child, name)


def _log_listener(log: Logger, label: str, listener: Listener) -> None:
    """Log where ``listener`` listens once bound (address and port, or socket path)."""

    def logged(port: IListeningPort) -> None:
        host: Any = port.getHost()
        where = (
            f"{host.host}:{host.port}"
            if hasattr(host, "port")
            else os.fsdecode(getattr(host, "name", b"?"))
        )
        log.info("{label} on {where}", label=label, where=where)

    listener.when_bound(logged)
