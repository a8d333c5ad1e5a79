"""The filter under twistd's own logging: a real twistd process, and the syslog observer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LegacyLogObserverWrapper, Logger, LogPublisher
from twisted.python.syslog import SyslogObserver

from hqnlsd.logging.observer import LOG_ERR, LOG_INFO, LOG_WARNING, install_switch_filter
from hqnlsd.logging.observer import log_licence as emit_licence
from hqnlsd.logging.switches import STARTUP, SWITCHES_FILE, LogSwitches

REPO = Path(__file__).resolve().parents[2]

TAC = """
from pathlib import Path

from twisted.application import service
from twisted.logger import Logger

from hqnlsd.logging.observer import LogFilterService, log_licence
from hqnlsd.logging.switches import LogSwitches

application = service.Application("logging-probe")
switches = LogSwitches.load(Path({state!r}))
LogFilterService(switches).setServiceParent(application)


class Probe(service.Service):
    def startService(self):
        log = Logger(namespace="probe")
        log.info("probe: plain info")
        log.warn("probe: a warning")
        log.info("probe: uid-tagged", log_switch="UID")
        log_licence(
            log, "granted", publisher="Harlequin", product="LispWorks", version="8.0",
            indices="1", licence_type="floating", user="alice", uid=1000, host="alpha",
            address="10.0.0.1", pid=42, handle="h1",
        )
        from twisted.internet import reactor

        reactor.callLater(0, reactor.stop)


Probe().setServiceParent(application)
"""


def run_twistd(tmp_path: Path) -> str:
    """Run the probe application under ``twistd -n``; its log file's text."""
    tac = tmp_path / "probe.tac"
    tac.write_text(TAC.format(state=str(tmp_path)))
    logfile = tmp_path / "twistd.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            f"--logfile={logfile}",
            "-y",
            str(tac),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return logfile.read_text()


@pytest.mark.e2e
def test_twistd_log_obeys_persisted_switches(tmp_path: Path) -> None:
    """Under twistd the filter wraps the log file observer; persisted switches apply."""
    LogSwitches.load(tmp_path).apply("minimal")  # WARNING ADMIN LICENSE HOSTADDR UID
    text = run_twistd(tmp_path)
    assert "probe: a warning" in text
    assert "probe: uid-tagged" in text
    assert "probe: plain info" not in text  # INFO is off
    assert "granted LispWorks licence 1 (floating) to uid 1000 [10.0.0.1] pid 42" in text
    assert "alice" not in text and "alpha" not in text and "Harlequin" not in text


@pytest.mark.e2e
def test_twistd_startup_state(tmp_path: Path) -> None:
    """Without a switches file the daemon logs with DEFAULT + EXTERR."""
    text = run_twistd(tmp_path)
    assert not (tmp_path / SWITCHES_FILE).exists()
    assert "probe: plain info" in text
    assert "probe: uid-tagged" not in text
    assert "to user alice on alpha pid 42, handle h1" in text
    assert "10.0.0.1" not in text


class RecordingSyslog(SyslogObserver):
    """twistd's syslog observer, recording instead of calling syslog(3)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        super().__init__("hqnlsd")

    def openlog(self, *args: Any) -> None:
        """Do not open the system log."""

    def syslog(self, priority: int, message: str) -> None:
        """Record what would have been sent."""
        self.sent.append((priority, message))


def test_syslog_gets_warning_priority_and_trimmed_lines() -> None:
    """Through ``--syslog``'s observer: LOG_WARNING for warnings, trimmed licence lines."""
    syslog = RecordingSyslog()
    # twistd wraps the legacy observer exactly so (twisted.application.app.AppLogger).
    legacy: Any = syslog.emit
    publisher = LogPublisher(LegacyLogObserverWrapper(legacy))
    install_switch_filter(LogSwitches(STARTUP), publisher)
    log = Logger(namespace="probe", observer=publisher)
    log.warn("disk nearly full")
    log.error("permit error")
    log.info("started")
    log.info("domain detail", log_switch="DOMAIN")
    emit_licence(log, "granted", product="LispWorks", user="alice", uid=7, pid=1, handle="h")
    priorities = [priority for priority, _ in syslog.sent]
    assert priorities == [LOG_WARNING, LOG_ERR, LOG_INFO, LOG_INFO]
    assert syslog.sent[-1][1].endswith("granted LispWorks to user alice pid 1, handle h")
