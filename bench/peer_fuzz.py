#!/usr/bin/env python3
"""Peer-message fuzzing of a live hqnlsd domain member (issue 10).

Starts a three-member domain of real ``twistd -n hqnlsd`` daemons on
127.0.0.1-3 (``tests/daemons.py``), has hqnserver1 (the primary) grant two
licences, then speaks to hqnserver1's peer listener *as hqnserver3* (its
member certificate from the test domain CA, its source address, its hello;
the real hqnserver3 keeps running) and sends ``--count`` lines from the seeded
generator of ``tests/peerfuzz.py``: well-formed-but-wrong and malformed
domain messages of every type, and malformed lines. Whenever the daemon
closes the link (repeated invalid input) the fuzzer reconnects. Every few
lines a ping waits until the daemon has handled them.

Then it checks and prints: messages sent, dropped as invalid and links closed
(the daemon's own counts, from sinfo), how many log lines reported them, the
daemon alive, a licence served afterwards, ``hqn_lsa -sinfo`` working, a clean
SIGTERM and restart, and the state right (every licence granted before still
held after the restart)::

    python bench/peer_fuzz.py --count 100000 --seed 1

Every wait is bounded and every daemon is killed at the end. Exit status: 0
when every check passed, 1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hqnlsd.domain.runtime import domain_id
from hqnlsd.protocols.replies import Ok
from tests.daemons import DaemonError, DaemonHarness, is_grant, wait_for
from tests.domain.test_e2e_domain import call, request
from tests.domain.test_e2e_domain_admin import lsa, result
from tests.domain.test_e2e_domain_peer_fuzz import as_member, serving_domain, sinfo_domain
from tests.peerfuzz import FuzzStats, fuzz_daemon

#: How long the domain may take to serve again, after the fuzz or a restart.
SERVE_BOUND = 60.0


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: leave through the ``finally`` clauses, which kill every daemon."""
    raise SystemExit(128 + signum)


def run(root: Path, count: int, seed: int) -> bool:
    """The fuzz run in ``root``; prints the figures; True if every check passed."""
    tails = io.StringIO()
    daemons = DaemonHarness(root)
    checks: dict[str, bool] = {}
    try:
        members, handles = serving_domain(daemons)
        first = members[0]
        key = domain_id([daemons.host(n) for n in (1, 2, 3)])
        epoch = sinfo_domain(first)["epoch"]

        def progress(stats: FuzzStats) -> None:
            print(f"  ... {stats.sent} sent, {stats.connects} links", file=sys.stderr)

        started = time.monotonic()
        stats = fuzz_daemon(
            lambda: as_member(daemons, first, 3),
            key,
            count,
            seed,
            epoch=lambda: epoch,
            progress=progress,
        )
        took = time.monotonic() - started
        checks["daemon alive"] = first.running
        peers = {p["address"]: p for p in result(first, "sinfo")["peers"]}
        fuzzer = peers["127.0.0.3"]
        reports = first.log_text().count("dropped an invalid message")
        print(f"messages sent:            {stats.sent} in {took:.1f} s ({stats.sent / took:.0f}/s)")
        print(f"dropped as invalid:       {fuzzer['invalid']} (daemon's count)")
        print(
            f"links closed:             {fuzzer['invalid_closes']} by the daemon "
            f"({stats.connects} links opened by the fuzzer)"
        )
        print(f"log lines reporting them: {reports}")
        after, _ = wait_for(
            "a grant after the fuzz", lambda: request(first, "after"), is_grant, SERVE_BOUND
        )
        handles.append(after.get("handle") or "")
        checks["served a licence afterwards"] = True
        try:
            checks["hqn_lsa -sinfo works"] = "primary" in lsa(first, "-sinfo")
        except (AssertionError, subprocess.SubprocessError):
            checks["hqn_lsa -sinfo works"] = False
        code = first.terminate()
        restarted = code == -signal.SIGTERM and "Server Shut Down." in first.log_text()
        first.start_and_wait()
        checks["restart clean"] = restarted and "Traceback" not in first.log_text()
        held = 0
        for handle in handles:
            reply, _ = wait_for(
                f"{handle} held after the restart",
                lambda handle=handle: call(first, "UPDATE", handle),
                lambda reply: isinstance(reply, Ok),
                SERVE_BOUND,
            )
            held += isinstance(reply, Ok) and reply.get("handle") == handle
        checks["state right"] = held == len(handles)
        print(f"licences held after restart: {held} of {len(handles)} granted before")
    except (AssertionError, DaemonError) as error:
        print(f"peer_fuzz: {error}", file=sys.stderr)
        checks["completed"] = False
    finally:
        with contextlib.redirect_stdout(tails):
            daemons.close()
    for name, ok in checks.items():
        print(f"{name + ':':26}{'yes' if ok else 'NO'}")
    good = all(checks.values())
    if not good:
        print(tails.getvalue(), file=sys.stderr)
    return good


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="lines to send")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    signal.signal(signal.SIGTERM, _terminated)
    # A short root: the daemons' admin sockets live deep inside it (AF_UNIX limit).
    with tempfile.TemporaryDirectory(prefix="pf-") as root:
        return 0 if run(Path(root) / "run", args.count, args.seed) else 1


if __name__ == "__main__":
    sys.exit(main())
