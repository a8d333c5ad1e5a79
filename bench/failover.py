#!/usr/bin/env python3
"""Failover time, admission time and domain throughput of hqnlsd, with real daemons on loopback.

Three figures, everything measured against real ``twistd -n hqnlsd`` processes
started by the end-to-end harness (``tests/daemons.py``) on 127.0.0.1-3:

1. **throughput**: REQUEST+RELEASE pairs per second from the load generator of
   ``bench/checkout.py`` (closed loop, ``--connections`` connections for
   ``--seconds``) against (a) a single-host daemon (a permit with one server)
   and (b) the primary of a three-member domain (mutual TLS between members,
   every grant and release replicated to the view before the client is
   answered), one after the other in the same run; prints both and the ratio, and the
   count of *refused* requests: every ERR answer to a REQUEST that is not a
   licence decision (``NEW_MASTER``, ``NOTVERIFIED``, ``LOSTMASTER``,
   ``TRY_SERVER``...; a decision is a status of the NO_LICENCE or NOT_PERMITTED
   class, such as ``NOLICENCES``) and every ERR answer to a RELEASE.
2. **admission time**: in each failover run's domain, before the failover,
   SIGKILL hqnserver3, wait until the primary has dropped it from its view
   (``sinfo`` on hqnserver1's admin socket), start it again; the time runs from
   its first ``PING`` answer to its admission (``sinfo`` on it shows it a backup
   in a newer view than the one that dropped it). Prints each run and the median.
3. **failover time**: ``--runs`` times, a fresh three-member domain (new state
   directories, new domain CA, new ports) with the default timers; once
   hqnserver1 grants and both backups redirect to it, SIGKILL hqnserver1 and
   hammer hqnserver2 and hqnserver3 with REQUESTs (a new ``client=`` token each,
   one persistent connection per member, ``--poll`` seconds apart); the time
   runs from ``time.monotonic()`` just before ``os.kill`` to the first ``OK``
   with a handle. Prints each run and the median, min and max.

Example (from the repository root)::

    python bench/failover.py --runs 5 --seconds 10 --connections 50 --json

Every wait is bounded and every daemon is killed at the end, also on Ctrl-C,
SIGTERM or an error (and, should this script itself be SIGKILLed, by the
daemons' parent-death signal). Exit status: 0 when every figure was measured,
1 when a daemon failed or a bound was exceeded, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import io
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast

import twisted

if __package__ in (None, ""):
    # Run as a script from anywhere: the repository root holds hqnlsd, tests/ and bench/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import checkout  # the load generator of bench/checkout.py
from hqnlsd.admin.client import AdminClient, AdminClientError
from hqnlsd.admin.service import SOCKET_NAME
from hqnlsd.permits.model import ProductPermit
from hqnlsd.protocols import client_side
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Standard, Status
from tests.daemons import (
    Daemon,
    DaemonError,
    DaemonHarness,
    LineClient,
    domain_daemons,
    loopback,
    make_permit,
    product_permit,
)

PUBLISHER = "Bench Publisher"
PRODUCT = "Failover Widget"
VERSION = "1.0"
#: Members of the benchmark domain (hqnserver1..3 on 127.0.0.1..3).
DOMAIN_SIZE = 3
#: How long daemons may take to start and elect a primary serving a view of all three.
ELECTION_BOUND = 30.0
#: How long after the SIGKILL a grant may take before the run counts as failed.
FAILOVER_BOUND = 30.0
#: Timeout of every connect and reply of the failover probes (seconds).
PROBE_TIMEOUT = 10.0
#: Pause between two readiness polls (each poll is a bounded client call).
READY_POLL = 0.05
#: Pause between two admission polls (each an admin ``sinfo``: the figure's resolution).
ADMISSION_POLL = 0.02
#: The longest path an AF_UNIX socket may have (Linux: 108 bytes with the NUL);
#: each daemon's admin socket is STATE_DIR/admin.sock, deep in the work tree.
MAX_UNIX_PATH = 107
#: Floating licences of the failover runs' product (they take two or three).
FAILOVER_LICENCES = 16
#: Floating licences of the throughput runs' product: far more than the load's
#: connections ever hold, so that licences whose RELEASE was answered
#: ``NEW_MASTER`` (during a view change; checkout.py does not retry them) do not
#: turn the rest of the load into ``NOLICENCES`` denials.
THROUGHPUT_LICENCES_PER_CONNECTION = 20
THROUGHPUT_LICENCES_MIN = 1000


class BenchFailure(Exception):
    """A daemon did not behave (or not in time); the message says what and where."""


@dataclasses.dataclass
class FailoverRun:
    """One failover measurement (and the admission measured before it)."""

    seconds: float
    granted_by: str
    requests: int
    replies: collections.Counter[str]
    #: seconds from the restarted hqnserver3's first PING answer to its admission
    admission: float

    def as_dict(self) -> dict[str, Any]:
        """The run as JSON-ready data."""
        return {
            "admission_seconds": round(self.admission, 4),
            "seconds": round(self.seconds, 4),
            "granted_by": self.granted_by,
            "requests": self.requests,
            "replies": dict(self.replies),
        }


# -- machine, harness, daemons ----------------------------------------------------------


def plural(count: int, noun: str) -> str:
    """``1 run``, ``5 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model or platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
    }


@contextlib.contextmanager
def harness(root: Path) -> Iterator[DaemonHarness]:
    """A `DaemonHarness` in ``root`` whose daemons are all killed on exit.

    The harness prints every daemon's log tail when it closes; that goes to
    stderr only if something failed, so a good run prints just the figures.
    """
    root.mkdir(parents=True)
    failed = True
    daemons = DaemonHarness(root)
    try:
        yield daemons
        failed = False
    finally:
        tails = io.StringIO()
        with contextlib.redirect_stdout(tails):
            daemons.close()
        if failed:
            print(tails.getvalue(), file=sys.stderr)


def the_product(floating_count: int, name: str = PRODUCT) -> ProductPermit:
    """The benchmark's product permit (or another product ``name`` of its publisher)."""
    return product_permit(
        name, publisher=PUBLISHER, version=VERSION, floating_count=floating_count
    )


def single_host(
    daemons: DaemonHarness, floating_count: int, others: Sequence[tuple[str, int]] = ()
) -> Daemon:
    """A daemon (not started) on 127.0.0.1 serving a permit whose only server is itself:
    the benchmark's product with ``floating_count`` licences, and ``others`` (name,
    licences) of the same publisher and version."""
    daemons.write_hosts([loopback(1)])
    products = [the_product(floating_count), *(the_product(n, name) for name, n in others)]
    daemons.write_permit(make_permit([daemons.host(1)], products))
    return daemons.daemon("single", n=1)


def domain_members(daemons: DaemonHarness, floating_count: int) -> list[Daemon]:
    """Three daemons (not started) serving one permit whose domain is all three
    (`tests.daemons.domain_daemons`), with a licence count to suit the load."""
    return domain_daemons(daemons, DOMAIN_SIZE, [the_product(floating_count)])


def request(client: LineClient, token: str, pid: int = 4242) -> Ok | Err:
    """REQUEST one licence of the benchmark product on ``client``'s connection."""
    return client.call(
        "REQUEST",
        publisher=PUBLISHER,
        product=PRODUCT,
        version=VERSION,
        user="bench",
        host="benchhost",
        pid=pid,
        client=token,
    )


def is_grant(reply: Ok | Err) -> bool:
    """The reply is a grant (an OK with a handle)."""
    return isinstance(reply, Ok) and bool(reply.get("handle"))


def redirects_to_first(reply: Ok | Err) -> bool:
    """The reply sends the client to hqnserver1 (what a verified backup says)."""
    return (
        isinstance(reply, Err)
        and reply.status is Status.TRY_SERVER
        and reply.get("n") == "1"
    )


def wait_reply(
    what: str,
    daemon: Daemon,
    token: str,
    done: Callable[[Ok | Err], bool],
    bound: float,
) -> Ok | Err:
    """REQUEST at ``daemon`` until ``done(reply)`` (at most ``bound`` s); BenchFailure if late."""
    deadline = time.monotonic() + bound
    last: object = None
    while True:
        if not daemon.running:
            raise BenchFailure(f"{what}: {daemon.name} exited\n" + daemon.log_tail())
        try:
            with daemon.client(timeout=PROBE_TIMEOUT) as client:
                reply = request(client, token)
            if done(reply):
                return reply
            last = reply
        except (OSError, client_side.ReplyParseError) as error:
            last = error
        if time.monotonic() >= deadline:
            raise BenchFailure(f"{what}: not within {bound} s (last reply: {last})")
        time.sleep(READY_POLL)


def release(daemon: Daemon, reply: Ok | Err) -> None:
    """RELEASE the licence granted in ``reply`` (so it does not sit in the load's pool)."""
    with daemon.client(timeout=PROBE_TIMEOUT) as client:
        answer = client.call("RELEASE", handle=reply.get("handle") or "")
    if not isinstance(answer, Ok):
        raise BenchFailure(f"{daemon.name}: RELEASE answered {answer}")


def start_domain(daemons: DaemonHarness, members: list[Daemon]) -> None:
    """Start the members and wait until hqnserver1 grants in a view of all three.

    hqnserver2 and hqnserver3 redirecting to hqnserver1 (``TRY_SERVER n=1``)
    means both are verified backups in its view; hqnserver1 granting after that
    means it serves in that view (admitting a member is a view change).
    """
    first, *backups = members
    daemons.start_all(*members, timeout=ELECTION_BOUND)
    deadline = time.monotonic() + ELECTION_BOUND
    wait_reply("hqnserver1 grants", first, "ready-1", is_grant, ELECTION_BOUND)
    for member in backups:
        wait_reply(
            f"{member.name} redirects to hqnserver1", member, f"ready-{member.name}",
            redirects_to_first, max(deadline - time.monotonic(), READY_POLL),
        )
    wait_reply(
        "hqnserver1 grants in the view of three", first, "ready-2", is_grant,
        max(deadline - time.monotonic(), READY_POLL),
    )


# -- throughput ------------------------------------------------------------------------


def churn(daemon: Daemon, args: argparse.Namespace) -> dict[str, Any]:
    """Run checkout.py's churn phase against ``daemon``; its result dict."""
    load = checkout.parse_args([
        "--host", daemon.address,
        "--port", str(daemon.port),
        "--connections", str(args.connections),
        "--seconds", str(args.seconds),
        "--hold", "0",
        "--publisher", PUBLISHER,
        "--product", PRODUCT,
        "--version", VERSION,
        "--user", "bench",
        "--client-host", "benchhost",
        "--reply-timeout", str(PROBE_TIMEOUT),
    ])
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            results = asyncio.run(checkout.run(load))
    except (checkout.BenchError, TimeoutError, OSError) as error:
        raise BenchFailure(f"load against {daemon.name}: {error or type(error).__name__}") from None
    result = cast(dict[str, Any], results["churn"])
    if result["pairs"] <= 0:
        raise BenchFailure(
            f"load against {daemon.name}: no REQUEST+RELEASE pair completed "
            f"(denials {result['denials']}, failed releases {result['release_errors']})"
        )
    return result


def throughput(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same load against a single host, then against a domain's primary; both results."""
    licences = max(THROUGHPUT_LICENCES_MIN, THROUGHPUT_LICENCES_PER_CONNECTION * args.connections)
    with harness(root / "single") as daemons:
        single = single_host(daemons, licences)
        single.start_and_wait()
        release(single, wait_reply("single host grants", single, "ready", is_grant, ELECTION_BOUND))
        single_result = churn(single, args)
    with harness(root / "domain") as daemons:
        members = domain_members(daemons, licences)
        start_domain(daemons, members)
        domain_result = churn(members[0], args)
    return {
        "single": single_result,
        "domain": domain_result,
        "ratio": round(domain_result["pairs_per_second"] / single_result["pairs_per_second"], 4),
    }


#: Status classes of a licence decision: a legitimate denial, not a refusal.
DECISIONS = frozenset({Standard.NO_LICENCE, Standard.NOT_PERMITTED})


def refused(result: dict[str, Any]) -> dict[str, int]:
    """The refused requests of a churn result, by ``VERB STATUS``: every REQUEST
    denial that is not a licence decision, and every failed RELEASE."""
    counts: dict[str, int] = {}
    for name, count in sorted(result["denials"].items()):
        if Status[name].standard not in DECISIONS:
            counts[f"REQUEST {name}"] = count
    for name, count in sorted(result["release_errors"].items()):
        counts[f"RELEASE {name}"] = count
    return counts


def describe_refused(result: dict[str, Any]) -> str:
    """``0`` or ``N (REQUEST NEW_MASTER n, ...)``."""
    counts = refused(result)
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"


def describe_load(result: dict[str, Any]) -> str:
    """One line's worth of a churn result."""
    text = (
        f"{result['pairs_per_second']:.1f} pairs/s ({result['pairs']} pairs in "
        f"{result['seconds']:.1f} s; pair latency p50 {result['p50_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms)"
    )
    if result["denials"]:
        text += " denied: " + ", ".join(f"{k} {v}" for k, v in result["denials"].items())
    if result["release_errors"]:
        text += " failed releases: " + ", ".join(
            f"{k} {v}" for k, v in result["release_errors"].items()
        )
    return text


# -- failover --------------------------------------------------------------------------


#: Signals that stop the script: only the main thread takes them (`Prober.start`).
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Prober:
    """Hammers one member with REQUESTs (a new token each) after a start signal.

    Runs in its own thread with one persistent connection (reopened if the
    member drops it); stops at the first grant anywhere, or at the deadline.
    """

    def __init__(
        self, daemon: Daemon, index: int, run: int, go: threading.Event,
        done: threading.Event, poll: float, first: list[tuple[float, str]],
        lock: threading.Lock,
    ) -> None:
        self.daemon = daemon
        self.index = index
        self.run = run
        self.go = go
        self.done = done
        self.poll = poll
        self.first = first
        self.lock = lock
        self.requests = 0
        self.replies: collections.Counter[str] = collections.Counter()
        self.deadline = 0.0
        self.thread = threading.Thread(target=self._main, name=f"probe-{daemon.name}", daemon=True)
        self.client: LineClient | None = None

    def connect(self) -> None:
        """Open the connection now (before the kill), so connecting is not measured."""
        self.client = self.daemon.client(timeout=PROBE_TIMEOUT)

    def start(self) -> None:
        """Start the thread; it waits for ``go``.

        The thread is started with SIGINT and SIGTERM blocked (a thread inherits its
        creator's mask), so the kernel delivers them to the main thread: one taken
        by a probe thread would leave the main thread blocked in its join until the
        join's timeout, and the script would not stop promptly."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _main(self) -> None:
        try:
            self._hammer()
        finally:
            if self.client is not None:
                self.client.close()

    def _hammer(self) -> None:
        if not self.go.wait(FAILOVER_BOUND):
            return
        deadline = time.monotonic() + FAILOVER_BOUND
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                if self.client is None:
                    self.client = self.daemon.client(timeout=PROBE_TIMEOUT)
                token = f"failover-{self.run}-{self.daemon.name}-{self.requests}"
                self.requests += 1
                reply = request(self.client, token, pid=5000 + self.index)
                answered = time.monotonic()
            except (OSError, client_side.ReplyParseError) as error:
                self.replies[type(error).__name__] += 1
                if self.client is not None:
                    self.client.close()
                self.client = None
                self.done.wait(self.poll)
                continue
            if is_grant(reply):
                with self.lock:
                    self.first.append((answered, self.daemon.name))
                self.replies["OK"] += 1
                self.done.set()
                return
            self.replies[reply.status.name if isinstance(reply, Err) else "OK"] += 1
            self.done.wait(self.poll)


def domain_of(daemon: Daemon) -> dict[str, Any]:
    """The domain as ``sinfo`` on ``daemon``'s admin socket shows it (role, epoch, view...)."""
    try:
        client = AdminClient.unix(daemon.state_dir / SOCKET_NAME, timeout=PROBE_TIMEOUT)
        try:
            answer = client.call("sinfo", {})
        finally:
            client.close()
    except (OSError, AdminClientError) as error:
        raise BenchFailure(f"sinfo on {daemon.name}: {error}") from None
    if not answer.get("ok"):
        raise BenchFailure(f"sinfo on {daemon.name} failed: {answer}")
    (domain,) = answer["result"]["domains"]
    return dict(domain)


def admission(members: list[Daemon]) -> float:
    """SIGKILL hqnserver3, wait until hqnserver1 has dropped it from its view, start it
    again: the seconds from its first PING answer to its admission (``sinfo`` on it
    shows it a backup in a view newer than the one that dropped it: right after the
    restart it shows its stored, older view); then wait until hqnserver1 grants again."""
    first, _, third = members
    third.kill()
    deadline = time.monotonic() + ELECTION_BOUND
    while third.address in (dropped := domain_of(first))["view"]:
        if time.monotonic() >= deadline:
            raise BenchFailure(f"{first.name} did not drop {third.name} within {ELECTION_BOUND} s")
        time.sleep(READY_POLL)
    third.start()
    third.wait_ready(ELECTION_BOUND)
    answered = time.monotonic()
    deadline = answered + ELECTION_BOUND
    while True:
        info = domain_of(third)
        if (
            info["role"] == "backup"
            and third.address in info["view"]
            and info["epoch"] > dropped["epoch"]
        ):
            break
        if time.monotonic() >= deadline:
            raise BenchFailure(f"restarted {third.name} not admitted within {ELECTION_BOUND} s")
        time.sleep(ADMISSION_POLL)
    admitted = time.monotonic() - answered
    wait_reply("hqnserver1 grants again", first, "admitted", is_grant, ELECTION_BOUND)
    return admitted


def failover_once(root: Path, run: int, args: argparse.Namespace) -> FailoverRun:
    """One fresh domain: time the admission of a restarted member, then SIGKILL the
    primary and time the first grant by a survivor."""
    with harness(root / f"run{run}") as daemons:
        members = domain_members(daemons, FAILOVER_LICENCES)
        start_domain(daemons, members)
        admitted = admission(members)
        first, *survivors = members
        go, done, lock = threading.Event(), threading.Event(), threading.Lock()
        grants: list[tuple[float, str]] = []
        probers = [
            Prober(member, i, run, go, done, args.poll, grants, lock)
            for i, member in enumerate(survivors)
        ]
        try:
            for prober in probers:
                prober.connect()
                prober.start()
            killed_at = time.monotonic()
            os.kill(first.pid, signal.SIGKILL)
            go.set()
            first.wait_exit()
            for prober in probers:
                prober.thread.join(FAILOVER_BOUND + 2 * PROBE_TIMEOUT)
        finally:
            done.set()
            go.set()
            for prober in probers:
                prober.thread.join(2 * PROBE_TIMEOUT)
        replies: collections.Counter[str] = collections.Counter()
        for prober in probers:
            replies.update(prober.replies)
        if not grants:
            raise BenchFailure(
                f"failover run {run}: no survivor granted within {FAILOVER_BOUND} s of the "
                f"SIGKILL (replies: {dict(replies)})\n"
                + "\n".join(member.log_tail() for member in survivors)
            )
        granted_at, granted_by = min(grants)
        return FailoverRun(
            seconds=granted_at - killed_at,
            granted_by=granted_by,
            requests=sum(prober.requests for prober in probers),
            replies=replies,
            admission=admitted,
        )


def describe_run(run: FailoverRun) -> str:
    """One line's worth of a failover run."""
    seen = ", ".join(f"{k} {v}" for k, v in sorted(run.replies.items()))
    return (
        f"{run.seconds:.3f} s from SIGKILL of hqnserver1 to OK from {run.granted_by} "
        f"({run.requests} requests: {seen}); admission {run.admission:.3f} s"
    )


# -- the command ---------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Failover time of a three-member hqnlsd domain, and its REQUEST+RELEASE "
                    "throughput compared with a single host."
    )
    parser.add_argument("--runs", type=int, default=5, help="failover runs (default 5)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds of load against each of the two targets (default 10)")
    parser.add_argument("--connections", type=int, default=50,
                        help="concurrent load connections (default 50)")
    parser.add_argument("--poll", type=float, default=0.005,
                        help="pause between two REQUESTs of one failover probe (default 0.005 s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to put the daemons' trees (a new directory inside it; "
                             "default: a temporary directory, removed at the end)")
    parser.add_argument("--json", action="store_true",
                        help="also print every figure as one JSON object (last line)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if not 0 <= args.poll <= 1:
        parser.error("--poll must be between 0 and 1 s")
    return args


def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Print and return every figure."""
    host = machine()
    results: dict[str, Any] = {"machine": host}
    print("hqnlsd failover and domain throughput (bench/failover.py)")
    print(
        f"machine: {host['cpus']} CPUs ({host['cpus_usable']} usable), {host['cpu_model']}, "
        f"{host['platform']}, Python {host['python']}, Twisted {host['twisted']}"
    )
    print(
        f"settings: {plural(args.runs, 'failover run')}, load {args.connections} connections x "
        f"{args.seconds:g} s closed loop per target, probe pause {args.poll * 1e3:g} ms"
    )
    sys.stdout.flush()

    load = throughput(root, args)
    results["throughput"] = load
    print(f"throughput single host:         {describe_load(load['single'])}")
    print(f"throughput 3-member domain:     {describe_load(load['domain'])}")
    print(f"throughput ratio domain/single: {load['ratio']:.3f}")
    print(f"refused requests single host:   {describe_refused(load['single'])}")
    print(f"refused requests 3-member domain: {describe_refused(load['domain'])}")
    load["refused"] = {
        "single": sum(refused(load["single"]).values()),
        "domain": sum(refused(load["domain"]).values()),
    }
    sys.stdout.flush()

    runs = []
    for run in range(1, args.runs + 1):
        measured = failover_once(root, run, args)
        runs.append(measured)
        print(f"failover run {run}/{args.runs}: {describe_run(measured)}")
        sys.stdout.flush()
    times = [r.seconds for r in runs]
    summary = {
        "median": round(statistics.median(times), 4),
        "min": round(min(times), 4),
        "max": round(max(times), 4),
    }
    print(
        f"failover median {summary['median']:.3f} s "
        f"(min {summary['min']:.3f} s, max {summary['max']:.3f} s) over {plural(len(runs), 'run')}"
    )
    results["failover"] = {"runs": [r.as_dict() for r in runs], **summary}
    admissions = [r.admission for r in runs]
    results["admission"] = {
        "median": round(statistics.median(admissions), 4),
        "min": round(min(admissions), 4),
        "max": round(max(admissions), 4),
    }
    print(
        f"admission median {results['admission']['median']:.3f} s "
        f"(min {results['admission']['min']:.3f} s, max {results['admission']['max']:.3f} s) "
        f"over {plural(len(runs), 'run')}: restarted hqnserver3, first PING answer to admission"
    )
    return results


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: leave through the ``finally`` clauses, which kill every daemon."""
    raise SystemExit(128 + signum)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGINT: a KeyboardInterrupt wherever the main thread is, the load included."""
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT leave through the ``finally`` clauses, which kill every daemon.

    SIGINT gets a handler of its own (raising KeyboardInterrupt, as Python's default
    one does) because ``asyncio.run`` (the load generator) takes SIGINT over while
    Python's default handler is installed and turns it into a cancellation of its
    main task, which a task finishing at that moment can swallow: the script then
    went on to its failover runs instead of stopping."""
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, _interrupted)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status."""
    args = parse_args(argv)
    install_signal_handlers()
    try:
        with contextlib.ExitStack() as stack:
            if args.workdir is None:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fo-")))
            else:
                args.workdir.mkdir(parents=True, exist_ok=True)
                root = Path(tempfile.mkdtemp(prefix="fo-", dir=args.workdir))
            deepest = root / f"run{args.runs}" / "hqnserver3" / "state" / SOCKET_NAME
            if len(os.fsencode(deepest)) > MAX_UNIX_PATH:
                print(
                    f"failover: the daemons' admin sockets would be too long a path for "
                    f"AF_UNIX ({deepest}): give a shorter --workdir", file=sys.stderr,
                )
                if args.workdir is not None:
                    root.rmdir()
                return 2
            results = measure(root, args)
    except (BenchFailure, DaemonError) as error:
        print(f"failover: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("failover: interrupted; every daemon was killed", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
