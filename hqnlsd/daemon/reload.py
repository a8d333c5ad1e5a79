"""`ReloadService`: SIGHUP (and ``hqn_lsa reinit``'s reload) re-reads the
configuration file and the permits of a running daemon.

It holds the daemon's current configuration: a reload takes the permit path,
publisher keys, hosts file and server keys from the file at once; what needs a
restart (`RESTART_ONLY`) is only named in the log.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from hqnlsd.config import ConfigError, DaemonConfig
from hqnlsd.configfile import config_from
from hqnlsd.daemon.core import LicenceCore
from hqnlsd.sdnotify import SystemdNotifier

#: Configuration that a SIGHUP cannot change in a running daemon.
RESTART_ONLY = (
    "address",
    "client_listen",
    "state_dir",
    "manhole_listen",
    "manhole_keys",
    "metrics_listen",
    "web_listen",
    "web_tls",
    "domain_ca",
    "domain_cert",
    "domain_key",
    "peer_port",
    "peer_dial_port",
    "peer_source_check",
    "domain_timers",
    "limits",
)

#: The namespace these lines have always had in the log.
_log = Logger(namespace="hqnlsd.service.HqnlsdService")


class ReloadService(Service):
    """Re-reads the configuration file and the permits on SIGHUP (see the module)."""

    def __init__(
        self,
        config: DaemonConfig,
        core: LicenceCore,
        notifier: SystemdNotifier,
        reactor: Any,
    ) -> None:
        #: The configuration in force: the start's, with what reloads have changed.
        self.config = config
        self._core = core
        self._notifier = notifier
        self._reactor = reactor

    def startService(self) -> None:
        """Handle SIGHUP from now on (unless the configuration says not to)."""
        if self.config.handle_sighup:
            self._install_sighup()
        super().startService()

    def reload(self) -> None:
        """SIGHUP: re-read the config file (if any) and the permits.

        Licences of products whose permits did not change are kept (unlike
        `reinit`). The permit path, publisher keys and hosts file take effect at
        once; a changed listener, address or state directory needs a restart, and
        the log says so. A config file with an error changes nothing.
        """
        if not self._core.running:
            return
        self._notifier.reloading()
        try:
            if self.config.command_line.get("config"):
                self._reload_config()
            _log.info("re-reading permits (SIGHUP)")
            self._core.load_permits()
            self._core.log_summary()
        except Exception:
            _log.failure("reload failed; still serving as before")
        finally:
            self._notifier.ready()

    def _reload_config(self) -> None:
        try:
            fresh = config_from(self.config.command_line)
        except ConfigError as error:
            _log.error("configuration not reloaded: {error}", error=str(error))
            return
        needs_restart = [
            name for name in RESTART_ONLY if getattr(fresh, name) != getattr(self.config, name)
        ]
        if needs_restart:
            _log.warn(
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
        source = self._core.source
        source.permit_dirs = fresh.permit_dirs
        source.hosts_file = fresh.hosts_file
        source.publisher_keys = fresh.publisher_keys
        source.server_keys = fresh.server_keys
        _log.info("configuration re-read from {path}", path=str(fresh.command_line["config"]))

    def _install_sighup(self) -> None:
        def on_hup(signum: int, frame: object) -> None:
            self._reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_hup)
