"""Validation of peer messages at the node and decode level (issue 10).

The finding: an authenticated member sends `Decided` with a view of epoch
10^20 whose members include a rank that is not in the domain and whose state
is ``null``. The receiver used to persist that view, fail to restore the
state, stay in TAKEOVER for ever, and fail to start again from its storage.
Now such a message is dropped before it touches anything: the view, the
stored state and the engine are unchanged, and a restart is clean.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from hqnlsd.admin.handler import AdminHandler
from hqnlsd.domain.adapter import EngineMachine
from hqnlsd.domain.messages import (
    Accept,
    Accepted,
    Append,
    Decided,
    Message,
    Prepare,
    Promise,
    Refuse,
    RefuseReason,
)
from hqnlsd.domain.node import DomainNode
from hqnlsd.domain.peers import INVALID_CLOSE_THRESHOLD, INVALID_LOG_INTERVAL, PeerNetwork
from hqnlsd.domain.role import Role, RoleInfo
from hqnlsd.domain.sqlstore import SqliteDomainStorage
from hqnlsd.domain.storage import MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Ballot, Value, View
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.results import Grant
from tests.domain.test_domain_adapter import RANKS, Domain, WallClock
from tests.domain.test_domain_peers import identified_link
from tests.sim.harness import SimSettings, Simulation


def bad_decided() -> Decided:
    """The finding's message: epoch 10^20, a rank not in the domain, state null."""
    return Decided(Value(View(10**20, frozenset({1, 2, 7})), None))


def test_a_decided_with_an_impossible_view_is_dropped() -> None:
    """A backup of a serving 3-member domain drops the finding's `Decided`: its view,
    storage and engine do not change, the domain keeps serving, and the member
    restarts from its storage cleanly."""
    domain = Domain()
    primary = domain.primary(limit=12.0)
    grant = domain.grant(primary, 101)
    assert isinstance(grant, Grant)
    backup = next(rank for rank in sorted(RANKS) if rank != primary)
    domain.run_until(lambda: domain.machines[backup].engine.held_count() == 1, 2.0)
    node = domain.nodes[backup]
    storage = domain.storage[backup]
    view, writes, stored = node.view, storage.writes, storage.load()
    engine_state = domain.machines[backup].engine.snapshot()

    node.receive(primary, bad_decided())

    assert node.view == view
    assert storage.writes == writes and storage.load() == stored
    assert domain.machines[backup].engine.snapshot() == engine_state
    assert node.role().role is Role.BACKUP
    # The domain keeps serving and replicating.
    assert isinstance(domain.grant(primary, 102), Grant)
    domain.run_until(lambda: domain.machines[backup].engine.held_count() == 2, 2.0)
    # A restart from the storage is clean and holds both licences.
    domain.crash(backup)
    domain.start(backup)
    assert domain.machines[backup].engine.held_count() == 2


def test_the_finding_on_sqlite_storage_restarts_cleanly(tmp_path: Path) -> None:
    """Runtime level: a member on its SQLite store receives the finding's `Decided`
    from a peer; nothing is written, and a member opened on the same file starts."""
    clock = Clock()
    path = tmp_path / "domain.sqlite3"
    storage = SqliteDomainStorage(path, "d")
    machine = EngineMachine(Engine(WallClock(clock)))
    sent: list[object] = []
    node = DomainNode(
        2, RANKS, clock, lambda to, m: sent.append(m), storage, machine, DomainTimers()
    )
    node.start()
    clock.advance(0.5)
    writes = storage.writes
    assert node.receive(1, bad_decided()) is not None
    assert storage.writes == writes
    clock.advance(0.5)
    assert node.view.epoch == 0
    node.stop()
    storage.close()
    reopened = SqliteDomainStorage(path, "d")
    again = DomainNode(
        2,
        RANKS,
        clock,
        lambda to, m: None,
        reopened,
        EngineMachine(Engine(WallClock(clock))),
        DomainTimers(),
    )
    again.start()
    assert again.view.epoch == 0
    again.stop()
    reopened.close()


def _backup(domain: Domain) -> tuple[int, int]:
    primary = domain.primary(limit=12.0)
    assert isinstance(domain.grant(primary, 101), Grant)
    backup = next(rank for rank in sorted(RANKS) if rank != primary)
    domain.run_until(lambda: domain.machines[backup].engine.held_count() == 1, 2.0)
    return primary, backup


#: a valid engine snapshot (an empty engine's)
GOOD_STATE = Engine(Clock()).snapshot()


@pytest.mark.parametrize(
    "message",
    [
        # an unknown rank in a view (within 1..20, so the old decode let it through)
        Decided(Value(View(5, frozenset({1, 2, 7})), GOOD_STATE)),
        # an epoch beyond what JSON and SQLite hold exactly
        Decided(Value(View(2**53, frozenset({1, 2})), GOOD_STATE)),
        # a state the engine cannot restore
        Decided(Value(View(5, frozenset({1, 2})), {"format": 1, "products": "x"})),
        Decided(Value(View(5, frozenset({1, 2})), None)),
        # a ballot of a rank not in the domain
        Prepare(2, Ballot(1, 9)),
        Accept(2, Ballot(5, 9), Value(View(2, frozenset({1, 2})), GOOD_STATE)),
        # a round far beyond ours (a buggy or hostile member would wedge elections)
        Prepare(2, Ballot(2**52, 2)),
        # a state the engine cannot restore, in an Accept for our next epoch
        Accept(2, Ballot(9, 2), Value(View(2, frozenset({1, 2})), {"format": 2})),
        # a refusal that asks us to wait for ever
        Refuse(2, Ballot(3, 1), RefuseReason.LEASE, wait=1e12),
        # entries the engine cannot apply
        Append(1, 0.0, 1, ((None,),), 1),
        Append(1, 0.0, 1, (({"type": "Granted", "handle": 5},),), 1),
        # a promise whose entries are garbage
        Promise(2, Ballot(1, 1), None, None, (("x",),), 0),
        # negative / huge counts
        Append(1, 0.0, -1, (), 0),
        Append(1, 0.0, 0, (), 2**60),
    ],
)
def test_invalid_messages_change_nothing(message: object) -> None:
    """Each invalid message, at a backup: no exception, nothing stored, same view and
    engine state, and the member still acknowledges its primary afterwards."""
    domain = Domain()
    primary, backup = _backup(domain)
    node, storage = domain.nodes[backup], domain.storage[backup]
    view, writes, stored = node.view, storage.writes, storage.load()
    state = domain.machines[backup].engine.snapshot()
    node.receive(primary, message)  # type: ignore[arg-type]
    domain.clock.advance(0)
    assert node.view == view
    assert storage.writes == writes and storage.load() == stored
    assert domain.machines[backup].engine.snapshot() == state
    assert node.invalid_count == 1
    assert isinstance(domain.grant(primary, 102), Grant)
    domain.run_until(lambda: domain.machines[backup].engine.held_count() == 2, 2.0)


class _FakeNode:
    """A node whose view names rank 7, which the hosts file does not know."""

    #: not recovering from damaged state
    amnesia = None

    def role(self) -> RoleInfo:
        """A backup of a view with an unknown rank."""
        return RoleInfo(2, Role.BACKUP, 7, 9, frozenset({2, 7}))


def test_sinfo_domain_list_survives_an_unknown_rank() -> None:
    """The admin handler lists a view with a rank it does not know instead of
    failing with KeyError (INTERNAL): defensive, since validation keeps such a
    view out of every node."""
    address_of = {1: IPv4Address("127.0.0.1"), 2: IPv4Address("127.0.0.2")}
    member = SimpleNamespace(
        node=_FakeNode(),
        address_of=address_of,
        spec=SimpleNamespace(addresses=tuple(address_of.values())),
        engine=Engine(Clock()),
        takeovers=0,
        damaged=None,
    )
    handler = AdminHandler.__new__(AdminHandler)
    handler.root = SimpleNamespace(domains=SimpleNamespace(members={"d": member}))  # type: ignore[assignment]
    (listed,) = handler._domain_list()
    assert listed["view"] == ["127.0.0.2", "unknown-rank-7"]
    assert listed["primary"] is None and listed["primary_rank"] == 7


class _FakeLink:
    """The part of a `PeerLink` the network's invalid-input handling uses."""

    def __init__(self, peer: IPv4Address) -> None:
        """A link from ``peer``."""
        self.peer = peer
        self.closes = 0

    def close(self) -> None:
        """Count the closes."""
        self.closes += 1


def test_invalid_input_is_logged_once_a_minute_and_closes_the_link() -> None:
    """100 invalid messages from one peer within a second: one log line naming the peer
    and the field, the link closed at every 20th; a minute later the next line reports
    how many were dropped and how many links closed since, and sinfo's counts add up."""
    clock = Clock()
    network = PeerNetwork(
        clock,
        clock,
        IPv4Address("127.0.0.1"),
        None,  # type: ignore[arg-type]  # credentials: nothing is started here
        deliver=lambda domain, address, message: None,
        link_changed=lambda address, up: None,
    )
    peer = IPv4Address("127.0.0.3")
    network.set_domains({"d": {IPv4Address("127.0.0.1"): 1, peer: 3}})
    events: list[dict[str, Any]] = []
    network.log = Logger(observer=events.append)
    link = _FakeLink(peer)
    for _ in range(100):
        network._invalid(link, "value.view.members: ranks [7] are not members", "d")  # type: ignore[arg-type]
        clock.advance(0.01)
    assert len(events) == 1
    text = formatEvent(events[0])
    assert "127.0.0.3" in text and "value.view.members" in text and "domain d" in text
    assert link.closes == 100 // INVALID_CLOSE_THRESHOLD
    clock.advance(INVALID_LOG_INTERVAL)
    network._invalid(link, "epoch: too far", "d")  # type: ignore[arg-type]
    assert len(events) == 2
    assert "100 invalid message(s) dropped and 5 link(s) closed" in formatEvent(events[1])
    (info,) = [p for p in network.peers() if p.address == peer]
    assert (info.invalid, info.invalid_closes) == (101, 5)


def _granted_entry(product: str) -> dict[str, object]:
    """A well-formed Granted entry for ``product`` (not served by an empty engine)."""
    return {
        "type": "Granted",
        "publisher": "Harlequin",
        "product": product,
        "handle": "h1",
        "indices": [1],
        "locked": False,
        "on_locked_node": False,
        "user": "u",
        "host": "h",
        "address": "10.0.0.1",
        "pid": 1,
        "uid": None,
        "group": None,
        "hostid": None,
        "client": None,
        "access": 8,
        "at": 1.0,
    }


def test_a_promise_whose_entries_do_not_apply_is_dropped() -> None:
    """A candidate drops a promise with well-formed entries that do not fit its state
    (a grant of a product not served), stays consistent, and completes its candidacy
    with an honest promise."""
    clock = Clock()
    sent: list[tuple[int, object]] = []
    storage = MemoryStorage()
    machine = EngineMachine(Engine(WallClock(clock)))
    node = DomainNode(
        1, RANKS, clock, lambda to, m: sent.append((to, m)), storage, machine, DomainTimers()
    )
    node.start()
    node.connected(2)
    node.connected(3)
    for _ in range(100):
        clock.advance(0.05)
        if any(isinstance(m, Prepare) for _, m in sent):
            break
    prepare = next(m for _, m in sent if isinstance(m, Prepare))
    assert isinstance(prepare, Prepare)
    # The honest promise first: the candidate then waits for 2 (it is connected).
    honest = Promise(prepare.epoch, prepare.ballot, None, None, (), 0)
    assert node.receive(3, honest) is None
    assert node.view.epoch == 0
    bad = Promise(prepare.epoch, prepare.ballot, None, None, ((_granted_entry("Nope"),),), 0)
    why = node.receive(2, bad)
    assert why is not None and "entries" in why
    assert machine.engine.snapshot() == Engine(Clock()).snapshot()
    assert node.view.epoch == 0
    # It proposes from its own log and the honest promise; 3 accepts; installed.
    for _ in range(100):
        clock.advance(0.05)
        if any(isinstance(m, Accept) for _, m in sent):
            break
    accept = next(m for _, m in sent if isinstance(m, Accept))
    assert isinstance(accept, Accept) and accept.value.view.members == frozenset({1, 3})
    node.receive(3, Accepted(accept.epoch, accept.ballot))
    assert node.view.epoch == prepare.epoch


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json\n",
        b'{"t": "ping", "n": NaN}\n',
        b'{"t": "m", "d": "D", "m": {"type": "ack", "epoch": 1, "sent_at": 1e400, '
        b'"match": 0, "granted": true}}\n',
        b"[" * 100_000 + b"\n",
        b'{"t": {"deep": [1, 2]}}\n',
        b'{"t": "ping", "n": [1]}\n',
        b'{"t": "pong", "n": {"a": 1}}\n',
        b'{"t": "m", "d": "D", "m": {"type": "decided", "value": {"view": {"epoch": '
        + str(10**20).encode()
        + b', "members": [1, 2, 7], "origin": null}, "state": null}}}\n',
        b'{"t": "hello", "v": 1, "domains": {"D": 2}}\n',  # a second hello
    ],
)
def test_bad_lines_are_reported_as_invalid_and_nothing_raises(raw: bytes) -> None:
    """Lines a peer can send that are not valid: each one reported to the network's
    rate-limited invalid handling (never a log line of its own, never an exception),
    nothing delivered, the link kept."""
    link, network, transport = identified_link()
    link.dataReceived(b'{"t": "hello", "v": 1, "domains": {"D": 2}}\n')
    link.dataReceived(raw)
    assert network.delivered == [] and len(network.invalid) == 1, network.invalid
    assert not transport.disconnecting


@pytest.mark.parametrize(("size", "seed"), [(3, 1), (3, 2), (4, 3), (5, 4)])
def test_honest_members_never_send_an_invalid_message(
    size: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation is never stricter than the protocol: in seeded simulation runs with
    crashes, restarts, partitions, loss and drift, no message an honest member sends
    is refused (a false refusal could stall a domain)."""
    refused: list[str] = []
    received: list[int] = []
    original = DomainNode.receive

    def receive(self: DomainNode, sender: int, message: Message) -> str | None:
        why = original(self, sender, message)
        received.append(1)
        if why is not None:
            refused.append(f"{self.rank} <- {sender}: {why}: {message!r}"[:300])
        return why

    monkeypatch.setattr(DomainNode, "receive", receive)
    stats = Simulation(SimSettings(size=size, count=2, duration=150.0), seed).run()
    assert stats.events > 1000 and stats.views > 2  # it did run
    assert refused == [] and len(received) > 1000
