#!/usr/bin/env python3
"""Memory per held licence, in process: the engine, the licence feed and the journal.

Issue 14 measures the daemon's resident memory per held licence over the wire
(``bench/sidebyside.py``); this script takes the same licences without sockets,
so a change to the engine's structures can be measured in seconds and the
memory broken down by structure.

What it builds is what the daemon builds for one REQUEST: the request line is
parsed (`hqnlsd.protocols.grammar.parse_line`), turned into a `LicenceRequest`
as `hqnlsd.server.LicenceServer` does, decided by an `Engine`; the events go to
a `Journal` (SQLite in a temporary directory, ``synchronous=NORMAL``) whose
listener is a `LicenceFeed` with a usage report, as `hqnlsd.daemon.core` wires
them. Time is a `task.Clock`; the journal and usage report flush every
``--batch`` requests (one reactor turn). Log lines go to an observer that drops
them (the daemon's go to its log file; none is kept in memory).

``--count`` licences are taken (default 100,000), each by a distinct process
(pid and ``client=`` token), from ``--products`` products; users, hosts and
peer addresses repeat (``--users``, ``--hosts``, ``--addresses``: a site has
fewer users than processes). Request lines are built before the baseline, so
they are not counted.

Printed: seconds to take them, bytes per held licence as the RSS delta and as
the tracemalloc delta (``--trace``; slower), and a breakdown (``--breakdown``):
the size of each structure that grows with the holders, divided by the count,
and with ``--trace`` the top allocation sites.

``--ops N`` then times the engine alone (no parsing, journal or feed) on N more
licences with the others held: N REQUESTs, an UPDATE of each, each REQUEST again
(a repeated client token), a RELEASE of each; CPU microseconds per command, the
median of ``--rounds`` rounds. Run it on two trees in turn (``PYTHONPATH``) to
compare them.

Examples (from the repository root)::

    python bench/holders.py                      # 100,000 held, RSS and time
    python bench/holders.py --trace --breakdown  # where the bytes go
    python bench/holders.py --count 10000 --no-journal --no-feed
    python bench/holders.py --no-journal --no-feed --ops 20000   # engine CPU per command
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):
    # Run as a script from anywhere: the repository root holds hqnlsd and bench/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task
from twisted.logger import ILogObserver, Logger

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event
from hqnlsd.licensing.results import Denied, LicenceRequest
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.switches import LogSwitches
from hqnlsd.logging.usage import UsageReport
from hqnlsd.permits.model import ProductPermit
from hqnlsd.persistence.store import Journal
from hqnlsd.protocols import grammar
from hqnlsd.protocols.client_side import format_request

PUBLISHER = "Bench Publisher"
VERSION = "1.0"


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def permits(products: int, count: int, spare: int = 0) -> list[ProductPermit]:
    """``products`` floating-only products with room for ``count`` licences together,
    and ``spare`` more each."""
    each = -(-count // products) + spare
    today = datetime.date.today()
    return [
        ProductPermit(
            publisher=PUBLISHER,
            product=f"Widget {number}",
            version=VERSION,
            policy=0,
            node_count=0,
            floating_count=each,
            start=today - datetime.timedelta(days=1),
            expiry=today + datetime.timedelta(days=365),
            update_minutes=5,
        )
        for number in range(products)
    ]


def request_lines(args: argparse.Namespace, run: str) -> list[bytes]:
    """One REQUEST line per licence (without its LF), as a client sends it."""
    lines = []
    for k in range(args.count):
        line = format_request(
            "REQUEST",
            publisher=PUBLISHER,
            product=f"Widget {k % args.products}",
            version=VERSION,
            user=f"user{k % args.users}",
            host=f"host{k % args.hosts}.example.com",
            pid=2_000_000 + k,
            client=f"hold-{run}-{k}",
        )
        lines.append(line.rstrip(b"\r\n"))
    return lines


#: The log observer of the bench: keeps nothing (the daemon writes its lines to a file).
_DROP_LINES = cast(ILogObserver, lambda event: None)


class Daemon:
    """The engine, and the journal and feed around it, as the daemon wires them."""

    def __init__(self, args: argparse.Namespace, state_dir: Path) -> None:
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.engine = Engine(self.clock)
        self.journal: Journal | None = None
        self.feed: LicenceFeed | None = None
        self.usage: UsageReport | None = None
        if not args.no_feed:
            self.usage = UsageReport(state_dir, self.clock)
            self.feed = LicenceFeed(
                usage=self.usage,
                switches=LogSwitches(),
                log=Logger(namespace="hqnlsd.licence", observer=_DROP_LINES),
            )
        if not args.no_journal:
            self.journal = Journal(state_dir / "hqnlsd.sqlite3", self.clock, synchronous="NORMAL")
            self.journal.open()
            self.journal.restore(self.engine)
            if self.feed is not None:
                self.journal.listeners.append(self.feed.observe)
        self.commit(
            self.engine.load_products(permits(args.products, args.count, args.ops)).events
        )
        self.turn()

    def commit(self, events: Iterable[Event]) -> None:
        """Hand a command's events on, as `LicenceServer` does."""
        events = tuple(events)
        if self.journal is not None:
            self.journal.submit(events)
        elif self.feed is not None:
            self.feed.observe(events)

    def turn(self) -> None:
        """One reactor turn: the journal's group commit and the usage report's write."""
        self.clock.advance(0)

    def take(self, lines: list[bytes], addresses: list[str], batch: int) -> int:
        """Parse and decide every line; how many were granted."""
        granted = 0
        for number, line in enumerate(lines):
            command = grammar.parse_line(line)
            assert isinstance(command, grammar.Request)
            outcome = self.engine.request(
                LicenceRequest(
                    publisher=command.publisher,
                    product=command.product,
                    version=command.version,
                    user=command.user,
                    host=command.host,
                    pid=command.pid,
                    address=addresses[number % len(addresses)],
                    uid=command.uid,
                    group=command.group,
                    units=command.units,
                    client=command.client,
                    hostid=command.hostid,
                )
            )
            if isinstance(outcome.result, Denied):
                raise SystemExit(f"licence {number} denied: {outcome.result}")
            granted += 1
            self.commit(outcome.events)
            if number % batch == batch - 1:
                self.turn()
        self.turn()
        return granted

    def close(self) -> None:
        """Close the journal and the usage report."""
        if self.journal is not None:
            self.journal.close()
        if self.usage is not None:
            self.usage.close()


# -- engine CPU per command -------------------------------------------------------------


def engine_ops(engine: Engine, args: argparse.Namespace, addresses: list[str]) -> dict[str, float]:
    """CPU microseconds per REQUEST, UPDATE, repeated REQUEST and RELEASE of ``--ops``
    more licences, the engine alone, the median of ``--rounds`` rounds."""
    requests = [
        LicenceRequest(
            publisher=PUBLISHER,
            product=f"Widget {k % args.products}",
            version=VERSION,
            user=f"user{k % args.users}",
            host=f"host{k % args.hosts}.example.com",
            pid=3_000_000 + k,
            address=addresses[k % len(addresses)],
            client=f"ops-{k}",
        )
        for k in range(args.ops)
    ]
    clock = time.process_time
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds + 1):  # the first warms up
        handles = []
        started = clock()
        for request in requests:
            result = engine.request(request).result
            assert not isinstance(result, Denied), result
            handles.append(result.handle)  # type: ignore[union-attr]
        requested = clock()
        for handle in handles:
            engine.update(handle)
        updated = clock()
        for request in requests:
            engine.request(request)
        repeated = clock()
        for handle in handles:
            engine.release(handle)
        released = clock()
        each = 1e6 / len(requests)
        rounds.append(
            {
                "request_us": (requested - started) * each,
                "update_us": (updated - requested) * each,
                "repeated_request_us": (repeated - updated) * each,
                "release_us": (released - repeated) * each,
            }
        )
    return {
        name: round(statistics.median(row[name] for row in rounds[1:]), 2) for name in rounds[0]
    }


# -- breakdown ---------------------------------------------------------------------------


def _deep_size(root: object, seen: set[int], stop: set[int]) -> int:
    """Bytes of the objects reachable from ``root`` not in ``seen`` or ``stop`` (which
    are shared: types, products, permits), marking them seen."""
    total = 0
    pending = [root]
    while pending:
        item = pending.pop()
        if id(item) in seen or id(item) in stop or isinstance(item, type):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        pending.extend(gc.get_referents(item))
    return total


def _breakdown_before(state: Any, products: list[Any], count: int, seen: set[int],
                      rows: list[tuple[str, float]], row: Any) -> None:
    """The breakdown of the structures before issue 14's columns (one object per holder)."""
    # Containers first (their own tables), then what they hold.
    for attribute in ("holders", "by_update", "tokens"):  # by_update: before issue 14
        tables = [getattr(product, attribute) for product in products
                  if hasattr(product, attribute)]
        if tables:
            rows.append((f"product.{attribute} (table)",
                         sum(sys.getsizeof(table) for table in tables) / count))
            seen |= {id(table) for table in tables}
    for attribute in ("handles", "tokens", "tombstones"):
        table = getattr(state, attribute, None)
        if table is not None:
            rows.append((f"state.{attribute} (table)", sys.getsizeof(table) / count))
            seen.add(id(table))
    holders = [holder for product in products for holder in product.holders.values()]
    whos = [holder.who for holder in holders]
    row("requesters (and their strings, ints)", *whos)
    row("holders (and their indices, times, handles)", *holders)



def breakdown(daemon: Daemon, count: int) -> list[tuple[str, float]]:
    """Bytes per held licence of each structure that grows with the holders, each object
    counted once, in the order listed (a string shared by two is the first's)."""
    state = daemon.engine._ledger.state  # the bench looks inside, on purpose
    stop = {id(product) for product in state.products.values()}
    stop |= {id(product.permit) for product in state.products.values()}
    stop |= {id(product.key) for product in state.products.values()}
    stop |= {id(None), id(True), id(False)}
    seen: set[int] = set()
    rows: list[tuple[str, float]] = []

    def row(name: str, *roots: object) -> None:
        size = sum(_deep_size(root, seen, stop) for root in roots)
        rows.append((name, size / count))

    products = list(state.products.values())
    if all(hasattr(product, "store") for product in products):
        # Since issue 14 (memory part): holders stored by column, per product.
        rows.append(("state.handles (open-addressing table)",
                     _deep_size(state.handles, seen, stop) / count))
        stores = [product.store for product in products]
        for name, attributes in (
            ("store ints (handle bits, pid, uid, hostid, access, index)", ("ints",)),
            ("store links (grant and update order)", ("links",)),
            ("store times (granted, last update)", ("times",)),
            ("store prefixes, flags", ("prefixes", "flags")),
            ("store client token tables", ("token_table",)),
            ("store rare: spilled ints, many indices, odd handles, free slots",
             ("spill", "many", "odd", "free")),
        ):
            row(name, *[getattr(store, attribute) for store in stores
                        for attribute in attributes])
        refs = [store.refs for store in stores]
        rows.append(("store refs (user, host, address, group, token)",
                     sum(sys.getsizeof(table) for table in refs) / count))
        seen |= {id(table) for table in refs}
        tokens = [token for store in stores for token in store.refs[4::5] if token is not None]
        row("client token strings", *tokens)
        row("user, host, address, group strings (shared)",
            *[name for store in stores for k, name in enumerate(store.refs) if k % 5 != 4])
        row("rest of products (holders, tokens views)",
            *[(product.holders, product.tokens) for product in products])
    else:
        _breakdown_before(state, products, count, seen, rows, row)
    row("product pools, counters (rest of products)",
        *[(product.locked, product.floating, product.floating_by_address,
           product.locked_by_address) for product in products])
    row("state tokens keys, rest of state", state)
    if daemon.feed is not None:
        # Since issue 14 the feed keeps no copy of the holders (a Released/Revoked event
        # says, in memory, what it ended): only the version served of each product.
        row("licence feed (product versions)", daemon.feed._versions)
    return rows


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Take the licences, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="licences held")
    parser.add_argument("--products", type=int, default=4)
    parser.add_argument("--users", type=int, default=1000, help="distinct user names")
    parser.add_argument("--hosts", type=int, default=500, help="distinct host names")
    parser.add_argument("--addresses", type=int, default=64,
                        help="distinct peer addresses (one string per connection)")
    parser.add_argument("--batch", type=int, default=256,
                        help="requests per reactor turn (journal group commit)")
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--no-feed", action="store_true", help="no licence feed nor usage")
    parser.add_argument("--trace", action="store_true",
                        help="tracemalloc too (slower; the time is then not comparable)")
    parser.add_argument("--breakdown", action="store_true", help="bytes per structure")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--ops", type=int, default=0,
                        help="then time N more commands of each kind on the engine alone")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --ops (median)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hqnlsd-holders-") as directory:
        lines = request_lines(args, "bench")
        # One string per connection, as the transport gives it (peer.host).
        addresses = [f"10.0.{n // 250}.{n % 250 + 1}" for n in range(args.addresses)]
        daemon = Daemon(args, Path(directory))
        gc.collect()
        if args.trace:
            tracemalloc.start(1)
        base_trace = tracemalloc.take_snapshot() if args.trace else None
        base_traced = tracemalloc.get_traced_memory()[0] if args.trace else 0
        base_rss = rss_bytes()
        started = time.perf_counter()
        started_cpu = time.process_time()
        held = daemon.take(lines, addresses, args.batch)
        took = time.perf_counter() - started
        took_cpu = time.process_time() - started_cpu
        gc.collect()
        rss = rss_bytes() - base_rss
        result: dict[str, Any] = {
            "held": held,
            "seconds_to_take": round(took, 3),
            "cpu_seconds_to_take": round(took_cpu, 3),
            "rss_bytes_per_licence": round(rss / held, 1),
            "journal": not args.no_journal,
            "feed": not args.no_feed,
            "python": sys.version.split()[0],
        }
        sites: list[tuple[str, float]] = []
        if args.trace:
            traced = tracemalloc.get_traced_memory()[0] - base_traced
            result["traced_bytes_per_licence"] = round(traced / held, 1)
            snapshot = tracemalloc.take_snapshot()
            assert base_trace is not None
            for stat in snapshot.compare_to(base_trace, "lineno")[:12]:
                frame = stat.traceback[0]
                where = f"{Path(frame.filename).name}:{frame.lineno}"
                sites.append((where, stat.size_diff / held))
            tracemalloc.stop()
        rows = breakdown(daemon, held) if args.breakdown else []
        if args.ops:
            gc.collect()
            result["engine_ops"] = engine_ops(daemon.engine, args, addresses)
        daemon.close()

    if args.json:
        result["breakdown"] = dict(rows)
        result["sites"] = dict(sites)
        print(json.dumps(result))
        return 0
    print(f"{held:,} licences held, taken in {took:.2f} s ({took_cpu:.2f} s CPU) "
          f"({'journal' if not args.no_journal else 'no journal'}, "
          f"{'feed' if not args.no_feed else 'no feed'}, Python {result['python']})")
    print(f"  RSS delta:        {result['rss_bytes_per_licence']:8.1f} bytes per held licence")
    if args.trace:
        traced = result["traced_bytes_per_licence"]
        print(f"  tracemalloc:      {traced:8.1f} bytes per held licence")
    if rows:
        print("  by structure (bytes per held licence, each object counted once):")
        for name, size in rows:
            print(f"    {size:8.1f}  {name}")
        print(f"    {sum(size for _, size in rows):8.1f}  total")
    if args.ops:
        print(f"  engine alone, {args.ops:,} more of each with {held:,} held "
              "(CPU microseconds per command, median):")
        for name, value in result["engine_ops"].items():
            print(f"    {value:8.2f}  {name.removesuffix('_us').replace('_', ' ')}")
    if sites:
        print("  top allocation sites (tracemalloc, bytes per held licence):")
        for where, size in sites:
            print(f"    {size:8.1f}  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
