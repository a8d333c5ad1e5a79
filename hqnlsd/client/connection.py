"""One client connection to a licence server: request lines out, replies in, in order.

`ReplyProtocol` writes request lines (`client_side.format_request`) and matches each
reply to its request in order (the server answers in request order, so requests
may be pipelined). A reply is one ``OK``/``ERR`` line, or for a listing verb
(``USERS``, ``HELP``) lines up to a line holding ``.``.

Every call has a timeout. A request that times out aborts the connection: a late
reply could otherwise be taken as the answer to the next request.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Protocol

from twisted.internet import defer, endpoints, error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from hqnlsd.client.errors import ProtocolError
from hqnlsd.client.servers import ServerAddress
from hqnlsd.protocols import client_side
from hqnlsd.protocols.client_side import ReplyParseError
from hqnlsd.protocols.replies import Err, FieldValue, Ok

#: The longest reply line accepted (replies with a server certificate are long).
MAX_REPLY_LINE = 65536
#: The verbs whose answer may be a listing.
LISTING_VERBS = frozenset({"USERS", "HELP"})

#: What a call answers: a one-line reply, or the lines of a listing.
Answer = Ok | Err | list[str]


@dataclasses.dataclass
class _Pending:
    deferred: Deferred[Answer]
    listing_allowed: bool
    lines: list[str] | None = None


class ReplyProtocol(LineOnlyReceiver):
    """The client side of the text protocol, for one connection."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE

    def __init__(self) -> None:
        self._pending: collections.deque[_Pending] = collections.deque()
        self._closed_reason: Failure | None = None
        #: Fires (with None) when the connection is gone, however it ended.
        self.lost: Deferred[None] = Deferred()

    @property
    def is_open(self) -> bool:
        """True while the connection is up."""
        return bool(self.connected) and self._closed_reason is None

    def send(self, verb: str, /, **fields: FieldValue) -> Deferred[Answer]:
        """Send one request; the Deferred fires with its reply (or fails).

        Cancelling it (``addTimeout`` does) aborts the connection.
        """
        if not self.is_open:
            return _failed(ConnectionDone("the connection to the server is closed"))
        line = client_side.format_request(verb, **fields)
        deferred: Deferred[Answer] = Deferred(lambda _: self._abort())
        self._pending.append(_Pending(deferred, verb in LISTING_VERBS))
        self.tcp_transport().write(line)
        return deferred

    def tcp_transport(self) -> Any:
        """The transport, untyped: ITCPTransport methods (abortConnection, getPeer)."""
        return self.transport

    def _abort(self) -> None:
        if self.transport is not None and self.connected:
            self.tcp_transport().abortConnection()

    def close(self) -> None:
        """Close the connection (replies still pending fail with ConnectionDone)."""
        if self.transport is not None and self.connected:
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        """Match one reply line to the oldest request still waiting."""
        if not self._pending:
            self._protocol_error(f"a reply nobody asked for: {line[:80]!r}")
            return
        try:
            text = line.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            self._protocol_error("a reply that is not UTF-8")
            return
        pending = self._pending[0]
        if pending.lines is not None:
            content = client_side.unstuff_listing_line(text)
            if content is None:
                self._finish(pending.lines)
            else:
                pending.lines.append(content)
            return
        first = text.split(" ", 1)[0]
        if first in ("OK", "ERR"):
            try:
                reply = client_side.parse_reply_line(text)
            except ReplyParseError as e:
                self._protocol_error(f"a malformed reply ({e}): {text[:120]!r}")
                return
            self._finish(reply)
            return
        if not pending.listing_allowed:
            self._protocol_error(f"not a reply line: {text[:120]!r}")
            return
        pending.lines = []
        content = client_side.unstuff_listing_line(text)
        if content is None:
            self._finish(pending.lines)
        else:
            pending.lines.append(content)

    def _finish(self, answer: Answer) -> None:
        pending = self._pending.popleft()
        if not pending.deferred.called:
            pending.deferred.callback(answer)

    def _protocol_error(self, message: str) -> None:
        error = ProtocolError(f"the server's answer is not the licence protocol: {message}")
        self._closed_reason = Failure(error)
        self._fail_all(self._closed_reason)
        self._abort()

    def lineLengthExceeded(self, line: bytes) -> None:
        """A reply line longer than `MAX_REPLY_LINE`: not a licence server."""
        self._protocol_error(f"a reply line longer than {self.MAX_LENGTH} bytes")

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        """Fail every request still waiting; fire `lost`."""
        super().connectionLost(reason)
        if self._closed_reason is None:
            self._closed_reason = reason
        self._fail_all(Failure(ConnectionLost(f"connection to the server lost: {reason.value}")))
        if not self.lost.called:
            self.lost.callback(None)

    def _fail_all(self, failure: Failure) -> None:
        while self._pending:
            pending = self._pending.popleft()
            if not pending.deferred.called:
                pending.deferred.errback(failure)


def _failed(error: Exception) -> Deferred[Any]:
    deferred: Deferred[Any] = Deferred()
    deferred.errback(Failure(error))
    return deferred


class Link(Protocol):
    """What the client API needs of a connection (a `Connection`, or a test's fake)."""

    @property
    def peer_host(self) -> str:
        """The IP address actually connected to."""
        ...

    @property
    def is_open(self) -> bool:
        """True while the connection is up."""
        ...

    def call(self, verb: str, /, **fields: FieldValue) -> Deferred[Answer]:
        """Send one request; its reply, bounded by a timeout."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class Connection:
    """A connected `ReplyProtocol` with the server it reached and a default timeout."""

    def __init__(
        self, protocol: ReplyProtocol, server: ServerAddress, clock: Any, timeout: float
    ) -> None:
        self.protocol = protocol
        self.server = server
        self.clock = clock
        self.timeout = timeout

    @property
    def peer_host(self) -> str:
        """The IP address actually connected to (what a server certificate must list)."""
        peer = self.protocol.tcp_transport().getPeer()
        return str(getattr(peer, "host", ""))

    @property
    def is_open(self) -> bool:
        """True while the connection is up."""
        return self.protocol.is_open

    def call(self, verb: str, /, **fields: FieldValue) -> Deferred[Answer]:
        """Send one request and wait at most ``timeout`` seconds for its reply."""
        deferred = self.protocol.send(verb, **fields)
        deferred.addTimeout(self.timeout, self.clock)
        return deferred

    def close(self) -> None:
        """Close the connection."""
        self.protocol.close()


def connect_tcp(reactor: Any, server: ServerAddress, timeout: float) -> Deferred[Connection]:
    """Connect to ``server`` over TCP (IPv4), at most ``timeout`` seconds."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, server.host, server.port, timeout=timeout)
    connecting: Deferred[ReplyProtocol] = endpoints.connectProtocol(endpoint, ReplyProtocol())
    connecting.addTimeout(timeout, reactor)

    def connected(protocol: ReplyProtocol) -> Connection:
        return Connection(protocol, server, reactor, timeout)

    return connecting.addCallback(connected)


def describe_failure(problem: BaseException) -> str:
    """A short human reason for a connection or call failure."""
    if isinstance(problem, CancelledError | defer.TimeoutError | error.TimeoutError):
        return "no answer in time"
    if isinstance(problem, error.ConnectionRefusedError):
        return "connection refused (no server listening there)"
    if isinstance(problem, error.DNSLookupError):
        return "unknown host name"
    text = str(problem).strip()
    return text or type(problem).__name__
