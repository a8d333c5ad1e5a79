"""End to end: a failed start of ``twistd hqnlsd`` is one clear line and exit status 1.

Issue 11 ("start-up errors", "start-up log"): an occupied port, an address not on
this host, a state directory that is a file or cannot be created or is locked by
another running daemon, and a bad option each give ONE line naming the option,
the path or address and the real cause, no Python traceback, and exit status 1;
the same when daemonised (``twistd hqnlsd`` without ``-n``), where the message
must reach the terminal whole. The start-up log says what is served, what is
read but not served and why, and where each listener is, without object ids.

Binding is local only: 192.0.2.1 (TEST-NET-1) is never sent any traffic, the
daemon only fails to bind it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.permits.model import HostId
from tests.daemons import (
    EXIT_TIMEOUT,
    Daemon,
    DaemonHarness,
    daemon_environment,
    free_port,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def failed_start(daemon: Daemon) -> list[str]:
    """Start ``daemon``, insist it exits with status 1; the lines it wrote."""
    daemon.start()
    code = daemon.wait_exit()
    text = daemon.log_text()
    # The harness's own header line is not the daemon's.
    lines = [line for line in text.splitlines() if not line.startswith("==== start")]
    assert code == 1, f"exit status {code}, expected 1\n{text}"
    assert "Traceback" not in text, text
    return lines


def the_one_line(lines: list[str], *parts: str) -> str:
    """The single line saying the start failed; it must contain every one of ``parts``."""
    failures = [line for line in lines if "cannot start" in line]
    assert len(failures) == 1, "\n".join(lines)
    line = failures[0]
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    return line


def test_occupied_port(daemons: DaemonHarness) -> None:
    """A port another program listens on: the address, --port and "in use", status 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        lines = failed_start(daemons.daemon("occupied", port=port))
    the_one_line(lines, f"127.0.0.1:{port}", "--port", "already in use")


def test_address_not_on_this_host(daemons: DaemonHarness) -> None:
    """--address 192.0.2.1 (on no interface here): says so, not "another program holds it"."""
    daemon = daemons.daemon("elsewhere")
    daemon.address = "192.0.2.1"
    line = the_one_line(
        failed_start(daemon), "192.0.2.1", "--address", "not an address of this host"
    )
    assert "another program" not in line


def test_state_dir_is_a_file(daemons: DaemonHarness, tmp_path: Path) -> None:
    """--state-dir naming a file: the option, the path, "not a directory"."""
    afile = tmp_path / "a-file"
    afile.write_text("not a directory\n")
    daemon = daemons.daemon("statefile")
    daemon.state_dir = afile
    the_one_line(failed_start(daemon), "--state-dir", str(afile), "not a directory")


def test_state_dir_cannot_be_created(daemons: DaemonHarness, tmp_path: Path) -> None:
    """--state-dir under a file cannot be created (root may create anything else)."""
    afile = tmp_path / "a-file"
    afile.write_text("not a directory\n")
    daemon = daemons.daemon("statesub")
    daemon.state_dir = afile / "state"
    the_one_line(failed_start(daemon), "--state-dir", str(afile / "state"), "cannot create")


def test_state_dir_locked_by_another_daemon(daemons: DaemonHarness) -> None:
    """A second daemon on the first's state directory: names it and the other daemon."""
    first = daemons.daemon("first").start_and_wait()
    second = daemons.daemon("second")
    second.state_dir = first.state_dir
    line = the_one_line(
        failed_start(second), "--state-dir", str(first.state_dir), "another running hqnlsd"
    )
    assert "0.0.0.0" not in line and "b'" not in line and "--port" not in line
    assert first.running


def test_bad_option(daemons: DaemonHarness) -> None:
    """An option error: the reason first, at most a pointer to --help, no usage text."""
    daemon = daemons.daemon("badoption", extra_args=["--peer-port", "0"])
    lines = failed_start(daemon)
    assert len(lines) <= 2, "\n".join(lines)
    assert "--peer-port 0" in lines[0]
    assert "Usage" not in "\n".join(lines)
    assert all("--help" in line for line in lines[1:])


def test_unknown_option(daemons: DaemonHarness) -> None:
    """An option hqnlsd does not know: named on the first line, no usage text."""
    lines = failed_start(daemons.daemon("unknown", extra_args=["--no-such-option"]))
    assert len(lines) <= 2, "\n".join(lines)
    assert "--no-such-option" in lines[0]


def daemonised(daemon: Daemon, pidfile: Path) -> subprocess.CompletedProcess[str]:
    """Run ``daemon``'s command line without ``-n`` (twistd forks); what it printed.

    If it did start (the test is failing), the daemon is stopped through its pid file.
    """
    argv = daemon.argv
    argv[argv.index("-n")] = f"--logfile={daemon.workdir / 'daemon.log'}"
    argv[argv.index("--pidfile=")] = f"--pidfile={pidfile}"
    daemon.workdir.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            argv,
            cwd=daemon.workdir,
            env=daemon_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def test_daemonised_failure_is_reported_whole(daemons: DaemonHarness, tmp_path: Path) -> None:
    """Daemonised, the parent prints the whole line (not cut at 100 bytes), status 1."""
    first = daemons.daemon("holder").start_and_wait()
    second = daemons.daemon("daemonised")
    second.state_dir = first.state_dir
    result = daemonised(second, tmp_path / "daemonised.pid")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    line = the_one_line(
        output.splitlines(), "--state-dir", str(first.state_dir), "another running hqnlsd"
    )
    assert len(line.encode()) > 100, line


def test_startup_log(daemons: DaemonHarness) -> None:
    """The log says what is served, what is read but not served and why, and where
    each listener is; nothing with an object id; a daemon in no permit says so."""
    me = daemons.host(1)
    today = datetime.date.today()
    other = HostId(ipaddress.IPv4Address("127.0.0.9"), me.unique_id)
    stranger = HostId(me.address, me.unique_id ^ 0x5A5A5A5A)
    daemons.write_permit(
        make_permit(
            [me],
            [
                product_permit("Served", publisher=PUBLISHER),
                product_permit(
                    "Old", publisher=PUBLISHER, expiry=today - datetime.timedelta(days=10)
                ),
                product_permit(
                    "Future", publisher=PUBLISHER, start=today + datetime.timedelta(days=10)
                ),
            ],
            number=1,
        ),
        "mine-hqn.permit",
    )
    daemons.write_permit(
        make_permit([other], [product_permit("Remote", publisher=PUBLISHER)], number=2),
        "other-hqn.permit",
    )
    daemons.write_permit(
        make_permit([stranger], [product_permit("Stranger", publisher=PUBLISHER)], number=3),
        "stranger-hqn.permit",
    )
    metrics_port = free_port("127.0.0.1")
    daemon = daemons.daemon("log", extra_args=["--metrics", f"tcp:{metrics_port}"])
    lonely = daemons.daemon("lonely", n=2)
    daemons.start_all(daemon, lonely)
    text = daemon.wait_for_log(lambda t: "listening on" in t and "product(s)" in t)
    assert re.search(r"serving Test Publisher Served 1\.0 from \S+mine-hqn\.permit", text), text
    assert re.search(r"not serving Test Publisher Old 1\.0 .*expired on", text), text
    assert re.search(r"not serving Test Publisher Future 1\.0 .*not yet started", text), text
    assert re.search(
        r"not serving Test Publisher Remote 1\.0 .*127\.0\.0\.1 is not in .*127\.0\.0\.9", text
    ), text
    assert re.search(r"not serving Test Publisher Stranger 1\.0 .*unique id", text), text
    assert f"client listener on 127.0.0.1:{daemon.port}" in text, text
    assert f"metrics listener on 127.0.0.1:{metrics_port}" in text, text
    assert "admin-socket" in text or "admin socket" in text, text
    assert "serving 1 product(s)" in text, text
    assert "4 read but not served" in text, text
    assert not re.search(r"object at 0x|Starting factory|Stopping factory", text), text
    lonely_text = lonely.wait_for_log(lambda t: "product(s)" in t)
    assert re.search(r"serving 0 product\(s\).*127\.0\.0\.2 is in no permit", lonely_text), (
        lonely_text
    )



def test_damaged_state_database(daemons: DaemonHarness) -> None:
    """A state database that is not one: the path and "damaged", status 1."""
    daemon = daemons.daemon("damaged")
    daemon.state_dir.mkdir(parents=True)
    database = daemon.state_dir / "hqnlsd.sqlite3"
    database.write_bytes(b"this is not an SQLite database\n" * 100)
    the_one_line(failed_start(daemon), "--state-dir", str(database), "damaged")


def test_admin_socket_of_another_daemon(daemons: DaemonHarness) -> None:
    """--admin-socket naming a running daemon's socket: names the option and the daemon."""
    first = daemons.daemon("owner").start_and_wait()
    second = daemons.daemon(
        "intruder", extra_args=["--admin-socket", str(first.state_dir / "admin.sock")]
    )
    line = the_one_line(failed_start(second), "--admin-socket", "another running hqnlsd")
    assert f"pid {first.pid}" in line
    assert first.running


def test_failure_after_the_fork_is_one_line(daemons: DaemonHarness, tmp_path: Path) -> None:
    """A listener that fails only at the real bind (a UNIX socket in a missing
    directory, not checked before the fork): logged as one line, status 1, no traceback."""
    path = tmp_path / "no-such-dir" / "client.sock"
    # The later --port wins over the harness's own.
    daemon = daemons.daemon("late", extra_args=["--port", f"unix:{path}"])
    line = the_one_line(failed_start(daemon), str(path), "--port", "No such file or directory")
    assert "critical" in line  # from the log, after twistd started logging


def test_traceback_on_request(daemons: DaemonHarness, tmp_path: Path) -> None:
    """HQNLSD_TRACEBACK=1 (the documented debugging switch) shows the traceback too."""
    afile = tmp_path / "a-file"
    afile.write_text("not a directory\n")
    daemon = daemons.daemon("debug")
    daemon.state_dir = afile
    result = subprocess.run(
        daemon.argv,
        cwd=tmp_path,
        env={**daemon_environment(), "HQNLSD_TRACEBACK": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "StartupError" in result.stderr and str(afile) in result.stderr


def test_daemonised_failure_after_the_fork_is_told_whole(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """Daemonised, a failure only the real start finds still reaches the terminal whole
    (before twistd's own, cut, report of it), status 1; a started daemon lets go of it."""
    path = tmp_path / ("a-directory-that-does-not-exist-" * 3) / "client.sock"
    daemon = daemons.daemon("late-daemon", extra_args=["--port", f"unix:{path}"])
    result = daemonised(daemon, tmp_path / "late.pid")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    line = the_one_line(output.splitlines(), str(path), "--port", "No such file or directory")
    assert line.startswith("hqnlsd: cannot start: ")
    assert len(line.encode()) > 100, line


def test_daemonised_start_lets_go_of_the_terminal(daemons: DaemonHarness, tmp_path: Path) -> None:
    """A daemonised start that succeeds returns (status 0) with its output pipes closed:
    the daemon keeps no copy of the terminal (subprocess.run would wait for it)."""
    daemon = daemons.daemon("good-daemon")
    pidfile = tmp_path / "good.pid"
    argv = daemon.argv
    argv[argv.index("-n")] = f"--logfile={daemon.workdir / 'daemon.log'}"
    argv[argv.index("--pidfile=")] = f"--pidfile={pidfile}"
    daemon.workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            argv,
            cwd=daemon.workdir,
            env=daemon_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        with daemon.client() as client:
            client.ping()
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
