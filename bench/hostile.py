#!/usr/bin/env python3
"""Hostile clients against a live hqnlsd, at full size (issue 12).

Starts one real ``twistd -n hqnlsd`` on 127.0.0.1 (``tests.hostile.make_target``:
hqnserver1 of a three-member domain whose other members never start, so it has
a peer listener and admin TLS; a metrics listener; a single-host product
``Probe``), with its descriptor limit set to ``--nofile`` and every listener's
handshake and idle timeout to ``--listener-timeout`` (the ``[limits]`` table of
a configuration file). Then runs each attack
of ``tests/hostile.py`` in turn, from source addresses 127.0.0.100 and up (the
peer attack from 127.0.0.3, the member it speaks as), never the probes' 127.0.0.1:

- ``lines``: fuzzed protocol lines, pipelined in bursts (250,000);
- ``bad-lines``: lines of ``X`` on one connection (100,000);
- ``flood``: idle connections held open for ``--hold`` seconds (17,984);
- ``silent``: connections that say nothing, to each of the client, admin TLS,
  metrics and peer listeners (50 each), waited on for ``--silent-wait`` s;
- ``slow``: connections sending a request one byte a second (50, ``--slow-seconds``);
- ``never-reading``: connections pipelining requests and never reading (10 x 100,000);
- ``admin``: fuzzed JSON admin lines on the local admin socket (20,000);
- ``permits``: byte-level mutations of a sealed permit read with the daemon's
  reader (22,000), ``--permits-to-daemon`` of them re-read by the daemon too;
- ``peer``: fuzzed peer messages from an authenticated member (``tests/peerfuzz.py``, 10,000).

Throughout, every ``--probe-interval`` s, a fresh client takes and releases a
licence with the client library and ``sinfo`` is asked on the local admin
socket with hqn_lsa's client, each within ``--probe-deadline`` s. For each
attack it prints: inputs tried, crashes (the daemon exited; it is restarted),
hangs (probe rounds not served within the deadline), memory growth (RSS from
/proc/PID/status before and after), descriptors in use (/proc/PID/fd before,
the most seen, after), log bytes written, whether the fresh client and hqn_lsa
were served throughout, and the attack's own figures; then a summary table.
``--json`` prints the reports as JSON instead::

    python bench/hostile.py                      # the sizes above
    python bench/hostile.py --scale 0.05 --only lines,admin,permits

Exit status: 0 when every attack passed its checks (no crash, no hang, served
throughout, and its own bound: log bytes for fuzzed and bad lines, reply size
for bad lines, silent connections closed, memory for never-reading clients, no
INTERNAL or dropped admin connection, no wrong permit), 1 otherwise, 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemons import DaemonError, DaemonHarness
from tests.hostile import (
    LISTENER_TIMEOUT,
    LOG_BOUND,
    REPLY_AMPLIFICATION,
    RSS_BOUND,
    SILENT_GRACE,
    AttackResult,
    Report,
    Target,
    admin_messages,
    bad_lines,
    idle_flood,
    make_target,
    mutated_permits,
    never_reading,
    peer_messages,
    probing,
    protocol_lines,
    run_attack,
    silent_clients,
    slow_clients,
)

#: The attacks, in the order they run, with their default sizes (issue 12's).
SIZES = {
    "lines": 250_000,
    "bad-lines": 100_000,
    "flood": 17_984,
    "silent": 50,
    "slow": 50,
    "never-reading": 100_000,
    "admin": 20_000,
    "permits": 22_000,
    "peer": 10_000,
}
#: Log bound per fuzzed or bad line (LOG_BOUND is for the CI test's 5,000 bad lines).
LOG_PER_BAD_LINE = LOG_BOUND / 5000


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: leave through the ``finally`` clauses, which kill the daemon."""
    raise SystemExit(128 + signum)


def attacks(
    target: Target, sizes: dict[str, int], args: argparse.Namespace, workdir: Path
) -> dict[str, Callable[[], AttackResult]]:
    """Each attack of the run as a call (sizes already scaled)."""

    def silent() -> AttackResult:
        results: dict[str, AttackResult] = {}
        wait = args.silent_wait

        def one(listener: str) -> None:
            results[listener] = silent_clients(target, listener, sizes["silent"], wait=wait)

        threads = [threading.Thread(target=one, args=(name,)) for name in target.listeners()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(wait + 60)
        return AttackResult(
            sum(r.inputs for r in results.values()),
            {name: result.figures for name, result in results.items()},
        )

    return {
        "lines": lambda: protocol_lines(target, sizes["lines"], args.seed),
        "bad-lines": lambda: bad_lines(target, sizes["bad-lines"], timeout=600),
        "flood": lambda: idle_flood(
            target, sizes["flood"], sources=args.flood_sources, hold=args.hold
        ),
        "silent": silent,
        "slow": lambda: slow_clients(target, sizes["slow"], seconds=args.slow_seconds),
        "never-reading": lambda: never_reading(target, 10, max(sizes["never-reading"] // 10, 3)),
        "admin": lambda: admin_messages(target, sizes["admin"], args.seed),
        "permits": lambda: mutated_permits(
            target,
            sizes["permits"],
            args.seed,
            to_daemon=min(args.permits_to_daemon, sizes["permits"]),
            workdir=workdir / "mutants",
        ),
        "peer": lambda: peer_messages(target, sizes["peer"], args.seed),
    }


def problems(report: Report, args: argparse.Namespace) -> list[str]:
    """What is wrong with an attack's outcome (empty: it passed)."""
    found = []
    if report.crashes:
        found.append("the daemon exited")
    if report.hangs:
        found.append(f"{report.hangs} probe rounds not served within the deadline")
    if not report.served_throughout:
        found.append(
            f"served {report.client_served}/{report.probes} fresh clients, "
            f"{report.admin_served}/{report.probes} hqn_lsa"
        )
    figures = report.figures
    if "attack failed" in figures:
        found.append(f"the attack failed: {figures['attack failed']}")
    if report.name in ("lines", "bad-lines") and report.log_bytes > max(
        LOG_BOUND, LOG_PER_BAD_LINE * report.inputs
    ):
        found.append(f"{report.log_bytes} log bytes")
    if (
        report.name == "bad-lines"
        and "bytes sent" in figures
        and figures["reply bytes"] > REPLY_AMPLIFICATION * figures["bytes sent"]
    ):
        found.append(f"replies {figures['amplification']} times the input")
    if report.name == "silent":
        for listener, seen in figures.items():
            if isinstance(seen, dict) and seen.get("still open after") not in (None, "-"):
                found.append(f"{listener}: silent connections open after {args.silent_wait} s")
    if report.name == "never-reading" and report.rss_growth > RSS_BOUND:
        found.append(f"RSS grew {report.rss_growth >> 20} MiB")
    if report.name == "admin":
        answers = figures.get("answers", {})
        if figures.get("dropped") or "INTERNAL" in answers:
            found.append(f"admin: {figures.get('dropped')} dropped, "
                         f"{answers.get('INTERNAL', 0)} INTERNAL")
    if report.name == "permits" and (
        figures.get("wrong results") or figures.get("wrong offers by the daemon")
    ):
        found.append(f"permits: {figures.get('first wrong')}")
    return found


def _mib(n: int) -> str:
    return f"{n / (1 << 20):+.1f}"


def print_report(report: Report, found: list[str]) -> None:
    """One attack's block."""
    print(f"== {report.name}: {report.inputs} inputs in {report.seconds} s")
    print(f"   crashes {report.crashes}, hangs {report.hangs}, probe rounds {report.probes}: "
          f"fresh client served {report.client_served}, hqn_lsa served {report.admin_served}")
    print(f"   RSS {report.rss_before >> 20} -> {report.rss_after >> 20} MiB "
          f"({_mib(report.rss_growth)}), descriptors {report.fds_before} / max "
          f"{report.fds_max} / {report.fds_after}, log bytes {report.log_bytes}")
    for key, value in report.figures.items():
        print(f"   {key}: {value}")
    for failure in report.failures:
        print(f"   probe failure: {failure[:200]}")
    print(f"   {'PASS' if not found else 'FAIL: ' + '; '.join(found)}")
    sys.stdout.flush()


def print_table(reports: list[Report], verdicts: dict[str, list[str]]) -> None:
    """The summary table."""
    head = (f"{'attack':14} {'inputs':>8} {'crash':>5} {'hangs':>5} {'client':>7} "
            f"{'hqn_lsa':>7} {'RSS MiB':>8} {'fds b/max/a':>14} {'log bytes':>10} "
            f"{'throughout':>10}  result")
    print()
    print(head)
    print("-" * len(head))
    for r in reports:
        print(f"{r.name:14} {r.inputs:>8} {r.crashes:>5} {r.hangs:>5} "
              f"{f'{r.client_served}/{r.probes}':>7} {f'{r.admin_served}/{r.probes}':>7} "
              f"{_mib(r.rss_growth):>8} {f'{r.fds_before}/{r.fds_max}/{r.fds_after}':>14} "
              f"{r.log_bytes:>10} {'yes' if r.served_throughout else 'NO':>10}  "
              f"{'pass' if not verdicts[r.name] else 'FAIL'}")
    print("-" * len(head))
    total = sum(r.inputs for r in reports)
    print(f"{'total':14} {total:>8} {sum(r.crashes for r in reports):>5} "
          f"{sum(r.hangs for r in reports):>5}   served throughout: "
          f"{'yes' if all(r.served_throughout for r in reports) else 'NO'}")


def run(root: Path, sizes: dict[str, int], args: argparse.Namespace) -> bool:
    """The whole run in ``root``; prints the figures; True if every attack passed."""
    tails = io.StringIO()
    harness = DaemonHarness(root)
    reports: list[Report] = []
    verdicts: dict[str, list[str]] = {}
    completed = True
    try:
        target = make_target(harness, nofile=args.nofile, timeout=args.listener_timeout)
        todo = attacks(target, sizes, args, root)
        with probing(target, interval=args.probe_interval, deadline=args.probe_deadline) as prober:
            prober.wait_rounds(1, args.probe_deadline * 3)
            for name in sizes:
                print(f"-- {name} ({sizes[name]}) ...", file=sys.stderr, flush=True)
                report = run_attack(target, prober, name, todo[name])
                reports.append(report)
                verdicts[name] = problems(report, args)
                if not args.json:
                    print_report(report, verdicts[name])
    except DaemonError as error:
        print(f"hostile: {error}", file=sys.stderr)
        completed = False
    finally:
        with contextlib.redirect_stdout(tails):
            harness.close()
    if args.json:
        print(json.dumps(
            {
                "daemon_nofile": args.nofile,
                "attacks": [{**r.as_dict(), "problems": verdicts[r.name]} for r in reports],
                "completed": completed,
            },
            indent=2,
            default=str,
        ))
    else:
        print_table(reports, verdicts)
    good = completed and all(not found for found in verdicts.values())
    if not good:
        print(tails.getvalue()[-6000:], file=sys.stderr)
    return good


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size")
    parser.add_argument(
        "--only",
        default=",".join(SIZES),
        help=f"attacks to run, comma-separated: {','.join(SIZES)}",
    )
    for name, size in SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=None, metavar="N",
                            help=f"size of {name} (default {size}, times --scale)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument("--nofile", type=int, default=1024,
                        help="the daemon's RLIMIT_NOFILE (default 1024; 0: leave it)")
    parser.add_argument(
        "--listener-timeout",
        type=float,
        default=LISTENER_TIMEOUT,
        help="every listener's handshake and idle timeout, through the [limits] table "
        f"of a configuration file (default {LISTENER_TIMEOUT:g}; 0: the daemon's defaults)",
    )
    parser.add_argument("--flood-sources", type=int, default=1,
                        help="source addresses the flood comes from (default 1)")
    parser.add_argument("--hold", type=float, default=20.0,
                        help="seconds the flood holds its connections (default 20)")
    parser.add_argument("--silent-wait", type=float, default=LISTENER_TIMEOUT + SILENT_GRACE,
                        help="seconds silent connections are given to be closed")
    parser.add_argument("--slow-seconds", type=float, default=20.0,
                        help="seconds the slow clients trickle (default 20)")
    parser.add_argument("--permits-to-daemon", type=int, default=100,
                        help="mutated permits the daemon itself re-reads (default 100)")
    parser.add_argument("--probe-interval", type=float, default=2.0)
    parser.add_argument("--probe-deadline", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SIZES]
    if unknown:
        parser.error(f"unknown attacks: {', '.join(unknown)}")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    sizes = {}
    for name in SIZES:
        if name in chosen:
            given = getattr(args, name.replace("-", "_"))
            sizes[name] = max(1, given if given is not None else round(SIZES[name] * args.scale))
    args.nofile = args.nofile or None
    args.listener_timeout = args.listener_timeout or None
    signal.signal(signal.SIGTERM, _terminated)
    # A short root: the daemon's admin socket lives inside it (AF_UNIX path limit).
    with tempfile.TemporaryDirectory(prefix="hs-") as root:
        return 0 if run(Path(root) / "run", sizes, args) else 1


if __name__ == "__main__":
    sys.exit(main())
