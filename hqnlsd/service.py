"""The daemon's service tree.

`HqnlsdService` is the root: on start it opens the journal in the state directory,
restores the licensing engine from it, reads the permits, and only then starts its
children (the client listener first of all), so no client is ever answered from a
state that is not yet restored. On stop it stops the listeners and flushes and
closes the journal.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from hqnlsd.admin.service import make_admin_services, runtime_socket_path
from hqnlsd.config import DaemonConfig
from hqnlsd.domain.role import Role, RoleInfo
from hqnlsd.domain.runtime import DomainRuntime
from hqnlsd.identity import local_unique_id
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event, Granted, Released, Revoked
from hqnlsd.limits import client_connection_cap, limit_listener, soft_nofile
from hqnlsd.listen import loopback_unless_named, split_description
from hqnlsd.listeners import Listener
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.files import MAX_ROTATED_FILES, cap_log_files
from hqnlsd.logging.observer import FilterInstallation, install_switch_filter
from hqnlsd.logging.switches import LogSwitches
from hqnlsd.logging.usage import UsageReport
from hqnlsd.metrics import Metrics, licence_counts, make_metrics_service
from hqnlsd.permits.model import HostId
from hqnlsd.persistence.store import DATABASE_NAME, Journal, JournalError, open_journal
from hqnlsd.protocols.client import ClientProtocolFactory
from hqnlsd.protocols.replies import Err, Reply
from hqnlsd.sdnotify import SystemdNotifier
from hqnlsd.securefiles import (
    UnsafePathError,
    check_state_dir,
    check_state_entries,
    check_trusted_file,
)
from hqnlsd.server import LicenceServer, PermitSource
from hqnlsd.status import Status

#: Configuration that a SIGHUP cannot change in a running daemon.
RESTART_ONLY = (
    "address",
    "client_listen",
    "state_dir",
    "manhole_listen",
    "manhole_keys",
    "metrics_listen",
    "domain_ca",
    "domain_cert",
    "domain_key",
    "peer_port",
    "peer_dial_port",
    "peer_source_check",
    "domain_timers",
    "limits",
)

#: How often tombstones of taken-back licences are purged (seconds).
HOUSEKEEPING_SECONDS = 60.0


class StartupError(Exception):
    """The daemon cannot start; the message tells the admin why and what to do."""


class FailureReport(Protocol):
    """Where a failed start is told besides the log (`hqnlsd.tap.TerminalReport`)."""

    def failed(self, reason: str) -> None:
        """Tell ``reason`` (the one line, without "cannot start")."""

    def close(self) -> None:
        """The start succeeded: let go of the destination."""


class HqnlsdService(MultiService):
    """Root service: durable state and permits first, then the listeners."""

    log = Logger()

    def __init__(self, config: DaemonConfig, reactor: Any, *, me: HostId | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.me = me or HostId(config.address, local_unique_id())
        self.engine = Engine(reactor)
        self.source = PermitSource(
            permit_dirs=config.permit_dirs,
            environ=dict(config.environ),
            publisher_keys=config.publisher_keys,
            hosts_file=config.hosts_file,
            me=self.me,
            server_keys=config.server_keys,
        )
        self.server: LicenceServer | None = None
        self.journal: Journal | None = None
        #: Daemonised by twistd: where a failed start is also told in full (twistd
        #: itself passes only 100 bytes to the terminal). Set by `hqnlsd.tap`.
        self.terminal: FailureReport | None = None
        #: hqn_lsa loglevel: apply(text); reset() on reinit.
        self.switches = LogSwitches.load(config.state_dir, domain_logging=config.domain_logging)
        self.usage = UsageReport(config.state_dir, reactor)
        self.feed = LicenceFeed(usage=self.usage, switches=self.switches)
        self._log_filter: FilterInstallation | None = None
        self.metrics = Metrics(lambda: licence_counts(self._licence_figures()))
        self.notifier = SystemdNotifier(dict(config.environ))
        self._housekeeping: LoopingCall | None = None
        self._domain_roles: dict[str, Role] = {}
        self.factory = ClientProtocolFactory(
            _LateDispatcher(self),
            reactor,
            idle_timeout=config.limits.client_idle_timeout,
            log_interval=config.limits.log_interval,
            on_idle_close=lambda: self.metrics.connection_timed_out("client", "idle"),
        )
        #: Multi-host server domains (only with --domain-ca): see `_make_domains`.
        self.domains: DomainRuntime | None = None
        if config.domain_ca is not None:
            self.domains = self._make_domains(config, reactor)

    def _make_domains(self, config: DaemonConfig, reactor: Any) -> DomainRuntime:
        """The domain runtime: peer links, one node per multi-host domain, its listeners."""
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
        domains.event_listeners.append(lambda key, events: self.feed.observe(events))
        domains.event_listeners.append(lambda key, events: _count_events(self.metrics, events))
        domains.role_listeners.append(self._domain_role)
        domains.peer_listeners.append(self.metrics.set_peers_up)
        domains.damage_listeners.append(self.metrics.set_domain_damaged)
        return domains

    def _licence_figures(self) -> list[Any]:
        """Every product's pools for the metrics: this daemon's own, and those of the
        domains it is the acting primary of (a backup's copy would count them twice)."""
        statuses: list[Any] = list(self.engine.status())
        if self.domains is not None:
            for engine in self.domains.serving_engines():
                statuses.extend(engine.status())
        return statuses

    def _domain_role(self, domain: str, info: RoleInfo) -> None:
        """A role change in a domain: metrics, the licence feed, failover count."""
        from hqnlsd.metrics import DomainRole

        previous = self._domain_roles.get(domain)
        self._domain_roles[domain] = info.role
        gauge = {Role.PRIMARY: DomainRole.PRIMARY, Role.BACKUP: DomainRole.BACKUP}
        self.metrics.set_domain_role(domain, gauge.get(info.role, DomainRole.NONE))
        self.metrics.set_domain_epoch(domain, info.epoch)
        if info.role is Role.PRIMARY and previous is not None:
            self.metrics.failover(domain)
        self.feed.role(
            domain=domain,
            role=info.role.value,
            previous=previous.value if previous is not None else None,
            rank=info.rank,
            epoch=info.epoch,
            primary=info.primary,
        )

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
        """Restore state, read permits, then start the listeners (in that order)."""
        if self.config.install_log_filter:
            # Before anything else logs; twistd has registered its observer by now.
            self._log_filter = install_switch_filter(self.switches)
            for logfile in cap_log_files():
                self.log.info(
                    "log file {path}: mode 0600, rotated at {size} bytes, "
                    "{kept} old files kept",
                    path=logfile.path, size=getattr(logfile, "rotateLength", None),
                    kept=MAX_ROTATED_FILES,
                )
        try:
            self.journal = open_journal(self.config.state_dir, self.reactor)
            report = self.journal.restore(self.engine)
        except JournalError as error:
            reason = f"--state-dir {self.config.state_dir}: {error}"
            if "locked" in str(error):
                reason = _state_dir_locked(self.config.state_dir)
            self._cannot_start(reason)
            raise StartupError(reason) from None
        self.log.info(
            "state restored from {path}: {held} licence(s) held "
            "(snapshot: {snapshot}, {replayed} event(s) replayed)",
            path=str(self.journal.path),
            held=self.engine.held_count(),
            snapshot=report.had_snapshot,
            replayed=report.replayed,
        )
        self.feed.seed(self.engine)
        self.journal.listeners.append(self.feed.observe)
        self.journal.listeners.append(lambda events: _count_events(self.metrics, events))
        self.server = LicenceServer(
            self.engine, self.journal, self.source, self.feed, domains=self.domains,
            clock=self.reactor, log_interval=self.config.limits.log_interval,
            denial_burst=self.config.limits.denials_logged,
        )
        # Holders could not UPDATE while we were down: count them as updated now.
        self.journal.submit(self.engine.resume().events)
        self._load_permits()
        self._log_summary()
        self._housekeeping = LoopingCall(self._housekeep)
        self._housekeeping.clock = self.reactor
        self._housekeeping.start(HOUSEKEEPING_SECONDS, now=False)
        if self.config.handle_sighup:
            self._install_sighup()
        super().startService()
        if self.terminal is not None:
            self.terminal.close()  # started: the launching terminal is not held open

    def _cannot_start(self, reason: str) -> None:
        """Log why the start failed (one line), and tell the launching terminal too."""
        self.log.critical("cannot start: {reason}", reason=reason)
        if self.terminal is not None:
            self.terminal.failed(reason)

    def _log_summary(self) -> None:
        """One line: what this daemon serves, what it read but does not, and a hint
        when it serves nothing because no permit names its address."""
        assert self.server is not None
        catalogue = self.server.catalogue
        served = self.server.serving_now
        unserved = self.server.read_not_served
        why = ""
        if not catalogue.served:
            listed = {
                server.address
                for report in catalogue.files
                if report.file.permit is not None
                for server in report.file.permit.servers
            }
            if catalogue.files and self.me.address not in listed:
                why = (
                    f": this daemon's address {self.me.address} is in no permit read "
                    "(start it with the --address its permits name)"
                )
        self.log.info(
            "hqnlsd on {address} (unique id 0x{uid:08x}) serving {count} product(s), "
            "{unserved} read but not served{why}",
            address=str(self.me.address),
            uid=self.me.unique_id,
            count=served,
            unserved=unserved,
            why=why,
        )

    def manhole_namespace(self) -> dict[str, object]:
        """The live objects a manhole session sees (built afresh for each session)."""
        server = self.server
        return {
            "service": self,
            "config": self.config,
            "engine": self.engine,
            "journal": self.journal,
            "server": server,
            "permits": server.catalogue if server is not None else None,
            "licences": {
                f"{status.publisher} {status.product}": self.engine.holders(
                    status.publisher, status.product
                )
                for status in self.engine.status()
            },
            "domains": self.domains,
            "peers": self.domains.peers() if self.domains is not None else None,
        }

    def reload(self) -> None:
        """SIGHUP: re-read the config file (if any) and the permits.

        Licences of products whose permits did not change are kept (unlike
        `reinit`). The permit path, publisher keys and hosts file take effect at
        once; a changed listener, address or state directory needs a restart, and
        the log says so. A config file with an error changes nothing.
        """
        if self.server is None:
            return
        self.notifier.reloading()
        try:
            if self.config.command_line.get("config"):
                self._reload_config()
            self.log.info("re-reading permits (SIGHUP)")
            self._load_permits()
            self._log_summary()
        except Exception:
            self.log.failure("reload failed; still serving as before")
        finally:
            self.notifier.ready()

    def _reload_config(self) -> None:
        from hqnlsd.config import ConfigError
        from hqnlsd.configfile import config_from

        try:
            fresh = config_from(self.config.command_line)
        except ConfigError as error:
            self.log.error("configuration not reloaded: {error}", error=str(error))
            return
        needs_restart = [
            name for name in RESTART_ONLY if getattr(fresh, name) != getattr(self.config, name)
        ]
        if needs_restart:
            self.log.warn(
                "configuration changes that take effect only after a restart: {names}",
                names=", ".join(needs_restart),
            )
        self.config = dataclasses.replace(
            self.config,
            permit_dirs=fresh.permit_dirs,
            hosts_file=fresh.hosts_file,
            publisher_keys=fresh.publisher_keys,
            server_keys=fresh.server_keys,
        )
        self.source.permit_dirs = fresh.permit_dirs
        self.source.hosts_file = fresh.hosts_file
        self.source.publisher_keys = fresh.publisher_keys
        self.source.server_keys = fresh.server_keys
        self.log.info("configuration re-read from {path}", path=str(fresh.command_line["config"]))

    def _load_permits(self) -> None:
        """Read the permits into the engine; count read errors for the metrics."""
        assert self.server is not None
        committed = self.server.load_permits()
        # The journal logs and retries a failed commit itself; nothing waits on this.
        committed.addErrback(lambda failure: None)
        for error in self.server.catalogue.errors:
            self.metrics.permit_read_error(int(error.condition))

    def _install_sighup(self) -> None:
        import signal

        def on_hup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_hup)

    def _housekeep(self) -> None:
        """Periodic work; logs its own errors so one failure never stops the timer."""
        try:
            assert self.journal is not None
            self.journal.submit(self.engine.expire().events).addErrback(
                lambda failure: self.log.failure(
                    "housekeeping: journal commit failed (the events stay queued)", failure
                )
            )
        except Exception:
            self.log.failure("housekeeping failed")
        if self.domains is not None:
            self.domains.housekeep()  # logs its own errors

    def stopService(self) -> Any:
        """Stop the listeners, then flush and close the journal."""
        if self._housekeeping is not None and self._housekeeping.running:
            self._housekeeping.stop()
        stopped = super().stopService()

        def close(result: object) -> object:
            if self.journal is not None:
                self.journal.close()
            if self.server is not None and self.server.denials is not None:
                self.server.denials.stop()  # its summary records before the report closes
            self.usage.close()
            if self.server is not None and self.server.messages is not None:
                self.server.messages.stop()
            if self._log_filter is not None:
                self._log_filter.uninstall()
                self._log_filter = None
            return result

        if stopped is None:
            close(None)
            return None
        return stopped.addBoth(close)


class _LateDispatcher:
    """Between the listener and the server: the server is made at start (after the
    listener is bound), and every reply's latency and denial is measured here.

    Late by necessity, not by construction order: the listener binds in
    ``privilegedStartService`` (a port below 1024 needs root), while the journal the
    server commits to is opened in ``startService``, after twistd has shed its
    privileges, so that its files belong to the daemon's user. Until then (never
    once the reactor runs: twistd starts the service before it serves a
    connection) a request is answered as starting up."""

    def __init__(self, root: HqnlsdService) -> None:
        self._root = root

    def dispatch(self, command: Any, peer: Any) -> Any:
        """Forward to the live `LicenceServer`, timing the answer for the metrics."""
        server = self._root.server
        if server is None:  # bound (privilegedStartService) but state not yet restored
            return Err.of(Status.NOTVERIFIED, "the server is starting up; try again shortly")
        started = self._root.reactor.seconds()
        reply = server.dispatch(command, peer)
        if isinstance(reply, Deferred):
            return reply.addCallback(self._measured, command.verb, started)
        return self._measured(reply, command.verb, started)

    def _measured(self, reply: Reply, verb: str, started: float) -> Reply:
        metrics = self._root.metrics
        metrics.observe_request(verb, self._root.reactor.seconds() - started)
        if isinstance(reply, Err):
            metrics.denied(reply.status)
        return reply


def _dial_port(config: DaemonConfig) -> Callable[[IPv4Address], int | None] | None:
    """The peer port to dial (``--peer-dial-port``), or None to dial ``--peer-port``."""
    dial = config.peer_dial_port
    if dial is None:
        return None
    return lambda address: dial


def _count_events(metrics: Metrics, events: Sequence[Event]) -> None:
    """Journal listener: grant, release and reclaim counters from the engine's events."""
    for event in events:
        if isinstance(event, Granted):
            metrics.granted()
        elif isinstance(event, Released):
            metrics.released()
        elif isinstance(event, Revoked):
            metrics.reclaimed(event.reason)


def build_service(config: DaemonConfig, reactor: Any) -> IService:
    """The whole daemon: root service with the client listener (and manhole) as children."""
    root = HqnlsdService(config, reactor)
    client = _client_factory(root, reactor)
    listener = Listener.from_description(reactor, config.client_listen, client)
    listener.setName("client-listener")
    listener.setServiceParent(root)
    if config.metrics_listen is not None:
        metrics = make_metrics_service(config.metrics_listen, root.metrics, reactor)
        metrics.setName("metrics")
        _limit_listener(root, metrics, "metrics", reactor)
        metrics.setServiceParent(root)
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
        manhole.setServiceParent(root)
    _add_admin_services(root, config, reactor)
    if root.domains is not None:
        _limit_listener(root, root.domains.network.listener, "peer", reactor)
        root.domains.setServiceParent(root)
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


def _add_admin_services(root: HqnlsdService, config: DaemonConfig, reactor: Any) -> None:
    """The admin listeners: the local socket (file permissions), and TLS if asked.

    The admin handler is given the root as an `hqnlsd.admin.daemon.AdministeredDaemon`:
    the admin package uses only that and never imports this module."""
    from hqnlsd.tls import DomainCredentials, TLSConfigError

    credentials = None
    if config.admin_tls is not None:
        assert config.domain_ca and config.domain_cert and config.domain_key
        try:
            credentials = DomainCredentials.load(
                config.domain_ca, config.domain_cert, config.domain_key
            )
        except TLSConfigError as error:
            raise StartupError(f"remote administration: {error}") from None
    try:
        services = make_admin_services(
            root,
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
        service.setServiceParent(root)


def _client_factory(root: HqnlsdService, reactor: Any) -> Any:
    """The client listener's factory under its caps: at most what the descriptor
    limit leaves after the reserve and the other TCP listeners' caps."""
    config = root.config
    others = sum(
        value is not None
        for value in (
            config.metrics_listen,
            config.manhole_listen,
            config.admin_tls,
            config.domain_ca,
        )
    )
    nofile = soft_nofile()
    cap = client_connection_cap(config.limits, other_listeners=others, nofile=nofile)
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
    metrics.set_connection_limit(label, limits.listener_max_connections)


# -- start-up failures: one line that names the option, the path or address, the cause --


@dataclasses.dataclass(frozen=True)
class TCPListener:
    """A TCP listener the configuration asks for: the option that sets it, the option
    that names its address, and where it binds (``0.0.0.0`` for every interface)."""

    option: str
    address_option: str
    host: str
    port: int


def tcp_listeners(config: DaemonConfig) -> list[TCPListener]:
    """Every TCP listener of ``config`` whose port is a number (port 0 and non-TCP
    descriptions are left to the real bind)."""
    wanted: list[tuple[str, str, str | None]] = [("--port", "--address", config.client_listen)]
    if config.domain_ca is not None:
        peer = f"tcp:{config.peer_port}:interface={config.address}"
        wanted.append(("--peer-port", "--address", peer))
    for option, description in (
        ("--metrics", config.metrics_listen),
        ("--manhole", config.manhole_listen),
        ("--admin-tls", config.admin_tls),
    ):
        if description is not None:
            try:
                safe = loopback_unless_named(description, what=option, kinds=frozenset({"tcp"}))
            except ValueError:
                continue  # not TCP (or refused later, with its own message)
            wanted.append((option, f"{option} interface=", safe))
    found: list[TCPListener] = []
    for option, address_option, description in wanted:
        if description is None:
            continue
        parts = split_description(description)
        if parts[0].lower() != "tcp" or len(parts) < 2 or not parts[1].isdigit():
            continue
        options = dict(part.partition("=")[::2] for part in parts[2:])
        host = options.get("interface", "").replace("\\:", ":") or "0.0.0.0"
        if int(parts[1]) != 0:
            found.append(TCPListener(option, address_option, host, int(parts[1])))
    return found


def explain_bind_error(listener: TCPListener, code: int | None, text: str) -> str:
    """The one line for a TCP listener that cannot bind: what, where, the real cause."""
    where = f"cannot listen on {listener.host}:{listener.port} ({listener.option})"
    if code == errno.EADDRINUSE:
        return (
            f"{where}: Address already in use: another program (another hqnlsd?) holds "
            f"that port; stop it, or give this daemon another {listener.option}"
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {listener.host} is not an address of this host (Cannot assign "
            f"requested address); give {listener.address_option} one of this host's "
            "addresses (ip -4 addr lists them)"
        )
    if code == errno.EACCES and listener.port < 1024:
        return (
            f"{where}: Permission denied: ports below 1024 need root or the "
            f"CAP_NET_BIND_SERVICE capability; give another {listener.option}"
        )
    return f"{where}: {text}"


def explain_cannot_listen(config: DaemonConfig, error: CannotListenError) -> str:
    """The one line for a bind that failed after the pre-flight check (a race)."""
    port = error.port
    if isinstance(port, bytes | str):  # a UNIX socket
        path = os.fsdecode(port)
        admin = config.admin_socket is not None and Path(path) == config.admin_socket
        if admin and "lock" in str(error.socketError).lower():
            return _admin_socket_in_use(Path(path))
        option = "--admin-socket" if admin else "--port"
        return f"cannot listen on {path} ({option}): {_strerror(error.socketError)}"
    interface = error.interface or "0.0.0.0"
    listener = next(
        (
            listener
            for listener in tcp_listeners(config)
            if listener.port == port and listener.host in (interface, "0.0.0.0")
        ),
        TCPListener("a listener option", "its interface=", interface, int(port)),
    )
    socket_error = error.socketError
    code = socket_error.errno if isinstance(socket_error, OSError) else None
    return explain_bind_error(listener, code, _strerror(socket_error))


def explain_os_error(config: DaemonConfig, error: OSError) -> str:
    """The one line for another OSError while binding: a UNIX socket's directory or
    lock file (twisted's lock is a symlink: the path is ``filename2``)."""
    raw = error.filename2 if error.filename2 is not None else error.filename
    name = os.fsdecode(raw) if raw is not None else "?"
    path = name.removesuffix(".lock")
    if config.admin_socket is not None and Path(path) == config.admin_socket:
        return f"cannot listen on {path} (--admin-socket): {error.strerror}"
    if path in config.client_listen:
        return f"cannot listen on {path} (--port): {error.strerror}"
    if Path(name) == config.state_dir or config.state_dir in Path(name).parents:
        return f"--state-dir {config.state_dir}: {error.strerror} ({name})"
    return f"{name}: {error.strerror}"


def _strerror(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def _admin_socket_in_use(path: Path) -> str:
    """The one line for an admin socket whose lock another live daemon holds."""
    pid = _lock_holder(path)
    who = "another running hqnlsd" + (f" (pid {pid})" if pid is not None else "")
    return (
        f"--admin-socket {path}: {who} listens on it; stop that daemon, or give this "
        "one its own --state-dir (or --admin-socket)"
    )


def _lock_holder(socket_path: Path) -> int | None:
    """The pid of the live process holding ``socket_path``'s lock (twisted's
    ``wantPID`` lock: a symlink to the pid), or None."""
    try:
        pid = int(os.readlink(f"{socket_path}.lock"))
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _state_dir_locked(state_dir: Path) -> str:
    """The one line for a state directory another daemon is using (with its pid if known)."""
    pid = _lock_holder(state_dir / "admin.sock")
    who = "another running hqnlsd" + (f" (pid {pid})" if pid is not None else "")
    return (
        f"--state-dir {state_dir}: {who} uses this state directory (its database is "
        "locked); stop that daemon, or give this one its own --state-dir"
    )


def preflight(config: DaemonConfig, *, uid: int | None = None) -> None:
    """Before twistd forks: check what an admin can get wrong; StartupError (one line).

    Run by `hqnlsd.tap.makeService`, so that a daemonised ``twistd hqnlsd`` still
    prints the whole line on its terminal (twistd passes a failure after the fork
    through a 100-byte pipe). The state directory is created (0700) if missing, as
    the start would, then checked as `hqnlsd.securefiles` says (``uid``: the user
    the daemon will run as, twistd's ``--uid``; default the effective uid), and
    so is the manhole's keys file; each TCP listener is bound and closed at once,
    as twisted binds (SO_REUSEADDR), so a port in TIME_WAIT is not reported. The
    real binds in ``privilegedStartService`` still explain a failure the same way.
    """
    state = config.state_dir
    if state.exists() and not state.is_dir():
        raise StartupError(f"--state-dir {state}: not a directory (a file of that name is there)")
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(f"--state-dir {state}: cannot create it: {error.strerror}") from None
    _check_files(config, uid)
    problem = _database_problem(state / DATABASE_NAME)
    if problem is not None:
        raise StartupError(problem)
    if config.admin_socket is not None and _lock_holder(config.admin_socket) is not None:
        raise StartupError(_admin_socket_in_use(config.admin_socket))
    for listener in tcp_listeners(config):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((listener.host, listener.port))
            except OSError as error:
                raise StartupError(
                    explain_bind_error(listener, error.errno, _strerror(error))
                ) from None


def _check_files(config: DaemonConfig, uid: int | None) -> None:
    """The state directory, what is in it and the manhole's keys file, as
    `hqnlsd.securefiles` wants them; a readable state directory is logged."""
    try:
        for warning in check_state_dir(config.state_dir, uid=uid):
            _preflight_log.warn("{warning}", warning=warning)
        check_state_entries(config.state_dir, sockets=[config.admin_socket])
        if config.manhole_keys is not None:
            check_trusted_file(config.manhole_keys, uid=uid, what="--manhole-keys")
    except UnsafePathError as error:
        raise StartupError(str(error)) from None
    except OSError as error:
        raise StartupError(f"{error.filename}: {error.strerror}") from None


_preflight_log = Logger(namespace="hqnlsd.service")


def _database_problem(path: Path) -> str | None:
    """Why the state database cannot be used (another daemon holds it, it is not a
    database), or None (also when it does not exist yet).

    Opened read-only and closed at once, never written: the daemon (maybe another
    user after ``--uid``) creates and owns the file.
    """
    if not path.exists():
        return None
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        message = str(error)
        if "locked" in message or "busy" in message:
            return _state_dir_locked(path.parent)
        if "not a database" in message or "malformed" in message:
            return (
                f"--state-dir {path.parent}: {path} is damaged ({message}); restore it from "
                "a backup, or move it away to start with no licences held"
            )
        return None  # the real open says what it is
    finally:
        if db is not None:
            db.close()
    return None


#: How the start-up log names each listener (by the name of its service or parent).
_LISTENER_LABELS = {
    "client-listener": "client listener",
    "metrics": "metrics listener",
    "manhole": "manhole listener",
    "admin-socket": "admin socket",
    "admin-tls": "admin TLS listener",
    "peers": "domain peer listener",
}


def _listeners(
    service: MultiService, label: str | None = None
) -> Iterator[tuple[str, Listener]]:
    """Every listening service below ``service``, with the label the log gives it."""
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
