"""``hqn_report`` on the usage report of a real daemon under a scripted load (issue 15).

The load: 7 licences taken at once (the permit's count), then exactly `DENIED`
REQUESTs refused (none left), 2 released, 1 more taken, all released. The report
must say: peak 7 (permit 7), `DENIED` denials, 8 licences given; the page embeds
every chart, and a real headless Chromium renders the page with every chart
loaded. Chromium comes from the system's packages (``.ci/run`` installs it): a
machine without it fails this test, it does not skip it.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    REPO_ROOT,
    Daemon,
    DaemonHarness,
    LineClient,
    is_grant,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e

#: The permit's floating count, and the peak the load creates.
PEAK = 7
#: REQUESTs refused at the peak.
DENIED = 3
#: Records the load writes: 8 grants, 8 releases, 3 denials.
RECORDS = 8 + 8 + DENIED
KEY = "Test Publisher/Widget"
#: Bound on the report's and the browser's run (seconds, a loaded two-core machine).
RUN_TIMEOUT = 180


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """One started daemon serving Widget with 7 floating licences."""
    with DaemonHarness(tmp_path) as harness:
        harness.write_permit(
            make_permit([harness.host(1)], [product_permit("Widget", floating_count=PEAK)])
        )
        yield harness.daemon("report").start_and_wait()


def request(client: LineClient, user: str, pid: int) -> Ok | Err:
    """REQUEST one Widget licence as ``user``."""
    return client.call(
        "REQUEST",
        publisher="Test Publisher",
        product="Widget",
        version="1.0",
        user=user,
        host="loadhost",
        pid=pid,
    )


def scripted_load(daemon: Daemon) -> None:
    """The load of the module doc, on one connection."""
    with daemon.client() as client:
        handles = []
        for number in range(PEAK):
            reply = request(client, f"user{number}", 100 + number)
            assert is_grant(reply), reply
            handles.append(str(reply.get("handle")))
        for number in range(DENIED):
            reply = request(client, f"late{number}", 200 + number)
            assert isinstance(reply, Err) and reply.status is Status.NOLICENCES, reply
        for handle in handles[:2]:
            assert isinstance(client.call("RELEASE", handle=handle), Ok)
        reply = request(client, "late0", 200)
        assert is_grant(reply), reply
        handles = [*handles[2:], str(reply.get("handle"))]
        for handle in handles:
            assert isinstance(client.call("RELEASE", handle=handle), Ok)


def wait_for_records(path: Path, wanted: int) -> None:
    """Until ``path`` holds ``wanted`` records (they are written a reactor turn later)."""
    deadline = time.monotonic() + 30
    while True:
        count = len(path.read_text("utf-8").splitlines()) if path.exists() else 0
        if count >= wanted:
            assert count == wanted, path.read_text("utf-8")
            return
        assert time.monotonic() < deadline, f"{count} of {wanted} records in {path}"
        time.sleep(0.1)


def run_report(*argv: str) -> subprocess.CompletedProcess[str]:
    """``hqn_report`` from this working tree, as a separate process."""
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "hqnlsd.tools.report", *argv],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_report_of_a_real_daemon_under_load(daemon: Daemon, tmp_path: Path) -> None:
    """Peak, denials and licences given as created; every chart in the page."""
    scripted_load(daemon)
    wait_for_records(daemon.state_dir / "usage.jsonl", RECORDS)
    out = tmp_path / "report"
    (permit_dir,) = daemon.permit_dirs
    done = run_report(str(daemon.state_dir), "-o", str(out), "--permits", str(permit_dir))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    widget = summary["products"][KEY]
    assert widget["peak"] == PEAK
    assert widget["permitted"] == PEAK
    assert widget["denials"] == DENIED
    assert widget["sessions"] == PEAK + 1
    assert summary["total_denials"] == DENIED
    assert summary["inputs"]["skipped"] == 0
    rows = list(csv.DictReader((out / "denials.csv").open(encoding="utf-8")))
    assert [(r["product"], r["status"], int(r["count"])) for r in rows] == [
        ("Widget", "NOLICENCES", DENIED)
    ]
    in_use = [int(r["in_use"]) for r in csv.DictReader((out / "in_use.csv").open())]
    assert max(in_use) == PEAK
    page = (out / "report.html").read_text("utf-8")
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 9  # one in-use chart (one product) and eight others
    for png in pngs:
        assert "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() in page
    check_in_chromium(out / "report.html", len(pngs), tmp_path)


def check_in_chromium(page: Path, charts: int, tmp_path: Path) -> None:
    """Chromium (headless) loads the page with every chart decoded, and screenshots it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (.ci/run installs Debian's chromium)"
    # A copy of the page that writes, once loaded, whether each image decoded.
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => { document.body.setAttribute("
        "'data-charts', Array.from(document.images).map("
        "i => i.complete && i.naturalWidth > 0 ? 'ok' : 'broken').join(' ')); });</script>"
    )
    probe.write_text(page.read_text("utf-8").replace("</body>", script + "</body>"), "utf-8")
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    found = re.search(r'data-charts="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    assert found.group(1).split() == ["ok"] * charts
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, "--window-size=1000,4000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    print(f"report screenshot: {shot}")
