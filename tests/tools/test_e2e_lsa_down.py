"""``hqn_lsa down`` over remote administration (mutual TLS) against a real daemon.

The site's CA is made with the real ``hqn_ca`` command; the daemon is a real
``twistd hqnlsd`` with ``--admin-tls``; ``hqn_lsa`` runs as a process with no
terminal. An ordinary admin certificate may administer but not stop the daemon;
one issued with ``hqn_ca admin --allow-down`` stops it (exit status 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import (
    REPO_ROOT,
    Daemon,
    DaemonHarness,
    free_port,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e

#: Bound on every hqn_lsa / hqn_ca run (seconds).
RUN_TIMEOUT = 60.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the worktree, no terminal, bounded in time."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HQN_LSA_HISTORY": "/dev/null"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def hqn_ca(*args: str) -> str:
    """Run hqn_ca; insist on success; its standard output."""
    done = run_tool("hqnlsd.tools.ca", *args)
    assert done.returncode == 0, f"hqn_ca {args}: {done.stderr}"
    return done.stdout


def tls_daemon(daemons: DaemonHarness) -> tuple[Daemon, int, Path]:
    """A daemon on 127.0.0.1 with remote administration on a free port; (daemon, that
    port, the CA directory holding ca.crt and the CA's key)."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Widget")]))
    ca_dir = daemons.root / "ca"
    hqn_ca("init", str(ca_dir), "--days", "2")
    hqn_ca("member", str(ca_dir), "127.0.0.1", "--days", "2")
    tls_port = free_port("127.0.0.1")
    daemon = daemons.daemon(
        "one",
        extra_args=[
            "--domain-ca",
            str(ca_dir / "ca.crt"),
            "--domain-cert",
            str(ca_dir / "member-127.0.0.1.crt"),
            "--domain-key",
            str(ca_dir / "member-127.0.0.1.key"),
            "--peer-port",
            str(free_port("127.0.0.1")),
            "--admin-tls",
            f"tcp:{tls_port}:interface=127.0.0.1",
        ],
    )
    daemon.start_and_wait()
    return daemon, tls_port, ca_dir


def remote_lsa(
    daemon: Daemon, tls_port: int, ca_dir: Path, admin: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """hqn_lsa over TLS to ``daemon`` with admin ``admin``'s certificate."""
    return run_tool(
        "hqnlsd.tools.lsa",
        "--hosts",
        str(daemon.hosts_file),
        "--ca",
        str(ca_dir / "ca.crt"),
        "--cert",
        str(ca_dir / f"admin-{admin}.crt"),
        "--key",
        str(ca_dir / f"admin-{admin}.key"),
        "-s",
        f"tls:127.0.0.1:{tls_port}",
        *args,
    )


def test_remote_down_needs_an_admin_certificate_that_allows_it(daemons: DaemonHarness) -> None:
    """An ordinary admin certificate: `down` refused with a clear message (exit 1), the
    daemon keeps serving; with --allow-down: asked first, then the daemon exits 0."""
    daemon, tls_port, ca_dir = tls_daemon(daemons)
    hqn_ca("admin", str(ca_dir), "alice", "--days", "2")
    assert "may stop daemons" in hqn_ca(
        "admin", str(ca_dir), "carol", "--days", "2", "--allow-down"
    )

    # alice administers remotely, but may not stop the daemon.
    done = remote_lsa(daemon, tls_port, ca_dir, "alice", "-sinfo")
    assert done.returncode == 0, done.stderr
    done = remote_lsa(daemon, tls_port, ca_dir, "alice", "-y", "-down")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT_ALLOWED" in done.stderr and "--allow-down" in done.stderr, done.stderr
    assert daemon.running
    with daemon.client() as client:
        client.ping()
    assert "refused" in daemon.wait_for_log(lambda text: "down refused" in text)

    # carol may; without -y and without a terminal hqn_lsa still asks, so refuses.
    done = remote_lsa(daemon, tls_port, ca_dir, "carol", "-down")
    assert done.returncode == 1 and "stops the daemon" in done.stderr, done.stderr
    assert daemon.running
    done = remote_lsa(daemon, tls_port, ca_dir, "carol", "-y", "-down")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopping" in done.stdout
    assert daemon.wait_exit() == 0
    assert "admin carol" in daemon.log_text()
