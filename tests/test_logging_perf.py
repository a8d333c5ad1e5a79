"""Cost of a licence line: filter off, filter on with the switch on, and with it off.

Run ``python -m pytest tests/test_logging_perf.py -q -s`` to see events/s. The
assertions are relative (same process, same machine, best of several rounds),
so a slow or busy machine does not make them fail.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogPublisher, textFileLogObserver

from hqnlsd.logging.observer import install_switch_filter, log_licence
from hqnlsd.logging.switches import ALL, LogSwitches, Switch

EVENTS = 5000
ROUNDS = 5

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


def rate(emit: Callable[[], None]) -> float:
    """Events per second of ``emit``, best of ROUNDS rounds of EVENTS calls."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(EVENTS):
            emit()
        best = min(best, time.perf_counter() - started)
    return EVENTS / best


def setup(switches: LogSwitches | None) -> tuple[Logger, io.StringIO]:
    """A logger -> publisher -> text observer on a StringIO, filtered if switches given."""
    out = io.StringIO()
    publisher = LogPublisher(textFileLogObserver(out))
    if switches is not None:
        install_switch_filter(switches, publisher)
    return Logger(namespace="bench", observer=publisher), out


def measure() -> dict[str, float]:
    """Events/s of a licence line in each configuration."""
    plain, _ = setup(None)
    on, on_out = setup(LogSwitches(ALL))
    off_switches = LogSwitches(ALL & ~Switch.LICENSE)
    off, off_out = setup(off_switches)
    results = {
        "no filter (every line written)": rate(lambda: log_licence(plain, "granted", **FIELDS)),
        "filter, LICENSE on (written, trimmed)": rate(lambda: log_licence(on, "granted", **FIELDS)),
        "filter, LICENSE off (dropped by the observer)": rate(
            lambda: log_licence(off, "granted", **FIELDS)
        ),
        "filter, LICENSE off, switches= fast path": rate(
            lambda: log_licence(off, "granted", switches=off_switches, **FIELDS)
        ),
    }
    assert on_out.getvalue().count("\n") == EVENTS * ROUNDS
    assert off_out.getvalue() == ""
    return results


def test_switched_off_licence_lines_are_cheap() -> None:
    """A licence line whose switch is off costs a fraction of one that is written."""
    results = measure()
    width = max(map(len, results))
    print()
    for name, value in results.items():
        print(f"{name:<{width}}  {value:>12,.0f} events/s  {1e6 / value:6.2f} us/event")
    written = results["filter, LICENSE on (written, trimmed)"]
    dropped = results["filter, LICENSE off (dropped by the observer)"]
    fast = results["filter, LICENSE off, switches= fast path"]
    assert dropped > 2 * written
    assert fast > 2 * dropped
