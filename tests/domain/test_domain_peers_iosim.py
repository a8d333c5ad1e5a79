"""Tests of hqnlsd.domain.peers: two `PeerLink`s of two `PeerNetwork`s in memory.

The links are joined by `twisted.test.iosim` (no sockets, no TLS: the protocol
under the TLS layer, identified with `PeerLink.admit` in place of the handshake)
and every timer runs on one `task.Clock`, so nothing here waits on the wall clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from hqnlsd.domain import peers
from hqnlsd.domain.messages import Message
from hqnlsd.domain.peers import PeerCallError, PeerLink, PeerNetwork, PeerTimers
from tests.domain.test_domain_peers_helpers import addr

A, B = addr("127.0.0.1"), addr("127.0.0.2")
DOMAINS = {"D": {A: 1, B: 2}}
TIMERS = PeerTimers(ping_interval=0.1, ping_timeout=0.5, handshake_timeout=2.0)


class Pair:
    """Networks ``a`` and ``b`` on one clock; A's outgoing link to B joined in memory
    to the link B accepted, both identified and greeted."""

    def __init__(self) -> None:
        """Build both networks and the joined, greeted pair of links."""
        self.clock = Clock()
        self.changes: list[tuple[Any, bool]] = []
        self.a = self._network(A)
        self.b = self._network(B)
        self.client = PeerLink(self.a, B)
        self.server = PeerLink(self.b, None)
        self.pump = iosim.connect(
            self.server,
            iosim.FakeTransport(
                self.server,
                isServer=True,
                hostAddress=IPv4Address("TCP", str(B), peers.DEFAULT_PEER_PORT),
                peerAddress=IPv4Address("TCP", str(A), 40000),
            ),
            self.client,
            iosim.FakeTransport(
                self.client,
                isServer=False,
                hostAddress=IPv4Address("TCP", str(A), 40000),
                peerAddress=IPv4Address("TCP", str(B), peers.DEFAULT_PEER_PORT),
            ),
            clock=self.clock,
        )
        # What the TLS handshake would prove: each end's certificate address.
        self.server.admit(A)
        self.client.admit(B)
        self.pump.flush()

    def _network(self, me: Any) -> PeerNetwork:
        network = PeerNetwork(
            self.clock,
            self.clock,
            me,
            None,  # type: ignore[arg-type]  # no TLS here: never started
            deliver=self._deliver,
            link_changed=lambda address, up: self.changes.append((address, up)),
            timers=TIMERS,
        )
        network.set_domains(DOMAINS)
        return network

    def _deliver(self, domain_id: str, address: Any, message: Message) -> str | None:
        return None

    def run(self, seconds: float) -> None:
        """Let ``seconds`` pass on the clock in ping intervals, moving the data after
        each (so that the watchdogs see the pings and pongs)."""
        steps = round(seconds / TIMERS.ping_interval)
        for _ in range(steps):
            self.clock.advance(TIMERS.ping_interval)
            self.pump.flush()


def test_the_links_greet_and_come_up() -> None:
    """The hellos bring A's outgoing link up (B's link back to A is another one)."""
    pair = Pair()
    assert pair.changes == [(B, True)]
    assert pair.a.is_up(B) and not pair.b.is_up(A)
    assert pair.client.claimed == {"D": 2} and pair.server.claimed == {"D": 1}
    pair.run(2.0)  # pings keep the link alive well past ping_timeout
    assert pair.a.is_up(B)
    assert [info.rtt for info in pair.a.peers()] == [0.0]


def test_a_call_and_its_answer() -> None:
    """A's call runs B's handler for the shared domain; its body comes back."""
    pair = Pair()
    seen: list[tuple[str, Any, dict[str, Any]]] = []

    def handler(domain: str, caller: Any, body: dict[str, Any]) -> dict[str, Any]:
        seen.append((domain, caller, body))
        return {"echo": body["n"]}

    pair.b.call_handler = handler
    answers: list[object] = []
    pair.a.call("D", B, {"n": 7}, 5.0).addBoth(answers.append)
    assert answers == []
    pair.pump.flush()
    assert seen == [("D", A, {"n": 7})]
    assert answers == [{"echo": 7}]
    assert pair.a._calls == {}
    assert pair.clock.getDelayedCalls() and all(
        call.getTime() - pair.clock.seconds() <= TIMERS.ping_interval
        for call in pair.clock.getDelayedCalls()
    ), "the call's timeout is cancelled once it is answered"


def test_a_refused_call_fails_with_the_callees_error() -> None:
    """The handler's `PeerCallError` reaches the caller by name and message."""
    pair = Pair()

    def handler(domain: str, caller: Any, body: dict[str, Any]) -> dict[str, Any]:
        raise PeerCallError("BADPRODUCT", "no such product")

    pair.b.call_handler = handler
    outcomes: list[Any] = []
    pair.a.call("D", B, {}, 5.0).addErrback(lambda failure: outcomes.append(failure.value))
    pair.pump.flush()
    assert [(error.name, error.message) for error in outcomes] == [
        ("BADPRODUCT", "no such product")
    ]


def test_a_call_times_out_on_the_clock() -> None:
    """No reply within the timeout: ``TIMEOUT`` at that time on the clock, the call
    forgotten, and the late reply dropped."""
    pair = Pair()
    held: defer.Deferred[dict[str, Any]] = defer.Deferred()
    pair.b.call_handler = lambda domain, caller, body: held
    outcomes: list[Any] = []
    pair.a.call("D", B, {}, 1.0).addErrback(lambda failure: outcomes.append(failure.value))
    pair.run(0.9)
    assert outcomes == [] and len(pair.a._calls) == 1
    pair.run(0.2)
    assert [error.name for error in outcomes] == ["TIMEOUT"]
    assert "within 1s" in outcomes[0].message
    assert pair.a._calls == {}
    held.callback({"late": True})
    pair.pump.flush()
    assert len(outcomes) == 1 and pair.a.is_up(B), "the late reply is dropped, the link kept"


def test_a_waiting_call_fails_when_the_network_stops() -> None:
    """Stopping the network fails a waiting call with ``UNREACHABLE`` (not later with
    ``TIMEOUT``)."""
    pair = Pair()
    pair.b.call_handler = lambda domain, caller, body: defer.Deferred()
    outcomes: list[Any] = []
    pair.a.call("D", B, {}, 1.0).addErrback(lambda failure: outcomes.append(failure.value))
    pair.pump.flush()
    pair.a.stopService()
    assert [error.name for error in outcomes] == ["UNREACHABLE"]
    pair.clock.advance(2.0)
    assert len(outcomes) == 1


def test_an_over_long_line_closes_the_link() -> None:
    """A line longer than the bound, even before its end arrives, closes the link,
    and A's link to B goes down."""
    pair = Pair()
    assert pair.client.MAX_LENGTH == peers.MAX_LINE
    pair.client.MAX_LENGTH = pair.server.MAX_LENGTH = 1024
    pair.client.transport.write(b"x" * 1000)  # type: ignore[union-attr]
    pair.pump.flush()
    assert pair.a.is_up(B)
    pair.client.transport.write(b"x" * 100)  # type: ignore[union-attr]
    pair.pump.flush()
    assert not pair.a.is_up(B)
    assert pair.changes == [(B, True), (B, False)]
    assert pair.b.peers()[0].inbound is False


def test_a_long_line_in_many_pieces_arrives_whole() -> None:
    """A call whose line comes in small pieces (each without a line end) is read whole."""
    pair = Pair()
    seen: list[dict[str, Any]] = []

    def handler(domain: str, caller: Any, body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {}

    pair.b.call_handler = handler
    line = b'{"t":"call","id":1,"d":"D","body":{"pad":"' + b"y" * 5000 + b'"}}\n'
    for start in range(0, len(line), 7):
        pair.server.dataReceived(line[start : start + 7])
    assert seen == [{"pad": "y" * 5000}]
    assert not pair.server.transport.disconnecting  # type: ignore[union-attr]


def test_the_bound_counts_the_unfinished_line_left_by_a_piece() -> None:
    """The bound applies to the whole unfinished line: the tail left after a line
    end in one piece plus the pieces after it."""
    pair = Pair()
    pair.server.MAX_LENGTH = 1024
    pair.server.dataReceived(b'{"t":"ping","n":1}\n' + b"x" * 600)
    pair.server.dataReceived(b"x" * 424)
    assert not pair.server.transport.disconnecting  # type: ignore[union-attr]
    pair.server.dataReceived(b"x")
    assert pair.server.transport.disconnecting  # type: ignore[union-attr]
