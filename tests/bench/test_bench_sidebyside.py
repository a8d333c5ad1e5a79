"""Smoke test of ``bench/sidebyside.py`` on hqnlsd only, at a tiny size, for real.

It starts real ``twistd -n hqnlsd`` daemons (a single host, a 3-member domain,
one fresh domain for the failover) on 127.0.0.1-3, so it is ``e2e``. Timings are
not asserted, only that the table and the JSON have their shape and that every
figure measured is a positive number; and that no daemon outlives the script.
Redis and etcd are left out (``--only hqnlsd``) so that the test does not depend
on the system's packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "sidebyside.py"
#: The tiny run takes about 25 s on a busy 2-CPU machine (three sets of daemons).
SMOKE_TIMEOUT = 180.0
#: The medians an hqnlsd-only run measures.
HQNLSD_FIGURES = (
    "hqnlsd_pairs", "hqnlsd_cpu_us", "hqnlsd_bytes", "hqnlsd_hold_seconds",
    "domain_pairs", "hqnlsd_failover",
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short, new directory for the script's trees (AF_UNIX paths are short), removed
    at the end with anything still running in it."""
    path = Path(tempfile.mkdtemp(prefix="sbs-test-"))
    try:
        yield path
    finally:
        for pid in processes_naming(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def processes_naming(path: Path) -> list[int]:
    """Pids of live (not zombie) processes whose command line mentions ``path``."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def positive(value: object) -> bool:
    """A number above zero (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_hqnlsd_only_tiny_run_prints_the_table_and_json(workdir: Path) -> None:
    """1 s runs, 4 connections, 100 held, 1 failover run: the seven-row table, the same
    rows in the JSON, every hqnlsd median positive, no daemon left behind."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "hqnlsd", "--seconds", "1",
         "--connections", "4", "--hold", "100", "--rate", "50", "--json",
         "--workdir", str(workdir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT, check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| figure | hqnlsd | the alternative | ratio | goal | verdict |")
    assert len(table) == 2 + 7, done.stdout

    results = json.loads(lines[-1])
    assert results["settings"]["only"] == ["hqnlsd"]
    medians = results["medians"]
    for name in HQNLSD_FIGURES:
        assert positive(medians.get(name)), f"{name}: {medians.get(name)!r}"
    p50, p99 = medians["hqnlsd_open"]
    assert positive(p50) and positive(p99) and p99 >= p50
    assert isinstance(medians["domain_refusals"], int) and medians["domain_refusals"] >= 0
    for name, runs in results["runs"].items():
        assert name.startswith("hqnlsd"), name
        assert runs, name
        for run in runs:
            for key in ("pairs_per_second", "p50_ms", "p99_ms", "cpu_us_per_pair",
                        "bytes_per_licence", "seconds_to_take", "seconds"):
                if key in run:
                    assert positive(run[key]), f"{name} {key}: {run[key]!r}"
            if "pairs_per_second" in run:  # a load run: the generator's own CPU too
                assert positive(run["client_cpu_us_per_pair"]), f"{name}: {run!r}"
    assert positive(medians["hqnlsd_client_cpu_us"])
    assert "Load generator CPU per pair" in done.stdout

    rows = results["rows"]
    assert [set(row) for row in rows] == [
        {"figure", "hqnlsd", "alternative", "ratio", "goal", "verdict"}
    ] * 7
    for row, line in zip(rows, table[2:], strict=True):
        assert line.startswith(f"| {row['figure']} | {row['hqnlsd']} |")
        assert row["verdict"] in ("met", "not met", "n/a", "report")
        assert row["hqnlsd"] and not row["hqnlsd"].startswith("-"), row
    assert [row["verdict"] for row in rows][:4] == ["n/a"] * 4  # no alternative measured
    assert rows[-1]["verdict"] == "report"
    assert processes_naming(workdir) == []
