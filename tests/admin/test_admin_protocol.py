"""The admin protocol's error paths: malformed requests reported rate-limited (per
peer, per interval, no timer left once the admin service stops), and a command
that fails unexpectedly logged as a failure and answered INTERNAL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from hqnlsd.admin import wire
from hqnlsd.admin.protocol import (
    MALFORMED_LOG_INTERVAL,
    AdminProtocol,
    MalformedRequestsReport,
    malformed_requests,
)
from tests.admin.test_admin_handler import Rig, write_site


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted meanwhile."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A started daemon core on a Clock."""
    write_site(tmp_path)
    made = Rig(tmp_path)
    yield made
    made.stop()


def connected(rig: Rig) -> tuple[AdminProtocol, StringTransport]:
    """An admin connection over a StringTransport, its greeting read."""
    protocol = AdminProtocol(rig.handler)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert json.loads(transport.value())["ok"] is True
    transport.clear()
    return protocol, transport


def answers(transport: StringTransport) -> list[dict[str, Any]]:
    """The JSON lines written so far; the transport is cleared."""
    lines = transport.value().splitlines()
    transport.clear()
    return [json.loads(line) for line in lines]


def texts(events: list[dict[str, Any]], level: LogLevel) -> list[str]:
    """The formatted events of ``level``."""
    return [formatEvent(e) for e in events if e.get("log_level") is level]


def interval_timers(rig: Rig) -> list[Any]:
    """The pending timers that end a reporting interval."""
    return [
        call for call in rig.clock.getDelayedCalls() if "_end_interval" in repr(call.func)
    ]


def test_malformed_requests_are_reported_once_per_peer_and_interval(
    rig: Rig, logged: list[dict[str, Any]]
) -> None:
    """A burst of malformed requests: each refused and counted, the first logged with its
    reason, the rest summarised in one line when the interval ends."""
    protocol, transport = connected(rig)
    protocol.dataReceived(b'{"v": 1, "cmd": ["listp"], "args": {}}\n' * 5)
    assert [a["error"] for a in answers(transport)] == [wire.BAD_REQUEST] * 5
    assert malformed_requests(rig.handler).total == 5
    [first] = texts(logged, LogLevel.warn)
    assert first.startswith("admin local: refused a malformed request: ")
    rig.clock.advance(MALFORMED_LOG_INTERVAL)
    [_, summary] = texts(logged, LogLevel.warn)
    assert "admin local sent 4 more malformed requests in the last 60 s" in summary
    assert not interval_timers(rig)  # none while quiet


def test_stopping_the_admin_service_ends_the_interval_and_its_timer(
    rig: Rig, logged: list[dict[str, Any]]
) -> None:
    """`MalformedRequestsReport` stopping logs what is still counted and cancels the
    interval's timer (a timer left on the reactor made trial's DirtyReactor fail)."""
    report = MalformedRequestsReport(rig.handler)
    report.startService()
    protocol, transport = connected(rig)
    protocol.dataReceived(b'{"v": 99}\n' * 3)
    assert [a["error"] for a in answers(transport)] == [wire.VERSION] * 3
    assert len(interval_timers(rig)) == 1
    report.stopService()
    assert not interval_timers(rig)
    assert any("local sent 2 more malformed requests" in t for t in texts(logged, LogLevel.warn))
    # Stopped: refusals are still answered and counted, but start no timer.
    protocol.dataReceived(b'{"v": 99}\n')
    assert [a["error"] for a in answers(transport)] == [wire.VERSION]
    assert malformed_requests(rig.handler).total == 4
    assert not interval_timers(rig)


def test_an_unexpected_exception_is_a_failure_answered_internal(
    rig: Rig, logged: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that raises anything but AdminError is a bug: its traceback is logged
    (log.failure) and the admin is told INTERNAL, never a silent BAD_REQUEST, even
    for TypeError (what unchecked arguments used to raise)."""

    def broken(args: Any, who: str) -> Any:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setitem(rig.handler._commands, "listp", broken)
    protocol, transport = connected(rig)
    protocol.dataReceived(b'{"v": 1, "cmd": "listp", "args": {}, "id": 3}\n')
    [answer] = answers(transport)
    assert (answer["ok"], answer["error"], answer["id"]) == (False, wire.INTERNAL, 3)
    assert "TypeError: unhashable type" in answer["message"]
    failures = [e for e in logged if e.get("log_level") is LogLevel.critical]
    assert len(failures) == 1 and failures[0]["log_failure"].check(TypeError)
    assert malformed_requests(rig.handler).total == 0
    assert texts(logged, LogLevel.warn) == []
