"""LicenceFeed: real engine events become licence lines and usage records."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from zope.interface import implementer

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.results import Grant, LicenceRequest
from hqnlsd.logging import feed as feed_module
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.observer import SwitchedObserver, log_licence
from hqnlsd.logging.switches import ALL, STARTUP, LogSwitches, Switch
from hqnlsd.logging.usage import USAGE_FILE, UsageReport
from hqnlsd.permits.model import ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.reports import records as reports
from hqnlsd.reports.records import parse_record
from hqnlsd.status import Status

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (independent of the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


PERMIT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=int(Policy.GRAB | Policy.UVIS),
    node_count=0,
    floating_count=2,
    start=datetime.date(2026, 1, 1),
    expiry=datetime.date(2030, 12, 31),
    update_minutes=5,
    data=(),
    locked_nodes=(),
)


@implementer(ILogObserver)
class Keep:
    """An observer appending events to a list."""

    def __init__(self, events: list[LogEvent]) -> None:
        self.events = events

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)


class Rig:
    """An engine on a Clock, a usage report, a feed, and the log lines it produced."""

    def __init__(self, directory: Path, switches: Switch = ALL) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        counter = itertools.count(1)
        self.engine = Engine(self.clock, lambda: f"h{next(counter)}", today=utc_day)
        self.directory = directory
        self.usage = UsageReport(directory, self.clock)
        self.events: list[LogEvent] = []
        self.switches = LogSwitches(switches)
        observer = SwitchedObserver(Keep(self.events), self.switches)
        self.feed = LicenceFeed(
            usage=self.usage, switches=self.switches, log=Logger(observer=observer)
        )
        self.feed.observe(self.engine.load_products([PERMIT]).events)

    def observe(self, events: tuple[Event, ...]) -> None:
        """What the daemon does with every batch of events it applies."""
        self.feed.observe(events)

    def request(self, user: str, pid: int, address: str = "10.0.0.1") -> Grant:
        """REQUEST a licence and feed its events; the grant."""
        outcome = self.engine.request(
            LicenceRequest(
                publisher="Harlequin",
                product="LispWorks",
                version="8.0",
                user=user,
                host=f"{user}-host",
                pid=pid,
                address=address,
                uid=1000 + pid,
            )
        )
        self.observe(outcome.events)
        assert isinstance(outcome.result, Grant)
        return outcome.result

    def records(self) -> list[dict[str, Any]]:
        """The usage records written so far (after one reactor turn)."""
        self.clock.advance(0)
        path = self.directory / USAGE_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    @property
    def texts(self) -> list[str]:
        """The log lines that passed the filter."""
        return [formatEvent(event) for event in self.events]


def test_grant_and_release(tmp_path: Path) -> None:
    """A grant and its release: two records and two licence lines, with who and what."""
    rig = Rig(tmp_path)
    grant = rig.request("alice", 42)
    rig.clock.advance(90)
    rig.observe(rig.engine.release(grant.handle).events)
    granted, released = rig.records()
    assert granted["event"] == "grant"
    assert (granted["publisher"], granted["product"], granted["version"]) == (
        "Harlequin",
        "LispWorks",
        "8.0",
    )
    assert granted["handle"] == grant.handle and granted["indices"] == list(grant.indices)
    assert (granted["user"], granted["uid"], granted["host"], granted["address"]) == (
        "alice",
        1042,
        "alice-host",
        "10.0.0.1",
    )
    assert released["event"] == "release"
    assert released["user"] == "alice" and released["held_seconds"] == 90.0
    assert rig.texts == [
        "granted Harlequin LispWorks 8.0 licence 1 (floating) to user alice uid 1042 "
        "on alice-host [10.0.0.1] pid 42, handle h1",
        "released Harlequin LispWorks 8.0 licence 1 (floating) from user alice uid 1042 "
        "on alice-host [10.0.0.1] pid 42, handle h1",
    ]


def test_kill_is_a_revocation(tmp_path: Path) -> None:
    """hqn_lsa kill: a revoked record with reason killed and the holder's details."""
    rig = Rig(tmp_path)
    grant = rig.request("bob", 7)
    rig.observe(rig.engine.kill(grant.handle).events)
    revoked = rig.records()[-1]
    assert revoked["event"] == "revoked"
    assert revoked["reason"] == "killed"
    assert revoked["user"] == "bob"
    assert rig.texts[-1].startswith("revoked Harlequin LispWorks 8.0 licence 1")
    assert rig.texts[-1].endswith(": killed")


def test_crashout_reclaim_inside_a_request(tmp_path: Path) -> None:
    """A GRAB reclaim made while granting is reported as revoked(crashout), then grant."""
    rig = Rig(tmp_path)
    rig.request("alice", 1)
    rig.request("bob", 2)
    rig.clock.advance(60 * 60)  # far past the crashout time (3 update periods)
    rig.request("carol", 3)
    kinds = [(r["event"], r["user"], r.get("reason")) for r in rig.records()]
    assert kinds[:2] == [("grant", "alice", None), ("grant", "bob", None)]
    assert ("revoked", "alice", "crashout") in kinds[2:]
    assert kinds[-1] == ("grant", "carol", None)


def test_switches_trim_feed_lines_but_not_the_report(tmp_path: Path) -> None:
    """The log obeys the switches; the usage report always has every field."""
    rig = Rig(tmp_path, STARTUP)
    rig.request("alice", 42)
    assert rig.texts == [
        "granted Harlequin LispWorks 8.0 licence 1 (floating) to user alice on alice-host "
        "pid 42, handle h1"
    ]
    rig.switches.apply("license-")
    rig.request("bob", 43)
    assert len(rig.texts) == 1
    records = rig.records()
    assert [r["user"] for r in records] == ["alice", "bob"]
    assert records[1]["address"] == "10.0.0.1" and records[1]["uid"] == 1043


def test_seed_knows_holders_restored_from_a_snapshot(tmp_path: Path) -> None:
    """After a restart the feed learns the products served (their versions), and the
    release of a holder restored from the snapshot is complete."""
    rig = Rig(tmp_path)
    grant = rig.request("alice", 42)
    state = rig.engine.snapshot()
    restarted = Rig(tmp_path / "again")
    (tmp_path / "again").mkdir(exist_ok=True)
    restarted.engine.restore(state)
    fresh = LicenceFeed(usage=restarted.usage, log=Logger(observer=Keep([])))
    fresh.seed(restarted.engine)
    fresh.observe(restarted.engine.release(grant.handle).events)
    released = restarted.records()[-1]
    assert released["event"] == "release"
    assert (released["user"], released["version"]) == ("alice", "8.0")


def test_unknown_handle_is_reported_with_nulls(tmp_path: Path) -> None:
    """A release that does not say who held it (the event as stored: its in-memory
    ``dropped`` is not part of the dict form) is still reported (who: unknown)."""
    rig = Rig(tmp_path)
    grant = rig.request("alice", 42)
    blind = LicenceFeed(usage=rig.usage, log=Logger(observer=Keep(rig.events)))
    stored = [Event.from_dict(event.to_dict()) for event in rig.engine.release(grant.handle).events]
    blind.observe(stored)
    released = rig.records()[-1]
    assert released["event"] == "release" and released["handle"] == grant.handle
    assert released["user"] is None and released["product"] is None
    assert rig.texts[-1] == f"released, handle {grant.handle}"


def test_the_feed_keeps_no_copy_of_the_holders(tmp_path: Path) -> None:
    """A feed that never saw the grants (it knows only the versions served) still names
    the holder of a release and of a revocation: the applied event says who it was."""
    rig = Rig(tmp_path)
    alice = rig.request("alice", 42)
    bob = rig.request("bob", 43)
    rig.clock.advance(7)
    lines: list[LogEvent] = []
    blind = LicenceFeed(usage=None, log=Logger(observer=Keep(lines)))
    blind.seed(rig.engine)
    blind.observe(rig.engine.release(alice.handle).events)
    blind.observe(rig.engine.kill(bob.handle).events)
    assert [formatEvent(event) for event in lines] == [
        "released Harlequin LispWorks 8.0 licence 1 (floating) from user alice uid 1042 "
        "on alice-host [10.0.0.1] pid 42, handle h1",
        "revoked Harlequin LispWorks 8.0 licence 2 (floating) from user bob uid 1043 "
        "on bob-host [10.0.0.1] pid 43, handle h2: killed",
    ]


def test_denials_are_logged_and_reported(tmp_path: Path) -> None:
    """A denial: a licence line (reason with EXTERR) and a record with status and code."""
    rig = Rig(tmp_path, STARTUP)
    common: dict[str, Any] = dict(
        publisher="Harlequin", product="LispWorks", version="8.0",
        who=Requester(user="dan", host="dan-host", address="10.0.0.4", pid=5),
    )  # fmt: skip
    rig.feed.denied(
        status="NOLICENCES", code=Status.NOLICENCES.code, reason="all 2 in use", **common
    )
    rig.switches.apply("exterr-")
    rig.feed.denied(status="TRY_SERVER", code=Status.TRY_SERVER.code, reason="ask 2", **common)
    assert rig.texts == [
        "denied Harlequin LispWorks 8.0 to user dan on dan-host pid 5: NOLICENCES (all 2 in use)"
    ]  # the redirect needs EXTERR, now off
    first, second = rig.records()
    assert first["event"] == second["event"] == "denial"
    assert first["status"] == "NOLICENCES" and first["code"] == f"{Status.NOLICENCES.code:#x}"
    assert second["status"] == "TRY_SERVER" and second["reason"] == "ask 2"


def test_role_changes_are_reported(tmp_path: Path) -> None:
    """A failover: an INFO line and a role record."""
    rig = Rig(tmp_path)
    rig.feed.role(
        domain="127.0.0.1 127.0.0.2", role="primary", previous="backup", rank=2, epoch=3,
        primary=2, reason="primary lost",
    )  # fmt: skip
    (record,) = rig.records()
    assert record["event"] == "role" and record["epoch"] == 3
    assert "backup -> primary" in rig.texts[-1]
    rig.switches.apply("info-")
    rig.feed.role(domain="d", role="backup", previous="primary", rank=2, epoch=4, primary=1)
    assert len(rig.records()) == 2 and len(rig.texts) == 1


def test_nothing_is_emitted_for_a_licence_line_whose_switch_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With LICENSE off the feed does not build or emit a licence event at all (the
    filter is never asked, the line's fields are not even gathered); the usage report
    still gets every record."""
    rig = Rig(tmp_path, STARTUP & ~Switch.LICENSE)
    emitted: list[LogEvent] = []
    rig.feed.log = Logger(observer=Keep(emitted))  # before any filter: every emission
    built: list[str] = []

    def counted(log: Logger, action: str, **fields: Any) -> None:
        built.append(action)
        log_licence(log, action, **fields)

    monkeypatch.setattr(feed_module, "log_licence", counted)
    grant = rig.request("alice", 42)
    rig.observe(rig.engine.release(grant.handle).events)
    rig.observe(rig.engine.kill(rig.request("bob", 43).handle).events)
    who = Requester(user="dan", host="dan-host", address="10.0.0.4", pid=5)
    rig.feed.denied(
        publisher="Harlequin", product="LispWorks", version="8.0", status="NOLICENCES",
        code=Status.NOLICENCES.code, reason="all 2 in use", who=who,
    )  # fmt: skip
    assert emitted == []
    assert [r["event"] for r in rig.records()] == ["grant", "release", "grant", "revoked", "denial"]
    rig.switches.apply("license+ exterr-")
    rig.feed.denied(
        publisher="Harlequin", product="LispWorks", version="8.0", status="TRY_SERVER",
        code=Status.TRY_SERVER.code, reason="ask 2", who=who,
    )  # fmt: skip
    assert emitted == []  # a redirect needs EXTERR as well
    assert built == []
    rig.request("carol", 44)
    assert [event["licence_action"] for event in emitted] == ["granted"]
    assert built == ["granted"]


def test_hqn_reports_reader_reads_every_kind_the_report_writes(tmp_path: Path) -> None:
    """What `UsageReport` writes, `hqnlsd.reports.records.parse_record` reads as the
    record it is (not malformed, not an unknown kind): a rename on either side fails
    here, not only in the end-to-end tests of hqn_report."""
    rig = Rig(tmp_path)
    first = rig.request("alice", 42)
    second = rig.request("bob", 43)
    rig.clock.advance(30)
    rig.observe(rig.engine.release(first.handle).events)
    rig.observe(rig.engine.kill(second.handle).events)
    rig.feed.denied(
        publisher="Harlequin", product="LispWorks", version="8.0", status="NOLICENCES",
        code=Status.NOLICENCES.code, reason="all 2 in use",
        who=Requester(user="dan", host="dan-host", address="10.0.0.4", pid=5),
    )  # fmt: skip
    rig.feed.role(
        domain="127.0.0.1 127.0.0.2", role="primary", previous="backup", rank=2, epoch=3,
        primary=2,
    )  # fmt: skip
    rig.clock.advance(0)
    lines = (tmp_path / USAGE_FILE).read_text().splitlines()
    parsed = [parse_record(line) for line in lines]
    assert [type(record) for record in parsed] == [
        reports.Grant, reports.Grant, reports.End, reports.End, reports.Denial, reports.RoleChange
    ]
    released, killed = parsed[2], parsed[3]
    assert isinstance(released, reports.End) and isinstance(killed, reports.End)
    assert (released.kind, released.user, released.held_seconds) == ("release", "alice", 30.0)
    assert (killed.kind, killed.reason, killed.user) == ("revoked", "killed", "bob")
