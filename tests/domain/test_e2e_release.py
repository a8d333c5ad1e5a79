"""End to end: a RELEASE answered OK is never undone by SIGKILL, restart or failover.

Issue 10. Real ``twistd -n hqnlsd`` daemons on loopback:

1. single host: the test holds every licence of a product without GRAB (nothing
   ever crashes out), sends a RELEASE for each in one write, reads the first
   ``OK`` and SIGKILLs the daemon at once; after a restart no handle whose release
   was answered OK may be held. Repeated `ROUNDS` times. This one passed before
   the fix too: the OK did not wait for the commit, but Twisted sends a buffered
   reply only after the next reactor turn's timed calls, which run the group
   commit first. The window it guards opened when that commit failed (OK sent,
   release not on disk: `tests/daemon/test_server.py`
   ``test_failed_commit_of_a_release_answers_internal`` reproduces it) or the
   reply went out in the turn it was made (a socket already writing).
2. a three-member domain whose peer links go through `FaultProxy`: hqnserver1
   (primary) is silently cut off from both backups, a RELEASE is sent to it; after
   the take-over by {2, 3} the licence may be held again only if hqnserver1 did
   not answer OK. Before the fix it answered OK at once, and the new primary
   listed the licence as held (USERS) and UPDATEd it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hqnlsd.domain.timing import DomainTimers
from hqnlsd.permits.policy import Policy
from hqnlsd.protocols import client_side
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonHarness,
    domain_daemons,
    free_port_on_all,
    is_grant,
    loopback,
    make_permit,
    product_permit,
    request_licence,
    wait_for,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Release Widget"
VERSION = "1.0"
#: Licences of the product (all held, then all released, each round).
COUNT = 4
#: Kill-and-restart rounds of the single-host test.
ROUNDS = 8
#: No GRAB: a licence whose release is lost stays held for ever.
POLICY = int(Policy.UVIS)
#: Timeout of one client call at a domain member (a RELEASE may wait for its quorum).
CALL_TIMEOUT = DomainTimers().submit_timeout + 5.0
#: How long a domain may take to elect, admit everyone, or take over after a cut.
DOMAIN_BOUND = 40.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def request(daemon: Daemon, token: str, pid: int) -> Ok | Err:
    """REQUEST one licence of the product from ``daemon``."""
    return request_licence(
        daemon, token, publisher=PUBLISHER, product=PRODUCT, version=VERSION, pid=pid,
        timeout=CALL_TIMEOUT,
    )


def held(daemon: Daemon, handle: str) -> bool:
    """True if ``daemon`` answers UPDATE of ``handle`` with OK (it holds it)."""
    with daemon.client(timeout=CALL_TIMEOUT) as client:
        reply = client.call("UPDATE", handle=handle)
    if isinstance(reply, Ok):
        return True
    assert reply.status in (Status.BADHANDLE, Status.LOSTLICENCE), reply
    return False


def test_release_answered_ok_survives_sigkill(daemons: DaemonHarness) -> None:
    """RELEASE, read OK, SIGKILL at once, restart: no OK'd release is ever undone.

    (A guard: it passed before issue 10 too; see the module docstring.)
    """
    me = daemons.host(1)
    daemons.write_permit(
        make_permit(
            [me],
            [
                product_permit(
                    PRODUCT, publisher=PUBLISHER, version=VERSION, policy=POLICY,
                    floating_count=COUNT,
                )
            ],
        )
    )
    daemon = daemons.daemon("single").start_and_wait()
    undone: list[str] = []
    answered = 0
    for round_ in range(ROUNDS):
        handles = []
        for n in range(COUNT):
            reply = request(daemon, f"r{round_}-{n}", pid=1000 + n)
            assert isinstance(reply, Ok), f"round {round_}: {reply}"
            handles.append(reply.get("handle") or "")
        with daemon.client() as client:
            client.sock.sendall(
                b"".join(client_side.format_request("RELEASE", handle=h) for h in handles)
            )
            first = client_side.parse_reply_line(client.read_line())
            daemon.kill()  # as soon as the first answer is read
        assert isinstance(first, Ok), f"round {round_}: {first}"
        released = first.get("handle") or ""
        answered += 1
        daemon.start_and_wait()
        if held(daemon, released):
            undone.append(f"round {round_}: {released}")
        # Start the next round from an empty product: release what is still held.
        with daemon.client(timeout=CALL_TIMEOUT) as client:
            for handle in handles:
                reply = client.call("RELEASE", handle=handle)
                assert isinstance(reply, Ok) or reply.status is Status.BADHANDLE, reply
    assert answered == ROUNDS
    assert undone == [], f"releases answered OK but held after SIGKILL + restart: {undone}"
    assert daemon.kill() == -signal.SIGKILL


def test_release_at_a_cut_off_primary_survives_the_failover(daemons: DaemonHarness) -> None:
    """A silent partition cuts hqnserver1 (primary) off; a RELEASE is sent to it; the
    take-over by {2, 3} holds the licence only if hqnserver1 did not answer OK.

    Failed before issue 10 (OK at once; the new primary held the licence).
    """
    addresses = [loopback(n) for n in (1, 2, 3)]
    peer_port = free_port_on_all(addresses)
    dial_port = free_port_on_all(addresses, avoid=[peer_port])
    with FaultProxy.for_members(addresses, listen_port=dial_port, target_port=peer_port) as proxy:
        first, second, third = domain_daemons(
            daemons,
            3,
            [product_permit(PRODUCT, publisher=PUBLISHER, version=VERSION, policy=POLICY,
                            floating_count=COUNT)],
            peer_port=peer_port,
            peer_dial_port=dial_port,
        )
        for member in (first, second, third):
            member.start()
        for member in (first, second, third):
            member.wait_ready()
        grant, _ = wait_for(
            "hqnserver1 grants", lambda: request(first, "held-1", pid=77), is_grant, DOMAIN_BOUND
        )
        handle = grant.get("handle") or ""
        # Both backups in the view (they redirect to hqnserver1) before the cut: then
        # {2, 3} is a quorum of it, and holds the grant (confirmed by a quorum).
        for backup in (second, third):
            poll(
                f"{backup.name} is a backup of hqnserver1",
                lambda b=backup: _redirects_to_first(b),
                DOMAIN_BOUND,
            )
        proxy.partition([[addresses[0]], addresses[1:]])
        with first.client(timeout=CALL_TIMEOUT) as client:
            try:
                answer: Ok | Err | None = client.call("RELEASE", handle=handle)
            except (TimeoutError, ConnectionError):
                answer = None
        # The take-over: hqnserver2 (or 3) serves; the licence is there only if the
        # RELEASE was not answered OK.
        serving: list[Daemon] = []

        def taken_over() -> bool:
            found = _serving(second, third)
            if found is not None:
                serving.append(found)
            return found is not None

        poll("a backup takes over", taken_over, DOMAIN_BOUND)
        successor = serving[0]
        still_held = held(successor, handle)
        assert not (isinstance(answer, Ok) and still_held), (
            f"hqnserver1 answered OK to RELEASE {handle}, but {successor.name} holds it"
        )
        assert isinstance(answer, Err) and answer.status is Status.NEW_MASTER, answer
        # Sent again to the new primary: released for good.
        with successor.client(timeout=CALL_TIMEOUT) as client:
            client.ok("RELEASE", handle=handle)
        proxy.heal()
        # After the heal hqnserver1 is admitted again and takes the role back
        # (failback): ask whichever member serves the listing then, bounded.
        listed: list[tuple[str, int]] = []

        def someone_lists() -> bool:
            for member in (first, second, third):
                with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                    count = _users_count(member)
                    if count >= 0:
                        listed.append((member.name, count))
                        return True
            return False

        time.sleep(1.0)
        poll("a member lists the users after the heal", someone_lists, DOMAIN_BOUND)
        assert listed[-1][1] == 0, listed


def poll(what: str, condition: Callable[[], bool], bound: float) -> None:
    """Wait until ``condition()`` holds (checked every 0.2 s, at most ``bound`` seconds)."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound} s")
        time.sleep(0.2)


def _redirects_to_first(daemon: Daemon) -> bool:
    """``daemon`` answers USERS with ``TRY_SERVER n=1`` (a backup of hqnserver1)."""
    with daemon.client(timeout=CALL_TIMEOUT) as client:
        answer = client.listing("USERS", publisher=PUBLISHER, product=PRODUCT, version=VERSION)
    return isinstance(answer, Err) and answer.status is Status.TRY_SERVER and (
        answer.get("n") == "1"
    )


def _users_count(daemon: Daemon) -> int:
    """How many licences of the product ``daemon`` lists (USERS; -1 if it refuses)."""
    with daemon.client(timeout=CALL_TIMEOUT) as client:
        answer = client.listing("USERS", publisher=PUBLISHER, product=PRODUCT, version=VERSION)
    if isinstance(answer, list):
        return len(answer)
    return 0 if isinstance(answer, Ok) else -1


def _serving(*members: Daemon) -> Daemon | None:
    """The first of ``members`` that grants now (a probe REQUEST, released at once)."""
    for member in members:
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            reply = request(member, f"probe-{time.monotonic()}", pid=99)
            if is_grant(reply):
                with member.client(timeout=CALL_TIMEOUT) as client:
                    client.ok("RELEASE", handle=reply.get("handle") or "")
                return member
    return None
