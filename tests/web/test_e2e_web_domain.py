"""End to end: the web console of the members of a three-member server domain shows
the view, the epoch, the primary and the peer links with their round trip, a licence
held in the domain on a backup too, and a failover once the primary is killed."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import (
    IO_TIMEOUT,
    Daemon,
    DaemonHarness,
    domain_daemons,
    free_port_on_all,
    is_grant,
    product_permit,
    request_licence,
    wait_for,
)

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Domain Widget"
#: Election and failover bounds of real processes on a loaded machine (as
#: tests/domain/test_e2e_domain.py allows them).
ELECTION_BOUND = 40.0
FAILOVER_BOUND = 30.0
ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    with DaemonHarness(tmp_path) as harness:
        yield harness


def api(daemon: Daemon, port: int, name: str) -> Any:
    url = f"http://{daemon.address}:{port}/api/{name}"
    with urllib.request.urlopen(url, timeout=IO_TIMEOUT) as answer:
        return json.loads(answer.read())


def until(what: str, check: Callable[[], bool], bound: float) -> None:
    deadline = time.monotonic() + bound
    while True:
        try:
            if check():
                return
        except OSError:
            pass  # a member still starting, or just killed
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound} s: {what}")
        time.sleep(0.2)


def domain_with_web(daemons: DaemonHarness) -> tuple[list[Daemon], int]:
    """Three members, each with its console on its own loopback address, one port."""
    widget = product_permit(PRODUCT, publisher=PUBLISHER, floating_count=3)
    members = domain_daemons(daemons, 3, [widget])
    port = free_port_on_all(ADDRESSES, avoid=[m.port for m in members])
    for member in members:
        member.extra_args = (*member.extra_args, "--web", f"tcp:{port}:interface={member.address}")
    daemons.start_all(*members)
    return members, port


def primary_seen(daemon: Daemon, port: int, primary: str, members: int) -> bool:
    listed = api(daemon, port, "domains")["domains"]
    return (
        len(listed) == 1 and listed[0]["primary"] == primary and len(listed[0]["view"]) == members
    )


def test_domain_page_shows_view_primary_peers_and_a_failover(daemons: DaemonHarness) -> None:
    (first, second, _third), port = domain_with_web(daemons)
    until(
        "hqnserver2's console shows hqnserver1 primary in a view of three",
        lambda: primary_seen(second, port, "127.0.0.1", 3),
        ELECTION_BOUND,
    )
    domains = api(second, port, "domains")
    domain = domains["domains"][0]
    assert domain["domain"] == " ".join(ADDRESSES)
    assert domain["role"] == "backup" and domain["view"] == ADDRESSES
    epoch = domain["epoch"]
    until(
        "both peer links up with a round trip",
        lambda: (
            sorted(
                p["address"] for p in api(second, port, "domains")["peers"] if p["up"] and p["rtt"]
            )
            == ["127.0.0.1", "127.0.0.3"]
        ),
        ELECTION_BOUND,
    )
    overview = api(first, port, "overview")
    assert [d["role"] for d in overview["domains"]] == ["primary"]
    assert overview["peers_up"] == 2

    granted, _ = wait_for(
        "the primary grants",
        lambda: request_licence(
            first, "web-one", publisher=PUBLISHER, product=PRODUCT, version="1.0"
        ),
        is_grant,
        ELECTION_BOUND,
    )
    until(
        "the backup's console shows the licence held in the domain",
        lambda: (
            [(h["user"], h["domain"]) for h in api(second, port, "holders")["holders"]]
            == [("tester", " ".join(ADDRESSES))]
        ),
        ELECTION_BOUND,
    )

    first.kill()
    until(
        "a failover on hqnserver2's console: a new primary, a later epoch, hqnserver1 down",
        lambda: (
            (d := api(second, port, "domains"))["domains"][0]["primary"]
            in ("127.0.0.2", "127.0.0.3")
            and d["domains"][0]["epoch"] > epoch
            and not next(p for p in d["peers"] if p["address"] == "127.0.0.1")["up"]
        ),
        FAILOVER_BOUND,
    )
    assert granted.get("handle") not in json.dumps(api(second, port, "holders"))
