"""`AdminView`: the daemon as its admin handler is given it.

An `hqnlsd.admin.daemon.AdministeredDaemon` made of the parts the admin commands
use (the licence core, the reload service, the log switches, the metrics) and
nothing else of the service tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hqnlsd.config import DaemonConfig
from hqnlsd.daemon.core import LicenceCore
from hqnlsd.daemon.reload import ReloadService
from hqnlsd.licensing.engine import Engine
from hqnlsd.logging.switches import LogSwitches
from hqnlsd.metrics import Metrics
from hqnlsd.permits.model import HostId
from hqnlsd.persistence.store import Journal
from hqnlsd.server import LicenceServer, PermitSource

if TYPE_CHECKING:
    from hqnlsd.domain.runtime import DomainRuntime


class AdminView:
    """What the admin commands see of the daemon (`AdministeredDaemon`)."""

    def __init__(
        self,
        core: LicenceCore,
        reloader: ReloadService,
        *,
        switches: LogSwitches,
        metrics: Metrics,
    ) -> None:
        self._core = core
        self._reloader = reloader
        self._switches = switches
        self._metrics = metrics

    @property
    def reactor(self) -> Any:
        """The daemon's reactor."""
        return self._core.reactor

    @property
    def me(self) -> HostId:
        """This host's address and unique id."""
        return self._core.me

    @property
    def config(self) -> DaemonConfig:
        """The configuration in force (after any reload)."""
        return self._reloader.config

    @property
    def engine(self) -> Engine:
        """The licensing engine of this daemon's own products."""
        return self._core.engine

    @property
    def journal(self) -> Journal:
        """The engine's journal."""
        return self._core.journal

    @property
    def server(self) -> LicenceServer:
        """The permit server."""
        return self._core.server

    @property
    def source(self) -> PermitSource:
        """Where permits and the hosts file are read from."""
        return self._core.source

    @property
    def domains(self) -> DomainRuntime | None:
        """The multi-host server domains (None without ``--domain-ca``)."""
        return self._core.domains

    @property
    def switches(self) -> LogSwitches:
        """The live log switches."""
        return self._switches

    @property
    def metrics(self) -> Metrics:
        """Where permit read errors are counted."""
        return self._metrics

    def reload(self) -> None:
        """Re-read the configuration file and the permits, as SIGHUP does."""
        self._reloader.reload()
