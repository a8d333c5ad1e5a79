"""`AdministeredDaemon`: what the admin side needs of the daemon it administers.

The admin handler and protocol are given an object of this shape (the daemon
gives `hqnlsd.daemon.adminview.AdminView`) and use nothing else of it, so
that the admin package depends on the parts it drives (engine, journal, permit
server, domains, log switches) and never on the service module that builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hqnlsd.config import DaemonConfig
    from hqnlsd.domain.runtime import DomainRuntime
    from hqnlsd.licensing.engine import Engine
    from hqnlsd.logging.switches import LogSwitches
    from hqnlsd.permits.model import HostId
    from hqnlsd.persistence.store import Journal
    from hqnlsd.server import LicenceServer, PermitSource


class PermitErrorCounter(Protocol):
    """Counts permit read errors (`hqnlsd.metrics.Metrics`)."""

    def permit_read_error(self, condition: int) -> None:
        """One permit file could not be used, for the numbered ``condition``."""


class AdministeredDaemon(Protocol):
    """The daemon as the admin commands see it (all read-only here)."""

    @property
    def reactor(self) -> Any:
        """The clock (``seconds``, ``callLater``) and, in a real daemon, ``stop``."""

    @property
    def me(self) -> HostId:
        """This host's address and unique id."""

    @property
    def config(self) -> DaemonConfig:
        """The configuration (state directory, client listener)."""

    @property
    def engine(self) -> Engine:
        """The licensing engine of this daemon's own products."""

    @property
    def journal(self) -> Journal:
        """The journal of the engine's events (built before any admin listener starts)."""

    @property
    def server(self) -> LicenceServer:
        """The permit server (built before any admin listener starts)."""

    @property
    def source(self) -> PermitSource:
        """Where permits and the hosts file are read from."""

    @property
    def domains(self) -> DomainRuntime | None:
        """The multi-host server domains (None without ``--domain-ca``)."""

    @property
    def switches(self) -> LogSwitches:
        """The live log switches (``hqn_lsa loglevel``)."""

    @property
    def metrics(self) -> PermitErrorCounter:
        """Where permit read errors are counted."""

    def reload(self) -> None:
        """Re-read the configuration file and the permits, as SIGHUP does."""
