"""Tests of the hqn_ca command (hqnlsd.tools.ca), driven through main(argv)."""

from __future__ import annotations

import io
import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hqnlsd.tls import (
    ADMIN_DOWN_USAGE,
    ADMIN_OU,
    CA_OU,
    MEMBER_OU,
    DomainCredentials,
    Role,
    classify_certificate,
    load_certificate,
    load_private_key,
)
from hqnlsd.tools.ca import CLOCK_SKEW, create_ca, issue_member, main


def run(*argv: str) -> tuple[int, str, str]:
    """Run hqn_ca with argv; return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def mode(path: Path) -> int:
    """Permission bits of path."""
    return stat.S_IMODE(path.stat().st_mode)


def units(certificate: x509.Certificate) -> list[str]:
    """The subject's organizationalUnitName values."""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return [str(a.value) for a in attributes]


def usages(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
    """The extended key usages of a certificate."""
    return set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A directory holding a freshly initialised domain CA."""
    directory = tmp_path / "ca"
    status, _, err = run("init", str(directory))
    assert status == 0, err
    return directory


class TestInit:
    """hqn_ca init."""

    def test_creates_private_key_and_ca_certificate(self, tmp_path: Path) -> None:
        """init writes ca.key (0600) and ca.crt in a 0700 directory; the CA signs leaves only."""
        directory = tmp_path / "new" / "ca"
        status, out, err = run("init", str(directory), "--days", "30")
        assert (status, err) == (0, "")
        assert "domain CA created" in out
        assert mode(directory) == 0o700
        assert mode(directory / "ca.key") == 0o600
        key = load_private_key(directory / "ca.key")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"
        certificate = load_certificate(directory / "ca.crt")
        assert units(certificate) == [CA_OU]
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical
        assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
        assert certificate.subject == certificate.issuer
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert lifetime == timedelta(days=30) + CLOCK_SKEW
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        assert key.public_key().public_bytes(der, public) == (
            certificate.public_key().public_bytes(der, public)
        )

    def test_refuses_to_overwrite(self, ca_dir: Path) -> None:
        """A second init in the same directory changes nothing and says why."""
        before = (ca_dir / "ca.key").read_bytes()
        status, _, err = run("init", str(ca_dir))
        assert status == 1
        assert "refusing to overwrite" in err
        assert "Traceback" not in err
        assert (ca_dir / "ca.key").read_bytes() == before

    def test_bad_days(self, tmp_path: Path) -> None:
        """--days 0 is a clear error and writes nothing."""
        status, _, err = run("init", str(tmp_path / "ca"), "--days", "0")
        assert status == 1
        assert "--days must be at least 1" in err
        assert not (tmp_path / "ca" / "ca.key").exists()

    def test_directory_that_is_a_file(self, tmp_path: Path) -> None:
        """A DIR that is a regular file is a clear error."""
        target = tmp_path / "file"
        target.write_text("x")
        status, _, err = run("init", str(target))
        assert status == 1
        assert err.startswith("hqn_ca: error:")


class TestMember:
    """hqn_ca member."""

    def test_member_certificate_profile(self, ca_dir: Path) -> None:
        """The member certificate names the address as IP SAN, serves and connects."""
        status, out, err = run("member", str(ca_dir), "127.0.0.2")
        assert (status, err) == (0, ""), err
        assert "127.0.0.2" in out
        key_path = ca_dir / "member-127.0.0.2.key"
        cert_path = ca_dir / "member-127.0.0.2.crt"
        assert mode(key_path) == 0o600
        certificate = load_certificate(cert_path)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert names.value.get_values_for_type(x509.IPAddress) == [
            ipaddress.IPv4Address("127.0.0.2")
        ]
        assert usages(certificate) == {
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        }
        assert units(certificate) == [MEMBER_OU]
        ca_certificate = load_certificate(ca_dir / "ca.crt")
        identity = classify_certificate(certificate, ca_certificate)
        assert (identity.role, identity.address) == (
            Role.MEMBER,
            ipaddress.IPv4Address("127.0.0.2"),
        )
        # The three files load together as this daemon's TLS identity.
        DomainCredentials.load(ca_dir / "ca.crt", cert_path, key_path)

    def test_out_prefix(self, ca_dir: Path, tmp_path: Path) -> None:
        """--out PREFIX writes PREFIX.key and PREFIX.crt."""
        prefix = tmp_path / "daemon1"
        status, _, err = run("member", str(ca_dir), "10.1.2.3", "--out", str(prefix))
        assert status == 0, err
        assert (tmp_path / "daemon1.key").exists()
        assert (tmp_path / "daemon1.crt").exists()

    def test_refuses_to_overwrite(self, ca_dir: Path) -> None:
        """A second member certificate for the same prefix is refused; key unchanged."""
        assert run("member", str(ca_dir), "127.0.0.2")[0] == 0
        key_path = ca_dir / "member-127.0.0.2.key"
        before = key_path.read_bytes()
        status, _, err = run("member", str(ca_dir), "127.0.0.2")
        assert status == 1
        assert "refusing to overwrite" in err
        assert key_path.read_bytes() == before

    def test_refuses_when_only_the_certificate_exists(self, ca_dir: Path) -> None:
        """An existing certificate alone also blocks writing a new key next to it."""
        (ca_dir / "member-127.0.0.9.crt").write_text("old")
        status, _, err = run("member", str(ca_dir), "127.0.0.9")
        assert status == 1
        assert "refusing to overwrite" in err
        assert not (ca_dir / "member-127.0.0.9.key").exists()

    @pytest.mark.parametrize("bad", ["localhost", "::1", "127.0.0", "0.0.0.0", "224.0.0.1"])
    def test_bad_address(self, ca_dir: Path, bad: str) -> None:
        """Anything but a usable IPv4 address is a clear error, no traceback."""
        status, _, err = run("member", str(ca_dir), bad)
        assert status == 1
        assert err.startswith("hqn_ca: error:")
        assert "Traceback" not in err
        assert list(ca_dir.glob("member-*")) == []

    def test_no_ca(self, tmp_path: Path) -> None:
        """Without a CA the error says how to make one."""
        status, _, err = run("member", str(tmp_path), "127.0.0.2")
        assert status == 1
        assert "hqn_ca init" in err

    def test_ca_key_readable_by_others_is_refused(self, ca_dir: Path) -> None:
        """A CA key others may read is refused rather than used."""
        (ca_dir / "ca.key").chmod(0o644)
        status, _, err = run("member", str(ca_dir), "127.0.0.2")
        assert status == 1
        assert "chmod 600" in err

    def test_validity_never_exceeds_the_ca(self, tmp_path: Path) -> None:
        """A member certificate ends no later than its CA."""
        directory = tmp_path / "ca"
        assert run("init", str(directory), "--days", "10")[0] == 0
        assert run("member", str(directory), "127.0.0.2", "--days", "825")[0] == 0
        ca_end = load_certificate(directory / "ca.crt").not_valid_after_utc
        member = load_certificate(directory / "member-127.0.0.2.crt")
        assert member.not_valid_after_utc == ca_end

    def test_expired_ca_issues_nothing(self) -> None:
        """An expired CA refuses to issue."""
        from hqnlsd.tools.ca import CAError

        past = datetime.now(UTC) - timedelta(days=30)
        ca = create_ca(now=past, days=1)
        with pytest.raises(CAError, match="expired"):
            issue_member(ca, "127.0.0.2", now=datetime.now(UTC))


class TestAdmin:
    """hqn_ca admin."""

    def test_admin_certificate_profile(self, ca_dir: Path) -> None:
        """The admin certificate is clientAuth only, marked OU=hqnlsd-admin, named CN."""
        status, out, err = run("admin", str(ca_dir), "alice")
        assert (status, err) == (0, "")
        assert ADMIN_OU in out
        assert mode(ca_dir / "admin-alice.key") == 0o600
        certificate = load_certificate(ca_dir / "admin-alice.crt")
        assert usages(certificate) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        assert units(certificate) == [ADMIN_OU]
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert [a.value for a in common] == ["alice"]
        with pytest.raises(x509.ExtensionNotFound):
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        identity = classify_certificate(certificate, load_certificate(ca_dir / "ca.crt"))
        assert (identity.role, identity.name) == (Role.ADMIN, "alice")

    def test_allow_down_adds_the_down_usage(self, ca_dir: Path) -> None:
        """--allow-down: the same admin profile plus the ADMIN_DOWN_USAGE extended key
        usage, which the daemon reads as leave to stop it remotely; show names it."""
        status, out, err = run("admin", str(ca_dir), "carol", "--allow-down")
        assert (status, err) == (0, "")
        assert "may stop daemons (down)" in out
        certificate = load_certificate(ca_dir / "admin-carol.crt")
        assert usages(certificate) == {ExtendedKeyUsageOID.CLIENT_AUTH, ADMIN_DOWN_USAGE}
        assert units(certificate) == [ADMIN_OU]
        identity = classify_certificate(certificate, load_certificate(ca_dir / "ca.crt"))
        assert (identity.role, identity.name, identity.allow_down) == (Role.ADMIN, "carol", True)
        status, out, _ = run("show", str(ca_dir / "admin-carol.crt"))
        assert status == 0
        assert "clientAuth, hqnlsd-down" in out
        assert "role                admin (may stop daemons: down)" in out
        # Without the option: no such usage, and show says plain admin.
        assert run("admin", str(ca_dir), "alice")[0] == 0
        plain = load_certificate(ca_dir / "admin-alice.crt")
        assert classify_certificate(plain, load_certificate(ca_dir / "ca.crt")).allow_down is False
        status, out, _ = run("show", str(ca_dir / "admin-alice.crt"))
        assert "role                admin\n" in out and "hqnlsd-down" not in out

    @pytest.mark.parametrize("bad", ["", "has space", "-dash-first", "x" * 65, "a/b"])
    def test_bad_name(self, ca_dir: Path, bad: str) -> None:
        """Names outside the documented alphabet are refused."""
        status, _, err = run("admin", str(ca_dir), "--", bad)
        assert status == 1
        assert "admin name" in err
        assert list(ca_dir.glob("admin-*")) == []

    def test_refuses_to_overwrite(self, ca_dir: Path) -> None:
        """A second admin certificate for the same name is refused."""
        assert run("admin", str(ca_dir), "bob")[0] == 0
        status, _, err = run("admin", str(ca_dir), "bob")
        assert status == 1
        assert "refusing to overwrite" in err


class TestShow:
    """hqn_ca show."""

    def test_shows_roles(self, ca_dir: Path) -> None:
        """show names the role, address and usages of each kind of certificate."""
        assert run("member", str(ca_dir), "127.0.0.2")[0] == 0
        assert run("admin", str(ca_dir), "alice")[0] == 0
        status, out, _ = run("show", str(ca_dir / "ca.crt"))
        assert status == 0
        assert "domain CA" in out
        status, out, _ = run("show", str(ca_dir / "member-127.0.0.2.crt"))
        assert status == 0
        assert "role                member" in out
        assert "subject alt names   127.0.0.2" in out
        assert "serverAuth, clientAuth" in out
        status, out, _ = run("show", str(ca_dir / "admin-alice.crt"))
        assert status == 0
        assert "role                admin" in out
        assert "CN=alice" in out

    def test_key_shows_no_secret(self, ca_dir: Path) -> None:
        """show on a key file describes it without printing the key."""
        status, out, _ = run("show", str(ca_dir / "ca.key"))
        assert status == 0
        assert "private key (EC secp256r1)" in out
        assert "BEGIN" not in out
        secret = (ca_dir / "ca.key").read_text().splitlines()[1]
        assert secret not in out

    def test_unreadable_or_junk(self, tmp_path: Path) -> None:
        """Missing and junk files are clear errors."""
        status, _, err = run("show", str(tmp_path / "absent"))
        assert status == 1
        assert "cannot read" in err
        junk = tmp_path / "junk"
        junk.write_text("hello")
        status, _, err = run("show", str(junk))
        assert status == 1
        assert "no certificate or private key" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """No command, or an unknown one, is a usage error (status 2)."""
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "usage: hqn_ca" in capsys.readouterr().err
