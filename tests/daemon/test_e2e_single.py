"""End to end: a real ``twistd -n hqnlsd`` on 127.0.0.1, killed with SIGKILL and restarted.

Issue 3 "must show": licences requested over TCP until NOLICENCES survive
``kill -9`` and a restart on the same state directory; the old handles UPDATE,
the count is still enforced, a retried REQUEST (same client token) gets the same
handle, and a RELEASE frees a licence for the next requester. Also: a failed bind
stops start-up with a clear message and a non-zero exit, and a permit file with
an error is logged with file, line and condition while the products sealed
before the error are served.
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.permits.policy import Policy
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonError,
    DaemonHarness,
    LineClient,
    make_permit,
    product_permit,
)

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Widget Studio"  # a blank inside: quoting on the wire, end to end
VERSION = "2.5"
FLOATING = 3
LOCKED = 2
PERIOD_SECONDS = 5 * 60


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def write_widget_permit(daemons: DaemonHarness) -> None:
    """3 floating licences + 2 locked to this host, served by daemon 1 alone."""
    me = daemons.host(1)
    daemons.write_permit(
        make_permit(
            [me],
            [
                product_permit(
                    PRODUCT,
                    publisher=PUBLISHER,
                    version=VERSION,
                    policy=int(Policy.GRAB),
                    node_count=LOCKED,
                    floating_count=FLOATING,
                    locked_nodes=(me,),
                    data=(7, -1, 65536),
                )
            ],
        )
    )


def request(
    client: LineClient, token: str | None, *, hostid: int | None = None, pid: int = 4242
) -> Ok | Err:
    """REQUEST one Widget Studio licence (a locked one if ``hostid`` names a locked node)."""
    fields: dict[str, str | int] = {
        "publisher": PUBLISHER,
        "product": PRODUCT,
        "version": VERSION,
        "user": "tester",
        "host": "testhost",
        "pid": pid,
    }
    if token is not None:
        fields["client"] = token
    if hostid is not None:
        fields["hostid"] = f"0x{hostid:08x}"
    return client.call("REQUEST", **fields)


def granted(reply: Ok | Err) -> Ok:
    """The reply, which must be a grant."""
    assert isinstance(reply, Ok), f"expected a grant, got {reply}"
    assert reply.get("handle"), reply
    return reply


def denied(reply: Ok | Err, status: Status) -> Err:
    """The reply, which must be ``ERR status`` with its numeric code."""
    assert isinstance(reply, Err), f"expected ERR {status.name}, got {reply}"
    assert reply.status is status, reply
    return reply


def restart_after_kill(daemon: Daemon) -> None:
    """SIGKILL the daemon (no chance to flush or close anything) and start it again."""
    assert daemon.kill() == -signal.SIGKILL
    daemon.start_and_wait()


def test_licences_survive_sigkill_and_restart(daemons: DaemonHarness) -> None:
    """Handles granted before a kill -9 stay valid after restart; the count is enforced."""
    write_widget_permit(daemons)
    daemon = daemons.daemon("single").start_and_wait()
    me = daemons.host(1)

    handles: dict[str, Ok] = {}
    with daemon.client() as client:
        for n in range(1, FLOATING + 1):
            reply = granted(request(client, f"float-{n}", pid=1000 + n))
            assert reply.get("type") == "floating"
            assert reply.get("period") == str(PERIOD_SECONDS)
            assert reply.get("data") == "7 -1 65536"
            assert reply.get("start") == "01/01/2020"
            assert reply.get("expiry") == "31/12/2099"
            handles[f"float-{n}"] = reply
        denied(request(client, "float-extra"), Status.NOLICENCES)
        for n in range(1, LOCKED + 1):
            reply = granted(request(client, f"locked-{n}", hostid=me.unique_id, pid=2000 + n))
            assert reply.get("type") == "locked"
            handles[f"locked-{n}"] = reply
        denied(request(client, "locked-extra", hostid=me.unique_id), Status.NOLICENCES)

    indices = sorted(int(reply.get("index") or 0) for reply in handles.values())
    assert indices == list(range(1, LOCKED + FLOATING + 1))
    assert len({reply.get("handle") for reply in handles.values()}) == LOCKED + FLOATING

    restart_after_kill(daemon)
    assert "5 licence(s) held" in daemon.log_text()

    with daemon.client() as client:
        for token, reply in handles.items():
            update = client.ok("UPDATE", handle=reply.get("handle") or "")
            assert update.get("handle") == reply.get("handle"), token
            assert update.get("period") == str(PERIOD_SECONDS)
        # The count is still enforced, for both pools.
        denied(request(client, "new-float"), Status.NOLICENCES)
        denied(request(client, "new-locked", hostid=me.unique_id), Status.NOLICENCES)
        # A REQUEST retried with the same client token gets the same handle back.
        again = granted(request(client, "float-1", pid=1001))
        assert again.get("handle") == handles["float-1"].get("handle")
        assert again.get("index") == handles["float-1"].get("index")
        assert again.get("duplicate") == "1"
        # RELEASE frees exactly one licence, which the next request gets.
        freed = handles["float-2"]
        assert client.ok("RELEASE", handle=freed.get("handle") or "").get("handle") == (
            freed.get("handle")
        )
        replacement = granted(request(client, "float-4", pid=1004))
        assert replacement.get("index") == freed.get("index")
        assert replacement.get("handle") not in {r.get("handle") for r in handles.values()}
        denied(request(client, "float-5"), Status.NOLICENCES)

    # The grant answered after the restart was durable before it was answered.
    restart_after_kill(daemon)
    with daemon.client() as client:
        client.ok("UPDATE", handle=replacement.get("handle") or "")
        denied(client.call("UPDATE", handle=freed.get("handle") or ""), Status.BADHANDLE)
        for token in ("float-1", "float-3", "locked-1", "locked-2"):
            client.ok("UPDATE", handle=handles[token].get("handle") or "")
        denied(request(client, "float-6"), Status.NOLICENCES)


def test_failed_bind_stops_startup(daemons: DaemonHarness) -> None:
    """A port already taken: start-up stops with a message naming the address, exit != 0."""
    write_widget_permit(daemons)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        daemon = daemons.daemon("bind", port=port).start()
        code = daemon.wait_exit()
        assert code != 0
        log = daemon.log_text()
        assert f"cannot listen on 127.0.0.1:{port}" in log
        assert "Address already in use" in log
        assert "another --port" in log
        # It never got as far as reading its state or serving anything.
        assert "state restored" not in log
        with pytest.raises(DaemonError, match="exited with status"):
            daemon.wait_ready(timeout=1.0)


def test_bad_permit_file_logged_and_earlier_products_served(daemons: DaemonHarness) -> None:
    """A product whose seal is wrong: file, line and condition 103 logged; earlier ones served."""
    me = daemons.host(1)
    products = [
        product_permit("First", publisher=PUBLISHER, version="1.0", floating_count=1),
        product_permit("Second", publisher=PUBLISHER, version="1.0", floating_count=2),
        product_permit("Third", publisher=PUBLISHER, version="1.0", floating_count=1),
    ]
    path = daemons.write_permit(make_permit([me], products, number=7))
    # Tamper with the second product after sealing: 2 floating licences become 20.
    lines = path.read_text("utf-8").splitlines(keepends=True)
    second = next(i for i, line in enumerate(lines) if line.strip() == "Second")
    policy_line = next(
        i for i in range(second, len(lines)) if re.match(r"0x[0-9a-fA-F]+\s", lines[i])
    )
    fields = lines[policy_line].split()
    assert fields[2] == "2", lines[policy_line]
    lines[policy_line] = lines[policy_line].replace(" 2 ", " 20 ", 1)
    path.write_text("".join(lines), "utf-8")
    lock_lines = [i + 1 for i, line in enumerate(lines) if line.startswith("LOCK:")]
    seal_of_second = lock_lines[2]  # header, First, Second

    daemon = daemons.daemon("badpermit").start_and_wait()
    log = daemon.log_text()
    assert f"{path}:{seal_of_second}: error 103" in log
    with daemon.client() as client:
        first = granted(
            client.call(
                "REQUEST", publisher=PUBLISHER, product="First", version="1.0",
                user="u", host="h", pid=1,
            )
        )
        assert first.get("type") == "floating"
        for name in ("Second", "Third"):
            denied(
                client.call(
                    "REQUEST", publisher=PUBLISHER, product=name, version="1.0",
                    user="u", host="h", pid=1,
                ),
                Status.BADPRODUCT,
            )


def test_sigterm_stops_cleanly_and_keeps_state(daemons: DaemonHarness) -> None:
    """An orderly stop (SIGTERM) writes everything answered, a RELEASE included."""
    write_widget_permit(daemons)
    daemon = daemons.daemon("orderly").start_and_wait()
    with daemon.client() as client:
        kept = granted(request(client, "keep")).get("handle") or ""
        gone = granted(request(client, "gone", pid=5)).get("handle") or ""
        client.ok("RELEASE", handle=gone)
    # twistd re-raises the signal after its orderly shutdown, so the status says SIGTERM.
    assert daemon.terminate() == -signal.SIGTERM
    assert "Server Shut Down." in daemon.log_text()

    daemon.start_and_wait()
    assert "1 licence(s) held" in daemon.log_text()
    with daemon.client() as client:
        client.ok("UPDATE", handle=kept)
        denied(client.call("UPDATE", handle=gone), Status.BADHANDLE)


def test_two_single_host_domains_redirect_to_each_other(daemons: DaemonHarness) -> None:
    """Daemons on 127.0.0.1 and 127.0.0.2 each serve their own permit, and redirect the other's."""
    daemons.write_hosts(["127.0.0.1", "127.0.0.2"])
    for n, name in ((1, "Alpha"), (2, "Beta")):
        daemons.write_permit(
            make_permit([daemons.host(n)], [product_permit(name, publisher=PUBLISHER)], number=n),
            name=f"{name.lower()}-hqn.permit",
        )
    first = daemons.daemon("first", n=1)
    second = daemons.daemon("second", n=2)
    daemons.start_all(first, second)

    for daemon, mine, theirs, their_address in (
        (first, "Alpha", "Beta", "127.0.0.2"),
        (second, "Beta", "Alpha", "127.0.0.1"),
    ):
        with daemon.client() as client:
            product = {"publisher": PUBLISHER, "version": "1.0", "user": "u", "host": "h"}
            granted(client.call("REQUEST", product=mine, pid=1, **product))
            redirect = denied(
                client.call("REQUEST", product=theirs, pid=2, **product), Status.TRY_DOMAIN
            )
            assert redirect.get("domain") == their_address
