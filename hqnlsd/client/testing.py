"""Fake licence servers for testing applications (and this library) without a daemon.

- `FakeLicenceServer` answers the client verbs from memory, like a one-product
  daemon: a number of licences, client tokens (a repeated REQUEST gets the same
  handle; the same token from another user, host or pid: TOKEN_HELD), UPDATE,
  RELEASE, USERS. Tests can queue canned replies (`then`: a redirect,
  ``NEW_MASTER``...), take a licence back (`revoke`) and give it a server key so
  that it signs replies to a challenge as a genuine daemon would.
  `FakeLicenceServer.listen` serves it over real TCP with the daemon's own
  protocol (`hqnlsd.protocols.client`).
- `FakeNetwork` is an in-memory network of such servers for `LicenceClient`'s
  ``connector``: no sockets, replies through the real wire format, time from the
  client's clock; servers can be taken down or made silent.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from hqnlsd.client.connection import Answer, Link
from hqnlsd.client.servers import ServerAddress
from hqnlsd.permits.servercert import ServerKey
from hqnlsd.protocols import client_side, grammar
from hqnlsd.protocols.client import ClientProtocolFactory
from hqnlsd.protocols.replies import Err, FieldValue, Listing, Ok, Reply, format_reply
from hqnlsd.protocols.signing import sign_reply
from hqnlsd.status import Status

#: Replaces a reply just before it is sent (to forge signatures in tests).
ReplyFilter = Callable[[grammar.DispatchedCommand, Reply], Reply]


@dataclasses.dataclass
class FakeHolder:
    """One licence held from a fake server."""

    handle: str
    token: str | None
    user: str
    host: str
    pid: int


class FakeLicenceServer:
    """A scriptable one-product licence server (see the module docstring)."""

    def __init__(
        self,
        *,
        publisher: str = "Harlequin",
        product: str = "LispWorks",
        version: str = "8.0",
        licences: int = 1,
        period: int = 300,
        data: tuple[int, ...] = (),
        server_key: ServerKey | None = None,
        name: str = "fake",
    ) -> None:
        self.product = (publisher, product, version)
        self.licences = licences
        self.period = period
        self.data = data
        self.server_key = server_key
        self.holders: dict[str, FakeHolder] = {}
        self.revoked: set[str] = set()
        #: Every command received, in order.
        self.received: list[grammar.DispatchedCommand] = []
        self.reply_filter: ReplyFilter | None = None
        self._canned: dict[str, collections.deque[Reply]] = collections.defaultdict(
            collections.deque
        )
        self._handles = (f"{name}-{n}" for n in itertools.count(1))

    def then(self, verb: str, *replies: Reply) -> None:
        """Answer the next ``verb`` commands with ``replies`` (in order), then as usual."""
        self._canned[verb].extend(replies)

    def revoke(self, handle: str) -> None:
        """Take a licence back: its next UPDATE gets LOSTLICENCE."""
        del self.holders[handle]
        self.revoked.add(handle)

    def verbs(self) -> list[str]:
        """The verbs received, in order."""
        return [command.verb for command in self.received]

    # -- the Dispatcher interface ------------------------------------------------------

    def dispatch(self, command: grammar.DispatchedCommand, peer: Any) -> Reply:
        """Answer one command (the daemon protocol's `Dispatcher` interface)."""
        self.received.append(command)
        canned = self._canned.get(command.verb)
        reply = canned.popleft() if canned else self._answer(command)
        reply = self._sign(command, reply)
        if self.reply_filter is not None:
            reply = self.reply_filter(command, reply)
        return reply

    def _sign(self, command: grammar.DispatchedCommand, reply: Reply) -> Reply:
        if isinstance(reply, Listing) or not isinstance(command, grammar.Request | grammar.Update):
            return reply
        own = command.handle if isinstance(command, grammar.Update) else ""
        handle = own or reply.get("handle") or ""
        return sign_reply(
            self.server_key,
            challenge=command.challenge,
            verb=command.verb,
            handle=handle,
            publisher=self.product[0],
            product=self.product[1],
            version=self.product[2],
            reply=reply,
        )

    def _answer(self, command: grammar.DispatchedCommand) -> Reply:
        if isinstance(command, grammar.Request):
            return self._request(command)
        if isinstance(command, grammar.Update):
            if command.handle in self.holders:
                return Ok.of(handle=command.handle, period=self.period)
            if command.handle in self.revoked:
                return Err.of(Status.LOSTLICENCE, "the licence was taken back; request again",
                              handle=command.handle)
            return Err.of(Status.BADHANDLE, "no such handle", handle=command.handle)
        if isinstance(command, grammar.Release):
            if self.holders.pop(command.handle, None) is None:
                return Err.of(Status.BADHANDLE, "no such handle", handle=command.handle)
            return Ok.of(handle=command.handle)
        if isinstance(command, grammar.Users):
            if (command.publisher, command.product, command.version) != self.product:
                return Err.of(Status.BADPRODUCT, "not served here")
            return Listing.of_records(
                {"user": h.user, "host": h.host, "pid": h.pid} for h in self.holders.values()
            )
        return Ok.of()

    def _request(self, command: grammar.Request) -> Reply:
        if (command.publisher, command.product, command.version) != self.product:
            return Err.of(Status.BADPRODUCT, "not served here")
        for holder in self.holders.values():
            if command.client is not None and holder.token == command.client:
                if (holder.user, holder.host, holder.pid) != (
                    command.user, command.host, command.pid
                ):
                    return Err.of(Status.TOKEN_HELD, f"client token {command.client} is "
                                  "held by another client")
                return self._grant(holder, duplicate=True)
        if len(self.holders) >= self.licences:
            return Err.of(Status.NOLICENCES, "all licences are in use")
        holder = FakeHolder(next(self._handles), command.client, command.user, command.host,
                            command.pid)
        self.holders[holder.handle] = holder
        return self._grant(holder, duplicate=False)

    def _grant(self, holder: FakeHolder, *, duplicate: bool) -> Ok:
        fields: dict[str, FieldValue] = {
            "handle": holder.handle,
            "period": self.period,
            "type": "floating",
            "access": 8,
            "data": " ".join(map(str, self.data)),
            "start": "01/01/2020",
            "expiry": "31/12/2099",
        }
        if duplicate:
            fields["duplicate"] = 1
        return Ok.of(**fields)

    # -- serving -----------------------------------------------------------------------

    def listen(self, reactor: Any, address: str = "127.0.0.1", port: int = 0) -> Any:
        """Serve over TCP on ``address:port`` (0: any free port); the listening port."""
        return reactor.listenTCP(port, ClientProtocolFactory(self, reactor), interface=address)


class FakeConnection:
    """A `Connection` to a fake server: through the real wire format, no sockets."""

    def __init__(self, network: FakeNetwork, server: ServerAddress, address: str) -> None:
        self.network = network
        self.server = server
        self.address = address
        self.open = True

    @property
    def peer_host(self) -> str:
        """The address connected to."""
        return self.address

    @property
    def is_open(self) -> bool:
        """True until closed or until the server goes down."""
        return self.open and self.server not in self.network.down

    def call(self, verb: str, /, **fields: FieldValue) -> Deferred[Answer]:
        """Send the request line, parse it as the daemon does, answer as the client reads."""
        clock = self.network.clock
        if not self.is_open:
            return _refused(self.server)
        if self.server in self.network.silent:
            waiting: Deferred[Answer] = Deferred()
            return waiting.addTimeout(self.network.timeout, clock)
        line = client_side.format_request(verb, **fields)
        command = grammar.parse_line(line.rstrip(b"\n"))
        assert command is not None
        if isinstance(command, grammar.Ping):
            reply: Reply = Ok.of("pong")
        else:
            assert not isinstance(command, grammar.Help | grammar.Quit)
            reply = self.network.servers[self.server].dispatch(command, None)
        text = format_reply(reply).decode("utf-8").split("\r\n")[:-1]
        if isinstance(reply, Listing):
            lines = [client_side.unstuff_listing_line(t) for t in text]
            return succeed([line for line in lines if line is not None])
        return succeed(client_side.parse_reply_line(text[0]))

    def close(self) -> None:
        """Close it."""
        self.open = False


def _refused(server: ServerAddress) -> Deferred[Any]:
    failed: Deferred[Any] = Deferred()
    failed.errback(Failure(ConnectionRefusedError(f"{server} is down")))
    return failed


class FakeNetwork:
    """Fake servers by address, and a ``connector`` for `LicenceClient` to reach them."""

    def __init__(self, clock: Any, timeout: float = 10.0) -> None:
        self.clock = clock
        self.timeout = timeout
        self.servers: dict[ServerAddress, FakeLicenceServer] = {}
        self.down: set[ServerAddress] = set()
        self.silent: set[ServerAddress] = set()
        #: Every connection made, in order (server addresses).
        self.connections: list[ServerAddress] = []

    def add(self, address: str, server: FakeLicenceServer, port: int = 1236) -> ServerAddress:
        """Put ``server`` at ``address:port``."""
        where = ServerAddress(address, port)
        self.servers[where] = server
        return where

    def connect(self, server: ServerAddress) -> Deferred[Link]:
        """The connector: a `FakeConnection`, or ConnectionRefusedError."""
        self.connections.append(server)
        if server not in self.servers or server in self.down:
            return _refused(server)
        return succeed(FakeConnection(self, server, server.host))
