"""``hqn_lsa`` targeting against real daemons: two daemons on one machine (127.0.0.1 and
127.0.0.2) where ``-s`` picks each one by address, ``HOST:PORT``, ``hqnserverN`` and
``N``; a name with no daemon behind it fails with exit status 1, names it, and changes
neither daemon; the default search skips an hqnserver with nothing behind it; ``server
h1 h2`` fans out and the prompt says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import (
    REPO_ROOT,
    Daemon,
    DaemonHarness,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e

#: Bound on every hqn_lsa run (seconds).
RUN_TIMEOUT = 60.0
PUBLISHER = "Test Publisher"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[DaemonHarness, Daemon, Daemon]]:
    """hqnserver1 (127.0.0.1, serves Alpha) and hqnserver2 (127.0.0.2, serves Beta)
    running; hqnserver3 (127.0.0.3) is in the hosts file with no daemon behind it."""
    with DaemonHarness(tmp_path) as harness:
        harness.write_hosts(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
        for n, name in ((1, "Alpha"), (2, "Beta")):
            harness.write_permit(
                make_permit(
                    [harness.host(n)], [product_permit(name, publisher=PUBLISHER)], number=n
                ),
                name=f"{name.lower()}-hqn.permit",
            )
        first = harness.daemon("first", n=1)
        second = harness.daemon("second", n=2)
        harness.start_all(first, second)
        yield harness, first, second


def lsa(
    harness: DaemonHarness,
    *args: str,
    stdin: str = "",
    hosts: Path | None = None,
    socket: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """hqn_lsa as a real process, finding daemons in the harness's runtime directory.

    ``socket`` sets HQN_LSA_SOCKET: the one local admin socket a site may have
    configured, which must never be used for a name that is not its daemon's.
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HQN_LSA_HISTORY": "/dev/null",
        "HQN_LSA_RUNTIME_DIR": str(harness.runtime_dir),
    }
    env.pop("HQN_LSA_SOCKET", None)
    if socket is not None:
        env["HQN_LSA_SOCKET"] = str(socket)
    argv = [
        sys.executable,
        "-m",
        "hqnlsd.tools.lsa",
        "--hosts",
        str(hosts or harness.hosts_file),
        *args,
    ]
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        cwd=str(REPO_ROOT),
        check=False,
    )


def switches(harness: DaemonHarness, daemon: Daemon) -> Any:
    """The daemon's log switches, read through its own admin socket in its state dir."""
    done = lsa(harness, "--json", "--socket", str(daemon.state_dir / "admin.sock"), "-lg")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])["result"]


def test_s_picks_each_of_two_daemons_on_one_machine(
    site: tuple[DaemonHarness, Daemon, Daemon],
) -> None:
    """By address, HOST:PORT, hqnserverN and N, -s reaches exactly the daemon named."""
    harness, first, second = site
    assert os.stat(harness.runtime_dir).st_mode & 0o777 == 0o700
    for daemon in (first, second):
        published = harness.runtime_dir / f"{daemon.address}:{daemon.port}.sock"
        assert os.stat(published).st_mode & 0o777 == 0o660
    for daemon, mine, theirs, names in (
        (first, "Alpha", "Beta", ["127.0.0.1", f"127.0.0.1:{first.port}", "hqnserver1", "1"]),
        (second, "Beta", "Alpha", ["127.0.0.2", f"127.0.0.2:{second.port}", "hqnserver2", "2"]),
    ):
        for name in names:
            done = lsa(harness, "-s", name, "-lp", socket=first.state_dir / "admin.sock")
            assert done.returncode == 0, f"-s {name}: {done.stderr}"
            assert mine in done.stdout, f"-s {name}: {done.stdout}"
            assert theirs not in done.stdout, f"-s {name} reached the other daemon"
        done = lsa(harness, "--json", "-id", names[3])  # the daemon on that host
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["result"]["address"] == daemon.address


@pytest.mark.parametrize(
    "name",
    ["127.0.1.19", "hqnserver3", "3", "no-such-host.invalid", "127.0.0.1:1"],
)
def test_name_without_daemon_fails_and_changes_nothing(
    site: tuple[DaemonHarness, Daemon, Daemon], name: str
) -> None:
    """A name with no daemon behind it: exit 1, an error naming it, and both daemons as
    they were, even with HQN_LSA_SOCKET pointing at the first daemon's socket."""
    harness, first, second = site
    before = [switches(harness, first), switches(harness, second)]
    done = lsa(harness, "-s", name, "-lg", "exterr-", socket=first.state_dir / "admin.sock")
    assert done.returncode == 1, done.stdout + done.stderr
    shown = "hqnserver3" if name == "3" else name
    assert shown in done.stderr, done.stderr
    assert [switches(harness, first), switches(harness, second)] == before
    listed = lsa(harness, "-s", name, "-lp", socket=first.state_dir / "admin.sock")
    assert listed.returncode == 1, listed.stdout
    assert "Alpha" not in listed.stdout and "Beta" not in listed.stdout


def test_default_target_skips_an_hqnserver_with_no_daemon(
    site: tuple[DaemonHarness, Daemon, Daemon],
) -> None:
    """No -s: hqnserver1, 2, ... in order, but only daemons that really answer there."""
    harness, _first, _second = site
    done = lsa(harness, "-lp")
    assert done.returncode == 0, done.stderr
    assert "Alpha" in done.stdout and "Beta" not in done.stdout
    hosts = harness.root / "hosts-3-first"
    hosts.write_text("127.0.0.3 hqnserver1\n127.0.0.2 hqnserver2\n127.0.0.1 hqnserver3\n")
    done = lsa(harness, "-lp", hosts=hosts)
    assert done.returncode == 0, done.stderr
    assert "Beta" in done.stdout and "Alpha" not in done.stdout


def test_server_fans_out_and_the_prompt_shows_it(
    site: tuple[DaemonHarness, Daemon, Daemon],
) -> None:
    """'server 1 2': every later command goes to each; the prompt shows the server or the
    count; a failed 'server' leaves no server for later commands (never a default)."""
    harness, first, _second = site
    done = lsa(harness, stdin="server 1 2\nlistp\nserver hqnserver2\nlistp\nquit\n")
    assert done.returncode == 0, done.stderr
    fanned, single = done.stdout.split("hqn_lsa [2 servers]> ", 1)[1].split(
        "hqn_lsa [hqnserver2]> ", 1
    )
    assert "Alpha" in fanned and "Beta" in fanned
    assert "Beta" in single and "Alpha" not in single
    before = switches(harness, first)
    done = lsa(harness, "-", stdin="server 1 3\nlg exterr-\n")
    assert done.returncode == 1
    assert "hqnserver3" in done.stderr
    assert switches(harness, first) == before


def test_a_killed_daemon_is_not_reached_and_is_found_again_after_restart(
    site: tuple[DaemonHarness, Daemon, Daemon],
) -> None:
    """SIGKILL leaves hqnserver2's published socket behind: -s 2 fails naming it (exit 1)
    and the default search passes it by; restarted, it publishes again and -s 2 finds it."""
    harness, first, second = site
    second.kill()
    assert (harness.runtime_dir / f"127.0.0.2:{second.port}.sock").exists()
    before = switches(harness, first)
    done = lsa(harness, "-s", "2", "-lg", "exterr-")
    assert done.returncode == 1
    assert "hqnserver2 (127.0.0.2)" in done.stderr, done.stderr
    assert switches(harness, first) == before
    hosts = harness.root / "hosts-dead-first"
    hosts.write_text("127.0.0.2 hqnserver1\n127.0.0.1 hqnserver2\n")
    done = lsa(harness, "-lp", hosts=hosts)
    assert done.returncode == 0, done.stderr
    assert "Alpha" in done.stdout
    second.start_and_wait()
    done = lsa(harness, "-s", "2", "-lp")
    assert done.returncode == 0, done.stderr
    assert "Beta" in done.stdout and "Alpha" not in done.stdout
