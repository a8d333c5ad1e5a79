"""Server certificates and signed replies (`hqnlsd.permits.servercert`), and ``hqn_mp servercert``.

Real keys throughout: a publisher key seals a permit, ``hqn_mp servercert`` (or the
library) certifies a server key for its domain, replies are signed and verified.
Every way a server can fail to prove itself is checked to be detected.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import stat
from pathlib import Path

import pytest

from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.seal import KeyFileError, PublisherKey, TrustedKeys, sign_permit
from hqnlsd.permits.servercert import (
    CertificateError,
    NotGenuine,
    ServerCertificate,
    ServerKeys,
    load_server_key,
    make_server_key,
    read_certificate,
    write_server_key,
)
from hqnlsd.protocols import client_side, quoting
from hqnlsd.protocols.replies import Err, Ok, format_reply_text
from hqnlsd.protocols.signing import CERT_FIELD, SIGNATURE_FIELD, sign_reply, verify_reply
from hqnlsd.status import Status
from hqnlsd.tools import mp

A1 = HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1A2B3C4D)
A2 = HostId(ipaddress.IPv4Address("127.0.0.2"), 0x0BADF00D)
CHALLENGE = bytes(range(16))


def product(name: str) -> ProductPermit:
    """A product of the test permit."""
    return ProductPermit(
        publisher="Harlequin",
        product=name,
        version="8.0",
        policy=0x41,
        node_count=0,
        floating_count=5,
        start=datetime.date(2026, 1, 1),
        expiry=datetime.date(2030, 12, 31),
        update_minutes=5,
    )


PERMIT = Permit(number=7, servers=(A1, A2), products=(product("LispWorks"), product("Extra")))
OTHER = Permit(number=8, servers=(A1,), products=(product("Costly"),))


@pytest.fixture(scope="module")
def publisher() -> PublisherKey:
    """The publisher key that certifies server keys."""
    return PublisherKey.generate()


def signed(key: object, reply: Ok | Err, challenge: bytes = CHALLENGE, handle: str = "H1",
           name: str = "LispWorks") -> Ok | Err:
    """``reply`` to a REQUEST for ``name`` signed by ``key`` (a ServerKey or None)."""
    return sign_reply(
        key,  # type: ignore[arg-type]
        challenge=challenge, verb="REQUEST", handle=handle, publisher="Harlequin",
        product=name, version="8.0", reply=reply,
    )


def check(trusted: TrustedKeys, reply: Ok | Err, *, server: str = "127.0.0.2",
          challenge: bytes = CHALLENGE, name: str = "LispWorks") -> ServerCertificate:
    """Verify ``reply`` as the client does, as received through the wire format."""
    text = format_reply_text(reply)[0]
    received = client_side.parse_reply_line(text)
    return verify_reply(
        trusted, server=ipaddress.IPv4Address(server), challenge=challenge, verb="REQUEST",
        handle=received.get("handle") or "", publisher="Harlequin", product=name,
        version="8.0", reply=received,
    )


GRANT = Ok.of(handle="H1", period=300, type="floating", access=8, data="1 2", start="a",
              expiry="b")


def test_certificate_token_round_trip(publisher: PublisherKey) -> None:
    """A certificate survives its one-word token form and verifies with the publisher key."""
    key = make_server_key(publisher, PERMIT)
    token = key.certificate.token()
    assert " " not in token and '"' not in token and not quoting.needs_quotes(token)
    again = ServerCertificate.from_token(token)
    assert again.permit_number == 7
    assert again.servers == (A1, A2)
    assert again.products == (("Harlequin", "LispWorks", "8.0"), ("Harlequin", "Extra", "8.0"))
    assert again.publisher_key_id == publisher.key_id
    again.verify(TrustedKeys.of(publisher.public_key))
    assert again.certifies(A2.address)
    assert not again.certifies(ipaddress.IPv4Address("127.0.0.3"))


def test_certificate_rejects_other_publishers_and_tampering(publisher: PublisherKey) -> None:
    """A certificate by an untrusted key, or with any byte changed, does not verify."""
    key = make_server_key(publisher, PERMIT)
    stranger = PublisherKey.generate()
    with pytest.raises(NotGenuine, match="not a trusted publisher key"):
        key.certificate.verify(TrustedKeys.of(stranger.public_key))
    # Widen the certified domain: the publisher's signature no longer matches.
    extra = HostId(ipaddress.IPv4Address("10.0.0.9"), 1)
    widened = dataclasses.replace(key.certificate, servers=(*key.certificate.servers, extra))
    with pytest.raises(NotGenuine, match="forged or damaged"):
        widened.verify(TrustedKeys.of(publisher.public_key))
    body, ident, sig = key.certificate.token().split(".")
    with pytest.raises(CertificateError):
        ServerCertificate.from_token(f"{body[:-2]}.{ident}.{sig}")
    with pytest.raises(CertificateError):
        ServerCertificate.from_token("not-a-certificate")


def test_signed_reply_verifies(publisher: PublisherKey) -> None:
    """A genuine server's signed grant verifies for its own challenge, address and product."""
    key = make_server_key(publisher, PERMIT)
    reply = signed(key, GRANT)
    assert reply.get(SIGNATURE_FIELD) and reply.get(CERT_FIELD)
    cert = check(TrustedKeys.of(publisher.public_key), reply)
    assert cert.permit_number == 7


def test_every_forgery_is_detected(publisher: PublisherKey) -> None:
    """No key, another permit's key, a wrong address, product, challenge or field: NotGenuine."""
    trusted = TrustedKeys.of(publisher.public_key)
    genuine = make_server_key(publisher, PERMIT)
    with pytest.raises(NotGenuine, match="did not sign"):
        check(trusted, signed(None, GRANT))
    with pytest.raises(NotGenuine, match="not in the certified server domain"):
        check(trusted, signed(genuine, GRANT), server="127.0.0.3")
    # A site's key for a cheap permit cannot answer for a product of another permit.
    other = make_server_key(publisher, OTHER)
    with pytest.raises(NotGenuine, match="does not cover"):
        check(trusted, signed(other, GRANT), server="127.0.0.1")
    # A replay: a reply signed for another challenge.
    with pytest.raises(NotGenuine, match="forged or replayed"):
        check(trusted, signed(genuine, GRANT, challenge=b"x" * 16))
    # A changed field (another handle, another period) after signing.
    good = signed(genuine, GRANT)
    assert isinstance(good, Ok)
    changed = Ok(tuple((k, "999" if k == "period" else v) for k, v in good.fields))
    with pytest.raises(NotGenuine, match="forged or replayed"):
        check(trusted, changed)
    # A server key the publisher never certified, with a copied certificate.
    impostor = dataclasses.replace(make_server_key(publisher, PERMIT),
                                   certificate=genuine.certificate)
    with pytest.raises(NotGenuine, match="forged or replayed"):
        check(trusted, signed(impostor, GRANT))
    # A certificate from a publisher the client does not trust.
    with pytest.raises(NotGenuine, match="not a trusted publisher key"):
        check(trusted, signed(make_server_key(PublisherKey.generate(), PERMIT), GRANT))


def test_signed_error_and_unsigned_without_challenge(publisher: PublisherKey) -> None:
    """ERR replies are signed too; without a challenge nothing is added."""
    key = make_server_key(publisher, PERMIT)
    denied = signed(key, Err.of(Status.NOLICENCES, "all in use"), handle="")
    assert isinstance(denied, Err)
    check(TrustedKeys.of(publisher.public_key), denied)
    unchanged = sign_reply(key, challenge=None, verb="REQUEST", handle="", publisher="Harlequin",
                           product="LispWorks", version="8.0", reply=GRANT)
    assert unchanged == GRANT


def test_key_files_and_loader(publisher: PublisherKey, tmp_path: Path) -> None:
    """Key (0600) and certificate files load back, by permit number; problems are reported."""
    keys_dir = tmp_path / "server-keys"
    keys_dir.mkdir()
    key = make_server_key(publisher, PERMIT)
    key_path, cert_path = write_server_key(keys_dir / "permit7", key)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert read_certificate(cert_path.read_text()).token() == key.certificate.token()
    with pytest.raises(KeyFileError, match="already exists"):
        write_server_key(keys_dir / "permit7", key)
    loaded = load_server_key(key_path)
    assert loaded.permit_number == 7
    # A second key for another permit, by an untrusted publisher, and a readable key.
    write_server_key(keys_dir / "stranger", make_server_key(PublisherKey.generate(), OTHER))
    leaky_key, _ = write_server_key(keys_dir / "leaky", make_server_key(publisher, OTHER))
    os.chmod(leaky_key, 0o644)
    keys = ServerKeys.load(keys_dir, TrustedKeys.of(publisher.public_key))
    assert set(keys.by_permit) == {7}
    problems = " ".join(keys.problems)
    assert "not a trusted publisher key" in problems
    assert "readable by others" in problems
    # Without trusted keys the stranger's key loads (the daemon was not told whom to trust).
    assert set(ServerKeys.load(keys_dir).by_permit) == {7, 8}
    # A certificate of another key than the private key next to it.
    other_cert = tmp_path / "swap"
    write_server_key(other_cert, make_server_key(publisher, PERMIT))
    os.replace(tmp_path / "swap.servercert", keys_dir / "permit7.servercert")
    with pytest.raises(KeyFileError, match="certifies another key"):
        load_server_key(key_path)
    assert ServerKeys.load(tmp_path / "missing").problems


def test_hqn_mp_servercert(publisher: PublisherKey, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """``hqn_mp servercert`` certifies a key for a sealed permit; the loader accepts it."""
    key_file = tmp_path / "pub.key"
    key_file.write_bytes(publisher.private_pem())
    permit_file = tmp_path / "demo-hqn.permit"
    permit_file.write_text(sign_permit(PERMIT, publisher))
    prefix = tmp_path / "out" / "domain7"
    prefix.parent.mkdir()
    status = mp.main(["servercert", "--key", str(key_file), str(permit_file), "-o", str(prefix)])
    assert status == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "domain7.serverkey" in out and "permit 7" in out
    keys = ServerKeys.load(prefix.parent, TrustedKeys.of(publisher.public_key))
    assert set(keys.by_permit) == {7} and not keys.problems
    cert = keys.by_permit[7].certificate
    assert cert.servers == PERMIT.servers
    # A permit sealed by another publisher is refused; nothing is written.
    stranger_permit = tmp_path / "other-hqn.permit"
    stranger_permit.write_text(sign_permit(OTHER, PublisherKey.generate()))
    status = mp.main(["servercert", "--key", str(key_file), str(stranger_permit),
                      "-o", str(tmp_path / "nope")])
    assert status == 1
    assert "not a valid permit sealed with" in capsys.readouterr().err
    assert not list(tmp_path.glob("nope*"))
