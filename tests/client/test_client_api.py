"""The Twisted client API against fake servers on an in-memory network, on a `task.Clock`.

`FakeNetwork` carries every request through the real wire format (format, parse
as the daemon does, answer, parse as the client does) without sockets, so the
search, redirects, backoff, heartbeats, recovery and challenge/response are
driven deterministically by advancing the clock.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from hqnlsd.client.api import HeldLicence, LicenceClient, Process, Retry
from hqnlsd.client.errors import LicenceDenied, NoServer, NotGenuineServer
from hqnlsd.client.servers import ServerAddress
from hqnlsd.client.testing import FakeLicenceServer, FakeNetwork
from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.seal import PublisherKey, TrustedKeys
from hqnlsd.permits.servercert import make_server_key
from hqnlsd.protocols import grammar
from hqnlsd.protocols.replies import Err, Ok, Reply
from hqnlsd.status import Status

T = TypeVar("T")
PRODUCT = ("Harlequin", "LispWorks", "8.0")
ME = Process(user="jo", host="box", pid=4242)
RETRY = Retry(attempts=3, first_delay=1.0, factor=2.0, recover_interval=30.0)


def result_of(deferred: Deferred[T]) -> T:
    """The result of a Deferred that has fired (its exception re-raised)."""
    out: list[Any] = []
    deferred.addBoth(out.append)
    assert out, "the Deferred has not fired"
    value = out[0]
    if hasattr(value, "raiseException"):
        value.raiseException()
    result: T = value
    return result


class World:
    """A clock, a fake network and helpers to build clients on it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock, timeout=10.0)

    def server(self, address: str, **options: Any) -> FakeLicenceServer:
        """A fake server at ``address``:1236."""
        fake = FakeLicenceServer(name=address.rsplit(".", 1)[-1], **options)
        self.net.add(address, fake)
        return fake

    def client(self, servers: list[str], **options: Any) -> LicenceClient:
        """A client of the fake network asking ``servers`` in order."""
        options.setdefault("retry", RETRY)
        return LicenceClient(self.clock, servers=servers, connector=self.net.connect,
                             process=ME, timeout=10.0, **options)


@pytest.fixture
def world() -> World:
    """A fresh fake world."""
    return World()


def take(client: LicenceClient, **options: Any) -> Deferred[HeldLicence]:
    """Request the standard product."""
    return client.request(*PRODUCT, **options)


def test_grant_sends_process_and_token(world: World) -> None:
    """REQUEST names the product, the process and a random client token; the grant is kept."""
    fake = world.server("127.0.0.1", data=(1, 2, 3), period=120)
    licence = result_of(take(world.client(["127.0.0.1"])))
    request = fake.received[0]
    assert isinstance(request, grammar.Request)
    assert (request.publisher, request.product, request.version) == PRODUCT
    assert (request.user, request.host, request.pid) == ("jo", "box", 4242)
    assert request.client == licence.token and len(licence.token) == 24
    assert request.challenge is None
    assert licence.held and licence.handle == "1-1" and licence.data == (1, 2, 3)
    assert licence.period == 120.0 and licence.server == ServerAddress("127.0.0.1")


def test_tokens_differ_per_licence(world: World) -> None:
    """Two licence objects of one client send different tokens (two licences, not one)."""
    world.server("127.0.0.1", licences=2)
    client = world.client(["127.0.0.1"])
    first = result_of(take(client))
    second = result_of(take(client))
    assert first.token != second.token and first.handle != second.handle


def test_try_server_is_followed(world: World) -> None:
    """``TRY_SERVER addr=A`` sends the client to A (on the redirecting server's port)."""
    backup = world.server("127.0.0.1")
    primary = world.server("127.0.0.2")
    backup.then("REQUEST", Err.of(Status.TRY_SERVER, "ask the primary", n=2, addr="127.0.0.2",
                                  domain="127.0.0.1 127.0.0.2"))
    licence = result_of(take(world.client(["127.0.0.1"])))
    assert licence.server == ServerAddress("127.0.0.2")
    assert primary.verbs() == ["REQUEST"] and backup.verbs() == ["REQUEST"]


def test_try_domain_is_followed_in_order(world: World) -> None:
    """``TRY_DOMAIN domain="a1 a2"`` makes the client try a1, then a2."""
    other = world.server("127.0.0.1")
    world.net.down.add(ServerAddress("127.0.0.5"))
    member = world.server("127.0.0.6")
    other.then("REQUEST", Err.of(Status.TRY_DOMAIN, "another domain", domain="127.0.0.5 127.0.0.6"))
    licence = result_of(take(world.client(["127.0.0.1"])))
    assert licence.server == ServerAddress("127.0.0.6")
    assert world.net.connections == [ServerAddress("127.0.0.1"), ServerAddress("127.0.0.5"),
                                     ServerAddress("127.0.0.6")]
    assert member.verbs() == ["REQUEST"]


def test_new_master_is_retried_with_backoff(world: World) -> None:
    """NEW_MASTER / LOSTMASTER are retried on the same server after 1 s, then 2 s."""
    fake = world.server("127.0.0.1")
    fake.then("REQUEST", Err.of(Status.NEW_MASTER, "electing"), Err.of(Status.LOSTMASTER, "lost"))
    taking = take(world.client(["127.0.0.1"]))
    assert fake.verbs() == ["REQUEST"] and not taking.called
    world.clock.advance(0.99)
    assert fake.verbs() == ["REQUEST"]
    world.clock.advance(0.01)
    assert fake.verbs() == ["REQUEST", "REQUEST"]
    world.clock.advance(1.99)
    assert not taking.called
    world.clock.advance(0.01)
    assert result_of(taking).held
    assert fake.verbs() == ["REQUEST"] * 3


def test_notverified_is_bounded_then_next_server(world: World) -> None:
    """A server that stays NOTVERIFIED is left after ``attempts`` tries for the next one."""
    starting = world.server("127.0.0.1")
    ready = world.server("127.0.0.2")
    starting.then("REQUEST", *[Err.of(Status.NOTVERIFIED, "not yet")] * 5)
    taking = take(world.client(["127.0.0.1", "127.0.0.2"]))
    world.clock.advance(1.0)
    world.clock.advance(2.0)
    licence = result_of(taking)
    assert starting.verbs() == ["REQUEST"] * 3 and ready.verbs() == ["REQUEST"]
    assert licence.server == ServerAddress("127.0.0.2")


def test_down_and_silent_servers_are_skipped(world: World) -> None:
    """A refused connection is skipped at once, a silent server after the timeout."""
    world.net.down.add(ServerAddress("127.0.0.1"))
    world.server("127.0.0.2")
    world.net.silent.add(ServerAddress("127.0.0.2"))
    good = world.server("127.0.0.3")
    taking = take(world.client(["127.0.0.1", "127.0.0.2", "127.0.0.3"]))
    assert not taking.called
    world.clock.advance(10.0)
    assert result_of(taking).server == ServerAddress("127.0.0.3")
    assert good.verbs() == ["REQUEST"]


def test_final_denial_is_not_retried(world: World) -> None:
    """NOLICENCES is the answer: LicenceDenied, and no other server is asked."""
    world.server("127.0.0.1", licences=0)
    spare = world.server("127.0.0.2")
    with pytest.raises(LicenceDenied) as caught:
        result_of(take(world.client(["127.0.0.1", "127.0.0.2"])))
    assert caught.value.status is Status.NOLICENCES
    assert "127.0.0.1:1236" in str(caught.value)
    assert spare.verbs() == []


def test_no_server_lists_every_reason(world: World) -> None:
    """Nothing reachable: NoServer with one reason per server."""
    with pytest.raises(NoServer) as caught:
        result_of(take(world.client(["127.0.0.1", "127.0.0.2"])))
    assert len(caught.value.reasons) == 2
    assert "127.0.0.2:1236: connection refused" in str(caught.value)


def test_redirect_loop_is_bounded(world: World) -> None:
    """Two servers redirecting to each other forever: NoServer after max_redirects."""
    a = world.server("127.0.0.1")
    b = world.server("127.0.0.2")
    a.then("REQUEST", *[Err.of(Status.TRY_SERVER, "b", n=2, addr="127.0.0.2")] * 20)
    b.then("REQUEST", *[Err.of(Status.TRY_SERVER, "a", n=1, addr="127.0.0.1")] * 20)
    with pytest.raises(NoServer, match="more than 8 redirects"):
        result_of(take(world.client(["127.0.0.1"])))
    assert len(a.received) + len(b.received) == 9


def test_heartbeat_updates_a_bit_early(world: World) -> None:
    """UPDATE goes out at 80% of the period, again and again, on the held connection."""
    fake = world.server("127.0.0.1", period=100)
    licence = result_of(take(world.client(["127.0.0.1"])))
    world.clock.advance(79.9)
    assert fake.verbs() == ["REQUEST"]
    world.clock.advance(0.1)
    assert fake.verbs() == ["REQUEST", "UPDATE"]
    world.clock.advance(80)
    assert fake.verbs() == ["REQUEST", "UPDATE", "UPDATE"]
    update = fake.received[-1]
    assert isinstance(update, grammar.Update) and update.handle == licence.handle
    assert world.net.connections == [ServerAddress("127.0.0.1")]


def test_lostlicence_calls_back_and_rerequests_with_same_token(world: World) -> None:
    """LOSTLICENCE: on_lost, a new REQUEST with the same token, then on_regained."""
    fake = world.server("127.0.0.1", period=100)
    events: list[str] = []
    licence = result_of(take(
        world.client(["127.0.0.1"]),
        on_lost=lambda held, reason: events.append(f"lost {held.handle}: {reason}"),
        on_regained=lambda held: events.append(f"regained {held.handle}"),
    ))
    fake.revoke(licence.handle)
    world.clock.advance(80)
    assert events == ['lost 1-1: LOSTLICENCE: the licence was taken back; request again',
                      "regained 1-2"]
    requests = [c for c in fake.received if isinstance(c, grammar.Request)]
    assert [r.client for r in requests] == [licence.token, licence.token]
    assert licence.held and licence.handle == "1-2"


def test_failover_keeps_the_licence_silently(world: World) -> None:
    """The primary dies; the backup (with the replicated licence) gives the same handle back.

    The licence is never reported lost: the re-request with the same token is
    answered with the same handle (``duplicate=1``).
    """
    primary = world.server("127.0.0.1", period=100)
    backup = world.server("127.0.0.2", period=100)
    backup.holders = primary.holders  # the domain replicates grants
    events: list[str] = []
    licence = result_of(take(world.client(["127.0.0.1", "127.0.0.2"]),
                             on_lost=lambda *a: events.append("lost"),
                             on_regained=lambda *a: events.append("regained")))
    handle = licence.handle
    world.net.down.add(ServerAddress("127.0.0.1"))
    world.clock.advance(80)
    assert events == [] and licence.held
    assert licence.handle == handle and licence.server == ServerAddress("127.0.0.2")
    assert backup.verbs() == ["REQUEST"]
    assert len(primary.holders) == 1  # still one licence, not two
    world.clock.advance(80)
    assert backup.verbs() == ["REQUEST", "UPDATE"]


def test_lost_contact_retries_until_back(world: World) -> None:
    """No server reachable: on_lost once, a retry every recover_interval, on_regained."""
    fake = world.server("127.0.0.1", period=100)
    events: list[str] = []
    licence = result_of(take(world.client(["127.0.0.1"]),
                             on_lost=lambda held, reason: events.append(reason),
                             on_regained=lambda held: events.append("regained")))
    world.net.down.add(ServerAddress("127.0.0.1"))
    world.clock.advance(80)
    assert licence.state == "lost" and len(events) == 1
    assert "lost contact with 127.0.0.1:1236" in events[0]
    world.clock.advance(30)
    assert len(events) == 1 and licence.state == "lost"
    world.net.down.clear()
    world.clock.advance(30)
    assert events[1:] == ["regained"] and licence.held
    assert licence.handle == "1-1"  # the server still had it: same token, same handle
    assert len(fake.holders) == 1


def test_release_stops_the_heartbeat(world: World) -> None:
    """release() sends RELEASE once; no UPDATE follows; a second release does nothing."""
    fake = world.server("127.0.0.1", period=100)
    licence = result_of(take(world.client(["127.0.0.1"])))
    result_of(licence.release())
    result_of(licence.release())
    world.clock.advance(1000)
    assert fake.verbs() == ["REQUEST", "RELEASE"] and fake.holders == {}
    assert licence.state == "released"


def test_async_with_releases(world: World) -> None:
    """Leaving ``async with`` releases the licence, also when the body raises."""
    fake = world.server("127.0.0.1")
    client = world.client(["127.0.0.1"])

    async def body() -> None:
        async with await take(client) as licence:
            assert licence.held
            raise KeyError("application failure")

    with pytest.raises(KeyError):
        result_of(ensureDeferred(body()))
    assert fake.verbs() == ["REQUEST", "RELEASE"] and fake.holders == {}


def test_users_and_ping_and_release_handle(world: World) -> None:
    """USERS parses the listing; PING reports each server; release_handle finds the licence."""
    fake = world.server("127.0.0.1", licences=2)
    client = world.client(["127.0.0.1", "127.0.0.9"])
    licence = result_of(take(client))
    users = result_of(client.users(*PRODUCT))
    assert users == [{"user": "jo", "host": "box", "pid": "4242"}]
    pings = result_of(client.ping())
    assert [(str(p.server), p.reply is not None) for p in pings] == [
        ("127.0.0.1:1236", True), ("127.0.0.9:1236", False)]
    assert pings[0].reply == Ok.of("pong") and "refused" in pings[1].problem
    reply = result_of(client.release_handle(licence.handle))
    assert reply.get("handle") == licence.handle and fake.holders == {}
    with pytest.raises(LicenceDenied, match="BADHANDLE"):
        result_of(client.release_handle(licence.handle))


# -- challenge/response -------------------------------------------------------------------

DOMAIN = (
    HostId(ipaddress.IPv4Address("127.0.0.1"), 1),
    HostId(ipaddress.IPv4Address("127.0.0.2"), 2),
)


def _permit() -> Permit:
    product = ProductPermit("Harlequin", "LispWorks", "8.0", 0x41, 0, 5,
                            datetime.date(2026, 1, 1), datetime.date(2030, 12, 31), 5)
    return Permit(number=3, servers=DOMAIN, products=(product,))


@pytest.fixture(scope="module")
def publisher() -> PublisherKey:
    """The publisher whose .pub the application carries."""
    return PublisherKey.generate()


def replaying(recorded: list[Reply]) -> Callable[[grammar.DispatchedCommand, Reply], Reply]:
    """A reply filter that answers with the first genuine reply it was given (a replay)."""

    def replay(command: grammar.DispatchedCommand, reply: Reply) -> Reply:
        return recorded[0] if recorded else reply

    return replay


def test_genuine_server_is_accepted(world: World, publisher: PublisherKey) -> None:
    """A server with the certified key signs REQUEST and UPDATE replies; they verify."""
    key = make_server_key(publisher, _permit())
    fake = world.server("127.0.0.1", server_key=key, period=100)
    client = world.client(["127.0.0.1"], trusted=TrustedKeys.of(publisher.public_key))
    licence = result_of(take(client))
    world.clock.advance(80)
    challenges = [getattr(c, "challenge", None) for c in fake.received]
    assert all(c is not None and len(c) == 16 for c in challenges)
    assert challenges[0] != challenges[1]
    assert licence.held and fake.verbs() == ["REQUEST", "UPDATE"]


def test_fake_server_without_key_is_detected(world: World, publisher: PublisherKey) -> None:
    """A server that cannot sign grants nothing the client accepts: NotGenuineServer."""
    impostor = world.server("127.0.0.1")
    client = world.client(["127.0.0.1"], trusted=TrustedKeys.of(publisher.public_key))
    with pytest.raises(NotGenuineServer, match="did not sign its reply"):
        result_of(take(client))
    assert impostor.verbs() == ["REQUEST", "RELEASE"]  # whatever it granted, given back


def test_fake_server_with_wrong_key_is_detected(world: World, publisher: PublisherKey) -> None:
    """A key certified by another publisher, or for a domain without this address: refused."""
    world.server("127.0.0.1", server_key=make_server_key(PublisherKey.generate(), _permit()))
    world.server("127.0.0.3", server_key=make_server_key(publisher, _permit()))
    client = world.client(["127.0.0.1", "127.0.0.3"], trusted=TrustedKeys.of(publisher.public_key))
    with pytest.raises(NotGenuineServer) as caught:
        result_of(take(client))
    text = str(caught.value)
    assert "127.0.0.1:1236: NOT GENUINE" in text and "not a trusted publisher key" in text
    assert "127.0.0.3:1236: NOT GENUINE" in text and "not in the certified server domain" in text


def test_replayed_reply_is_detected_and_genuine_server_used(
    world: World, publisher: PublisherKey
) -> None:
    """An impostor replaying a genuine signed grant is skipped; the genuine server answers."""
    key = make_server_key(publisher, _permit())
    genuine = world.server("127.0.0.2", server_key=key, licences=2)
    # A grant the genuine server signed for someone else's challenge, recorded.
    recorded: list[Reply] = [genuine.dispatch(
        grammar.Request(*PRODUCT, user="x", host="y", pid=1, client="other",
                     challenge=b"\x01" * 16), None)]
    assert isinstance(recorded[0], Ok) and recorded[0].get("signature")
    impostor = world.server("127.0.0.1")
    impostor.reply_filter = replaying(recorded)
    client = world.client(["127.0.0.1", "127.0.0.2"], trusted=TrustedKeys.of(publisher.public_key))
    licence = result_of(take(client))
    assert licence.server == ServerAddress("127.0.0.2")
    # The replayed handle is released at the impostor only: never at the genuine
    # server, where it names another process's licence.
    assert impostor.verbs() == ["REQUEST", "RELEASE"]
    assert genuine.verbs() == ["REQUEST", "REQUEST"]
    assert recorded[0].get("handle") in genuine.holders


def test_server_turning_fake_during_updates(world: World, publisher: PublisherKey) -> None:
    """An UPDATE answered without a valid signature counts as lost contact: re-request."""
    key = make_server_key(publisher, _permit())
    first = world.server("127.0.0.1", server_key=key, period=100)
    second = world.server("127.0.0.2", server_key=key, period=100)
    events: list[str] = []
    client = world.client(["127.0.0.1", "127.0.0.2"], trusted=TrustedKeys.of(publisher.public_key))
    licence = result_of(take(client, on_lost=lambda h, r: events.append(r)))
    first.server_key = None  # the daemon at .1 is replaced by one without the key
    world.clock.advance(80)
    assert licence.server == ServerAddress("127.0.0.2") and licence.held
    assert second.verbs() == ["REQUEST"] and events == []


def test_update_redirect_goes_to_the_new_primary(world: World) -> None:
    """An UPDATE answered TRY_SERVER (the server became a backup): ask the primary first."""
    old = world.server("127.0.0.1", period=100)
    new = world.server("127.0.0.2", period=100)
    new.holders = old.holders  # replicated
    licence = result_of(take(world.client(["127.0.0.3", "127.0.0.1"])))
    old.then("UPDATE", Err.of(Status.TRY_SERVER, "I am a backup now", n=2, addr="127.0.0.2"))
    world.clock.advance(80)
    assert licence.server == ServerAddress("127.0.0.2") and licence.held
    assert new.verbs() == ["REQUEST"]
    assert world.net.connections[-1] == ServerAddress("127.0.0.2")


def test_reactor_shutdown_releases_everything() -> None:
    """A Twisted program that stops its reactor gives its licences back (before shutdown)."""
    reactor = MemoryReactorClock()
    net = FakeNetwork(reactor)
    fake = FakeLicenceServer(licences=2)
    net.add("127.0.0.1", fake)
    client = LicenceClient(reactor, servers=["127.0.0.1"], connector=net.connect, process=ME)
    first = result_of(take(client))
    second = result_of(take(client))
    result_of(first.release())
    assert client.held == {second}
    before = reactor.triggers["before"]["shutdown"]
    assert len(before) == 1
    trigger, args, kwargs = before[0]
    result_of(trigger(*args, **kwargs))
    assert fake.holders == {} and second.state == "released" and client.held == set()


def test_a_server_that_stops_answering_is_asked_last(world: World) -> None:
    """The licence's server goes silent (a dead host): after the UPDATE's timeout the
    re-request goes to the other servers first, so one timeout is paid, not two."""
    primary = world.server("127.0.0.1", period=100)
    backup = world.server("127.0.0.2", period=100)
    backup.holders = primary.holders  # the domain replicates grants
    licence = result_of(take(world.client(["127.0.0.1", "127.0.0.2"])))
    handle = licence.handle
    world.net.silent.add(ServerAddress("127.0.0.1"))
    before = len(world.net.connections)
    world.clock.advance(80)  # the UPDATE goes out, and is not answered
    assert licence.server == ServerAddress("127.0.0.1")
    world.clock.advance(10)  # its timeout: the backup is asked at once
    assert licence.server == ServerAddress("127.0.0.2") and licence.handle == handle
    assert world.net.connections[before:] == [ServerAddress("127.0.0.2")]
    assert licence.held and backup.verbs() == ["REQUEST"]


# -- RELEASE until confirmed (issue 10) -----------------------------------------------------


def _first_release_unconfirmed(fake: FakeLicenceServer) -> None:
    """The fake applies the first RELEASE but answers NEW_MASTER: the outcome a
    primary gives when it lost its quorum before confirming (the release may stand)."""
    seen: list[bool] = []

    def unconfirmed(command: grammar.DispatchedCommand, reply: Reply) -> Reply:
        if isinstance(command, grammar.Release) and not seen:
            seen.append(True)
            return Err.of(Status.NEW_MASTER, "not confirmed before a change of primary; "
                          "send it again")
        return reply

    fake.reply_filter = unconfirmed


def test_release_refused_with_new_master_is_sent_again(world: World) -> None:
    """A RELEASE answered NEW_MASTER (nothing happened) is sent again until confirmed.

    Failed before issue 10: the client logged the refusal and gave up, so the
    licence stayed held at the server (for ever under a policy without GRAB).
    """
    fake = world.server("127.0.0.1")
    licence = result_of(take(world.client(["127.0.0.1"])))
    fake.then("RELEASE", Err.of(Status.NEW_MASTER, "a new primary is taking over"))
    done = licence.release()
    world.clock.advance(RETRY.first_delay)
    result_of(done)
    assert fake.verbs() == ["REQUEST", "RELEASE", "RELEASE"]
    assert fake.holders == {} and licence.state == "released"


def test_release_that_took_effect_unconfirmed_ends_at_badhandle(world: World) -> None:
    """NEW_MASTER, then BADHANDLE to the RELEASE sent again: released, nothing to warn of.

    Failed before issue 10 (one RELEASE, a warning, no retry).
    """
    from twisted.logger import LogLevel, capturedLogs

    fake = world.server("127.0.0.1")
    licence = result_of(take(world.client(["127.0.0.1"])))
    _first_release_unconfirmed(fake)
    with capturedLogs() as events:
        done = licence.release()
        world.clock.advance(RETRY.first_delay)
        result_of(done)
    assert fake.verbs() == ["REQUEST", "RELEASE", "RELEASE"] and fake.holders == {}
    assert [e for e in events if e["log_level"] >= LogLevel.warn] == []
    assert any("handle was gone" in (e.get("gone") or "") for e in events)


def test_release_handle_after_an_unknown_outcome_is_released(world: World) -> None:
    """``hqnls release``: NEW_MASTER then BADHANDLE means released (OK gone=1), while a
    first BADHANDLE is still refused (nothing to release).

    Failed before issue 10: LicenceDenied BADHANDLE for a licence it had released.
    """
    fake = world.server("127.0.0.1")
    client = world.client(["127.0.0.1"])
    licence = result_of(take(client))
    _first_release_unconfirmed(fake)
    done = client.release_handle(licence.handle)
    world.clock.advance(RETRY.first_delay)
    reply = result_of(done)
    assert reply.get("handle") == licence.handle and reply.get("gone") == "1"
    assert fake.holders == {}
    with pytest.raises(LicenceDenied, match="BADHANDLE"):
        result_of(client.release_handle(licence.handle))


def test_release_at_a_silent_primary_goes_to_the_others(world: World) -> None:
    """The licence's server stops answering during the RELEASE (a cut-off primary):
    the RELEASE goes to the other servers (a new primary) and is confirmed there.

    Failed before issue 10: the client gave up after the timeout.
    """
    primary = world.server("127.0.0.1")
    backup = world.server("127.0.0.2")
    backup.holders = primary.holders  # the domain replicates grants
    licence = result_of(take(world.client(["127.0.0.1", "127.0.0.2"])))
    world.net.silent.add(ServerAddress("127.0.0.1"))
    done = licence.release()
    world.clock.advance(10)  # the RELEASE's timeout
    result_of(done)
    assert backup.verbs() == ["RELEASE"] and backup.holders == {}


# -- a refused server's licence is given back (issue 12) --------------------------------------


def test_refused_server_gets_its_licence_back(world: World, publisher: PublisherKey) -> None:
    """A careful client refusing a server (its grant did not verify) RELEASEs that grant
    there, so a one-licence product is not blocked until crashout.

    Failed before issue 12: NotGenuineServer, the licence stayed held at the server and
    the next client got NOLICENCES.
    """
    fake = world.server("127.0.0.1", licences=1)  # no server key: cannot sign
    careful = world.client(["127.0.0.1"], trusted=TrustedKeys.of(publisher.public_key))
    with pytest.raises(NotGenuineServer, match="did not sign its reply"):
        result_of(take(careful))
    assert fake.verbs() == ["REQUEST", "RELEASE"] and fake.holders == {}
    other = result_of(take(world.client(["127.0.0.1"])))
    assert other.held and list(fake.holders) == [other.handle]


def test_refused_server_release_is_retried_there_only(
    world: World, publisher: PublisherKey
) -> None:
    """The RELEASE of a refused grant goes to the refused server only (an impostor's
    handle may name someone else's licence at a genuine server), retried there while
    it answers NEW_MASTER; the genuine server is then asked and grants."""
    key = make_server_key(publisher, _permit())
    impostor = world.server("127.0.0.1", licences=1)
    genuine = world.server("127.0.0.2", server_key=key, licences=1)
    impostor.then("RELEASE", Err.of(Status.NEW_MASTER, "a new primary is taking over"))
    client = world.client(["127.0.0.1", "127.0.0.2"], trusted=TrustedKeys.of(publisher.public_key))
    taking = take(client)
    world.clock.advance(RETRY.first_delay)
    licence = result_of(taking)
    assert impostor.verbs() == ["REQUEST", "RELEASE", "RELEASE"] and impostor.holders == {}
    assert genuine.verbs() == ["REQUEST"]
    assert licence.server == ServerAddress("127.0.0.2") and licence.held


def test_unanswered_release_of_a_refused_grant_is_not_fatal(
    world: World, publisher: PublisherKey
) -> None:
    """A refused server that grants and then goes silent: the RELEASE times out, the
    search still ends with NotGenuineServer (the server frees it at crashout)."""
    fake = world.server("127.0.0.1", licences=1)

    def silence_after_grant(command: grammar.DispatchedCommand, reply: Reply) -> Reply:
        world.net.silent.add(ServerAddress("127.0.0.1"))
        return reply

    fake.reply_filter = silence_after_grant
    client = world.client(["127.0.0.1"], trusted=TrustedKeys.of(publisher.public_key))
    taking = take(client)
    world.clock.advance(10)
    with pytest.raises(NotGenuineServer):
        result_of(taking)
    assert fake.verbs() == ["REQUEST"]
