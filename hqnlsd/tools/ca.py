"""``hqn_ca``: the site's domain CA, member certificates and admin certificates.

Usage::

    hqn_ca init DIR [--days N] [--name NAME]   create DIR/ca.key (0600) and DIR/ca.crt
    hqn_ca member DIR ADDRESS [--out PREFIX] [--days N]
                                               PREFIX.key + PREFIX.crt for the daemon
                                               serving on IPv4 ADDRESS
    hqn_ca admin DIR NAME [--out PREFIX] [--days N] [--allow-down]
                                               PREFIX.key + PREFIX.crt for admin NAME
                                               (--allow-down: may stop daemons remotely)
    hqn_ca show FILE                           describe a certificate or key file

Keys are EC P-256, written unencrypted with mode 0600; existing files are never
overwritten. The certificate profile (OU markers, key usages) is documented in
`hqnlsd.tls`. Exit status: 0 success, 1 error (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hqnlsd.tls import (
    ADMIN_DOWN_USAGE,
    ADMIN_OU,
    CA_OU,
    MEMBER_OU,
    TLSConfigError,
    describe_certificate,
    issued_by,
    load_certificate,
    load_private_key,
)

CA_KEY_NAME = "ca.key"
CA_CERT_NAME = "ca.crt"
DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 825
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this much before their creation, for clocks slightly behind."""

ADMIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class CAError(Exception):
    """A CA operation cannot be done; the message says why."""


@dataclasses.dataclass(frozen=True)
class Issued:
    """A private key and the certificate of its public key."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


# -- pure certificate making (time is an input) -------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _validity(now: datetime, days: int, limit: datetime | None) -> tuple[datetime, datetime]:
    """Start and end of validity: from a little before now, never beyond limit."""
    if days < 1:
        raise CAError(f"--days must be at least 1 (got {days})")
    start = now - CLOCK_SKEW
    end = now + timedelta(days=days)
    if limit is not None:
        end = min(end, limit)
    return start, end


def create_ca(
    *, now: datetime, days: int = DEFAULT_CA_DAYS, name: str = "hqnlsd domain CA"
) -> Issued:
    """Make a self-signed domain CA (can sign leaf certificates only)."""
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CA_OU),
        ]
    )
    start, end = _validity(now, days, None)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, certificate)


def _leaf(
    ca: Issued,
    *,
    subject: x509.Name,
    usages: list[x509.ObjectIdentifier],
    alt_names: list[x509.GeneralName],
    now: datetime,
    days: int,
) -> Issued:
    """A leaf certificate signed by ca, valid no longer than ca itself."""
    if ca.certificate.not_valid_after_utc <= now:
        raise CAError("the domain CA has expired; make a new one with 'hqn_ca init'")
    key = _new_key()
    start, end = _validity(now, days, ca.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def parse_member_address(text: str) -> ipaddress.IPv4Address:
    """The IPv4 address a member certificate is for; CAError if not a usable one."""
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise CAError(f"{text!r} is not an IPv4 address (dotted quad, e.g. 127.0.0.2)") from None
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise CAError(f"{address} cannot be a daemon's address")
    return address


def issue_member(
    ca: Issued,
    address: str | ipaddress.IPv4Address,
    *,
    now: datetime,
    days: int = DEFAULT_LEAF_DAYS,
) -> Issued:
    """A member certificate: IP subjectAltName address, serverAuth + clientAuth."""
    ip = parse_member_address(str(address))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, str(ip)),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, MEMBER_OU),
        ]
    )
    return _leaf(
        ca,
        subject=subject,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        alt_names=[x509.IPAddress(ip)],
        now=now,
        days=days,
    )


def issue_admin(
    ca: Issued,
    name: str,
    *,
    now: datetime,
    days: int = DEFAULT_LEAF_DAYS,
    allow_down: bool = False,
) -> Issued:
    """An admin client certificate: CN=name, OU=hqnlsd-admin, clientAuth only; with
    ``allow_down`` also the `ADMIN_DOWN_USAGE` extended key usage (may stop daemons)."""
    if not ADMIN_NAME.fullmatch(name):
        raise CAError(
            f"admin name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ADMIN_OU),
        ]
    )
    return _leaf(
        ca,
        subject=subject,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH, *([ADMIN_DOWN_USAGE] if allow_down else [])],
        alt_names=[],
        now=now,
        days=days,
    )


# -- files ---------------------------------------------------------------------------


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PEM (PKCS#8, unencrypted) of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def _refuse_existing(*paths: Path) -> None:
    """CAError if any of paths exists: keys and certificates are never overwritten."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise CAError(f"refusing to overwrite existing {', '.join(existing)}")


def _create_file(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with the given mode; never follows or replaces anything."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we meant
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        if fd >= 0:
            os.close(fd)


def write_issued(issued: Issued, prefix: Path) -> tuple[Path, Path]:
    """Write PREFIX.key (0600) and PREFIX.crt (0644); refuse if either exists."""
    key_path = prefix.with_name(prefix.name + ".key")
    cert_path = prefix.with_name(prefix.name + ".crt")
    _refuse_existing(key_path, cert_path)
    _create_file(key_path, key_pem(issued.key), 0o600)
    try:
        _create_file(cert_path, certificate_pem(issued.certificate), 0o644)
    except OSError:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, cert_path


def load_ca(directory: Path) -> Issued:
    """Load DIR/ca.key and DIR/ca.crt, checking that they belong together."""
    key_path = directory / CA_KEY_NAME
    cert_path = directory / CA_CERT_NAME
    if not cert_path.exists() or not key_path.exists():
        raise CAError(f"{directory} holds no domain CA (run: hqn_ca init {directory})")
    try:
        certificate = load_certificate(cert_path)
        key = load_private_key(key_path)
    except TLSConfigError as e:
        raise CAError(str(e)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_path} is not an EC key made by hqn_ca")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != certificate.public_key().public_bytes(
        der, public
    ):
        raise CAError(f"{key_path} does not belong to {cert_path}")
    if not issued_by(certificate, certificate):
        raise CAError(f"{cert_path} is not a self-signed CA certificate")
    return Issued(key, certificate)


# -- commands ------------------------------------------------------------------------


def _now() -> datetime:
    """The current time (UTC)."""
    return datetime.now(UTC)


def _cmd_init(args: argparse.Namespace, out: TextIO) -> None:
    """hqn_ca init DIR [--days N] [--name NAME]."""
    directory: Path = args.dir
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise CAError(f"cannot create {directory}: {e.strerror or e}") from None
    if not directory.is_dir():
        raise CAError(f"{directory} is not a directory")
    ca = create_ca(now=_now(), days=args.days, name=args.name)
    key_path, cert_path = write_issued(ca, directory / "ca")
    out.write(
        f"domain CA created:\n  key         {key_path} (mode 0600; keep it secret, "
        f"ideally offline)\n  certificate {cert_path} (install on every daemon and admin)\n"
        f"  valid until {ca.certificate.not_valid_after_utc:%Y-%m-%d}\n"
    )


def _cmd_member(args: argparse.Namespace, out: TextIO) -> None:
    """hqn_ca member DIR ADDRESS [--out PREFIX] [--days N]."""
    address = parse_member_address(args.address)
    ca = load_ca(args.dir)
    prefix = args.out if args.out is not None else args.dir / f"member-{address}"
    issued = issue_member(ca, address, now=_now(), days=args.days)
    key_path, cert_path = write_issued(issued, prefix)
    out.write(
        f"member certificate for {address} (serverAuth+clientAuth):\n"
        f"  key         {key_path} (mode 0600)\n  certificate {cert_path}\n"
        f"  valid until {issued.certificate.not_valid_after_utc:%Y-%m-%d}\n"
    )


def _cmd_admin(args: argparse.Namespace, out: TextIO) -> None:
    """hqn_ca admin DIR NAME [--out PREFIX] [--days N] [--allow-down]."""
    ca = load_ca(args.dir)
    prefix = args.out if args.out is not None else args.dir / f"admin-{args.name}"
    issued = issue_admin(ca, args.name, now=_now(), days=args.days, allow_down=args.allow_down)
    key_path, cert_path = write_issued(issued, prefix)
    may = "; may stop daemons (down)" if args.allow_down else ""
    out.write(
        f"admin certificate for {args.name} (clientAuth, OU={ADMIN_OU}{may}):\n"
        f"  key         {key_path} (mode 0600)\n  certificate {cert_path}\n"
        f"  valid until {issued.certificate.not_valid_after_utc:%Y-%m-%d}\n"
    )


def _cmd_show(args: argparse.Namespace, out: TextIO) -> None:
    """hqn_ca show FILE: every certificate in FILE, or what key it holds."""
    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror or e}") from None
    if b"PRIVATE KEY-----" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CAError(f"{path} holds a private key that cannot be read") from None
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = hashes.Hash(hashes.SHA256())
        digest.update(public)
        kind = type(key).__name__.lstrip("_")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            kind = f"EC {key.curve.name}"
        out.write(f"{path}: private key ({kind})\n  public key sha256 {digest.finalize().hex()}\n")
        return
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certificates = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise CAError(f"{path} holds no certificate or private key") from None
    for number, certificate in enumerate(certificates):
        if number:
            out.write("\n")
        out.write(f"{path}:\n")
        for field, value in describe_certificate(certificate).items():
            out.write(f"  {field:<19} {value}\n")


def _parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="hqn_ca",
        description="Domain CA for hqnlsd: mutual-TLS certificates for daemons and admins.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create a domain CA in DIR")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--days", type=int, default=DEFAULT_CA_DAYS, help="validity (default 3650)")
    init.add_argument("--name", default="hqnlsd domain CA", help="the CA's common name")
    init.set_defaults(run=_cmd_init)

    member = commands.add_parser("member", help="certificate for the daemon at ADDRESS")
    member.add_argument("dir", type=Path, metavar="DIR")
    member.add_argument("address", metavar="ADDRESS", help="the daemon's IPv4 address")
    member.add_argument("--out", type=Path, metavar="PREFIX", help="default DIR/member-ADDRESS")
    member.add_argument("--days", type=int, default=DEFAULT_LEAF_DAYS, help="default 825")
    member.set_defaults(run=_cmd_member)

    admin = commands.add_parser("admin", help="admin client certificate for NAME")
    admin.add_argument("dir", type=Path, metavar="DIR")
    admin.add_argument("name", metavar="NAME")
    admin.add_argument("--out", type=Path, metavar="PREFIX", help="default DIR/admin-NAME")
    admin.add_argument("--days", type=int, default=DEFAULT_LEAF_DAYS, help="default 825")
    admin.add_argument(
        "--allow-down",
        action="store_true",
        help="also allow stopping daemons remotely (hqn_lsa down over TLS)",
    )
    admin.set_defaults(run=_cmd_admin)

    show = commands.add_parser("show", help="describe a certificate or key file")
    show.add_argument("file", type=Path, metavar="FILE")
    show.set_defaults(run=_cmd_show)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run hqn_ca; return the exit status (0 ok, 1 error, 2 usage)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage message
        return e.code if isinstance(e.code, int) else 2
    try:
        args.run(args, out)
    except CAError as e:
        err.write(f"hqn_ca: error: {e}\n")
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        err.write(f"hqn_ca: error:{where}: {e.strerror or e}\n")
        return 1
    except Exception as e:  # a bug: still a message, not a traceback
        err.write(f"hqn_ca: internal error ({type(e).__name__}: {e}); please report it\n")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
