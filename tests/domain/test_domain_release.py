"""A RELEASE (or an admin kill) answered OK by a domain's primary survives a failover.

Three real `DomainMember`s (real `DomainNode`, `EngineMachine`, `Engine`, in-memory
storage) on one `task.Clock`, linked by the simulation's `SimNetwork` (messages
through their JSON wire form), each with the real `LicenceServer` dispatcher in
front of its member. The primary is cut off from both backups (a silent
partition), a client RELEASEs a licence there, the backups take over: the licence
must be held again only if the client was *not* told OK.

Before issue 10 the primary answered OK at once (``wait=False``) and the take-over,
which never saw the release, held the licence again for ever.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from hqnlsd.domain.messages import Message
from hqnlsd.domain.runtime import DomainMember, DomainRoute, DomainSpec, domain_id
from hqnlsd.domain.storage import MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.identity import HostsTable
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.results import Grant, LicenceRequest
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.reader import PermitFile, build_catalogue
from hqnlsd.persistence.store import open_journal
from hqnlsd.protocols import grammar
from hqnlsd.protocols.replies import Err, Ok, Reply
from hqnlsd.server import LicenceServer, PermitSource
from hqnlsd.status import Status
from tests.daemons import make_permit
from tests.sim.network import SimNetwork

PRODUCT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=0x01,  # no GRAB: a resurrected licence would be held for ever
    node_count=0,
    floating_count=1,
    start=datetime.date(2020, 1, 1),
    expiry=datetime.date(2099, 12, 31),
    update_minutes=5,
)
ADDRESSES = tuple(ipaddress.IPv4Address(f"127.0.0.{n}") for n in (1, 2, 3))
SERVERS = tuple(HostId(address, 0x100 + n) for n, address in enumerate(ADDRESSES, 1))
SPEC = DomainSpec(domain_id(SERVERS), {a: n for n, a in enumerate(ADDRESSES, 1)}, (PRODUCT,))
PERMIT = make_permit(SERVERS, [PRODUCT])
HOSTS = "127.0.0.1 hqnserver1\n127.0.0.2 hqnserver2\n127.0.0.3 hqnserver3\n"
TIMERS = DomainTimers()
PEER = IPv4Address("TCP", "10.1.1.1", 40000)
#: Simulated time starts here (inside the permit's dates).
NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
#: Long enough for the primary's lease to run out and a backup to take over.
FAILOVER = 10.0


class OneRoute:
    """The part of `DomainRuntime` the dispatcher uses: everything goes to one member."""

    def __init__(self, member: DomainMember) -> None:
        self.member = member

    def route(self, publisher: str, product: str) -> DomainRoute:
        """The member's route for any product."""
        return DomainRoute(self.member)

    def route_for_handle(self, handle: str) -> DomainRoute:
        """The member's route for any handle."""
        return DomainRoute(self.member)


class Domain:
    """Three members over a simulated network, each with a dispatcher in front."""

    def __init__(self, state_dir: Path) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        ranks = frozenset({1, 2, 3})
        self.network = SimNetwork(self.clock, ranks, random.Random(7), lambda: None)
        self.members: dict[int, DomainMember] = {}
        self.servers: dict[int, LicenceServer] = {}
        self.journals: list[Any] = []
        for rank, address in enumerate(ADDRESSES, 1):
            counter = itertools.count(1)
            engine = Engine(self.clock, lambda c=counter, r=rank: f"d{r}-{next(c)}")

            def send(
                _domain: str, to: ipaddress.IPv4Address, message: Message, r: int = rank
            ) -> None:
                self.network.send(r, SPEC.ranks[to], message)

            member = DomainMember(
                SPEC, address, self.clock, engine, MemoryStorage(), send, TIMERS  # type: ignore[arg-type]
            )
            self.members[rank] = member
            journal = open_journal(state_dir / f"m{rank}", self.clock)
            self.journals.append(journal)
            source = PermitSource(
                permit_dirs=(),
                environ={},
                publisher_keys=state_dir / "keys",
                hosts_file=state_dir / "hosts",
                me=SERVERS[rank - 1],
            )
            server = LicenceServer(Engine(self.clock), journal, source, clock=self.clock)
            server.domains = OneRoute(member)  # type: ignore[assignment]
            server.catalogue = build_catalogue(
                [PermitFile("/permits/domain-hqn.permit", PERMIT, None)],
                SERVERS[rank - 1],
                HostsTable.from_text(HOSTS),
            )
            self.servers[rank] = server
            member.start()
            self.network.attach(rank, member.node)

    def close(self) -> None:
        """Close the journals (the members need no closing: memory storage)."""
        for journal in self.journals:
            journal.close()

    def run(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, in small steps."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(0.01)

    def serving(self) -> int | None:
        """The rank of the member that serves now (taking over first), if any."""
        for rank, member in self.members.items():
            if member.take_over_if_primary():
                return rank
        return None

    def wait_serving(self, bound: float = 15.0, *, other_than: int | None = None) -> int:
        """Run until a member (not ``other_than``) serves; its rank."""
        end = self.clock.seconds() + bound
        while self.clock.seconds() < end:
            rank = self.serving()
            if rank is not None and rank != other_than:
                # Let the take-over's own events commit before the test acts.
                self.run(0.5)
                return rank
            self.clock.advance(0.01)
        raise AssertionError(f"no member served within {bound}s")

    def grant(self, rank: int, pid: int) -> str:
        """A confirmed grant at member ``rank`` (the engine and the quorum)."""
        route = DomainRoute(self.members[rank])
        assert route.serve() is None
        outcome = route.engine.request(
            LicenceRequest(
                publisher=PRODUCT.publisher,
                product=PRODUCT.product,
                version=PRODUCT.version,
                user="alice",
                host="desk",
                pid=pid,
                address="10.1.1.1",
                client=f"token-{pid}",
            )
        )
        assert isinstance(outcome.result, Grant), outcome.result
        confirmed: list[object] = []
        route.sink.commit(outcome.events).addBoth(confirmed.append)
        self.run(0.5)
        assert confirmed == [None], confirmed
        return outcome.result.handle

    def dispatch(self, rank: int, command: grammar.DispatchedCommand) -> list[Reply]:
        """Send ``command`` to member ``rank``'s dispatcher; the list gets the answer."""
        answer = self.servers[rank].dispatch(command, PEER)
        got: list[Reply] = []
        if isinstance(answer, Deferred):
            answer.addCallback(got.append)
        else:
            got.append(answer)
        return got

    def holds(self, rank: int, handle: str) -> bool:
        """True if member ``rank``'s engine holds ``handle``."""
        holders = self.members[rank].engine.holders(PRODUCT.publisher, PRODUCT.product)
        assert isinstance(holders, list), holders
        return any(holder.handle == handle for holder in holders)


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[Domain]:
    """A started three-member domain with member 1 serving."""
    made = Domain(tmp_path)
    try:
        assert made.wait_serving(20.0) == 1
        made.run(3.0)  # every member admitted
        assert made.members[1].node.view.members == frozenset({1, 2, 3})
        yield made
    finally:
        made.close()


def test_release_at_a_cut_off_primary_is_never_undone(domain: Domain) -> None:
    """The primary is cut off, a RELEASE reaches it: OK only if the take-over has it.

    Failed before the fix: the primary answered OK at once, and after the take-over
    by {2, 3} the licence was held again (no GRAB: for ever).
    """
    handle = domain.grant(1, pid=1)
    assert all(domain.holds(rank, handle) for rank in (1, 2, 3))
    domain.network.partition([{1}, {2, 3}])
    answer = domain.dispatch(1, grammar.Release(handle))
    successor = domain.wait_serving(FAILOVER, other_than=1)
    domain.run(TIMERS.submit_timeout)
    assert len(answer) == 1, "the cut-off primary never answered the RELEASE"
    (reply,) = answer
    if isinstance(reply, Ok):
        assert not domain.holds(successor, handle), (
            f"hqnserver1 answered OK to RELEASE {handle}, but the take-over by "
            f"hqnserver{successor} holds it again"
        )
    # What the fix answers: the release was not confirmed; send it again.
    assert isinstance(reply, Err) and reply.status is Status.NEW_MASTER, reply
    assert "send it again" in reply.msg
    # The client sends it again to the new primary: released, and it stays so.
    again = domain.dispatch(successor, grammar.Release(handle))
    domain.run(0.5)
    assert again and isinstance(again[0], Ok), again
    assert not domain.holds(successor, handle)
    domain.network.heal()
    domain.run(FAILOVER)
    serving = domain.serving()
    assert serving is not None and not domain.holds(serving, handle)


def test_retried_release_is_not_answered_before_the_first_commits(domain: Domain) -> None:
    """A RELEASE sent again while the first is unconfirmed gets no early BADHANDLE.

    The engine already forgot the handle (the first RELEASE applied), so the retry
    finds nothing: if that BADHANDLE were answered at once, a client that takes
    BADHANDLE on a retried release as "released" would be told so of a release that
    the take-over then never sees. Failed before the fix (BADHANDLE at once).
    """
    handle = domain.grant(1, pid=1)
    domain.network.partition([{1}, {2, 3}])
    first = domain.dispatch(1, grammar.Release(handle))
    retry = domain.dispatch(1, grammar.Release(handle))
    assert retry == [], f"the retried RELEASE was answered before the first committed: {retry}"
    successor = domain.wait_serving(FAILOVER, other_than=1)
    domain.run(TIMERS.submit_timeout)
    for got in (first, retry):
        assert len(got) == 1 and isinstance(got[0], Err), got
        assert got[0].status is Status.NEW_MASTER, got
    assert domain.holds(successor, handle)  # not released: and nobody was told it was


def test_retried_request_is_not_answered_before_the_grant_commits(domain: Domain) -> None:
    """A REQUEST sent again (same client= token) while its grant is unconfirmed waits.

    The duplicate finds the grant in the engine and makes no events: answered at
    once, a client would hold a licence that the take-over never granted, while
    the take-over grants it to someone else (two holders of one licence). Failed
    before the fix (OK duplicate=1 at once).
    """
    domain.network.partition([{1}, {2, 3}])
    fields = {
        "publisher": PRODUCT.publisher,
        "product": PRODUCT.product,
        "version": PRODUCT.version,
        "user": "alice",
        "host": "desk",
        "pid": 5,
        "client": "token-5",
    }
    first = domain.dispatch(1, grammar.Request(**fields))  # type: ignore[arg-type]
    retry = domain.dispatch(1, grammar.Request(**fields))  # type: ignore[arg-type]
    assert retry == [], f"the retried REQUEST was answered before its grant committed: {retry}"
    successor = domain.wait_serving(FAILOVER, other_than=1)
    domain.run(TIMERS.submit_timeout)
    for got in (first, retry):
        assert len(got) == 1 and isinstance(got[0], Err), got
        assert got[0].status is Status.NEW_MASTER, got
    holders = domain.members[successor].engine.holders(PRODUCT.publisher, PRODUCT.product)
    assert holders == []


class AdminRoot:
    """The part of `HqnlsdService` the admin handler uses for a domain handle's kill."""

    def __init__(self, domain: Domain, rank: int) -> None:
        self.reactor = domain.clock
        self.server = domain.servers[rank]
        self.journal = domain.servers[rank].journal
        self.domains = OneRoute(domain.members[rank])


def test_admin_kill_at_a_cut_off_primary_is_never_undone(domain: Domain) -> None:
    """``hqn_lsa kill`` at a primary cut off from its backups: no OK that a take-over undoes.

    The admin handler waits for the domain's quorum (`AdminHandler._durable`), so
    this held before issue 10 too; it guards that rule.
    """
    from twisted.internet.defer import maybeDeferred

    from hqnlsd.admin.handler import AdminError, AdminHandler

    handle = domain.grant(1, pid=1)
    domain.network.partition([{1}, {2, 3}])
    handler = AdminHandler(AdminRoot(domain, 1))  # type: ignore[arg-type]
    outcome: list[Any] = []
    maybeDeferred(handler.handle, "kill", {"handle": handle}, "test admin").addBoth(
        outcome.append
    )
    successor = domain.wait_serving(FAILOVER, other_than=1)
    domain.run(TIMERS.submit_timeout)
    assert len(outcome) == 1, "the kill was never answered"
    if not hasattr(outcome[0], "value"):
        assert not domain.holds(successor, handle), "kill answered OK, undone by the take-over"
    assert isinstance(outcome[0].value, AdminError), outcome
    assert outcome[0].value.name == "INTERNAL" and "may or may not" in outcome[0].value.message
    assert domain.holds(successor, handle)  # not killed, and the admin was not told it was
