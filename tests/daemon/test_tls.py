"""Tests of hqnlsd.tls: the certificate profile checks and mutual TLS over loopback.

The connection tests run real TCP on 127.0.0.1 in the test's reactor (trial), each
wait bounded; certificates are made in memory with hqnlsd.tools.ca.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from service_identity import CertificateError, VerificationError
from twisted.internet import defer, protocol, ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from hqnlsd.tls import (
    ADMIN_DOWN_USAGE,
    ADMIN_OU,
    MEMBER_OU,
    DomainCredentials,
    PeerIdentity,
    PeerNotRecognised,
    Role,
    TLSConfigError,
    classify_certificate,
    client_options,
    identify_peer,
    server_options,
)
from hqnlsd.tools.ca import (
    Issued,
    certificate_pem,
    create_ca,
    issue_admin,
    issue_member,
    write_issued,
)

NOW = datetime.now(UTC)
WAIT = 30.0  # seconds any connection step may take (generous: the machine may be loaded)


def credentials(ca: Issued, issued: Issued) -> DomainCredentials:
    """The TLS identity of issued under ca."""
    return DomainCredentials(ca.certificate, issued.certificate, issued.key)


def odd_certificate(
    ca: Issued,
    *,
    units: list[str],
    usages: list[x509.ObjectIdentifier] | None,
    ips: list[str] | None = None,
    common_name: str = "x",
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A certificate signed by ca with exactly the given profile (for negative tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if ips:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
            critical=False,
        )
    return builder.sign(ca.key, hashes.SHA256())


@pytest.fixture(scope="module")
def domain() -> Issued:
    """The domain CA shared by the pure tests."""
    return create_ca(now=NOW, days=30)


SERVER_AND_CLIENT = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


class TestClassifyCertificate:
    """Which certificates count as members and admins."""

    def test_member_certificate_gives_its_address(self, domain: Issued) -> None:
        """A member certificate from hqn_ca identifies the member by its IP SAN."""
        member = issue_member(domain, "127.0.0.2", now=NOW)
        identity = classify_certificate(member.certificate, domain.certificate)
        assert identity.role is Role.MEMBER
        assert identity.address == ipaddress.IPv4Address("127.0.0.2")
        assert identity.name is None
        assert str(identity) == "member 127.0.0.2"
        assert len(identity.fingerprint) == 64

    def test_admin_certificate_gives_its_name(self, domain: Issued) -> None:
        """An admin certificate from hqn_ca identifies the admin by its common name."""
        admin = issue_admin(domain, "alice", now=NOW)
        identity = classify_certificate(admin.certificate, domain.certificate)
        assert (identity.role, identity.name, identity.address) == (Role.ADMIN, "alice", None)
        assert str(identity) == "admin alice"

    def test_admin_certificate_allows_down_only_with_the_down_usage(self, domain: Issued) -> None:
        """The permission to stop a daemon remotely is the CA-signed ADMIN_DOWN_USAGE
        extended key usage of an admin certificate; an ordinary admin has not got it."""
        plain = classify_certificate(
            issue_admin(domain, "alice", now=NOW).certificate, domain.certificate
        )
        assert plain.allow_down is False
        allowed = issue_admin(domain, "carol", now=NOW, allow_down=True)
        identity = classify_certificate(allowed.certificate, domain.certificate)
        assert (identity.role, identity.name, identity.allow_down) == (Role.ADMIN, "carol", True)
        assert str(identity) == "admin carol"
        # The same usage hand-made into an admin profile counts; on a member it means nothing.
        odd_admin = odd_certificate(
            domain, units=[ADMIN_OU], usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ADMIN_DOWN_USAGE]
        )
        assert classify_certificate(odd_admin, domain.certificate).allow_down is True
        odd_member = odd_certificate(
            domain,
            units=[MEMBER_OU],
            usages=[*SERVER_AND_CLIENT, ADMIN_DOWN_USAGE],
            ips=["127.0.0.2"],
        )
        member = classify_certificate(odd_member, domain.certificate)
        assert (member.role, member.allow_down) == (Role.MEMBER, False)

    def test_certificate_of_another_ca_is_refused(self, domain: Issued) -> None:
        """A perfectly formed member certificate from another CA is nobody."""
        other = create_ca(now=NOW, days=30)
        stranger = issue_member(other, "127.0.0.2", now=NOW)
        with pytest.raises(PeerNotRecognised, match="not issued by the domain CA"):
            classify_certificate(stranger.certificate, domain.certificate)

    def test_expired_certificate_is_refused(self, domain: Issued) -> None:
        """Outside its validity a certificate is nobody."""
        member = issue_member(domain, "127.0.0.2", now=NOW, days=1)
        later = NOW + timedelta(days=2)
        with pytest.raises(PeerNotRecognised, match="not valid"):
            classify_certificate(member.certificate, domain.certificate, now=later)

    def test_ca_certificate_is_not_a_peer(self, domain: Issued) -> None:
        """The CA's own certificate is not accepted as a peer."""
        with pytest.raises(PeerNotRecognised, match="CA certificate"):
            classify_certificate(domain.certificate, domain.certificate)

    @pytest.mark.parametrize(
        ("units", "usages", "ips", "reason"),
        [
            ([MEMBER_OU], [ExtendedKeyUsageOID.SERVER_AUTH], ["127.0.0.2"], "serverAuth"),
            ([MEMBER_OU], None, ["127.0.0.2"], "serverAuth"),
            ([MEMBER_OU], SERVER_AND_CLIENT, None, "exactly one IPv4"),
            ([MEMBER_OU], SERVER_AND_CLIENT, ["127.0.0.2", "127.0.0.3"], "exactly one IPv4"),
            ([MEMBER_OU], SERVER_AND_CLIENT, ["::1"], "exactly one IPv4"),
            ([ADMIN_OU], SERVER_AND_CLIENT, None, "clientAuth only"),
            ([ADMIN_OU], None, None, "clientAuth only"),
            ([MEMBER_OU, ADMIN_OU], SERVER_AND_CLIENT, ["127.0.0.2"], "neither"),
            ([], SERVER_AND_CLIENT, ["127.0.0.2"], "neither"),
            (["hqnlsd-ca"], SERVER_AND_CLIENT, ["127.0.0.2"], "neither"),
        ],
    )
    def test_certificates_off_profile_are_refused(
        self,
        domain: Issued,
        units: list[str],
        usages: list[x509.ObjectIdentifier] | None,
        ips: list[str] | None,
        reason: str,
    ) -> None:
        """Every deviation from the member/admin profiles is refused with a reason."""
        certificate = odd_certificate(domain, units=units, usages=usages, ips=ips)
        with pytest.raises(PeerNotRecognised, match=reason):
            classify_certificate(certificate, domain.certificate)

    def test_identify_peer_without_certificate(self, domain: Issued) -> None:
        """A transport without a peer certificate is refused, not waved through."""

        class PlainTransport:
            """A TCP transport: no getPeerCertificate at all."""

        class NoCertificateYet:
            """A TLS transport before the handshake."""

            def getPeerCertificate(self) -> None:
                """No certificate yet."""
                return None

        for transport in (PlainTransport(), NoCertificateYet()):
            with pytest.raises(PeerNotRecognised, match="no peer certificate"):
                identify_peer(transport, domain.certificate)


class TestDomainCredentials:
    """Loading and checking this side's certificate and key."""

    def test_load_from_files(self, domain: Issued, tmp_path: Path) -> None:
        """Files written by hqn_ca load back into working credentials."""
        member = issue_member(domain, "127.0.0.1", now=NOW)
        key_path, cert_path = write_issued(member, tmp_path / "m")
        ca_path = tmp_path / "ca.crt"
        ca_path.write_bytes(certificate_pem(domain.certificate))
        loaded = DomainCredentials.load(ca_path, cert_path, key_path)
        assert loaded.certificate == member.certificate
        assert loaded.ca_certificate == domain.certificate

    def test_key_readable_by_others_is_refused(self, domain: Issued, tmp_path: Path) -> None:
        """A private key file that others may read is refused."""
        member = issue_member(domain, "127.0.0.1", now=NOW)
        key_path, cert_path = write_issued(member, tmp_path / "m")
        key_path.chmod(0o644)
        ca_path = tmp_path / "ca.crt"
        ca_path.write_bytes(certificate_pem(domain.certificate))
        with pytest.raises(TLSConfigError, match="chmod 600"):
            DomainCredentials.load(ca_path, cert_path, key_path)

    def test_missing_file_is_a_clear_error(self, tmp_path: Path) -> None:
        """A missing file is named in the error."""
        with pytest.raises(TLSConfigError, match="cannot read certificate"):
            DomainCredentials.load(tmp_path / "ca.crt", tmp_path / "m.crt", tmp_path / "m.key")

    def test_key_of_another_certificate_is_refused(self, domain: Issued) -> None:
        """A key that does not match the certificate is refused."""
        first = issue_member(domain, "127.0.0.1", now=NOW)
        second = issue_member(domain, "127.0.0.1", now=NOW)
        with pytest.raises(TLSConfigError, match="does not belong"):
            DomainCredentials(domain.certificate, first.certificate, second.key)

    def test_certificate_of_another_ca_is_refused(self, domain: Issued) -> None:
        """Own certificate issued by another CA is refused at load time."""
        other = create_ca(now=NOW, days=30)
        stranger = issue_member(other, "127.0.0.1", now=NOW)
        with pytest.raises(TLSConfigError, match="not issued by the domain CA"):
            credentials(domain, stranger)

    def test_client_options_need_an_ipv4_address(self, domain: Issued) -> None:
        """The expected server must be named by its IPv4 address."""
        member = credentials(domain, issue_member(domain, "127.0.0.1", now=NOW))
        with pytest.raises(TLSConfigError, match="not an IPv4 address"):
            client_options(member, "localhost")


# -- real TLS over loopback --------------------------------------------------------


@implementer(IHandshakeListener)
class Side(protocol.Protocol):
    """One end of a test connection: says hello after the handshake, records all."""

    def __init__(self, ca: x509.Certificate, greeting: bytes) -> None:
        self.ca = ca
        self.greeting = greeting
        self.handshake_done = False
        self.identity: PeerIdentity | None = None
        self.identity_error: Exception | None = None
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.lost_reason: Failure | None = None
        self.got_data: defer.Deferred[bytes] = defer.Deferred()

    def handshakeCompleted(self) -> None:
        """Identify the peer and greet it."""
        self.handshake_done = True
        try:
            self.identity = identify_peer(self.transport, self.ca)
        except PeerNotRecognised as e:
            self.identity_error = e
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        """Keep application data (only ever delivered after verification)."""
        self.received += data
        if not self.got_data.called:
            self.got_data.callback(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Record the reason and fire lost."""
        self.lost_reason = reason
        self.lost.callback(None)


class SideFactory(protocol.ClientFactory):
    """Builds Sides and remembers them."""

    def __init__(self, ca: x509.Certificate, greeting: bytes) -> None:
        self.ca = ca
        self.greeting = greeting
        self.built: list[Side] = []
        self.first: defer.Deferred[Side] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Side:
        """A new recorded Side."""
        side = Side(self.ca, self.greeting)
        self.built.append(side)
        if not self.first.called:
            self.first.callback(side)
        return side


class TestMutualTLS(unittest.TestCase):
    """Mutual TLS between real sockets on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        """A domain CA, a stranger CA, and their certificates."""
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.ca = create_ca(now=NOW, days=30)
        self.other_ca = create_ca(now=NOW, days=30)
        self.server_member = credentials(self.ca, issue_member(self.ca, "127.0.0.1", now=NOW))
        self.client_member = credentials(self.ca, issue_member(self.ca, "127.0.0.2", now=NOW))
        self.admin = credentials(self.ca, issue_admin(self.ca, "alice", now=NOW))

    def bounded(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """d, failing if it takes longer than WAIT seconds."""
        return d.addTimeout(WAIT, self.reactor)

    @defer.inlineCallbacks
    def connect(self, server_creator: Any, client_creator: Any, host: str = "127.0.0.1") -> Any:
        """Listen on host with server_creator, connect with client_creator; return both Sides."""
        server_factory = SideFactory(self.ca.certificate, b"hello from server")
        port = self.reactor.listenSSL(0, server_factory, server_creator, interface=host)
        self.addCleanup(port.stopListening)
        client_factory = SideFactory(self.ca.certificate, b"hello from client")
        self.reactor.connectSSL(
            host, port.getHost().port, client_factory, client_creator, timeout=WAIT
        )
        client = yield self.bounded(client_factory.first)
        server = yield self.bounded(server_factory.first)
        return server, client

    @defer.inlineCallbacks
    def closed(self, *sides: Side) -> Any:
        """Wait (bounded) until every side's connection is gone."""
        yield self.bounded(defer.gatherResults([side.lost for side in sides]))

    @defer.inlineCallbacks
    def test_members_authenticate_each_other(self) -> Any:
        """Member to member: both handshakes complete and each knows the other."""
        server, client = yield self.connect(
            server_options(self.server_member),
            client_options(self.client_member, "127.0.0.1"),
        )
        yield self.bounded(server.got_data)
        yield self.bounded(client.got_data)
        self.assertEqual(server.received, b"hello from client")
        self.assertEqual(client.received, b"hello from server")
        self.assertEqual(str(server.identity), "member 127.0.0.2")
        self.assertEqual(str(client.identity), "member 127.0.0.1")
        client.transport.loseConnection()
        yield self.closed(server, client)

    @defer.inlineCallbacks
    def test_admin_client_is_identified(self) -> Any:
        """An admin certificate is accepted by TLS and identified as an admin."""
        server, client = yield self.connect(
            server_options(self.server_member),
            client_options(self.admin, "127.0.0.1"),
        )
        yield self.bounded(server.got_data)
        self.assertIsNotNone(server.identity)
        assert server.identity is not None
        self.assertEqual((server.identity.role, server.identity.name), (Role.ADMIN, "alice"))
        client.transport.loseConnection()
        yield self.closed(server, client)

    @defer.inlineCallbacks
    def assert_server_refuses(self, client_creator: Any) -> Any:
        """The server never completes a handshake nor sees data; both ends close."""
        server, client = yield self.connect(server_options(self.server_member), client_creator)
        yield self.closed(server, client)
        self.assertFalse(server.handshake_done)
        self.assertEqual(server.received, b"")
        self.assertEqual(client.received, b"")
        self.assertIsNone(server.identity)

    @defer.inlineCallbacks
    def assert_client_refuses(self, server_credentials: DomainCredentials, address: str) -> Any:
        """The client refuses the server: no peer identity and no data on either side."""
        server, client = yield self.connect(
            server_options(server_credentials), client_options(self.client_member, address)
        )
        yield self.closed(server, client)
        self.assertIsNone(client.identity)
        self.assertEqual(client.received, b"")
        self.assertEqual(server.received, b"")
        self.assertFalse(server.handshake_done)
        return client

    def test_client_certificate_from_another_ca_is_refused(self) -> Any:
        """A client whose certificate another CA issued cannot connect."""
        foreign = issue_member(self.other_ca, "127.0.0.2", now=NOW)
        creator = ssl.optionsForClientTLS(
            "127.0.0.1",
            trustRoot=ssl.Certificate.loadPEM(certificate_pem(self.ca.certificate)),
            extraCertificateOptions={
                "certificate": foreign.certificate,
                "privateKey": foreign.key,
            },
        )
        return self.assert_server_refuses(creator)

    def test_client_without_certificate_is_refused(self) -> Any:
        """A client that presents no certificate cannot connect."""
        creator = ssl.optionsForClientTLS(
            "127.0.0.1", trustRoot=ssl.Certificate.loadPEM(certificate_pem(self.ca.certificate))
        )
        return self.assert_server_refuses(creator)

    def test_server_certificate_from_another_ca_is_refused(self) -> Any:
        """A server whose certificate another CA issued is refused by the client."""
        foreign = credentials(self.other_ca, issue_member(self.other_ca, "127.0.0.1", now=NOW))
        return self.assert_client_refuses(foreign, "127.0.0.1")

    @defer.inlineCallbacks
    def test_member_certificate_for_wrong_address_is_refused(self) -> Any:
        """A genuine member certificate for another address is refused by the client,
        and for that reason (service_identity), not for some other fault."""
        client = yield self.assert_client_refuses(self.client_member, "127.0.0.1")
        self.assertIsNotNone(client.lost_reason)
        self.assertTrue(client.lost_reason.check(VerificationError), client.lost_reason)

    @defer.inlineCallbacks
    def test_same_member_certificate_at_its_own_address_is_accepted(self) -> Any:
        """Control for the test above: the same server certificate passes at 127.0.0.2."""
        server, client = yield self.connect(
            server_options(self.client_member),
            client_options(self.server_member, "127.0.0.2"),
            host="127.0.0.2",
        )
        yield self.bounded(client.got_data)
        self.assertEqual(str(client.identity), "member 127.0.0.2")
        self.assertEqual(str(server.identity), "member 127.0.0.1")
        client.transport.loseConnection()
        yield self.closed(server, client)

    @defer.inlineCallbacks
    def test_admin_certificate_cannot_serve(self) -> Any:
        """An admin certificate (clientAuth only, no IP) is refused as a server certificate."""
        yield self.assert_client_refuses(self.admin, "127.0.0.1")
        # Twisted logs service_identity's complaint (no subjectAltName) on the way.
        self.flushLoggedErrors(CertificateError)
