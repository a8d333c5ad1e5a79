"""End to end (issue 14): answers released per batch survive a SIGKILL at any point.

A real ``twistd -n hqnlsd`` (whose journal commits on its writer thread) serves
several connections, each doing REQUEST (with a ``client=`` token) and RELEASE as
fast as it is answered; the daemon is SIGKILLed at a random (seeded) moment,
restarted on the same state directory, and checked against what the clients were
told: every REQUEST answered OK is still held unless its RELEASE was sent, and no
RELEASE answered OK comes back (RELEASE again is BADHANDLE, USERS does not list
it). A few rounds, each bounded.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.permits.policy import Policy
from hqnlsd.protocols import client_side
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import Daemon, DaemonHarness, LineClient, make_permit, product_permit

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Batch"
VERSION = "1.0"
#: Room for every licence the rounds take (none is ever refused for want of one).
FLOATING = 5000
SEED = 14
ROUNDS = 3
CONNECTIONS = 5
#: Bounds each round's load even if the kill comes late.
OPERATIONS_PER_CONNECTION = 400
#: The kill comes this long (seconds, seeded) after the load starts.
#: Seconds the first answer of a round may take (connections opened on a busy machine).
LOAD_STARTS_WITHIN = 30.0
KILL_AFTER = (0.2, 1.5)
#: How long a connection may take to notice the daemon is gone.
JOIN_TIMEOUT = 30.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


@dataclasses.dataclass
class Told:
    """What the clients were told, across rounds (shared by the connections' threads)."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    #: handle -> pid of each grant answered OK whose RELEASE was never sent.
    held: dict[str, int] = dataclasses.field(default_factory=dict)
    #: handle -> pid of each grant whose RELEASE was sent but not answered.
    releasing: dict[str, int] = dataclasses.field(default_factory=dict)
    #: handle -> pid of each RELEASE answered OK.
    released: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Replies that should never come (a refused REQUEST or RELEASE).
    unexpected: list[str] = dataclasses.field(default_factory=list)
    answered: int = 0


def load(daemon: Daemon, told: Told, connection: int, round_: int) -> None:
    """One connection: REQUEST and RELEASE until the daemon dies or the bound is reached."""
    rng = random.Random(f"{SEED}-{round_}-{connection}")
    mine: list[tuple[str, int]] = []
    try:
        with daemon.client() as client:
            for operation in range(OPERATIONS_PER_CONNECTION):
                if mine and rng.random() < 0.45:
                    handle, pid = mine.pop(rng.randrange(len(mine)))
                    with told.lock:
                        del told.held[handle]
                        told.releasing[handle] = pid
                    reply = client.call("RELEASE", handle=handle)
                    with told.lock:
                        told.answered += 1
                        if isinstance(reply, Ok):
                            del told.releasing[handle]
                            told.released[handle] = pid
                        else:
                            told.unexpected.append(f"RELEASE {handle}: {reply}")
                    continue
                pid = (round_ * 100 + connection) * 10_000 + operation
                reply = client.call(
                    "REQUEST", publisher=PUBLISHER, product=PRODUCT, version=VERSION,
                    user=f"conn{connection}", host="loadhost", pid=pid,
                    client=f"r{round_}-c{connection}-{operation}",
                )
                with told.lock:
                    told.answered += 1
                    handle = reply.get("handle") if isinstance(reply, Ok) else None
                    if handle:
                        told.held[handle] = pid
                        mine.append((handle, pid))
                    else:
                        told.unexpected.append(f"REQUEST pid={pid}: {reply}")
    except (OSError, AssertionError, client_side.ReplyParseError):
        pass  # the daemon was killed: what was answered is recorded


def listed_pids(client: LineClient) -> set[int]:
    """The pids USERS lists for the product."""
    answer = client.listing("USERS", publisher=PUBLISHER, product=PRODUCT, version=VERSION)
    assert isinstance(answer, list), answer
    return {int(client_side.parse_fields(line)["pid"]) for line in answer}


def check_after_restart(daemon: Daemon, told: Told) -> None:
    """What the clients were told OK survived; the unanswered RELEASEs are settled either way."""
    with daemon.client() as client:
        pids = listed_pids(client)
        for handle, pid in told.held.items():
            assert pid in pids, f"granted {handle} (pid {pid}) is gone after the kill"
            client.ok("UPDATE", handle=handle)
        for handle, pid in told.released.items():
            assert pid not in pids, f"released {handle} (pid {pid}) came back after the kill"
            again = client.call("RELEASE", handle=handle)
            assert isinstance(again, Err) and again.status is Status.BADHANDLE, (handle, again)
        # A RELEASE sent but never answered may or may not have been written.
        for handle, pid in list(told.releasing.items()):
            if pid in pids:
                client.ok("UPDATE", handle=handle)
                told.held[handle] = pid
            else:
                told.released[handle] = pid
        told.releasing.clear()


def test_answers_survive_sigkill_under_concurrent_load(daemons: DaemonHarness) -> None:
    """Rounds of concurrent REQUEST/RELEASE, each ended by a SIGKILL at a seeded random
    moment: after each restart, the state is what the clients were answered."""
    me = daemons.host(1)
    daemons.write_permit(
        make_permit(
            [me],
            [
                product_permit(
                    PRODUCT, publisher=PUBLISHER, version=VERSION,
                    policy=int(Policy.GRAB | Policy.UVIS), floating_count=FLOATING,
                )
            ],
        )
    )
    daemon = daemons.daemon("crashy").start_and_wait()
    told = Told()
    rng = random.Random(SEED)
    for round_ in range(ROUNDS):
        answered_before = told.answered
        threads = [
            threading.Thread(target=load, args=(daemon, told, connection, round_), daemon=True)
            for connection in range(CONNECTIONS)
        ]
        for thread in threads:
            thread.start()
        # The load is under way (a first answer, within a bound that a busy machine
        # meets), then the kill comes at a random moment of it.
        started = time.monotonic() + LOAD_STARTS_WITHIN
        while told.answered == answered_before and time.monotonic() < started:
            time.sleep(0.01)
        time.sleep(rng.uniform(*KILL_AFTER))
        daemon.kill()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
            assert not thread.is_alive(), "a connection did not notice the kill"
        assert told.unexpected == [], told.unexpected[:5]
        assert told.answered > answered_before, "no request was answered before the kill"
        daemon.start_and_wait()
        check_after_restart(daemon, told)
        print(
            f"round {round_}: {told.answered - answered_before} answers before the kill; "
            f"{len(told.held)} held, {len(told.released)} released so far"
        )
    assert told.held and told.released
