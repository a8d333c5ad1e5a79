"""A real daemon with ``--logfile`` under a flood of well-formed, denied REQUESTs (issue 12).

5,000 pipelined REQUESTs for a product nobody serves, on one connection: the log and
``usage.jsonl`` grow by a few kB (20 lines and records per address per interval,
then one summary line and one ``denials`` record), every denial is still counted in
the usage report, and a fresh client still gets a licence.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.logging.usage import USAGE_FILE
from tests.daemons import IO_TIMEOUT, DaemonHarness, is_grant, make_permit, product_permit
from tests.logging.test_e2e_log_flood import LogfileDaemon, log_size

pytestmark = pytest.mark.e2e

#: Denied REQUESTs sent.
DENIALS = 5_000
#: Sent before their replies are read (pipelined).
CHUNK = 500
#: The ``[limits] log-interval`` of the daemon: short, so the summary comes soon.
INTERVAL = 8.0
#: Bytes the flood may add to the log, and to the usage report.
BUDGET = 20_000


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[LogfileDaemon]:
    """One started daemon serving Widget, logging to ``twistd.log``, short log interval."""
    with DaemonHarness(tmp_path) as harness:
        harness.write_permit(make_permit([harness.host(1)], [product_permit("Widget")]))
        config = tmp_path / "hqnlsd.toml"
        config.write_text(f"[limits]\nlog-interval = {INTERVAL}\n", "utf-8")
        plain = harness.daemon("denied", extra_args=["--config", str(config)])
        made = LogfileDaemon(
            name=plain.name, address=plain.address, port=plain.port, workdir=plain.workdir,
            state_dir=plain.state_dir, permit_dirs=plain.permit_dirs,
            publisher_keys=plain.publisher_keys, hosts_file=plain.hosts_file,
            runtime_dir=plain.runtime_dir, extra_args=plain.extra_args,
        )
        harness.daemons[plain.name] = made
        made.start_and_wait()
        yield made


def usage_size(daemon: LogfileDaemon) -> int:
    """Bytes in the usage report and its rotations."""
    return sum(path.stat().st_size for path in daemon.state_dir.glob(f"{USAGE_FILE}*"))


def usage_records(daemon: LogfileDaemon) -> list[dict[str, Any]]:
    """The usage records written so far."""
    path = daemon.state_dir / USAGE_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]


def read_lines(sock: socket.socket, wanted: int, pending: bytes) -> tuple[list[bytes], bytes]:
    """``wanted`` reply lines (a generous deadline), and what came after them."""
    lines: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(lines) < wanted:
        if b"\n" not in pending:
            assert time.monotonic() < deadline, f"only {len(lines)} of {wanted} replies"
            sock.settimeout(max(deadline - time.monotonic(), 0.1))
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(lines)} of {wanted} replies"
            pending += chunk
            continue
        line, pending = pending.split(b"\n", 1)
        lines.append(line)
    return lines, pending


def test_denied_request_flood_is_summarised(daemon: LogfileDaemon) -> None:
    """5,000 denied REQUESTs: < 20 kB of log and of usage report, all counted, and a
    fresh client is granted a licence."""
    log_before, usage_before = log_size(daemon), usage_size(daemon)
    request = (
        b"REQUEST publisher=Harlequin product=Nope version=1.0 user=u host=h pid=1\n"
    )
    replies: list[bytes] = []
    with socket.create_connection((daemon.address, daemon.port), timeout=IO_TIMEOUT) as sock:
        pending = b""
        for _ in range(DENIALS // CHUNK):
            sock.sendall(request * CHUNK)
            got, pending = read_lines(sock, CHUNK, pending)
            replies += got
    assert len(replies) == DENIALS
    assert all(reply.startswith(b"ERR BADPRODUCT") for reply in replies), replies[:3]
    with daemon.client() as client:
        granted = client.call(
            "REQUEST", publisher="Test Publisher", product="Widget", version="1.0",
            user="fresh", host="h2", pid=7,
        )
    assert is_grant(granted), granted
    # Every reply was read, so their lines and records are written: bounded already.
    assert log_size(daemon) - log_before < BUDGET
    assert usage_size(daemon) - usage_before < BUDGET
    deadline = time.monotonic() + INTERVAL + 60
    while not any(record["event"] == "denials" for record in usage_records(daemon)):
        assert time.monotonic() < deadline, "no denials summary in usage.jsonl"
        time.sleep(0.2)
    text = daemon.logfile.read_text("utf-8")
    while "not logged one by one" not in text:
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.2)
        text = daemon.logfile.read_text("utf-8")
    deadline = time.monotonic() + INTERVAL + 60
    while True:
        records = usage_records(daemon)
        singles = [r for r in records if r["event"] == "denial"]
        summaries = [r for r in records if r["event"] == "denials"]
        counted = len(singles) + sum(r["count"] for r in summaries)
        if counted == DENIALS:
            break
        assert counted < DENIALS and time.monotonic() < deadline, counted
        time.sleep(0.2)
    for summary in summaries:
        assert summary["address"] == "127.0.0.1"
        assert summary["count"] == sum(row["count"] for row in summary["denials"])
        assert {row["product"] for row in summary["denials"]} == {"Nope"}
    assert 20 <= len(singles) <= 20 * len(summaries)
    assert any(r["event"] == "grant" and r["user"] == "fresh" for r in records)
    assert log_size(daemon) - log_before < BUDGET, text[-3000:]
    assert usage_size(daemon) - usage_before < BUDGET
    assert text.count("denied Harlequin Nope") == len(singles)
