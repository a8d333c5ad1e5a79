"""End to end: the original manual's ``hqn_lsa`` commands, one by one, run through the
real ``hqn_lsa`` (a process) against a real ``twistd -n hqnlsd`` on 127.0.0.1 (issue 11).

Each step is the manual's form of a command (``p p MNEM``, ``MNEM-``, ``MNEM!``,
``c p t`` in minutes, ``k p n n``, ``n+ p host hostid host hostid``, ``n- p host``,
``l p n`` only after ``f``, ``e+ p host host``, ``lp p``, ``lg``, ``lg N-``, ``lk LOCK``,
``id``) plus ``reread`` and ``down``; the daemon's state is checked after each.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.permits.model import HostId
from hqnlsd.permits.policy import Policy
from hqnlsd.protocols.replies import Ok
from tests.daemons import (
    REPO_ROOT,
    Daemon,
    DaemonHarness,
    make_permit,
    product_permit,
    request_licence,
)

pytestmark = pytest.mark.e2e

#: Bound on every hqn_lsa run (seconds).
RUN_TIMEOUT = 60.0
PUBLISHER = "Test Publisher"
#: A node the permit itself lists for Gadget (rmnode may not remove it).
PERMIT_NODE = "10.1.1.1"


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def write_permit(daemons: DaemonHarness, *products: str) -> Path:
    """Widget (GRAB UVIS, 3 floating) and / or Gadget (1 node-locked on PERMIT_NODE, 2
    floating), served by daemon 1 alone."""
    node = HostId(ipaddress.IPv4Address(PERMIT_NODE), 0)
    made = {
        "Widget": product_permit("Widget", policy=int(Policy.GRAB | Policy.UVIS)),
        "Gadget": product_permit("Gadget", node_count=1, floating_count=2, locked_nodes=(node,)),
    }
    return daemons.write_permit(make_permit([daemons.host(1)], [made[p] for p in products]))


def lsa(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """hqn_lsa (a real process, no terminal) on ``daemon``'s admin socket."""
    argv = [
        sys.executable,
        "-m",
        "hqnlsd.tools.lsa",
        "--socket",
        str(Path(daemon.state_dir) / "admin.sock"),
        "--hosts",
        str(daemon.hosts_file),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HQN_LSA_HISTORY": "/dev/null"}
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def ok(daemon: Daemon, *args: str) -> str:
    """Run hqn_lsa; insist on exit status 0; its standard output."""
    done = lsa(daemon, *args)
    assert done.returncode == 0, f"{args}: {done.stderr}{done.stdout}"
    return done.stdout


def refused(daemon: Daemon, *args: str) -> str:
    """Run hqn_lsa; insist on exit status 1; its standard error."""
    done = lsa(daemon, *args)
    assert done.returncode == 1, f"{args}: {done.returncode} {done.stderr}{done.stdout}"
    return done.stderr


def flags_line(daemon: Daemon, number: int) -> str:
    """The policy line of ``listp NUMBER``."""
    text = ok(daemon, "-lp", str(number))
    return next(line for line in text.splitlines() if line.strip().startswith("policy"))


def test_the_manuals_commands_one_by_one(daemons: DaemonHarness) -> None:
    """Every changed command in the manual's form, against a real daemon."""
    permit = write_permit(daemons, "Widget", "Gadget")
    daemon = daemons.daemon("one")
    daemon.start_and_wait()

    # policy: alone lists the mnemonics; MNEM on, MNEM- off, MNEM! locks, locked ignored
    assert "TIML" in ok(daemon, "-policy") and "MNEM!" in ok(daemon, "-p")
    ok(daemon, "-p", "1", "TIML")
    assert "GRAB TIML UVIS" in flags_line(daemon, 1)
    ok(daemon, "-p", "1", "TIML-", "UVIS!")
    out = ok(daemon, "-p", "1", "UVIS-", "LKNF")
    assert "ignored (locked): UVIS" in out
    line = flags_line(daemon, 1)
    assert "GRAB LKNF UVIS" in line and "admin-locked" in line and "UVIS" in line

    # crashout / timeout: a bare number is minutes; units welcome
    ok(daemon, "-c", "1", "10", "-t", "1", "90s")
    details = ok(daemon, "-lp", "1")
    assert re.search(r"crashout\s+10m", details) and re.search(r"timeout\s+90s", details)
    assert "Gadget" not in details

    # kill p n n: two licences by their numbers; listu has the access column
    for token in ("a", "b"):
        got = request_licence(daemon, token, publisher=PUBLISHER, product="Widget", version="1.0")
        assert isinstance(got, Ok), got
    listing = ok(daemon, "-u", "1")
    assert "access" in listing and "2 holder(s)" in listing
    assert "revokes" in refused(daemon, "-k", "1", "1", "2")  # no terminal, no -y
    ok(daemon, "-y", "-k", "1", "1", "2")
    assert "0 holder(s)" in ok(daemon, "-u", "1")

    # addnode p host hostid host hostid; rmnode only what addnode added
    ok(daemon, "-n+", "2", "10.0.0.9", "0x7", "10.0.0.10", "8")
    details = ok(daemon, "-lp", "2")
    assert "10.0.0.9 0x00000007" in details and "10.0.0.10 0x00000008" in details
    assert "addnode" in refused(daemon, "-y", "-n-", "2", PERMIT_NODE)
    ok(daemon, "-y", "-n-", "2", "10.0.0.9", "10.0.0.10")
    assert "10.0.0.9" not in ok(daemon, "-lp", "2")

    # ltof only after ftol
    assert "ftol" in refused(daemon, "-y", "-l", "2", "1")
    ok(daemon, "-y", "-f", "2", "1", "-l", "2", "1")
    assert "node-locked 1 left of 1" in ok(daemon, "-lp", "2")

    # exhost / unexhost several hosts
    ok(daemon, "-e+", "1", "boxa", "boxb")
    assert re.search(r"excluded hosts\s+boxa, boxb", ok(daemon, "-lp", "1"))
    ok(daemon, "-e-", "1", "boxa", "boxb")

    # ua+ while ACCL is off: done, with a warning
    assert "ACCL is off" in ok(daemon, "-ua+", "1", "jo", "3", "ann", "4")

    # loglevel: alone lists the switches and the state; numbers are switch numbers
    listing = ok(daemon, "-lg")
    assert re.search(r"10\s+EXTERR\s+on", listing) and "presets:" in listing
    ok(daemon, "-lg", "10-")
    assert re.search(r"10\s+EXTERR\s+off", ok(daemon, "-lg"))

    # lk: a lock string from the permit, then a mistyped one
    lock = next(line for line in permit.read_text("utf-8").splitlines() if line.startswith("LOCK:"))
    assert "well formed" in ok(daemon, "-lk", lock)
    _, key_id, signature = lock.split()
    assert "key id" in refused(daemon, "-lk", f"LOCK: {key_id[:-1]}G {signature}")
    assert "character 3" in refused(
        daemon, "-lk", f"LOCK: {key_id} {signature[:2]}+{signature[3:]}"
    )

    # id: this machine and the server
    ident = ok(daemon, "-id")
    assert "this machine:" in ident
    assert re.search(rf"^server \S+: {re.escape(daemon.address)}\s+0x", ident, re.M), ident

    # reread: Widget gone, Gadget keeps number 2; p 1 no longer hits anything
    write_permit(daemons, "Gadget")
    assert "licence(s) revoked" in ok(daemon, "-reread")
    listing = ok(daemon, "-lp")
    assert re.search(r"^2\s+Test Publisher Gadget", listing, re.M), listing
    assert "Widget" not in listing
    assert "BADPRODUCT" in refused(daemon, "-p", "1", "GRAB")

    # down: asks first (refused without a terminal), then stops the daemon
    assert "stops the daemon" in refused(daemon, "-down")
    assert daemon.running
    assert "stopping" in ok(daemon, "-y", "-down")
    assert daemon.wait_exit() == 0
