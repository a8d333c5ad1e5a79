"""Connection limits of a real daemon (`hqnlsd.limits`): floods of idle connections
under a low descriptor limit, silent connections on every listener, and a real
client that outlives the idle timeout.

The daemons are real ``twistd hqnlsd`` processes on loopback; the low descriptor
limit is set in the daemon's process before twistd starts (``RLIMIT_NOFILE``).
Floods come from several loopback source addresses (127.0.0.2...), so the caps
per address and in all are both exercised. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hqnlsd.client.api import Retry
from hqnlsd.client.blocking import BlockingLicenceClient
from hqnlsd.protocols import client_side
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    IO_TIMEOUT,
    REPO_ROOT,
    Daemon,
    DaemonHarness,
    free_port,
    loopback,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e

#: The daemons' descriptor limit in the flood tests.
NOFILE = 512
#: Idle connections of a flood.
FLOOD = 700
#: Bound of every wait (seconds): generous for a busy machine.
WAIT = 20.0
#: Bound of every tool run (seconds).
RUN_TIMEOUT = 60.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


class LowLimitDaemon(Daemon):
    """A daemon whose process starts with RLIMIT_NOFILE = NOFILE (soft and hard)."""

    @property
    def argv(self) -> list[str]:
        """twistd's command line, with the limit set first in the same process."""
        args = super().argv
        assert args[1] == "-c"
        args[2] = (
            f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE}))\n"
            + args[2]
        )
        return args


def low_limit_daemon(harness: DaemonHarness, name: str, extra_args: list[str]) -> Daemon:
    """A LowLimitDaemon on 127.0.0.1, registered with the harness (killed at the end)."""
    address = loopback(1)
    workdir = harness.root / name
    daemon = LowLimitDaemon(
        name=name,
        address=address,
        port=free_port(address),
        workdir=workdir,
        state_dir=workdir / "state",
        permit_dirs=(harness.permit_dir,),
        publisher_keys=harness.publisher.keys_dir,
        hosts_file=harness.hosts_file,
        extra_args=extra_args,
        runtime_dir=harness.runtime_dir,
    )
    harness.daemons[name] = daemon
    return daemon


def open_flood(port: int, count: int, sources: int) -> list[socket.socket]:
    """``count`` idle connections to 127.0.0.1:port from 127.0.0.2... (``sources``
    addresses, round robin); those that cannot connect at all are left out."""
    opened: list[socket.socket] = []
    for n in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.bind((loopback(2 + n % sources), 0))
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        opened.append(sock)
    return opened


def closed_by_server(sock: socket.socket) -> bool:
    """Has the server closed ``sock`` (EOF or reset), reading what it sent first?"""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_until(what: str, condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)


def request_from(source: str, port: int, pid: int) -> Ok | Err:
    """One REQUEST of Widget on a fresh connection from ``source``."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=IO_TIMEOUT, source_address=(source, 0)
    ) as s:
        s.sendall(
            client_side.format_request(
                "REQUEST",
                publisher="Test Publisher",
                product="Widget",
                version="1.0",
                user="fresh",
                host="box",
                pid=pid,
            )
        )
        reader = s.makefile("rb")
        line = reader.readline()
    return client_side.parse_reply_line(line.decode().rstrip("\r\n"))


def local_lsa(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """hqn_lsa on the daemon's local admin socket (the state directory's)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HQN_LSA_HISTORY": "/dev/null"}
    env.pop("HQN_LSA_SOCKET", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hqnlsd.tools.lsa",
            "--hosts",
            str(daemon.hosts_file),
            "--socket",
            str(daemon.state_dir / "admin.sock"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_idle_flood_from_a_few_addresses_leaves_clients_and_admins_served(
    daemons: DaemonHarness,
) -> None:
    """700 idle connections from 5 addresses with 512 descriptors (default limits): the
    cap per address refuses most at once, a fresh client from another address gets a
    licence and local hqn_lsa works; the daemon never runs out of descriptors."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Widget")]))
    daemon = low_limit_daemon(daemons, "flooded", []).start_and_wait()
    flood = open_flood(daemon.port, FLOOD, sources=5)
    try:
        assert len(flood) > NOFILE  # more than the daemon could ever hold
        granted: list[Ok | Err] = []

        def fresh_client_served() -> bool:
            with contextlib.suppress(OSError, ValueError):
                granted.append(request_from(loopback(20), daemon.port, 4242))
            return bool(granted) and isinstance(granted[-1], Ok)

        wait_until("a fresh client from 127.0.0.20 gets a licence", fresh_client_served)
        done = local_lsa(daemon, "-sinfo")
        assert done.returncode == 0, done.stdout + done.stderr
        assert daemon.running
        closed = sum(closed_by_server(sock) for sock in flood)
        assert closed >= len(flood) - 5 * 64, closed  # at most 64 per address held
    finally:
        for sock in flood:
            sock.close()
    assert "Too many open files" not in daemon.log_text()


def test_global_cap_leaves_room_for_admins(daemons: DaemonHarness, tmp_path: Path) -> None:
    """No cap per address: 700 idle connections from 10 addresses with 512 descriptors
    reach the global cap; more are refused with one ERR line, never by a failing
    accept(): local hqn_lsa still works, and a client gets in once the flood is gone."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Widget")]))
    config = tmp_path / "limits.toml"
    config.write_text("[limits]\nclient-per-source = 0\n")
    daemon = low_limit_daemon(daemons, "capped", ["--config", str(config)]).start_and_wait()
    flood = open_flood(daemon.port, FLOOD, sources=10)
    try:
        assert len(flood) > NOFILE
        # While the flood's own refusals still hold the (at most 16) refusal
        # descriptors, a newcomer may be closed without a line; once they are
        # gone (the client closed, or REFUSAL_LINGER passed), every refused client
        # reads its ERR line, though it sent its REQUEST before the server closed:
        # the refusal half-closes and drains instead of resetting.
        answered: list[Ok | Err] = []

        def refused_with_a_line() -> bool:
            with contextlib.suppress(OSError, ValueError):
                answered.append(request_from(loopback(20), daemon.port, 1))
            return bool(answered)

        wait_until("a refused client reads its ERR line", refused_with_a_line)
        for pid in range(1, 31):
            refused = request_from(loopback(20), daemon.port, pid)
            assert isinstance(refused, Err) and refused.status is Status.NOTVERIFIED, refused
            assert "too many connections" in refused.msg
        done = local_lsa(daemon, "-sinfo")
        assert done.returncode == 0, done.stdout + done.stderr
        held = [sock for sock in flood if not closed_by_server(sock)]
        assert 0 < len(held) < NOFILE - 32, len(held)
    finally:
        for sock in flood:
            sock.close()
    granted: list[Ok | Err] = []

    def served() -> bool:
        with contextlib.suppress(OSError, ValueError):
            granted.append(request_from(loopback(20), daemon.port, 2))
        return bool(granted) and isinstance(granted[-1], Ok)

    wait_until("a client gets a licence once the flood is gone", served)
    assert "Too many open files" not in daemon.log_text()


def hqn_ca(*args: str) -> None:
    """Run hqn_ca (bounded); insist on success."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "hqnlsd.tools.ca", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr


def scrape_timeouts(port: int) -> dict[tuple[str, str], float]:
    """hqnlsd_connections_timed_out_total by (listener, reason), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=IO_TIMEOUT) as response:
        text = response.read().decode()
    found: dict[tuple[str, str], float] = {}
    for match in re.finditer(
        r'^hqnlsd_connections_timed_out_total\{listener="(\w+)",reason="(\w+)"\} (\S+)$',
        text,
        re.MULTILINE,
    ):
        found[(match[1], match[2])] = float(match[3])
    return found


def test_silent_connections_are_closed_on_every_listener(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """Connections that never speak (no TLS handshake, no SSH login, no HTTP request)
    to admin TLS, the peer port, metrics and the manhole are closed within the short
    timeouts configured; an admin who does speak TLS is still served."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Widget")]))
    ca_dir = tmp_path / "ca"
    hqn_ca("init", str(ca_dir), "--days", "2")
    hqn_ca("member", str(ca_dir), "127.0.0.1", "--days", "2")
    hqn_ca("admin", str(ca_dir), "alice", "--days", "2")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGz5vO4n4wQm7V5sA1Qy2XgQm6q1cOa4sZ1pX3Yb0c9d x\n"
    )
    authorized.chmod(0o600)
    ports = {name: free_port("127.0.0.1") for name in ("tls", "peer", "metrics", "manhole")}
    config = tmp_path / "limits.toml"
    config.write_text(
        "[limits]\nhandshake-timeout = 1.0\nadmin-idle-timeout = 2.0\nmetrics-idle-timeout = 1.0\n"
    )
    daemon = daemons.daemon(
        "silent",
        extra_args=[
            "--config",
            str(config),
            "--domain-ca",
            str(ca_dir / "ca.crt"),
            "--domain-cert",
            str(ca_dir / "member-127.0.0.1.crt"),
            "--domain-key",
            str(ca_dir / "member-127.0.0.1.key"),
            "--peer-port",
            str(ports["peer"]),
            "--admin-tls",
            f"tcp:{ports['tls']}:interface=127.0.0.1",
            "--metrics",
            f"tcp:{ports['metrics']}",
            "--manhole",
            f"tcp:{ports['manhole']}",
            "--manhole-keys",
            str(authorized),
        ],
    ).start_and_wait()
    silent = {
        name: [socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) for _ in range(5)]
        for name, port in ports.items()
    }
    try:
        for name, socks in silent.items():
            wait_until(
                f"5 silent connections to the {name} listener closed",
                lambda socks=socks: all(closed_by_server(sock) for sock in socks),  # type: ignore[misc]
            )
    finally:
        for socks in silent.values():
            for sock in socks:
                sock.close()
    timed_out = scrape_timeouts(ports["metrics"])
    assert timed_out[("admin_tls", "handshake")] >= 5, timed_out
    assert timed_out[("manhole", "handshake")] >= 5, timed_out
    assert timed_out[("metrics", "idle")] >= 5, timed_out
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HQN_LSA_HISTORY": "/dev/null"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hqnlsd.tools.lsa",
            "--hosts",
            str(daemon.hosts_file),
            "--ca",
            str(ca_dir / "ca.crt"),
            "--cert",
            str(ca_dir / "admin-alice.crt"),
            "--key",
            str(ca_dir / "admin-alice.key"),
            "-s",
            f"tls:127.0.0.1:{ports['tls']}",
            "-sinfo",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_real_client_outlives_the_idle_timeout(daemons: DaemonHarness, tmp_path: Path) -> None:
    """The client library holds its connection between UPDATEs; the daemon closes it
    when idle; the next UPDATE reconnects: same handle, nothing lost, one licence."""
    daemons.write_permit(
        make_permit([daemons.host(1)], [product_permit("Widget", floating_count=1)])
    )
    config = tmp_path / "limits.toml"
    metrics_port = free_port("127.0.0.1")
    config.write_text(
        f'[metrics]\nlisten = "tcp:{metrics_port}"\n[limits]\nclient-idle-timeout = 1.0\n'
    )
    daemon = daemons.daemon("idle", extra_args=["--config", str(config)]).start_and_wait()
    client = BlockingLicenceClient(
        servers=[f"127.0.0.1:{daemon.port}"],
        hosts_file=daemon.hosts_file,
        timeout=5.0,
        retry=Retry(first_delay=0.05),
    )

    def idle_closes() -> float:
        return scrape_timeouts(metrics_port).get(("client", "idle"), 0.0)

    before = idle_closes()
    events: list[str] = []
    licence = client.request(
        "Test Publisher",
        "Widget",
        "1.0",
        on_lost=lambda lic, why: events.append(why),
        on_regained=lambda lic: events.append("regained"),
    )
    try:
        handle = licence.handle
        for round_ in (1, 2):
            wait_until(
                f"idle client connection {round_} closed by the daemon",
                lambda wanted=before + round_: idle_closes() >= wanted,  # type: ignore[misc]
            )
            licence.update()
            assert licence.held and licence.handle == handle, licence.state
        assert events == []
        # Each UPDATE went out on a new connection, answered: no REQUEST again.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=IO_TIMEOUT
        ) as response:
            text = response.read().decode()
        assert 'hqnlsd_request_duration_seconds_count{verb="REQUEST"} 1.0' in text
        assert 'hqnlsd_request_duration_seconds_count{verb="UPDATE"} 2.0' in text
        # The only licence is still this one's: nobody else gets one.
        other = request_from(loopback(1), daemon.port, 99)
        assert isinstance(other, Err) and other.status is Status.NOLICENCES, other
    finally:
        licence.release()
