"""The server search list and the reply-reading protocol of the client library.

The search list is pure (environment and hosts table are inputs). `ReplyProtocol`
runs on a `StringTransport` and a `task.Clock`: replies matched in order,
listings un-stuffed, garbage and timeouts end the connection.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from hqnlsd.client.connection import Connection, ReplyProtocol, describe_failure
from hqnlsd.client.errors import ProtocolError
from hqnlsd.client.servers import ServerAddress, parse_hqnservers, search_list
from hqnlsd.identity import HostsTable
from hqnlsd.protocols.replies import Err, Ok, format_reply
from hqnlsd.status import Status

HOSTS = HostsTable.from_text(
    "127.0.0.1 localhost\n10.0.0.2 beta hqnserver2\n10.0.0.1 alpha hqnserver1\n"
)


def test_explicit_list_wins() -> None:
    """Explicit servers are used as given (HOST or HOST:PORT), duplicates dropped."""
    found = search_list(["a", "b:1300", "a"], environ={"HQNSERVERS": "x"}, hosts=HOSTS)
    assert found == [ServerAddress("a"), ServerAddress("b", 1300)]


def test_hqnservers_blank_or_colon_list_with_ports() -> None:
    """HQNSERVERS splits on blanks and colons; a number after a colon is a port."""
    assert parse_hqnservers("a:b  c") == [ServerAddress("a"), ServerAddress("b"),
                                         ServerAddress("c")]
    assert parse_hqnservers("127.0.0.1:1237 hqnserver2:c", 9) == [
        ServerAddress("127.0.0.1", 1237), ServerAddress("hqnserver2", 9), ServerAddress("c", 9)]
    found = search_list(None, environ={"HQNSERVERS": " s1:s2 "}, hosts=HOSTS)
    assert [s.host for s in found] == ["s1", "s2"]


def test_default_is_local_host_then_ranks() -> None:
    """Without configuration: 127.0.0.1, then hqnserver1, hqnserver2 in rank order."""
    found = search_list(None, environ={}, hosts=HOSTS, port=1400)
    assert found == [ServerAddress("127.0.0.1", 1400), ServerAddress("10.0.0.1", 1400),
                     ServerAddress("10.0.0.2", 1400)]
    assert search_list(None, environ={}, hosts=None) == [ServerAddress("127.0.0.1")]


def test_bad_entries_are_refused() -> None:
    """A host with blanks or a bad port is a ValueError, not a silent skip."""
    with pytest.raises(ValueError):
        ServerAddress.parse("a:b")
    with pytest.raises(ValueError):
        ServerAddress("a b")
    with pytest.raises(ValueError):
        ServerAddress("a", 70000)


def connected(clock: Clock | None = None) -> tuple[ReplyProtocol, StringTransport, Connection]:
    """A protocol on a string transport, wrapped in a Connection with a 5 s timeout."""
    protocol = ReplyProtocol()
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.7", 1236))
    protocol.makeConnection(transport)
    return protocol, transport, Connection(protocol, ServerAddress("h"), clock or Clock(), 5.0)


def fired(deferred: defer.Deferred[Any]) -> Any:
    """What a fired Deferred holds (a Failure for an error)."""
    out: list[Any] = []
    deferred.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def test_replies_match_requests_in_order() -> None:
    """Pipelined requests get their own replies, in order; the peer address is known."""
    protocol, transport, connection = connected()
    first = connection.call("UPDATE", handle="H1")
    second = connection.call("RELEASE", handle="H1")
    assert transport.value() == b"UPDATE handle=H1\nRELEASE handle=H1\n"
    protocol.dataReceived(b"OK handle=H1 period=300\r\n")
    protocol.dataReceived(format_reply(Err.of(Status.BADHANDLE, "gone", handle="H1")))
    assert fired(first) == Ok.of(handle="H1", period="300")
    answer = fired(second)
    assert isinstance(answer, Err) and answer.status is Status.BADHANDLE
    assert connection.peer_host == "127.0.0.7"


def test_listing_is_unstuffed() -> None:
    """A USERS listing ends at '.', with stuffed lines restored; an empty listing is []."""
    protocol, _, connection = connected()
    users = connection.call("USERS", publisher="p", product="q", version="1")
    empty = connection.call("USERS", publisher="p", product="q", version="1")
    protocol.dataReceived(b"user=a pid=1\r\n..dots\r\n.OK odd\r\n.\r\n.\r\n")
    assert fired(users) == ["user=a pid=1", ".dots", "OK odd"]
    assert fired(empty) == []


def test_garbage_ends_the_connection() -> None:
    """A line that is not a reply fails the call with ProtocolError and aborts."""
    protocol, transport, connection = connected()
    waiting = connection.call("UPDATE", handle="H1")
    protocol.dataReceived(b"SSH-2.0-OpenSSH\r\n")
    failure = fired(waiting)
    assert failure.check(ProtocolError)
    assert transport.disconnecting or transport.disconnected


def test_timeout_aborts_and_lost_connection_fails_the_rest() -> None:
    """No reply in time: that call times out; the connection is aborted; others fail."""
    clock = Clock()
    protocol, transport, connection = connected(clock)
    first = connection.call("UPDATE", handle="H1")
    clock.advance(1)
    second = connection.call("UPDATE", handle="H2")
    clock.advance(4)
    assert fired(first).check(defer.TimeoutError)
    assert transport.disconnecting or transport.disconnected
    protocol.connectionLost(Failure(ConnectionLost()))
    assert fired(second).check(ConnectionLost)
    assert not connection.is_open and protocol.lost.called
    assert fired(connection.call("PING")).check(Exception)
    assert describe_failure(defer.TimeoutError()) == "no answer in time"
