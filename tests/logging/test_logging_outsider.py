# mypy: allow-untyped-calls
"""Logs an outsider cannot fill or forge (issue 12).

* client-supplied text is escaped before it reaches a log line or the usage report;
* bad input is summarised per source per interval, with a cap on the sources tracked;
* replies to garbage are short, and a connection sending garbage is closed;
* twistd's ``--logfile`` is capped in rotated files and private (0600).
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    capturedLogs,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from hqnlsd.logging.badinput import BadInputLog
from hqnlsd.logging.escape import escape_text
from hqnlsd.logging.files import LOG_FILE_MODE, MAX_ROTATED_FILES, cap_log_files, prepare_log_file
from hqnlsd.logging.observer import SwitchedObserver, log_licence
from hqnlsd.logging.switches import ALL, LogSwitches
from hqnlsd.protocols import grammar
from hqnlsd.protocols.client import ClientProtocol, ClientProtocolFactory
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.logging.test_logging_usage import grant, make_report, one_turn
from tests.protocols.test_protocol_fakes import PEER, FakeLicences, connect, read_replies

FORGED = (
    "line1\n2026-12-03T10:00:00+0000 [hqnlsd.server#info] granted Harlequin LispWorks "
    "8.0 licence 1 (floating) to user root, handle FORGED"
)
NASTY = "a\x1b[31mred\x07bell\x00nul\x7fdel\u202eevil\u2028sep\r\nend"


def rendered(events: list[dict[str, Any]], tmp_path: Path) -> str:
    """The text a twistd file log gets for ``events``, through the daemon's filter."""
    switches = LogSwitches.load(tmp_path)
    switches.value = ALL
    out = io.StringIO()
    observer = SwitchedObserver(textFileLogObserver(out), switches)
    for event in events:
        observer(dict(event))
    return out.getvalue()


# -- escaping -------------------------------------------------------------------------


def test_escape_text_leaves_printable_text_alone() -> None:
    """Printable text, accents and emoji included, is not changed."""
    for text in ("alice", "Jos\u00e9 M\u00fcller", "C:temp dir", "\U0001f600 ok"):
        assert escape_text(text) == text


def test_escape_text_escapes_every_non_printing_character() -> None:
    """Controls, DEL, bidi overrides and line separators become visible escapes."""
    escaped = escape_text(NASTY)
    assert escaped.isprintable()
    for raw in ("\x1b", "\x07", "\x00", "\x7f", "\u202e", "\u2028", "\r", "\n"):
        assert raw not in escaped
    assert escaped == (
        "a\\x1b[31mred\\x07bell\\x00nul\\x7fdel\\u202eevil\\u2028sep\\r\\nend"
    )
    # Unambiguous: a backslash written by the client is doubled.
    assert escape_text("a\\nb") == "a\\\\nb"


def test_message_forging_gives_one_escaped_log_line(tmp_path: Path) -> None:
    """MESSAGE text with a newline and a fake log line makes exactly one log line."""
    from tests.daemon.test_server import make_rig

    rig = make_rig(tmp_path / "state")
    try:
        with capturedLogs() as events:
            rig.dispatch(grammar.Message(FORGED), IPv4Address("TCP", "10.1.2.3", 4000))
    finally:
        rig.journal.close()
    text = rendered(list(events), tmp_path)
    lines = [line for line in text.splitlines() if "client message" in line or "FORGED" in line]
    assert len(lines) == 1, text
    assert "line1\\n2026-12-03T10:00:00+0000" in lines[0]
    assert text.count("\n") == len(list(events))


def test_control_characters_in_licence_lines_are_escaped(tmp_path: Path) -> None:
    """ESC, BEL, NUL, DEL, U+202E, U+2028 in client fields never reach the log raw."""
    publisher = LogPublisher()
    log = Logger(observer=publisher)
    events: list[dict[str, Any]] = []
    publisher.addObserver(events.append)
    log_licence(
        log, "denied", publisher="Harlequin", product=NASTY, version="8.0",
        user=NASTY, host=NASTY, address="10.0.0.1", pid=42, status="BADPRODUCT",
        reason=NASTY,
    )
    text = rendered(events, tmp_path)
    assert text.count("\n") == 1
    for raw in ("\x1b", "\x07", "\x00", "\x7f", "\u202e", "\u2028", "\r"):
        assert raw not in text
    assert "a\\x1b[31mred\\x07bell\\x00nul" in text


def test_usage_report_lines_survive_line_separators(tmp_path: Path) -> None:
    """A user name with U+2028, NEL or a control character stays on one report line."""
    report, clock = make_report(tmp_path)
    grant(report, "h1", user="eve\u2028evil\x85nel\x1bansi", host="h\u202eost")
    grant(report, "h2")
    one_turn(clock)
    text = (tmp_path / "usage.jsonl").read_text("utf-8")
    lines = text.splitlines()
    assert len(lines) == 2, lines
    record = json.loads(lines[0])
    assert record["user"] == "eve\u2028evil\x85nel\x1bansi"
    assert record["host"] == "h\u202eost"
    assert all(line.isprintable() for line in lines)


# -- summarising bad input ------------------------------------------------------------


def test_bad_input_logged_once_then_summarised_per_interval() -> None:
    """The first bad line of a source is logged, the rest counted into one summary."""
    clock = Clock()
    log = Logger(namespace="test")
    bad = BadInputLog(log, clock, interval=60.0)
    with capturedLogs() as events:
        for n in range(1000):
            bad.note("10.0.0.1", f"bad line {n}")
    assert len(events) == 1
    assert "10.0.0.1" in formatEvent(events[0]) and "bad line 0" in formatEvent(events[0])
    with capturedLogs() as events:
        clock.advance(60)
    (summary,) = events
    text = formatEvent(summary)
    assert "client 10.0.0.1 sent 999 more bad lines in the last 60 s" in text
    assert "(last: bad line 999)" in text
    with capturedLogs() as events:
        clock.advance(600)
    assert events == []  # nothing to report, no timer left running
    assert clock.getDelayedCalls() == []
    with capturedLogs() as events:
        bad.note("10.0.0.1", "again")
    assert len(events) == 1  # a new interval: the first line is shown again


def test_bad_input_sources_are_capped() -> None:
    """Many sources: memory and log lines stay bounded, the rest is one summary."""
    clock = Clock()
    bad = BadInputLog(Logger(namespace="test"), clock, interval=60.0, max_sources=10)
    with capturedLogs() as events:
        for n in range(5000):
            bad.note(f"10.0.{n // 256}.{n % 256}", "garbage")
            bad.note(f"10.0.{n // 256}.{n % 256}", "garbage")
        assert bad.tracked <= 10
        clock.advance(60)
    texts = [formatEvent(event) for event in events]
    assert len(texts) <= 10 + 1 + 10 + 1, texts
    others = [text for text in texts if "beyond the first" in text]
    assert others and "9980 bad lines from sources beyond the first 10" in others[-1]
    assert bad.tracked == 0


def test_bad_input_detail_is_bounded() -> None:
    """A huge detail is cut: memory per source and log line length are bounded."""
    clock = Clock()
    bad = BadInputLog(Logger(namespace="test"), clock)
    with capturedLogs() as events:
        bad.note("10.0.0.1", "x" * 100_000)
    assert len(formatEvent(events[0]) or "") < 400


# -- the client protocol --------------------------------------------------------------


def connect_many(
    factory: ClientProtocolFactory, peer: IPv4Address
) -> tuple[ClientProtocol, StringTransport]:
    """One more connection from ``peer`` to the listener of ``factory``."""
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def test_garbage_flood_logs_a_bounded_number_of_lines() -> None:
    """Thousands of bad lines over many connections log one line, then one summary."""
    clock = Clock()
    factory = ClientProtocolFactory(FakeLicences(), clock)
    with capturedLogs() as events:
        for port in range(200):
            peer = IPv4Address("TCP", "10.9.8.7", 10000 + port)
            protocol, _ = connect_many(factory, peer)
            protocol.dataReceived(b"X\n" * 500)
    assert len(events) <= 2, [formatEvent(e) for e in events]
    with capturedLogs() as events:
        clock.advance(60)
    assert len(events) == 1 and "10.9.8.7" in (formatEvent(events[0]) or "")


def test_garbage_replies_are_short_and_the_connection_closes() -> None:
    """A bad token is quoted by a short prefix only, and 20 bad lines close the link."""
    protocol, transport = connect(FakeLicences(), Clock())
    protocol.dataReceived(b"Y" * 1000 + b"\n")
    (first,) = read_replies(transport.value())
    assert isinstance(first, Err) and first.status is Status.UNKNOWN_COMMAND
    assert "'YYYY" in first.msg and "HELP lists the commands" in first.msg
    assert len(transport.value()) < 200
    protocol.dataReceived(b"X\n" * 10_000)
    replies = read_replies(transport.value())
    assert transport.disconnecting
    assert len(replies) <= 21
    last = replies[-1]
    assert isinstance(last, Err) and "closing" in last.msg
    assert len(transport.value()) < 21 * 200


def test_good_lines_between_bad_ones_keep_a_connection_open() -> None:
    """A client with the odd bad line (a few a minute) is not cut off."""
    clock = Clock()
    protocol, transport = connect(FakeLicences(), clock)
    for _ in range(30):
        protocol.dataReceived(b"FROB\nPING\n")
        clock.advance(10)
    assert not transport.disconnecting


def test_line_too_long_floods_are_summarised() -> None:
    """Over-long lines from one address, one connection each: one line, then a summary."""
    clock = Clock()
    factory = ClientProtocolFactory(FakeLicences(), clock)
    with capturedLogs() as events:
        for port in range(100):
            peer = IPv4Address("TCP", "10.9.8.6", 20000 + port)
            protocol, transport = connect_many(factory, peer)
            protocol.dataReceived(b"Z" * 5000)
            assert transport.disconnecting
    assert len(events) == 1
    assert PEER.host != "10.9.8.6"
    assert all(e["log_level"] is not LogLevel.debug for e in events)


# -- twistd's --logfile ---------------------------------------------------------------


def test_prepare_log_file_creates_and_tightens_0600(tmp_path: Path) -> None:
    """The log file is created 0600, and an existing 0644 one is made 0600."""
    path = tmp_path / "new.log"
    prepare_log_file(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == LOG_FILE_MODE == 0o600
    old = tmp_path / "old.log"
    old.write_text("before\n")
    os.chmod(old, 0o644)
    prepare_log_file(str(old))
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert old.read_text() == "before\n"


def test_cap_log_files_caps_rotation_and_mode(tmp_path: Path) -> None:
    """The LogFile behind twistd's observer keeps at most MAX_ROTATED_FILES, all 0600."""
    for n in (1, 2):  # left by an older daemon, readable by all
        (tmp_path / f"twistd.log.{n}").write_text("old\n")
        os.chmod(tmp_path / f"twistd.log.{n}", 0o644)
    logfile = LogFile.fromFullPath(str(tmp_path / "twistd.log"), rotateLength=100)
    publisher = LogPublisher()
    publisher.addObserver(textFileLogObserver(logfile))
    found = cap_log_files(publisher)
    assert found == [logfile]
    assert stat.S_IMODE((tmp_path / "twistd.log.2").stat().st_mode) == 0o600
    assert logfile.maxRotatedFiles == MAX_ROTATED_FILES
    log = Logger(observer=publisher)
    for n in range(MAX_ROTATED_FILES * 5):
        log.info("line {n} " + "x" * 120, n=n)
    logfile.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == MAX_ROTATED_FILES + 1, names
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_message_flood_is_summarised(tmp_path: Path) -> None:
    """MESSAGE is logged whole 10 times per address per minute, then summarised."""
    from hqnlsd.server import LicenceServer
    from tests.daemon.test_server import make_rig

    rig = make_rig(tmp_path / "state")
    try:
        server = LicenceServer(rig.engine, rig.journal, rig.source, clock=rig.clock)
        peer = IPv4Address("TCP", "10.1.2.3", 4000)
        with capturedLogs() as events:
            for n in range(1000):
                assert server.dispatch(grammar.Message(f"hello {n}"), peer) == Ok()
        texts = [formatEvent(event) or "" for event in events]
        assert texts == [f"client message from 10.1.2.3: hello {n}" for n in range(10)]
        with capturedLogs() as events:
            rig.clock.advance(60)
        texts = [formatEvent(event) or "" for event in events]
        assert any(
            "client 10.1.2.3 sent 990 more messages in the last 60 s (last: hello 999)" in text
            for text in texts
        ), texts
    finally:
        rig.journal.close()


def test_hqn_lsa_listings_escape_client_fields() -> None:
    """A user or host name with ESC, BEL or a line break cannot act on the admin's
    terminal nor add a line to an ``hqn_lsa listu`` listing."""
    from hqnlsd.admin.render import render
    from tests.admin.test_admin_render import listed

    holder = {
        "indices": [1], "type": "floating", "user": "eve\x1b[2J\x07", "uid": None,
        "host": "h\nFAKE ROW", "address": "10.0.0.9", "pid": 1, "access": 8,
        "granted": 0.0, "last_update": 0.0, "handle": "H1",
    }
    text = render("listu", {"products": [listed(holders=[holder])]})
    for raw in ("\x1b", "\x07"):
        assert raw not in text
    assert "eve\\x1b[2J\\x07" in text
    assert not any(line.startswith("FAKE ROW") for line in text.splitlines())
    assert "h\\nFAKE ROW" in text


def test_twistd_log_path_follows_twistd() -> None:
    """The file twistd will open, as twistd decides it; None for stdout, syslog, --logger."""
    from hqnlsd.logging.files import twistd_log_path

    assert twistd_log_path({"logfile": "/var/log/hqnlsd.log"}) == "/var/log/hqnlsd.log"
    assert twistd_log_path({"logfile": "x.log"}) == os.path.abspath("x.log")
    assert twistd_log_path({"logfile": None, "nodaemon": False}) == os.path.abspath("twistd.log")
    assert twistd_log_path({"logfile": None, "nodaemon": True}) is None
    assert twistd_log_path({"logfile": "-", "nodaemon": True}) is None
    assert twistd_log_path({"logfile": "/x.log", "syslog": True}) is None
    assert twistd_log_path({"logfile": "/x.log", "logger": "my.observer"}) is None
    assert twistd_log_path(None) is None
