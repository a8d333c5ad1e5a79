"""End to end: a 2+2 split of a four-member domain never has both halves serving.

Issue 4 "must show" (real processes, partitions): four ``twistd -n hqnlsd``
daemons on 127.0.0.1-4 (hosts file hqnserver1..4), one permit whose domain is
all four with `COUNT` floating licences, TLS from `hqnlsd.tools.ca`. Every
daemon listens for peers on port P and dials its peers on port Q
(``--peer-dial-port``), where a `FaultProxy` listens on each member's address
and forwards to (member, P) from the dialler's own address, so every peer byte
goes through the proxy and the listeners' source-address check stays on.

The quorum rule (docs/domains.md): a majority of the view, or exactly half
including its lowest rank. The test shows, polling every member with REQUESTs
(a fresh client token each) over observation windows longer than every
fail-over timer (`WINDOW`):

1. all four up: hqnserver1 grants, hqnserver2-4 redirect (TRY_SERVER n=1);
2. split {1,2}|{3,4}: hqnserver1 keeps granting, {3,4} never grants, no poll
   round has grants from two members, the licences held (grants minus
   releases) never exceed the count;
3. heal: hqnserver3 and 4 are backups again, the licences granted before and
   during the split still UPDATE on hqnserver1 and the count is full;
4. split {1,3}|{2,4}: only hqnserver1 grants; then SIGKILL hqnserver1 during
   that split: nobody grants ({3} and {2,4} are both without hqnserver1);
5. heal and restart hqnserver1: it serves again, every licence still held;
   and no daemon logged an internal error (a critical line or a traceback).

During the split windows the serving half's grants are kept flowing by
releasing the newest licence before each round (a "rotating" licence), so
that "hqnserver1 keeps serving" is shown by grants, not only by UPDATEs.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hqnlsd.domain.peers import PeerTimers
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonHarness,
    domain_daemons,
    free_port_on_all,
    is_grant,
    loopback,
    product_permit,
    request_licence,
    wait_for,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Split Widget"
VERSION = "1.0"
SIZE = 4
#: Floating licences of the product.
COUNT = 2
#: How long four daemons may take to start, verify each other, elect, admit
#: everyone (four twistd processes starting at once on a loaded two-core machine).
ELECTION_BOUND = 40.0
#: How long the domain may take to converge after a heal or a restart.
HEAL_BOUND = 20.0
#: Pause between two poll rounds.
POLL = 0.1
#: Timeout of one client call: longer than a grant's replication may take.
CALL_TIMEOUT = DomainTimers().submit_timeout + 3.0
#: The longest any member could need to notice the cut and try to act on it: the
#: peer links' ping timeout (a severed link is only found out by silence), the
#: election timeout, one lease, the longest stagger (three lower ranks) and a
#: candidacy. Nobody may serve in a half that is not a quorum even after that.
ACT_BOUND = (
    PeerTimers().ping_timeout
    + DomainTimers().election_timeout
    + DomainTimers().lease
    + 3 * DomainTimers().stagger
    + DomainTimers().candidacy_timeout
)
#: Each observation window: every fail-over timer has run out well inside it.
WINDOW = ACT_BOUND + 1.5


@dataclasses.dataclass
class Ledger:
    """The licences the test holds: grants minus confirmed releases, never above COUNT."""

    held: dict[str, str] = dataclasses.field(default_factory=dict)
    grants: int = 0
    releases: int = 0
    most_held: int = 0

    def granted(self, member: str, reply: Ok) -> str:
        """Record a grant by ``member``; check the count is not exceeded."""
        handle = reply.get("handle") or ""
        assert handle not in self.held, f"{member} granted {handle}, which is already held"
        self.held[handle] = member
        self.grants += 1
        self.most_held = max(self.most_held, len(self.held))
        assert len(self.held) <= COUNT, (
            f"{len(self.held)} licences held, more than the count {COUNT}: {self.held}"
        )
        return handle

    def released(self, handle: str) -> None:
        """Record a confirmed release."""
        del self.held[handle]
        self.releases += 1


@dataclasses.dataclass
class Observation:
    """What one observation window saw."""

    rounds: int = 0
    #: member -> how many times it granted
    grants: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: member -> reply kind ("OK" or the status name) -> count
    replies: dict[str, collections.Counter[str]] = dataclasses.field(default_factory=dict)
    #: seconds after the window began of each member's last grant
    last_grant: dict[str, float] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line per member, for the test output."""
        return "\n".join(f"  {name}: {dict(kinds)}" for name, kinds in sorted(self.replies.items()))


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


@pytest.fixture
def domain(daemons: DaemonHarness) -> Iterator[tuple[list[Daemon], FaultProxy]]:
    """Four daemons (not started) dialling each other through a fault proxy."""
    addresses = [loopback(n) for n in range(1, SIZE + 1)]
    peer_port = free_port_on_all(addresses)
    dial_port = free_port_on_all(addresses, avoid=[peer_port])
    with FaultProxy.for_members(addresses, listen_port=dial_port, target_port=peer_port) as proxy:
        members = domain_daemons(
            daemons,
            SIZE,
            [product_permit(PRODUCT, publisher=PUBLISHER, version=VERSION, floating_count=COUNT)],
            peer_port=peer_port,
            peer_dial_port=dial_port,
        )
        yield members, proxy


def request(daemon: Daemon, token: str) -> Ok | Err:
    """REQUEST one licence of the product from ``daemon`` with client token ``token``."""
    return request_licence(
        daemon, token, publisher=PUBLISHER, product=PRODUCT, version=VERSION, timeout=CALL_TIMEOUT
    )


def call(daemon: Daemon, verb: str, handle: str) -> Ok | Err:
    """UPDATE or RELEASE ``handle`` at ``daemon``."""
    with daemon.client(timeout=CALL_TIMEOUT) as client:
        return client.call(verb, handle=handle)


def kind(reply: Ok | Err) -> str:
    """``OK`` or the status name of an ERR."""
    return "OK" if isinstance(reply, Ok) else reply.status.name


def redirects_to_first(reply: Ok | Err) -> bool:
    """The reply is ``TRY_SERVER n=1``."""
    return isinstance(reply, Err) and reply.status is Status.TRY_SERVER and reply.get("n") == "1"


def observe(
    phase: str,
    members: Sequence[Daemon],
    ledger: Ledger,
    *,
    may_grant: frozenset[str],
    rotating: list[str],
) -> Observation:
    """Poll every running member with a REQUEST (fresh token) each round for `WINDOW`
    seconds; assert after every round that at most one member granted and only one
    of ``may_grant``.

    ``rotating`` holds at most one handle: the newest licence granted here. Before
    each round it is released at the member that granted it (if that member still
    runs), so that a serving member can grant again; a release that is refused
    (say during a view change) is retried next round. The licence granted last stays
    held and is left in ``rotating``.
    """
    seen = Observation(replies={member.name: collections.Counter() for member in members})
    by_name = {member.name: member for member in members}
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < WINDOW:
        seen.rounds += 1
        if rotating:
            owner = by_name[ledger.held[rotating[0]]]
            if owner.running and isinstance(call(owner, "RELEASE", rotating[0]), Ok):
                ledger.released(rotating.pop())
        granted_by = []
        for member in members:
            if not member.running:
                continue
            reply = request(member, f"{phase}-{seen.rounds}-{member.name}")
            seen.replies[member.name][kind(reply)] += 1
            if is_grant(reply):
                assert isinstance(reply, Ok)
                assert member.name in may_grant, (
                    f"{phase}: {member.name} granted at {elapsed:.2f} s; only "
                    f"{sorted(may_grant)} may serve\n{seen.summary()}"
                )
                rotating.append(ledger.granted(member.name, reply))
                if len(rotating) > 1:  # the count was not full: keep the older one
                    rotating.pop(0)
                granted_by.append(member.name)
                seen.grants[member.name] += 1
                seen.last_grant[member.name] = elapsed
        assert len(granted_by) <= 1, (
            f"{phase}: round {seen.rounds} at {elapsed:.2f} s granted on {granted_by}"
        )
        time.sleep(POLL)
    print(
        f"{phase}: {seen.rounds} rounds in {WINDOW:.1f} s, grants {dict(seen.grants)}, "
        f"held {len(ledger.held)} of {COUNT}\n{seen.summary()}"
    )
    return seen


def converged(members: Sequence[Daemon], ledger: Ledger, what: str) -> None:
    """Wait until, in one pass, each running member but hqnserver1 redirects to it
    (it is a verified backup) and then hqnserver1 UPDATEs every licence the ledger
    holds (it serves them all, after any view change the others' admission caused)."""
    first, others = members[0], [member for member in members[1:] if member.running]
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        replies = {
            member.name: request(member, f"{what}-{attempt}-{member.name}") for member in others
        }
        if all(redirects_to_first(reply) for reply in replies.values()):
            updates = {handle: call(first, "UPDATE", handle) for handle in ledger.held}
            if all(
                isinstance(reply, Ok) and reply.get("handle") == handle
                for handle, reply in updates.items()
            ):
                print(f"{what}: converged in {time.monotonic() - started:.2f} s")
                return
            replies.update({f"UPDATE {handle}": reply for handle, reply in updates.items()})
        if time.monotonic() - started > HEAL_BOUND:
            raise AssertionError(f"{what}: not converged within {HEAL_BOUND} s: {replies}")
        time.sleep(POLL)


def test_two_plus_two_split_never_serves_on_both_sides(
    domain: tuple[list[Daemon], FaultProxy], daemons: DaemonHarness
) -> None:
    """Only the half with hqnserver1 serves in a 2+2 split, nobody without it, and
    the count is never exceeded across splits, heals, a SIGKILL and a restart."""
    members, proxy = domain
    first, _second, third, fourth = members
    names = [member.name for member in members]
    ledger = Ledger()
    rotating: list[str] = []

    # (1) All four up: hqnserver1 grants, the others redirect to it.
    daemons.start_all(*members, timeout=ELECTION_BOUND)
    before, _ = wait_for(
        "hqnserver1 grants", lambda: request(first, "before"), is_grant, ELECTION_BOUND
    )
    assert isinstance(before, Ok)
    kept = ledger.granted(first.name, before)
    converged(members, ledger, "all up")
    for member in members[1:]:
        redirect = request(member, f"up-{member.name}")
        assert redirects_to_first(redirect), f"{member.name}: {redirect}"
        assert redirect.get("addr") == "127.0.0.1", redirect
    # Every member dials every other one through the proxy. A member that started
    # after its peers is reached on their next reconnection attempt (backoff of up
    # to 2 s), so wait for it, bounded.
    pairs = [
        (loopback(caller), loopback(target))
        for caller in range(1, SIZE + 1)
        for target in range(1, SIZE + 1)
        if caller != target
    ]

    def silent_pairs() -> list[tuple[str, str]]:
        links = proxy.stats()
        return [pair for pair in pairs if pair not in links or not links[pair].bytes_forwarded]

    deadline = time.monotonic() + ELECTION_BOUND
    while silent_pairs() and time.monotonic() < deadline:
        time.sleep(POLL)
    assert not silent_pairs(), f"no peer traffic through the proxy for {silent_pairs()}"

    # (2) Split {1,2}|{3,4}: only hqnserver1 may grant, and it keeps granting.
    proxy.partition([[loopback(1), loopback(2)], [loopback(3), loopback(4)]])
    split = observe(
        "split 12|34",
        members,
        ledger,
        may_grant=frozenset({first.name}),
        rotating=rotating,
    )
    assert split.grants[first.name] >= 3, split.summary()
    assert split.last_grant[first.name] > ACT_BOUND, (
        f"hqnserver1 stopped granting at {split.last_grant[first.name]:.2f} s\n{split.summary()}"
    )
    assert not (split.grants[third.name] or split.grants[fourth.name])
    assert len(rotating) == 1 and ledger.held == {kept: first.name, rotating[0]: first.name}
    dropped = proxy.stats()
    cut = [(loopback(a), loopback(b)) for a in (1, 2) for b in (3, 4)]
    assert all(dropped[(a, b)].severed or dropped[(a, b)].black_holed for a, b in cut), dropped

    # (3) Heal: 3 and 4 become backups again; both licences still UPDATE; count full.
    proxy.heal()
    converged(members, ledger, "healed")
    full = request(first, "after-heal")
    assert isinstance(full, Err) and full.status is Status.NOLICENCES, full

    # (4) Split {1,3}|{2,4}: only hqnserver1 grants.
    proxy.partition([[loopback(1), loopback(3)], [loopback(2), loopback(4)]])
    diagonal = observe(
        "split 13|24",
        members,
        ledger,
        may_grant=frozenset({first.name}),
        rotating=rotating,
    )
    assert diagonal.grants[first.name] >= 3, diagonal.summary()
    assert diagonal.last_grant[first.name] > ACT_BOUND, diagonal.summary()
    # SIGKILL hqnserver1 during the split: neither {3} nor {2,4} may serve.
    first.kill()
    headless = observe(
        "split 13|24, hqnserver1 killed",
        members,
        ledger,
        may_grant=frozenset(),
        rotating=rotating,
    )
    assert sum(headless.grants.values()) == 0
    for name in names[1:]:
        assert headless.replies[name]["OK"] == 0, headless.summary()

    # (5) Heal and restart hqnserver1: it serves again and no licence was lost.
    proxy.heal()
    first.start_and_wait()
    converged(members, ledger, "restarted")
    full = request(first, "after-restart")
    assert isinstance(full, Err) and full.status is Status.NOLICENCES, full
    assert ledger.most_held <= COUNT
    print(
        f"grants {ledger.grants}, releases {ledger.releases}, held {len(ledger.held)}, "
        f"most held {ledger.most_held} of {COUNT}"
    )
    # No daemon hit an internal error on the way: a critical log line, a traceback.
    errors = [
        f"{member.name}: {line.strip()}"
        for member in members
        for line in member.log_text().splitlines()
        if "#critical]" in line or "Traceback" in line or line.startswith("\tbuiltins.")
    ]
    if errors:
        raise AssertionError("internal errors logged:\n" + "\n".join(errors))
