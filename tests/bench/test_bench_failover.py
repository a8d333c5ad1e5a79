"""Smoke tests of ``bench/failover.py``: it prints its figures and leaves no daemon behind.

The script starts real ``twistd -n hqnlsd`` daemons on 127.0.0.1-3, so these
tests are ``e2e``. Each runs it as a subprocess under a bounded timeout, with its
own ``--workdir`` so that any daemon it started can be found (its command line
names that directory) and checked gone. The directory is a short one under the
system's temporary directory, not pytest's ``workdir``: the daemons' admin
sockets live deep inside it, and AF_UNIX paths are limited to 107 bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "failover.py"
#: The smoke run (1 failover run with its admission measurement, 1 s of load per
#: target) takes about 30 s on a busy 2-CPU machine.
SMOKE_TIMEOUT = 90.0
#: How long the script may take to start its first daemon, or to exit after a signal.
SIGNAL_BOUND = 20.0
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short, new directory for the script's trees, removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="fobench-"))
    try:
        yield path
    finally:
        kill_leftovers(path)
        shutil.rmtree(path, ignore_errors=True)


def processes_naming(path: Path, *, but: int | None = None) -> list[int]:
    """Pids of live processes whose command line mentions ``path`` (zombies and ``but``
    excluded): the daemons the script started there."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (but, os.getpid()):
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


def kill_leftovers(path: Path) -> None:
    """SIGKILL whatever still names ``path`` (only after a failed check: cleans up)."""
    for pid in processes_naming(path, but=None):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the benchmark from the repository root; the child is killed if it is late."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def figure(pattern: str, text: str) -> list[float]:
    """The numbers captured by ``pattern`` on its (single) matching line of ``text``."""
    matches = re.findall(pattern, text, flags=re.MULTILINE)
    assert len(matches) == 1, f"expected one line matching {pattern!r} in:\n{text}"
    groups = matches[0] if isinstance(matches[0], tuple) else (matches[0],)
    return [float(g) for g in groups]


def test_smoke_run_prints_positive_figures(workdir: Path) -> None:
    """One failover run and 1 s of load per target: every figure is printed, positive,
    and the same in the text and in the JSON; no daemon outlives the script."""
    done = run_script(
        ["--runs", "1", "--seconds", "1", "--connections", "4", "--json",
         "--workdir", str(workdir)],
        SMOKE_TIMEOUT,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert re.search(r"^machine: \d+ CPUs .*Python 3\.", out, flags=re.MULTILINE), out

    (single_rate, _single_pairs) = figure(
        rf"^throughput single host: +{NUMBER} pairs/s \((\d+) pairs", out
    )
    (domain_rate, _domain_pairs) = figure(
        rf"^throughput 3-member domain: +{NUMBER} pairs/s \((\d+) pairs", out
    )
    (ratio,) = figure(rf"^throughput ratio domain/single: {NUMBER}$", out)
    (run_seconds,) = figure(
        rf"^failover run 1/1: {NUMBER} s from SIGKILL of hqnserver1 to OK from "
        r"hqnserver[23] ",
        out,
    )
    median, low, high = figure(
        rf"^failover median {NUMBER} s \(min {NUMBER} s, max {NUMBER} s\) over 1 run$", out
    )
    (run_admission,) = figure(r"^failover run 1/1: .*; admission " + NUMBER + " s$", out)
    admission = figure(
        rf"^admission median {NUMBER} s \(min {NUMBER} s, max {NUMBER} s\) over 1 run: ", out
    )
    assert run_admission > 0 and admission == [pytest.approx(run_admission, abs=0.0011)] * 3
    for target in ("single host", "3-member domain"):
        (count,) = figure(rf"^refused requests {target}: +(\d+)", out)
        assert count >= 0
    for value in (single_rate, domain_rate, ratio, run_seconds, median, low, high):
        assert value > 0, out
    # One run: the same figure, printed from the run (full precision) and from the
    # summary (rounded to 0.1 ms first), so the last printed digit may differ by one.
    for value in (median, low, high):
        assert value == pytest.approx(run_seconds, abs=0.0011), out
    assert ratio == pytest.approx(domain_rate / single_rate, rel=0.01, abs=0.002), out

    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert data["throughput"]["single"]["pairs_per_second"] == single_rate
    assert data["throughput"]["domain"]["pairs_per_second"] == domain_rate
    assert data["throughput"]["ratio"] == pytest.approx(ratio, abs=0.001)
    (run,) = data["failover"]["runs"]
    assert run["granted_by"] in ("hqnserver2", "hqnserver3"), run
    assert run["replies"].get("OK") == 1, run
    assert data["failover"]["median"] == pytest.approx(run_seconds, abs=0.001)
    assert run["admission_seconds"] == pytest.approx(run_admission, abs=0.001)
    assert data["admission"]["median"] == pytest.approx(run_admission, abs=0.001)
    assert set(data["throughput"]["refused"]) == {"single", "domain"}
    assert data["machine"]["cpus"] >= 1
    assert processes_naming(workdir) == [], "daemons left running"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_kills_every_daemon(workdir: Path, signum: int) -> None:
    """Interrupted while a domain's three daemons run, the script exits promptly through
    its clean-up (which kills them and shows their log tails) and leaves none running."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--runs", "3", "--seconds", "1", "--connections", "2",
         "--workdir", str(workdir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + SIGNAL_BOUND
        while len(processes_naming(workdir, but=process.pid)) < 3:
            assert process.poll() is None, process.communicate(timeout=SIGNAL_BOUND)
            assert time.monotonic() < deadline, "the domain's daemons did not start"
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=SIGNAL_BOUND)
        assert process.returncode == 128 + signum, (process.returncode, out, err)
        # The harness prints the daemons' log tails after killing them, on failure only.
        assert err.count("---- last ") >= 3, err
        assert processes_naming(workdir) == [], "daemons left running"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=SIGNAL_BOUND)


def test_bad_arguments_exit_2() -> None:
    """Arguments out of range are refused before any daemon starts."""
    for args in (["--runs", "0"], ["--seconds", "0"], ["--connections", "0"]):
        done = run_script(args, SIGNAL_BOUND)
        assert done.returncode == 2, (args, done.stderr)
        assert "must be" in done.stderr, (args, done.stderr)


def _blocked_signals(thread_id: int) -> int:
    """The signal mask (``SigBlk``) of this process's thread ``thread_id`` (Linux)."""
    status = Path(f"/proc/self/task/{thread_id}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("SigBlk:")]
    return int(line.split()[1], 16)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_probe_threads_leave_interrupts_to_the_main_thread() -> None:
    """A SIGINT or SIGTERM is delivered to the main thread, never to a probe thread.

    The kernel gives a process-directed signal to any thread that does not block
    it; one taken by a probe thread left the main thread blocked in its join until
    the join's timeout, so the script did not stop promptly (seen under load in
    `test_signal_kills_every_daemon`)."""
    from bench.failover import Prober

    go, done = threading.Event(), threading.Event()
    member = cast(Any, types.SimpleNamespace(name="hqnserver2"))  # never dialled: no go
    prober = Prober(member, 0, 1, go, done, 0.01, [], threading.Lock())
    prober.start()  # waits for go
    try:
        deadline = time.monotonic() + SIGNAL_BOUND
        while prober.thread.native_id is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        blocked = _blocked_signals(prober.thread.native_id)
    finally:
        done.set()  # then go: the thread leaves without dialling the stand-in member
        go.set()
        prober.thread.join(SIGNAL_BOUND)
    assert not prober.thread.is_alive()
    for signum in (signal.SIGINT, signal.SIGTERM):
        assert blocked & (1 << (signum - 1)), f"{signum.name} is not blocked in the probe thread"
    assert not _blocked_signals(threading.get_native_id()) & (1 << (signal.SIGINT - 1))


def test_interrupt_during_the_load_stops_the_script() -> None:
    """SIGINT while the load generator runs (asyncio) stops the script like anywhere else.

    ``asyncio.run`` takes SIGINT over when Python's default handler is in place and
    turns it into a cancellation, which a task finishing at that moment can swallow:
    the script then went on to its failover runs (seen under load in
    `test_signal_kills_every_daemon`). The script's own handler keeps it an exception."""
    import bench.failover as failover

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        failover.install_signal_handlers()
        handler = signal.getsignal(signal.SIGINT)
        assert handler is not signal.default_int_handler, "asyncio.run would take SIGINT over"
        assert callable(handler)
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
        with pytest.raises(SystemExit):
            cast(Any, signal.getsignal(signal.SIGTERM))(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
