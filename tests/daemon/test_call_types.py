"""Seeded fuzz: admin requests and peer calls with wrong types (issue 12).

Messages with the right shape and wrong types (a command that is not text, args
that are not an object, numbers where text is expected, nested junk, huge and
non-finite values, deep nesting) go through the real protocol objects over a
`StringTransport`: `AdminProtocol` on the admin handler of a started daemon
core (`tests.test_admin_handler.Rig`), and a `PeerLink` of a real `PeerNetwork`
whose calls run `AdminHandler.handle_forwarded` (what `DomainRuntime` does for a
member). Checked for every message: an error reply is written, no CRITICAL
(``log.failure``, unhandled error) event is logged, the licence state is as it
was, and a malformed peer call is counted and reported like any invalid peer
input (rate-limited).
"""

from __future__ import annotations

import copy
import gc
import ipaddress
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from hqnlsd.admin import wire as admin_wire
from hqnlsd.admin.handler import FORWARDED
from hqnlsd.admin.protocol import (
    MALFORMED,
    MALFORMED_LOG_INTERVAL,
    AdminProtocol,
    malformed_requests,
)
from hqnlsd.domain.peers import INVALID_LOG_INTERVAL, PeerLink, PeerNetwork, PeerTimers
from tests.admin.test_admin_handler import Rig, write_site
from tests.peerfuzz import BAD_VALUES

A, B = ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Address("127.0.0.2")
#: Messages per seed (CI); each seed is an independent run.
MESSAGES = 300
#: Argument names the admin commands read.
ARG_NAMES = (
    "product", "handle", "index", "level", "count", "domain", "unique_id", "address",
    "default", "text", "value", "seconds", "publisher", "user", "group", "host",
)
#: Commands that change state when valid with no arguments: never drawn.
NEVER = {"down", "reinit", "reread", "recover"}


def junk(rng: random.Random) -> Any:
    """A value of the wrong type for almost any field (a fresh copy)."""
    choice = rng.randrange(10)
    if choice == 0:
        return "x" * rng.choice((1000, 100_000))
    if choice == 1:
        return float(rng.choice(("nan", "inf", "-inf")))
    if choice == 2:
        nested: Any = 1
        for _ in range(rng.randrange(1, 400)):
            nested = [nested] if rng.random() < 0.5 else {"a": nested}
        return nested
    if choice == 3:
        return 10 ** rng.randrange(20, 4000)
    if choice == 4:
        return {"index": junk(rng), "publisher": junk(rng), "product": junk(rng)}
    return copy.deepcopy(rng.choice(BAD_VALUES))


#: Products of `write_site`, named as an admin names them.
PRODUCTS = (
    {"publisher": "Test Publisher", "product": "Widget"},
    {"publisher": "Test Publisher", "product": "Gadget"},
    {"index": 1},
    {"index": 2},
)


def bad_args(rng: random.Random) -> Any:
    """Arguments of the wrong type, or an object whose known fields hold junk (most
    often next to a product that exists, so that the junk reaches the command)."""
    if rng.random() < 0.15:
        return junk(rng)
    args = {name: junk(rng) for name in rng.sample(ARG_NAMES, rng.randrange(1, 5))}
    if rng.random() < 0.7:
        args["product"] = dict(rng.choice(PRODUCTS))
    return args


def admin_line(rng: random.Random, commands: list[str]) -> bytes:
    """One admin request line with something of the wrong type in it."""
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice((b"[" * 100_000, b"{\"v\":" * 50_000, b"\xff\xfe", b"NaN", b"[1]"))
    message: dict[str, Any] = {"v": 1, "cmd": rng.choice(commands), "args": bad_args(rng)}
    if kind == 1:
        message["cmd"] = junk(rng)
    elif kind == 2:
        message["v"] = junk(rng)
    elif kind == 3:
        message["id"] = junk(rng)
    return json.dumps(message).encode()


def peer_call(rng: random.Random) -> dict[str, Any]:
    """A peer ``call`` line with something of the wrong type in it (a whole number id)."""
    body: Any = {
        # Not reinit: forwarded, it needs the domain runtime this daemon core lacks.
        "command": rng.choice(sorted(FORWARDED - {"reinit"})),
        "args": bad_args(rng),
        "who": "admin",
    }
    kind = rng.randrange(6)
    if kind == 0:
        body["command"] = junk(rng)
    elif kind == 1:
        body["who"] = junk(rng)
    elif kind == 2:
        body = junk(rng)
    return {"t": "call", "id": rng.randrange(1, 2**31), "d": "D", "body": body}


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted meanwhile."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def critical(events: list[dict[str, Any]]) -> list[str]:
    """The CRITICAL events (failures, unhandled errors), described."""
    return [
        str(event.get("log_format")) + " " + repr(event.get("log_failure"))
        for event in events
        if event.get("log_level") is LogLevel.critical
    ]


def warned(events: list[dict[str, Any]]) -> int:
    """How many warnings were logged."""
    return sum(1 for event in events if event.get("log_level") is LogLevel.warn)


def replies(transport: StringTransport) -> list[dict[str, Any]]:
    """The JSON lines written so far; the transport is cleared."""
    lines = transport.value().splitlines()
    transport.clear()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("seed", [1, 2])
def test_admin_requests_with_wrong_types(
    tmp_path: Path, seed: int, logged: list[dict[str, Any]]
) -> None:
    """Every admin request with wrong types gets one error reply; no CRITICAL, no change.

    Failed before issue 12: a request nested deeper than the JSON decoder's stack
    escaped as an unhandled RecursionError (the connection dropped, CRITICAL logged),
    and wrong types inside args reached the handler as a TypeError / ValueError /
    AttributeError, logged as CRITICAL "admin command ... failed".
    """
    rng = random.Random(seed)
    write_site(tmp_path)
    rig = Rig(tmp_path)
    try:
        rig.grant()
        commands = [c for c in rig.handler.commands if c not in NEVER]
        protocol = AdminProtocol(rig.handler)
        transport = StringTransport()
        protocol.makeConnection(transport)
        assert replies(transport)[0]["ok"] is True  # the greeting
        counter = malformed_requests(rig.handler)
        errors = 0
        for _ in range(MESSAGES):
            line = admin_line(rng, commands)
            before = rig.root.engine.snapshot()
            warnings, refused = warned(logged), counter.total
            protocol.dataReceived(line + b"\n")
            rig.clock.advance(0)
            answers = replies(transport)
            assert len(answers) == 1, (line[:300], answers)
            answer = answers[0]
            malformed = False
            if answer["ok"] is False:
                errors += 1
                assert answer["error"] != admin_wire.INTERNAL, (line[:300], answer)
                assert rig.root.engine.snapshot() == before, line[:300]
                malformed = answer["error"] in MALFORMED
            assert counter.total == refused + malformed, (line[:300], answer)
            assert warned(logged) == warnings + malformed, (line[:300], answer)
            assert critical(logged) == [], line[:300]
            assert not transport.disconnecting, line[:300]
            rig.clock.advance(MALFORMED_LOG_INTERVAL)  # the next one is reported too
        gc.collect()
        assert critical(logged) == []
        assert errors > MESSAGES // 2
        # A burst: every request answered and counted, one warning for all of them.
        warnings, refused = warned(logged), counter.total
        protocol.dataReceived(b'{"v": 1, "cmd": ["listp"], "args": {}}\n' * 5)
        assert [a["error"] for a in replies(transport)] == [admin_wire.BAD_REQUEST] * 5
        assert counter.total == refused + 5 and warned(logged) == warnings + 1
    finally:
        rig.stop()


def peer_link(rig: Rig) -> tuple[PeerNetwork, PeerLink, StringTransport]:
    """A network of member A (never started: no TLS) whose calls run ``rig``'s
    forwarded-change handler, and an identified link from member B over a
    StringTransport. Its watchdog tolerates a minute between lines."""
    clock = Clock()
    network = PeerNetwork(
        clock, clock, A, None,  # type: ignore[arg-type]
        deliver=lambda d, a, m: None,
        link_changed=lambda a, up: None,
        timers=PeerTimers(ping_interval=30.0, ping_timeout=100.0),
    )
    network.set_domains({"D": {A: 1, B: 2}})
    network.call_handler = rig.handler.handle_forwarded
    link = PeerLink(network, None)
    transport = StringTransport()
    link.makeConnection(transport)
    link.identified, link.peer, link.claimed = True, B, {"D": 2}
    return network, link, transport


@pytest.mark.parametrize("command", [["kill"], {"kill": 1}, 5, None])
def test_a_peer_call_whose_command_is_not_text(
    tmp_path: Path, command: Any, logged: list[dict[str, Any]]
) -> None:
    """A member's call whose command is not text: BAD_REQUEST back, one warning.

    Failed before issue 12: a list or object as the command raised TypeError
    (unhashable) inside the handler, answered as INTERNAL; the others were
    refused without a word in the log.
    """
    write_site(tmp_path)
    rig = Rig(tmp_path)
    try:
        network, link, transport = peer_link(rig)
        call = {"t": "call", "id": 7, "d": "D", "body": {"command": command, "args": {},
                                                         "who": "admin"}}
        link.dataReceived(json.dumps(call).encode() + b"\n")
        rig.clock.advance(0)
        [answer] = replies(transport)
        assert (answer["id"], answer["ok"], answer["error"]) == (7, False, "BAD_REQUEST")
        assert "cannot be forwarded" in answer["message"]
        assert network._peers[B].invalid == 1 and warned(logged) == 1
        assert critical(logged) == []
    finally:
        rig.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_peer_calls_with_wrong_types(
    tmp_path: Path, seed: int, logged: list[dict[str, Any]]
) -> None:
    """Every forwarded admin call with wrong types from a member gets an error reply
    and a warning (rate-limited, like invalid peer messages); no CRITICAL, no change.

    Failed before issue 12: a call whose command was not text (or whose args held
    junk) ended in a TypeError; refusals of malformed calls were not reported.
    """
    rng = random.Random(seed)
    write_site(tmp_path)
    rig = Rig(tmp_path)
    try:
        rig.grant()
        network, link, transport = peer_link(rig)
        clock = network.clock
        state = network._peers[B]
        refused_as_malformed = 0
        for _ in range(MESSAGES):
            payload = peer_call(rng)
            warnings, invalid = warned(logged), state.invalid
            before = rig.root.engine.snapshot()
            try:
                data, replied = json.dumps(payload, allow_nan=False), True
            except ValueError:  # NaN or Infinity: not JSON, so not even a call
                data, replied = json.dumps(payload), False
            link.dataReceived(data.encode() + b"\n")
            rig.clock.advance(0)
            answers = replies(transport)
            assert len(answers) == int(replied), (payload, answers)
            malformed = not replied
            for answer in answers:
                assert answer["t"] == "reply" and answer["id"] == payload["id"], answer
                assert answer["ok"] is False, (payload, answer)
                assert answer["error"] != "INTERNAL", (payload, answer)
                # A refusal of what a well-formed call asks (BADPRODUCT here: no
                # product of this daemon is in domain D) is no invalid input.
                malformed = answer["error"] == "BAD_REQUEST"
                refused_as_malformed += malformed
            assert rig.root.engine.snapshot() == before
            assert state.invalid == invalid + malformed, (payload, answers)
            assert warned(logged) == warnings + malformed, (payload, answers)
            assert critical(logged) == [], payload
            clock.advance(INVALID_LOG_INTERVAL + 1)  # the next one is reported too
        assert not transport.disconnecting
        assert refused_as_malformed > MESSAGES // 4
        # A burst: every call answered and counted, one warning for all of them.
        warnings, invalid = warned(logged), state.invalid
        for number in range(1, 6):
            call = {"t": "call", "id": number, "d": "D", "body": {"command": [number]}}
            link.dataReceived(json.dumps(call).encode() + b"\n")
        assert [a["id"] for a in replies(transport)] == [1, 2, 3, 4, 5]
        assert state.invalid == invalid + 5
        assert warned(logged) == warnings + 1
        gc.collect()
        assert critical(logged) == []
    finally:
        rig.stop()
