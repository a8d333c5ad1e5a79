"""``hqn_report`` on the usage reports of a real three-member domain across a failover.

hqnserver1 (the primary) grants licences a and b and records their grants; it is
killed; hqnserver2 takes over, grants c and records the releases of a, b and c.
The report of all three members' state directories (hqnserver1's given twice, as
a copy would be) has three licences, each from its grant in one file to its
release in another, a peak of 3, every repeated record counted once, and the
backup's TRY_SERVER answers as redirects, not denials; the refusals while no
member could serve (the election, the take-over) are denials but not true ones.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonHarness,
    domain_daemons,
    is_grant,
    is_status,
    product_permit,
    request_licence,
    wait_for,
)
from tests.tools.test_report_e2e import run_report

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Domain Widget"
KEY = f"{PUBLISHER}/{PRODUCT}"
#: Bounds of an election and of a failover on a loaded machine (seconds).
ELECTION_BOUND = 30.0
FAILOVER_BOUND = 20.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def request(daemon: Daemon, token: str) -> Ok | Err:
    """REQUEST one licence of the domain's product."""
    return request_licence(daemon, token, publisher=PUBLISHER, product=PRODUCT, version="1.0")


def records(daemon: Daemon, event: str) -> list[dict[str, object]]:
    """``daemon``'s usage records of kind ``event`` so far."""
    path = daemon.state_dir / "usage.jsonl"
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
    return [record for record in found if record["event"] == event]


def wait_records(daemon: Daemon, event: str, count: int) -> None:
    """Until ``daemon`` has written ``count`` records of ``event``."""
    deadline = time.monotonic() + 30
    while len(records(daemon, event)) < count:
        assert time.monotonic() < deadline, records(daemon, event)
        time.sleep(0.1)


def test_report_of_a_domain_across_a_failover(daemons: DaemonHarness, tmp_path: Path) -> None:
    """Grants on the old primary, releases on the new one: counted once, whole."""
    first, second, third = domain_daemons(
        daemons, 3, [product_permit(PRODUCT, publisher=PUBLISHER, floating_count=5)]
    )
    daemons.start_all(first, second, third)
    a, _ = wait_for("primary grants", lambda: request(first, "a"), is_grant, ELECTION_BOUND)
    b = request(first, "b")
    assert is_grant(b), b
    wait_for(
        "backup redirects",
        lambda: request(second, "via-backup"),
        is_status(Status.TRY_SERVER),
        ELECTION_BOUND,
    )
    wait_records(first, "grant", 2)
    # Every member must hold the grants before the kill, or the survivors lose them.
    for member in (second, third):
        wait_for(
            "the backup knows the handle",
            lambda member=member: request_update(member, str(b.get("handle"))),
            is_status(Status.TRY_SERVER),
            ELECTION_BOUND,
        )
    first.kill()
    c, _ = wait_for("backup takes over", lambda: request(second, "c"), is_grant, FAILOVER_BOUND)
    handles = [str(reply.get("handle")) for reply in (a, b, c)]
    with second.client() as client:
        for handle in handles:
            assert isinstance(client.call("RELEASE", handle=handle), Ok)
    wait_records(second, "release", 3)

    copy = tmp_path / "copy-of-hqnserver1"
    copy.mkdir()
    for usage in first.state_dir.glob("usage.jsonl*"):
        shutil.copy(usage, copy / usage.name)
    out = tmp_path / "report"
    done = run_report(
        str(first.state_dir),
        str(copy),
        str(second.state_dir),
        str(third.state_dir),
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    first_records = len((first.state_dir / "usage.jsonl").read_text("utf-8").splitlines())
    assert summary["inputs"]["duplicates"] == first_records
    widget = summary["products"][KEY]
    assert (widget["sessions"], widget["peak"]) == (3, 3)
    # The waits for an election and a take-over were refused while no member could
    # serve; each of those clients got its licence moments later: no true denial.
    rows = list(csv.DictReader((out / "denials.csv").open()))
    assert {row["status"] for row in rows} <= {"NOTVERIFIED", "LOSTMASTER", "NEW_MASTER"}
    assert widget["denials"] == sum(int(row["count"]) for row in rows)
    assert (widget["true_denials"], widget["undecided_denials"]) == (0, 0)
    assert widget["redirects"] >= 1
    sessions = {row["handle"]: row for row in csv.DictReader((out / "sessions.csv").open())}
    assert set(sessions) == set(handles)
    for handle in handles:
        assert sessions[handle]["ended_by"] == "release"
        assert float(sessions[handle]["seconds"]) > 0
    granted_on_first = {str(record["handle"]) for record in records(first, "grant")}
    assert granted_on_first == set(handles[:2])


def request_update(daemon: Daemon, handle: str) -> Ok | Err:
    """UPDATE ``handle`` at ``daemon``."""
    with daemon.client() as client:
        return client.call("UPDATE", handle=handle)
