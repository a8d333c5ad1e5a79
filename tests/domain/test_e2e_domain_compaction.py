"""End to end: log compaction in a three-member domain refuses no client.

Three real daemons with ``[domain] max-entries`` set low in a config file, so the
primary compacts its log (a view change to itself) about once a second while
closed-loop clients REQUEST and RELEASE on it. No answer may be a domain status
(NEW_MASTER, NOTVERIFIED, TRY_SERVER, LOSTMASTER): the clients' commands wait
out each hand-over instead (`DomainNode.held`).
"""

from __future__ import annotations

import collections
import re
import threading
import time
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
    product_permit,
    request_licence,
    wait_for,
)

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Compacted Widget"
VERSION = "1.0"
#: How long three daemons may take to verify each other and admit everyone.
ELECTION_BOUND = 30.0
#: The closed loop's length and width.
SECONDS = 6.0
CLIENTS = 4
#: A reply must come within this (a held command waits a few round trips, each
#: slower on a loaded machine).
REPLY_TIMEOUT = 30.0
#: Statuses a client sees when the domain changes hands under it.
DOMAIN_STATUSES = {Status.NEW_MASTER, Status.NOTVERIFIED, Status.TRY_SERVER, Status.LOSTMASTER}


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


#: Guards the shared answer counter of the client threads.
_LOCK = threading.Lock()


def closed_loop(daemon: Daemon, client: int, end: float, answers: collections.Counter[str]) -> None:
    """REQUEST then RELEASE on ``daemon`` until ``end``; count every answer by kind
    (an exception counts as ``ERROR <type>``)."""
    try:
        _loop(daemon, client, end, answers)
    except Exception as error:
        with _LOCK:
            answers[f"ERROR {type(error).__name__}"] += 1


def _loop(daemon: Daemon, client: int, end: float, answers: collections.Counter[str]) -> None:
    with daemon.client(timeout=REPLY_TIMEOUT) as connection:
        turn = 0
        while time.monotonic() < end:
            turn += 1
            reply = connection.call(
                "REQUEST",
                publisher=PUBLISHER,
                product=PRODUCT,
                version=VERSION,
                user="tester",
                host="testhost",
                pid=5000 + client,
                client=f"loop-{client}-{turn}",
            )
            kinds = [_kind("REQUEST", reply)]
            if is_grant(reply):
                handle = reply.get("handle") or ""
                kinds.append(_kind("RELEASE", connection.call("RELEASE", handle=handle)))
            with _LOCK:
                answers.update(kinds)


def _kind(verb: str, reply: Ok | Err) -> str:
    return f"{verb} OK" if isinstance(reply, Ok) else f"{verb} {reply.status.name}"


def test_compaction_under_a_closed_loop_refuses_nobody(daemons: DaemonHarness) -> None:
    """About one compaction a second under load; every REQUEST and RELEASE is answered
    OK (none NEW_MASTER, NOTVERIFIED, TRY_SERVER or LOSTMASTER)."""
    config = daemons.root / "hqnlsd.toml"
    config.write_text("[domain]\nmax-entries = 20\n", "utf-8")
    widget = product_permit(PRODUCT, publisher=PUBLISHER, version=VERSION, floating_count=10)
    members = domain_daemons(daemons, 3, [widget], extra_args=["--config", str(config)])
    daemons.start_all(*members)
    first = members[0]
    wait_for(
        "hqnserver1 grants",
        lambda: request_licence(
            first, "warm-up", publisher=PUBLISHER, product=PRODUCT, version=VERSION
        ),
        is_grant,
        ELECTION_BOUND,
    )
    # Wait (bounded) for the view of all three, so the loop runs in a steady domain.
    deadline = time.monotonic() + ELECTION_BOUND
    while "members [1, 2, 3] primary 1" not in first.log_text():
        assert time.monotonic() < deadline, "hqnserver1 never admitted both backups"
        time.sleep(0.2)
    before = _epochs(first)
    answers: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + SECONDS
    threads = [
        threading.Thread(target=closed_loop, args=(first, client, end, answers))
        for client in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 4 * REPLY_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    compactions = _epochs(first) - before
    print(f"closed loop: {dict(answers)}; {compactions} view changes in {SECONDS} s")
    assert compactions >= 2, f"only {compactions} compactions: the test tests nothing"
    refused = {kind: n for kind, n in answers.items() if kind.split()[1] in _names()}
    assert not refused, f"clients saw the view change: {refused} (all answers {dict(answers)})"
    assert not [kind for kind in answers if kind.startswith("ERROR")], dict(answers)
    assert answers["REQUEST OK"] > 100 and answers["RELEASE OK"] == answers["REQUEST OK"]


def _names() -> set[str]:
    return {status.name for status in DOMAIN_STATUSES}


def _epochs(daemon: Daemon) -> int:
    """The latest epoch hqnserver1 installed, from its log."""
    found = re.findall(r"installed epoch (\d+)", daemon.log_text())
    return int(found[-1]) if found else 0
