"""Licence lines written straight to twistd's text log file (`ClassicTextFile`) are
byte for byte what twistd's own observer wrote for them (the old path: the trimmed
event handed to `textFileLogObserver`), for the same events, switches and times."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import (
    FileLogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEventAsClassicLogText,
    textFileLogObserver,
)
from twisted.logger import _logger as logger_module
from twisted.python.logfile import LogFile

from hqnlsd.logging import observer as observer_module
from hqnlsd.logging.observer import (
    ClassicTextFile,
    SwitchedObserver,
    denial_switch,
    log_licence,
)
from hqnlsd.logging.switches import ALL, PRESETS, STARTUP, LogSwitches, Switch

ACTIONS = ("granted", "released", "revoked", "denied")
VALUES: dict[str, list[Any]] = {
    "publisher": ["Harlequin", "Pub {x}", None, "Ünïcode ☃"],
    "product": ["LispWorks", "{product}", "a\nb", "tab\there"],
    "version": ["8.0", None, "1.0 {0}"],
    "indices": ["3", "0-4,7", None],
    "licence_type": ["floating", "locked", None],
    "user": ["alice", "bob\x1b[31m", None, "\u202eevil"],
    "uid": [1000, 0, None],
    "host": ["alpha", "h\rost", None],
    "address": ["10.0.0.1", None],
    "pid": [42, None, 4_000_000],
    "handle": ["0a230a306f59c260", None],
    "status": [None, "NOLICENCES", "TRY_SERVER"],
    "reason": [None, "all taken", "revoked", "{reason}"],
}
#: Times on either side of a second, a fraction that rounds up into the next
#: second, a whole second, and none at all.
TIMES = [
    1_764_763_612.0,
    1_764_763_612.4,
    1_764_763_612.9999994,
    1_764_763_612.9999996,
    1_764_763_612.99999999,
    1_764_763_613.0000001,
    1_764_763_613.5,
    1_764_763_614.25,
    None,
]


def raw_events(seed: int, count: int) -> list[LogEvent]:
    """Licence events as `log_licence` emits them, with varied fields and times."""
    rng = random.Random(seed)
    kept: list[LogEvent] = []
    log = Logger(namespace="hqnlsd.licence", observer=kept.append)
    for k in range(count):
        action = rng.choice(ACTIONS)
        fields = {key: rng.choice(values) for key, values in VALUES.items()}
        status = fields["status"] or "NOLICENCES"
        switch = denial_switch(status) if action == "denied" else "LICENSE"
        level = rng.choice([LogLevel.info, LogLevel.info, LogLevel.warn])
        log_licence(log, action, switch=switch, level=level, **fields)
        event = kept[-1]
        when = TIMES[k % len(TIMES)]
        if when is None:
            del event["log_time"]
        else:
            event["log_time"] = when
    return kept


def masks() -> list[Switch]:
    rng = random.Random(7)
    return [*PRESETS.values(), STARTUP, ALL] + [Switch(rng.getrandbits(11)) for _ in range(12)]


def through(
    observer: FileLogObserver,
    mask: Switch,
    events: list[LogEvent],
    *,
    fast: bool,
    spy: list[LogEvent] | None = None,
) -> SwitchedObserver:
    """``events`` through a `SwitchedObserver` in front of ``observer``; ``spy``
    gets every event the observer's own formatter is given."""
    switched = SwitchedObserver(observer, LogSwitches(mask))
    if not fast:
        switched.text_file = None  # the path every licence line took before
    if spy is not None:
        original = observer.formatEvent

        def formatter(event: LogEvent) -> str | None:
            spy.append(event)
            return original(event)

        observer.formatEvent = formatter
    for event in events:
        switched(dict(event))
    return switched


@pytest.mark.parametrize("mask", masks(), ids=lambda m: hex(int(m)))
def test_fast_lines_are_byte_identical_to_twistds(mask: Switch) -> None:
    """Every licence line, any switches, any time: the same text as twistd's observer."""
    events = raw_events(int(mask), 400)
    new, old = io.StringIO(), io.StringIO()
    formatted: list[LogEvent] = []
    switched = through(textFileLogObserver(new), mask, events, fast=True, spy=formatted)
    assert switched.text_file is not None
    assert formatted == []  # every line was written by the fast path
    through(textFileLogObserver(old), mask, events, fast=False)
    assert new.getvalue() == old.getvalue()
    if mask & Switch.LICENSE:
        assert new.getvalue().count("\n") >= 100


def test_fast_lines_to_a_bytes_file_and_other_time_formats() -> None:
    """A binary file gets UTF-8; a custom time format (with %f: no reuse) or none."""
    events = raw_events(3, 300)
    for time_format in ("%Y-%m-%dT%H:%M:%S%z", "%H:%M:%S.%f", "%s", None):
        new, old = io.BytesIO(), io.BytesIO()
        through(textFileLogObserver(new, time_format), ALL, events, fast=True)
        through(textFileLogObserver(old, time_format), ALL, events, fast=False)
        assert new.getvalue() == old.getvalue(), time_format


def test_licence_lines_do_not_go_through_twisteds_formatter() -> None:
    """The point of it: twistd's observer's formatter is not called for licence lines,
    and is for every other event, in order, into the same file."""
    out = io.StringIO()
    observer = textFileLogObserver(out)
    calls: list[LogEvent] = []
    original = observer.formatEvent

    def spy(event: LogEvent) -> str | None:
        calls.append(event)
        return original(event)

    switched = SwitchedObserver(observer, LogSwitches(ALL))
    observer.formatEvent = spy
    log = Logger(namespace="hqnlsd.licence", observer=switched)
    log.info("before {n}", n=1)
    log_licence(log, "granted", product="P", handle="h", user="u")
    log.info("after {n}", n=2)
    assert [c.get("log_format") for c in calls] == ["before {n}", "after {n}"]
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "before 1",
        "granted P to user u, handle h",
        "after 2",
    ]


def test_other_observers_get_the_trimmed_event() -> None:
    """An observer that is not twistd's text file observer still gets the trimmed
    event (JSON logs, syslog, tests): no fast writer for it."""
    kept: list[LogEvent] = []
    custom = FileLogObserver(io.StringIO(), lambda e: formatEventAsClassicLogText(e))
    assert ClassicTextFile.behind(custom) is None
    assert ClassicTextFile.behind(kept.append) is None
    switched = SwitchedObserver(kept.append, LogSwitches(STARTUP))
    log_licence(Logger(namespace="x", observer=switched), "granted", product="P", user="u")
    assert kept[0]["licence_text"] == "granted P to user u"


def test_rotation_through_twistds_log_file_is_unchanged(tmp_path: Path) -> None:
    """Through a twistd `LogFile` that rotates every few lines: the same files, the
    same content in each."""
    events = raw_events(11, 500)
    contents = []
    for name, fast in (("new", True), ("old", False)):
        directory = tmp_path / name
        directory.mkdir()
        logfile = LogFile("twistd.log", str(directory), rotateLength=2000, maxRotatedFiles=None)
        publisher = LogPublisher()
        switched = SwitchedObserver(textFileLogObserver(logfile), LogSwitches(ALL))
        if not fast:
            switched.text_file = None
        publisher.addObserver(switched)
        for event in events:
            publisher(dict(event))
        logfile.close()
        contents.append({p.name: p.read_bytes() for p in sorted(directory.iterdir())})
    assert len(contents[0]) > 5
    assert contents[0] == contents[1]


# -- licence lines written without Logger.emit ------------------------------------------


def clock(monkeypatch: pytest.MonkeyPatch, times: list[float]) -> None:
    """Both paths' clocks (Logger.emit's and the direct path's) read ``times`` in turn."""
    ticks = iter(times)
    monkeypatch.setattr(observer_module, "_now", lambda: next(ticks))
    monkeypatch.setattr(logger_module, "time", lambda: next(ticks))


def emitted(
    monkeypatch: pytest.MonkeyPatch, mask: Switch, seed: int, *, direct: bool
) -> tuple[str, int]:
    """The text file after `log_licence` calls (as the feed makes them, with
    ``switches``) for random lines; with ``direct`` False, a second observer on
    the publisher keeps every line on the old path (emit, publisher, the trimmed
    event to twistd's own formatter). Also how many lines went through emit."""
    rng = random.Random(seed)
    out = io.StringIO()
    switches = LogSwitches(mask)
    publisher = LogPublisher()
    switched = SwitchedObserver(textFileLogObserver(out), switches)
    publisher.addObserver(switched)
    if not direct:
        switched.text_file = None
        publisher.addObserver(lambda event: None)
    log = Logger(namespace="hqnlsd.licence", observer=publisher)
    emits = 0
    original = log.emit

    def counted(*args: Any, **kwargs: Any) -> None:
        nonlocal emits
        emits += 1
        original(*args, **kwargs)

    log.emit = counted  # type: ignore[method-assign]
    clock(monkeypatch, [t for t in TIMES if t is not None] * 100)
    for _ in range(300):
        action = rng.choice(ACTIONS)
        fields = {key: rng.choice(values) for key, values in VALUES.items()}
        status = fields["status"] or "NOLICENCES"
        switch = denial_switch(status) if action == "denied" else "LICENSE"
        level = rng.choice([LogLevel.info, LogLevel.warn, LogLevel.critical])
        log_licence(log, action, switch=switch, level=level, switches=switches, **fields)
    return out.getvalue(), emits


@pytest.mark.parametrize("mask", masks()[:10], ids=lambda m: hex(int(m)))
def test_lines_written_without_emit_are_byte_identical(
    monkeypatch: pytest.MonkeyPatch, mask: Switch
) -> None:
    """The direct path writes the file the old path (Logger.emit, the publisher,
    twistd's formatter) writes, and does not call emit."""
    new, new_emits = emitted(monkeypatch, mask, int(mask), direct=True)
    old, old_emits = emitted(monkeypatch, mask, int(mask), direct=False)
    assert new == old
    assert new_emits == 0
    assert old_emits > 0


def test_unusual_lines_and_publishers_still_go_through_emit() -> None:
    """A second observer, another publisher type, a clashing field: emitted as ever."""
    kept: list[LogEvent] = []
    out = io.StringIO()
    switches = LogSwitches(ALL)
    publisher = LogPublisher(SwitchedObserver(textFileLogObserver(out), switches), kept.append)
    log = Logger(namespace="hqnlsd.licence", observer=publisher)
    log_licence(log, "granted", switches=switches, product="P", user="u")
    assert kept[0]["licence_action"] == "granted"
    assert out.getvalue().endswith("] granted P to user u\n")
    publisher.removeObserver(kept.append)
    with pytest.raises(TypeError):
        log_licence(log, "granted", switches=switches, product="P", licence_action="x")
    log_licence(log, "granted", switches=switches, product="P", log_system="sys")
    assert out.getvalue().splitlines()[-1].endswith(" [sys] granted P")
