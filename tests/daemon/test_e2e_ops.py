"""End to end, issue 6: a real daemon configured by a TOML file, with its metrics
endpoint scraped after some requests and its SSH manhole logged into with OpenSSH.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import IO_TIMEOUT, DaemonHarness, free_port, make_permit, product_permit

pytestmark = pytest.mark.e2e

SSH_TIMEOUT = 30


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def _scrape(port: int) -> dict[str, float]:
    """The metrics endpoint's samples, `name{labels}` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=IO_TIMEOUT) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_of_a_real_daemon_configured_by_file(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """The config file turns metrics on; a scrape shows grants, use and denials as they are."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Gadget")]))
    metrics_port = free_port("127.0.0.1")
    config = tmp_path / "hqnlsd.toml"
    config.write_text(f'[metrics]\nlisten = "tcp:{metrics_port}"\n')
    daemon = daemons.daemon("ops", extra_args=["--config", str(config)]).start_and_wait()

    with daemon.client() as client:
        handles = []
        for pid in range(3):
            granted = client.call(
                "REQUEST",
                publisher="Test Publisher",
                product="Gadget",
                version="1.0",
                user="ann",
                host="box",
                pid=100 + pid,
            )
            assert isinstance(granted, Ok), granted
            handles.append(granted.get("handle"))
        refused = client.call(
            "REQUEST",
            publisher="Test Publisher",
            product="Gadget",
            version="1.0",
            user="bob",
            host="box",
            pid=200,
        )
        assert isinstance(refused, Err) and refused.status is Status.NOLICENCES
        assert isinstance(client.call("RELEASE", handle=handles[0]), Ok)

    samples = _scrape(metrics_port)
    product = 'product="Gadget",publisher="Test Publisher",version="1.0"'
    in_use = [
        v
        for k, v in samples.items()
        if k.startswith("hqnlsd_licences_in_use") and 'pool="floating"' in k and "Gadget" in k
    ]
    permitted = [
        v
        for k, v in samples.items()
        if k.startswith("hqnlsd_licences_permitted") and 'pool="floating"' in k and "Gadget" in k
    ]
    assert in_use == [2.0], (product, samples)
    assert permitted == [3.0]
    assert samples["hqnlsd_grants_total"] == 3.0
    assert samples["hqnlsd_releases_total"] == 1.0
    assert samples['hqnlsd_denials_total{reason="NOLICENCES"}'] == 1.0
    request_count = [
        v
        for k, v in samples.items()
        if re.match(r'hqnlsd_request_duration_seconds_count\{verb="REQUEST"\}', k)
    ]
    assert request_count == [4.0]


def _ssh(port: int, key: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-p",
            str(port),
            "-i",
            str(key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-T",
            "admin@127.0.0.1",
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )


def _keygen(path: Path) -> Path:
    assert shutil.which("ssh") and shutil.which("ssh-keygen"), (
        "the manhole test needs OpenSSH's client (.ci/run installs openssh-client)"
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        timeout=SSH_TIMEOUT,
    )
    return path


def test_manhole_of_a_real_daemon(daemons: DaemonHarness, tmp_path: Path) -> None:
    """An authorised key reads live licence state through the manhole; another key is refused."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Gizmo")]))
    good = _keygen(tmp_path / "good")
    bad = _keygen(tmp_path / "bad")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{good}.pub").read_text())
    authorized.chmod(0o600)
    manhole_port = free_port("127.0.0.1")
    daemon = daemons.daemon(
        "manhole",
        extra_args=["--manhole", f"tcp:{manhole_port}", "--manhole-keys", str(authorized)],
    ).start_and_wait()
    with daemon.client() as client:
        granted = client.call(
            "REQUEST",
            publisher="Test Publisher",
            product="Gizmo",
            version="1.0",
            user="ann",
            host="box",
            pid=7,
        )
        assert isinstance(granted, Ok), granted

    result = _ssh(manhole_port, good, "print('HELD', engine.held_count())\n")
    assert "HELD 1" in result.stdout, (result.stdout, result.stderr)

    refused = _ssh(manhole_port, bad, "print('HELD', engine.held_count())\n")
    assert refused.returncode != 0
    assert "HELD" not in refused.stdout
    assert "Permission denied" in refused.stderr


def test_sighup_rereads_config_and_permits_keeping_licences(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """SIGHUP: a new permit directory from the config file is served, held licences stay,
    and a config file with an error changes nothing."""
    first, second = tmp_path / "permits-a", tmp_path / "permits-b"
    first.mkdir()
    second.mkdir()
    me = daemons.host(1)
    daemons.publisher.write_permit(
        first / "a-hqn.permit", make_permit([me], [product_permit("Alpha")], number=1)
    )
    daemons.publisher.write_permit(
        second / "b-hqn.permit", make_permit([me], [product_permit("Beta")], number=2)
    )
    config = tmp_path / "hqnlsd.toml"
    config.write_text(f'permit-path = ["{first}"]\n')
    daemon = daemons.daemon(
        "hup", permit_dirs=[], extra_args=["--config", str(config)]
    ).start_and_wait()
    product = {"publisher": "Test Publisher", "version": "1.0", "user": "ann", "host": "box"}

    with daemon.client() as client:
        alpha = client.call("REQUEST", product="Alpha", pid=1, **product)
        assert isinstance(alpha, Ok), alpha
        beta = client.call("REQUEST", product="Beta", pid=2, **product)
        assert isinstance(beta, Err) and beta.status is Status.BADPRODUCT

    config.write_text(f'permit-path = ["{first}", "{second}"]\n')
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_for_log(lambda text: "configuration re-read" in text)
    with daemon.client() as client:
        assert isinstance(client.call("UPDATE", handle=alpha.get("handle")), Ok)
        beta = client.call("REQUEST", product="Beta", pid=2, **product)
        assert isinstance(beta, Ok), beta

    config.write_text("permit-path = 42\n")
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_for_log(lambda text: "configuration not reloaded" in text)
    with daemon.client() as client:
        assert isinstance(client.call("UPDATE", handle=alpha.get("handle")), Ok)
        assert isinstance(client.call("UPDATE", handle=beta.get("handle")), Ok)
