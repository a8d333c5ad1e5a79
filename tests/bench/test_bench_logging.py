"""Smoke test of ``bench/logging_cost.py``: it runs and prints every figure.

The figures themselves are the benchmark's to print, not a test's to judge (the
machines are shared and noisy); what a switched-off line must not do (be written,
or be emitted at all on the fast path) is tested in test_logging_observer.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.daemons import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_logging_benchmark_prints_every_configuration() -> None:
    """Four configurations with a positive rate each, and the two ratios."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "logging_cost.py"),
            "--events",
            "50",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rates = re.findall(r"^(.+?)\s+([\d,]+) events/s\s+[\d.]+ us/event$", done.stdout, re.M)
    assert len(rates) == 4, done.stdout
    assert all(int(value.replace(",", "")) > 0 for _, value in rates)
    assert re.search(r"^dropped / written: [\d.]+x$", done.stdout, re.M), done.stdout
    assert re.search(r"^fast path / dropped: [\d.]+x$", done.stdout, re.M), done.stdout
