"""Permit seals: Ed25519 signatures over canonical bytes, and publisher key files.

A lock line is ``LOCK: <keyid> <signature>``: ``keyid`` is the first 16 hex
digits of SHA-256 of the raw 32-byte public key, ``signature`` the Ed25519
signature in base64url without padding.

Seals never cover the text of the file (comments, spacing and number spelling
may change freely), only the canonical bytes of the parsed fields, each kind with
its own domain-separation prefix:

- the header seal: format version, NUMBER, every server (address and unique id,
  in order) and the PERMITS count;
- a product seal: format version, NUMBER, the server section again, then every
  field of the product (so a product cannot be moved to another domain or permit).

Key files: ``PREFIX.key`` is the private key (PEM PKCS8, unencrypted, mode 0600,
never overwritten); ``PREFIX.pub`` the public key (PEM SubjectPublicKeyInfo) that
sites install among their trusted publisher keys.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.format import (
    LockLine,
    ParsedPermit,
    PermitHeader,
    Seals,
    format_permit,
    insert_seals,
    parse_permit,
)
from hqnlsd.permits.model import FORMAT_LINE, HostId, Permit, ProductPermit

HEADER_PREFIX = b"hqnlsd permit header seal v1\x00"
PRODUCT_PREFIX = b"hqnlsd permit product seal v1\x00"

_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{86}\Z")


class KeyFileError(Exception):
    """A key file is missing, unreadable, of the wrong kind, or already exists."""


# -- canonical bytes ---------------------------------------------------------


class _Canonical:
    """An unambiguous byte encoding: every item typed and length-prefixed."""

    def __init__(self, prefix: bytes) -> None:
        self._parts = [prefix]

    def text(self, value: str) -> None:
        data = value.encode("utf-8")
        self._parts.append(b"s" + struct.pack(">I", len(data)) + data)

    def integer(self, value: int) -> None:
        self._parts.append(b"i" + struct.pack(">q", value))

    def hosts(self, hosts: Iterable[HostId]) -> None:
        listed = tuple(hosts)
        self.integer(len(listed))
        for host in listed:
            self._parts.append(b"h" + host.address.packed + struct.pack(">I", host.unique_id))

    def result(self) -> bytes:
        return b"".join(self._parts)


def _header_fields(out: _Canonical, number: int, servers: Iterable[HostId]) -> None:
    out.text(FORMAT_LINE)
    out.integer(number)
    out.hosts(servers)


def header_message(header: PermitHeader) -> bytes:
    """The canonical bytes that the header seal signs."""
    out = _Canonical(HEADER_PREFIX)
    _header_fields(out, header.number, header.servers)
    out.integer(header.count)
    return out.result()


def product_message(header: PermitHeader, product: ProductPermit) -> bytes:
    """The canonical bytes that a product's seal signs (with the server section)."""
    out = _Canonical(PRODUCT_PREFIX)
    _header_fields(out, header.number, header.servers)
    out.text(product.publisher)
    out.text(product.product)
    out.text(product.version)
    out.integer(product.policy)
    out.integer(product.node_count)
    out.integer(product.floating_count)
    out.integer(product.start.toordinal())
    out.integer(product.expiry.toordinal())
    out.integer(product.update_minutes)
    out.integer(len(product.data))
    for value in product.data:
        out.integer(value)
    out.hosts(product.locked_nodes)
    return out.result()


def header_of(permit: Permit) -> PermitHeader:
    """The header of a complete permit."""
    return PermitHeader(permit.number, permit.servers, len(permit.products))


# -- keys --------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclasses.dataclass(frozen=True)
class PublisherKey:
    """A publisher's private key: it seals permits."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The matching public key."""
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        """The key id written in lock lines."""
        return key_id(self.public_key)

    @classmethod
    def generate(cls) -> PublisherKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "key") -> PublisherKey:
        """Load a PEM PKCS8 Ed25519 private key, or raise KeyFileError."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyFileError(
                f"{source}: not an unencrypted PEM private key ({e}); "
                "make one with 'hqn_mp keygen PREFIX'"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source}: not an Ed25519 key; make one with 'hqn_mp keygen'")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> PublisherKey:
        """Load ``PREFIX.key``, or raise KeyFileError."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise KeyFileError(f"{path}: cannot read the key: {e.strerror or e}") from None
        return cls.from_pem(data, source=str(path))

    def private_pem(self) -> bytes:
        """The private key as PEM PKCS8, unencrypted."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """The public key as PEM SubjectPublicKeyInfo."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def lock(self, message: bytes) -> str:
        """A lock line value for ``message``: key id and signature."""
        return f"{self.key_id} {_b64url(self.private_key.sign(message))}"


def write_key_files(prefix: str | Path, key: PublisherKey | None = None) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (mode 0600) and ``PREFIX.pub``; never overwrite either.

    Returns both paths. Raises KeyFileError if either exists or cannot be written.
    """
    key = key or PublisherKey.generate()
    key_path = Path(f"{prefix}.key")
    pub_path = Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if os.path.lexists(path):
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    write_exclusive(key_path, key.private_pem(), 0o600)
    try:
        write_exclusive(pub_path, key.public_pem(), 0o644)
    except KeyFileError:
        key_path.unlink()
        raise
    return key_path, pub_path


def write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and write ``data``; never overwrite (KeyFileError)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise KeyFileError(f"{path}: cannot write: {e.strerror or e}") from None


@dataclasses.dataclass(frozen=True)
class TrustedKeys:
    """The publisher public keys a daemon trusts, by key id.

    ``problems`` lists the ``.pub`` files that could not be used (each a
    message); they do not stop the other keys from loading.
    """

    keys: Mapping[str, Ed25519PublicKey]
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey) -> TrustedKeys:
        """Trust exactly these keys (for tests and tools)."""
        return cls(keys={key_id(key): key for key in public_keys})

    @classmethod
    def load(cls, directory: str | Path) -> TrustedKeys:
        """Read every ``*.pub`` file in ``directory`` (in name order)."""
        directory = Path(directory)
        keys: dict[str, Ed25519PublicKey] = {}
        sources: dict[str, str] = {}
        problems: list[str] = []
        if not directory.is_dir():
            return cls({}, {}, (f"{directory}: no such directory of publisher keys",))
        try:
            paths = sorted(directory.glob("*.pub"))
        except OSError as e:
            return cls({}, {}, (f"{directory}: cannot list: {e.strerror or e}",))
        for path in paths:
            try:
                public = serialization.load_pem_public_key(path.read_bytes())
            except OSError as e:
                problems.append(f"{path}: cannot read: {e.strerror or e}")
                continue
            except (ValueError, TypeError) as e:
                problems.append(f"{path}: not a PEM public key ({e})")
                continue
            if not isinstance(public, Ed25519PublicKey):
                problems.append(f"{path}: not an Ed25519 public key")
                continue
            ident = key_id(public)
            if ident in keys:
                problems.append(f"{path}: same key as {sources[ident]}")
                continue
            keys[ident] = public
            sources[ident] = str(path)
        return cls(keys, sources, tuple(problems))

    def __len__(self) -> int:
        return len(self.keys)

    def verify(
        self,
        lock: LockLine,
        message: bytes,
        *,
        wrong: Condition,
        what: str,
        path: str | None = None,
    ) -> str:
        """Check ``lock`` over ``message``; return the key id, or raise PermitError.

        ``wrong`` is the condition of a seal that does not verify (100 for the
        header, 103 for a product); an unknown key is condition 104.
        """
        fields = lock.value.split()
        if len(fields) != 2 or not _KEY_ID.match(fields[0]) or not _SIGNATURE.match(fields[1]):
            raise PermitError(
                wrong,
                f"the LOCK line of {what} is malformed; the permit was damaged or edited, "
                "get a fresh copy from the publisher",
                path=path,
                line=lock.line,
            )
        ident, signature_text = fields
        public = self.keys.get(ident)
        if public is None:
            raise PermitError(
                Condition.UNTRUSTED_KEY,
                f"{what} is sealed by key {ident}, which is not among the trusted "
                "publisher keys; install the publisher's .pub file in the "
                "--publisher-keys directory",
                path=path,
                line=lock.line,
            )
        try:
            signature = base64.urlsafe_b64decode(signature_text + "==")
            if _b64url(signature) != signature_text:
                # Only the canonical spelling: the text of a seal is not malleable.
                raise ValueError("non-canonical base64")
            public.verify(signature, message)
        except (InvalidSignature, binascii.Error, ValueError):
            raise PermitError(
                wrong,
                f"the seal of {what} does not match its contents; the permit was "
                "changed after sealing, get a fresh copy from the publisher",
                path=path,
                line=lock.line,
            ) from None
        return ident


# -- sealing -----------------------------------------------------------------


def seal_permit(permit: Permit, key: PublisherKey) -> Seals:
    """The seals of ``permit`` under ``key``."""
    header = header_of(permit)
    return Seals(
        header=key.lock(header_message(header)),
        products=tuple(key.lock(product_message(header, p)) for p in permit.products),
    )


def sign_permit(permit: Permit, key: PublisherKey, *, title: str | None = None) -> str:
    """The sealed permit text of ``permit`` (written by the format writer).

    Raises ValueError if the permit cannot be written faithfully.
    """
    # Validate by writing the form first: only a permit that reads back equal
    # is sealed, so the seal covers exactly what a reader will see.
    format_permit(permit)
    return format_permit(permit, seal_permit(permit, key), title=title)


def seal_text(text: str, key: PublisherKey, *, path: str | None = None) -> str:
    """Seal a permit form given as text, keeping its comments and layout.

    Lock lines already present are replaced (re-sealing after an edit). Raises
    PermitError if the form is not a valid permit.
    """
    parsed: ParsedPermit = parse_permit(text, path=path)
    return insert_seals(text, parsed, seal_permit(parsed.permit, key))
