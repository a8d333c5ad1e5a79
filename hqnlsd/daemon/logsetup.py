"""`LogSetup`: the log switch filter in front of twistd's observers, for the
daemon's lifetime (`hqnlsd.logging.observer`), and its log files capped.

The first service of the tree to start, so that every other start-up line passes
through the filter; the last to stop.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.logger import Logger

from hqnlsd.logging.files import MAX_ROTATED_FILES, cap_log_files
from hqnlsd.logging.observer import FilterInstallation, install_switch_filter
from hqnlsd.logging.switches import LogSwitches

#: The namespace these lines have always had in the log.
_log = Logger(namespace="hqnlsd.service.HqnlsdService")


class LogSetup(Service):
    """Installs the switch filter at start (if ``enabled``) and removes it at stop."""

    def __init__(self, switches: LogSwitches, *, enabled: bool) -> None:
        self._switches = switches
        self._enabled = enabled
        self._installed: FilterInstallation | None = None

    def startService(self) -> None:
        """Install the filter; say how each log file is kept."""
        if self._enabled:
            # Before anything else logs; twistd has registered its observer by now.
            self._installed = install_switch_filter(self._switches)
            for logfile in cap_log_files():
                _log.info(
                    "log file {path}: mode 0600, rotated at {size} bytes, "
                    "{kept} old files kept",
                    path=logfile.path, size=getattr(logfile, "rotateLength", None),
                    kept=MAX_ROTATED_FILES,
                )
        super().startService()

    def stopService(self) -> None:
        """Remove the filter."""
        super().stopService()
        if self._installed is not None:
            self._installed.uninstall()
            self._installed = None
