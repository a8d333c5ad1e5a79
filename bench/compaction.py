#!/usr/bin/env python3
"""What log compaction costs the clients of a three-member domain, with real daemons.

``--runs`` times: a fresh three-member domain on 127.0.0.1-3 (``tests/daemons.py``)
whose config file sets ``[domain] max-entries`` (``--max-entries``; 0 keeps the
default of 10,000, so no compaction happens in a short run), then the closed-loop
load of ``bench/checkout.py`` (``--connections`` connections, REQUEST + RELEASE,
for ``--seconds``) against hqnserver1. Prints per run and in total: pairs per
second, pair latency (p50, p99, max), how many view changes hqnserver1 made
during the load (from its log), and how many REQUESTs and RELEASEs were refused
with a domain status (``NEW_MASTER``, ``NOTVERIFIED``, ``TRY_SERVER``,
``LOSTMASTER``): 0 expected, since the primary holds client commands through a
hand-over to itself (``DomainNode.held``).

Example (from the repository root)::

    python bench/compaction.py --runs 3 --seconds 8 --connections 8 --max-entries 100

Every wait is bounded; every daemon is killed at the end (also on an error).
Exit status: 0 when every run was measured, 1 when a daemon failed or was late.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script from anywhere: the repository root holds hqnlsd, tests/ and bench/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import checkout  # the load generator of bench/checkout.py
from hqnlsd.protocols.client_side import ReplyParseError
from hqnlsd.protocols.replies import Ok
from tests.daemons import Daemon, DaemonHarness, domain_daemons, product_permit

PUBLISHER = "Bench Publisher"
PRODUCT = "Compaction Widget"
VERSION = "1.0"
#: How long three daemons may take to start and admit each other.
ELECTION_BOUND = 60.0
#: Timeout of every connect and reply of the load (a held command waits a few round trips).
REPLY_TIMEOUT = 15.0
#: Statuses that mean the client saw the domain change hands.
DOMAIN_STATUSES = ("NEW_MASTER", "NOTVERIFIED", "TRY_SERVER", "LOSTMASTER")


class BenchFailure(Exception):
    """A daemon did not behave (or not in time)."""


def installed_epochs(daemon: Daemon) -> int:
    """How many views hqnserver1 has installed so far (its log)."""
    return len(re.findall(r"installed epoch \d+", daemon.log_text()))


def wait_full_view(first: Daemon) -> None:
    """Wait until hqnserver1 grants in a view of all three members."""
    deadline = time.monotonic() + ELECTION_BOUND
    while True:
        if not first.running:
            raise BenchFailure("hqnserver1 exited\n" + first.log_tail())
        if "members [1, 2, 3] primary 1" in first.log_text():
            with contextlib.suppress(OSError, ReplyParseError), first.client() as client:
                reply = client.call(
                    "REQUEST", publisher=PUBLISHER, product=PRODUCT, version=VERSION,
                    user="bench", host="benchhost", pid=1, client="ready",
                )
                if isinstance(reply, Ok):
                    client.call("RELEASE", handle=reply.get("handle") or "")
                    return
        if time.monotonic() > deadline:
            raise BenchFailure("no view of three within the bound\n" + first.log_tail())
        time.sleep(0.1)


async def load(daemon: Daemon, args: argparse.Namespace) -> checkout.ChurnStats:
    """checkout.py's churn phase against ``daemon``."""
    options = checkout.parse_args([
        "--host", daemon.address, "--port", str(daemon.port),
        "--connections", str(args.connections), "--seconds", str(args.seconds),
        "--hold", "0", "--publisher", PUBLISHER, "--product", PRODUCT,
        "--version", VERSION, "--user", "bench", "--client-host", "benchhost",
        "--reply-timeout", str(REPLY_TIMEOUT),
    ])
    conns = await asyncio.gather(*(
        checkout.Connection.open(i, daemon.address, daemon.port, REPLY_TIMEOUT)
        for i in range(args.connections)
    ))
    try:
        return await checkout.churn(list(conns), options)
    finally:
        await asyncio.gather(*(c.close() for c in conns))


def one_run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh domain, the load, the figures."""
    root.mkdir(parents=True)
    daemons = DaemonHarness(root)
    failed = True
    try:
        extra: list[str] = []
        if args.max_entries:
            config = root / "hqnlsd.toml"
            config.write_text(f"[domain]\nmax-entries = {args.max_entries}\n", "utf-8")
            extra = ["--config", str(config)]
        count = max(1000, 20 * args.connections)
        widget = product_permit(PRODUCT, publisher=PUBLISHER, version=VERSION,
                                floating_count=count)
        members = domain_daemons(daemons, 3, [widget], extra_args=extra)
        daemons.start_all(*members, timeout=ELECTION_BOUND)
        first = members[0]
        wait_full_view(first)
        before = installed_epochs(first)
        stats = asyncio.run(load(first, args))
        changes = installed_epochs(first) - before
        failed = False
    finally:
        tails = io.StringIO()
        with contextlib.redirect_stdout(tails):
            daemons.close()
        if failed:
            print(tails.getvalue(), file=sys.stderr)
    latencies = sorted(stats.pair_latencies)
    refused = collections.Counter(
        {f"REQUEST {k}": v for k, v in stats.denials.items() if k in DOMAIN_STATUSES}
    ) + collections.Counter(
        {f"RELEASE {k}": v for k, v in stats.release_errors.items() if k in DOMAIN_STATUSES}
    )
    elapsed = stats.elapsed or 1e-9
    return {
        "pairs": len(latencies),
        "pairs_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(checkout.percentile(latencies, 0.50) * 1e3, 2),
        "p99_ms": round(checkout.percentile(latencies, 0.99) * 1e3, 2),
        "max_ms": round((latencies[-1] if latencies else 0.0) * 1e3, 2),
        "view_changes": changes,
        "refused": sum(refused.values()),
        "refused_by_status": dict(refused),
        "other_denials": {k: v for k, v in stats.denials.items() if k not in DOMAIN_STATUSES},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--max-entries", type=int, default=100,
                        help="[domain] max-entries of the daemons (0: the default, 10000)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the daemons' trees go (default: a fresh temporary one)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.connections < 1 or args.max_entries < 0:
        parser.error("--runs, --seconds and --connections must be positive")
    base = args.workdir or Path(tempfile.mkdtemp(prefix="hqnc-", dir="/tmp"))
    results: list[dict[str, Any]] = []
    try:
        for run in range(1, args.runs + 1):
            result = one_run(base / f"run{run}", args)
            results.append(result)
            print(
                f"run {run}: {result['pairs_per_second']} pairs/s, latency p50 "
                f"{result['p50_ms']} ms p99 {result['p99_ms']} ms max {result['max_ms']} ms, "
                f"{result['view_changes']} view changes, refused {result['refused']} "
                f"{result['refused_by_status'] or ''}"
            )
    except (BenchFailure, checkout.BenchError, TimeoutError, OSError) as error:
        print(f"compaction: {error or type(error).__name__}", file=sys.stderr)
        return 1
    refused = sum(r["refused"] for r in results)
    rates = [r["pairs_per_second"] for r in results]
    print(
        f"total: {len(results)} runs of {args.seconds:g} s, {args.connections} connections, "
        f"max-entries {args.max_entries or 'default'}: "
        f"{min(rates)}-{max(rates)} pairs/s, "
        f"{sum(r['view_changes'] for r in results)} view changes, {refused} refused, "
        f"{sum(1 for r in results if r['refused'])} of {len(results)} runs with refusals"
    )
    if args.json:
        print(json.dumps({"runs": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
