#!/usr/bin/env python3
"""Cost of a licence log line: no filter, filter with LICENSE on, and with it off.

Prints events/s and microseconds per event for each configuration, best of
``--rounds`` rounds of ``--events`` calls, in this process (the logger writes to
memory, so disk speed does not count), and the two ratios that matter: a line
whose LICENSE switch is off should cost a fraction of one that is written, and
the ``switches=`` fast path a fraction of that again.

    python bench/logging_cost.py [--events 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.logger import Logger, LogPublisher, textFileLogObserver

from hqnlsd.logging.observer import install_switch_filter, log_licence
from hqnlsd.logging.switches import ALL, LogSwitches, Switch

FIELDS: dict[str, Any] = dict(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    indices="3",
    licence_type="floating",
    user="alice",
    uid=1000,
    host="alpha",
    address="10.0.0.1",
    pid=42,
    handle="0123456789abcdef",
)
WRITTEN = "filter, LICENSE on (written, trimmed)"
DROPPED = "filter, LICENSE off (dropped by the observer)"
FAST = "filter, LICENSE off, switches= fast path"


def rate(emit: Callable[[], None], events: int, rounds: int) -> float:
    """Events per second of ``emit``, best of ``rounds`` rounds of ``events`` calls."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(events):
            emit()
        best = min(best, time.perf_counter() - started)
    return events / best


def setup(switches: LogSwitches | None) -> tuple[Logger, io.StringIO]:
    """A logger -> publisher -> text observer on a StringIO, filtered if switches given."""
    out = io.StringIO()
    publisher = LogPublisher(textFileLogObserver(out))
    if switches is not None:
        install_switch_filter(switches, publisher)
    return Logger(namespace="bench", observer=publisher), out


def measure(events: int, rounds: int) -> dict[str, float]:
    """Events/s of a licence line in each configuration (and a check that the lines
    written and dropped are the ones expected)."""
    plain, _ = setup(None)
    on, on_out = setup(LogSwitches(ALL))
    off_switches = LogSwitches(ALL & ~Switch.LICENSE)
    off, off_out = setup(off_switches)
    results = {
        "no filter (every line written)": rate(
            lambda: log_licence(plain, "granted", **FIELDS), events, rounds
        ),
        WRITTEN: rate(lambda: log_licence(on, "granted", **FIELDS), events, rounds),
        DROPPED: rate(lambda: log_licence(off, "granted", **FIELDS), events, rounds),
        FAST: rate(
            lambda: log_licence(off, "granted", switches=off_switches, **FIELDS), events, rounds
        ),
    }
    if on_out.getvalue().count("\n") != events * rounds or off_out.getvalue():
        raise SystemExit("the filter wrote or dropped the wrong lines")
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit status 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the best one counts)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    results = measure(args.events, args.rounds)
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:>12,.0f} events/s  {1e6 / value:6.2f} us/event")
    print(f"dropped / written: {results[DROPPED] / results[WRITTEN]:.1f}x")
    print(f"fast path / dropped: {results[FAST] / results[DROPPED]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
