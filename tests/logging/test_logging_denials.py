# mypy: allow-untyped-calls
"""Denied REQUESTs an outsider sends by the thousand are summarised (issue 12).

Up to a burst per source address per interval every denial is a licence line and
a usage record, as always; beyond it they are counted, and when the interval ends
one line and one ``denials`` record per address say how many, by product and
status, so the usage report still counts every denial exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.logger import LogEvent, Logger, formatEvent

from hqnlsd.configfile import ConfigFileError, parse_config
from hqnlsd.daemon.core import TimedDispatcher
from hqnlsd.limits import ConnectionLimits
from hqnlsd.logging.denials import DenialLog
from hqnlsd.logging.feed import LicenceFeed
from hqnlsd.logging.observer import SwitchedObserver
from hqnlsd.logging.switches import ALL, LogSwitches
from hqnlsd.logging.usage import USAGE_FILE, UsageReport
from hqnlsd.metrics import Metrics
from hqnlsd.protocols import grammar
from hqnlsd.protocols.replies import Err
from hqnlsd.server import LicenceServer
from hqnlsd.status import Status
from tests.daemon.test_server import Rig, make_rig
from tests.logging.test_logging_feed import Keep


class Denials:
    """A LicenceServer with a feed (log lines kept, usage report on disk) on a Clock."""

    def __init__(self, rig: Rig, directory: Path, **options: Any) -> None:
        self.rig = rig
        self.clock = rig.clock
        self.directory = directory
        self.usage = UsageReport(directory, rig.clock)
        self.events: list[LogEvent] = []
        observer = SwitchedObserver(Keep(self.events), LogSwitches(ALL))
        self.feed = LicenceFeed(usage=self.usage, log=Logger(observer=observer))
        self.server = LicenceServer(
            rig.engine, rig.journal, rig.source, self.feed, clock=rig.clock, **options
        )
        assert self.server.denials is not None
        self.server.denials._log = Logger(observer=observer)
        loaded = self.server.load_permits()
        rig.clock.advance(0)
        assert loaded.called

    def deny(
        self, address: str, product: str = "Nope", *, version: str = "1.0", n: int = 1
    ) -> None:
        """``n`` REQUESTs from ``address`` for a product nobody serves."""
        peer = IPv4Address("TCP", address, 4000)
        for pid in range(n):
            command = grammar.Request(
                publisher="Harlequin", product=product, version=version,
                user="u", host="h", pid=pid + 1,
            )
            reply = self.server.dispatch(command, peer)
            assert isinstance(reply, Err) and reply.status is Status.BADPRODUCT, reply

    def texts(self) -> list[str]:
        """Every log line so far."""
        return [formatEvent(event) or "" for event in self.events]

    def denied_lines(self) -> list[str]:
        """The individual denial lines."""
        return [text for text in self.texts() if text.startswith("denied ")]

    def summaries(self) -> list[str]:
        """The summary lines."""
        return [text for text in self.texts() if "not logged one by one" in text]

    def records(self, kind: str) -> list[dict[str, Any]]:
        """The usage records of ``kind`` written so far."""
        self.clock.advance(0)
        self.usage.flush(everything=True)
        path = self.directory / USAGE_FILE
        if not path.exists():
            return []
        found = [json.loads(line) for line in path.read_text().splitlines()]
        return [record for record in found if record["event"] == kind]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """The standard server rig (its journal closed at the end)."""
    made = make_rig(tmp_path / "state")
    yield made
    made.journal.close()


@pytest.fixture
def denials(rig: Rig, tmp_path: Path) -> Denials:
    """A server whose denials go through a feed with a usage report."""
    (tmp_path / "usage").mkdir()
    return Denials(rig, tmp_path / "usage")


def summed(record: dict[str, Any]) -> int:
    """The denials a summary record counts, added up from its rows."""
    return sum(row["count"] for row in record["denials"])


def test_twenty_denials_are_each_logged_and_recorded(denials: Denials) -> None:
    """A site's real denials (20 a minute from one address) are all logged as before."""
    denials.deny("10.0.0.7", n=20)
    assert len(denials.denied_lines()) == 20
    assert len(denials.records("denial")) == 20
    denials.clock.advance(60)
    assert denials.summaries() == []
    assert denials.records("denials") == []


def test_ten_thousand_denials_give_twenty_lines_and_one_summary(denials: Denials) -> None:
    """10,000 denials from one address: 20 lines, then one summary counting the rest."""
    denials.deny("10.0.0.7", n=10_000)
    assert len(denials.denied_lines()) == 20
    assert len(denials.records("denial")) == 20
    assert denials.summaries() == []
    denials.clock.advance(60)
    assert len(denials.texts()) <= 21
    (line,) = denials.summaries()
    assert line == (
        "client 10.0.0.7: 9,980 more denials in the last 60 s not logged one by one: "
        "BADPRODUCT 9,980 (Harlequin/Nope 1.0)"
    )
    (record,) = denials.records("denials")
    assert record["address"] == "10.0.0.7"
    assert record["count"] == 9_980 == summed(record)
    assert record["interval"] == 60.0
    assert record["denials"] == [
        {"publisher": "Harlequin", "product": "Nope", "version": "1.0",
         "status": "BADPRODUCT", "code": f"{Status.BADPRODUCT.code:#x}", "count": 9_980}
    ]
    assert len(denials.records("denial")) + record["count"] == 10_000


def test_summary_line_is_bounded_and_keys_are_capped(denials: Denials) -> None:
    """Many distinct products: the line names the top few, the record counts them all."""
    denials.deny("10.0.0.7", "First", n=20)  # the burst
    for n in range(100):
        denials.deny("10.0.0.7", f"P{n:03d}" + "x" * 300, n=1 + (n == 5) * 50)
    denials.clock.advance(60)
    (line,) = denials.summaries()
    assert len(line) < 600, line
    assert "BADPRODUCT 51 (Harlequin/P005" in line
    assert "and 97 others" in line
    (record,) = denials.records("denials")
    assert record["count"] == 150 == summed(record)
    rows = record["denials"]
    assert len(rows) <= DenialLog.DEFAULT_MAX_KEYS + len(Status)
    assert [row["count"] for row in rows] == sorted((row["count"] for row in rows), reverse=True)
    assert max(row["count"] for row in rows if row["product"] is not None) == 51
    # Beyond the keys tracked, denials are counted by status alone.
    assert {"publisher": None, "product": None, "version": None, "status": "BADPRODUCT",
            "code": f"{Status.BADPRODUCT.code:#x}",
            "count": 150 - 51 - (DenialLog.DEFAULT_MAX_KEYS - 1)} in rows
    for row in rows:
        assert row["product"] is None or len(row["product"]) <= 160


def test_interval_boundary(denials: Denials) -> None:
    """The summary comes when the interval ends; the next interval has its burst again."""
    denials.deny("10.0.0.7", n=30)
    denials.clock.advance(59)
    assert denials.summaries() == []
    denials.clock.advance(1)
    assert len(denials.summaries()) == 1
    assert "10 more denials" in denials.summaries()[0]
    denials.deny("10.0.0.7", n=5)
    assert len(denials.denied_lines()) == 25
    denials.clock.advance(60)
    assert len(denials.summaries()) == 1
    (record,) = denials.records("denials")
    assert record["count"] == 10
    assert record["since"] == record["at"] - 60


def test_each_address_has_its_own_burst(denials: Denials) -> None:
    """A flooding address does not silence another address's denials."""
    denials.deny("10.0.0.66", n=500)
    denials.deny("10.0.0.7", n=3)
    lines = denials.denied_lines()
    assert len(lines) == 23
    assert sum("10.0.0.7" in line for line in lines) == 3


def test_sources_beyond_the_cap_are_counted_together(rig: Rig, tmp_path: Path) -> None:
    """More addresses than tracked: memory and lines bounded, every denial counted."""
    (tmp_path / "usage").mkdir()
    denials = Denials(rig, tmp_path / "usage", denial_burst=2, log_sources=5)
    for n in range(12):
        denials.deny(f"10.0.1.{n}", n=4)
    assert denials.server.denials is not None
    assert denials.server.denials.tracked == 5
    assert len(denials.denied_lines()) == 10
    denials.clock.advance(60)
    records = denials.records("denials")
    assert len(records) == 6
    assert [r["address"] for r in records if r["sources"] == 1] == [
        f"10.0.1.{n}" for n in range(5)
    ]
    (others,) = [r for r in records if r["address"] is None]
    assert others["sources"] == 7
    assert others["count"] == 28 == summed(others)
    total = len(denials.records("denial")) + sum(r["count"] for r in records)
    assert total == 48
    assert len(denials.texts()) <= 10 + 1 + 6


def test_stop_logs_what_is_counted(denials: Denials) -> None:
    """At shutdown the counts so far are logged and recorded, not lost."""
    denials.deny("10.0.0.7", n=25)
    assert denials.server.denials is not None
    denials.server.denials.stop()
    assert len(denials.summaries()) == 1
    assert denials.records("denials")[0]["count"] == 5


def test_metrics_count_every_denial(rig: Rig, tmp_path: Path) -> None:
    """The denial counter is fed by every reply, whether its log line was summarised."""
    (tmp_path / "usage").mkdir()
    denials = Denials(rig, tmp_path / "usage")
    metrics = Metrics(runtime=False)
    dispatcher = TimedDispatcher(denials.server, rig.clock, metrics)
    peer = IPv4Address("TCP", "10.0.0.7", 4000)
    for pid in range(500):
        reply = dispatcher.dispatch(
            grammar.Request(publisher="Harlequin", product="Nope", version="1", user="u",
                         host="h", pid=pid + 1),
            peer,
        )
        assert isinstance(reply, Err)
    value = metrics.registry.get_sample_value(
        "hqnlsd_denials_total", {"reason": "BADPRODUCT"}
    )
    assert value == 500
    assert len(denials.denied_lines()) == 20


def test_limits_table_sets_the_interval_and_burst(tmp_path: Path) -> None:
    """``[limits] log-interval`` and ``denials-logged`` are checked config keys."""
    found = parse_config(
        "[limits]\nlog-interval = 2.5\ndenials-logged = 5\n", source="t.toml", base_dir=tmp_path
    )
    limits = ConnectionLimits.from_mapping(found["limits"])  # type: ignore[arg-type]
    assert limits.log_interval == 2.5
    assert limits.denials_logged == 5
    assert ConnectionLimits().log_interval == 60.0
    assert ConnectionLimits().denials_logged == 20
    for bad in ("log-interval = 0", "denials-logged = 0", "denials-logged = 1.5"):
        with pytest.raises(ConfigFileError):
            parse_config(f"[limits]\n{bad}\n", source="t.toml", base_dir=tmp_path)
