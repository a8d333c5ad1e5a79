"""`hqnlsd.web.view.ConsoleView` and `hqnlsd.web.recent`, on an in-memory engine and
a fake daemon (no journal, no listener, no files): what each page is given."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.results import Grant, LicenceRequest
from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.model import HostId, Permit
from hqnlsd.permits.policy import describe
from hqnlsd.permits.reader import FileReport, PermitFile
from hqnlsd.web.recent import RecentEvents, RecordingUsageReport
from hqnlsd.web.view import DEFAULT_LIMIT, MAX_LIMIT, ConsoleView
from tests.daemons import product_permit

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
ME = HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1234ABCD)


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (not the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


class FakeDaemon:
    """The parts of `AdministeredDaemon` the listings read, in memory."""

    def __init__(self, clock: Clock) -> None:
        counter = itertools.count(1)
        self.reactor = clock
        self.me = ME
        self.engine = Engine(clock, lambda: f"h{next(counter)}", today=utc_day)
        self.engine.load_products(
            [
                product_permit("Widget", floating_count=3),
                product_permit("Gadget", node_count=1, floating_count=2),
            ]
        )
        self.journal = SimpleNamespace(healthy=True)
        good = Permit(number=7, servers=(ME,), products=tuple(self.engine.served()))
        bad = PermitError(Condition.PRODUCT_SEAL_WRONG, "the seal of product 2 is wrong")
        self.server = SimpleNamespace(
            discovery=None,
            catalogue=SimpleNamespace(
                files=[
                    FileReport(PermitFile("/p/good.permit", good, None), None),
                    FileReport(PermitFile("/p/bad.permit", None, bad), None),
                ]
            ),
        )
        self.config = SimpleNamespace(state_dir=Path("/state"))
        self.domains = None
        self.switches = "LICENSE"

    def take(self, product: str, user: str, host: str = "alpha", pid: int = 100) -> Grant:
        """Take a licence as a client would."""
        result = self.engine.request(
            LicenceRequest(
                publisher="Test Publisher",
                product=product,
                version="1.0",
                user=user,
                host=host,
                pid=pid,
                address="10.0.0.9",
            )
        ).result
        assert isinstance(result, Grant), result
        return result


@pytest.fixture
def clock() -> Clock:
    made = Clock()
    made.advance(NOW)
    return made


@pytest.fixture
def daemon(clock: Clock) -> FakeDaemon:
    return FakeDaemon(clock)


def view_of(daemon: FakeDaemon, recent: RecentEvents | None = None) -> ConsoleView:
    made = ConsoleView(daemon, recent)  # type: ignore[arg-type]
    return made


def test_overview(daemon: FakeDaemon, clock: Clock) -> None:
    """Version, uptime since the view was made, role, journal health, use, permit files."""
    import hqnlsd

    view = view_of(daemon)
    daemon.take("Widget", "ann")
    clock.advance(90)
    overview = view.overview()
    assert overview["version"] == hqnlsd.__version__
    assert overview["address"] == "127.0.0.1"
    assert overview["uptime"] == 90
    assert overview["role"].startswith("single-host server")
    assert overview["domains"] == []
    assert (overview["peers_up"], overview["peers"]) == (0, 0)
    assert overview["journal_healthy"] is True
    assert (overview["served"], overview["held"]) == (2, 1)
    assert (overview["permit_files"], overview["permit_errors"]) == (2, 1)
    daemon.journal.healthy = False
    assert view.overview()["journal_healthy"] is False


def test_products_show_pools_policy_dates_and_timers(daemon: FakeDaemon) -> None:
    """Each product with its listp number, pools used/total, policy, dates, crashout, timeout."""
    daemon.take("Gadget", "ann")
    daemon.take("Gadget", "bob")
    products = {p["product"]: p for p in view_of(daemon).products()["products"]}
    assert set(products) == {"Widget", "Gadget"}
    gadget = products["Gadget"]
    assert (gadget["floating_used"], gadget["floating_count"]) == (2, 2)
    assert (gadget["locked_used"], gadget["node_count"]) == (0, 1)
    assert gadget["start"] == "2020-01-01" and gadget["expiry"] == "2099-12-31"
    status = {s.product: s for s in daemon.engine.status()}["Gadget"]
    assert gadget["policy"] == status.policy
    assert gadget["policy_text"] == describe(status.policy) != ""
    assert (gadget["crashout"], gadget["timeout"]) == (status.crashout, status.timeout)
    assert gadget["domain"] is None
    assert sorted(p["index"] for p in products.values()) == [1, 2]


def test_holders_show_who_holds_what_and_never_the_handle(daemon: FakeDaemon, clock: Clock) -> None:
    """One row per licence held: index, user, host, address, pid, since, last update."""
    view = view_of(daemon)
    grant = daemon.take("Widget", "ann", host="alpha", pid=42)
    clock.advance(30)
    daemon.take("Widget", "<script>bob</script>", host="beta", pid=43)
    holders = view.holders()
    assert holders["now"] == NOW + 30
    rows = sorted(holders["holders"], key=lambda row: row["since"])
    assert [(r["user"], r["host"], r["address"], r["pid"]) for r in rows] == [
        ("ann", "alpha", "10.0.0.9", 42),
        ("<script>bob</script>", "beta", "10.0.0.9", 43),
    ]
    assert rows[0]["since"] == NOW and rows[1]["since"] == NOW + 30
    assert rows[0]["indices"] and rows[0]["indices"] != rows[1]["indices"]
    assert rows[0]["product"] == "Widget" and rows[0]["type"]
    assert "last_update" in rows[0]
    assert grant.handle not in repr(holders)
    daemon.engine.release(grant.handle)
    assert [r["user"] for r in view.holders()["holders"]] == ["<script>bob</script>"]


def test_domains_empty_on_a_single_host(daemon: FakeDaemon) -> None:
    assert view_of(daemon).domains() == {"domains": [], "peers": []}


def test_permits_show_each_file_and_its_error(daemon: FakeDaemon) -> None:
    files = {f["path"]: f for f in view_of(daemon).permits()["files"]}
    assert files["/p/good.permit"]["error"] is None
    assert files["/p/good.permit"]["number"] == 7
    assert "seal of product 2" in files["/p/bad.permit"]["error"]
    assert files["/p/bad.permit"]["number"] is None


WHO = Requester(user="<b>eve</b>", host="gamma", address="10.0.0.5", pid=7)


def test_events_newest_first_and_bounded() -> None:
    """The ring keeps the newest events only, and lists them newest first."""
    recent = RecentEvents(capacity=3)
    for n in range(5):
        recent.denial(
            float(n),
            publisher="P",
            product="Widget",
            version="1.0",
            status="NOLICENCES",
            reason=f"all taken {n}",
            who=WHO,
        )
    assert len(recent) == 3
    assert [e.reason for e in recent.newest_first()] == [
        "all taken 4",
        "all taken 3",
        "all taken 2",
    ]
    with pytest.raises(ValueError):
        RecentEvents(capacity=0)


def test_recording_usage_report_feeds_the_ring_and_writes_the_same(
    tmp_path: Path, clock: Clock, daemon: FakeDaemon
) -> None:
    """Denials, counted denials and reclaims reach the ring with their reasons; the
    usage file gets the same records a plain UsageReport writes."""
    from hqnlsd.logging.usage import UsageReport

    recent = RecentEvents()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    recording = RecordingUsageReport(tmp_path / "a", clock, recent=recent)
    plain = UsageReport(tmp_path / "b", clock)
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            "denial",
            dict(
                publisher="P",
                product="Widget",
                version="1.0",
                status="NOLICENCES",
                code=0x10,
                reason="no licences left",
                who=WHO,
            ),
        ),
        (
            "denials",
            dict(
                address="10.0.0.5",
                sources=1,
                count=9,
                interval=60.0,
                since=NOW,
                rows=[
                    dict(
                        publisher="P",
                        product="Widget",
                        version="1.0",
                        status="NOLICENCES",
                        code=0x10,
                        count=9,
                    )
                ],
            ),
        ),
        (
            "revoked",
            dict(
                publisher="P",
                product="Widget",
                version="1.0",
                handle="h1",
                indices=[2],
                reason="timeout",
                who=WHO,
                held_seconds=5.0,
            ),
        ),
    ]
    for name, fields in calls:
        getattr(recording, name)(**fields)
        getattr(plain, name)(**fields)
    recording.close()
    plain.close()
    assert (tmp_path / "a" / "usage.jsonl").read_text() == (
        tmp_path / "b" / "usage.jsonl"
    ).read_text()
    events = view_of(daemon, recent).events()["events"]
    assert [(e["kind"], e["status"], e["user"]) for e in events] == [
        ("reclaim", "timeout", "<b>eve</b>"),
        ("denials", "NOLICENCES", None),
        ("denial", "NOLICENCES", "<b>eve</b>"),
    ]
    assert events[2]["reason"] == "no licences left" and events[2]["at"] == NOW
    assert events[1]["count"] == 9 and "10.0.0.5" in events[1]["reason"]
    assert events[0]["indices"] == [2]


def test_holders_are_listed_a_slice_at_a_time(daemon: FakeDaemon, clock: Clock) -> None:
    """With many holders only the slice asked for is built: offset and limit over
    every product in listp order, and the total."""
    for n in range(3):
        daemon.take("Widget", f"w{n}", pid=n)
    for n in range(2):
        daemon.take("Gadget", f"g{n}", pid=10 + n)
    view = view_of(daemon)
    everything = view.holders()
    assert everything["total"] == 5 and len(everything["holders"]) == 5
    assert (everything["offset"], everything["limit"]) == (0, DEFAULT_LIMIT)
    users = [row["user"] for row in everything["holders"]]
    page = view.holders(offset=2, limit=2)
    assert page["total"] == 5 and (page["offset"], page["limit"]) == (2, 2)
    assert [row["user"] for row in page["holders"]] == users[2:4]
    assert view.holders(offset=5, limit=2)["holders"] == []
    with pytest.raises(ValueError):
        view.holders(limit=MAX_LIMIT + 1)
    with pytest.raises(ValueError):
        view.holders(offset=-1)


def test_every_page_is_the_slice_of_the_whole_listing(daemon: FakeDaemon, clock: Clock) -> None:
    """Every offset and limit over two products (one released in the middle) gives
    that slice of the whole listing, from the engine's page query alone (no product's
    full holder list is built)."""
    grants = [daemon.take("Widget", f"w{n}", pid=n) for n in range(3)]
    for n in range(2):
        daemon.take("Gadget", f"g{n}", pid=10 + n)
    daemon.engine.release(grants[1].handle)
    daemon.take("Widget", "w3", pid=3)
    view = view_of(daemon)
    everything = view.holders()["holders"]
    assert len(everything) == 5

    def refuse(*args: object) -> object:
        raise AssertionError("the whole listing was built")

    daemon.engine.holders = refuse  # type: ignore[method-assign]
    for offset in range(8):
        for limit in range(8):
            page = view.holders(offset=offset, limit=limit)
            assert page["total"] == 5
            assert page["holders"] == everything[offset : offset + limit], (offset, limit)
