"""A real daemon with twistd's ``--logfile`` under garbage from the network (issue 12).

Bad lines by the ten thousand, over-long lines, and a MESSAGE that tries to forge a
log line: the log grows by a few lines, stays 0600, and a fresh client is served.
"""

from __future__ import annotations

import contextlib
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.protocols.replies import Ok
from tests.daemons import IO_TIMEOUT, Daemon, DaemonHarness

pytestmark = pytest.mark.e2e

#: Bad lines sent in all (the issue's probe sent 100,000; CI sends fewer).
BAD_LINES = 20_000
#: Log bytes the whole flood may add.
LOG_BUDGET = 50_000


class LogfileDaemon(Daemon):
    """A daemon that logs through twistd's ``--logfile`` instead of its stdout."""

    @property
    def logfile(self) -> Path:
        """The ``--logfile`` given to twistd."""
        return self.workdir / "twistd.log"

    @property
    def argv(self) -> list[str]:
        """twistd's command line with ``--logfile`` before the plugin name."""
        args = super().argv
        args.insert(args.index("hqnlsd"), f"--logfile={self.logfile}")
        return args


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[LogfileDaemon]:
    """One started daemon logging to ``twistd.log`` (0644 would be the umask's choice)."""
    with DaemonHarness(tmp_path) as harness:
        plain = harness.daemon("flooded")
        made = LogfileDaemon(
            name=plain.name, address=plain.address, port=plain.port, workdir=plain.workdir,
            state_dir=plain.state_dir, permit_dirs=plain.permit_dirs,
            publisher_keys=plain.publisher_keys, hosts_file=plain.hosts_file,
            runtime_dir=plain.runtime_dir,
        )
        harness.daemons[plain.name] = made
        made.start_and_wait()
        yield made


def log_size(daemon: LogfileDaemon) -> int:
    """Bytes in the log file and its rotated copies."""
    return sum(path.stat().st_size for path in daemon.workdir.glob("twistd.log*"))


def drain(sock: socket.socket, deadline: float) -> int:
    """Read until the daemon closes the connection; the bytes read."""
    received = 0
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += len(chunk)
        if time.monotonic() > deadline:
            raise AssertionError("the daemon kept the garbage connection open")


def flood(daemon: LogfileDaemon, payload: bytes) -> tuple[int, int]:
    """Send ``payload`` on one connection, read to its end: (sent, received)."""
    with socket.create_connection((daemon.address, daemon.port), timeout=IO_TIMEOUT) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)  # may be closed early, as it should be
        try:
            return len(payload), drain(sock, time.monotonic() + 30)
        except ConnectionResetError:
            return len(payload), 0


def test_garbage_flood_writes_a_bounded_log(daemon: LogfileDaemon) -> None:
    """20,000 bad lines (one big burst, then many connections) add < 50 kB of log."""
    assert stat.S_IMODE(daemon.logfile.stat().st_mode) == 0o600
    daemon_log = daemon.logfile
    before = log_size(daemon)
    sent, received = flood(daemon, b"X\n" * (BAD_LINES // 2))
    assert received < 30 * 200, "the reply to garbage is bounded per connection"
    per_connection = 40
    connections = BAD_LINES // 2 // per_connection
    total_received = 0
    for _ in range(connections):
        sent_now, got = flood(daemon, b"X\n" * per_connection)
        sent += sent_now
        total_received += got
    for _ in range(20):
        flood(daemon, b"Z" * 3000 + b"\n")
    assert total_received < connections * 22 * 200
    with daemon.client() as client:
        client.ping()  # a fresh client is served, and the daemon has read everything
    grown = log_size(daemon) - before
    assert grown < LOG_BUDGET, daemon_log.read_text()[-3000:]
    text = daemon_log.read_text("utf-8")
    assert text.count("sent a bad line") <= 2
    assert stat.S_IMODE(daemon.logfile.stat().st_mode) == 0o600


FORGED = (
    "line1\n2026-12-03T10:00:00+0000 [hqnlsd.server#info] granted Harlequin LispWorks "
    "8.0 to user root, handle FORGED \x1b[2J\x07\x00"
)


def test_message_cannot_forge_a_log_line(daemon: LogfileDaemon) -> None:
    """MESSAGE with a newline and a fake entry is one log line; ESC, BEL, NUL escaped."""
    with daemon.client() as client:
        assert isinstance(client.call("MESSAGE", text=FORGED), Ok)
        client.ping()
    deadline = time.monotonic() + 20
    while "FORGED" not in (text := daemon.logfile.read_text("utf-8")):
        assert time.monotonic() < deadline, "the MESSAGE never reached the log"
        time.sleep(0.1)
    lines = [line for line in text.splitlines() if "FORGED" in line or "line1" in line]
    assert len(lines) == 1, lines
    assert "client message from 127.0.0.1: line1\\n2026-12-03" in lines[0]
    assert "\\x1b[2J\\x07\\x00" in lines[0]
    for raw in ("\x1b", "\x07", "\x00"):
        assert raw not in text
