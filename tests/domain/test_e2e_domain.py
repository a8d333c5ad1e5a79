"""End to end: a three-member server domain of real ``twistd -n hqnlsd`` daemons.

Issue 4 "must show" (real processes): three daemons on 127.0.0.1/2/3 with a
hosts file naming them hqnserver1..3, one permit whose server domain is the
three, a domain CA and a member certificate for each (`hqnlsd.tools.ca`), the
default failover timers. With one daemon up nothing is served (NOTVERIFIED);
with two the primary (lowest rank up) grants and the backup redirects with
TRY_SERVER; after SIGKILL of the primary the backup grants within a bounded
wait and the handle granted before the kill UPDATEs on it; a restarted old
primary takes the role back without losing a licence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonHarness,
    domain_daemons,
    is_grant,
    is_status,
    product_permit,
    request_licence,
    wait_for,
)

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Domain Widget"
VERSION = "1.0"
#: A backup must serve within 5 s of the primary's death (held exactly, on simulated
#: time, by tests/domain/test_domain_node.py::test_failover_within_five_seconds);
#: real processes on a loaded machine are allowed 20 s.
FAILOVER_BOUND = 20.0
#: How long a pair of daemons may take to verify each other and elect a primary.
ELECTION_BOUND = 30.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def make_domain(daemons: DaemonHarness) -> list[Daemon]:
    """Three daemons (not started) serving one permit whose domain is all three."""
    widget = product_permit(PRODUCT, publisher=PUBLISHER, version=VERSION, floating_count=3)
    return domain_daemons(daemons, 3, [widget])


def request(daemon: Daemon, token: str) -> Ok | Err:
    """REQUEST one licence of the domain's product from ``daemon``."""
    return request_licence(daemon, token, publisher=PUBLISHER, product=PRODUCT, version=VERSION)


def call(daemon: Daemon, verb: str, handle: str) -> Ok | Err:
    """UPDATE, RELEASE or QUERY ``handle`` at ``daemon``."""
    with daemon.client() as client:
        if verb == "QUERY":
            return client.call(verb, handle=handle, what="period")
        return client.call(verb, handle=handle)


def test_three_member_domain_failover_and_failback(daemons: DaemonHarness) -> None:
    """NOTVERIFIED alone; primary grants and backup redirects; a backup takes over
    within the bound after SIGKILL, old handles UPDATE there; the old primary
    takes the role back on restart and every licence is still held."""
    first, second, third = make_domain(daemons)

    # (1) One member up: not a quorum of three, so nothing is served.
    first.start_and_wait()
    alone = request(first, "alone")
    assert isinstance(alone, Err) and alone.status is Status.NOTVERIFIED, alone
    assert alone.get("domain") == "127.0.0.1 127.0.0.2 127.0.0.3", alone

    # (2) Two up: hqnserver1 (the lowest rank up) becomes primary and grants.
    second.start_and_wait()
    granted, _ = wait_for("primary grants", lambda: request(first, "one"), is_grant, ELECTION_BOUND)
    handle_one = granted.get("handle") or ""
    # The backup redirects to the primary with its rank and address.
    redirect, _ = wait_for(
        "backup redirects",
        lambda: request(second, "via-backup"),
        is_status(Status.TRY_SERVER),
        ELECTION_BOUND,
    )
    assert redirect.get("n") == "1" and redirect.get("addr") == "127.0.0.1", redirect
    assert redirect.get("domain") == "127.0.0.1 127.0.0.2 127.0.0.3", redirect
    # The backup knows the replicated handle, and redirects its UPDATE too.
    update_at_backup, _ = wait_for(
        "backup knows the handle",
        lambda: call(second, "UPDATE", handle_one),
        is_status(Status.TRY_SERVER),
        ELECTION_BOUND,
    )
    assert update_at_backup.get("n") == "1", update_at_backup
    second_grant = request(first, "two")
    assert is_grant(second_grant), second_grant
    handle_two = second_grant.get("handle") or ""
    # The same token again: the same licence, not a second one.
    again = request(first, "one")
    assert is_grant(again) and again.get("handle") == handle_one, again

    # The third member joins as a backup, so that two of three survive the kill.
    third.start_and_wait()
    joined, _ = wait_for(
        "hqnserver3 joins as a backup",
        lambda: call(third, "UPDATE", handle_two),
        is_status(Status.TRY_SERVER),
        ELECTION_BOUND,
    )
    assert joined.get("n") == "1", joined
    # Admitting it changes the view; wait until the primary serves in the new view.
    wait_for(
        "hqnserver1 serves in the view of three",
        lambda: call(first, "UPDATE", handle_one),
        lambda reply: isinstance(reply, Ok),
        ELECTION_BOUND,
    )

    # (3) SIGKILL the primary: a backup takes over and grants within the bound.
    first.kill()
    third_grant, took = wait_for(
        "backup takes over", lambda: request(second, "three"), is_grant, FAILOVER_BOUND
    )
    handle_three = third_grant.get("handle") or ""
    print(f"failover: hqnserver2 granted {took:.2f} s after SIGKILL of hqnserver1")
    # Handles granted before the kill UPDATE on the new primary.
    for handle in (handle_one, handle_two):
        update = call(second, "UPDATE", handle)
        assert isinstance(update, Ok) and update.get("handle") == handle, update
    # Three floating licences, all held: the count survived the failover.
    full = request(second, "four")
    assert isinstance(full, Err) and full.status is Status.NOLICENCES, full

    # (4) The old primary restarts and takes the role back (failback), losing nothing.
    first.start_and_wait()
    wait_for(
        "hqnserver1 serves again",
        lambda: call(first, "UPDATE", handle_one),
        lambda reply: isinstance(reply, Ok),
        ELECTION_BOUND,
    )
    wait_for(
        "hqnserver2 redirects to hqnserver1",
        lambda: call(second, "UPDATE", handle_two),
        lambda reply: is_status(Status.TRY_SERVER)(reply) and reply.get("n") == "1",
        ELECTION_BOUND,
    )
    for handle in (handle_one, handle_two, handle_three):
        update = call(first, "UPDATE", handle)
        assert isinstance(update, Ok) and update.get("handle") == handle, update
    still_full = request(first, "five")
    assert isinstance(still_full, Err) and still_full.status is Status.NOLICENCES, still_full
    released = call(first, "RELEASE", handle_two)
    assert isinstance(released, Ok), released
    fourth = request(first, "six")
    assert is_grant(fourth), fourth
