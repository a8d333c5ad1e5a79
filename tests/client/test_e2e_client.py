"""End to end, issue 5: the client library and hqnls against real daemons.

A daemon given the permit's server key (`hqn_mp servercert`, `--server-keys`)
answers challenges with signatures the client verifies against the publisher's
key; a daemon without it is detected as not genuine; `hqnls run` holds a licence
while its command runs and gives it back after.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.client import BlockingLicenceClient, NotGenuineServer
from hqnlsd.permits.policy import Policy
from hqnlsd.permits.servercert import make_server_key, write_server_key
from hqnlsd.protocols.replies import Ok
from tests.daemons import (
    IO_TIMEOUT,
    DaemonHarness,
    daemon_environment,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def test_signed_replies_verify_and_a_keyless_server_is_not_genuine(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """With --server-keys the client verifies the grant; without, it refuses the server."""
    sealed = product_permit("Sealed", policy=int(Policy.GRAB | Policy.UVIS))
    permit = make_permit([daemons.host(1)], [sealed])
    daemons.write_permit(permit)
    keys = tmp_path / "server-keys"
    keys.mkdir()
    write_server_key(keys / "domain1", make_server_key(daemons.publisher.key, permit))
    genuine = daemons.daemon("genuine", extra_args=["--server-keys", str(keys)]).start_and_wait()
    pub = next(daemons.publisher.keys_dir.glob("*.pub"))

    client = BlockingLicenceClient(
        servers=[f"127.0.0.1:{genuine.port}"], trusted=pub, timeout=IO_TIMEOUT
    )
    with client.request("Test Publisher", "Sealed", "1.0") as licence:
        assert licence.handle
        with genuine.client() as raw:
            users = raw.listing(
                "USERS", publisher="Test Publisher", product="Sealed", version="1.0"
            )
            assert isinstance(users, list) and len(users) == 1, users
    genuine.kill()

    impostor = daemons.daemon("impostor", port=genuine.port).start_and_wait()
    client = BlockingLicenceClient(
        servers=[f"127.0.0.1:{impostor.port}"], trusted=pub, timeout=IO_TIMEOUT
    )
    with pytest.raises(NotGenuineServer):
        client.request("Test Publisher", "Sealed", "1.0")


def test_a_refused_server_gets_its_only_licence_back(daemons: DaemonHarness) -> None:
    """A careful client refusing a daemon without the server key releases the grant
    there: the one licence of the product is free for the next client at once.

    Failed before issue 12: the licence stayed held (until crashout, across restarts)
    and the next client got NOLICENCES.
    """
    only = product_permit("Only", floating_count=1, policy=int(Policy.UVIS))
    daemons.write_permit(make_permit([daemons.host(1)], [only]))
    impostor = daemons.daemon("impostor").start_and_wait()
    pub = next(daemons.publisher.keys_dir.glob("*.pub"))
    server = f"127.0.0.1:{impostor.port}"
    careful = BlockingLicenceClient(servers=[server], trusted=pub, timeout=IO_TIMEOUT)
    with pytest.raises(NotGenuineServer):
        careful.request("Test Publisher", "Only", "1.0")
    with impostor.client() as raw:
        users = raw.listing("USERS", publisher="Test Publisher", product="Only", version="1.0")
        assert users == [], users
    trusting = BlockingLicenceClient(servers=[server], timeout=IO_TIMEOUT)
    with trusting.request("Test Publisher", "Only", "1.0") as licence:
        assert licence.handle


def test_hqnls_run_holds_a_licence_while_the_command_runs(daemons: DaemonHarness) -> None:
    """`hqnls run -- CMD`: CMD sees its handle, the licence is held meanwhile, freed after."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Tool", floating_count=1)]))
    daemon = daemons.daemon("hqnls").start_and_wait()
    probe = (
        f"import os, socket; s = socket.create_connection(('127.0.0.1', {daemon.port}), 5); "
        's.sendall(b\'REQUEST publisher="Test Publisher" product=Tool version=1.0 '
        "user=x host=y pid=9\\n'); print(os.environ['HQNLS_HANDLE'], s.makefile().readline())"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hqnlsd.tools.hqnls",
            "run",
            "--server",
            f"127.0.0.1:{daemon.port}",
            "--publisher",
            "Test Publisher",
            "--product",
            "Tool",
            "--version",
            "1.0",
            "--",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_environment(),
        check=False,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    handle, reply = result.stdout.split(" ", 1)
    assert handle.strip()
    assert reply.startswith("ERR NOLICENCES"), reply  # the only licence was held by hqnls
    with daemon.client() as client:
        after = client.call(
            "REQUEST",
            publisher="Test Publisher",
            product="Tool",
            version="1.0",
            user="x",
            host="y",
            pid=10,
        )
        assert isinstance(after, Ok), after  # released when the command ended
