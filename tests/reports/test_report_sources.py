"""`hqnlsd.reports.sources`: finding and reading ``usage.jsonl`` and its rotations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hqnlsd.reports.analysis import Options, analyse
from hqnlsd.reports.records import Grant
from hqnlsd.reports.sources import ReportInputError, read_sources, usage_files
from tests.reports.records import denial, grant, lines, release


def test_rotated_files_are_read_oldest_first(tmp_path: Path) -> None:
    """``usage.jsonl.2`` (oldest), ``.1``, then ``usage.jsonl``: a licence granted in
    the oldest file and released in the live one has its whole length."""
    (tmp_path / "usage.jsonl.2").write_text(lines(grant(0, "old")))
    (tmp_path / "usage.jsonl.1").write_text(lines(grant(10, "mid")))
    (tmp_path / "usage.jsonl").write_text(lines(release(100, "old", held=None)))
    (tmp_path / "usage.jsonl.x").write_text("not a rotation\n")
    names = [path.name for path in usage_files(tmp_path)]
    assert names == ["usage.jsonl.2", "usage.jsonl.1", "usage.jsonl"]
    read = read_sources([tmp_path])
    assert [type(r).__name__ for r in read.records] == ["Grant", "Grant", "End"]
    first = read.records[0]
    assert isinstance(first, Grant) and first.handle == "old"
    sessions = {s.handle: s for s in analyse(read.records, Options()).sessions}
    assert sessions["old"].seconds == 100


def test_a_file_source_brings_its_rotations(tmp_path: Path) -> None:
    """A ``usage.jsonl`` path names the file and its rotations beside it."""
    (tmp_path / "usage.jsonl.1").write_text(lines(grant(0, "a")))
    (tmp_path / "usage.jsonl").write_text(lines(grant(1, "b")))
    assert [p.name for p in usage_files(tmp_path / "usage.jsonl")] == [
        "usage.jsonl.1",
        "usage.jsonl",
    ]


def test_two_members_are_read_and_deduplicated(tmp_path: Path) -> None:
    """Two members' state directories: records in both count once."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "usage.jsonl").write_text(lines(grant(0, "h1"), denial(5)))
    (b / "usage.jsonl").write_text(lines(grant(0, "h1"), denial(5), release(50, "h1", held=50)))
    read = read_sources([a, b])
    assert read.duplicates == 2
    assert len(read.records) == 3
    assert read.files == [a / "usage.jsonl", b / "usage.jsonl"]


def test_malformed_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    """Bad JSON, a truncated last line and a wrong-typed record are skipped and
    counted with their file and line; the good records are read."""
    good = lines(grant(0, "h1"))
    bad_type = json.dumps({**grant(1, "h2"), "indices": "x"})
    (tmp_path / "usage.jsonl").write_text(
        good + "garbage\n" + bad_type + "\n\n" + lines(denial(3)) + '{"ts": "2026'
    )
    read = read_sources([tmp_path])
    assert len(read.records) == 2
    assert read.skipped == 3
    assert [(p.line, p.path.name) for p in read.problems] == [
        (2, "usage.jsonl"),
        (3, "usage.jsonl"),
        (6, "usage.jsonl"),
    ]
    assert "indices" in read.problems[1].why


def test_undecodable_bytes_are_a_malformed_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 make that line malformed, not the file unreadable."""
    (tmp_path / "usage.jsonl").write_bytes(b"\xff\xfe\n" + lines(grant(0, "h")).encode())
    read = read_sources([tmp_path])
    assert (read.skipped, len(read.records)) == (1, 1)


def test_a_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    """A path that does not exist, or a directory without a usage report."""
    with pytest.raises(ReportInputError, match="no such file or directory"):
        read_sources([tmp_path / "nowhere"])
    with pytest.raises(ReportInputError, match=r"no usage\.jsonl"):
        read_sources([tmp_path])


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    """A usage file that cannot be read (here: a directory in its place)."""
    (tmp_path / "usage.jsonl").mkdir()
    with pytest.raises(ReportInputError, match=r"usage\.jsonl"):
        read_sources([tmp_path])


# Found feeding hqn_report hostile files (review of issue 15).


def test_a_line_over_the_bound_is_skipped_without_being_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than MAX_LINE_BYTES (a usage record is at most a few hundred KB:
    65,535 licence numbers) is skipped and counted, and read past in pieces, never
    held whole: ``/dev/zero`` or a file of one endless line cannot use up memory.
    The lines around it are read."""
    from hqnlsd.reports import sources

    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 1000)
    long_line = json.dumps({"event": "grant", "user": "a" * 5000}) + "\n"
    (tmp_path / "usage.jsonl").write_text(
        lines(grant(0, "a")) + long_line + lines(grant(1, "b")) + "x" * 3000
    )
    read = read_sources([tmp_path])
    assert [getattr(r, "handle", None) for r in read.records] == ["a", "b"]
    assert read.skipped == 2
    assert [(p.line, p.why) for p in read.problems] == [
        (2, "line over 1000 bytes"),
        (4, "line over 1000 bytes"),
    ]


def test_a_fifo_or_device_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A usage file that is not a regular file (a FIFO would block the reader for
    ever, a device such as /dev/zero never ends) is a clear error."""
    import os

    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "usage.jsonl")
    with pytest.raises(ReportInputError, match=r"usage\.jsonl: not a regular file"):
        read_sources([fifo])
    device = tmp_path / "device"
    device.mkdir()
    (device / "usage.jsonl").symlink_to("/dev/zero")
    with pytest.raises(ReportInputError, match=r"usage\.jsonl: not a regular file"):
        read_sources([device])


def test_a_gap_in_the_rotated_files_is_said(tmp_path: Path) -> None:
    """``usage.jsonl.1`` and ``.3`` without ``.2``: the records of ``.2`` are missing
    from the report, so it says so (the daemon rotates without gaps)."""
    for name in ("usage.jsonl.3", "usage.jsonl.1", "usage.jsonl"):
        (tmp_path / name).write_text(lines(grant(0, name)))
    read = read_sources([tmp_path])
    assert len(read.records) == 3
    assert read.gaps == [str(tmp_path / "usage.jsonl.2")]
    (tmp_path / "usage.jsonl.2").write_text("")
    assert read_sources([tmp_path]).gaps == []


def test_a_time_out_of_any_daemon_s_range_is_a_malformed_line(tmp_path: Path) -> None:
    """One record stamped in the year 5138 (``at`` 1e11) made hqn_report build an
    hourly series across three thousand years (it ran out of memory); a release
    whose ``held_seconds`` reaches back to before 2000 did the same from the other
    end. Such a line is skipped and counted; the report of the rest is made."""
    far = grant(0, "far")
    far["at"] = 1e11
    old = release(50, "old", held=1e300)
    (tmp_path / "usage.jsonl").write_text(lines(grant(0, "a"), far, old, release(60, "a")))
    read = read_sources([tmp_path])
    assert [p.why for p in read.problems] == [
        "'at' is not a time from 2000 to 2099",
        "'held_seconds' reaches back before 2000",
    ]
    analysis = analyse(read.records, Options())
    assert len(analysis.products["Test Publisher/Widget"].hourly) == 1


def test_the_readers_constants_are_the_daemons() -> None:
    """The reader keeps its own copies (so that hqn_report starts without Twisted's
    logger): they must be the daemon's file name and revocation reasons."""
    from hqnlsd.licensing.events import Reason
    from hqnlsd.logging.usage import USAGE_FILE
    from hqnlsd.reports import records, sources

    assert sources.USAGE_FILE == USAGE_FILE
    assert {
        Reason.CRASHOUT, Reason.TIMEOUT, Reason.LOCKED_PRIORITY, Reason.NAMED_USER
    } == records.RECLAIM_REASONS
