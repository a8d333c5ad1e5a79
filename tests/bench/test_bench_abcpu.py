"""bench/abcpu.py's helpers: the switches file it writes, the CPU split per pair."""

from __future__ import annotations

import os
from pathlib import Path

from bench import abcpu
from hqnlsd.logging.switches import STARTUP, LogSwitches, Switch


def test_switches_file_turns_licence_off(tmp_path: Path) -> None:
    """The daemon reads the file as the start-up switches without LICENSE."""
    abcpu.write_switches(tmp_path / "state", ["LICENSE"])
    assert LogSwitches.load(tmp_path / "state").value == STARTUP & ~Switch.LICENSE


def test_split_per_pair() -> None:
    """User and system ticks of each thread name, per pair, in microseconds."""
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    before = {"python": (100, 10), "hqnlsd-journal": (5, 5)}
    after = {"python": (110, 12), "hqnlsd-journal": (7, 9)}
    split = abcpu.split_us(before, after, 10)
    assert split == {
        "python user": round(10 * tick / 10, 1),
        "python sys": round(2 * tick / 10, 1),
        "hqnlsd-journal user": round(2 * tick / 10, 1),
        "hqnlsd-journal sys": round(4 * tick / 10, 1),
    }


def test_thread_ticks_of_this_process() -> None:
    ticks = abcpu.thread_ticks(os.getpid())
    assert ticks and all(user >= 0 and system >= 0 for user, system in ticks.values())
