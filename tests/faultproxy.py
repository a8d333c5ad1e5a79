"""A fault-injecting TCP proxy between loopback hosts, for end-to-end domain tests.

`FaultProxy` listens on some loopback endpoints and forwards each accepted
connection to a target endpoint, byte for byte (TLS stays end to end: the
proxy never looks inside). It runs in one background thread of the test
process (`selectors`, non-blocking sockets) and is meant for tests only:

- **Loopback only.** Every listening, target and partition address must be in
  127.0.0.0/8 (`ValueError` otherwise); a connection accepted from outside it
  is closed at once.
- **Source preserved.** The upstream connection is bound to the *caller's*
  address (the accepted connection's source IP, port 0), so a server that
  checks a peer's source address against its certificate still sees the
  caller's own address. For a server domain, route each member's
  ``(127.0.0.B, dial port)`` to ``(127.0.0.B, peer port)``: `for_members`.
- **Hosts.** A connection is *between* its caller (source IP) and its target
  host (the target endpoint's IP); `partition` is expressed in those hosts.

Faults (`partition(groups)`): hosts in different groups, or in no group, are
cut from each other (a host is never cut from itself). The cut is a silent
network partition, not a refusal:

- an existing connection across the cut is *severed*: from then on the proxy
  reads and discards whatever either end sends and forwards nothing, so the
  ends only find out by their own timeouts (application pings); data the
  proxy had buffered but not yet written is dropped too. An end that closes a
  severed connection has its side closed, and nothing reaches the other end
  (as a FIN would be lost in a real partition);
- a new connection across the cut is accepted and *black-holed*: never
  connected upstream, its bytes discarded (as a SYN that reaches a listener on
  the far side of a cut would never be answered, seen from the application:
  the handshake never completes).

A severed or black-holed connection never carries a byte again (its stream
has a gap); `heal()` ends the partition and closes every such connection on
both sides, so the ends reconnect at once, through the proxy, and those new
connections are forwarded. `partition` may be called again to change the
groups: connections that cross the new cut are severed, earlier severed ones
stay severed.

Other shapes (`cut(pairs)`): a set of *directed* host pairs ``(A, B)``, "what
A sends to B is lost", on top of the groups. Both directions of a pair cut: as
a partition. Only one: a **one-way** cut. An existing connection between A and
B keeps forwarding what B sends and silently drops what A sends (an end whose
sending direction is cut that closes has its side closed, unseen by the other
end); a new connection between them is black-holed (its handshake could not
complete). Any subset of pairs can be cut, so cuts need not be transitive (A-B
cut while both still reach C).

``loud=True`` (either call) makes the cut *visible*: connections across it are
reset (both ends, RST) instead of severed, and new ones are reset as soon as
they are accepted, as a network that answers with ICMP unreachable or a
firewall that rejects would. Every control call (`partition`, `heal`, `stats`, `close`) takes
effect in the proxy thread before it returns: once `partition` has returned
no byte crosses the cut.

Bounds: at most ``max_connections`` open connections (further ones are closed
on accept), at most ``buffer_limit`` bytes buffered per direction (reading
stops until the other end drains), upstream connects time out after
``connect_timeout``, and every wait of a control call on the proxy thread
after ``control_timeout`` (`ProxyError`). `close()` (also on leaving the
``with`` block) stops the thread and closes every socket, listeners included,
so their ports are free again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

#: The only network the proxy will touch.
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
#: How long a control call may wait for the proxy thread (seconds): generous, the
#: thread shares a loaded machine (and the GIL) with the test.
CONTROL_TIMEOUT = 20.0
#: How long an upstream connect may take (seconds).
CONNECT_TIMEOUT = 5.0
#: Bytes buffered per direction of a connection before the proxy stops reading.
BUFFER_LIMIT = 1 << 20
#: Open connections at most; more are closed as soon as they are accepted.
MAX_CONNECTIONS = 256
#: The longest the proxy thread sleeps in `select` (seconds): it bounds how late
#: a connect timeout is noticed.
SELECT_INTERVAL = 0.1
#: Bytes read from a socket at a time.
CHUNK = 65536

#: An (IPv4 address, port) pair.
Endpoint = tuple[str, int]
_T = TypeVar("_T")


class ProxyError(RuntimeError):
    """The proxy thread did not answer a control call in time, or is no longer running."""


def loopback_address(address: str) -> str:
    """``address`` in its canonical form; `ValueError` unless it is in 127.0.0.0/8."""
    parsed = ipaddress.IPv4Address(address)
    if parsed not in LOOPBACK:
        raise ValueError(f"{address} is not a loopback address (127.0.0.0/8)")
    return str(parsed)


def _endpoint(value: Endpoint) -> Endpoint:
    address, port = value
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return loopback_address(address), port


@dataclasses.dataclass
class LinkStats:
    """What the proxy did for the connections from one caller host to one target host."""

    #: connections accepted and forwarded upstream
    forwarded: int = 0
    #: connections accepted across a cut and black-holed
    black_holed: int = 0
    #: forwarded connections severed by a partition
    severed: int = 0
    #: bytes delivered (both directions)
    bytes_forwarded: int = 0
    #: bytes read and discarded because of a cut (both directions)
    bytes_dropped: int = 0


#: (caller host, target host) -> its `LinkStats`.
Stats = dict[tuple[str, str], LinkStats]


class _Connection:
    """One accepted connection (``down``) and, unless black-holed, its upstream (``up``)."""

    def __init__(self, caller: str, target: Endpoint, down: socket.socket) -> None:
        self.caller = caller
        self.target = target
        self.down: socket.socket | None = down
        self.up: socket.socket | None = None
        self.connected = False
        self.connect_deadline = 0.0
        self.severed = False
        #: one-way cuts: what the caller (up) / the target (down) sends is dropped
        self.mute_up = False
        self.mute_down = False
        self.to_up = bytearray()
        self.to_down = bytearray()
        self.eof_down = False
        self.eof_up = False
        self.shut_up = False
        self.shut_down = False

    @property
    def link(self) -> tuple[str, str]:
        """The (caller host, target host) pair of this connection."""
        return self.caller, self.target[0]


class FaultProxy:
    """A loopback TCP proxy that can partition hosts (see the module docstring)."""

    def __init__(
        self,
        routes: Iterable[tuple[Endpoint, Endpoint]],
        *,
        preserve_source: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT,
        control_timeout: float = CONTROL_TIMEOUT,
        buffer_limit: int = BUFFER_LIMIT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Listen on every ``(listen, target)`` route's listen endpoint (port 0: the
        kernel picks one, see `listening`) and start the proxy thread."""
        checked = [(_endpoint(listen), _endpoint(target)) for listen, target in routes]
        if not checked:
            raise ValueError("a proxy needs at least one route")
        self.preserve_source = preserve_source
        self.connect_timeout = connect_timeout
        self.control_timeout = control_timeout
        self.buffer_limit = buffer_limit
        self.max_connections = max_connections
        self._selector = selectors.DefaultSelector()
        self._listeners: dict[socket.socket, Endpoint] = {}
        self._connections: set[_Connection] = set()
        self._registered: dict[socket.socket, int] = {}
        self._groups: dict[str, int] | None = None
        self._drops: frozenset[tuple[str, str]] = frozenset()
        self._loud = False
        self._stats: Stats = {}
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopping = False
        self._closed = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self.listening: list[Endpoint] = []
        try:
            for listen, target in checked:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._listeners[listener] = target
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(listen)
                listener.listen(64)
                listener.setblocking(False)
                self._selector.register(listener, selectors.EVENT_READ)
                bound = listener.getsockname()
                self.listening.append((bound[0], bound[1]))
        except BaseException:
            self._close_sockets()
            raise
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()

    @classmethod
    def for_members(
        cls,
        addresses: Sequence[str],
        *,
        listen_port: int,
        target_port: int,
        **options: float | int | bool,
    ) -> FaultProxy:
        """A proxy in front of each member: ``(A, listen_port)`` -> ``(A, target_port)``."""
        routes = [((address, listen_port), (address, target_port)) for address in addresses]
        return cls(routes, **options)  # type: ignore[arg-type]

    # -- control (any thread) ------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def partition(self, groups: Iterable[Iterable[str]], *, loud: bool = False) -> None:
        """Cut every link between hosts of different groups (or in no group);
        ``loud``: reset connections across the cut rather than sever them."""
        group_of: dict[str, int] = {}
        for index, group in enumerate(groups):
            for address in group:
                host = loopback_address(address)
                if host in group_of:
                    raise ValueError(f"{host} is in more than one group")
                group_of[host] = index
        self._call(lambda: self._partition(group_of, loud))

    def cut(self, pairs: Iterable[tuple[str, str]], *, loud: bool = False) -> None:
        """Also lose what A sends to B, for every ``(A, B)`` of ``pairs`` (directed;
        replaces the pairs of an earlier `cut`, keeps the groups of `partition`)."""
        drops = frozenset(
            (loopback_address(source), loopback_address(target)) for source, target in pairs
        )
        self._call(lambda: self._cut(drops, loud))

    def heal(self) -> None:
        """End the partition; close every severed and black-holed connection."""
        self._call(self._heal)

    def stats(self) -> Stats:
        """A snapshot of what the proxy did, per (caller host, target host); also after
        `close`, the final counts."""

        def snapshot() -> Stats:
            return {link: dataclasses.replace(stats) for link, stats in self._stats.items()}

        return snapshot() if self._closed else self._call(snapshot)

    def open_connections(self) -> int:
        """How many accepted connections are open now (0 once closed)."""
        return 0 if self._closed else self._call(lambda: len(self._connections))

    def close(self) -> None:
        """Stop the thread and close every socket (listeners too); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(ProxyError):
                self._call(self._stop)
            self._thread.join(self.control_timeout)
        if self._thread.is_alive():
            raise ProxyError(f"the proxy thread did not stop within {self.control_timeout} s")
        self._close_sockets()

    def _call(self, function: Callable[[], _T]) -> _T:
        """Run ``function`` in the proxy thread; its result (bounded wait)."""
        if not self._thread.is_alive():
            raise ProxyError("the proxy thread is not running")
        done = threading.Event()
        outcome: list[_T] = []
        failure: list[BaseException] = []

        def command() -> None:
            try:
                outcome.append(function())
            except BaseException as error:
                failure.append(error)
            finally:
                done.set()

        self._commands.put(command)
        with contextlib.suppress(BlockingIOError):
            self._wake_writer.send(b"!")
        if not done.wait(self.control_timeout):
            raise ProxyError(f"the proxy thread did not answer within {self.control_timeout} s")
        if failure:
            raise failure[0]
        return outcome[0]

    # -- the proxy thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select(SELECT_INTERVAL):
                    self._ready(key, mask)
                self._expire_connects()
        finally:
            self._stopping = True
            # Unblock any caller still waiting: its command runs no more.
            while True:
                try:
                    self._commands.get_nowait()()
                except queue.Empty:
                    break

    def _stop(self) -> None:
        self._stopping = True

    def _ready(self, key: selectors.SelectorKey, mask: int) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        if sock is self._wake_reader:
            with contextlib.suppress(BlockingIOError):
                sock.recv(CHUNK)
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    return
                command()
        elif sock in self._listeners:
            self._accept(sock)
        elif isinstance(key.data, _Connection):
            self._service(key.data, sock, mask)

    def _link(self, link: tuple[str, str]) -> LinkStats:
        return self._stats.setdefault(link, LinkStats())

    def _sends_lost(self, source: str, target: str) -> bool:
        """What ``source`` sends to ``target`` is lost (a group split or a directed cut)."""
        if source == target:
            return False
        if (source, target) in self._drops:
            return True
        if self._groups is None:
            return False
        group = self._groups.get(source)
        return group is None or group != self._groups.get(target)

    def _is_cut(self, caller: str, target: str) -> bool:
        """Some direction between the two hosts is cut: no new connection completes."""
        return self._sends_lost(caller, target) or self._sends_lost(target, caller)

    def _accept(self, listener: socket.socket) -> None:
        target = self._listeners[listener]
        for _ in range(64):
            try:
                down, (caller, _port) = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            down.setblocking(False)
            try:
                caller = loopback_address(caller)
            except ValueError:
                down.close()
                continue
            if len(self._connections) >= self.max_connections:
                down.close()
                continue
            if self._loud and self._is_cut(caller, target[0]):
                self._link((caller, target[0])).black_holed += 1
                with contextlib.suppress(OSError):
                    down.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                down.close()
                continue
            connection = _Connection(caller, target, down)
            self._connections.add(connection)
            if self._is_cut(caller, target[0]):
                connection.severed = True
                self._link(connection.link).black_holed += 1
            else:
                self._link(connection.link).forwarded += 1
                self._connect_upstream(connection)
            self._update(connection)

    def _connect_upstream(self, connection: _Connection) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        connection.up = up
        connection.connect_deadline = time.monotonic() + self.connect_timeout
        try:
            up.setblocking(False)
            if self.preserve_source:
                up.bind((connection.caller, 0))
            code = up.connect_ex(connection.target)
        except OSError:
            self._close(connection, reset=True)
            return
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._close(connection, reset=True)

    def _expire_connects(self) -> None:
        now = time.monotonic()
        for connection in list(self._connections):
            if (
                connection.up is not None
                and not connection.connected
                and not connection.severed
                and now >= connection.connect_deadline
            ):
                self._close(connection, reset=True)

    def _service(self, connection: _Connection, sock: socket.socket, mask: int) -> None:
        if sock is connection.up and not connection.connected and not connection.severed:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._close(connection, reset=True)
                return
            connection.connected = True
        try:
            if mask & selectors.EVENT_READ:
                self._read(connection, sock)
            if connection in self._connections:
                self._flush(connection)
        except OSError:
            if connection.severed:
                self._close_side(connection, sock)
            else:
                self._close(connection, reset=True)
            return
        if connection in self._connections:
            self._update(connection)

    def _read(self, connection: _Connection, sock: socket.socket) -> None:
        data = sock.recv(CHUNK)
        from_down = sock is connection.down
        if connection.severed or (connection.mute_up if from_down else connection.mute_down):
            if data:
                self._link(connection.link).bytes_dropped += len(data)
            else:
                self._close_side(connection, sock)
            return
        if not data:
            if from_down:
                connection.eof_down = True
            else:
                connection.eof_up = True
            return
        (connection.to_up if from_down else connection.to_down).extend(data)

    def _flush(self, connection: _Connection) -> None:
        if connection.severed:
            return
        stats = self._link(connection.link)
        if connection.connected and connection.up is not None and connection.to_up:
            with contextlib.suppress(BlockingIOError):
                sent = connection.up.send(connection.to_up)
                del connection.to_up[:sent]
                stats.bytes_forwarded += sent
        if connection.down is not None and connection.to_down:
            with contextlib.suppress(BlockingIOError):
                sent = connection.down.send(connection.to_down)
                del connection.to_down[:sent]
                stats.bytes_forwarded += sent
        # Pass a half-close on once everything before it is delivered.
        if (
            connection.eof_down
            and not connection.to_up
            and connection.connected
            and connection.up is not None
            and not connection.shut_up
        ):
            connection.up.shutdown(socket.SHUT_WR)
            connection.shut_up = True
        if (
            connection.eof_up
            and not connection.to_down
            and connection.down is not None
            and not connection.shut_down
        ):
            connection.down.shutdown(socket.SHUT_WR)
            connection.shut_down = True
        if connection.shut_up and connection.shut_down:
            self._close(connection)

    def _update(self, connection: _Connection) -> None:
        """Register each socket of ``connection`` for the events it needs now."""
        room_up = connection.severed or len(connection.to_up) < self.buffer_limit
        room_down = connection.severed or len(connection.to_down) < self.buffer_limit
        wants: dict[socket.socket, int] = {}
        if connection.down is not None:
            events = 0
            if not connection.eof_down and room_up:
                events |= selectors.EVENT_READ
            if connection.to_down and not connection.severed:
                events |= selectors.EVENT_WRITE
            wants[connection.down] = events
        if connection.up is not None:
            events = 0
            if not connection.connected and not connection.severed:
                events = selectors.EVENT_WRITE
            else:
                if not connection.eof_up and room_down:
                    events |= selectors.EVENT_READ
                if connection.to_up and not connection.severed:
                    events |= selectors.EVENT_WRITE
            wants[connection.up] = events
        for sock, events in wants.items():
            self._register(sock, events, connection)

    def _register(self, sock: socket.socket, events: int, connection: _Connection) -> None:
        current = self._registered.get(sock, 0)
        if events == current:
            return
        if current and not events:
            self._selector.unregister(sock)
            del self._registered[sock]
        elif not current:
            self._selector.register(sock, events, connection)
            self._registered[sock] = events
        else:
            self._selector.modify(sock, events, connection)
            self._registered[sock] = events

    def _unregister(self, sock: socket.socket) -> None:
        if self._registered.pop(sock, 0):
            self._selector.unregister(sock)

    def _close_side(self, connection: _Connection, sock: socket.socket) -> None:
        """Close one end of a severed connection; forget the connection once both are."""
        self._unregister(sock)
        sock.close()
        if sock is connection.down:
            connection.down = None
        elif sock is connection.up:
            connection.up = None
        if connection.down is None and connection.up is None:
            self._connections.discard(connection)

    def _close(self, connection: _Connection, *, reset: bool = False) -> None:
        """Close both ends of ``connection`` (with a reset: abortive close)."""
        for sock in (connection.down, connection.up):
            if sock is None:
                continue
            self._unregister(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        connection.down = connection.up = None
        self._connections.discard(connection)

    def _partition(self, group_of: dict[str, int], loud: bool = False) -> None:
        self._groups = group_of
        self._apply_cuts(loud)

    def _cut(self, drops: frozenset[tuple[str, str]], loud: bool) -> None:
        self._drops = drops
        self._apply_cuts(loud)

    def _apply_cuts(self, loud: bool) -> None:
        """Sever (or reset, when loud) connections cut both ways; mute one-way ones."""
        self._loud = loud
        for connection in list(self._connections):
            if connection.severed or not self._is_cut(*connection.link):
                continue
            if loud:
                self._link(connection.link).severed += 1
                self._close(connection, reset=True)
                continue
            caller, target = connection.link
            up_lost = self._sends_lost(caller, target)
            down_lost = self._sends_lost(target, caller)
            if not (up_lost and down_lost):
                if up_lost and not connection.mute_up:
                    connection.mute_up = True
                    connection.to_up.clear()
                    self._link(connection.link).severed += 1
                if down_lost and not connection.mute_down:
                    connection.mute_down = True
                    connection.to_down.clear()
                    self._link(connection.link).severed += 1
                self._update(connection)
                continue
            connection.severed = True
            connection.to_up.clear()
            connection.to_down.clear()
            self._link(connection.link).severed += 1
            if connection.up is not None and not connection.connected:
                # Never connected upstream: nothing on the far side to leave hanging.
                self._close_side(connection, connection.up)
            if connection in self._connections:
                self._update(connection)

    def _heal(self) -> None:
        self._groups = None
        self._drops = frozenset()
        self._loud = False
        for connection in list(self._connections):
            if connection.severed or connection.mute_up or connection.mute_down:
                self._close(connection)

    def _close_sockets(self) -> None:
        for connection in list(self._connections):
            self._close(connection)
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._wake_reader.close()
        self._wake_writer.close()
        self._selector.close()
