"""`LicenceCore`: the licensing engine, its journal and the `LicenceServer`.

Everything is made when the daemon is built, so the client listener's factory is
given its dispatcher from the start; the journal is made unopened. On start (the
first service of the tree to start, before any listener) the core opens the
journal in the state directory, restores the engine from it, and reads the
permits, so no client is ever answered from a state that is not yet restored.
The journal is opened in ``startService``, not before: twistd has shed its
privileges by then, so the database files belong to the daemon's user. (The
listeners bind earlier, in ``privilegedStartService``, but serve nothing before
``startService``: twistd starts the service before the reactor runs.)

On stop, once every listener has stopped (`hqnlsd.service.HqnlsdService`), it
flushes and closes the journal and the usage report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from hqnlsd.config import DaemonConfig
from hqnlsd.daemon.startup import StartupError, state_dir_locked
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event, Granted, Released, Revoked
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.usage import UsageReport
from hqnlsd.metrics import Metrics
from hqnlsd.permits.model import HostId
from hqnlsd.persistence.store import DATABASE_NAME, Journal, JournalError, writer_for
from hqnlsd.protocols.replies import Err, Reply
from hqnlsd.server import LicenceServer, PermitSource

if TYPE_CHECKING:
    from hqnlsd.domain.runtime import DomainRuntime

#: How often tombstones of taken-back licences are purged (seconds).
HOUSEKEEPING_SECONDS = 60.0

#: The daemon's own lines keep the namespace they have always had in the log,
#: whichever part of the service tree writes them.
_log = Logger(namespace="hqnlsd.service.HqnlsdService")


def count_events(metrics: Metrics, events: Sequence[Event]) -> None:
    """Journal listener: grant, release and reclaim counters from the engine's events."""
    for event in events:
        if isinstance(event, Granted):
            metrics.granted()
        elif isinstance(event, Released):
            metrics.released()
        elif isinstance(event, Revoked):
            metrics.reclaimed(event.reason)


class TimedDispatcher:
    """Between the client listener and the `LicenceServer`: every reply's latency
    and every denial is measured here for the metrics."""

    def __init__(self, server: LicenceServer, clock: Any, metrics: Metrics) -> None:
        self._server = server
        self._clock = clock
        self._metrics = metrics

    def dispatch(self, command: Any, peer: Any) -> Any:
        """Forward to the `LicenceServer`, timing the answer for the metrics."""
        started = self._clock.seconds()
        reply = self._server.dispatch(command, peer)
        if isinstance(reply, Deferred):
            return reply.addCallback(self._measured, command.verb, started)
        return self._measured(reply, command.verb, started)

    def _measured(self, reply: Reply, verb: str, started: float) -> Reply:
        self._metrics.observe_request(verb, self._clock.seconds() - started)
        if isinstance(reply, Err):
            self._metrics.denied(reply.status)
        return reply


class LicenceCore(Service):
    """The engine, the journal and the permit server of one daemon (see the module)."""

    def __init__(
        self,
        config: DaemonConfig,
        reactor: Any,
        *,
        me: HostId,
        feed: LicenceFeed,
        usage: UsageReport,
        metrics: Metrics,
        domains: DomainRuntime | None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.me = me
        self.feed = feed
        self.usage = usage
        self.metrics = metrics
        self.domains = domains
        self.engine = Engine(reactor)
        self.source = PermitSource(
            permit_dirs=config.permit_dirs,
            environ=dict(config.environ),
            publisher_keys=config.publisher_keys,
            hosts_file=config.hosts_file,
            me=me,
            server_keys=config.server_keys,
        )
        #: Opened by `startService` (see the module docstring).
        #: Its commits run on a thread of their own (off the reactor) with a real reactor.
        self.journal = Journal(
            config.state_dir / DATABASE_NAME, reactor, writer=writer_for(reactor)
        )
        self.server = LicenceServer(
            self.engine, self.journal, self.source, feed, domains=domains,
            clock=reactor, log_interval=config.limits.log_interval,
            denial_burst=config.limits.denials_logged,
        )
        #: What the client listener's factory dispatches to.
        self.dispatcher = TimedDispatcher(self.server, reactor, metrics)
        self._housekeeping: LoopingCall | None = None

    def startService(self) -> None:
        """Open the journal, restore the engine, read the permits; StartupError if the
        state cannot be used."""
        state_dir = self.config.state_dir
        try:
            self.journal.open()
            report = self.journal.restore(self.engine)
        except JournalError as error:
            reason = f"--state-dir {state_dir}: {error}"
            if "locked" in str(error):
                reason = state_dir_locked(state_dir)
            raise StartupError(reason) from None
        _log.info(
            "state restored from {path}: {held} licence(s) held "
            "(snapshot: {snapshot}, {replayed} event(s) replayed)",
            path=str(self.journal.path),
            held=self.engine.held_count(),
            snapshot=report.had_snapshot,
            replayed=report.replayed,
        )
        self.feed.seed(self.engine)
        self.journal.listeners.append(self.feed.observe)
        self.journal.listeners.append(lambda events: count_events(self.metrics, events))
        # Holders could not UPDATE while we were down: count them as updated now.
        # (Nothing waits on it; the journal logs and retries a failed commit itself.)
        self.journal.commit(self.engine.resume().events).addErrback(lambda failure: None)
        self.load_permits()
        self.log_summary()
        self._housekeeping = LoopingCall(self._housekeep)
        self._housekeeping.clock = self.reactor
        self._housekeeping.start(HOUSEKEEPING_SECONDS, now=False)
        super().startService()

    def stopService(self) -> None:
        """Flush and close the journal; the denial summary and the usage report last."""
        super().stopService()
        if self._housekeeping is not None and self._housekeeping.running:
            self._housekeeping.stop()
        self.journal.close()
        self.server.denials.stop()  # its summary records before the report closes
        self.usage.close()
        self.server.messages.stop()

    def load_permits(self) -> None:
        """Read the permits into the engine; count read errors for the metrics."""
        committed = self.server.load_permits()
        # The journal logs and retries a failed commit itself; nothing waits on this.
        committed.addErrback(lambda failure: None)
        for error in self.server.catalogue.errors:
            self.metrics.permit_read_error(int(error.condition))

    def log_summary(self) -> None:
        """One line: what this daemon serves, what it read but does not, and a hint
        when it serves nothing because no permit names its address."""
        catalogue = self.server.catalogue
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
        _log.info(
            "hqnlsd on {address} (unique id 0x{uid:08x}) serving {count} product(s), "
            "{unserved} read but not served{why}",
            address=str(self.me.address),
            uid=self.me.unique_id,
            count=self.server.serving_now,
            unserved=self.server.read_not_served,
            why=why,
        )

    def _housekeep(self) -> None:
        """Periodic work; logs its own errors so one failure never stops the timer."""
        try:
            self.journal.commit(self.engine.expire().events).addErrback(
                lambda failure: _log.failure(
                    "housekeeping: journal commit failed (the events stay queued)", failure
                )
            )
        except Exception:
            _log.failure("housekeeping failed")
        if self.domains is not None:
            self.domains.housekeep()  # logs its own errors
