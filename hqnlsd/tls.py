"""Mutual TLS rooted in the domain CA, and who a connected peer is.

Certificate profile (made by ``hqn_ca``, checked here):

- Domain CA: ``OU=hqnlsd-ca``, basicConstraints CA:true (path length 0).
- Member (a daemon): ``CN=<IPv4 address>``, ``OU=hqnlsd-member``, exactly one IPv4
  subjectAltName (the address it serves on), extended key usage serverAuth AND
  clientAuth, so one certificate is used both to accept and to open peer links.
- Admin (a person running ``hqn_lsa`` remotely): ``CN=<name>``, ``OU=hqnlsd-admin``,
  extended key usage clientAuth only, no subjectAltName. It can never serve as a
  daemon's certificate. An admin certificate made with ``hqn_ca admin --allow-down``
  also carries the extended key usage `ADMIN_DOWN_USAGE` (``hqnlsd-down``): the CA's
  leave to stop a daemon remotely (``hqn_lsa down`` over TLS). Being in the signed
  certificate, it cannot be added by its holder; a daemon reads it only on an admin
  certificate (`PeerIdentity.allow_down`), and other TLS software ignores it.

Trust is the domain CA alone: the system's root certificates are never loaded.
A client checks the server's certificate against the IPv4 address it meant to
reach (service_identity, IP subjectAltName); a server requires a client
certificate issued by the domain CA. The TLS layer only proves "signed by our CA";
what the peer may do is decided by the caller from `identify_peer` (a member of
which address, or an admin of which name), after the handshake completes (see
``twisted.internet.interfaces.IHandshakeListener``).

Beware (TLS 1.3): a client's ``handshakeCompleted`` fires before the server has
judged the client's certificate; a refused client sees the connection drop right
after. A client must therefore not take "handshake completed" as "accepted": wait
for the server's first application message.
"""

# Twisted's TLS helpers are not fully annotated; calling them is unavoidable here,
# so that one check is relaxed for this file only.

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import ssl

CA_OU = "hqnlsd-ca"
"""organizationalUnitName of the domain CA certificate."""

MEMBER_OU = "hqnlsd-member"
"""organizationalUnitName marking a member (daemon) certificate."""

ADMIN_OU = "hqnlsd-admin"
"""organizationalUnitName marking an admin (hqn_lsa user) certificate."""

ADMIN_DOWN_USAGE = x509.ObjectIdentifier("2.25.130189630881939479549375325192927829519")
"""Extended key usage of an admin certificate allowed to stop a daemon (``down``) remotely.

An OID of the ``2.25`` arc (ITU-T X.667 / RFC 4122: a UUID as an integer, here
61f19c61-162f-446d-bf74-d8fb398bde0f), which needs no registration and names
nothing else.
"""

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2
"""The oldest TLS version either side accepts."""

SUPPORTED_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    rsa.RSAPrivateKey,
)


class TLSConfigError(Exception):
    """Certificate or key files cannot be used; the message says which and why."""


class PeerNotRecognised(Exception):
    """The peer's certificate is missing or is not a domain member or admin."""


class Role(enum.Enum):
    """What a certificate makes its holder."""

    MEMBER = "member"
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a verified connection.

    A member has an address (its IP subjectAltName) and no name; an admin has a
    name (its commonName) and no address.
    """

    role: Role
    address: ipaddress.IPv4Address | None
    name: str | None
    fingerprint: str
    """SHA-256 of the certificate (DER), lower-case hex: for logs and audit."""
    allow_down: bool = False
    """An admin whose certificate carries `ADMIN_DOWN_USAGE`: may stop the daemon
    remotely. Always False for a member."""

    def __str__(self) -> str:
        """A short label for logs: ``member 127.0.0.2`` or ``admin alice``."""
        who = self.address if self.role is Role.MEMBER else self.name
        return f"{self.role.value} {who}"


def fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 fingerprint of a certificate, lower-case hex without colons."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


# -- loading -----------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    """Read a file or raise TLSConfigError naming it."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def load_certificate(path: Path) -> x509.Certificate:
    """Load one PEM certificate (the first of the file) or raise TLSConfigError."""
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TLSConfigError(f"{path} is not a PEM certificate") from None


def load_private_key(path: Path) -> PrivateKeyTypes:
    """Load an unencrypted PEM private key that only its owner may read."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise TLSConfigError(f"cannot read private key {path}: {e.strerror or e}") from None
    if mode & 0o077:
        raise TLSConfigError(
            f"private key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, SUPPORTED_KEY_TYPES):
        raise TLSConfigError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _public_der(key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key."""
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def issued_by(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    """True if ca_certificate's key signed certificate (and names match)."""
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclasses.dataclass(frozen=True)
class DomainCredentials:
    """This daemon's (or admin's) TLS identity and the domain CA it trusts."""

    ca_certificate: x509.Certificate
    certificate: x509.Certificate
    private_key: PrivateKeyTypes

    def __post_init__(self) -> None:
        """Check that the key fits the certificate and the CA issued it."""
        if _public_der(self.private_key.public_key()) != _public_der(self.certificate.public_key()):
            raise TLSConfigError("the private key does not belong to the certificate")
        if not issued_by(self.certificate, self.ca_certificate):
            raise TLSConfigError("the certificate was not issued by the domain CA")

    @classmethod
    def load(cls, ca_certificate: Path, certificate: Path, private_key: Path) -> DomainCredentials:
        """Load the CA certificate, own certificate and own key from PEM files."""
        ca = load_certificate(ca_certificate)
        own = load_certificate(certificate)
        key = load_private_key(private_key)
        try:
            return cls(ca, own, key)
        except TLSConfigError as e:
            raise TLSConfigError(f"{certificate}: {e}") from None

    def _identity_options(self) -> dict[str, Any]:
        """CertificateOptions arguments presenting our certificate and key.

        pyOpenSSL takes the cryptography objects directly (its own X509/PKey
        wrappers are deprecated for this).
        """
        return {"certificate": self.certificate, "privateKey": self.private_key}

    def trust_root(self) -> Any:
        """An IOpenSSLTrustRoot holding the domain CA only (no system roots)."""
        ca = ssl.Certificate(crypto.X509.from_cryptography(self.ca_certificate))
        return ssl.trustRootFromCertificates([ca])


def server_options(credentials: DomainCredentials) -> ssl.CertificateOptions:
    """TLS server options: present our certificate, REQUIRE a client certificate
    issued by the domain CA (handshake fails without one), TLS 1.2 or later."""
    return ssl.CertificateOptions(
        trustRoot=credentials.trust_root(),
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        **credentials._identity_options(),
    )


def client_options(
    credentials: DomainCredentials, expected_address: str | ipaddress.IPv4Address
) -> Any:
    """TLS client options (an IOpenSSLClientConnectionCreator) for reaching a member.

    Presents our certificate; accepts only a server certificate issued by the domain
    CA whose IP subjectAltName is expected_address (checked by service_identity).
    Raises TLSConfigError if expected_address is not an IPv4 address.
    """
    try:
        address = ipaddress.IPv4Address(str(expected_address))
    except ValueError:
        raise TLSConfigError(f"{expected_address!r} is not an IPv4 address") from None
    return ssl.optionsForClientTLS(
        str(address),
        trustRoot=credentials.trust_root(),
        extraCertificateOptions={
            "raiseMinimumTo": MINIMUM_TLS_VERSION,
            **credentials._identity_options(),
        },
    )


# -- who is the peer ----------------------------------------------------------------


def _extension(certificate: x509.Certificate, kind: type[Any]) -> Any:
    """The value of an extension, or None if absent."""
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _units(certificate: x509.Certificate) -> set[str]:
    """The organizationalUnitName values of the subject."""
    return {
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME
        )
    }


def _common_name(certificate: x509.Certificate) -> str | None:
    """The single commonName of the subject, or None."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else None


def classify_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    *,
    now: datetime | None = None,
) -> PeerIdentity:
    """Tell a member from an admin by the certificate profile; raise otherwise.

    Checks again (defence in depth, the TLS handshake already did) that the domain
    CA issued the certificate and that it is valid at now (default: the current
    time); then requires exactly one of the two profiles described in the module
    docstring. Raises PeerNotRecognised with the reason.
    """
    if not issued_by(certificate, ca_certificate):
        raise PeerNotRecognised("certificate not issued by the domain CA")
    moment = now if now is not None else datetime.now(UTC)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise PeerNotRecognised("certificate not valid at this time")
    constraints = _extension(certificate, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise PeerNotRecognised("a CA certificate is not a peer")
    usages = _extension(certificate, x509.ExtendedKeyUsage)
    usage_set = set(usages) if usages is not None else set()
    server = ExtendedKeyUsageOID.SERVER_AUTH in usage_set
    client = ExtendedKeyUsageOID.CLIENT_AUTH in usage_set
    units = _units(certificate)
    digest = fingerprint(certificate)
    if units == {MEMBER_OU}:
        if not (server and client):
            raise PeerNotRecognised("member certificate lacks serverAuth+clientAuth")
        names = _extension(certificate, x509.SubjectAlternativeName)
        addresses = names.get_values_for_type(x509.IPAddress) if names is not None else []
        if len(addresses) != 1 or not isinstance(addresses[0], ipaddress.IPv4Address):
            raise PeerNotRecognised("member certificate must name exactly one IPv4 address")
        return PeerIdentity(Role.MEMBER, addresses[0], None, digest)
    if units == {ADMIN_OU}:
        if not client or server:
            raise PeerNotRecognised("admin certificate must be for clientAuth only")
        name = _common_name(certificate)
        if not name:
            raise PeerNotRecognised("admin certificate has no single commonName")
        allow_down = ADMIN_DOWN_USAGE in usage_set
        return PeerIdentity(Role.ADMIN, None, name, digest, allow_down=allow_down)
    raise PeerNotRecognised(f"certificate is neither {MEMBER_OU} nor {ADMIN_OU}")


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """The peer's certificate of a TLS transport after the handshake, or None."""
    getter = getattr(transport, "getPeerCertificate", None)
    if getter is None:
        return None
    certificate = getter()
    if certificate is None:
        return None
    if isinstance(certificate, x509.Certificate):
        return certificate
    converted: x509.Certificate = certificate.to_cryptography()
    return converted


def identify_peer(
    transport: Any,
    ca_certificate: x509.Certificate,
    *,
    now: datetime | None = None,
) -> PeerIdentity:
    """Who is connected on transport: a member (which address) or an admin (which name).

    Call it once the TLS handshake has completed (``handshakeCompleted`` of
    IHandshakeListener, or on the first data received). Raises PeerNotRecognised
    if the transport has no peer certificate or it fits neither profile. The caller
    decides what the role may do; e.g. the peer listener accepts only members of its
    domain, the admin listener only admins.
    """
    certificate = peer_certificate(transport)
    if certificate is None:
        raise PeerNotRecognised("no peer certificate (not TLS, or handshake not done)")
    return classify_certificate(certificate, ca_certificate, now=now)


_USAGE_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ADMIN_DOWN_USAGE: "hqnlsd-down",
}


def describe_certificate(certificate: x509.Certificate) -> dict[str, str]:
    """A readable summary of a certificate (used by ``hqn_ca show`` and logs)."""
    summary = {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "not before": certificate.not_valid_before_utc.isoformat(),
        "not after": certificate.not_valid_after_utc.isoformat(),
        "sha256": fingerprint(certificate),
    }
    names = _extension(certificate, x509.SubjectAlternativeName)
    if names is not None:
        summary["subject alt names"] = ", ".join(
            str(v) for v in names.get_values_for_type(x509.IPAddress)
        )
    usages = _extension(certificate, x509.ExtendedKeyUsage)
    if usages is not None:
        summary["extended key usage"] = ", ".join(
            _USAGE_NAMES.get(usage, usage.dotted_string) for usage in usages
        )
    constraints = _extension(certificate, x509.BasicConstraints)
    units = _units(certificate)
    if constraints is not None and constraints.ca:
        summary["role"] = "domain CA" if CA_OU in units else "CA (not an hqnlsd domain CA)"
    elif units == {MEMBER_OU}:
        summary["role"] = "member"
    elif units == {ADMIN_OU}:
        allowed = usages is not None and ADMIN_DOWN_USAGE in set(usages)
        summary["role"] = "admin (may stop daemons: down)" if allowed else "admin"
    else:
        summary["role"] = "unknown"
    return summary
