# mypy: allow-untyped-calls
"""Test doubles for the client protocol: fake dispatchers, a reply reader, a server.

Imported by the other ``test_protocol_*`` modules. Run as a script
(``python tests/protocols/test_protocol_fakes.py serve [CAPACITY]``) it is a real TCP
server on 127.0.0.1 with `FakeLicences` behind it, used by the benchmark test;
it stops when its standard input closes.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from hqnlsd.protocols import client_side, grammar
from hqnlsd.protocols.client import ClientProtocol, ClientProtocolFactory, Scheduler
from hqnlsd.protocols.replies import Err, Listing, Ok, Reply, format_reply
from hqnlsd.status import Status

PEER = IPv4Address("TCP", "127.0.0.1", 40001)


class FakeLicences:
    """A toy licence pool: enough behaviour to exercise every verb.

    With `clock` and `delay`, every answer comes later through a Deferred.
    """

    def __init__(
        self, capacity: int = 5, clock: Scheduler | None = None, delay: float | None = None
    ) -> None:
        self.capacity = capacity
        self.clock = clock
        self.delay = delay
        self.held: dict[str, grammar.Request] = {}
        self.by_client: dict[str, str] = {}
        self.messages: list[str] = []
        self.calls: list[tuple[grammar.DispatchedCommand, IPv4Address]] = []
        self._numbers = itertools.count(1)

    def dispatch(
        self, command: grammar.DispatchedCommand, peer: IPv4Address
    ) -> Reply | Deferred[Reply]:
        """Answer now, or after `delay` seconds of `clock`."""
        self.calls.append((command, peer))
        reply = self.answer(command)
        if self.delay is None:
            return reply
        assert self.clock is not None
        d: Deferred[Reply] = Deferred()
        self.clock.callLater(self.delay, d.callback, reply)
        return d

    def answer(self, command: grammar.DispatchedCommand) -> Reply:
        """The reply to `command`."""
        match command:
            case grammar.Request():
                return self._request(command)
            case grammar.Update(handle=handle):
                if handle not in self.held:
                    return Err.of(Status.LOSTLICENCE, "request again", handle=handle)
                return Ok.of(handle=handle, period=300)
            case grammar.Release(handle=handle):
                if self.held.pop(handle, None) is None:
                    return Err.of(Status.BADHANDLE, "no such licence", handle=handle)
                return Ok.of(handle=handle)
            case grammar.Query(handle=handle, what=what):
                if handle not in self.held:
                    return Err.of(Status.BADHANDLE, "no such licence", handle=handle)
                return Ok.of(handle=handle, what=what.value)
            case grammar.Users():
                return Listing.of_records(
                    {"handle": h, "user": r.user, "host": r.host, "pid": r.pid}
                    for h, r in self.held.items()
                )
            case grammar.Message(text=text):
                self.messages.append(text)
                return Ok()
        raise AssertionError(f"unexpected command {command!r}")

    def _request(self, request: grammar.Request) -> Reply:
        if request.client is not None and request.client in self.by_client:
            handle = self.by_client[request.client]
            if handle in self.held:
                return Ok.of(handle=handle, period=300, type="floating")
        if len(self.held) + request.units > self.capacity:
            return Err.of(Status.NOLICENCES, f"all {self.capacity} licences are in use")
        handle = f"H{next(self._numbers)}"
        self.held[handle] = request
        if request.client is not None:
            self.by_client[request.client] = handle
        return Ok.of(
            handle=handle, period=300, type="floating", access=8, data="1 2 3 4",
            start="01/01/2026", expiry="31/12/2030",
        )


@dataclasses.dataclass
class Manual:
    """A dispatcher whose every answer is a Deferred the test fires by hand."""

    pending: list[tuple[grammar.DispatchedCommand, Deferred[Reply]]] = dataclasses.field(
        default_factory=list
    )

    def dispatch(
        self, command: grammar.DispatchedCommand, peer: IPv4Address
    ) -> Deferred[Reply]:
        """A Deferred, kept in `pending` with its command."""
        d: Deferred[Reply] = Deferred()
        self.pending.append((command, d))
        return d


@dataclasses.dataclass
class Raising:
    """A dispatcher that raises (or answers with `result` if given)."""

    result: Callable[[], object] | None = None

    def dispatch(self, command: grammar.DispatchedCommand, peer: IPv4Address) -> Reply:
        """Raise, or return whatever `result` makes (possibly not a reply)."""
        if self.result is None:
            raise RuntimeError("dispatcher bug")
        return self.result()  # type: ignore[return-value]


def connect(
    dispatcher: object,
    clock: Clock | None = None,
    peer: IPv4Address = PEER,
    **options: object,
) -> tuple[ClientProtocol, StringTransport]:
    """A protocol from a factory around `dispatcher`, connected to a StringTransport."""
    factory = ClientProtocolFactory(dispatcher, clock or Clock(), **options)  # type: ignore[arg-type]
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


Read = Ok | Err | Listing


def read_replies(data: bytes) -> list[Read]:
    """Every reply in `data`, read the way a client would; AssertionError if malformed.

    A line starting with OK or ERR is a whole reply; any other line starts a
    listing that runs to a line holding a single ".".
    """
    assert data == b"" or data.endswith(b"\r\n"), f"output ends mid-line: {data[-80:]!r}"
    lines = data.decode("utf-8").split("\r\n")[:-1]
    replies: list[Read] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        assert "\n" not in line and "\r" not in line, line
        if line == "OK" or line.startswith(("OK ", "ERR ")):
            replies.append(client_side.parse_reply_line(line))
            i += 1
            continue
        body: list[str] = []
        while True:
            assert i < len(lines), f"listing without its final '.': {lines[-3:]!r}"
            text = client_side.unstuff_listing_line(lines[i])
            i += 1
            if text is None:
                break
            body.append(text)
        replies.append(Listing(tuple(body)))
    return replies


def test_read_replies_reads_all_forms() -> None:
    """The reader used by the protocol tests splits single lines and listings."""
    data = b"".join(
        [
            format_reply(Ok.of("pong")),
            format_reply(Listing((".hidden", "plain"))),
            format_reply(Listing(())),
            format_reply(Err.of(Status.SYNTAX, "bad")),
        ]
    )
    assert read_replies(data) == [
        Ok.of("pong"),
        Listing((".hidden", "plain")),
        Listing(()),
        Err.of(Status.SYNTAX, "bad"),
    ]


def test_fake_licences_counts() -> None:
    """The fake pool refuses past its capacity and frees on release."""
    pool = FakeLicences(capacity=1)
    request = grammar.Request("P", "Q", "1", "u", "h", 1)
    granted = pool.answer(request)
    assert isinstance(granted, Ok)
    refused = pool.answer(request)
    assert isinstance(refused, Err) and refused.status is Status.NOLICENCES
    handle = granted.get("handle")
    assert handle is not None
    assert isinstance(pool.answer(grammar.Release(handle)), Ok)
    assert isinstance(pool.answer(request), Ok)


def serve(capacity: int) -> None:
    """Listen on 127.0.0.1 (ephemeral port), print ``PORT n``, serve until stdin closes."""
    from typing import Any, cast

    from twisted.internet import reactor as global_reactor
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    reactor = cast(Any, global_reactor)  # zope interfaces are opaque to mypy

    class StopOnEOF(Protocol):
        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:
                reactor.stop()

    pool = FakeLicences(capacity=capacity)
    factory = ClientProtocolFactory(pool, reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    stdio.StandardIO(StopOnEOF())
    reactor.run()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000)
