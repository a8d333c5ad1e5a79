"""A peer that reaches us is dialled back at once (issue 10: fast admission).

`PeerNetwork` on a `MemoryReactorClock`: every dial is a recorded
``connectTCP`` that the test fails or leaves pending, and the reconnection
backoff runs on the fake clock, so the test is deterministic. Before the fix a
member whose link to a restarted peer was backing off (up to ``retry_max``
plus a second of jitter) let that peer wait out the delay, although the peer
had just connected to it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from hqnlsd.domain.peers import PeerLink, PeerNetwork, PeerTimers
from tests.domain.test_domain_peers_helpers import DomainCA, addr, temporary_directory

A, B = addr("127.0.0.1"), addr("127.0.0.2")
#: The production defaults: the backoff grows to 2 s (plus up to 1 s of jitter).
TIMERS = PeerTimers()


class TestDialBack(unittest.TestCase):
    """Dialling a peer when its inbound link is identified."""

    def setUp(self) -> None:
        """A network for A in domain D = {A, B}, on a memory reactor, started."""
        self.reactor = MemoryReactorClock()
        ca = DomainCA(temporary_directory(self))
        self.network = PeerNetwork(
            self.reactor,
            self.reactor,
            A,
            ca.member(str(A)),
            listen_port=0,
            port_of=lambda address: 4000,
            deliver=lambda *args: None,
            link_changed=lambda *args: None,
            timers=TIMERS,
        )
        self.network.set_domains({"D": {A: 1, B: 2}})
        self.network.startService()
        self.addCleanup(self.network.stopService)

    def dials(self) -> list[Any]:
        """Every connectTCP made so far (to B: the only peer)."""
        return [c for c in self.reactor.tcpClients if c[0] == str(B)]

    def fail_last_dial(self) -> None:
        """The last dial is refused (B is down)."""
        factory = self.dials()[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def back_off(self, failures: int) -> None:
        """B stays down for ``failures`` dials: the backoff grows to its ceiling."""
        for _ in range(failures):
            count = len(self.dials())
            self.fail_last_dial()
            self.reactor.advance(TIMERS.retry_max + 1.01)
            assert len(self.dials()) == count + 1

    def inbound_from_b(self) -> PeerLink:
        """B connects to us and its certificate is accepted (identified)."""
        link = PeerLink(self.network, None)
        link.peer = B
        link.identified = True
        self.network._inbound_identified(link)
        return link

    def test_inbound_link_of_a_peer_we_back_off_from_dials_it_now(self) -> None:
        """B was down long enough for the backoff to reach its ceiling; when B connects
        to us, we dial B in the same instant, with no delay of the fake clock."""
        assert len(self.dials()) == 1  # dialled at start
        self.back_off(6)
        count = len(self.dials())
        self.fail_last_dial()  # now waiting out a backoff of 2-3 s
        assert len(self.dials()) == count
        self.inbound_from_b()
        assert len(self.dials()) == count + 1
        # The backoff is reset too: if that dial fails, the next comes soon.
        self.fail_last_dial()
        self.reactor.advance(TIMERS.retry_initial * 1.5 + 1.0)
        assert len(self.dials()) == count + 2

    def test_no_extra_dial_while_dialling_or_up(self) -> None:
        """A dial in progress is not duplicated, nor is a link that is up."""
        assert len(self.dials()) == 1  # the first dial is still pending
        self.inbound_from_b()
        assert len(self.dials()) == 1
        state = self.network._peers[B]
        self.fail_last_dial()
        state.outbound = PeerLink(self.network, B)  # as if our link to B were up
        self.inbound_from_b()
        assert len(self.dials()) == 1
