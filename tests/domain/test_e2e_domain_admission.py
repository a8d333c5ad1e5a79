"""End to end: a restarted member is admitted at once, and statuses say what is wrong.

Issue 10, with real ``twistd -n hqnlsd`` daemons on 127.0.0.1-3 and the default
timers. Before the fix a restarted third member took 5.9-7.4 s to be admitted
(its peers' links were waiting out their reconnection backoff, then the primary
waited `settle`), and if the primary died inside that window the two survivors,
a majority of the domain, answered NEW_MASTER until the old primary came back.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import Daemon, DaemonHarness, is_grant, is_status, wait_for
from tests.domain.test_e2e_domain import (
    ELECTION_BOUND,
    daemons,  # noqa: F401 (the fixture)
    make_domain,
    request,
)
from tests.domain.test_e2e_domain_admin import lsa, result

pytestmark = pytest.mark.e2e

#: Generous bound on the admission of a restarted member (the goal is 2 s, held on
#: simulated time by tests/domain/test_domain_node.py::
#: test_restarted_member_is_admitted_within_two_seconds; the machine running the
#: tests may be busy). The figure is printed.
ADMISSION_BOUND = 20.0
#: When the primary is killed after the restarted member first answers: inside
#: the 2 s goal, and inside the old window (5.9-7.4 s in the issue; 2.0 s and
#: more here before the fix: reconnection backoff, then `settle`, then the
#: restarted member's quarantine refusing the view that admits it). About 0.7 s
#: after the fix.
KILL_AFTER = 1.8
#: How long the survivors may take to serve after that kill (5 s expected).
RECOVERY_BOUND = 20.0
#: How long hqnserver3 stays down: long enough for its peers' reconnection
#: backoff to reach its ceiling (2 s plus up to 1 s of jitter), as after a reboot.
DOWN_FOR = 10.0


def domain_info(daemon: Daemon) -> dict[str, Any]:
    """The domain as ``sinfo`` on ``daemon`` shows it."""
    (info,) = result(daemon, "sinfo")["domains"]
    return dict(info)


def full_domain(harness: DaemonHarness) -> list[Daemon]:
    """Three members started, hqnserver1 serving a view of all three."""
    members = make_domain(harness)
    harness.start_all(*members)
    first, second, third = members
    wait_for("primary grants", lambda: request(first, "ready"), is_grant, ELECTION_BOUND)
    for backup in (second, third):
        wait_for(
            f"{backup.name} redirects to hqnserver1",
            lambda b=backup: request(b, "ready-backup"),  # type: ignore[misc]
            lambda reply: is_status(Status.TRY_SERVER)(reply) and reply.get("n") == "1",
            ELECTION_BOUND,
        )
    return members


def restart_after_drop(first: Daemon, third: Daemon) -> tuple[float, int]:
    """SIGKILL hqnserver3, wait until the primary has dropped it from its view, keep
    it down for DOWN_FOR seconds, start it again: the time.monotonic() of its first
    PING answer, and the epoch of the view that dropped it."""
    third.kill()
    killed = time.monotonic()
    dropped, _ = wait_for(
        "hqnserver1 drops hqnserver3 from its view",
        lambda: Ok.of(view=" ".join(domain_info(first)["view"]), epoch=domain_info(first)["epoch"]),
        lambda reply: "127.0.0.3" not in (reply.get("view") or ""),
        ELECTION_BOUND,
    )
    time.sleep(max(0.0, killed + DOWN_FOR - time.monotonic()))
    third.start()
    third.wait_ready()
    return time.monotonic(), int(dropped.get("epoch") or 0)


def admitted(third: Daemon, dropped: int) -> bool:
    """hqnserver3 is a backup in a view newer than the one that dropped it (sinfo on
    hqnserver3; right after its restart it still shows its stored, older view)."""
    info = domain_info(third)
    return info["role"] == "backup" and "127.0.0.3" in info["view"] and info["epoch"] > dropped


def test_restarted_member_is_admitted_fast_and_a_lonely_survivor_names_the_missing(
    daemons: DaemonHarness,  # noqa: F811
) -> None:
    """A restarted member is admitted within the bound of its first PING answer (the
    figure is printed); then with two of three members killed the survivor answers
    LOSTMASTER naming both, never NEW_MASTER, and sinfo says the same."""
    first, second, third = full_domain(daemons)
    answered, dropped = restart_after_drop(first, third)
    _, _ = wait_for(
        "hqnserver3 is admitted",
        lambda: Ok.of(admitted="yes" if admitted(third, dropped) else "no"),
        lambda reply: reply.get("admitted") == "yes",
        ADMISSION_BOUND,
    )
    took = time.monotonic() - answered
    print(f"admission: hqnserver3 admitted {took:.2f} s after its first PING answer")
    assert took <= ADMISSION_BOUND

    first.kill()
    second.kill()
    expected = (
        "this backup lost its primary and the domain cannot elect another until it reaches "
        "hqnserver1 at 127.0.0.1 and hqnserver2 at 127.0.0.2"
    )
    wait_for(
        "hqnserver3 says whom it waits for",
        lambda: request(third, "lonely"),
        lambda reply: isinstance(reply, Err) and reply.msg == expected,
        ELECTION_BOUND,
    )
    seen: set[str] = set()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        reply = request(third, "lonely")
        seen.add(reply.status.name if isinstance(reply, Err) else "OK")
        time.sleep(0.1)
    assert seen == {"LOSTMASTER"}, seen
    info = domain_info(third)
    assert info["role"] == "lostmaster", info
    assert info["waiting"] == [
        {"rank": 1, "address": "127.0.0.1"},
        {"rank": 2, "address": "127.0.0.2"},
    ], info
    text = lsa(third, "-sinfo")
    assert "hqnserver3 here is LOSTMASTER" in text, text
    assert "waiting for hqnserver1 at 127.0.0.1, hqnserver2 at 127.0.0.2" in text, text


def test_primary_dies_just_after_a_member_restarts(daemons: DaemonHarness) -> None:  # noqa: F811
    """The issue's scenario: hqnserver3 restarts after it was dropped from the view,
    and KILL_AFTER seconds after its first PING answer (inside the old admission
    window) the primary is SIGKILLed. hqnserver2 and hqnserver3, a majority of the
    domain, serve again within a bounded wait."""
    first, second, third = full_domain(daemons)
    answered, dropped = restart_after_drop(first, third)
    admitted_at: float | None = None
    while time.monotonic() < answered + KILL_AFTER:
        if admitted_at is None and admitted(third, dropped):
            admitted_at = time.monotonic()
        time.sleep(0.05)
    if admitted_at is not None:
        print(f"admission: hqnserver3 admitted {admitted_at - answered:.2f} s after answering")
    first.kill()
    granted, took = wait_for(
        "hqnserver2 or hqnserver3 serves",
        lambda: max(request(second, "after"), request(third, "after"), key=is_grant),
        is_grant,
        RECOVERY_BOUND,
    )
    print(f"recovery: a survivor granted {took:.2f} s after SIGKILL of the primary")
    assert isinstance(granted, Ok)
