#!/usr/bin/env python3
"""hqnlsd side by side with Redis and etcd: the same load, the same machine, one table.

Everything runs on loopback (127.0.0.1-3) on this machine and is killed at the end:

- **hqnlsd, single host**: one ``twistd -n hqnlsd`` (`tests/daemons.py`) whose permit
  names only itself (every grant and release committed with an fsync before the
  answer);
- **hqnlsd, 3-member domain**: three daemons of one domain (mutual TLS; every grant
  and release written by a quorum before the answer), the load at hqnserver1;
- **Redis** (``redis-server`` of the system's packages): ``appendonly yes`` and
  ``appendfsync always`` (the durable comparison), and the same server switched to
  ``appendfsync no`` (``CONFIG SET``) for the no-fsync row. A licence is a member of
  one ZSET: acquire is a Lua script (``EVALSHA``: ``ZCARD`` below the limit, then
  ``ZADD``; else a denial), release is a Lua script (``ZREM``);
- **etcd, 3 nodes** (``etcd`` of the system's ``etcd-server`` package), spoken to
  through its JSON gateway (HTTP/1.1 keep-alive, asyncio streams) at the first node
  started. A licence is one of ``licences`` slot keys: acquire is a ``txn`` that puts
  the slot only if it does not exist (``create_revision == 0``; a connection tries
  its own slots first, so slots are never contended while there are enough),
  release is a ``txn`` that deletes it only if it still holds the holder's value.

Every system is driven by the same asyncio load generator (one loop per process;
``--load-processes`` splits the connections over several processes started
together, for when one cannot saturate Redis): each connection loops acquire then
release. Closed loop for throughput (``--connections`` connections, ``--seconds``
per run), open loop for latency (``--rate`` pairs/s offered on a fixed schedule,
latency counted from the scheduled start, so a server that falls behind shows it).
Runs of different systems are interleaved (``--repeats`` rounds, the order
rotated each round) and the table gives medians. The figures:

1. durable pairs/s, single host: hqnlsd, Redis AOF always, Redis AOF without fsync;
2. server CPU per pair (user + system time of the server process in
   ``/proc/PID/stat`` over a closed-loop run, divided by its pairs): hqnlsd single
   host, Redis AOF always;
3. open loop at ``--rate``: pair latency p50 / p99, hqnlsd and Redis AOF always;
4. memory per held licence: ``--hold`` licences taken (a distinct holder each)
   over the connections, the server's resident memory (VmRSS) before and after,
   divided by the licences held; and the seconds taken to take them;
5. 3-member domain pairs/s (and refused requests: an ERR that is not a licence
   decision, or a failed release) against 3-node etcd pairs/s;
6. failover: ``--failover-runs`` fresh clusters each; SIGKILL of the leader to
   the first grant by a survivor (hqnlsd: `bench/failover.py`'s measurement;
   etcd: the leader as ``/v3/maintenance/status`` says, then acquires at both
   survivors, each with a short per-request timeout after which the connection is
   reopened, as a client in a hurry would).

Goals (from issue 14) are marked met / not met: single-host pairs/s >= 1.0x Redis
AOF always and >= 0.5x Redis without fsync; CPU per pair <= 3x Redis's; open-loop
p99 < 2x Redis AOF's; <= 300 bytes resident per held licence, taken in < 10 s (the
issue's size is 100,000 held); domain pairs/s >= 2x etcd's with 0 refusals;
failover is reported only.

With ``--profile``, one more closed-loop run on the hqnlsd single host and on the
domain (not in the medians) is sampled by py-spy (`bench/profiles.py`): the reactor
thread's time by area (idle, logging, protocol, journal, licensing engine, domain,
TLS, reactor and sockets) and by function, and how busy every other thread was:
what limits each figure, measured.

Examples (from the repository root)::

    python bench/sidebyside.py                      # full size: several minutes
    python bench/sidebyside.py --quick --json       # a few seconds per system
    python bench/sidebyside.py --only hqnlsd,redis --repeats 5 --seconds 8

A missing ``redis-server`` or ``etcd`` is reported with how to install it
(``apt-get install redis-server etcd-server``) and the rest is measured. Exit
status: 0 when every figure asked for was measured (goals not met included), 1
when a server failed or a bound was exceeded, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    # Run as a script from anywhere: the repository root holds hqnlsd, tests/ and bench/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import checkout, failover, profiles
from hqnlsd.protocols.replies import Err
from tests.daemons import DaemonError, _die_with_parent, free_port, free_port_on_all, loopback

#: The systems ``--only`` chooses among.
SYSTEMS = ("hqnlsd", "redis", "etcd")
#: How to install what a system needs, by its executable.
INSTALL_HINTS = {
    "redis-server": "apt-get install -y redis-server",
    "etcd": "apt-get install -y etcd-server",
}
#: Seconds a server may take to start answering.
START_BOUND = 60.0
#: Seconds any one connect or reply may take during the load.
REPLY_TIMEOUT = 10.0
#: Failover: per-request timeout of the etcd probes (the resolution of a stuck
#: request: reopened and retried with a new key after this).
ETCD_PROBE_TIMEOUT = 0.25
#: Failover: how long after the SIGKILL a grant may take before the run fails.
FAILOVER_BOUND = 30.0
#: Licences (slots) of every system's product: far more than the load holds.
CHURN_LICENCES = 1000
#: Redis key of the licence ZSET and etcd prefix of the slot keys.
REDIS_KEY = "licences:bench"
ETCD_PREFIX = "licences/bench/"

#: Redis acquire: ARGV limit, holder, score. 1 granted, 0 denied (full).
REDIS_ACQUIRE = (
    "if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then "
    "redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) return 1 end return 0"
)
#: Redis release: ARGV holder. 1 released, 0 not held.
REDIS_RELEASE = "return redis.call('ZREM', KEYS[1], ARGV[1])"


class BenchFailure(Exception):
    """A server did not behave (or not in time); the message says what and where."""


class Refused(Exception):
    """The server answered, but neither with a grant nor with a licence decision."""


# -- the figures: goals, ratios, the table (pure) -----------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table."""

    figure: str
    hqnlsd: str
    alternative: str
    ratio: str
    goal: str
    verdict: str  # "met", "not met", "report" or "n/a"

    def as_dict(self) -> dict[str, str]:
        """The row as JSON-ready data."""
        return dataclasses.asdict(self)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs``, or None when either is missing or theirs is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def verdict(met: bool | None) -> str:
    """``met``, ``not met`` or ``n/a`` (not measured)."""
    return "n/a" if met is None else ("met" if met else "not met")


def at_least(value: float | None, bound: float) -> bool | None:
    """value >= bound, None when value is missing."""
    return None if value is None else value >= bound


def below(value: float | None, bound: float) -> bool | None:
    """value < bound, None when value is missing."""
    return None if value is None else value < bound


def at_most(value: float | None, bound: float) -> bool | None:
    """value <= bound, None when value is missing."""
    return None if value is None else value <= bound


def num(value: float | None, digits: int = 0, unit: str = "") -> str:
    """A figure as text (``-`` when missing), thousands separated."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def times(value: float | None, digits: int = 2) -> str:
    """A ratio as text: ``0.27``."""
    return "-" if value is None else f"{value:.{digits}f}"


def both(first: bool | None, second: bool | None) -> bool | None:
    """Both goals met (None if either is unknown)."""
    if first is None or second is None:
        return None
    return first and second


def table_rows(f: dict[str, Any]) -> list[Row]:
    """The table from the medians in ``f`` (keys as `summarise` makes them; a
    missing key is a figure not measured)."""
    g = f.get
    rows = []
    single, always, nofsync = g("hqnlsd_pairs"), g("redis_always_pairs"), g("redis_nofsync_pairs")
    r = ratio(single, always)
    rows.append(Row(
        "durable acquire+release pairs/s, single host", num(single),
        f"Redis, appendfsync always: {num(always)}", times(r), ">= 1.0x", verdict(at_least(r, 1.0)),
    ))
    r = ratio(single, nofsync)
    rows.append(Row(
        "the same against Redis without fsync", num(single),
        f"Redis, appendfsync no: {num(nofsync)}", times(r), ">= 0.5x", verdict(at_least(r, 0.5)),
    ))
    ours, theirs = g("hqnlsd_cpu_us"), g("redis_cpu_us")
    r = ratio(ours, theirs)
    rows.append(Row(
        "server CPU per pair", num(ours, 0, " us"), f"Redis AOF always: {num(theirs, 0, ' us')}",
        times(r, 1) + ("x" if r is not None else ""), "<= 3x", verdict(at_most(r, 3.0)),
    ))
    rate = g("rate")
    (p50, p99), (rp50, rp99) = g("hqnlsd_open", (None, None)), g("redis_open", (None, None))
    r50, r99 = ratio(p50, rp50), ratio(p99, rp99)
    rows.append(Row(
        f"open loop at {num(rate)} pairs/s offered, p50 / p99",
        f"{num(p50, 1)} / {num(p99, 1)} ms",
        f"Redis AOF always: {num(rp50, 1)} / {num(rp99, 1)} ms",
        f"{times(r50)}x / {times(r99)}x", "p99 < 2x", verdict(below(r99, 2.0)),
    ))
    held = g("hold")
    mem, took, redis_mem = g("hqnlsd_bytes"), g("hqnlsd_hold_seconds"), g("redis_bytes")
    r = ratio(mem, redis_mem)
    rows.append(Row(
        f"memory per held licence, {num(held)} held",
        f"{num(mem)} bytes" + (f" (taken in {took:.1f} s)" if took is not None else ""),
        f"Redis ZSET: {num(redis_mem)} bytes",
        times(r, 1) + ("x" if r is not None else ""), "<= 300 bytes, taken in < 10 s",
        verdict(both(at_most(mem, 300), below(took, 10.0))),
    ))
    domain, etcd, refusals = g("domain_pairs"), g("etcd_pairs"), g("domain_refusals")
    r = ratio(domain, etcd)
    rows.append(Row(
        "3-member domain pairs/s", num(domain)
        + (f", {refusals} refusals" if refusals is not None else ""),
        f"etcd, 3 nodes: {num(etcd)}", times(r), ">= 2x, 0 refusals",
        verdict(both(at_least(r, 2.0), None if refusals is None else refusals == 0)),
    ))
    ours, theirs = g("hqnlsd_failover"), g("etcd_failover")
    rows.append(Row(
        "failover, SIGKILL of the leader to the first grant", num(ours, 2, " s"),
        f"etcd: {num(theirs, 2, ' s')}", times(ratio(ours, theirs)), "(report)",
        "report" if ours is not None or theirs is not None else "n/a",
    ))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| figure | hqnlsd | the alternative | ratio | goal | verdict |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row.figure} | {row.hqnlsd} | {row.alternative} | {row.ratio} | {row.goal} "
            f"| {row.verdict} |"
        )
    return "\n".join(lines)


def median(values: Sequence[float]) -> float | None:
    """The median, None if there are no values."""
    return statistics.median(values) if values else None


def summarise(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    """The medians the table shows, from every run's raw figures (by run name)."""
    def med(name: str, key: str) -> float | None:
        return median([r[key] for r in runs.get(name, []) if r.get(key) is not None])

    f: dict[str, Any] = {"rate": args.rate, "hold": args.hold}
    for key, name, field in (
        ("hqnlsd_pairs", "hqnlsd closed", "pairs_per_second"),
        ("redis_always_pairs", "redis-always closed", "pairs_per_second"),
        ("redis_nofsync_pairs", "redis-nofsync closed", "pairs_per_second"),
        ("hqnlsd_cpu_us", "hqnlsd closed", "cpu_us_per_pair"),
        ("redis_cpu_us", "redis-always closed", "cpu_us_per_pair"),
        ("domain_pairs", "hqnlsd-domain closed", "pairs_per_second"),
        ("etcd_pairs", "etcd closed", "pairs_per_second"),
        ("hqnlsd_bytes", "hqnlsd hold", "bytes_per_licence"),
        ("hqnlsd_hold_seconds", "hqnlsd hold", "seconds_to_take"),
        ("redis_bytes", "redis-always hold", "bytes_per_licence"),
        ("hqnlsd_failover", "hqnlsd failover", "seconds"),
        ("etcd_failover", "etcd failover", "seconds"),
        ("hqnlsd_client_cpu_us", "hqnlsd closed", "client_cpu_us_per_pair"),
        ("redis_client_cpu_us", "redis-always closed", "client_cpu_us_per_pair"),
        ("domain_client_cpu_us", "hqnlsd-domain closed", "client_cpu_us_per_pair"),
        ("etcd_client_cpu_us", "etcd closed", "client_cpu_us_per_pair"),
    ):
        value = med(name, field)
        if value is not None:
            f[key] = value
    for key, name in (("hqnlsd_open", "hqnlsd open"), ("redis_open", "redis-always open")):
        p50, p99 = med(name, "p50_ms"), med(name, "p99_ms")
        if p50 is not None and p99 is not None:
            f[key] = (p50, p99)
    domain_runs = runs.get("hqnlsd-domain closed", [])
    if domain_runs:
        f["domain_refusals"] = sum(r["refused"] for r in domain_runs)
    return f


# -- protocol clients (one connection each) -----------------------------------------


class Client:
    """One connection to one system: acquire a licence for a holder, release it."""

    async def acquire(self, holder: str, held: int | None = None) -> str | None:
        """A handle for ``holder`` (``held``: the number of a licence of the hold
        phase, each held by a distinct process), or None for a licence decision (no
        licence left). Raises `Refused` for any other answer, `checkout.BenchError`
        if the connection fails."""
        raise NotImplementedError

    async def release(self, handle: str) -> None:
        """Give the licence back; `Refused` if the server did not."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close the connection (bounded)."""
        raise NotImplementedError


async def open_streams(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection within ``timeout`` seconds, or `checkout.BenchError`."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as e:
        raise checkout.BenchError(f"connect to {host}:{port}: {e!r}") from None


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream, waiting at most 2 s."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2.0)


#: Status classes of a licence decision (a denial, not a refusal).
DECISIONS = failover.DECISIONS


class HqnlsdClient(Client):
    """The hqnlsd text protocol (REQUEST / RELEASE), through `checkout.Connection`."""

    def __init__(self, conn: checkout.Connection, fields: dict[str, Any], hold: int = 0) -> None:
        self.conn = conn
        self.fields = fields
        self.hold = hold

    @classmethod
    async def open(cls, index: int, target: dict[str, Any]) -> HqnlsdClient:
        """Connect to ``target['host']:target['port']``."""
        conn = await checkout.Connection.open(index, target["host"], target["port"], REPLY_TIMEOUT)
        fields = {
            "publisher": failover.PUBLISHER, "product": failover.PRODUCT,
            "version": failover.VERSION, "user": "bench", "host": "benchhost",
        }
        return cls(conn, fields, target.get("hold", 0))

    async def acquire(self, holder: str, held: int | None = None) -> str | None:
        """REQUEST as bench/checkout.py does: in the churn one process per connection,
        in the hold a process and a ``client=`` token per licence, of the product
        `hold_product` names (the hold is spread over products)."""
        if held is None:
            reply = await self.conn.call(
                "REQUEST", **self.fields, pid=checkout.CHURN_PID_BASE + self.conn.index
            )
        else:
            product = hold_product(held, self.hold) if self.hold else failover.PRODUCT
            fields = dict(self.fields, product=product)
            reply = await self.conn.call(
                "REQUEST", **fields, pid=checkout.HOLD_PID_BASE + held, client=holder
            )
        if isinstance(reply, Err):
            if reply.status.standard in DECISIONS:
                return None
            raise Refused(f"REQUEST {reply.status.name}")
        handle = reply.get("handle")
        if not handle:
            raise checkout.BenchError(f"REQUEST answered OK without handle=: {reply}")
        return handle

    async def release(self, handle: str) -> None:
        """RELEASE ``handle``."""
        reply = await self.conn.call("RELEASE", handle=handle)
        if isinstance(reply, Err):
            raise Refused(f"RELEASE {reply.status.name}")

    async def close(self) -> None:
        """QUIT and close."""
        await self.conn.close()


def resp_command(*args: str | bytes) -> bytes:
    """One Redis command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def resp_reply(reader: asyncio.StreamReader) -> Any:
    """One RESP reply: str (simple), int, bytes or None (bulk), list; errors raise `Refused`."""
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise checkout.BenchError("Redis closed the connection")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise Refused(f"Redis {body.decode(errors='replace')}")
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [await resp_reply(reader) for _ in range(count)]
    raise checkout.BenchError(f"bad RESP reply {line!r}")


class RedisClient(Client):
    """RESP over asyncio streams; acquire and release are the Lua scripts above."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shas: tuple[str, str],
        limit: int,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.acquire_sha, self.release_sha = shas
        self.limit = str(limit)

    @classmethod
    async def open(cls, index: int, target: dict[str, Any]) -> RedisClient:
        """Connect to the target and load both scripts (idempotent)."""
        reader, writer = await open_streams(target["host"], target["port"], REPLY_TIMEOUT)
        client = cls(reader, writer, ("", ""), target["limit"])
        shas = (await client.call("SCRIPT", "LOAD", REDIS_ACQUIRE),
                await client.call("SCRIPT", "LOAD", REDIS_RELEASE))
        client.acquire_sha, client.release_sha = (s.decode() for s in shas)
        return client

    async def call(self, *args: str | bytes) -> Any:
        """One command and its reply, within the reply timeout."""
        self.writer.write(resp_command(*args))
        try:
            return await asyncio.wait_for(resp_reply(self.reader), REPLY_TIMEOUT)
        except TimeoutError:
            raise checkout.BenchError(f"Redis: no reply to {args[0]!r}") from None
        except (OSError, asyncio.IncompleteReadError) as e:
            raise checkout.BenchError(f"Redis: {e!r}") from None

    async def acquire(self, holder: str, held: int | None = None) -> str | None:
        """EVALSHA acquire: the holder is the ZSET member (and the handle)."""
        granted = await self.call(
            "EVALSHA", self.acquire_sha, "1", REDIS_KEY, self.limit, holder, str(time.time())
        )
        return holder if granted == 1 else None

    async def release(self, handle: str) -> None:
        """EVALSHA release."""
        if await self.call("EVALSHA", self.release_sha, "1", REDIS_KEY, handle) != 1:
            raise Refused("Redis release: not held")

    async def close(self) -> None:
        """Close the socket."""
        await close_writer(self.writer)


def b64(text: str) -> str:
    """etcd's JSON gateway takes keys and values in base64."""
    return base64.b64encode(text.encode()).decode()


class EtcdClient(Client):
    """etcd v3's JSON gateway over one HTTP/1.1 keep-alive connection."""

    def __init__(
        self, index: int, target: dict[str, Any], reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter, timeout: float,
    ) -> None:
        self.index = index
        self.host = target["host"]
        self.slots = int(target["limit"])
        self.stride = int(target.get("stride", 1))
        self.reader, self.writer = reader, writer
        self.timeout = timeout
        self.turn = 0

    @classmethod
    async def open(
        cls, index: int, target: dict[str, Any], timeout: float = REPLY_TIMEOUT
    ) -> EtcdClient:
        """Connect to the target."""
        reader, writer = await open_streams(target["host"], target["port"], timeout)
        return cls(index, target, reader, writer, timeout)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body, return the JSON answer (`Refused` unless 200)."""
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        try:
            status, answer = await asyncio.wait_for(self._response(), self.timeout)
        except TimeoutError:
            raise checkout.BenchError(f"etcd: no answer to {path} in {self.timeout} s") from None
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            raise checkout.BenchError(f"etcd: {e!r}") from None
        if status != 200:
            raise Refused(f"etcd HTTP {status}: {answer.get('error') or answer.get('message')}")
        return answer

    async def _response(self) -> tuple[int, dict[str, Any]]:
        status_line = await self.reader.readline()
        if not status_line:
            raise checkout.BenchError("etcd closed the connection")
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while (size := int((await self.reader.readline()).split(b";")[0], 16)) > 0:
                parts.append(await self.reader.readexactly(size + 2))
            await self.reader.readline()
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.readexactly(length)
        return status, (json.loads(body) if body.strip() else {})

    async def acquire(self, holder: str, held: int | None = None) -> str | None:
        """Put a free slot (own slots first); None if every slot tried is taken."""
        for attempt in range(min(self.slots, 4)):
            slot = (self.index + (self.turn + attempt) * self.stride) % self.slots
            key = b64(f"{ETCD_PREFIX}{slot}")
            answer = await self.post("/v3/kv/txn", {
                "compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": b64(holder)}}],
            })
            if answer.get("succeeded"):
                return f"{slot} {holder}"
        self.turn += 1
        return None

    async def release(self, handle: str) -> None:
        """Delete the slot if it still holds this holder."""
        slot, holder = handle.split(" ", 1)
        key = b64(f"{ETCD_PREFIX}{slot}")
        answer = await self.post("/v3/kv/txn", {
            "compare": [{"key": key, "target": "VALUE", "value": b64(holder)}],
            "success": [{"request_delete_range": {"key": key}}],
        })
        if not answer.get("succeeded"):
            raise Refused("etcd release: slot not held")

    async def close(self) -> None:
        """Close the socket."""
        await close_writer(self.writer)


CLIENTS: dict[str, Callable[[int, dict[str, Any]], Awaitable[Client]]] = {
    "hqnlsd": HqnlsdClient.open,
    "redis": RedisClient.open,
    "etcd": EtcdClient.open,
}


# -- the load generator --------------------------------------------------------------


async def churn_one(
    client: Client, index: int, connections: int, rate: float, deadline: float,
    out: dict[str, Any], run: str,
) -> None:
    """Acquire + release on one connection until ``deadline`` (closed loop, or open
    loop at ``rate`` pairs/s over all connections, latency from the scheduled start)."""
    loop = asyncio.get_running_loop()
    interval = connections / rate if rate else 0.0
    scheduled = loop.time() + interval * index / connections
    k = 0
    while loop.time() < deadline:
        if interval:
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                if loop.time() >= deadline:
                    break
            start = time.perf_counter() - max(0.0, loop.time() - scheduled)
            scheduled += interval
        else:
            start = time.perf_counter()
        k += 1
        try:
            handle = await client.acquire(f"{run}-{index}-{k}")
        except Refused as e:
            out["refusals"][str(e)] += 1
            continue
        if handle is None:
            out["denials"] += 1
            await asyncio.sleep(0.001)  # out of licences: don't spin
            continue
        try:
            await client.release(handle)
        except Refused as e:
            out["refusals"][str(e)] += 1
            continue
        out["latencies"].append(time.perf_counter() - start)


async def load_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One process's share of a churn run; waits for ``spec['start_at']`` (wall clock)."""
    opener = CLIENTS[spec["kind"]]
    clients: list[Client] = []
    out: dict[str, Any] = {"latencies": [], "denials": 0, "refusals": collections.Counter()}
    try:
        opened = await asyncio.gather(
            *(opener(i, spec["target"]) for i in spec["indexes"]), return_exceptions=True
        )
        clients = [c for c in opened if isinstance(c, Client)]
        for failure in opened:
            if isinstance(failure, BaseException):
                raise failure
        await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec["seconds"]
        cpu_started = time.thread_time()  # this loop's thread: the load generator's CPU
        await asyncio.wait_for(
            asyncio.gather(*(
                churn_one(c, i, spec["connections"], spec["rate"], deadline, out, spec["run"])
                for c, i in zip(clients, spec["indexes"], strict=True)
            )),
            spec["seconds"] + 2 * REPLY_TIMEOUT + 1,
        )
        out["client_cpu"] = time.thread_time() - cpu_started
        return out
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """`load_worker` in a fresh event loop (the entry point of a load process)."""
    return asyncio.run(load_worker(spec))


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of processes ``pids`` (all their threads) so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def churn(
    kind: str, target: dict[str, Any], server_pids: Sequence[int], args: argparse.Namespace,
    rate: float = 0.0,
) -> dict[str, Any]:
    """One churn run over ``args.connections`` connections split over the load processes."""
    run = uuid.uuid4().hex[:8]
    processes = min(args.load_processes, args.connections)
    start_at = time.time() + 1.0 + 0.5 * processes  # every process connected by then
    specs = [
        {"kind": kind, "target": target, "indexes": list(range(p, args.connections, processes)),
         "connections": args.connections, "rate": rate, "seconds": args.seconds,
         "start_at": start_at, "run": run}
        for p in range(processes)
    ]
    cpu_before = cpu_started = 0.0
    try:
        if processes == 1:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                futures = [pool.submit(run_worker, specs[0])]
                cpu_before, cpu_started = measure_cpu_from(start_at, server_pids)
                outs = [f.result() for f in futures]
        else:
            context = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
                futures = [pool.submit(run_worker, spec) for spec in specs]
                cpu_before, cpu_started = measure_cpu_from(start_at, server_pids)
                outs = [f.result() for f in futures]
    except (checkout.BenchError, TimeoutError, OSError) as e:
        raise BenchFailure(f"load against {kind}: {e or type(e).__name__}") from None
    elapsed = time.monotonic() - cpu_started
    cpu = cpu_seconds(server_pids) - cpu_before if server_pids else None
    latencies = sorted(x for o in outs for x in o["latencies"])
    refusals: collections.Counter[str] = collections.Counter()
    for o in outs:
        refusals.update(o["refusals"])
    pairs = len(latencies)
    if pairs == 0:
        raise BenchFailure(f"load against {kind}: no pair completed (refusals {dict(refusals)})")
    # The load ends args.seconds after start_at; the pairs/s counts that window only.
    result = {
        "connections": args.connections, "load_processes": processes,
        "offered_rate": rate or None, "seconds": round(args.seconds, 3), "pairs": pairs,
        "pairs_per_second": round(pairs / args.seconds, 1),
        "p50_ms": round(checkout.percentile(latencies, 0.5) * 1e3, 3),
        "p99_ms": round(checkout.percentile(latencies, 0.99) * 1e3, 3),
        "denials": sum(o["denials"] for o in outs),
        "refused": sum(refusals.values()), "refusals": dict(refusals),
        "wall_seconds": round(elapsed, 3),
    }
    if cpu is not None:
        result["server_cpu_seconds"] = round(cpu, 3)
        result["cpu_us_per_pair"] = round(cpu / pairs * 1e6, 1)
    client_cpu = sum(o["client_cpu"] for o in outs)
    result["client_cpu_us_per_pair"] = round(client_cpu / pairs * 1e6, 1)
    return result


def measure_cpu_from(start_at: float, pids: Sequence[int]) -> tuple[float, float]:
    """Sleep until the load starts; the servers' CPU seconds then, and monotonic now.
    (Connecting and loading scripts happen before, and are not counted.)"""
    time.sleep(max(0.0, start_at - time.time()))
    return (cpu_seconds(pids) if pids else 0.0), time.monotonic()


async def hold_async(
    kind: str, target: dict[str, Any], pid: int, count: int, connections: int,
) -> dict[str, Any]:
    """Take ``count`` licences (distinct holders) over ``connections`` connections,
    read the server's VmRSS before and after; release them all."""
    opener = CLIENTS[kind]
    clients: list[Client] = []
    run = uuid.uuid4().hex[:8]
    try:
        clients = list(await asyncio.gather(*(opener(i, target) for i in range(connections))))
        before = checkout.read_rss(pid)
        handles: list[list[str]] = [[] for _ in clients]

        async def take(i: int, client: Client) -> None:
            for k in range(i, count, len(clients)):
                handle = await client.acquire(f"hold-{run}-{k}", k)
                if handle is None:
                    raise BenchFailure(f"{kind}: licence {k} of {count} denied")
                handles[i].append(handle)

        started = time.perf_counter()
        await asyncio.gather(*(take(i, c) for i, c in enumerate(clients)))
        took = time.perf_counter() - started
        await asyncio.sleep(0.5)  # let the server settle (commits, allocator)
        after = checkout.read_rss(pid)

        async def give(i: int, client: Client) -> None:
            for handle in handles[i]:
                await client.release(handle)

        await asyncio.gather(*(give(i, c) for i, c in enumerate(clients)))
        return {
            "held": count, "seconds_to_take": round(took, 3), "rss_before": before,
            "rss_after": after, "bytes_per_licence": round((after - before) / count, 1),
        }
    except (checkout.BenchError, Refused, TimeoutError, OSError) as e:
        raise BenchFailure(f"hold on {kind}: {e or type(e).__name__}") from None
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# -- servers -----------------------------------------------------------------------


class Server:
    """A third-party server process of ours, killed (with its process group) at the end."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        """Start it, output to its log file, dying with us (PR_SET_PDEATHSIG)."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL its process group and reap it."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def tail(self, lines: int = 20) -> str:
        """The end of its log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """A list to put started servers in; every one is killed on exit."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill()


def wait_until(what: str, check: Callable[[], bool], bound: float = START_BOUND) -> None:
    """Poll ``check`` every 50 ms until true; BenchFailure after ``bound`` s."""
    deadline = time.monotonic() + bound
    while True:
        with contextlib.suppress(OSError, checkout.BenchError, Refused, ValueError):
            if check():
                return
        if time.monotonic() >= deadline:
            raise BenchFailure(f"{what}: not within {bound} s")
        time.sleep(0.05)


def start_redis(root: Path, started: list[Server]) -> tuple[Server, dict[str, Any]]:
    """redis-server on 127.0.0.1, AOF always, no RDB snapshots; (server, target)."""
    port = free_port(loopback(1))
    root.mkdir(parents=True, exist_ok=True)
    server = Server("redis", [
        "redis-server", "--bind", loopback(1), "--port", str(port), "--dir", str(root),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        "--daemonize", "no", "--protected-mode", "yes", "--logfile", "",
    ], root / "redis.log")
    started.append(server.start())
    target = {"host": loopback(1), "port": port, "limit": CHURN_LICENCES}
    wait_until("redis-server answers", lambda: redis_call(target, "PING") == "PONG")
    return server, target


def redis_call(target: dict[str, Any], *args: str) -> Any:
    """One Redis command on a fresh connection."""
    async def call() -> Any:
        client = await RedisClient.open(0, target)
        try:
            return await client.call(*args)
        finally:
            await client.close()
    return asyncio.run(call())


def start_etcd(
    root: Path, started: list[Server], size: int = 3
) -> tuple[list[Server], list[dict[str, Any]]]:
    """A ``size``-node etcd cluster on 127.0.0.1..size; (servers, a target per node)."""
    addresses = [loopback(n) for n in range(1, size + 1)]
    client_port = free_port_on_all(addresses)
    peer_port = free_port_on_all(addresses, avoid=[client_port])
    token = uuid.uuid4().hex[:12]
    cluster = ",".join(f"etcd{n}=http://{a}:{peer_port}" for n, a in enumerate(addresses, 1))
    nodes, targets = [], []
    for n, address in enumerate(addresses, 1):
        data = root / f"etcd{n}"
        data.mkdir(parents=True, exist_ok=True)
        node = Server(f"etcd{n}", [
            "etcd", "--name", f"etcd{n}", "--data-dir", str(data / "data"),
            "--listen-client-urls", f"http://{address}:{client_port}",
            "--advertise-client-urls", f"http://{address}:{client_port}",
            "--listen-peer-urls", f"http://{address}:{peer_port}",
            "--initial-advertise-peer-urls", f"http://{address}:{peer_port}",
            "--initial-cluster", cluster, "--initial-cluster-token", token,
            "--initial-cluster-state", "new", "--log-level", "warn",
        ], data / "etcd.log")
        started.append(node.start())
        nodes.append(node)
        targets.append({"host": address, "port": client_port, "limit": CHURN_LICENCES})
    for target in targets:
        def has_leader(node: dict[str, Any] = target) -> bool:
            return bool(etcd_status(node).get("leader"))
        wait_until(f"etcd at {target['host']} has a leader", has_leader)
    return nodes, targets


def etcd_status(target: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """``/v3/maintenance/status`` of one node."""
    async def call() -> dict[str, Any]:
        client = await EtcdClient.open(0, target, timeout)
        try:
            return await client.post("/v3/maintenance/status", {})
        finally:
            await client.close()
    return asyncio.run(call())


def quietly(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` with its prints (the harness's log tails) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


# -- the phases ----------------------------------------------------------------------


def rotated(items: Sequence[Any], turn: int) -> list[Any]:
    """``items`` rotated left by ``turn`` (interleaving: each round starts elsewhere)."""
    if not items:
        return []
    turn %= len(items)
    return [*items[turn:], *items[:turn]]


Record = Callable[[str, dict[str, Any]], None]
#: Profile one extra run: its name, the (label, pid) of the processes to sample,
#: and the run (`measure`'s ``profile``; a no-op without ``--profile``).
ProfileRun = Callable[[str, Sequence[tuple[str, int]], Callable[[], Any]], None]


def no_profile(name: str, pids: Sequence[tuple[str, int]], run: Callable[[], Any]) -> None:
    """Without ``--profile``: no extra run."""


def single_host_phase(
    root: Path, args: argparse.Namespace, record: Record, profile: ProfileRun = no_profile
) -> None:
    """hqnlsd single host and Redis: closed loops, open loops, held licences (and
    with ``--profile`` one more closed loop on hqnlsd, sampled)."""
    with contextlib.ExitStack() as stack:
        runners: list[tuple[str, Callable[[float], dict[str, Any]]]] = []
        holders: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        if "hqnlsd" in args.only:
            daemons = stack.enter_context(failover.harness(root / "single"))
            shares = hold_products(args.hold)
            first = max([CHURN_LICENCES, *(n for _, n in shares[:1])])
            daemon = failover.single_host(daemons, first, shares[1:])
            daemon.start_and_wait()
            target = {"host": daemon.address, "port": daemon.port}
            pid = daemon.pid
            runners.append(("hqnlsd", lambda rate: churn("hqnlsd", target, [pid], args, rate)))
            holders.append(("hqnlsd hold", lambda: asyncio.run(hold_async(
                "hqnlsd", dict(target, hold=args.hold), pid, args.hold,
                min(args.connections, args.hold)))))
        if "redis" in args.only:
            started = stack.enter_context(servers())
            redis, rtarget = start_redis(root / "redis", started)
            hold_target = dict(rtarget, limit=args.hold)

            def redis_run(rate: float, fsync: str) -> dict[str, Any]:
                redis_call(rtarget, "CONFIG", "SET", "appendfsync", fsync)
                return churn("redis", rtarget, [redis.pid], args, rate)

            runners.append(("redis-always", lambda rate: redis_run(rate, "always")))
            if not args.no_nofsync:
                runners.append(("redis-nofsync", lambda rate: redis_run(rate, "no")))

            def redis_hold() -> dict[str, Any]:
                redis_call(rtarget, "CONFIG", "SET", "appendfsync", "always")
                return asyncio.run(hold_async(
                    "redis", hold_target, redis.pid, args.hold, min(args.connections, args.hold)))

            holders.append(("redis-always hold", redis_hold))
        for turn in range(args.repeats):
            for name, run in rotated(runners, turn):
                record(f"{name} closed", run(0.0))
            for name, run in rotated([r for r in runners if r[0] != "redis-nofsync"], turn):
                record(f"{name} open", run(args.rate))
        if "hqnlsd" in args.only:
            profile("hqnlsd single host", [("daemon", pid)], lambda: runners[0][1](0.0))
        if args.hold:
            for name, hold in holders:
                record(name, hold())


def domain_phase(
    root: Path, args: argparse.Namespace, record: Record, profile: ProfileRun = no_profile
) -> None:
    """The 3-member hqnlsd domain and 3-node etcd: closed loops, interleaved (and with
    ``--profile`` one more closed loop on the domain, its primary and a backup
    sampled)."""
    with contextlib.ExitStack() as stack:
        runners: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        if "hqnlsd" in args.only:
            daemons = stack.enter_context(failover.harness(root / "domain"))
            members = failover.domain_members(daemons, CHURN_LICENCES)
            failover.start_domain(daemons, members)
            target = {"host": members[0].address, "port": members[0].port}
            pids = [m.pid for m in members]
            runners.append(("hqnlsd-domain", lambda: churn("hqnlsd", target, pids, args)))
        if "etcd" in args.only:
            started = stack.enter_context(servers())
            nodes, targets = start_etcd(root / "etcd", started)
            etarget = dict(targets[0], stride=args.connections)
            runners.append(("etcd", lambda: churn("etcd", etarget, [n.pid for n in nodes], args)))
        for turn in range(args.repeats):
            for name, run in rotated(runners, turn):
                record(f"{name} closed", run())
        if "hqnlsd" in args.only:
            profile("hqnlsd domain", [("primary", pids[0]), ("backup", pids[1])], runners[0][1])


async def etcd_probe(target: dict[str, Any], index: int, bound: float) -> float:
    """Acquire at one node until a grant; the monotonic time of the grant."""
    client: EtcdClient | None = None
    k = 0
    while time.monotonic() < bound:
        k += 1
        try:
            if client is None:
                client = await EtcdClient.open(index, dict(target, limit=10**6), ETCD_PROBE_TIMEOUT)
            if await client.acquire(f"failover-{index}-{k}") is not None:
                return time.monotonic()
        except (checkout.BenchError, Refused, OSError):
            if client is not None:
                await client.close()
            client = None
            await asyncio.sleep(0.005)
    raise BenchFailure(f"etcd failover: no grant at {target['host']} within {FAILOVER_BOUND} s")


async def etcd_race(targets: list[dict[str, Any]]) -> float:
    """The first grant by any survivor."""
    bound = time.monotonic() + FAILOVER_BOUND
    probes = [asyncio.ensure_future(etcd_probe(t, i * 1000, bound))
              for i, t in enumerate(targets)]
    try:
        done, _ = await asyncio.wait(probes, return_when=asyncio.FIRST_COMPLETED)
        return min(p.result() for p in done)
    finally:
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)


def etcd_failover_once(root: Path) -> dict[str, Any]:
    """A fresh 3-node cluster: SIGKILL the leader, time the first grant by a survivor."""
    with servers() as started:
        nodes, targets = start_etcd(root, started)
        status = etcd_status(targets[0])
        leader_id = status["leader"]
        leader = next(i for i, t in enumerate(targets)
                      if etcd_status(t)["header"]["member_id"] == leader_id)
        survivors = [t for i, t in enumerate(targets) if i != leader]
        killed = time.monotonic()
        os.killpg(nodes[leader].pid, signal.SIGKILL)
        granted = asyncio.run(etcd_race(survivors))
        return {"seconds": round(granted - killed, 4), "leader": f"etcd{leader + 1}"}


def failover_phase(root: Path, args: argparse.Namespace, record: Record) -> None:
    """``--failover-runs`` fresh clusters of each system, interleaved."""
    probe = argparse.Namespace(poll=0.005)
    runners: list[tuple[str, Callable[[int], dict[str, Any]]]] = []
    if "hqnlsd" in args.only:
        runners.append(("hqnlsd failover", lambda run: failover.failover_once(
            root / "hqnlsd-failover", run, probe).as_dict()))
    if "etcd" in args.only:
        runners.append(("etcd failover",
                        lambda run: etcd_failover_once(root / f"etcd-failover{run}")))
    for run in range(1, args.failover_runs + 1):
        for name, runner in rotated(runners, run):
            record(name, runner(run))


# -- the command -------------------------------------------------------------------


def missing_executables(only: Sequence[str]) -> dict[str, str]:
    """The systems asked for whose server is not installed: system -> how to install it."""
    missing = {}
    for system, executable in (("redis", "redis-server"), ("etcd", "etcd")):
        if system in only and shutil.which(executable) is None:
            missing[system] = f"{executable} not found: {INSTALL_HINTS[executable]}"
    return missing


#: The most licences the hold asks of one product: one product's permit holds at
#: most 65,535 (the permit format's limit), so a larger hold is spread over products.
HOLD_PER_PRODUCT = 50_000
#: The largest hold: 20 products of `HOLD_PER_PRODUCT`.
MAX_HELD = 20 * HOLD_PER_PRODUCT


def hold_products(hold: int) -> list[tuple[str, int]]:
    """The products a hold of ``hold`` licences is spread over, with each one's licence
    count: as few as hold at most `HOLD_PER_PRODUCT` each, evenly; the first is the
    churn's product."""
    if hold <= 0:
        return []
    count = -(-hold // HOLD_PER_PRODUCT)
    share = -(-hold // count)
    return [(failover.PRODUCT if i == 0 else f"{failover.PRODUCT} {i + 1}", share)
            for i in range(count)]


def hold_product(k: int, hold: int) -> str:
    """The product licence ``k`` of a hold of ``hold`` is asked of (round robin)."""
    names = _hold_names(hold)
    return names[k % len(names)]


@functools.lru_cache(maxsize=4)
def _hold_names(hold: int) -> tuple[str, ...]:
    """`hold_products`' names, worked out once per hold (asked once per licence)."""
    return tuple(name for name, _ in hold_products(hold))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="hqnlsd side by side with Redis and a 3-node etcd cluster, one table."
    )
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 1 repeat of 2 s, 8 connections, 1,000 held, "
                             "1 failover run (unless given otherwise)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds of every load run (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of every load run (default 8; quick 2)")
    parser.add_argument("--connections", type=int, default=None,
                        help="concurrent connections of the load (default 50; quick 8)")
    parser.add_argument("--load-processes", type=int, default=1,
                        help="load generator processes sharing the connections (default 1)")
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop: pairs/s offered (default 1000; quick 250)")
    parser.add_argument("--hold", type=int, default=None,
                        help="licences held for the memory figure (default 100000; quick "
                             "1000; 0 skips it; spread over products of at most "
                             f"{HOLD_PER_PRODUCT:,} each, since one product's permit holds at "
                             f"most 65,535; at most {MAX_HELD:,})")
    parser.add_argument("--failover-runs", type=int, default=None,
                        help="fresh clusters per system for the failover figure "
                             "(default 3; quick 1; 0 skips it)")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"comma-separated systems to measure, of {', '.join(SYSTEMS)} "
                             "(default all)")
    parser.add_argument("--no-nofsync", action="store_true",
                        help="skip the Redis runs without fsync")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to put the servers' trees (default: a temporary directory)")
    parser.add_argument("--json", action="store_true",
                        help="also print every figure as one JSON object (last line)")
    parser.add_argument("--profile", action="store_true",
                        help="after the measured runs, one more closed-loop run on the hqnlsd "
                             "single host and domain sampled by py-spy (pip install py-spy): "
                             "where the time goes, by area and function (not in the medians)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, short in (("repeats", 3, 1), ("seconds", 8.0, 2.0), ("connections", 50, 8),
                              ("rate", 1000.0, 250.0), ("hold", 100_000, 1000),
                              ("failover_runs", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SYSTEMS)
    if unknown or not args.only:
        parser.error(f"--only: choose among {', '.join(SYSTEMS)}")
    if args.repeats < 1 or args.seconds <= 0 or args.connections < 1 or args.load_processes < 1:
        parser.error("--repeats, --seconds, --connections and --load-processes must be positive")
    if args.rate <= 0 or args.hold < 0 or args.failover_runs < 0:
        parser.error("--rate must be positive, --hold and --failover-runs not negative")
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile: py-spy not found (pip install py-spy)")
    if args.hold > MAX_HELD:
        parser.error(
            f"--hold: at most {MAX_HELD:,} ({MAX_HELD // HOLD_PER_PRODUCT} products of "
            f"{HOLD_PER_PRODUCT:,} licences)"
        )
    return args


def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run every phase; print progress, the table; return everything."""
    host = failover.machine()
    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)

    def record(name: str, result: dict[str, Any]) -> None:
        runs[name].append(result)
        shown = {k: v for k, v in result.items()
                 if k in ("pairs_per_second", "p50_ms", "p99_ms", "cpu_us_per_pair",
                          "client_cpu_us_per_pair", "refused",
                          "bytes_per_licence", "seconds_to_take", "seconds")}
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()), flush=True)

    print("hqnlsd side by side (bench/sidebyside.py)")
    print(f"machine: {host['cpus']} CPUs ({host['cpus_usable']} usable), {host['cpu_model']}, "
          f"{host['platform']}, Python {host['python']}")
    print(f"settings: {', '.join(args.only)}; {args.repeats} interleaved repeats of "
          f"{args.seconds:g} s, {args.connections} connections, {args.load_processes} load "
          f"process(es); open loop {args.rate:g} pairs/s; {args.hold} held; "
          f"{args.failover_runs} failover run(s)", flush=True)
    profiled: dict[str, dict[str, Any]] = {}

    def profile(name: str, pids: Sequence[tuple[str, int]], run: Callable[[], Any]) -> None:
        """One more closed-loop run with py-spy sampling ``pids``; not in the medians."""
        if not args.profile:
            return
        spies: list[tuple[str, Path, subprocess.Popen[bytes]]] = []

        def sample() -> None:  # when the load starts (churn's start_at), for its length
            for label, pid in pids:
                out = root / f"profile-{name.replace(' ', '-')}-{label}.txt"
                spies.append((label, out, profiles.start(pid, args.seconds, out)))

        timer = threading.Timer(1.0 + 0.5 * min(args.load_processes, args.connections), sample)
        timer.start()
        try:
            run()
        finally:
            timer.cancel()  # the load failed before it started: no py-spy
            timer.join()
        for label, out, spy in spies:
            found = profiles.finish(spy, out, args.seconds + 30.0)
            profiled[f"{name}, {label}"] = found.as_dict()
            print(f"  profile of {name}, {label}: {found.summary()}", flush=True)

    single_host_phase(root, args, record, profile)
    if {"hqnlsd", "etcd"} & set(args.only):
        domain_phase(root, args, record, profile)
    if args.failover_runs and {"hqnlsd", "etcd"} & set(args.only):
        failover_phase(root, args, record)
    figures = summarise(runs, args)
    rows = table_rows(figures)
    print()
    print(format_table(rows))
    generator = [(label, figures.get(key)) for label, key in (
        ("hqnlsd", "hqnlsd_client_cpu_us"), ("Redis AOF always", "redis_client_cpu_us"),
        ("hqnlsd domain", "domain_client_cpu_us"), ("etcd", "etcd_client_cpu_us"))]
    if any(value is not None for _, value in generator):
        print()
        print("Load generator CPU per pair (closed loop, its own thread): " + ", ".join(
            f"{label} {value:.0f} us" for label, value in generator if value is not None))
    if profiled:
        print()
        print("Where hqnlsd's time goes (py-spy, one more closed-loop run each, not in the "
              "table; the reactor thread's share of time):")
        for name, found in profiled.items():
            areas = ", ".join(f"{a} {v:g}%" for a, v in found["areas"].items() if v >= 0.5)
            busy = ", ".join(f"{t} busy {v:g}%" for t, v in found["threads_busy"].items()
                             if v >= 0.5)
            print(f"- {name} ({found['samples']} samples): {areas}"
                  + (f"; {busy}" if busy else ""))
    return {"machine": host, "settings": settings_of(args), "runs": dict(runs),
            "medians": figures, "rows": [r.as_dict() for r in rows], "profiles": profiled}


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings as JSON-ready data."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: leave through the ``finally`` clauses, which kill every server."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminated)
    missing = missing_executables(args.only)
    for system, hint in missing.items():
        print(f"sidebyside: not measuring {system}: {hint}", file=sys.stderr)
    args.only = [s for s in args.only if s not in missing]
    if not args.only:
        return 1
    try:
        with contextlib.ExitStack() as stack:
            if args.workdir is None:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sbs-")))
            else:
                args.workdir.mkdir(parents=True, exist_ok=True)
                root = Path(tempfile.mkdtemp(prefix="sbs-", dir=args.workdir))
            results = measure(root, args)
    except (BenchFailure, failover.BenchFailure, DaemonError) as error:
        print(f"sidebyside: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sidebyside: interrupted; every server was killed", file=sys.stderr)
        return 130
    if missing:
        results["missing"] = missing
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
