"""End to end: one host in two server domains, with a different role in each.

Issue 4: "a host in several domains with a different role in each". Three real
daemons on 127.0.0.1-3 (hqnserver1..3); permit *Alpha* is served by the domain
{hqnserver1, hqnserver2}, permit *Beta* by {hqnserver2, hqnserver3}. hqnserver2
is the backup of the first domain (hqnserver1 ranks lower) and the primary of the
second (it is that domain's lowest rank), at the same time, over the same peer
links.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.admin.client import AdminClient
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonHarness,
    domain_daemons,
    is_grant,
    make_permit,
    product_permit,
    request_licence,
    wait_for,
)
from tests.domain.test_e2e_domain import ELECTION_BOUND, PUBLISHER, VERSION

pytestmark = pytest.mark.e2e


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown) at the end."""
    with DaemonHarness(tmp_path) as daemons:
        yield daemons


def ask(daemon: Daemon, product: str, token: str) -> Ok | Err:
    """REQUEST one licence of ``product`` from ``daemon``."""
    return request_licence(
        daemon, token, publisher=PUBLISHER, product=product, version=VERSION, pid=77
    )


def domains_seen_by(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """sinfo's domains on ``daemon``, by their addresses."""
    client = AdminClient.unix(daemon.state_dir / "admin.sock", timeout=20.0)
    try:
        answer = client.call("sinfo", {})
    finally:
        client.close()
    assert answer.get("ok"), answer
    return {d["domain"]: d for d in answer["result"]["domains"]}


def test_a_host_is_backup_in_one_domain_and_primary_in_another(harness: DaemonHarness) -> None:
    """hqnserver2 redirects Alpha to hqnserver1 and grants Beta itself; hqnserver3
    redirects Beta to hqnserver2; hqnserver1 does not serve Beta (another domain)."""
    alpha = product_permit("Alpha", publisher=PUBLISHER, version=VERSION, floating_count=2)
    beta = product_permit("Beta", publisher=PUBLISHER, version=VERSION, floating_count=2)
    first, second, third = domain_daemons(harness, 3, [alpha])
    # Replace the three-member permit with two permits of two-member domains.
    harness.write_permit(make_permit([harness.host(1), harness.host(2)], [alpha]))
    harness.write_permit(make_permit([harness.host(2), harness.host(3)], [beta]), "beta-hqn.permit")
    harness.start_all(first, second, third)

    granted_alpha, _ = wait_for(
        "hqnserver1 grants Alpha", lambda: ask(first, "Alpha", "a1"), is_grant, ELECTION_BOUND
    )
    granted_beta, _ = wait_for(
        "hqnserver2 grants Beta", lambda: ask(second, "Beta", "b1"), is_grant, ELECTION_BOUND
    )
    redirect_alpha, _ = wait_for(
        "hqnserver2 redirects Alpha",
        lambda: ask(second, "Alpha", "a2"),
        lambda reply: isinstance(reply, Err) and reply.status is Status.TRY_SERVER,
        ELECTION_BOUND,
    )
    assert (redirect_alpha.get("n"), redirect_alpha.get("addr")) == ("1", "127.0.0.1")
    assert redirect_alpha.get("domain") == "127.0.0.1 127.0.0.2"
    redirect_beta, _ = wait_for(
        "hqnserver3 redirects Beta",
        lambda: ask(third, "Beta", "b2"),
        lambda reply: isinstance(reply, Err) and reply.status is Status.TRY_SERVER,
        ELECTION_BOUND,
    )
    assert (redirect_beta.get("n"), redirect_beta.get("addr")) == ("2", "127.0.0.2")
    assert redirect_beta.get("domain") == "127.0.0.2 127.0.0.3"
    elsewhere = ask(first, "Beta", "b3")
    assert isinstance(elsewhere, Err) and elsewhere.status is Status.TRY_DOMAIN, elsewhere
    assert elsewhere.get("domain") == "127.0.0.2 127.0.0.3"

    roles = {key: d["role"] for key, d in domains_seen_by(second).items()}
    assert roles == {"127.0.0.1 127.0.0.2": "backup", "127.0.0.2 127.0.0.3": "primary"}
    # Each grant's handle updates at its own domain's primary.
    for daemon, handle in (
        (first, granted_alpha.get("handle")),
        (second, granted_beta.get("handle")),
    ):
        with daemon.client() as client:
            update = client.call("UPDATE", handle=handle or "")
        assert isinstance(update, Ok), update
