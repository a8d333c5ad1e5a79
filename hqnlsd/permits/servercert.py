"""Server certificates and signed replies: challenge/response rooted in the publisher key.

A daemon holds no publisher secret, so a client cannot check a reply against the
permit's seals. Instead the publisher certifies a *server key* for the permit's
server domain, and the daemons of that domain sign their replies with it:

- ``hqn_mp servercert --key PUBLISHER.key PERMIT -o PREFIX`` makes an Ed25519
  server key pair: ``PREFIX.serverkey`` (the private key, PEM PKCS8, mode 0600,
  installed on every daemon of the domain) and ``PREFIX.servercert`` (a one-line
  certificate, public).
- The certificate is the publisher's signature over canonical bytes
  (domain-separated by `CERT_PREFIX`) of: the permit number, the server section
  (address and unique id of every member, in order), the (publisher, product,
  version) of every product of the permit, and the raw server public key. On the
  wire and in the file it is one token ``BODY.KEYID.SIGNATURE`` (base64url body,
  publisher key id as in lock lines, base64url signature): no blanks, no quotes.
- A client that sends ``challenge=HEX`` with a REQUEST or an UPDATE gets the reply
  with ``signature=HEX`` (the server key's Ed25519 signature over
  `hqnlsd.protocols.signing.reply_message`: the challenge, the verb, the handle,
  publisher, product, version, the reply's status and every reply field in
  order) and ``servercert=TOKEN``. Signing and checking replies is the
  protocol's (`hqnlsd.protocols.signing`); this module holds no wire type.
- The client, holding the publisher's ``.pub``, checks (`verify_reply`) that the
  certificate is sealed by a trusted publisher key, that the address it connected
  to is in the certified server section, that the product it asked for is in the
  certified permit, and that the signature is the server key's over *its own*
  challenge. A server without the key, with another permit's key or replaying a
  reply to another challenge fails one of these checks: `NotGenuine`.

The product list is in the certificate (beyond the bare permit number) so that a
site that bought permit 1 cannot use its server key to answer for a product of
another permit.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hqnlsd.permits.model import HostId, Permit
from hqnlsd.permits.seal import KeyFileError, PublisherKey, TrustedKeys, write_exclusive

CERT_PREFIX = b"hqnlsd server certificate v1\x00"
#: File suffixes written by ``hqn_mp servercert`` and read by `ServerKeys.load`.
KEY_SUFFIX = ".serverkey"
CERT_SUFFIX = ".servercert"

ProductName = tuple[str, str, str]


class NotGenuine(Exception):
    """A reply or certificate that does not prove a genuine server of the domain."""


class CertificateError(ValueError):
    """A certificate token or file that cannot be read."""


# -- canonical bytes ---------------------------------------------------------------------


class CanonicalWriter:
    """Unambiguous bytes: every item typed and length-prefixed (as permit seals do).

    Used for certificates here and for signed replies (`hqnlsd.protocols.signing`).
    """

    def __init__(self, prefix: bytes = b"") -> None:
        self._parts = [prefix]

    def text(self, value: str) -> None:
        self.blob(value.encode("utf-8", "surrogatepass"), kind=b"s")

    def blob(self, value: bytes, *, kind: bytes = b"b") -> None:
        self._parts.append(kind + struct.pack(">I", len(value)) + value)

    def integer(self, value: int) -> None:
        self._parts.append(b"i" + struct.pack(">q", value))

    def host(self, host: HostId) -> None:
        self._parts.append(b"h" + host.address.packed + struct.pack(">I", host.unique_id))

    def result(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    """Reads what `CanonicalWriter` wrote; CertificateError on anything else."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, count: int) -> bytes:
        if self._pos + count > len(self._data):
            raise CertificateError("the certificate is truncated")
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def _kind(self, expected: bytes) -> None:
        if self._take(1) != expected:
            raise CertificateError("the certificate is malformed")

    def blob(self, *, kind: bytes = b"b", limit: int = 4096) -> bytes:
        self._kind(kind)
        (length,) = struct.unpack(">I", self._take(4))
        if length > limit:
            raise CertificateError("the certificate holds an over-long item")
        return self._take(length)

    def text(self) -> str:
        try:
            return self.blob(kind=b"s").decode("utf-8")
        except UnicodeDecodeError:
            raise CertificateError("the certificate holds text that is not UTF-8") from None

    def integer(self) -> int:
        self._kind(b"i")
        value: int = struct.unpack(">q", self._take(8))[0]
        return value

    def host(self) -> HostId:
        self._kind(b"h")
        address = ipaddress.IPv4Address(self._take(4))
        (unique_id,) = struct.unpack(">I", self._take(4))
        return HostId(address, unique_id)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise CertificateError("the certificate has trailing bytes")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CertificateError("the certificate is not base64url") from None
    if _b64url(data) != text:
        raise CertificateError("the certificate is not canonical base64url")
    return data


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- certificates ------------------------------------------------------------------------


MAX_PRODUCTS = 10_000


@dataclasses.dataclass(frozen=True)
class ServerCertificate:
    """A publisher's statement: this server key speaks for permit N's server domain."""

    permit_number: int
    servers: tuple[HostId, ...]
    products: tuple[ProductName, ...]
    server_key: Ed25519PublicKey
    publisher_key_id: str
    signature: bytes

    @staticmethod
    def body_of(
        permit_number: int,
        servers: Sequence[HostId],
        products: Sequence[ProductName],
        server_key: Ed25519PublicKey,
    ) -> bytes:
        """The canonical certificate body (what the publisher signs, after `CERT_PREFIX`)."""
        out = CanonicalWriter()
        out.integer(permit_number)
        out.integer(len(servers))
        for server in servers:
            out.host(server)
        out.integer(len(products))
        for publisher, product, version in products:
            out.text(publisher)
            out.text(product)
            out.text(version)
        out.blob(_raw_public(server_key))
        return out.result()

    @property
    def body(self) -> bytes:
        """This certificate's canonical body."""
        return self.body_of(self.permit_number, self.servers, self.products, self.server_key)

    @classmethod
    def issue(
        cls, publisher: PublisherKey, permit: Permit, server_key: Ed25519PublicKey
    ) -> ServerCertificate:
        """Certify ``server_key`` for ``permit``'s server domain with the publisher key."""
        products = tuple((p.publisher, p.product, p.version) for p in permit.products)
        body = cls.body_of(permit.number, permit.servers, products, server_key)
        return cls(
            permit.number,
            permit.servers,
            products,
            server_key,
            publisher.key_id,
            publisher.private_key.sign(CERT_PREFIX + body),
        )

    def token(self) -> str:
        """The one-word form: ``BODY.KEYID.SIGNATURE`` (base64url, key id in hex)."""
        return f"{_b64url(self.body)}.{self.publisher_key_id}.{_b64url(self.signature)}"

    @classmethod
    def from_token(cls, token: str) -> ServerCertificate:
        """Parse a token (the signature is not checked here: see `verify`)."""
        parts = token.split(".")
        if len(parts) != 3:
            raise CertificateError("a server certificate is BODY.KEYID.SIGNATURE")
        body_text, ident, signature_text = parts
        body = _unb64url(body_text)
        signature = _unb64url(signature_text)
        if len(ident) != 16 or any(c not in "0123456789abcdef" for c in ident):
            raise CertificateError("the certificate's key id is not 16 hex digits")
        reader = _Reader(body)
        number = reader.integer()
        count = reader.integer()
        if not 1 <= count <= 20:
            raise CertificateError(f"the certificate lists {count} servers (1 to 20)")
        servers = tuple(reader.host() for _ in range(count))
        count = reader.integer()
        if not 0 <= count <= MAX_PRODUCTS:
            raise CertificateError("the certificate lists too many products")
        products = tuple((reader.text(), reader.text(), reader.text()) for _ in range(count))
        raw = reader.blob()
        reader.end()
        if len(raw) != 32:
            raise CertificateError("the certificate's server key is not an Ed25519 key")
        key = Ed25519PublicKey.from_public_bytes(raw)
        return cls(number, servers, products, key, ident, signature)

    def verify(self, trusted: TrustedKeys) -> None:
        """Raise NotGenuine unless a trusted publisher key signed this certificate."""
        publisher = trusted.keys.get(self.publisher_key_id)
        if publisher is None:
            raise NotGenuine(
                f"the server's certificate is signed by key {self.publisher_key_id}, "
                "which is not a trusted publisher key"
            )
        try:
            publisher.verify(self.signature, CERT_PREFIX + self.body)
        except InvalidSignature:
            raise NotGenuine(
                "the server's certificate does not verify with the publisher key "
                f"{self.publisher_key_id}: forged or damaged"
            ) from None

    def certifies(self, server: ipaddress.IPv4Address) -> bool:
        """True if ``server`` is in the certified server section."""
        return any(host.address == server for host in self.servers)


# -- key files ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerKey:
    """A server key with its certificate, as a daemon of the domain holds it."""

    private_key: Ed25519PrivateKey
    certificate: ServerCertificate
    source: str = ""

    @property
    def permit_number(self) -> int:
        """The permit whose domain this key speaks for."""
        return self.certificate.permit_number


def make_server_key(publisher: PublisherKey, permit: Permit) -> ServerKey:
    """A fresh server key for ``permit``'s domain, certified by ``publisher``."""
    private = Ed25519PrivateKey.generate()
    return ServerKey(private, ServerCertificate.issue(publisher, permit, private.public_key()))


def certificate_text(key: ServerKey) -> str:
    """The ``.servercert`` file: comment lines and the certificate token."""
    cert = key.certificate
    servers = ", ".join(str(server) for server in cert.servers)
    products = "; ".join(" / ".join(name) for name in cert.products)
    return (
        f"# hqnlsd server certificate for permit {cert.permit_number}\n"
        f"# servers: {servers}\n"
        f"# products: {products}\n"
        f"# signed by publisher key {cert.publisher_key_id}\n"
        f"{cert.token()}\n"
    )


def write_server_key(prefix: str | Path, key: ServerKey) -> tuple[Path, Path]:
    """Write ``PREFIX.serverkey`` (0600) and ``PREFIX.servercert``; never overwrite."""
    key_path = Path(f"{prefix}{KEY_SUFFIX}")
    cert_path = Path(f"{prefix}{CERT_SUFFIX}")
    for path in (key_path, cert_path):
        if os.path.lexists(path):
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_exclusive(key_path, pem, 0o600)
    try:
        write_exclusive(cert_path, certificate_text(key).encode("utf-8"), 0o644)
    except KeyFileError:
        key_path.unlink()
        raise
    return key_path, cert_path


def read_certificate(text: str) -> ServerCertificate:
    """The certificate in ``.servercert`` text (``#`` comment lines ignored)."""
    lines = [line.strip() for line in text.splitlines()]
    tokens = [line for line in lines if line and not line.startswith("#")]
    if len(tokens) != 1:
        raise CertificateError("a .servercert file holds exactly one certificate line")
    return ServerCertificate.from_token(tokens[0])


def load_server_key(key_path: Path) -> ServerKey:
    """Read ``X.serverkey`` and ``X.servercert``; KeyFileError if unusable."""
    try:
        mode = key_path.stat().st_mode
        data = key_path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{key_path}: cannot read: {e.strerror or e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{key_path}: readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 {key_path}"
        )
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{key_path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{key_path}: not an Ed25519 key")
    cert_path = key_path.with_suffix(CERT_SUFFIX)
    try:
        cert = read_certificate(cert_path.read_text("utf-8"))
    except OSError as e:
        raise KeyFileError(f"{cert_path}: cannot read: {e.strerror or e}") from None
    except (CertificateError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{cert_path}: {e}") from None
    if _raw_public(cert.server_key) != _raw_public(private.public_key()):
        raise KeyFileError(f"{cert_path} certifies another key than {key_path}")
    return ServerKey(private, cert, str(key_path))


@dataclasses.dataclass(frozen=True)
class ServerKeys:
    """The server keys of a daemon (``--server-keys DIR``), by permit number.

    ``problems`` lists the files that could not be used; they do not stop the
    others from loading.
    """

    by_permit: Mapping[int, ServerKey]
    problems: tuple[str, ...] = ()

    @classmethod
    def of(cls, *keys: ServerKey) -> ServerKeys:
        """Exactly these keys (tests, tools)."""
        return cls({key.permit_number: key for key in keys})

    @classmethod
    def load(cls, directory: str | Path, trusted: TrustedKeys | None = None) -> ServerKeys:
        """Every ``*.serverkey`` (with its ``.servercert``) in ``directory``, name order.

        With ``trusted`` (the daemon's publisher keys), a certificate that does not
        verify is a problem, not a key: a daemon should not sign with it.
        """
        directory = Path(directory)
        if not directory.is_dir():
            return cls({}, (f"{directory}: no such directory of server keys",))
        found: dict[int, ServerKey] = {}
        problems: list[str] = []
        for path in sorted(directory.glob(f"*{KEY_SUFFIX}")):
            try:
                key = load_server_key(path)
                if trusted is not None:
                    key.certificate.verify(trusted)
            except (KeyFileError, NotGenuine) as e:
                problems.append(str(e) if isinstance(e, KeyFileError) else f"{path}: {e}")
                continue
            if key.permit_number in found:
                problems.append(
                    f"{path}: a second key for permit {key.permit_number} "
                    f"(first: {found[key.permit_number].source}); ignored"
                )
                continue
            found[key.permit_number] = key
        return cls(found, tuple(problems))

    def get(self, permit_number: int) -> ServerKey | None:
        """The key for a permit, or None."""
        return self.by_permit.get(permit_number)

    def __len__(self) -> int:
        return len(self.by_permit)
