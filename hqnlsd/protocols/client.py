"""The client listener: the text protocol of SPEC 5 as a Twisted protocol.

One `ClientProtocol` per connection. It frames lines, parses them with
`hqnlsd.protocols.grammar`, answers PING, HELP and QUIT itself, hands every other
command to the `Dispatcher` and writes the replies back **in request order**,
whatever order the dispatcher's Deferreds fire in (clients may pipeline).

Robustness rules, all per connection, so one client never disturbs another:

- a line longer than `grammar.MAX_LINE_BYTES` earns ``ERR LINE_TOO_LONG`` and the
  connection is closed (the rest of its input is ignored);
- bad UTF-8, bad syntax, unknown verbs earn a short ``ERR`` line (its message
  quotes at most a short prefix of the input); `MAX_BAD_LINES` of them in one
  reporting interval close the connection after a last ``ERR SYNTAX``;
- bad lines, over-long lines and non-IPv4 peers are logged through the
  factory's `BadInputLog`: the first from a client address in an interval,
  then one summary per address per interval, so garbage cannot fill the disk;
- a dispatcher that raises, fails its Deferred or answers something that is not
  a reply earns ``ERR INTERNAL``, and the failure is logged;
- a lost connection drops the replies still pending; their Deferreds are left
  to finish (not cancelled: a grant being replicated must not be torn in half)
  and their results are discarded;
- at most ``max_pipeline`` replies of one connection wait to be written (for the
  dispatcher, or behind a reply that waits for it); beyond that, and while the
  client does not read its replies (the protocol is a streaming producer for
  its transport), reading pauses, so memory per connection is bounded.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Protocol as TypingProtocol
from typing import cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from hqnlsd.logging.badinput import DEFAULT_INTERVAL, BadInputLog
from hqnlsd.protocols import grammar, tokenizer
from hqnlsd.protocols.replies import Err, Listing, Ok, Reply, format_reply
from hqnlsd.status import Status

#: Requests of one connection that may wait for the dispatcher at the same time.
DEFAULT_MAX_PIPELINE = 64
#: Bad lines one connection may send in one reporting interval; the next closes it.
MAX_BAD_LINES = 20
#: The longest message of an ERR reply to a bad line, in characters.
MAX_ERR_MESSAGE = 120


class Dispatcher(TypingProtocol):
    """What the client protocol needs from the core: one answer per command."""

    def dispatch(
        self, command: grammar.DispatchedCommand, peer: IPv4Address
    ) -> Reply | Deferred[Reply]:
        """Answer `command` from the client at `peer`, now or later.

        Replies are written in request order, so a slow answer delays the ones
        after it on the same connection (never on other connections). Raising,
        or failing the Deferred, gives the client ``ERR INTERNAL``.
        """
        ...


_INTERNAL = format_reply(
    Err(Status.INTERNAL, "internal error; the server logged the details")
)
_PONG = format_reply(Ok.of("pong"))
_BYE = format_reply(Ok.of("bye"))
_TOO_LONG = format_reply(
    Err(
        Status.LINE_TOO_LONG,
        f"a line may hold at most {grammar.MAX_LINE_BYTES} bytes; closing the connection",
    )
)
_IPV4_ONLY = format_reply(
    Err(Status.ILLEGAL, "this server takes clients over IPv4 only")
)
_TOO_MANY_BAD = format_reply(
    Err(
        Status.SYNTAX,
        f"{MAX_BAD_LINES} bad lines on this connection; closing it",
    )
)


def _bad_line_reply(error: tokenizer.WireError) -> bytes:
    """The ERR for a bad line, its message cut to `MAX_ERR_MESSAGE` characters."""
    message = error.message
    if len(message) > MAX_ERR_MESSAGE:
        message = message[: MAX_ERR_MESSAGE - 3] + "..."
    return format_reply(Err(error.status, message))


class _Transport(TypingProtocol):
    """The transport methods used here (zope interfaces are opaque to mypy)."""

    def getPeer(self) -> IAddress: ...
    def write(self, data: bytes) -> None: ...
    def writeSequence(self, data: Iterable[bytes]) -> None: ...
    def loseConnection(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


class Scheduler(TypingProtocol):
    """The part of IReactorTime the protocol uses (the reactor and task.Clock fit)."""

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        """Call ``callable(*args, **kw)`` in `delay` seconds."""
        ...


class _Pending:
    """The place of one reply in the connection's output order."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


@implementer(IPushProducer)
class ClientProtocol(Protocol, TimeoutMixin):
    """One client connection speaking the hqnlsd text protocol."""

    log = Logger()

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: Scheduler,
        *,
        idle_timeout: float | None = None,
        max_pipeline: int = DEFAULT_MAX_PIPELINE,
        on_idle_close: Callable[[], object] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._on_idle_close = on_idle_close
        self._clock = clock
        self._transport = cast(_Transport, None)
        self._idle_timeout = idle_timeout
        self._max_pipeline = max_pipeline
        self._buffer = b""
        self._queue: collections.deque[_Pending] = collections.deque()
        self._unresolved = 0
        self._pauses: set[str] = set()
        self._processing = False
        self._closing = False
        self._lost = False
        self._producer_registered = False
        self._peer = IPv4Address("TCP", "0.0.0.0", 0)
        self._bad_lines = 0
        self._bad_window = -1
        self._own_bad_input: BadInputLog | None = None

    def _bad_input(self) -> BadInputLog:
        """The factory's bad-input log (shared by every connection), else our own."""
        factory = getattr(self, "factory", None)
        if isinstance(factory, ClientProtocolFactory):
            return factory.bad_input
        if self._own_bad_input is None:
            self._own_bad_input = BadInputLog(self.log, self._clock)
        return self._own_bad_input

    # -- Twisted hooks ----------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's timer, on the injected clock instead of the global reactor."""
        return self._clock.callLater(period, func)

    def connectionMade(self) -> None:
        """Check the peer is IPv4, start the idle timer, watch our write buffer."""
        self._transport = cast(_Transport, self.transport)
        peer = self._transport.getPeer()
        if not isinstance(peer, IPv4Address):
            self._bad_input().note(str(peer), "a connection not over IPv4 (refused)")
            self._closing = True
            self._transport.write(_IPV4_ONLY)
            self._transport.loseConnection()
            return
        self._peer = peer
        self._transport.registerProducer(self, True)
        self._producer_registered = True
        if self._idle_timeout is not None:
            self._set_idle_timer(self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        """Buffer `data` and answer every complete line in it.

        Only complete lines reset the idle timer (in `_line_received`): bytes
        trickled without a line end never keep a connection open.
        """
        if self._closing:
            return
        self._buffer += data
        self._process_buffer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Forget the pending replies; their Deferreds finish into the void."""
        self._lost = True
        self._closing = True
        self._buffer = b""
        self._queue.clear()
        self._producer_registered = False
        self._set_idle_timer(None)

    def timeoutConnection(self) -> None:
        """Idle too long: close, unless the dispatcher still owes us a reply."""
        if self._unresolved:
            self._set_idle_timer(self._idle_timeout)
            return
        self.log.info(
            "closing idle client connection {peer}", peer=self._peer_text()
        )
        if self._on_idle_close is not None:
            self._on_idle_close()
        self._close_after_flush()

    # -- IPushProducer: the transport tells us when its write buffer is full

    def pauseProducing(self) -> None:
        """The client is not reading our replies: stop reading its requests."""
        self._pause("writes")

    def resumeProducing(self) -> None:
        """The client caught up: read and answer again."""
        self._resume("writes")

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the cleaning."""
        self._closing = True

    # -- input ------------------------------------------------------------

    def _process_buffer(self) -> None:
        if self._processing:
            return  # re-entered from a reply that fired synchronously
        self._processing = True
        try:
            buffer = self._buffer
            start = 0
            drained = True
            while not self._closing:
                if self._pauses:
                    drained = False
                    break
                end = buffer.find(b"\n", start)
                if end < 0:
                    break
                line = buffer[start:end]
                start = end + 1
                self._line_received(line)
            self._buffer = b"" if self._closing else buffer[start:]
            if drained and not self._closing and _too_long(self._buffer):
                self._line_too_long()
        finally:
            self._processing = False

    def _line_received(self, line: bytes) -> None:
        self.resetTimeout()
        if _too_long(line):
            self._line_too_long()
            return
        try:
            command = grammar.parse_line(line)
        except tokenizer.WireError as e:
            self._bad_line(e)
            return
        if command is None:
            return
        if isinstance(command, grammar.Ping):
            self._answer(_PONG)
        elif isinstance(command, grammar.Help):
            self._answer(format_reply(grammar.help_listing(command.topic)))
        elif isinstance(command, grammar.Quit):
            self._answer(_BYE)
            self._close_after_flush()
        else:
            self._dispatch(command)

    def _bad_line(self, error: tokenizer.WireError) -> None:
        """Answer a bad line shortly; log it in summary; close after too many."""
        reporter = self._bad_input()
        reporter.note(self._peer.host, f"{error.status.name} {error.message}")
        if self._bad_window != reporter.window:
            self._bad_window = reporter.window
            self._bad_lines = 0
        self._bad_lines += 1
        if self._bad_lines > MAX_BAD_LINES:
            self._answer(_TOO_MANY_BAD)
            self._close_after_flush()
            return
        self._answer(_bad_line_reply(error))

    def _line_too_long(self) -> None:
        self._bad_input().note(
            self._peer.host,
            f"a line over {grammar.MAX_LINE_BYTES} bytes (connection closed)",
        )
        self._answer(_TOO_LONG)
        self._close_after_flush()

    # -- dispatching ------------------------------------------------------

    def _dispatch(self, command: grammar.DispatchedCommand) -> None:
        try:
            result = self._dispatcher.dispatch(command, self._peer)
        except Exception:
            self.log.failure(
                "dispatcher raised on {verb} from {peer}",
                verb=command.verb, peer=self._peer_text(),
            )
            self._answer(_INTERNAL)
            return
        if not isinstance(result, Deferred):
            self._answer(self._render(result, command))
            return
        pending = _Pending()
        self._queue.append(pending)
        self._unresolved += 1
        self._check_pipeline()

        def settle(outcome: object) -> None:
            if isinstance(outcome, Failure):
                self.log.failure(
                    "dispatcher failed on {verb} from {peer}",
                    outcome, verb=command.verb, peer=self._peer_text(),
                )
                pending.data = _INTERNAL
            else:
                pending.data = self._render(outcome, command)
            self._unresolved -= 1
            self._flush()

        result.addBoth(settle)

    def _render(self, reply: object, command: grammar.DispatchedCommand) -> bytes:
        if isinstance(reply, Ok | Err | Listing):
            try:
                return format_reply(reply)
            except Exception:
                self.log.failure("could not format the reply to {verb}", verb=command.verb)
                return _INTERNAL
        self.log.error(
            "dispatcher answered {verb} with {reply!r}, which is not a reply",
            verb=command.verb, reply=reply,
        )
        return _INTERNAL

    # -- output -----------------------------------------------------------

    def _answer(self, data: bytes) -> None:
        """Send a reply that is ready now, after those still pending."""
        if self._lost:
            return
        if self._queue:
            self._queue.append(_Pending(data))
            self._check_pipeline()
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        if self._lost:
            return
        ready: list[bytes] = []
        while self._queue and self._queue[0].data is not None:
            ready.append(self._queue.popleft().data)  # type: ignore[arg-type]
        if ready:
            self._transport.writeSequence(ready)
        if self._closing and not self._queue:
            self._close_now()
        else:
            self._check_pipeline()

    def _close_after_flush(self) -> None:
        """Read nothing more; close once every pending reply is written."""
        self._closing = True
        self._buffer = b""
        if not self._queue:
            self._close_now()

    def _close_now(self) -> None:
        if self._lost:
            return
        if self._producer_registered:
            # A registered streaming producer would keep the connection open.
            self._producer_registered = False
            self._transport.unregisterProducer()
        self._set_idle_timer(None)
        self._transport.loseConnection()

    # -- flow control -----------------------------------------------------

    def _check_pipeline(self) -> None:
        if len(self._queue) >= self._max_pipeline:
            self._pause("pipeline")
        else:
            self._resume("pipeline")

    def _pause(self, reason: str) -> None:
        if reason in self._pauses:
            return
        self._pauses.add(reason)
        if len(self._pauses) == 1 and not self._closing:
            self._transport.pauseProducing()

    def _resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if self._pauses or self._closing:
            return
        self._transport.resumeProducing()
        self._process_buffer()

    def _set_idle_timer(self, seconds: float | None) -> None:
        self.setTimeout(seconds)

    def _peer_text(self) -> str:
        return f"{self._peer.host}:{self._peer.port}"


def _too_long(line: bytes) -> bool:
    """Is `line` (a complete line without LF, or the unfinished tail of the
    input) over the limit? The CR of a CR LF does not count."""
    excess = len(line) - grammar.MAX_LINE_BYTES
    return excess > 1 or (excess == 1 and not line.endswith(b"\r"))


class ClientProtocolFactory(ServerFactory[ClientProtocol]):
    """Builds a `ClientProtocol` for each client connection.

    :param dispatcher: answers the commands (REQUEST, UPDATE, ...).
    :param clock: the reactor's time, for the idle timeout.
    :param idle_timeout: close a connection silent for this many seconds
        (default: never). Keep it well above the longest update period if
        clients hold their connection open between UPDATEs.
    :param max_pipeline: replies of one connection that may wait to be written
        (pending in the dispatcher or queued behind one that is); reading
        pauses at that many.
    :param on_idle_close: called each time a connection is closed for idleness
        (the metrics count it).
    :param log_interval: seconds over which bad input of one client address is
        counted before its summary line (``[limits] log-interval``).

    ``bad_input`` logs the bad input of every connection, per client address per
    interval (`BadInputLog`); what it still counts is logged when the factory stops.
    """

    protocol = ClientProtocol

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: Scheduler,
        *,
        idle_timeout: float | None = None,
        max_pipeline: int = DEFAULT_MAX_PIPELINE,
        on_idle_close: Callable[[], object] | None = None,
        log_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive (or None for no timeout)")
        if max_pipeline < 1:
            raise ValueError("max_pipeline must be at least 1")
        self.dispatcher = dispatcher
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_pipeline = max_pipeline
        self.on_idle_close = on_idle_close
        self.bad_input = BadInputLog(ClientProtocol.log, clock, interval=log_interval)

    def stopFactory(self) -> None:
        """Log the bad input still counted (the listener is closing)."""
        self.bad_input.stop()

    def buildProtocol(self, addr: object) -> ClientProtocol:
        """A protocol for the connection from `addr`."""
        protocol = ClientProtocol(
            self.dispatcher,
            self.clock,
            idle_timeout=self.idle_timeout,
            max_pipeline=self.max_pipeline,
            on_idle_close=self.on_idle_close,
        )
        protocol.factory = self
        return protocol

