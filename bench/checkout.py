#!/usr/bin/env python3
"""Checkout benchmark for any server speaking the hqnlsd text protocol.

Two phases, each bounded in time, everything closed at the end:

1. churn: ``--connections`` concurrent connections each loop REQUEST + RELEASE
   for ``--seconds``; prints pairs per second and the p50/p99 latency of a pair.
2. hold: takes ``--hold`` licences spread over the connections (each with its
   own ``client=`` token and pid) and, given ``--pid``, prints the daemon's
   resident memory (``/proc/PID/status`` VmRSS) before and after, per licence;
   then releases them all.

Example::

    python bench/checkout.py --port 1236 --publisher Harlequin --product LispWorks \\
        --version 8.0 --connections 200 --seconds 10 --hold 10000 --pid "$(pidof ...)"

Exit status: 0 when every exchange was well-formed (denials such as NOLICENCES
are counted, not failures), 1 on connection errors, malformed replies or
timeouts, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import getpass
import json
import math
import os
import socket
import sys
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script from anywhere: the repository root holds the hqnlsd package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hqnlsd.protocols import client_side
from hqnlsd.protocols.replies import Err, FieldValue, Ok

#: Fake process ids: churn connection i uses CHURN_PID_BASE + i, held licence k
#: uses HOLD_PID_BASE + k, so the server sees distinct processes.
CHURN_PID_BASE = 1_000_000
HOLD_PID_BASE = 2_000_000


class BenchError(Exception):
    """The server did not answer as the protocol says (or not in time)."""


@dataclasses.dataclass
class ChurnStats:
    """What the churn phase measured."""

    pair_latencies: list[float] = dataclasses.field(default_factory=list)
    denials: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    release_errors: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    requests: int = 0
    releases: int = 0
    elapsed: float = 0.0


class Connection:
    """One client connection: send a request line, read its one-line reply."""

    def __init__(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        reply_timeout: float,
    ) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.reply_timeout = reply_timeout

    @classmethod
    async def open(cls, index: int, host: str, port: int, timeout: float) -> Connection:
        """Connect, within `timeout` seconds."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout
            )
        except (OSError, TimeoutError) as e:
            raise BenchError(f"connection {index} to {host}:{port} failed: {e!r}") from None
        return cls(index, reader, writer, timeout)

    async def call(self, verb: str, **fields: FieldValue) -> Ok | Err:
        """Send one request and return its (one-line) reply."""
        self.writer.write(client_side.format_request(verb, **fields))
        try:
            raw = await asyncio.wait_for(self.reader.readline(), self.reply_timeout)
        except TimeoutError:
            raise BenchError(
                f"connection {self.index}: no reply to {verb} within {self.reply_timeout} s"
            ) from None
        except (OSError, ValueError) as e:
            raise BenchError(f"connection {self.index}: {e!r}") from None
        if not raw.endswith(b"\n"):
            raise BenchError(f"connection {self.index}: server closed the connection")
        try:
            return client_side.parse_reply_line(raw.decode("utf-8").rstrip("\r\n"))
        except (UnicodeDecodeError, client_side.ReplyParseError) as e:
            raise BenchError(f"connection {self.index}: bad reply {raw!r}: {e}") from None

    async def close(self) -> None:
        """QUIT politely (bounded), then close the socket."""
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            if not self.writer.is_closing():
                self.writer.write(b"QUIT\n")
                await asyncio.wait_for(self.reader.readline(), min(self.reply_timeout, 2.0))
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


def read_rss(pid: int) -> int:
    """Resident memory of process `pid` in bytes (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit.lower() != "kb":
                raise BenchError(f"unexpected VmRSS unit {unit!r}")
            return int(value) * 1024
    raise BenchError(f"no VmRSS in /proc/{pid}/status (a kernel thread?)")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def product_fields(args: argparse.Namespace) -> dict[str, FieldValue]:
    """The REQUEST fields naming the product and the (simulated) process owner."""
    return {
        "publisher": args.publisher,
        "product": args.product,
        "version": args.version,
        "user": args.user,
        "host": args.client_host,
    }


async def churn_one(
    conn: Connection, args: argparse.Namespace, deadline: float, stats: ChurnStats
) -> None:
    """REQUEST + RELEASE on one connection until `deadline` (loop time)."""
    loop = asyncio.get_running_loop()
    fields = product_fields(args)
    pid = CHURN_PID_BASE + conn.index
    # Open loop (--rate): pairs start on a fixed schedule, spread over the
    # connections, and latency counts from the *scheduled* start, so a server
    # that falls behind shows it as latency (no coordinated omission).
    interval = args.connections / args.rate if args.rate else 0.0
    scheduled = loop.time() + interval * conn.index / args.connections
    while loop.time() < deadline:
        if interval:
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            start = time.perf_counter() - max(0.0, loop.time() - scheduled)
            scheduled += interval
        else:
            start = time.perf_counter()
        granted = await conn.call("REQUEST", **fields, pid=pid)
        stats.requests += 1
        if isinstance(granted, Err):
            stats.denials[granted.status.name] += 1
            # Out of licences is expected with many connections; don't spin.
            await asyncio.sleep(0.001)
            continue
        handle = granted.get("handle")
        if handle is None:
            raise BenchError(f"REQUEST answered OK without handle=: {granted}")
        released = await conn.call("RELEASE", handle=handle)
        stats.releases += 1
        if isinstance(released, Err):
            stats.release_errors[released.status.name] += 1
            continue
        stats.pair_latencies.append(time.perf_counter() - start)


async def churn(conns: list[Connection], args: argparse.Namespace) -> ChurnStats:
    """Phase 1: every connection churns for args.seconds."""
    stats = ChurnStats()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + args.seconds
    await asyncio.wait_for(
        asyncio.gather(*(churn_one(c, args, deadline, stats) for c in conns)),
        args.seconds + 2 * args.reply_timeout + 1,
    )
    stats.elapsed = loop.time() - started
    return stats


async def hold_some(
    conn: Connection, args: argparse.Namespace, first: int, count: int, run: str,
    handles: list[str], denials: collections.Counter[str],
) -> None:
    """Take `count` licences on one connection, numbered from `first`."""
    fields = product_fields(args)
    for k in range(first, first + count):
        reply = await conn.call(
            "REQUEST", **fields, pid=HOLD_PID_BASE + k, client=f"bench-{run}-{k}"
        )
        if isinstance(reply, Err):
            denials[reply.status.name] += 1
            continue
        handle = reply.get("handle")
        if handle is None:
            raise BenchError(f"REQUEST answered OK without handle=: {reply}")
        handles.append(handle)


async def release_all(conn: Connection, handles: list[str]) -> int:
    """Release `handles` on one connection; the number released."""
    released = 0
    for handle in handles:
        if isinstance(await conn.call("RELEASE", handle=handle), Ok):
            released += 1
    return released


async def hold(conns: list[Connection], args: argparse.Namespace) -> dict[str, object]:
    """Phase 2: hold args.hold licences, measure the daemon's memory, release."""
    result: dict[str, object] = {"wanted": args.hold}
    users = conns[: min(len(conns), args.hold)]
    share, extra = divmod(args.hold, len(users))
    run = uuid.uuid4().hex[:8]
    per_conn: list[list[str]] = [[] for _ in users]
    denials: collections.Counter[str] = collections.Counter()
    rss_before = read_rss(args.pid) if args.pid else None
    started = time.perf_counter()
    jobs = []
    first = 0
    for i, conn in enumerate(users):
        count = share + (1 if i < extra else 0)
        jobs.append(hold_some(conn, args, first, count, run, per_conn[i], denials))
        first += count
    await asyncio.wait_for(asyncio.gather(*jobs), args.hold_timeout)
    result["seconds_to_take"] = round(time.perf_counter() - started, 3)
    held = sum(len(h) for h in per_conn)
    result["held"] = held
    result["denials"] = dict(denials)
    if args.pid:
        rss_after = read_rss(args.pid)
        assert rss_before is not None
        result["rss_before"] = rss_before
        result["rss_after"] = rss_after
        result["bytes_per_licence"] = round((rss_after - rss_before) / held) if held else None
    released = await asyncio.wait_for(
        asyncio.gather(*(release_all(c, h) for c, h in zip(users, per_conn, strict=True))),
        args.hold_timeout,
    )
    result["released"] = sum(released)
    return result


def mib(n: int) -> str:
    """Bytes as MiB text."""
    return f"{n / 2**20:.1f} MiB"


def report_churn(stats: ChurnStats, args: argparse.Namespace) -> dict[str, object]:
    """Print the churn results; return them as a dict."""
    lat = sorted(stats.pair_latencies)
    pairs = len(lat)
    elapsed = stats.elapsed or 1e-9
    p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
    print(
        f"churn ({f'open loop at {args.rate:g} pairs/s' if args.rate else 'closed loop'}): "
        f"{args.connections} connections, {stats.elapsed:.1f} s: {pairs} "
        f"REQUEST+RELEASE pairs ({pairs / elapsed:.1f} pairs/s; "
        f"{(stats.requests + stats.releases) / elapsed:.1f} requests/s, "
        "REQUEST and RELEASE, denials included)"
    )
    print(f"pair latency: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    if stats.denials:
        print("denied requests: " + ", ".join(f"{k} {v}" for k, v in stats.denials.items()))
    if stats.release_errors:
        print("failed releases: " + ", ".join(
            f"{k} {v}" for k, v in stats.release_errors.items()))
    return {
        "connections": args.connections,
        "offered_rate": args.rate or None,
        "seconds": round(stats.elapsed, 3),
        "pairs": pairs,
        "pairs_per_second": round(pairs / elapsed, 1),
        "requests": stats.requests,
        "releases": stats.releases,
        "requests_per_second": round((stats.requests + stats.releases) / elapsed, 1),
        "p50_ms": round(p50 * 1e3, 3),
        "p99_ms": round(p99 * 1e3, 3),
        "denials": dict(stats.denials),
        "release_errors": dict(stats.release_errors),
    }


def report_hold(result: dict[str, object], args: argparse.Namespace) -> None:
    """Print the hold results."""
    print(
        f"hold: {result['held']}/{args.hold} licences held over "
        f"{min(args.connections, args.hold)} connections in {result['seconds_to_take']} s"
    )
    denials = result["denials"]
    if isinstance(denials, dict) and denials:
        print("denied requests: " + ", ".join(f"{k} {v}" for k, v in denials.items()))
    if args.pid:
        before, after = result["rss_before"], result["rss_after"]
        assert isinstance(before, int) and isinstance(after, int)
        print(
            f"daemon {args.pid} VmRSS: before {mib(before)}, after {mib(after)}, "
            f"{(after - before) / 1024:+.0f} KiB = "
            f"{result['bytes_per_licence']} bytes per licence"
        )
    else:
        print("daemon memory not measured (give --pid)")
    print(f"released: {result['released']}")


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Both phases; every connection closed whatever happens."""
    conns: list[Connection] = []
    results: dict[str, object] = {}
    try:
        opened = await asyncio.gather(
            *(Connection.open(i, args.host, args.port, args.reply_timeout)
              for i in range(args.connections)),
            return_exceptions=True,
        )
        conns = [c for c in opened if isinstance(c, Connection)]
        failures = [e for e in opened if isinstance(e, BaseException)]
        if failures:
            raise failures[0]
        if args.seconds > 0:
            results["churn"] = report_churn(await churn(conns, args), args)
        if args.hold > 0:
            result = await hold(conns, args)
            report_hold(result, args)
            results["hold"] = result
        return results
    finally:
        await asyncio.gather(*(c.close() for c in conns))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    try:
        default_user = getpass.getuser()
    except (KeyError, OSError):
        default_user = "bench"
    parser = argparse.ArgumentParser(
        description="REQUEST/RELEASE throughput and per-licence memory of an hqnlsd server."
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=int, default=1236, help="server port")
    parser.add_argument("--connections", type=int, default=200, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of the churn phase (0 skips it)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop: REQUEST+RELEASE pairs per second in total, on a "
                             "fixed schedule (0: closed loop, each connection as fast as it can)")
    parser.add_argument("--publisher", default="Harlequin")
    parser.add_argument("--product", default="LispWorks")
    parser.add_argument("--version", default="8.0")
    parser.add_argument("--user", default=default_user, help="user= sent with requests")
    parser.add_argument("--client-host", default=socket.gethostname(),
                        help="host= sent with requests")
    parser.add_argument("--hold", type=int, default=10000,
                        help="licences to hold at once in the hold phase (0 skips it)")
    parser.add_argument("--pid", type=int, default=None,
                        help="the daemon's pid, to read its VmRSS from /proc")
    parser.add_argument("--reply-timeout", type=float, default=10.0,
                        help="seconds to wait for a connection or any one reply")
    parser.add_argument("--hold-timeout", type=float, default=300.0,
                        help="seconds allowed to take (and again to release) all held licences")
    parser.add_argument("--json", action="store_true",
                        help="also print the results as one JSON object")
    args = parser.parse_args(argv)
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if args.rate < 0:
        parser.error("--rate can't be negative")
    if args.seconds < 0 or args.hold < 0:
        parser.error("--seconds and --hold can't be negative")
    if args.reply_timeout <= 0 or args.hold_timeout <= 0:
        parser.error("timeouts must be positive")
    if args.pid is not None and not os.path.exists(f"/proc/{args.pid}/status"):
        parser.error(f"--pid {args.pid}: no such process (no /proc/{args.pid}/status)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status."""
    args = parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except (BenchError, TimeoutError, OSError) as e:
        print(f"checkout: {e or type(e).__name__}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
