"""The JSON-lines usage report: records, batching per reactor turn, rotation, failures."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.requester import REQUESTER_FIELDS, Requester
from hqnlsd.logging.usage import USAGE_FILE, UsageReport, requester_fields

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()


def make_report(directory: Path, **options: Any) -> tuple[UsageReport, Clock]:
    """A report on a task.Clock set to NOW."""
    clock = Clock()
    clock.advance(NOW)
    return UsageReport(directory, clock, **options), clock


def one_turn(clock: Clock) -> None:
    """Run the calls due now, not those they schedule (a real reactor's next turn).

    ``Clock.advance(0)`` also runs calls scheduled with delay 0 while it runs.
    """
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = True
        call.func(*call.args, **call.kw)


def lines(path: Path) -> list[dict[str, Any]]:
    """The records of a report file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def grant(report: UsageReport, handle: str = "h1", **changes: Any) -> None:
    """Record a typical grant (``changes`` of the requester's fields change its record)."""
    who = Requester(user="alice", host="alpha", address="10.0.0.1", pid=42, uid=1000)
    who_changes = {name: changes.pop(name) for name in REQUESTER_FIELDS if name in changes}
    values: dict[str, Any] = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        handle=handle,
        indices=(1,),
        licence_type="floating",
        who=dataclasses.replace(who, **who_changes),
    )
    values.update(changes)
    report.grant(**values)


def test_every_kind_of_record(tmp_path: Path) -> None:
    """grant, release, denial, revoked and role each write one complete JSON line."""
    report, clock = make_report(tmp_path)
    grant(report)
    report.release(
        publisher="Harlequin", product="LispWorks", version="8.0", handle="h1", indices=(1,),
        who=Requester(user="alice", host="alpha", address="10.0.0.1", pid=42), held_seconds=12.5,
    )  # fmt: skip
    report.denial(
        publisher="Harlequin", product="LispWorks", version="8.0", status="NOLICENCES",
        code=0xC8041002, reason="all 3 licences are in use",
        who=Requester(user="bob", host="beta", address="10.0.0.2", pid=7),
    )  # fmt: skip
    report.revoked(
        publisher="Harlequin", product="LispWorks", version="8.0", handle="h2", indices=(2,),
        reason="crashout", who=Requester(user="carol", host="gamma", address="10.0.0.3", pid=9),
    )  # fmt: skip
    report.role(
        domain="127.0.0.1 127.0.0.2", role="primary", previous="backup", rank=2, epoch=5,
        primary=2, reason="rank 1 lost",
    )  # fmt: skip
    clock.advance(0)
    records = lines(tmp_path / USAGE_FILE)
    assert [r["event"] for r in records] == ["grant", "release", "denial", "revoked", "role"]
    first = records[0]
    assert first["ts"] == "2027-06-15T12:00:00.000+00:00"
    assert first["at"] == NOW
    assert first["indices"] == [1]
    assert first["type"] == "floating"
    assert first["user"] == "alice" and first["uid"] == 1000 and first["group"] is None
    assert records[1]["held_seconds"] == 12.5
    assert records[2]["status"] == "NOLICENCES"
    assert records[2]["code"] == "0xc8041002"
    assert records[2]["reason"] == "all 3 licences are in use"
    assert records[3]["reason"] == "crashout"
    assert records[4]["role"] == "primary" and records[4]["previous"] == "backup"


def test_schema_is_stable_per_kind(tmp_path: Path) -> None:
    """Unknown values are null, never missing: each kind always has the same keys."""
    report, clock = make_report(tmp_path)
    report.revoked(
        publisher=None, product=None, version=None, handle="hx", indices=None,
        reason="killed", who=None,
    )  # fmt: skip
    report.revoked(
        publisher="P", product="Q", version="1", handle="hy", indices=(3,), reason="killed",
        who=Requester(user="u", host="h", address="10.0.0.9", pid=1, uid=5), held_seconds=1.0,
    )  # fmt: skip
    clock.advance(0)
    unknown, known = lines(tmp_path / USAGE_FILE)
    assert unknown.keys() == known.keys()
    assert unknown["publisher"] is None and unknown["indices"] is None


def test_records_wait_for_the_next_turn_then_one_write(tmp_path: Path) -> None:
    """Nothing is written during the turn; the next turn writes all in one batch."""
    report, clock = make_report(tmp_path)
    for number in range(50):
        grant(report, handle=f"h{number}")
    assert not (tmp_path / USAGE_FILE).exists()
    assert report.pending == 50
    assert len(clock.getDelayedCalls()) == 1  # one flush scheduled, not fifty
    clock.advance(0)
    assert report.pending == 0
    assert report.stats.batches == 1
    assert [r["handle"] for r in lines(tmp_path / USAGE_FILE)] == [f"h{n}" for n in range(50)]


def test_a_turn_writes_at_most_one_batch(tmp_path: Path) -> None:
    """A backlog is written batch_lines per turn, so the reactor is never held long."""
    report, clock = make_report(tmp_path, batch_lines=10)
    for number in range(25):
        grant(report, handle=f"h{number}")
    one_turn(clock)
    assert report.pending == 15
    one_turn(clock)
    assert report.pending == 5
    one_turn(clock)
    assert report.pending == 0
    assert len(lines(tmp_path / USAGE_FILE)) == 25
    assert clock.getDelayedCalls() == []


def test_appends_to_an_existing_report(tmp_path: Path) -> None:
    """A restarted daemon appends; earlier records stay."""
    report, clock = make_report(tmp_path)
    grant(report, handle="before")
    report.close()
    report, clock = make_report(tmp_path)
    grant(report, handle="after")
    clock.advance(0)
    report.close()
    assert [r["handle"] for r in lines(tmp_path / USAGE_FILE)] == ["before", "after"]
    assert (tmp_path / USAGE_FILE).stat().st_mode & 0o777 == 0o600


def test_rotation_by_size_keeps_backups(tmp_path: Path) -> None:
    """Past max_bytes the file rolls to .1, .2 ...; the oldest beyond `backups` goes."""
    report, clock = make_report(tmp_path, max_bytes=700, backups=2, batch_lines=1)
    total = 12
    for number in range(total):
        grant(report, handle=f"h{number:02d}")
        clock.advance(0)
    report.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [USAGE_FILE, f"{USAGE_FILE}.1", f"{USAGE_FILE}.2"]
    assert report.stats.rotations >= 3
    for name in names:
        assert 0 < (tmp_path / name).stat().st_size <= 700  # rotated before passing it
        assert len(lines(tmp_path / name)) >= 2
    # Newest in the live file, older in .1, older still in .2: order is preserved.
    kept = [
        r["handle"]
        for name in (f"{USAGE_FILE}.2", f"{USAGE_FILE}.1", USAGE_FILE)
        for r in lines(tmp_path / name)
    ]
    assert kept == sorted(kept)
    assert kept[-1] == f"h{total - 1:02d}"
    assert len(kept) < total  # the oldest rotated away


def test_rotation_without_backups_starts_afresh(tmp_path: Path) -> None:
    """backups=0: the full file is removed and a new one begun."""
    report, clock = make_report(tmp_path, max_bytes=100, backups=0)
    grant(report, handle="old")
    clock.advance(0)
    grant(report, handle="new")
    clock.advance(0)
    assert [r["handle"] for r in lines(tmp_path / USAGE_FILE)] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [USAGE_FILE]


def test_write_failure_keeps_records_and_retries(tmp_path: Path) -> None:
    """A failing disk loses nothing (within max_pending): the batch is retried later."""
    report, clock = make_report(tmp_path / "gone", retry_seconds=5.0)
    grant(report, handle="h1")
    clock.advance(0)  # the directory does not exist: the write fails
    assert report.stats.write_errors == 1
    assert report.pending == 0  # the batch is held as unwritten bytes, not lost
    grant(report, handle="h2")
    assert len(clock.getDelayedCalls()) == 1  # only the retry, no busy flushing
    clock.advance(4.9)
    assert report.stats.write_errors == 1
    (tmp_path / "gone").mkdir()
    clock.advance(0.1)
    report.close()
    assert [r["handle"] for r in lines(tmp_path / "gone" / USAGE_FILE)] == ["h1", "h2"]


def test_partial_write_is_completed_not_duplicated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the OS takes part of a batch and then fails, the rest is written once."""
    report, clock = make_report(tmp_path)
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[:10])
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky)
    grant(report, handle="h1")
    grant(report, handle="h2")
    clock.advance(0)
    assert report.stats.write_errors == 1
    clock.advance(report.retry_seconds)
    assert [r["handle"] for r in lines(tmp_path / USAGE_FILE)] == ["h1", "h2"]


def test_backlog_is_bounded(tmp_path: Path) -> None:
    """Beyond max_pending the oldest records are dropped and counted."""
    report, clock = make_report(tmp_path, max_pending=3)
    for number in range(5):
        grant(report, handle=f"h{number}")
    assert report.pending == 3
    assert report.stats.dropped == 2
    clock.advance(0)
    assert [r["handle"] for r in lines(tmp_path / USAGE_FILE)] == ["h2", "h3", "h4"]


def test_close_writes_everything_and_cancels_the_timer(tmp_path: Path) -> None:
    """close() writes the whole backlog now and leaves no delayed call behind."""
    report, clock = make_report(tmp_path, batch_lines=2)
    for number in range(7):
        grant(report, handle=f"h{number}")
    report.close()
    assert clock.getDelayedCalls() == []
    assert len(lines(tmp_path / USAGE_FILE)) == 7
    grant(report, handle="late")  # ignored with a warning, not an error
    assert report.pending == 0


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    """Nonsensical limits are a programming error, caught at construction."""
    with pytest.raises(ValueError):
        make_report(tmp_path, max_bytes=0)
    with pytest.raises(ValueError):
        make_report(tmp_path, batch_lines=0)


def test_requester_fields_follow_the_record_order() -> None:
    """The requester's part of a record: user, uid, (group,) host, address, pid; nulls
    for an unknown requester."""
    who = Requester(user="u", host="h", address="10.0.0.1", pid=1, uid=2, group="g")
    assert list(requester_fields(who, group=True).items()) == [
        ("user", "u"),
        ("uid", 2),
        ("group", "g"),
        ("host", "h"),
        ("address", "10.0.0.1"),
        ("pid", 1),
    ]
    assert list(requester_fields(who)) == ["user", "uid", "host", "address", "pid"]
    assert requester_fields(None) == dict.fromkeys(["user", "uid", "host", "address", "pid"])


def test_grant_release_and_revoked_lines_byte_for_byte(tmp_path: Path) -> None:
    """The exact text of the hot records (key order, separators, escapes, the time
    stamp shared by records of the same time), as the report has always written it."""
    clock = Clock()
    clock.advance(1813060800.0)
    report = UsageReport(tmp_path, clock)
    who = Requester(
        user="al\u2028ice", host="alpha", address="10.0.0.1", pid=42, uid=1000, group="staff"
    )
    report.grant(
        publisher="Harlequin", product="LispWorks", version=None, handle="h1", indices=(1, 3),
        licence_type="floating", who=who,
    )  # fmt: skip
    clock.advance(12.3456)
    report.release(
        publisher="Harlequin", product="LispWorks", version="8.0", handle="h1", indices=(1, 3),
        who=who, held_seconds=12.346,
    )  # fmt: skip
    report.release(
        publisher=None, product=None, version=None, handle="h9", indices=None, who=None
    )
    report.revoked(
        publisher="Harlequin", product="LispWorks", version="8.0", handle="h2", indices=(2,),
        reason="killed", who=who, held_seconds=0.5, at=1813060900.25,
    )  # fmt: skip
    clock.advance(0)
    assert (tmp_path / USAGE_FILE).read_text(encoding="utf-8").splitlines() == [
        '{"ts":"2027-06-15T12:00:00.000+00:00","at":1813060800.0,"event":"grant",'
        '"publisher":"Harlequin","product":"LispWorks","version":null,"handle":"h1",'
        '"indices":[1,3],"type":"floating","user":"al\\u2028ice","uid":1000,"group":"staff",'
        '"host":"alpha","address":"10.0.0.1","pid":42}',
        '{"ts":"2027-06-15T12:00:12.345+00:00","at":1813060812.3456,"event":"release",'
        '"publisher":"Harlequin","product":"LispWorks","version":"8.0","handle":"h1",'
        '"indices":[1,3],"user":"al\\u2028ice","uid":1000,"host":"alpha",'
        '"address":"10.0.0.1","pid":42,"held_seconds":12.346}',
        '{"ts":"2027-06-15T12:00:12.345+00:00","at":1813060812.3456,"event":"release",'
        '"publisher":null,"product":null,"version":null,"handle":"h9","indices":null,'
        '"user":null,"uid":null,"host":null,"address":null,"pid":null,"held_seconds":null}',
        '{"ts":"2027-06-15T12:01:40.250+00:00","at":1813060900.25,"event":"revoked",'
        '"publisher":"Harlequin","product":"LispWorks","version":"8.0","handle":"h2",'
        '"indices":[2],"reason":"killed","user":"al\\u2028ice","uid":1000,"host":"alpha",'
        '"address":"10.0.0.1","pid":42,"held_seconds":0.5}',
    ]
