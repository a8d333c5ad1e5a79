"""The daemon's service tree.

`HqnlsdService` is the root: on start it opens the journal in the state directory,
restores the licensing engine from it, reads the permits, and only then starts its
children (the client listener first of all), so no client is ever answered from a
state that is not yet restored. On stop it stops the listeners and flushes and
closes the journal.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from hqnlsd.config import DaemonConfig
from hqnlsd.identity import local_unique_id
from hqnlsd.licensing.engine import Engine
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.observer import FilterInstallation, install_switch_filter
from hqnlsd.logging.switches import LogSwitches
from hqnlsd.logging.usage import UsageReport
from hqnlsd.permits.model import HostId
from hqnlsd.persistence.store import Journal, JournalError, open_journal
from hqnlsd.protocols.client import ClientProtocolFactory
from hqnlsd.protocols.wire import Err
from hqnlsd.server import LicenceServer, PermitSource
from hqnlsd.status import Status

#: How often tombstones of taken-back licences are purged (seconds).
HOUSEKEEPING_SECONDS = 60.0


class StartupError(Exception):
    """The daemon cannot start; the message tells the admin why and what to do."""


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
        )
        self.server: LicenceServer | None = None
        self.journal: Journal | None = None
        #: hqn_lsa loglevel: apply(text); reset() on reinit.
        self.switches = LogSwitches.load(config.state_dir, domain_logging=config.domain_logging)
        self.usage = UsageReport(config.state_dir, reactor)
        self.feed = LicenceFeed(usage=self.usage, switches=self.switches)
        self._log_filter: FilterInstallation | None = None
        self._housekeeping: LoopingCall | None = None
        self.factory = ClientProtocolFactory(_LateDispatcher(self), reactor)

    def privilegedStartService(self) -> None:
        """Bind the listeners; a failed bind stops start-up with a message that says why."""
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            where = f"{error.interface or '0.0.0.0'}:{error.port}"
            raise StartupError(
                f"cannot listen on {where}: {error.socketError}; another program (another "
                "hqnlsd?) holds that address: stop it, or give this daemon another --port"
            ) from None

    def startService(self) -> None:
        """Restore state, read permits, then start the listeners (in that order)."""
        if self.config.install_log_filter:
            # Before anything else logs; twistd has registered its observer by now.
            self._log_filter = install_switch_filter(self.switches)
        try:
            self.journal = open_journal(self.config.state_dir, self.reactor)
            report = self.journal.restore(self.engine)
        except JournalError as error:
            raise StartupError(f"state directory {self.config.state_dir}: {error}") from None
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
        self.server = LicenceServer(self.engine, self.journal, self.source, self.feed)
        # Holders could not UPDATE while we were down: count them as updated now.
        self.journal.submit(self.engine.resume().events)
        self.server.load_permits()
        self.log.info(
            "hqnlsd on {address} (unique id 0x{uid:08x}) serving {count} product(s)",
            address=str(self.me.address),
            uid=self.me.unique_id,
            count=len(self.engine.served()),
        )
        self._housekeeping = LoopingCall(self._housekeep)
        self._housekeeping.clock = self.reactor
        self._housekeeping.start(HOUSEKEEPING_SECONDS, now=False)
        if self.config.handle_sighup:
            self._install_sighup()
        super().startService()

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
            "domains": None,  # multi-host domains: issue 4
            "peers": None,
        }

    def reload_permits(self) -> None:
        """SIGHUP: re-read the permits; licences of unchanged products are kept."""
        if self.server is None:
            return
        self.log.info("re-reading permits (SIGHUP)")
        try:
            self.server.load_permits()
        except Exception:
            self.log.failure("re-reading permits failed; still serving the previous set")

    def _install_sighup(self) -> None:
        import signal

        def on_hup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self.reload_permits)

        signal.signal(signal.SIGHUP, on_hup)

    def _housekeep(self) -> None:
        """Periodic work; logs its own errors so one failure never stops the timer."""
        try:
            assert self.journal is not None
            self.journal.submit(self.engine.expire().events)
        except Exception:
            self.log.failure("housekeeping failed")

    def stopService(self) -> Any:
        """Stop the listeners, then flush and close the journal."""
        if self._housekeeping is not None and self._housekeeping.running:
            self._housekeeping.stop()
        stopped = super().stopService()

        def close(result: object) -> object:
            if self.journal is not None:
                self.journal.close()
            self.usage.close()
            if self._log_filter is not None:
                self._log_filter.uninstall()
                self._log_filter = None
            return result

        if stopped is None:
            close(None)
            return None
        return stopped.addBoth(close)


class _LateDispatcher:
    """Lets the listener be built before the server exists (it is made at start)."""

    def __init__(self, root: HqnlsdService) -> None:
        self._root = root

    def dispatch(self, command: Any, peer: Any) -> Any:
        """Forward to the live `LicenceServer`."""
        server = self._root.server
        if server is None:  # bound (privilegedStartService) but state not yet restored
            return Err.of(Status.NOTVERIFIED, "the server is starting up; try again shortly")
        return server.dispatch(command, peer)


def build_service(config: DaemonConfig, reactor: Any) -> IService:
    """The whole daemon: root service with the client listener (and manhole) as children."""
    root = HqnlsdService(config, reactor)
    listener = strports.service(config.client_listen, root.factory, reactor=reactor)
    listener.setName("client-listener")
    listener.setServiceParent(root)
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
        manhole.setServiceParent(root)
    return root
