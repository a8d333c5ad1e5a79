"""End to end: administering a server domain's products from any member.

Issue 5: state-changing commands take effect on the acting primary of the
product's domain. Two real daemons of a three-member domain (hqnserver1 is the
primary, hqnserver2 a backup); every command is sent to the *backup's* local
admin socket, which forwards changes over the peer link to the primary. Also:
listings and ``sinfo`` on a backup show the domain, its role and the peer
links; a handle the backup has not seen, but that its domain's prefix names,
is redirected (TRY_SERVER), not refused as unknown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.admin.client import AdminClient
from hqnlsd.domain.runtime import domain_id, handle_tag
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import REPO_ROOT, Daemon, DaemonHarness, is_grant, is_status, wait_for
from tests.domain.test_e2e_domain import (
    ELECTION_BOUND,
    PRODUCT,
    PUBLISHER,
    call,
    daemons,  # noqa: F401 (the fixture)
    make_domain,
    request,
)

pytestmark = pytest.mark.e2e

NAMED = {"product": {"publisher": PUBLISHER, "product": PRODUCT}}


def admin(daemon: Daemon, command: str, **args: Any) -> dict[str, Any]:
    """One admin command on ``daemon``'s local socket; the whole answer."""
    client = AdminClient.unix(daemon.state_dir / "admin.sock", timeout=20.0)
    try:
        return client.call(command, args)
    finally:
        client.close()


def result(daemon: Daemon, command: str, **args: Any) -> Any:
    """The result of an admin command that must succeed."""
    answer = admin(daemon, command, **args)
    assert answer.get("ok"), answer
    return answer["result"]


def domain_products(daemon: Daemon) -> list[dict[str, Any]]:
    """The domain product as ``listp`` on ``daemon`` shows it (none, or one)."""
    products = result(daemon, "listp")["products"]
    return [p for p in products if p["product"] == PRODUCT]


def domain_product(daemon: Daemon) -> dict[str, Any]:
    """The domain product as ``listp`` on ``daemon`` shows it."""
    (found,) = domain_products(daemon)
    return dict(found)


def test_changes_on_a_backup_act_on_the_primary(daemons: DaemonHarness) -> None:  # noqa: F811
    """listp/sinfo on the backup show the domain; policy, timeout, kill, adduser and
    reinit sent to the backup are made by the primary and reach both copies."""
    first, second, _third = make_domain(daemons)
    first.start_and_wait()
    second.start_and_wait()
    granted, _ = wait_for("primary grants", lambda: request(first, "one"), is_grant, ELECTION_BOUND)
    handle = granted.get("handle") or ""
    wait_for(
        "the backup's copy holds the licence",
        lambda: Ok.of(used=sum(p["floating_used"] for p in domain_products(second))),
        lambda reply: reply.get("used") == "1",
        ELECTION_BOUND,
    )

    # Listings on the backup: its copy of the domain state, with its role.
    listed = domain_product(second)
    assert (listed["role"], listed["primary"]) == ("backup", "127.0.0.1"), listed
    assert listed["domain"] == "127.0.0.1 127.0.0.2 127.0.0.3"
    assert listed["floating_used"] == 1
    assert domain_product(first)["role"] == "primary"
    info = result(second, "sinfo")
    (domain,) = info["domains"]
    assert (domain["role"], domain["primary"], domain["rank"]) == ("backup", "127.0.0.1", 2)
    assert {p["address"]: p["up"] for p in info["peers"]}["127.0.0.1"] is True

    # A change sent to the backup is made on the primary.
    changed = result(second, "policy", value="UVIS+", **NAMED)
    assert changed["forwarded_to"] == "127.0.0.1", changed
    assert "UVIS" in domain_product(first)["policy_text"]
    wait_for(
        "the backup's copy has the new policy",
        lambda: Ok.of(text=domain_product(second)["policy_text"]),
        lambda reply: "UVIS" in (reply.get("text") or ""),
        ELECTION_BOUND,
    )
    result(second, "timeout", seconds=1234, **NAMED)
    assert domain_product(first)["timeout"] == 1234
    result(second, "adduser", user="alice", **NAMED)
    assert "alice" in domain_product(first)["named_users"]
    # A query on the backup reads its own copy (no forwarding).
    queried = result(second, "timeout", **NAMED)
    assert "forwarded_to" not in queried

    # kill by handle, sent to the backup: the primary revokes it.
    killed = result(second, "kill", handle=handle)
    assert killed["forwarded_to"] == "127.0.0.1", killed
    gone = call(first, "UPDATE", handle)
    assert isinstance(gone, Err) and gone.status is Status.LOSTLICENCE, gone

    # The changes are domain state: they survive SIGKILL of both members.
    first.kill()
    second.kill()
    first.start_and_wait()
    second.start_and_wait()
    wait_for(
        "the restarted domain serves",
        lambda: request(first, "after-restart"),
        is_grant,
        ELECTION_BOUND,
    )
    wait_for_backup(first, second)
    restored = domain_product(first)
    assert "UVIS" in restored["policy_text"] and restored["timeout"] == 1234, restored
    assert "alice" in restored["named_users"], restored

    # A product the domain does not serve is refused with a clear error.
    refused = admin(second, "policy", value="GRAB+", product={"publisher": "No", "product": "Such"})
    assert not refused.get("ok") and refused["error"] == "BADPRODUCT", refused

    # reinit on the backup: its own products here, the domain's on the primary.
    again = request(first, "two")
    assert is_grant(again), again
    reinit = result(second, "reinit")
    (done,) = reinit["domains"]
    assert (done["on"], done["revoked"]) == ("127.0.0.1", 2), reinit  # "after-restart", "two"
    assert reinit["revoked"] == 2
    assert "UVIS" not in domain_product(first)["policy_text"]  # the permit's own policy again
    assert domain_product(first)["floating_used"] == 0

    # The usage reports record the role changes and the domain's grants (on the primary).
    # A view change (the restarted member admitted again) passes through takeover
    # and back: wait, bounded, for each member's role record to settle.
    def last_role(daemon: Daemon) -> Ok:
        roles = [r["role"] for r in usage_records(daemon) if r["event"] == "role"]
        return Ok.of(role=roles[-1] if roles else "")

    for daemon, role in ((first, "primary"), (second, "backup")):
        wait_for(
            f"the last role record of {daemon.name} says {role}",
            lambda daemon=daemon: last_role(daemon),
            lambda reply, role=role: reply.get("role") == role,
            ELECTION_BOUND,
        )
    first_usage = usage_records(first)
    assert any(r["event"] == "grant" and r.get("handle") == handle for r in first_usage)

    # hqn_lsa's text on the backup: where the product is served, where a change was made.
    # On a busy machine the primary may drop and re-admit the backup at any time
    # (silent for peer_timeout): each check waits, bounded, for the backup role.
    wait_for(
        "listp on hqnserver2 says backup here",
        lambda: Ok.of(text=lsa_text(second, "-listp")),
        lambda reply: "backup here; primary 127.0.0.1" in (reply.get("text") or ""),
        ELECTION_BOUND,
    )
    wait_for(
        "adduser on hqnserver2 is done on the primary",
        lambda: Ok.of(text=lsa_text(second, "-adduser", "1", "bob")),
        lambda reply: "done on the domain's acting primary 127.0.0.1" in (reply.get("text") or ""),
        ELECTION_BOUND,
    )
    # The primary may drop the restarted member for a moment (it was silent longer
    # than peer_timeout) and admit it again after `settle`: wait for that, bounded.
    wait_for(
        "sinfo on hqnserver2 shows it a backup",
        lambda: Ok.of(text=lsa(second, "-sinfo")),
        lambda reply: "hqnserver2 here is BACKUP" in (reply.get("text") or ""),
        ELECTION_BOUND,
    )


def test_a_handle_not_yet_seen_is_redirected(daemons: DaemonHarness) -> None:  # noqa: F811
    """A domain handle the backup has not seen (its prefix names the domain): TRY_SERVER."""
    first, second, _third = make_domain(daemons)
    first.start_and_wait()
    second.start_and_wait()
    wait_for("primary grants", lambda: request(first, "one"), is_grant, ELECTION_BOUND)
    key = domain_id([daemons.host(n) for n in (1, 2, 3)])
    unseen = f"{handle_tag(key)}-0123456789abcdef"
    redirected, _ = wait_for(
        "the backup redirects an unseen domain handle",
        lambda: call(second, "UPDATE", unseen),
        is_status(Status.TRY_SERVER),
        ELECTION_BOUND,
    )
    assert redirected.get("n") == "1", redirected
    at_primary = call(first, "UPDATE", unseen)
    assert isinstance(at_primary, Err) and at_primary.status is Status.BADHANDLE, at_primary
    granted = request(first, "two")
    assert (granted.get("handle") or "").startswith(handle_tag(key) + "-"), granted


def wait_for_backup(primary: Daemon, backup: Daemon) -> None:
    """Wait (bounded) until ``backup`` is a backup in ``primary``'s current view.

    A restarted member reports its persisted view at first; the primary may
    have dropped it while it was down and admits it again after `settle`.
    """

    def state() -> Ok:
        ours = result(primary, "sinfo")["domains"][0]
        theirs = result(backup, "sinfo")["domains"][0]
        joined = backup.address in ours["view"] and ours["role"] == "primary"
        same = theirs["epoch"] == ours["epoch"] and theirs["role"] == "backup"
        return Ok.of(ready="yes" if joined and same else "no")

    wait_for(
        f"{backup.name} is a backup in {primary.name}'s view",
        state,
        lambda reply: reply.get("ready") == "yes",
        ELECTION_BOUND,
    )


def usage_records(daemon: Daemon) -> list[dict[str, Any]]:
    """Every record of ``daemon``'s usage report."""
    path = Path(daemon.state_dir) / "usage.jsonl"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]


def lsa_text(daemon: Daemon, *args: str) -> str:
    """Like `lsa`, but a failed command is an answer too (to poll with): its output."""
    try:
        return lsa(daemon, *args)
    except AssertionError as failed:
        return str(failed)


def lsa(daemon: Daemon, *args: str) -> str:
    """hqn_lsa (a real process) on ``daemon``'s admin socket; its output."""
    argv = [
        sys.executable,
        "-m",
        "hqnlsd.tools.lsa",
        "--socket",
        str(Path(daemon.state_dir) / "admin.sock"),
        "--hosts",
        str(daemon.hosts_file),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HQN_LSA_HISTORY": "/dev/null"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout
