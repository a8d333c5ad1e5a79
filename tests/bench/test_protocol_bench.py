# mypy: allow-untyped-calls
"""bench/checkout.py against a real TCP server (the protocol with a fake pool)."""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "checkout.py"
FAKE_SERVER = ROOT / "tests" / "protocols" / "test_protocol_fakes.py"


def load_bench() -> ModuleType:
    """bench/checkout.py as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("checkout_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


class Server:
    """A fake-pool server subprocess on 127.0.0.1; stops when its stdin closes."""

    def __init__(self, capacity: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(FAKE_SERVER), "serve", str(capacity)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        if not ready:
            self.stop()
            raise AssertionError("fake server did not start within 30 s")
        line = self.process.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.stop()
            raise AssertionError(f"fake server said {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        """Close stdin (the polite stop), then make sure the process is gone."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def server() -> Iterator[Server]:
    """A fake server with plenty of licences."""
    running = Server(capacity=1_000_000)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def small_server() -> Iterator[Server]:
    """A fake server with only 3 licences."""
    running = Server(capacity=3)
    try:
        yield running
    finally:
        running.stop()


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the benchmark script, bounded."""
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True, text=True, timeout=120, cwd="/",
    )


@pytest.mark.e2e
def test_bench_churn_and_hold(server: Server) -> None:
    """Both phases run, print their figures, and hold exactly the licences asked."""
    done = run_bench(
        "--port", str(server.port), "--connections", "8", "--seconds", "1",
        "--hold", "101", "--pid", str(server.process.pid), "--json",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "pairs/s" in out and "p50" in out and "p99" in out
    assert "hold: 101/101 licences held over 8 connections" in out
    assert f"daemon {server.process.pid} VmRSS: before" in out
    results = json.loads(out.strip().splitlines()[-1])
    churn, hold = results["churn"], results["hold"]
    assert churn["connections"] == 8 and churn["pairs"] > 0
    assert 0 < churn["p50_ms"] <= churn["p99_ms"]
    assert churn["denials"] == {} and churn["release_errors"] == {}
    assert hold["held"] == 101 and hold["released"] == 101
    assert hold["rss_before"] > 0 and hold["rss_after"] > 0
    assert isinstance(hold["bytes_per_licence"], int)


@pytest.mark.e2e
def test_bench_counts_denials(small_server: Server) -> None:
    """Out of licences: denials are reported, not failures; the hold takes what it can."""
    done = run_bench(
        "--port", str(small_server.port), "--connections", "5", "--seconds", "0.5",
        "--hold", "10", "--json",
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["churn"]["pairs"] > 0
    assert results["churn"]["denials"].get("NOLICENCES", 0) > 0
    assert results["hold"]["held"] == 3
    assert results["hold"]["denials"] == {"NOLICENCES": 7}
    assert results["hold"]["released"] == 3
    assert "daemon memory not measured" in done.stdout


@pytest.mark.e2e
def test_bench_fails_cleanly_without_server() -> None:
    """No server: a clear error and exit status 1, quickly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_bench("--port", str(port), "--connections", "3", "--seconds", "1",
                     "--reply-timeout", "5")
    assert done.returncode == 1
    assert "connection" in done.stderr and "failed" in done.stderr


@pytest.mark.e2e
def test_bench_rejects_bad_arguments() -> None:
    """Nonsense arguments stop the script before it connects."""
    assert run_bench("--connections", "0").returncode == 2
    assert run_bench("--pid", "999999999").returncode == 2


def test_percentile_nearest_rank() -> None:
    """p50 and p99 are nearest-rank percentiles of the sorted latencies."""
    bench = load_bench()
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.50) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([7.0], 0.99) == 7.0
    assert bench.percentile([], 0.5) == 0.0


def test_read_rss_of_this_process() -> None:
    """VmRSS is read from /proc in bytes."""
    bench = load_bench()
    rss = bench.read_rss(os.getpid())
    assert rss > 1024 * 1024 and rss % 1024 == 0


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh TCP connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):  # socket timeout bounds every wait
            received += chunk
        return received


@pytest.mark.e2e
def test_real_socket_quit_closes(server: Server) -> None:
    """Over real TCP, QUIT answers OK bye and the server closes the connection."""
    assert exchange(server.port, b"PING\r\nQUIT\r\n") == b"OK pong\r\nOK bye\r\n"


@pytest.mark.e2e
def test_real_socket_over_long_line_closes(server: Server) -> None:
    """Over real TCP, an over-long line gets LINE_TOO_LONG and the connection closes."""
    received = exchange(server.port, b"PING\n" + b"x" * 5000 + b"\nPING\n")
    lines = received.split(b"\r\n")
    assert lines[0] == b"OK pong"
    assert lines[1].startswith(b"ERR LINE_TOO_LONG code=0xC815100C ")
    assert lines[2:] == [b""]
