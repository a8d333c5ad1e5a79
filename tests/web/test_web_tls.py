"""`hqnlsd.web.site` over TLS (``--web-tls``): the daemon's member certificate, the
domain CA; only a browser presenting an admin certificate of the CA is answered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.task import Clock
from twisted.trial import unittest

from hqnlsd.tls import DomainCredentials, client_options
from hqnlsd.tools.ca import Issued, create_ca, issue_admin, issue_member
from hqnlsd.web.site import make_web_service
from hqnlsd.web.view import ConsoleView
from tests.web.test_site import WAIT_LIMIT, _RawClient
from tests.web.test_view import NOW, FakeDaemon

NOW_UTC = datetime.now(UTC)


def identity(ca: Issued, issued: Issued) -> DomainCredentials:
    return DomainCredentials(ca.certificate, issued.certificate, issued.key)


class ConsoleOverTLS(unittest.TestCase):
    """A web console listener with TLS on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.ca = create_ca(now=NOW_UTC, days=30)
        member = issue_member(self.ca, "127.0.0.1", now=NOW_UTC)
        clock = Clock()
        clock.advance(NOW)
        self.daemon = FakeDaemon(clock)
        view = ConsoleView(self.daemon)  # type: ignore[arg-type]
        self.service = make_web_service(
            "tcp:0:interface=127.0.0.1", view, self.reactor, identity(self.ca, member)
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        port = self.service.listening_port
        assert port is not None
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.port = address.port

    def get(self, path: bytes, who: DomainCredentials | Any) -> defer.Deferred[bytes]:
        """GET ``path`` over TLS as ``who`` (credentials, or client TLS options): the raw
        answer (empty if refused at the handshake)."""
        client = _RawClient(b"GET " + path + b" HTTP/1.0\r\n\r\n")
        tcp = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)
        if isinstance(who, DomainCredentials):
            who = client_options(who, "127.0.0.1")
        endpoint = wrapClientTLS(who, tcp)
        connected = connectProtocol(endpoint, client)
        answer: defer.Deferred[bytes] = connected.addCallback(lambda _: client.done)
        answer.addTimeout(WAIT_LIMIT, self.reactor)
        return answer

    @defer.inlineCallbacks
    def test_an_admin_certificate_is_answered(self) -> Any:
        self.daemon.take("Widget", "ann")
        admin = issue_admin(self.ca, "alice", now=NOW_UTC)
        raw = yield self.get(b"/api/holders", identity(self.ca, admin))
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.0 200"), head)
        self.assertEqual([h["user"] for h in json.loads(body)["holders"]], ["ann"])

    @defer.inlineCallbacks
    def test_a_member_certificate_is_refused(self) -> Any:
        """Another daemon's certificate is of the CA, but not an admin's: 403."""
        other = issue_member(self.ca, "127.0.0.2", now=NOW_UTC)
        raw = yield self.get(b"/api/holders", identity(self.ca, other))
        self.assertTrue(raw.startswith(b"HTTP/1.0 403"), raw[:200])
        self.assertNotIn(b"holders", raw)

    @defer.inlineCallbacks
    def test_a_certificate_of_another_ca_gets_nothing(self) -> Any:
        """The handshake fails: no HTTP answer at all."""
        stranger_ca = create_ca(now=NOW_UTC, days=30)
        stranger = issue_admin(stranger_ca, "mallory", now=NOW_UTC)
        trusting_ours = identity(self.ca, issue_admin(self.ca, "x", now=NOW_UTC)).trust_root()
        who = ssl.optionsForClientTLS(
            "127.0.0.1",
            trustRoot=trusting_ours,
            extraCertificateOptions={
                "certificate": stranger.certificate,
                "privateKey": stranger.key,
            },
        )
        try:
            raw = yield self.get(b"/api/holders", who)
        except Exception:
            raw = b""
        self.assertNotIn(b"HTTP/", raw)
