#!/usr/bin/env python3
"""Cost of what follows a commit: licence log lines, usage records, in one process.

Drives an in-process `LicenceServer` (real `Engine`, real `Journal` in a
temporary directory, `task.Clock` as the reactor) with REQUEST + RELEASE pairs,
``--batch`` pairs per reactor turn (one group commit for the requests, one for
the releases, as under load). The licence feed writes its log lines through
the switch filter installed as the daemon installs it
(`hqnlsd.logging.observer.install_switch_filter`) in front of a text file
observer (twistd's), and its usage records to ``usage.jsonl``.

Prints, for the LICENSE switch on (the start-up setting) and off, the pairs per
second of the loop and the CPU microseconds per pair (process time), best of
``--rounds`` rounds, and the bytes written to the log and the usage report (so
that two runs can be checked to write the same thing). With ``--profile`` it
prints the top of a cProfile of one round of each instead.

    python bench/postcommit.py [--pairs 2000] [--batch 100] [--rounds 3]
                               [--synchronous FULL] [--profile] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime
import io
import ipaddress
import itertools
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

if __package__ in (None, ""):
    # Run as a script from anywhere: the repository root holds the hqnlsd package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher, textFileLogObserver

from hqnlsd.identity import HostsTable
from hqnlsd.licensing.engine import Engine
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.observer import FilterInstallation, install_switch_filter
from hqnlsd.logging.switches import STARTUP, LogSwitches, Switch
from hqnlsd.logging.usage import USAGE_FILE, UsageReport
from hqnlsd.permits.discovery import Discovery
from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.permits.reader import Catalogue, PermitFile, build_catalogue
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.persistence.store import Journal, open_journal
from hqnlsd.protocols import grammar
from hqnlsd.protocols.replies import Ok, Reply
from hqnlsd.server import LicenceServer, PermitSource

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
ME = HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1A2B3C4D)
PEER = IPv4Address("TCP", "10.0.0.1", 40000)
LOG_FILE = "hqnlsd.log"


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (independent of the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


class MemorySource(PermitSource):
    """One permit, served from memory, with ``floating`` licences of LispWorks."""

    def __init__(self, floating: int) -> None:
        super().__init__(
            permit_dirs=(Path("/permits"),),
            environ={},
            publisher_keys=Path("/keys"),
            hosts_file=Path("/hosts"),
            me=ME,
        )
        product = ProductPermit(
            publisher="Harlequin",
            product="LispWorks",
            version="8.0",
            policy=int(Policy.GRAB | Policy.UVIS),
            node_count=0,
            floating_count=floating,
            start=datetime.date(2026, 1, 1),
            expiry=datetime.date(2030, 12, 31),
            update_minutes=5,
            data=(1, 2, 3),
        )
        self.permit = Permit(number=1, servers=(ME,), products=(product,))

    def read(self) -> tuple[Discovery, TrustedKeys, Catalogue]:
        """The catalogue of the one permit."""
        files = [PermitFile("/permits/bench-hqn.permit", self.permit, None)]
        discovery = Discovery((Path("/permits/bench-hqn.permit"),), "-p", (Path("/permits"),))
        hosts = HostsTable.from_text("127.0.0.1 localhost\n")
        return discovery, TrustedKeys({}), build_catalogue(files, ME, hosts)


@dataclasses.dataclass
class Loop:
    """A started server whose feed logs through the switch filter."""

    clock: Clock
    server: LicenceServer
    journal: Journal
    usage: UsageReport
    log_file: TextIO
    installation: FilterInstallation
    directory: Path
    batch: int
    pid: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def turn(self, answers: list[Reply | Deferred[Reply]]) -> list[Reply]:
        """Let the group commit (and the usage report's write) run; the replies."""
        replies: list[Reply] = []
        for answer in answers:
            if isinstance(answer, Deferred):
                answer.addBoth(replies.append)
            else:
                replies.append(answer)
        self.clock.advance(0)
        self.clock.advance(0)  # the usage report writes on the turn after
        return replies

    def request(self) -> grammar.Request:
        """A REQUEST from a new process of alice's."""
        return grammar.Request(
            publisher="Harlequin",
            product="LispWorks",
            version="8.0",
            user="alice",
            host="alpha",
            pid=next(self.pid),
            uid=1000,
        )

    def pairs(self, count: int) -> None:
        """``count`` REQUEST + RELEASE pairs, ``batch`` per turn."""
        dispatch = self.server.dispatch
        done = 0
        while done < count:
            size = min(self.batch, count - done)
            requests = [dispatch(self.request(), PEER) for _ in range(size)]
            handles = []
            for reply in self.turn(requests):
                if not isinstance(reply, Ok):
                    raise SystemExit(f"REQUEST refused: {reply!r}")
                handles.append(str(reply.get("handle")))
            releases = [dispatch(grammar.Release(handle=handle), PEER) for handle in handles]
            for reply in self.turn(releases):
                if not isinstance(reply, Ok):
                    raise SystemExit(f"RELEASE refused: {reply!r}")
            done += size

    def close(self) -> tuple[int, int]:
        """Stop; the bytes written to the log and to the usage report."""
        self.installation.uninstall()
        self.usage.close()
        self.journal.close()
        self.log_file.close()
        return (
            (self.directory / LOG_FILE).stat().st_size,
            (self.directory / USAGE_FILE).stat().st_size,
        )


def start(directory: Path, switches: Switch, *, batch: int, synchronous: str) -> Loop:
    """A server in ``directory`` whose licence lines pass the switch filter."""
    clock = Clock()
    clock.advance(NOW)
    counter = itertools.count(1)
    engine = Engine(clock, lambda: f"H{next(counter)}", today=utc_day)
    journal = open_journal(directory, clock, synchronous=synchronous)
    journal.restore(engine)
    log_file = open(directory / LOG_FILE, "w", encoding="utf-8")  # noqa: SIM115 (closed by Loop)
    publisher = LogPublisher(textFileLogObserver(log_file))
    log_switches = LogSwitches(switches)
    installation = install_switch_filter(log_switches, publisher)
    usage = UsageReport(directory, clock)
    feed = LicenceFeed(
        usage=usage,
        switches=log_switches,
        log=Logger(namespace="hqnlsd.licence", observer=publisher),
    )
    feed.seed(engine)
    journal.listeners.append(feed.observe)
    server = LicenceServer(engine, journal, MemorySource(batch), feed=feed, clock=clock)
    loaded: list[object] = []
    server.load_permits().addBoth(loaded.append)
    clock.advance(0)
    if loaded != [None]:
        raise SystemExit(f"permits not loaded: {loaded!r}")
    return Loop(clock, server, journal, usage, log_file, installation, directory, batch)


SETTINGS = {
    "LICENSE on (start-up switches)": STARTUP,
    "LICENSE off": STARTUP & ~Switch.LICENSE,
}


def measure(args: argparse.Namespace, switches: Switch) -> dict[str, float]:
    """Best pairs/s and CPU per pair over the rounds, and the bytes one round writes."""
    best_wall = best_cpu = float("inf")
    written = (0, 0)
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="postcommit-") as name:
            loop = start(Path(name), switches, batch=args.batch, synchronous=args.synchronous)
            loop.pairs(args.batch)  # warm up: first statements, formats memoised
            wall, cpu = time.perf_counter(), time.process_time()
            loop.pairs(args.pairs)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            written = loop.close()
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
    return {
        "pairs_per_second": args.pairs / best_wall,
        "cpu_us_per_pair": best_cpu / args.pairs * 1e6,
        "log_bytes": written[0],
        "usage_bytes": written[1],
    }


def profile(args: argparse.Namespace, switches: Switch) -> str:
    """The top of a cProfile of one round (by internal time)."""
    with tempfile.TemporaryDirectory(prefix="postcommit-") as name:
        loop = start(Path(name), switches, batch=args.batch, synchronous=args.synchronous)
        loop.pairs(args.batch)
        profiler = cProfile.Profile()
        profiler.enable()
        loop.pairs(args.pairs)
        profiler.disable()
        loop.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(args.top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Print the figures (or profiles) for LICENSE on and off."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per round")
    parser.add_argument("--batch", type=int, default=100, help="pairs per reactor turn")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best counts")
    parser.add_argument(
        "--synchronous", default="FULL", choices=("FULL", "NORMAL", "EXTRA"),
        help="the journal's SQLite synchronous setting (the daemon's is FULL)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="print cProfile tops instead")
    parser.add_argument("--top", type=int, default=25, help="profile lines shown")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--pairs, --batch and --rounds must be positive")
    print(
        f"{args.pairs} REQUEST+RELEASE pairs, {args.batch} per turn, journal "
        f"synchronous={args.synchronous}, best of {args.rounds}"
    )
    for label, switches in SETTINGS.items():
        if args.profile:
            print(f"== {label}: cProfile, by internal time")
            print(profile(args, switches))
            continue
        figures: dict[str, Any] = measure(args, switches)
        print(
            f"{label:32} {figures['pairs_per_second']:9.0f} pairs/s "
            f"{figures['cpu_us_per_pair']:8.1f} us CPU/pair  "
            f"log {figures['log_bytes']} B, usage {figures['usage_bytes']} B"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
