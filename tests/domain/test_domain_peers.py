"""Tests of hqnlsd.domain.peers: line framing, watchdogs, and real mutual-TLS links.

The framing and watchdog tests drive one `PeerLink` over a `StringTransport`
with a `task.Clock`. The link tests run `PeerNetwork`s on 127.0.0.1, .2 and
.4 in the test reactor with certificates from `hqnlsd.tools.ca`, every wait
bounded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from hqnlsd.domain import peers
from hqnlsd.domain.messages import Ack, Message, Prepare, encode
from hqnlsd.domain.peers import PeerCallError, PeerLink, PeerNetwork, PeerTimers
from hqnlsd.domain.view import Ballot
from tests.domain.test_domain_peers_helpers import (
    DomainCA,
    addr,
    pause,
    temporary_directory,
    wait_until,
)

A, B, C = addr("127.0.0.1"), addr("127.0.0.2"), addr("127.0.0.4")
TIMERS = PeerTimers(
    ping_interval=0.1, ping_timeout=0.5, handshake_timeout=2.0, retry_initial=0.05, retry_max=0.3
)
WAIT = 10.0


# -- one link over a StringTransport -------------------------------------------------


class FakeNetwork:
    """What a `PeerLink` uses of its `PeerNetwork`, recorded."""

    def __init__(self) -> None:
        """A network on a test clock."""
        self.clock = Clock()
        self.timers = TIMERS
        self.me = A
        self.domains = {"D": {A: 1, B: 2}}
        self.delivered: list[tuple[str, Any, Message]] = []
        self.lost: list[PeerLink] = []
        self.seen: list[float] = []
        self.rtts: list[float] = []
        self.up: list[PeerLink] = []
        self.invalid: list[str] = []

    def _invalid(self, link: PeerLink, why: str, domain_id: str | None = None) -> None:
        self.invalid.append(why)

    def _seen(self, address: Any, now: float) -> None:
        self.seen.append(now)

    def _rtt(self, address: Any, rtt: float) -> None:
        self.rtts.append(rtt)

    def _deliver(self, domain_id: str, address: Any, message: Message) -> None:
        self.delivered.append((domain_id, address, message))

    def _link_lost(self, link: PeerLink) -> None:
        self.lost.append(link)

    def _outbound_up(self, link: PeerLink) -> None:
        self.up.append(link)


def identified_link(outbound: bool = False) -> tuple[PeerLink, FakeNetwork, StringTransport]:
    """A link from/to B that has passed identification and agreed on domain D."""
    network = FakeNetwork()
    link = PeerLink(network, B if outbound else None)  # type: ignore[arg-type]
    transport = StringTransport()
    link.makeConnection(transport)
    link.identified = True
    link.peer = B
    link.claimed = {"D": 2}
    return link, network, transport


def line(payload: object) -> bytes:
    """One wire line."""
    return json.dumps(payload).encode() + b"\n"


PREPARE = Prepare(3, Ballot(2, 2))


def test_lines_split_and_joined_arbitrarily() -> None:
    """Messages arrive whole however the stream is cut."""
    link, network, _ = identified_link()
    data = line({"t": "m", "d": "D", "m": encode(PREPARE)}) * 2
    link.dataReceived(data[:7])
    assert network.delivered == []
    link.dataReceived(data[7:-3])
    assert network.delivered == [("D", B, PREPARE)]
    link.dataReceived(data[-3:])
    assert network.delivered == [("D", B, PREPARE)] * 2


def test_messages_of_other_domains_and_bad_lines_are_dropped() -> None:
    """A domain the link did not agree on, bad JSON or a bad message: dropped, link kept."""
    link, network, transport = identified_link()
    link.dataReceived(line({"t": "m", "d": "E", "m": encode(PREPARE)}))
    link.dataReceived(b"{not json\n")
    link.dataReceived(line({"t": "m", "d": "D", "m": {"type": "prepare"}}))
    link.dataReceived(line({"t": "weird"}))
    assert network.delivered == []
    assert not transport.disconnecting
    link.dataReceived(line({"t": "m", "d": "D", "m": encode(PREPARE)}))
    assert len(network.delivered) == 1


def test_too_long_a_line_drops_the_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line longer than MAX_LINE (even unfinished) ends the connection."""
    monkeypatch.setattr(peers, "MAX_LINE", 64)
    link, network, transport = identified_link()
    link.dataReceived(b"x" * 40)
    assert not transport.disconnecting
    link.dataReceived(b"x" * 40)
    assert transport.disconnecting
    assert network.delivered == []


def test_data_before_identification_drops_the_link() -> None:
    """Nothing is read from a peer whose certificate was not accepted."""
    link, network, transport = identified_link()
    link.identified = False
    link.dataReceived(line({"t": "m", "d": "D", "m": encode(PREPARE)}))
    assert transport.disconnecting and network.delivered == []


def test_ping_is_answered_and_pong_measures_rtt() -> None:
    """The dialler pings on its watchdog; a pong gives the round-trip time."""
    link, network, transport = identified_link(outbound=True)
    link.dataReceived(line({"t": "hello", "v": 1, "addr": str(B), "domains": {"D": 2}}))
    assert network.up == [link]
    transport.clear()
    network.clock.advance(TIMERS.ping_interval)
    sent = [json.loads(x) for x in transport.value().splitlines()]
    assert sent == [{"t": "ping", "n": 1}]
    network.clock.advance(0.03)
    link.dataReceived(line({"t": "pong", "n": 1}))
    assert network.rtts == [pytest.approx(0.03)]
    transport.clear()
    link.dataReceived(line({"t": "ping", "n": 9}))
    assert json.loads(transport.value()) == {"t": "pong", "n": 9}


def test_hello_with_another_rank_ignores_that_domain() -> None:
    """A peer whose hosts file ranks it differently is not heard in that domain."""
    link, network, _ = identified_link(outbound=True)
    link.dataReceived(line({"t": "hello", "v": 1, "addr": str(B), "domains": {"D": 5}}))
    assert link.claimed == {}
    link.dataReceived(line({"t": "m", "d": "D", "m": encode(PREPARE)}))
    assert network.delivered == []


def test_hello_of_another_version_drops_the_link() -> None:
    """Peers speaking another protocol version are not talked to."""
    link, network, transport = identified_link(outbound=True)
    link.dataReceived(line({"t": "hello", "v": 99, "domains": {}}))
    assert transport.disconnecting and network.up == []


def test_silence_drops_a_half_open_link() -> None:
    """Nothing heard for ping_timeout: the link is aborted (the peer may be dead)."""
    link, network, transport = identified_link(outbound=True)
    link.dataReceived(line({"t": "hello", "v": 1, "domains": {"D": 2}}))
    for _ in range(int(TIMERS.ping_timeout / TIMERS.ping_interval)):
        assert not transport.disconnecting
        network.clock.advance(TIMERS.ping_interval)
    network.clock.advance(TIMERS.ping_interval)
    assert transport.disconnecting


def test_no_hello_in_time_drops_the_link() -> None:
    """A dialled peer that never greets (it refused our certificate) is dropped."""
    network = FakeNetwork()
    link = PeerLink(network, B)  # type: ignore[arg-type]
    transport = StringTransport()
    link.makeConnection(transport)
    network.clock.advance(TIMERS.handshake_timeout - TIMERS.ping_interval)
    assert not transport.disconnecting
    network.clock.advance(2 * TIMERS.ping_interval)
    assert transport.disconnecting


def test_timers_must_leave_room_for_a_ping() -> None:
    """A ping timeout shorter than the ping interval would drop healthy links."""
    with pytest.raises(ValueError):
        PeerTimers(ping_interval=1.0, ping_timeout=0.5)


# -- real links over loopback TLS ----------------------------------------------------


class TestPeerLinks(unittest.TestCase):
    """PeerNetworks on loopback addresses with mutual TLS."""

    timeout = 60

    def setUp(self) -> None:
        """A domain CA and an empty address book."""
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.ca = DomainCA(temporary_directory(self))
        self.ports: dict[Any, int] = {}
        self.received: dict[Any, list[tuple[str, Any, Message]]] = {}
        self.changes: dict[Any, list[tuple[Any, bool]]] = {}

    def network(
        self,
        me: Any,
        domains: dict[str, dict[Any, int]],
        ca: Any = None,
        certificate_for: Any = None,
        check_source: bool = True,
    ) -> PeerNetwork:
        """Start a PeerNetwork for ``me`` serving ``domains``; stopped at cleanup.

        ``certificate_for``: present the certificate of that address instead of ``me``'s.
        """
        received: list[tuple[str, Any, Message]] = []
        changes: list[tuple[Any, bool]] = []
        self.received[me], self.changes[me] = received, changes
        network = PeerNetwork(
            self.reactor,
            self.reactor,
            me,
            (ca or self.ca).member(str(certificate_for or me)),
            listen_port=0,
            port_of=self.ports.get,
            deliver=lambda d, a, m: received.append((d, a, m)),
            link_changed=lambda a, up: changes.append((a, up)),
            timers=TIMERS,
            check_source=check_source,
        )
        network.set_domains(domains)
        network.startService()
        port = network.listening_port
        assert port is not None
        self.ports[me] = port
        self.addCleanup(lambda: defer.maybeDeferred(network.stopService))
        return network

    @defer.inlineCallbacks
    def test_members_link_up_and_talk(self) -> Any:
        """Two members link both ways, exchange messages, measure round trips."""
        domains = {"D": {A: 1, B: 2}}
        one = self.network(A, domains)
        two = self.network(B, domains)
        yield wait_until(self.reactor, lambda: one.is_up(B) and two.is_up(A), WAIT)
        assert self.changes[A] == [(B, True)]
        one.send("D", B, PREPARE)
        two.send("D", A, Ack(1, 2.5, 0, True))
        yield wait_until(self.reactor, lambda: bool(self.received[B] and self.received[A]), WAIT)
        assert self.received[B] == [("D", A, PREPARE)]
        assert self.received[A] == [("D", B, Ack(1, 2.5, 0, True))]
        yield wait_until(self.reactor, lambda: one.peers()[0].rtt is not None, WAIT)
        (info,) = one.peers()
        assert (info.address, info.up, info.inbound, info.domains) == (B, True, True, ("D",))
        assert info.connects == 1 and info.last_seen is not None

    @defer.inlineCallbacks
    def test_a_stranger_is_refused(self) -> Any:
        """A certificate of our CA for an address outside our domains gets no link."""
        self.network(A, {"D": {A: 1, B: 2}})
        stranger = self.network(C, {"D": {A: 1, B: 2, C: 3}})
        yield pause(self.reactor, 1.0)
        assert not stranger.is_up(A)
        assert self.changes[C] == [] and self.received[A] == []

    @defer.inlineCallbacks
    def test_another_ca_is_refused(self) -> Any:
        """A member certificate from another CA fails the TLS handshake both ways."""
        other = DomainCA(temporary_directory(self))
        domains = {"D": {A: 1, B: 2}}
        one = self.network(A, domains)
        two = self.network(B, domains, ca=other)
        yield pause(self.reactor, 1.0)
        assert not one.is_up(B) and not two.is_up(A)

    @defer.inlineCallbacks
    def test_disagreeing_ranks_silence_only_that_domain(self) -> Any:
        """Hosts files that rank a member differently: that domain is ignored, others work."""
        one = self.network(A, {"D": {A: 1, B: 2}, "E": {A: 1, B: 2}})
        two = self.network(B, {"D": {A: 1, B: 3}, "E": {A: 1, B: 2}})
        yield wait_until(self.reactor, lambda: one.is_up(B) and two.is_up(A), WAIT)
        two.send("D", A, PREPARE)
        two.send("E", A, PREPARE)
        yield wait_until(self.reactor, lambda: bool(self.received[A]), WAIT)
        yield pause(self.reactor, 0.2)
        assert self.received[A] == [("E", B, PREPARE)]

    @defer.inlineCallbacks
    def test_half_open_link_is_detected_and_redialled(self) -> Any:
        """A peer that stops reading is dropped after ping_timeout, then dialled again."""
        domains = {"D": {A: 1, B: 2}}
        one = self.network(A, domains)
        two = self.network(B, domains)
        yield wait_until(self.reactor, lambda: one.is_up(B) and bool(two._peers[A].inbound), WAIT)
        (inbound,) = two._peers[A].inbound
        transport: Any = inbound.transport
        transport.pauseProducing()
        yield wait_until(self.reactor, lambda: (B, False) in self.changes[A], WAIT)
        yield wait_until(self.reactor, lambda: self.changes[A][-1] == (B, True), WAIT)
        assert one.is_up(B) and one.peers()[0].connects >= 2

    @defer.inlineCallbacks
    def test_a_certificate_used_from_another_address_is_refused(self) -> Any:
        """B's certificate presented from 127.0.0.4 gets no link, except where the
        source check is turned off (for NAT)."""
        e = addr("127.0.0.5")
        self.network(A, {"D": {A: 1, B: 2}})
        self.network(e, {"D": {A: 1, B: 2, e: 3}}, check_source=False)
        impostor = self.network(C, {"D": {A: 1, e: 3, C: 2}}, certificate_for=B)
        yield wait_until(self.reactor, lambda: impostor.is_up(e), WAIT)
        yield pause(self.reactor, 0.3)
        assert not impostor.is_up(A)

    @defer.inlineCallbacks
    def test_calls_are_answered_refused_or_timed_out(self) -> Any:
        """A call runs the callee's handler for a shared domain and returns its body;
        the callee's refusal, a domain not shared, no handler, no link and silence
        each fail with their own PeerCallError."""
        domains = {"D": {A: 1, B: 2}}
        one = self.network(A, domains)
        two = self.network(B, {**domains, "E": {B: 1, C: 2}})
        seen: list[tuple[str, Any, dict[str, Any]]] = []
        hold: defer.Deferred[dict[str, Any]] = defer.Deferred()

        def handler(domain: str, caller: Any, body: dict[str, Any]) -> Any:
            seen.append((domain, caller, body))
            if body.get("refuse"):
                raise PeerCallError("BADPRODUCT", "no such product")
            if body.get("hold"):
                return hold
            return {"echo": body["n"]}

        with pytest.raises(PeerCallError) as unreachable:
            yield one.call("D", B, {"n": 1}, 1.0)
        assert unreachable.value.name == "UNREACHABLE"
        yield wait_until(self.reactor, lambda: one.is_up(B), WAIT)
        with pytest.raises(PeerCallError) as no_handler:
            yield one.call("D", B, {"n": 1}, WAIT)
        assert no_handler.value.name == "NOTVERIFIED"
        two.call_handler = handler
        answer = yield one.call("D", B, {"n": 7}, WAIT)
        assert answer == {"echo": 7}
        assert seen == [("D", A, {"n": 7})]
        with pytest.raises(PeerCallError) as refused:
            yield one.call("D", B, {"refuse": True}, WAIT)
        assert (refused.value.name, refused.value.message) == ("BADPRODUCT", "no such product")
        with pytest.raises(PeerCallError) as foreign:
            yield one.call("E", B, {"n": 1}, WAIT)
        assert foreign.value.name == "NOTVERIFIED" and len(seen) == 2
        with pytest.raises(PeerCallError) as silent:
            yield one.call("D", B, {"hold": True}, 0.3)
        assert silent.value.name == "TIMEOUT"
        hold.callback({"late": True})  # a late reply is dropped
        yield pause(self.reactor, 0.2)
        assert one._calls == {}
