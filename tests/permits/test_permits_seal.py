"""Tests for hqnlsd.permits.seal: key files, key ids, canonical bytes, lock lines."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.format import LockLine, PermitHeader
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.seal import (
    HEADER_PREFIX,
    PRODUCT_PREFIX,
    KeyFileError,
    PublisherKey,
    TrustedKeys,
    header_message,
    key_id,
    product_message,
    write_key_files,
)

HEADER = PermitHeader(
    number=7,
    servers=(
        HostId(ipaddress.IPv4Address("127.0.0.1"), 0x11),
        HostId(ipaddress.IPv4Address("127.0.0.2"), 0x22),
    ),
    count=1,
)
PRODUCT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=0x41,
    node_count=1,
    floating_count=5,
    start=datetime.date(2026, 1, 1),
    expiry=datetime.date(2030, 12, 31),
    update_minutes=5,
    data=(1, 2, 3, 4),
    locked_nodes=(HostId(ipaddress.IPv4Address("10.0.0.9"), 0x99),),
)


class TestKeyFiles:
    """PREFIX.key / PREFIX.pub are written safely and read back."""

    def test_keygen_writes_pkcs8_0600_and_spki(self, tmp_path: Path) -> None:
        """The private key is PEM PKCS8 with mode 0600; the public key PEM SPKI."""
        key_path, pub_path = write_key_files(tmp_path / "pub1")
        assert (key_path.name, pub_path.name) == ("pub1.key", "pub1.pub")
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
        key = PublisherKey.load(key_path)
        trusted = TrustedKeys.load(tmp_path)
        assert list(trusted.keys) == [key.key_id]
        assert trusted.problems == ()

    def test_keygen_refuses_to_overwrite(self, tmp_path: Path) -> None:
        """An existing .key or .pub is never overwritten."""
        key_path, _ = write_key_files(tmp_path / "k")
        before = key_path.read_bytes()
        with pytest.raises(KeyFileError, match="already exists"):
            write_key_files(tmp_path / "k")
        assert key_path.read_bytes() == before
        (tmp_path / "only.pub").write_text("x")
        with pytest.raises(KeyFileError, match="already exists"):
            write_key_files(tmp_path / "only")
        assert not (tmp_path / "only.key").exists()

    def test_keygen_in_missing_directory_is_a_key_file_error(self, tmp_path: Path) -> None:
        """A prefix in a directory that does not exist fails cleanly."""
        with pytest.raises(KeyFileError, match="cannot create"):
            write_key_files(tmp_path / "nope" / "k")

    @pytest.mark.parametrize(
        "content",
        [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
    )
    def test_bad_private_key_files(self, tmp_path: Path, content: bytes) -> None:
        """Garbage in a key file is a KeyFileError with advice."""
        path = tmp_path / "bad.key"
        path.write_bytes(content)
        with pytest.raises(KeyFileError, match="hqn_mp keygen"):
            PublisherKey.load(path)

    def test_non_ed25519_private_key_is_refused(self, tmp_path: Path) -> None:
        """An EC key is a valid PEM key of the wrong kind."""
        pem = generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(KeyFileError, match="Ed25519"):
            PublisherKey.from_pem(pem)

    def test_missing_key_file(self, tmp_path: Path) -> None:
        """A missing key file is a KeyFileError naming the file."""
        with pytest.raises(KeyFileError, match=r"missing\.key"):
            PublisherKey.load(tmp_path / "missing.key")

    def test_trusted_keys_reports_bad_pub_files_and_keeps_the_others(
        self, tmp_path: Path
    ) -> None:
        """A bad .pub file is listed in problems; the good ones still load."""
        write_key_files(tmp_path / "good")
        (tmp_path / "a-garbage.pub").write_text("garbage")
        ec_pub = generate_private_key(SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (tmp_path / "b-ec.pub").write_bytes(ec_pub)
        (tmp_path / "c-copy.pub").write_bytes((tmp_path / "good.pub").read_bytes())
        (tmp_path / "ignored.txt").write_text("not a .pub")
        trusted = TrustedKeys.load(tmp_path)
        assert len(trusted) == 1
        assert len(trusted.problems) == 3
        assert "a-garbage.pub" in trusted.problems[0]
        assert "Ed25519" in trusted.problems[1]
        assert "same key" in trusted.problems[2]

    def test_trusted_keys_missing_directory(self, tmp_path: Path) -> None:
        """A missing directory gives no keys and one problem, not an exception."""
        trusted = TrustedKeys.load(tmp_path / "absent")
        assert len(trusted) == 0
        assert "no such directory" in trusted.problems[0]


class TestLocks:
    """Key ids, lock line syntax, and verification outcomes."""

    def test_key_id_is_sha256_of_raw_public_key(self) -> None:
        """The key id is the first 16 hex digits of SHA-256 of the raw key."""
        key = PublisherKey.generate()
        raw = key.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert key.key_id == key_id(key.public_key) == hashlib.sha256(raw).hexdigest()[:16]

    def test_lock_value_is_keyid_and_unpadded_base64url(self) -> None:
        """A lock is 'KEYID SIGNATURE', the signature base64url without '='."""
        key = PublisherKey.generate()
        ident, signature = key.lock(b"message").split(" ")
        assert ident == key.key_id
        assert "=" not in signature and len(signature) == 86
        raw = base64.urlsafe_b64decode(signature + "==")
        key.public_key.verify(raw, b"message")

    def test_verify_outcomes(self) -> None:
        """Good seal -> key id; wrong message -> `wrong`; other key -> 104."""
        key, other = PublisherKey.generate(), PublisherKey.generate()
        trusted = TrustedKeys.of(key.public_key)
        lock = LockLine(key.lock(b"m"), 12)
        assert trusted.verify(lock, b"m", wrong=Condition.SERVER_SEAL_WRONG, what="x") == (
            key.key_id
        )
        with pytest.raises(PermitError) as caught:
            trusted.verify(lock, b"n", wrong=Condition.PRODUCT_SEAL_WRONG, what="x", path="f")
        assert (caught.value.condition, caught.value.line, caught.value.path) == (
            Condition.PRODUCT_SEAL_WRONG,
            12,
            "f",
        )
        with pytest.raises(PermitError) as caught:
            trusted.verify(
                LockLine(other.lock(b"m"), 3), b"m", wrong=Condition.SERVER_SEAL_WRONG, what="x"
            )
        assert caught.value.condition is Condition.UNTRUSTED_KEY
        assert other.key_id in caught.value.message

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda v: v.split()[0],
            lambda v: v + " extra",
            lambda v: v.upper(),
            lambda v: v[:-1],
            lambda v: v + "A",
            lambda v: v.replace(" ", "  x"),
        ],
    )
    def test_malformed_locks_are_the_wrong_seal_condition(self, mangle: object) -> None:
        """A mangled lock value is the seal-wrong condition, never an exception."""
        key = PublisherKey.generate()
        trusted = TrustedKeys.of(key.public_key)
        value = mangle(key.lock(b"m"))  # type: ignore[operator]
        with pytest.raises(PermitError) as caught:
            trusted.verify(LockLine(value, 1), b"m", wrong=Condition.SERVER_SEAL_WRONG, what="x")
        assert caught.value.condition in (Condition.SERVER_SEAL_WRONG, Condition.UNTRUSTED_KEY)

    def test_non_canonical_signature_spelling_is_refused(self) -> None:
        """Changing the unused low bits of the last base64 digit breaks the seal."""
        key = PublisherKey.generate()
        ident, signature = key.lock(b"m").split()
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(signature[-1])
        twin = signature[:-1] + alphabet[last ^ 1]  # same decoded bytes, other spelling
        assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(
            signature + "=="
        )
        with pytest.raises(PermitError):
            TrustedKeys.of(key.public_key).verify(
                LockLine(f"{ident} {twin}", 1), b"m", wrong=Condition.SERVER_SEAL_WRONG, what="x"
            )


class TestCanonicalBytes:
    """Every sealed field changes the canonical bytes; the kinds are separated."""

    def test_domain_separation(self) -> None:
        """Header and product messages start with their own prefixes."""
        assert header_message(HEADER).startswith(HEADER_PREFIX)
        assert product_message(HEADER, PRODUCT).startswith(PRODUCT_PREFIX)
        assert HEADER_PREFIX != PRODUCT_PREFIX

    @pytest.mark.parametrize(
        "change",
        [
            {"number": 8},
            {"count": 2},
            {"servers": HEADER.servers[:1]},
            {"servers": HEADER.servers[::-1]},
            {"servers": (HEADER.servers[0], HostId(HEADER.servers[1].address, 0x23))},
        ],
    )
    def test_header_fields_are_covered(self, change: dict[str, object]) -> None:
        """Number, count and every server (in order) are in the header message."""
        changed = dataclasses.replace(HEADER, **change)  # type: ignore[arg-type]
        assert header_message(changed) != header_message(HEADER)

    def test_product_message_covers_the_server_section_but_not_the_count(self) -> None:
        """A product is bound to its permit number and domain."""
        base = product_message(HEADER, PRODUCT)
        assert product_message(dataclasses.replace(HEADER, number=8), PRODUCT) != base
        other_domain = dataclasses.replace(HEADER, servers=HEADER.servers[:1])
        assert product_message(other_domain, PRODUCT) != base
        assert product_message(dataclasses.replace(HEADER, count=5), PRODUCT) == base

    @pytest.mark.parametrize(
        "change",
        [
            {"publisher": "Harlequin "},
            {"product": "LispWorks2"},
            {"version": "8.1"},
            {"policy": 0x40},
            {"node_count": 2},
            {"floating_count": 4},
            {"start": datetime.date(2026, 1, 2)},
            {"expiry": datetime.date(2030, 12, 30)},
            {"update_minutes": 6},
            {"data": (1, 2, 3)},
            {"data": (1, 2, 3, 5)},
            {"locked_nodes": ()},
            {"locked_nodes": (HostId(ipaddress.IPv4Address("10.0.0.8"), 0x99),)},
            {"locked_nodes": (HostId(ipaddress.IPv4Address("10.0.0.9"), 0x98),)},
        ],
    )
    def test_product_fields_are_covered(self, change: dict[str, object]) -> None:
        """Every product field is in the product message."""
        changed = dataclasses.replace(PRODUCT, **change)  # type: ignore[arg-type]
        assert product_message(HEADER, changed) != product_message(HEADER, PRODUCT)

    def test_text_fields_are_length_prefixed(self) -> None:
        """Moving text between adjacent fields changes the message."""
        a = dataclasses.replace(PRODUCT, publisher="ab", product="c")
        b = dataclasses.replace(PRODUCT, publisher="a", product="bc")
        assert product_message(HEADER, a) != product_message(HEADER, b)
