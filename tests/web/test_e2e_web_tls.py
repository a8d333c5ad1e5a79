"""End to end: a real daemon with ``--web-tls`` on a non-loopback description is
refused without TLS; with it, the console answers a browser presenting an admin
certificate of the domain CA, refuses one presenting a member's (403), and one
presenting none gets no HTTP answer."""

from __future__ import annotations

import datetime
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.tools.ca import certificate_pem, create_ca, issue_admin, issue_member, write_issued
from tests.daemons import (
    IO_TIMEOUT,
    DaemonHarness,
    free_port,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    with DaemonHarness(tmp_path) as harness:
        yield harness


def context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    made = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        made.load_cert_chain(str(cert), str(key))
    return made


def get(port: int, path: str, tls: ssl.SSLContext) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}{path}", timeout=IO_TIMEOUT, context=tls
        ) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_console_over_tls_for_admin_certificates_only(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Widget")]))
    now = datetime.datetime.now(datetime.UTC)
    tls = tmp_path / "tls"
    tls.mkdir()
    ca = create_ca(now=now, days=2)
    ca_path = tls / "ca.pem"
    ca_path.write_bytes(certificate_pem(ca.certificate))
    member_key, member_cert = write_issued(issue_member(ca, "127.0.0.1", now=now), tls / "m")
    admin_key, admin_cert = write_issued(issue_admin(ca, "alice", now=now), tls / "alice")
    other_key, other_cert = write_issued(issue_member(ca, "127.0.0.2", now=now), tls / "o")
    port = free_port("127.0.0.1")
    domain_args = [
        "--domain-ca", str(ca_path),
        "--domain-cert", str(member_cert),
        "--domain-key", str(member_key),
        "--peer-port", str(free_port("127.0.0.1")),
    ]  # fmt: skip

    # Without --web-tls, another interface than loopback is refused at start.
    plain = daemons.daemon(
        "plain", extra_args=[*domain_args, "--web", f"tcp:{port}:interface=0.0.0.0"]
    )
    plain.start()
    assert plain.wait_exit() == 1
    assert "only over TLS" in plain.log_text()

    daemon = daemons.daemon(
        "tls", extra_args=[*domain_args, "--web", f"tcp:{port}", "--web-tls"]
    ).start_and_wait()
    assert "web console on tcp:" in daemon.log_text()
    code, body = get(port, "/api/overview", context(ca_path, admin_cert, admin_key))
    assert code == 200 and json.loads(body)["served"] == 1
    code, body = get(port, "/holders", context(ca_path, admin_cert, admin_key))
    assert code == 200 and b"No licence is held." in body
    code, body = get(port, "/api/overview", context(ca_path, other_cert, other_key))
    assert code == 403 and b"admin certificate" in body
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(port, "/api/overview", context(ca_path))
