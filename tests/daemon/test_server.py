"""`LicenceServer`, driven directly: every dispatch path, durability before the answer.

The server runs on a `task.Clock`, a real `Engine` and a real `Journal` (SQLite in
a temporary directory); permits come from a fake `PermitSource` that builds the
catalogue from `Permit` values with the real `build_catalogue` (and, in one test,
from real sealed files on disk).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure

from hqnlsd.domain import Refusal
from hqnlsd.domain.runtime import commit_failure
from hqnlsd.identity import HostsTable
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Granted, Released
from hqnlsd.permits.discovery import Discovery
from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.permits.reader import Catalogue, PermitFile, build_catalogue
from hqnlsd.permits.seal import PublisherKey, TrustedKeys
from hqnlsd.permits.servercert import NotGenuine, ServerKeys, make_server_key
from hqnlsd.persistence.store import RETRY_FIRST, Journal, open_journal
from hqnlsd.protocols import client_side, grammar
from hqnlsd.protocols.replies import Err, Listing, Ok, Reply, format_reply
from hqnlsd.protocols.signing import verify_reply
from hqnlsd.server import LicenceServer, PermitSource
from hqnlsd.status import Status
from tests.daemons import Publisher, make_permit

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
ME = HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1A2B3C4D)
PARTNER = HostId(ipaddress.IPv4Address("127.0.0.2"), 0x0BADF00D)
PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOSTS = "127.0.0.1 localhost hqnserver1\n127.0.0.2 hqnserver2\n"
PERMIT_PATH = "/permits/test-hqn.permit"


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (the tests must not depend on the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


def product(name: str, **change: Any) -> ProductPermit:
    """A Harlequin product, 2 floating licences, GRAB + UVIS, valid 2026-2030."""
    base = ProductPermit(
        publisher="Harlequin",
        product=name,
        version="8.0",
        policy=int(Policy.GRAB | Policy.UVIS),
        node_count=0,
        floating_count=2,
        start=datetime.date(2026, 1, 1),
        expiry=datetime.date(2030, 12, 31),
        update_minutes=5,
        data=(1, 2, 3),
    )
    return dataclasses.replace(base, **change)


LISPWORKS = product("LispWorks")
QUIET = product("Quiet", policy=int(Policy.GRAB), floating_count=1, data=())
LOCKED = product("Locked", node_count=1, floating_count=0, locked_nodes=(HostId(ME.address, 0),))
EXPIRED = product("Old", expiry=datetime.date(2027, 1, 1))
NOT_YET = product("Future", start=datetime.date(2028, 1, 1))
HERE = make_permit([ME], [LISPWORKS, QUIET, LOCKED, EXPIRED, NOT_YET], number=1)
ELSEWHERE = make_permit(
    [
        HostId(ipaddress.IPv4Address("10.0.0.5"), 5),
        HostId(ipaddress.IPv4Address("10.0.0.6"), 6),
    ],
    [product("Elsewhere")],
    number=2,
)
SHARED = make_permit([ME, PARTNER], [product("Shared")], number=3)


class FakeSource(PermitSource):
    """Permits from memory: ``files`` are read as the real reader would have read them."""

    def __init__(self, files: Sequence[PermitFile]) -> None:
        super().__init__(
            permit_dirs=(Path("/permits"),),
            environ={},
            publisher_keys=Path("/keys"),
            hosts_file=Path("/hosts"),
            me=ME,
        )
        self.files = list(files)
        self.reads = 0

    def read(self) -> tuple[Discovery, TrustedKeys, Catalogue]:
        """The catalogue of ``files``, built by the real serving decision."""
        self.reads += 1
        discovery = Discovery(tuple(Path(f.path) for f in self.files), "-p", (Path("/permits"),))
        catalogue = build_catalogue(self.files, ME, HostsTable.from_text(HOSTS))
        return discovery, TrustedKeys({}), catalogue


def files_of(*permits: Permit) -> list[PermitFile]:
    """Valid permit files, one per permit."""
    return [PermitFile(f"/permits/{n}-hqn.permit", p, None) for n, p in enumerate(permits)]


class FlakyConnection(sqlite3.Connection):
    """A connection whose event inserts fail while ``failing`` is set (a full disk)."""

    failing = False

    def executemany(self, sql: str, rows: Any, /) -> sqlite3.Cursor:
        """Fail inserts into the event log on demand."""
        if self.failing and sql.startswith("INSERT INTO events"):
            raise sqlite3.OperationalError("database or disk is full (simulated)")
        return super().executemany(sql, rows)


@dataclasses.dataclass
class Rig:
    """A server with its clock, engine, journal and permit source."""

    clock: Clock
    engine: Engine
    journal: Journal
    source: FakeSource
    server: LicenceServer
    state_dir: Path
    db: FlakyConnection

    def dispatch(self, command: grammar.DispatchedCommand, peer: IPv4Address = PEER) -> Reply:
        """Dispatch and, if the answer waits for the journal, let the group commit run."""
        answer = self.server.dispatch(command, peer)
        if isinstance(answer, Deferred):
            return self.settle(answer)
        return answer

    def settle(self, answer: Deferred[Reply]) -> Reply:
        """Run the pending group commit and return what ``answer`` fired with."""
        results: list[Any] = []
        answer.addBoth(results.append)
        assert results == [], "answered before the journal commit ran"
        self.clock.advance(0)
        assert len(results) == 1, "no answer after the journal commit"
        reply = results[0]
        assert isinstance(reply, Ok | Err | Listing), reply
        return reply

    def grant(self, **change: Any) -> Ok:
        """A REQUEST that must succeed."""
        reply = self.dispatch(request(**change))
        assert isinstance(reply, Ok), reply
        return reply


def request(product: str = "LispWorks", **change: Any) -> grammar.Request:
    """A REQUEST command as the protocol would hand it over."""
    base = grammar.Request(
        publisher="Harlequin", product=product, version="8.0", user="alice", host="alpha", pid=7
    )
    return dataclasses.replace(base, **change)


def make_rig(state_dir: Path, files: Sequence[PermitFile] | None = None) -> Rig:
    """A started server: journal restored into a fresh engine, permits loaded and durable."""
    clock = Clock()
    clock.advance(NOW)
    counter = itertools.count(1)
    engine = Engine(clock, lambda: f"H{next(counter)}", today=utc_day)
    opened: list[FlakyConnection] = []

    def connect(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=0.5, factory=FlakyConnection)
        assert isinstance(db, FlakyConnection)
        opened.append(db)
        return db

    journal = open_journal(state_dir, clock, connect=connect)
    journal.restore(engine)
    source = FakeSource(files_of(HERE, ELSEWHERE, SHARED) if files is None else files)
    server = LicenceServer(engine, journal, source, clock=clock)
    loaded = server.load_permits()
    fired: list[object] = []
    loaded.addBoth(fired.append)
    clock.advance(0)
    assert fired == [None]
    return Rig(clock, engine, journal, source, server, state_dir, opened[0])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A server on the standard permits, its journal closed at the end."""
    made = make_rig(tmp_path / "state")
    yield made
    made.journal.close()


def err(reply: Reply, status: Status) -> Err:
    """``reply``, which must be ``ERR status``."""
    assert isinstance(reply, Err), reply
    assert reply.status is status, reply
    return reply


def reopened_holders(state_dir: Path, journal: Journal) -> set[str]:
    """Close ``journal`` and read back, in a fresh engine, the handles that are durable."""
    journal.close()
    clock = Clock()
    clock.advance(NOW)
    engine = Engine(clock, today=utc_day)
    again = open_journal(state_dir, clock)
    try:
        again.restore(engine)
        found = engine.holders("Harlequin", "LispWorks")
        assert isinstance(found, list), found
        return {holder.handle for holder in found if holder.handle is not None}
    finally:
        again.close()


def result_of(answer: Deferred[Reply]) -> Reply:
    """What a Deferred that has fired fired with."""
    got: list[Any] = []
    answer.addBoth(got.append)
    assert len(got) == 1, "not answered"
    reply = got[0]
    assert isinstance(reply, Ok | Err | Listing), reply
    return reply


def messages(events: Sequence[LogEvent]) -> list[str]:
    """The formatted text of captured log events."""
    return [formatEvent(event) for event in events]


# -- REQUEST ----------------------------------------------------------------------------


def test_grant_reply_fields(rig: Rig) -> None:
    """A grant answers handle, period, type, access, quoted data, dates and index."""
    reply = rig.grant()
    assert reply.word == ""
    assert dict(reply.fields) == {
        "handle": "H1",
        "period": "300",
        "type": "floating",
        "access": "8",
        "data": "1 2 3",
        "start": "01/01/2026",
        "expiry": "31/12/2030",
        "index": "1",
    }
    line = format_reply(reply)
    assert b' data="1 2 3" ' in line
    assert line.endswith(b"\r\n")


def test_grant_answered_only_after_commit(rig: Rig) -> None:
    """The grant's Deferred fires only once the group commit has written its event."""
    commits = rig.journal.stats.commits
    answer = rig.server.dispatch(request(), PEER)
    assert isinstance(answer, Deferred)
    seen: list[tuple[Any, int]] = []
    answer.addCallback(lambda reply: seen.append((reply, rig.journal.stats.commits)))
    assert seen == []
    assert rig.engine.held_count() == 1  # decided in memory, not yet durable
    rig.clock.advance(0)
    assert len(seen) == 1
    reply, commits_when_answered = seen[0]
    assert isinstance(reply, Ok) and reply.get("handle") == "H1"
    assert commits_when_answered == commits + 1
    assert reopened_holders(rig.state_dir, rig.journal) == {"H1"}


def test_locked_grant_uses_the_peer_address(rig: Rig) -> None:
    """The locked pool is for the listed node's address, as the connection shows it."""
    other_peer = IPv4Address("TCP", "127.0.0.9", 40001)
    # Whatever host name the client claims, 127.0.0.9 is not the locked node.
    denied = rig.dispatch(request(product="Locked", host="localhost", pid=8), other_peer)
    err(denied, Status.NOLICENCES)
    reply = rig.grant(product="Locked")
    assert reply.get("type") == "locked"
    assert reply.get("index") == "1"


def test_duplicate_request_returns_the_same_handle(rig: Rig) -> None:
    """A REQUEST repeated with the same client token gets the same handle, marked duplicate."""
    first = rig.grant(client="job-1")
    again = rig.grant(client="job-1")
    assert again.get("handle") == first.get("handle")
    assert again.get("index") == first.get("index")
    assert again.get("duplicate") == "1"
    assert first.get("duplicate") is None
    assert rig.engine.held_count() == 1
    other = rig.grant(client="job-2", pid=8)
    assert other.get("handle") != first.get("handle")


def test_nolicences_when_the_pool_is_used_up(rig: Rig) -> None:
    """Two floating licences, the third request is NOLICENCES with its numeric code."""
    rig.grant(pid=1)
    rig.grant(pid=2)
    denied = err(rig.dispatch(request(pid=3)), Status.NOLICENCES)
    assert "in use" in denied.msg
    assert format_reply(denied).startswith(b"ERR NOLICENCES code=0xC8041002 ")


def test_unknown_product_is_badproduct(rig: Rig) -> None:
    """A product no permit names: BADPRODUCT at once, nothing journalled."""
    commits = rig.journal.stats.commits
    answer = rig.server.dispatch(request(product="Nonesuch"), PEER)
    assert not isinstance(answer, Deferred)
    denied = err(answer, Status.BADPRODUCT)
    assert "Nonesuch" in denied.msg
    rig.clock.advance(0)
    assert rig.journal.stats.commits == commits


def test_wrong_version_is_badproduct_naming_the_served_one(rig: Rig) -> None:
    """Another version than the permit's: BADPRODUCT, and the message names 8.0."""
    denied = err(rig.dispatch(request(version="7.1")), Status.BADPRODUCT)
    assert "7.1" in denied.msg and "8.0" in denied.msg


@pytest.mark.parametrize(
    ("name", "status"),
    [("Old", Status.PERMITEXPIRED), ("Future", Status.PERMITOUTOFDATE)],
)
def test_dates_outside_the_permit(rig: Rig, name: str, status: Status) -> None:
    """Before the start date PERMITOUTOFDATE, after the expiry date PERMITEXPIRED."""
    err(rig.dispatch(request(product=name)), status)


def test_product_of_another_domain_is_try_domain(rig: Rig) -> None:
    """A product whose permit names other servers: TRY_DOMAIN with that domain's members."""
    denied = err(rig.dispatch(request(product="Elsewhere")), Status.TRY_DOMAIN)
    assert denied.get("domain") == "10.0.0.5 10.0.0.6"
    assert "10.0.0.5 10.0.0.6" in denied.msg
    users = err(rig.dispatch(grammar.Users("Harlequin", "Elsewhere", "8.0")), Status.TRY_DOMAIN)
    assert users.get("domain") == "10.0.0.5 10.0.0.6"


def test_multi_host_domain_served_here_is_notverified(rig: Rig) -> None:
    """A product of a multi-host domain this host belongs to: NOTVERIFIED, not granted."""
    denied = err(rig.dispatch(request(product="Shared")), Status.NOTVERIFIED)
    assert denied.get("domain") == "127.0.0.1 127.0.0.2"
    assert rig.engine.product("Harlequin", "Shared") is None
    assert rig.engine.held_count() == 0


def _with_server_key(rig: Rig) -> TrustedKeys:
    """Give the server a key for permit 1 (HERE); the publisher's trusted keys."""
    key = PublisherKey.generate()
    rig.server.server_keys = ServerKeys({HERE.number: make_server_key(key, HERE)})
    return TrustedKeys.of(key.private_key.public_key())


def _verify(
    trusted: TrustedKeys, reply: Ok | Err, challenge: bytes, verb: str, handle: str
) -> None:
    verify_reply(
        trusted,
        server=ME.address,
        challenge=challenge,
        verb=verb,
        handle=handle,
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        reply=reply,
    )


def test_request_with_challenge_is_signed_with_the_permits_server_key(rig: Rig) -> None:
    """A challenge is answered with a signature that verifies for that challenge only."""
    trusted = _with_server_key(rig)
    granted = rig.dispatch(request(challenge=b"\x01\x02"))
    assert isinstance(granted, Ok), granted
    assert granted.get("signature") and granted.get("servercert")
    handle = granted.get("handle") or ""
    _verify(trusted, granted, b"\x01\x02", "REQUEST", handle)
    with pytest.raises(NotGenuine):
        _verify(trusted, granted, b"\x09\x09", "REQUEST", handle)


def test_challenge_without_a_server_key_goes_unsigned(rig: Rig) -> None:
    """No key for the permit: the grant is made but unsigned, so a verifying client knows."""
    granted = rig.dispatch(request(challenge=b"\x01"))
    assert isinstance(granted, Ok), granted
    assert granted.get("signature") is None
    with pytest.raises(NotGenuine):
        _verify(TrustedKeys.of(), granted, b"\x01", "REQUEST", granted.get("handle") or "")


# -- UPDATE / RELEASE ---------------------------------------------------------------------


def test_update_answers_at_once_and_journals(rig: Rig) -> None:
    """UPDATE is answered without waiting; its event goes into the next group commit."""
    handle = rig.grant().get("handle") or ""
    written = rig.journal.stats.events_written
    rig.clock.advance(60)
    answer = rig.server.dispatch(grammar.Update(handle), PEER)
    assert isinstance(answer, Ok)
    assert dict(answer.fields) == {"handle": handle, "period": "300"}
    rig.clock.advance(0)
    assert rig.journal.stats.events_written == written + 1


def test_update_of_unknown_handle_is_badhandle(rig: Rig) -> None:
    """A handle never granted: BADHANDLE, with the handle in the reply."""
    denied = err(rig.dispatch(grammar.Update("nosuch")), Status.BADHANDLE)
    assert denied.get("handle") == "nosuch"


def test_update_of_revoked_licence_is_lostlicence(rig: Rig) -> None:
    """A licence taken back (kill) answers LOSTLICENCE at the holder's next UPDATE."""
    handle = rig.grant().get("handle") or ""
    killed = rig.engine.kill(handle)
    rig.journal.submit(killed.events)
    denied = err(rig.dispatch(grammar.Update(handle)), Status.LOSTLICENCE)
    assert denied.get("handle") == handle
    err(rig.dispatch(grammar.Release(handle)), Status.LOSTLICENCE)


def test_update_with_challenge_is_signed(rig: Rig) -> None:
    """UPDATE with a challenge: signed over the handle and that challenge."""
    trusted = _with_server_key(rig)
    handle = rig.grant().get("handle") or ""
    updated = rig.dispatch(grammar.Update(handle, challenge=b"\xff"))
    assert isinstance(updated, Ok), updated
    _verify(trusted, updated, b"\xff", "UPDATE", handle)


def test_release_frees_the_licence(rig: Rig) -> None:
    """RELEASE answers once durable, frees the licence for the next request, then BADHANDLE.

    (Before issue 10 this test asserted that RELEASE was answered at once, before
    its commit: the behaviour that let a crash undo a release answered OK.)
    """
    first = rig.grant(pid=1).get("handle") or ""
    rig.grant(pid=2)
    err(rig.dispatch(request(pid=3)), Status.NOLICENCES)
    answer = rig.dispatch(grammar.Release(first))
    assert isinstance(answer, Ok)
    assert dict(answer.fields) == {"handle": first}
    third = rig.grant(pid=3)
    assert third.get("index") == "1"
    err(rig.dispatch(grammar.Release(first)), Status.BADHANDLE)
    _, events = rig.journal.load()
    assert [e.handle for e in events if isinstance(e, Released)] == [first]


class HeldJournal:
    """A journal whose commits happen only when the test says so (`write_held`)."""

    def __init__(self, real: Journal) -> None:
        self.real = real
        self.waiting: list[tuple[tuple[Any, ...], Deferred[None]]] = []

    def commit(self, events: Sequence[Any]) -> Deferred[None]:
        """Hold the commit (nothing is written until `write_held`)."""
        done: Deferred[None] = Deferred()
        self.waiting.append((tuple(events), done))
        return done

    def write_held(self) -> None:
        """Write and confirm everything held, in order."""
        waiting, self.waiting = self.waiting, []
        for events, _ in waiting:
            self.real.submit(events)
        self.real.flush()
        for _, done in waiting:
            done.callback(None)


def test_release_is_answered_only_after_its_commit(rig: Rig) -> None:
    """The OK to RELEASE is not sent before the journal commit has succeeded.

    Failed before issue 10: the RELEASE was answered OK at once (``wait=False``),
    so a crash between the reply and the commit brought the licence back.
    """
    handle = rig.grant().get("handle") or ""
    held = HeldJournal(rig.journal)
    rig.server.journal = held  # type: ignore[assignment]
    answer = rig.server.dispatch(grammar.Release(handle), PEER)
    assert isinstance(answer, Deferred), f"RELEASE answered before its commit: {answer}"
    got: list[Any] = []
    answer.addBoth(got.append)
    rig.clock.advance(10)
    assert got == [], "RELEASE answered before its commit"
    _, logged = rig.journal.load()
    assert not any(isinstance(e, Released) for e in logged)  # a crash now keeps the licence
    held.write_held()
    assert len(got) == 1 and isinstance(got[0], Ok), got
    assert reopened_holders(rig.state_dir, rig.journal) == set()


def test_release_sent_again_waits_for_the_first_commit(rig: Rig) -> None:
    """A RELEASE sent again before the first one's commit: its BADHANDLE waits too.

    The client library takes BADHANDLE to a RELEASE it sends again (after no or an
    unknown answer) as "released", so it must not be answered before the release
    it reflects is durable. Failed before issue 10 (BADHANDLE at once).
    """
    handle = rig.grant().get("handle") or ""
    held = HeldJournal(rig.journal)
    rig.server.journal = held  # type: ignore[assignment]
    first = rig.server.dispatch(grammar.Release(handle), PEER)
    again = rig.server.dispatch(grammar.Release(handle), PEER)
    assert isinstance(first, Deferred) and isinstance(again, Deferred), (first, again)
    got: list[Any] = []
    again.addBoth(got.append)
    assert got == []
    held.write_held()
    assert len(got) == 1
    err(got[0], Status.BADHANDLE)


# -- QUERY / USERS / MESSAGE -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        (grammar.QueryWhat.DATA, {"data": "1 2 3"}),
        (grammar.QueryWhat.PERIOD, {"period": "300"}),
        (grammar.QueryWhat.CONTEXT, {"access": "8", "locked": "0", "locked_node": "0"}),
        (
            grammar.QueryWhat.POLICY,
            {"policy": str(int(Policy.GRAB | Policy.UVIS)), "flags": "GRAB UVIS"},
        ),
        (grammar.QueryWhat.DATES, {"start": "01/01/2026", "expiry": "31/12/2030"}),
    ],
)
def test_query_kinds(rig: Rig, what: grammar.QueryWhat, expected: dict[str, str]) -> None:
    """Every QUERY kind answers its values, after the handle and the kind."""
    handle = rig.grant().get("handle") or ""
    reply = rig.dispatch(grammar.Query(handle, what))
    assert isinstance(reply, Ok), reply
    assert dict(reply.fields) == {"handle": handle, "what": what.value, **expected}


def test_query_of_unknown_handle_is_badhandle(rig: Rig) -> None:
    """QUERY with a handle never granted: BADHANDLE."""
    denied = err(rig.dispatch(grammar.Query("nosuch", grammar.QueryWhat.DATA)), Status.BADHANDLE)
    assert denied.get("handle") == "nosuch"


def test_users_lists_the_holders(rig: Rig) -> None:
    """USERS (UVIS on): one line per holder, with the connection's address, no handles."""
    rig.grant(user="alice", host="alpha", pid=11)
    bob = rig.dispatch(
        request(user="bob", host="beta", pid=12, client="tok"), IPv4Address("TCP", "127.0.0.7", 1)
    )
    assert isinstance(bob, Ok), bob
    reply = rig.dispatch(grammar.Users("Harlequin", "LispWorks", "8.0"))
    assert isinstance(reply, Listing), reply
    records = [client_side.parse_fields(line) for line in reply.lines]
    assert [(r["user"], r["host"], r["pid"], r["index"]) for r in records] == [
        ("alice", "alpha", "11", "1"),
        ("bob", "beta", "12", "2"),
    ]
    assert [r["address"] for r in records] == ["127.0.0.1", "127.0.0.7"]
    for record in records:
        assert record["type"] == "floating"
        # Local time of the grant, as the server's administrator reads it.
        assert record["since"] == datetime.datetime.fromtimestamp(NOW).strftime("%d/%m/%Y %H:%M:%S")
        assert "handle" not in record


def test_users_of_an_empty_product_is_an_empty_listing(rig: Rig) -> None:
    """No holders: a listing with no lines (just the final '.')."""
    reply = rig.dispatch(grammar.Users("Harlequin", "LispWorks", "8.0"))
    assert reply == Listing(())
    assert format_reply(reply) == b".\r\n"


def test_users_errors(rig: Rig) -> None:
    """USERS: USERS_OFF without UVIS, BADPRODUCT for unknown products and other versions."""
    err(rig.dispatch(grammar.Users("Harlequin", "Quiet", "8.0")), Status.USERS_OFF)
    err(rig.dispatch(grammar.Users("Harlequin", "Nonesuch", "8.0")), Status.BADPRODUCT)
    denied = err(rig.dispatch(grammar.Users("Harlequin", "LispWorks", "9.9")), Status.BADPRODUCT)
    assert "8.0" in denied.msg
    err(rig.dispatch(grammar.Users("Harlequin", "Shared", "8.0")), Status.NOTVERIFIED)


def test_message_is_logged_and_acknowledged(rig: Rig) -> None:
    """MESSAGE: a bare OK, and the text in the server's log with the peer address."""
    with capturedLogs() as events:
        reply = rig.dispatch(grammar.Message("disk nearly full on alpha"))
    assert reply == Ok.of()
    logged = [text for text in messages(events) if "disk nearly full on alpha" in text]
    assert logged and "127.0.0.1" in logged[0]


def test_a_command_the_server_does_not_serve(rig: Rig) -> None:
    """Commands the protocol answers itself are not served here: UNKNOWN_COMMAND."""
    stray: Any = grammar.Ping()
    answer = rig.server.dispatch(stray, PEER)
    assert not isinstance(answer, Deferred)
    err(answer, Status.UNKNOWN_COMMAND)


# -- durability failures --------------------------------------------------------------------


def test_failed_commit_answers_internal(tmp_path: Path) -> None:
    """A grant whose commit fails is answered INTERNAL; the journal retries and recovers."""
    rig = make_rig(tmp_path / "state")
    try:
        rig.db.failing = True
        with capturedLogs() as events:
            reply = rig.dispatch(request())
        denied = err(reply, Status.INTERNAL)
        assert "durably" in denied.msg
        assert any("journal commit failed" in text for text in messages(events))
        assert not rig.journal.healthy
        # The disk comes back: the retry writes the grant (the journal never skips an event).
        rig.db.failing = False
        rig.clock.advance(RETRY_FIRST)
        assert rig.journal.healthy
        _, logged = rig.journal.load()
        assert [e.handle for e in logged if isinstance(e, Granted)] == ["H1"]
        # Answers flow again.
        assert isinstance(rig.dispatch(request(pid=2)), Ok)
    finally:
        rig.journal.close()


def test_failed_commit_of_a_release_answers_internal(tmp_path: Path) -> None:
    """RELEASE waits for its commit: a failing disk answers INTERNAL, never OK.

    (Before issue 10 this test asserted the opposite: OK although the release was
    not durable. The event stays queued and is written by the retry.)
    """
    rig = make_rig(tmp_path / "state")
    try:
        handle = rig.grant().get("handle") or ""
        rig.db.failing = True
        with capturedLogs():
            denied = err(rig.dispatch(grammar.Release(handle)), Status.INTERNAL)
        assert "durably" in denied.msg
        assert not rig.journal.healthy
        # Sent again while the disk still fails: the BADHANDLE is not given either.
        with capturedLogs():
            err(rig.dispatch(grammar.Release(handle)), Status.INTERNAL)
        rig.db.failing = False
        rig.clock.advance(RETRY_FIRST)
        assert rig.journal.healthy
        err(rig.dispatch(grammar.Release(handle)), Status.BADHANDLE)
        assert reopened_holders(rig.state_dir, rig.journal) == set()
    finally:
        rig.journal.close()


# -- permits -------------------------------------------------------------------------------


def test_load_permits_twice_keeps_licences_of_unchanged_products(rig: Rig) -> None:
    """Re-reading the same permits keeps every licence; a removed product's are revoked."""
    kept = rig.grant(product="LispWorks").get("handle") or ""
    dropped = rig.grant(product="Quiet").get("handle") or ""
    rig.server.load_permits()
    rig.clock.advance(0)
    assert rig.source.reads == 2
    assert isinstance(rig.dispatch(grammar.Update(kept)), Ok)
    assert isinstance(rig.dispatch(grammar.Update(dropped)), Ok)

    # The permit is renewed (later expiry) and Quiet is gone from it.
    renewed = dataclasses.replace(LISPWORKS, expiry=datetime.date(2031, 12, 31))
    rig.source.files = files_of(make_permit([ME], [renewed], number=1), ELSEWHERE, SHARED)
    rig.server.load_permits()
    rig.clock.advance(0)
    update = rig.dispatch(grammar.Update(kept))
    assert isinstance(update, Ok), update
    err(rig.dispatch(grammar.Update(dropped)), Status.LOSTLICENCE)
    err(rig.dispatch(request(product="Quiet")), Status.BADPRODUCT)
    grant = rig.grant(pid=99)
    assert grant.get("expiry") == "31/12/2031"
    assert grant.get("index") == "2"


def test_load_permits_logs_errors_and_serves_what_was_read(rig: Rig) -> None:
    """A file whose second product is bad: error logged with file, line, condition; first served."""
    error = PermitError(
        Condition.PRODUCT_SEAL_WRONG, "the seal does not match", path=PERMIT_PATH, line=31
    )
    partial = make_permit([ME], [product("Survivor")], number=9)
    rig.source.files = [PermitFile(PERMIT_PATH, partial, error)]
    with capturedLogs() as events:
        rig.server.load_permits()
    rig.clock.advance(0)
    errors = [event for event in events if event.get("condition") is not None]
    assert [event["condition"] for event in errors] == [103]
    assert f"{PERMIT_PATH}:31: error 103" in formatEvent(errors[0])
    assert isinstance(rig.dispatch(request(product="Survivor")), Ok)
    err(rig.dispatch(request(product="LispWorks")), Status.BADPRODUCT)


def test_load_permits_from_real_files(tmp_path: Path) -> None:
    """The real PermitSource: sealed files in the -p directory, verified with the .pub keys."""
    publisher = Publisher.create(tmp_path / "keys")
    permits = tmp_path / "permits"
    publisher.write_permit(permits / "a-hqn.permit", make_permit([ME], [LISPWORKS]))
    (tmp_path / "hosts").write_text(HOSTS)
    clock = Clock()
    clock.advance(NOW)
    engine = Engine(clock, today=utc_day)
    journal = open_journal(tmp_path / "state", clock)
    try:
        journal.restore(engine)
        source = PermitSource(
            permit_dirs=(permits,),
            environ={},
            publisher_keys=publisher.keys_dir,
            hosts_file=tmp_path / "hosts",
            me=ME,
        )
        server = LicenceServer(engine, journal, source, clock=clock)
        server.load_permits()
        clock.advance(0)
        assert server.discovery is not None
        assert server.discovery.files == (permits / "a-hqn.permit",)
        assert [p.product for p in engine.served()] == ["LispWorks"]
        answer = server.dispatch(request(), PEER)
        assert isinstance(answer, Deferred)
        replies: list[object] = []
        answer.addBoth(replies.append)
        clock.advance(0)
        assert len(replies) == 1 and isinstance(replies[0], Ok), replies
        assert replies[0].get("handle")
    finally:
        journal.close()


def test_load_permits_logs_what_is_served(tmp_path: Path) -> None:
    """The log says which products are served, and that a multi-host one is not yet."""
    clock = Clock()
    clock.advance(NOW)
    engine = Engine(clock, today=utc_day)
    journal = open_journal(tmp_path / "state", clock)
    try:
        journal.restore(engine)
        server = LicenceServer(
            engine, journal, FakeSource(files_of(HERE, ELSEWHERE, SHARED)), clock=clock
        )
        with capturedLogs() as events:
            server.load_permits()
        clock.advance(0)
        texts = messages(events)
        assert any(text.startswith("serving Harlequin LispWorks 8.0 from") for text in texts)
        assert not any(text.startswith("serving Harlequin Shared") for text in texts)
        shared = [text for text in texts if text.startswith("not yet serving Harlequin Shared")]
        assert shared and "127.0.0.1 127.0.0.2" in shared[0]
        # Issue 11: a product of another domain is read but not served, and the log
        # says so and why (this test asserted silence about it before).
        assert not any(text.startswith("serving Harlequin Elsewhere") for text in texts)
        elsewhere = [text for text in texts if text.startswith("not serving Harlequin Elsewhere")]
        assert len(elsewhere) == 1, texts
        assert "127.0.0.1 is not in its permit's server domain (10.0.0.5 10.0.0.6)" in (
            elsewhere[0]
        )
        # Out of its dates: not announced as served, but as not served and why.
        assert not any(text.startswith("serving Harlequin Old") for text in texts)
        assert any(
            text.startswith("not serving Harlequin Old") and "expired on 2027-01-01" in text
            for text in texts
        ), texts
        assert any(
            text.startswith("not serving Harlequin Future") and "not yet started" in text
            for text in texts
        ), texts
        # LispWorks, Quiet, Locked; Elsewhere, Old, Future and Shared (not verified).
        assert (server.serving_now, server.read_not_served) == (3, 4)
    finally:
        journal.close()


# -- server domains (DomainRuntime wired in; a fake one here) ---------------------------


def refusal_of(status: Status, msg: str, primary: int | None = None) -> Refusal:
    """A refusal of the domain of ME (rank 1) and PARTNER (rank 2), naming ``primary``."""
    members = (ME.address, PARTNER.address)
    address = None if primary is None else members[primary - 1]
    return Refusal(status, msg, members, primary=primary, primary_address=address)


class FakeRoute:
    """A `DomainRoute` stand-in: its own engine, a refusal to give, submissions held."""

    def __init__(self, clock: Clock, refusal: Refusal | None = None) -> None:
        counter = itertools.count(1)
        self.engine = Engine(clock, lambda: f"D{next(counter)}", today=utc_day)
        self.engine.load_products([product("Shared", floating_count=5)])
        self.refused = refusal
        self.submitted: list[tuple[Sequence[Any], Deferred[None]]] = []
        #: set to hold commands (as `DomainRoute.held` does during a hand-over to itself)
        self.waiting: list[Deferred[bool]] | None = None

    def refusal(self) -> Refusal | None:
        """The configured refusal (None: this member serves)."""
        return self.refused

    def serve(self) -> Refusal | None:
        """The configured refusal (None: this member serves; nothing to take over)."""
        return self.refused

    @property
    def sink(self) -> FakeRoute:
        """The route itself commits (`commit`), as the member does for a real route."""
        return self

    def held(self) -> Deferred[bool] | None:
        """A Deferred per held command when `waiting` is set, else None (refuse)."""
        if self.waiting is None:
            return None
        waiter: Deferred[bool] = Deferred()
        self.waiting.append(waiter)
        return waiter

    def domain_words(self) -> str:
        """The domain's addresses, as the runtime gives them."""
        return "127.0.0.1 127.0.0.2"

    def commit(self, events: Sequence[Any]) -> Deferred[None]:
        """Hold the commit; the test fires it, or fails it with a node's error, which
        comes out typed as a member's does (`commit_failure`, with the refusal then)."""
        done: Deferred[None] = Deferred()
        self.submitted.append((tuple(events), done))

        def typed(failure: Failure) -> None:
            addresses = (ME.address, PARTNER.address)
            raise commit_failure(failure.value, self.refused, addresses) from failure.value

        return done.addErrback(typed)


class FakeDomains:
    """A `DomainRuntime` stand-in: records `configure`, routes to one `FakeRoute`."""

    def __init__(self, route: FakeRoute) -> None:
        self.the_route = route
        self.configured: list[list[Any]] = []

    def configure(self, specs: Any) -> None:
        """Record the domain specs the server passes on."""
        self.configured.append(list(specs))

    def route(self, publisher: str, name: str) -> FakeRoute | None:
        """The route for the shared product only."""
        return self.the_route if (publisher, name) == ("Harlequin", "Shared") else None

    def route_for_handle(self, handle: str) -> FakeRoute | None:
        """The route if its engine knows the handle."""
        from hqnlsd.licensing.results import Denied

        answer = self.the_route.engine.query(handle, "period")
        unknown = isinstance(answer, Denied) and answer.status is Status.BADHANDLE
        return None if unknown else self.the_route


DomainRig = tuple[Rig, FakeRoute, FakeDomains]


@pytest.fixture
def domain_rig(tmp_path: Path) -> Iterator[DomainRig]:
    """The standard rig with a fake domain runtime serving SHARED."""
    made = make_rig(tmp_path / "state")
    route = FakeRoute(made.clock)
    domains = FakeDomains(route)
    made.server.domains = domains  # type: ignore[assignment]
    fired: list[object] = []
    made.server.load_permits().addBoth(fired.append)
    made.clock.advance(0)
    assert fired == [None]
    yield made, route, domains
    made.journal.close()


def test_domain_specs_come_from_the_catalogue(domain_rig: DomainRig) -> None:
    """load_permits tells the runtime its multi-host domains: SHARED, with both ranks."""
    rig, _, domains = domain_rig
    (specs,) = domains.configured
    assert [spec.domain_id for spec in specs] == ["127.0.0.1 0x1a2b3c4d,127.0.0.2 0x0badf00d"]
    assert [p.product for p in specs[0].products] == ["Shared"]
    assert dict(specs[0].ranks) == {ME.address: 1, PARTNER.address: 2}
    assert rig.engine.product("Harlequin", "Shared") is None


def test_domain_refusal_is_the_answer(domain_rig: DomainRig) -> None:
    """A member that may not grant answers its route's refusal and decides nothing."""
    rig, route, _ = domain_rig
    route.refused = refusal_of(Status.TRY_SERVER, "backup", primary=1)
    denied = err(rig.dispatch(request(product="Shared")), Status.TRY_SERVER)
    assert denied.get("n") == "1"
    assert route.engine.held_count() == 0 and route.submitted == []


def test_domain_grant_waits_for_the_quorum(domain_rig: DomainRig) -> None:
    """A grant is decided by the domain's engine, answered once replicated, never journalled."""
    rig, route, _ = domain_rig
    answer = rig.server.dispatch(request(product="Shared", client="tok"), PEER)
    assert isinstance(answer, Deferred)
    results: list[Any] = []
    answer.addBoth(results.append)
    rig.clock.advance(0)
    assert results == [], "answered before the domain confirmed the grant"
    ((events, done),) = route.submitted
    assert any(isinstance(event, Granted) for event in events)
    done.callback(None)
    (reply,) = results
    assert isinstance(reply, Ok) and reply.get("handle") == "D1", reply
    assert route.engine.held_count() == 1 and rig.engine.held_count() == 0
    assert reopened_holders(rig.state_dir, rig.journal) == set()


def test_domain_submission_failures(domain_rig: DomainRig) -> None:
    """NotServing answers the refusal (NEW_MASTER without one); OutcomeUnknown NEW_MASTER."""
    from hqnlsd.domain.node import NotServing, OutcomeUnknown
    from hqnlsd.domain.role import Role, RoleInfo

    rig, route, _ = domain_rig
    info = RoleInfo(rank=1, role=Role.TAKEOVER, primary=None, epoch=2, members=frozenset({1, 2}))
    outcomes: list[Any] = []
    for token in ("a", "b", "c"):
        answer = rig.server.dispatch(request(product="Shared", client=token), PEER)
        assert isinstance(answer, Deferred)
        answer.addBoth(outcomes.append)
    (_, first), (_, second), (_, third) = route.submitted
    first.errback(NotServing(info))
    route.refused = refusal_of(Status.LOSTMASTER, "lost")
    second.errback(NotServing(info))
    third.errback(OutcomeUnknown("primary changed"))
    assert [reply.status for reply in outcomes] == [
        Status.NEW_MASTER,
        Status.LOSTMASTER,
        Status.NEW_MASTER,
    ]
    assert "same client= token" in outcomes[2].msg
    assert outcomes[2].get("domain") == "127.0.0.1 127.0.0.2"


def test_domain_handles_are_routed(domain_rig: DomainRig) -> None:
    """UPDATE, QUERY and RELEASE of a domain's handle go to its engine; others to ours."""
    rig, route, _ = domain_rig
    answer = rig.server.dispatch(request(product="Shared"), PEER)
    assert isinstance(answer, Deferred)
    route.submitted.pop()[1].callback(None)
    own = rig.grant()
    assert own.get("handle") == "H1"
    update = rig.dispatch(grammar.Update("D1"))
    assert isinstance(update, Ok) and update.get("handle") == "D1", update
    query = rig.dispatch(grammar.Query("D1", grammar.QueryWhat("period")))
    assert isinstance(query, Ok) and query.get("handle") == "D1", query
    assert isinstance(rig.dispatch(grammar.Update("H1")), Ok)
    route.refused = refusal_of(Status.TRY_SERVER, "backup", primary=2)
    err(rig.dispatch(grammar.Release("D1")), Status.TRY_SERVER)
    route.refused = None
    # The RELEASE is answered once the domain confirms it (issue 10), not before.
    answer = rig.server.dispatch(grammar.Release("D1"), PEER)
    assert isinstance(answer, Deferred)
    events, done = route.submitted[-1]
    assert any(isinstance(e, Released) for e in events)
    done.callback(None)
    released = result_of(answer)
    assert isinstance(released, Ok), released
    assert route.engine.held_count() == 0 and rig.engine.held_count() == 1


def test_domain_commands_wait_out_a_hand_over_to_this_member(domain_rig: DomainRig) -> None:
    """While the primary hands over to itself (a compaction), REQUEST, UPDATE, RELEASE
    and USERS wait instead of being refused; they are decided in arrival order once it
    serves again, and answered with the refusal of that moment if the hand-over fails."""
    rig, route, _ = domain_rig
    granted = rig.server.dispatch(request(product="Shared", client="first"), PEER)
    assert isinstance(granted, Deferred)
    route.submitted.pop()[1].callback(None)
    route.refused = refusal_of(Status.NEW_MASTER, "taking over")
    route.waiting = []
    answers: list[list[Any]] = [[], [], [], []]
    for command, answered in zip(
        (
            request(product="Shared", client="second"),
            grammar.Update("D1"),
            grammar.Release("D1"),
            grammar.Users("Harlequin", "Shared", "8.0"),
        ),
        answers,
        strict=True,
    ):
        answer = rig.server.dispatch(command, PEER)
        assert isinstance(answer, Deferred), answer
        answer.addBoth(answered.append)
    assert len(route.waiting) == 4 and answers == [[], [], [], []] and route.submitted == []
    assert route.engine.held_count() == 1, "nothing is decided while held"
    route.refused = None
    for waiter in route.waiting:
        waiter.callback(True)
    # The REQUEST is decided first (D2), then the UPDATE and the RELEASE of D1.
    assert any(isinstance(e, Granted) for e in route.submitted[0][0])
    assert any(isinstance(e, Released) for e in route.submitted[-1][0])
    for _, done in route.submitted:
        done.callback(None)
    (request_reply,), (update_reply,), (release_reply,), (users_reply,) = answers
    assert isinstance(request_reply, Ok) and request_reply.get("handle") == "D2", request_reply
    assert isinstance(update_reply, Ok) and update_reply.get("handle") == "D1", update_reply
    assert isinstance(release_reply, Ok) and release_reply.get("handle") == "D1", release_reply
    assert isinstance(users_reply, Listing), users_reply
    # A hand-over that fails: the held command gets the refusal of that moment.
    route.refused = refusal_of(Status.NEW_MASTER, "taking over")
    route.waiting = []
    failed = rig.server.dispatch(request(product="Shared", client="third"), PEER)
    assert isinstance(failed, Deferred)
    (waiter,) = route.waiting
    route.refused = refusal_of(Status.TRY_SERVER, "backup", primary=2)
    route.waiting = None
    outcome: list[Any] = []
    failed.addBoth(outcome.append)
    waiter.callback(False)
    (refused,) = outcome
    assert isinstance(refused, Err) and refused.status is Status.TRY_SERVER, refused
    assert route.engine.held_count() == 1, "the failed hold decided nothing"
