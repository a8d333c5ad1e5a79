"""Unit tests of the fault-injecting TCP proxy (`tests.faultproxy`) with plain sockets.

Every socket has a timeout; "nothing arrived" is checked without waiting for
silence: first the proxy's counters show it has read (and dropped) the bytes,
then a non-blocking read on the far end finds nothing.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.daemons import free_port_on_all
from tests.faultproxy import FaultProxy, LinkStats, ProxyError

#: Timeout of every socket operation and bounded wait in these tests (seconds):
#: generous, the machine may be loaded (a passing test never waits for it).
TIMEOUT = 20.0
CALLER = "127.0.0.3"
SERVER = "127.0.0.2"
OTHER_SERVER = "127.0.0.4"


class Server:
    """A listening socket on a loopback address; accepted sockets have timeouts."""

    def __init__(self, address: str, port: int = 0) -> None:
        """Listen on ``(address, port)`` (port 0: the kernel chooses)."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.sock.settimeout(TIMEOUT)
        self.address = address
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        """The next connection and its peer address (bounded wait)."""
        conn, peer = self.sock.accept()
        conn.settimeout(TIMEOUT)
        self.accepted.append(conn)
        return conn, peer

    def has_pending(self) -> bool:
        """True if a connection is waiting to be accepted (does not wait)."""
        self.sock.setblocking(False)
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)
        self.accepted.append(conn)
        return True

    def close(self) -> None:
        """Close the listener and every accepted socket."""
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; all closed at the end."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def server() -> Iterator[Server]:
    """A server on 127.0.0.2."""
    srv = Server(SERVER)
    yield srv
    srv.close()


@pytest.fixture
def other_server() -> Iterator[Server]:
    """A server on 127.0.0.4."""
    srv = Server(OTHER_SERVER)
    yield srv
    srv.close()


@pytest.fixture
def proxy(server: Server, other_server: Server) -> Iterator[FaultProxy]:
    """A proxy with a kernel-chosen port on 127.0.0.2 and on 127.0.0.4, in front of each server."""
    with FaultProxy(
        [
            ((SERVER, 0), (SERVER, server.port)),
            ((OTHER_SERVER, 0), (OTHER_SERVER, other_server.port)),
        ]
    ) as fault_proxy:
        yield fault_proxy


def dial(
    sockets: list[socket.socket], proxy: FaultProxy, index: int, source: str = CALLER
) -> socket.socket:
    """Connect from ``source`` to the proxy's ``index``-th listening endpoint."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(sock)
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect(proxy.listening[index])
    return sock


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (each read bounded by the socket's timeout)."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def nothing_to_read(sock: socket.socket) -> bool:
    """True if no byte and no EOF is waiting on ``sock`` (does not wait)."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(TIMEOUT)
    return False


def closed_by_peer(sock: socket.socket) -> bool:
    """True if ``sock`` reads EOF or a reset (bounded by the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def closed_at_once(sockets: list[socket.socket], proxy: FaultProxy, index: int) -> bool:
    """Dial the proxy: True if the connection is reset or closed by the proxy (the
    reset may even come before ``connect`` returns)."""
    try:
        client = dial(sockets, proxy, index)
    except ConnectionResetError:
        return True
    return closed_by_peer(client)


def eventually(what: str, predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds, at most TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {TIMEOUT} s: {what}")
        time.sleep(0.005)


def link(proxy: FaultProxy, caller: str, target: str) -> LinkStats:
    """The proxy's counters for connections from ``caller`` to ``target``."""
    return proxy.stats().get((caller, target), LinkStats())


def connected_pair(
    sockets: list[socket.socket], proxy: FaultProxy, srv: Server, index: int
) -> tuple[socket.socket, socket.socket]:
    """A client connection through the proxy and the server's end of it; checks one
    round trip so that the pair is known to forward."""
    client = dial(sockets, proxy, index)
    conn, _ = srv.accept()
    client.sendall(b"ping")
    assert receive_exactly(conn, 4) == b"ping"
    conn.sendall(b"pong")
    assert receive_exactly(client, 4) == b"pong"
    return client, conn


def test_forwards_both_ways_intact(
    proxy: FaultProxy, server: Server, sockets: list[socket.socket]
) -> None:
    """Several megabytes each way, at once, arrive complete and in order (the
    per-direction buffer limit only slows the sender down)."""
    client = dial(sockets, proxy, 0)
    conn, _ = server.accept()
    upward, downward = os.urandom(3_000_000), os.urandom(2_500_000)
    failures: list[BaseException] = []

    def send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except BaseException as error:  # reported by the test thread
            failures.append(error)

    senders = [
        threading.Thread(target=send, args=(client, upward)),
        threading.Thread(target=send, args=(conn, downward)),
    ]
    for sender in senders:
        sender.start()
    got_down = receive_exactly(client, len(downward))
    got_up = receive_exactly(conn, len(upward))
    for sender in senders:
        sender.join(TIMEOUT)
        assert not sender.is_alive()
    assert not failures
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(upward).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(downward).digest()
    counted = link(proxy, CALLER, SERVER)
    assert counted.forwarded == 1
    assert counted.bytes_forwarded == len(upward) + len(downward)
    assert counted.bytes_dropped == 0


def test_source_address_is_the_callers(
    proxy: FaultProxy, server: Server, sockets: list[socket.socket]
) -> None:
    """The server sees each caller's own address as the source of its connection."""
    for source in ("127.0.0.3", "127.0.0.7"):
        dial(sockets, proxy, 0, source=source)
        _, (peer, _port) = server.accept()
        assert peer == source


def test_half_close_is_passed_on(
    proxy: FaultProxy, server: Server, sockets: list[socket.socket]
) -> None:
    """A caller's shutdown reaches the server after its data; the server can still answer."""
    client = dial(sockets, proxy, 0)
    conn, _ = server.accept()
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    assert receive_exactly(conn, 10) == b"last words"
    assert conn.recv(1) == b""
    conn.sendall(b"reply")
    assert receive_exactly(client, 5) == b"reply"
    conn.close()
    assert client.recv(1) == b""
    eventually("the proxy forgets the finished connection", lambda: proxy.open_connections() == 0)


def test_partition_silently_severs_connections_across_the_cut(
    proxy: FaultProxy, server: Server, other_server: Server, sockets: list[socket.socket]
) -> None:
    """Across the cut nothing is forwarded either way and neither end is told; a
    connection inside a group keeps forwarding."""
    inside_client, inside_conn = connected_pair(sockets, proxy, server, 0)
    cut_client, cut_conn = connected_pair(sockets, proxy, other_server, 1)
    proxy.partition([[CALLER, SERVER], [OTHER_SERVER]])

    cut_client.sendall(b"lost up")
    cut_conn.sendall(b"lost down")
    eventually(
        "the proxy read and dropped both messages",
        lambda: (
            link(proxy, CALLER, OTHER_SERVER).bytes_dropped == len(b"lost up") + len(b"lost down")
        ),
    )
    assert nothing_to_read(cut_conn)
    assert nothing_to_read(cut_client)
    assert link(proxy, CALLER, OTHER_SERVER).severed == 1

    inside_client.sendall(b"still here")
    assert receive_exactly(inside_conn, 10) == b"still here"
    inside_conn.sendall(b"yes")
    assert receive_exactly(inside_client, 3) == b"yes"
    assert link(proxy, CALLER, SERVER).severed == 0


def test_closing_a_severed_end_does_not_reach_the_other(
    proxy: FaultProxy, other_server: Server, sockets: list[socket.socket]
) -> None:
    """Like a FIN lost in a partition: the far end of a severed connection sees nothing."""
    cut_client, cut_conn = connected_pair(sockets, proxy, other_server, 1)
    proxy.partition([[CALLER], [OTHER_SERVER]])
    cut_client.close()
    eventually("the proxy closed the caller's side", lambda: proxy.open_connections() == 1)
    assert nothing_to_read(cut_conn)


def test_partition_black_holes_new_connections(
    proxy: FaultProxy, other_server: Server, sockets: list[socket.socket]
) -> None:
    """A new connection across the cut is accepted, never reaches the server, its bytes dropped."""
    proxy.partition([[CALLER], [OTHER_SERVER]])
    client = dial(sockets, proxy, 1)
    client.sendall(b"hello?")
    eventually(
        "the proxy dropped the bytes",
        lambda: link(proxy, CALLER, OTHER_SERVER).bytes_dropped == len(b"hello?"),
    )
    assert link(proxy, CALLER, OTHER_SERVER).black_holed == 1
    assert link(proxy, CALLER, OTHER_SERVER).forwarded == 0
    assert not other_server.has_pending()
    assert nothing_to_read(client)


def test_a_host_in_no_group_is_cut_from_everyone_but_itself(
    proxy: FaultProxy, server: Server, sockets: list[socket.socket]
) -> None:
    """Hosts left out of every group are isolated; a host is never cut from itself."""
    proxy.partition([[OTHER_SERVER]])
    dial(sockets, proxy, 0, source=CALLER)  # CALLER and SERVER: in no group
    eventually("black-holed", lambda: link(proxy, CALLER, SERVER).black_holed == 1)
    assert not server.has_pending()
    own = dial(sockets, proxy, 0, source=SERVER)
    conn, (peer, _) = server.accept()
    assert peer == SERVER
    own.sendall(b"self")
    assert receive_exactly(conn, 4) == b"self"


def test_heal_closes_severed_connections_and_forwards_new_ones(
    proxy: FaultProxy, other_server: Server, sockets: list[socket.socket]
) -> None:
    """After heal the severed and black-holed connections are closed (so the ends
    reconnect at once) and new connections are forwarded again."""
    severed_client, severed_conn = connected_pair(sockets, proxy, other_server, 1)
    proxy.partition([[CALLER], [OTHER_SERVER]])
    holed = dial(sockets, proxy, 1)
    eventually("black-holed", lambda: link(proxy, CALLER, OTHER_SERVER).black_holed == 1)
    proxy.heal()
    assert closed_by_peer(severed_client)
    assert closed_by_peer(severed_conn)
    assert closed_by_peer(holed)
    fresh_client, fresh_conn = connected_pair(sockets, proxy, other_server, 1)
    fresh_client.sendall(b"back")
    assert receive_exactly(fresh_conn, 4) == b"back"
    assert proxy.open_connections() == 1


def test_one_way_cut_forwards_one_direction_and_drops_the_other(
    proxy: FaultProxy, other_server: Server, sockets: list[socket.socket]
) -> None:
    """``cut([(A, B)])``: what the caller A sends is dropped, what B sends still
    arrives; a new connection between them is black-holed; heal closes the muted one."""
    client, conn = connected_pair(sockets, proxy, other_server, 1)
    proxy.cut([(CALLER, OTHER_SERVER)])
    client.sendall(b"lost")
    eventually(
        "the proxy dropped the caller's bytes",
        lambda: link(proxy, CALLER, OTHER_SERVER).bytes_dropped == len(b"lost"),
    )
    assert nothing_to_read(conn)
    conn.sendall(b"still arrives")
    assert receive_exactly(client, 13) == b"still arrives"
    dial(sockets, proxy, 1)
    eventually("black-holed", lambda: link(proxy, CALLER, OTHER_SERVER).black_holed == 1)
    assert not other_server.has_pending()
    proxy.heal()
    assert closed_by_peer(client)
    assert closed_by_peer(conn)


def test_cut_of_one_pair_is_not_transitive(
    proxy: FaultProxy, server: Server, other_server: Server, sockets: list[socket.socket]
) -> None:
    """A pair cut both ways leaves the caller's links to other hosts alone."""
    cut_client, cut_conn = connected_pair(sockets, proxy, other_server, 1)
    proxy.cut([(CALLER, OTHER_SERVER), (OTHER_SERVER, CALLER)])
    cut_client.sendall(b"x")
    eventually("dropped", lambda: link(proxy, CALLER, OTHER_SERVER).bytes_dropped == 1)
    assert nothing_to_read(cut_conn)
    client, conn = connected_pair(sockets, proxy, server, 0)
    client.sendall(b"fine")
    assert receive_exactly(conn, 4) == b"fine"


def test_loud_partition_resets_connections_across_the_cut(
    proxy: FaultProxy, other_server: Server, sockets: list[socket.socket]
) -> None:
    """``loud=True``: both ends of a connection across the cut are told at once, and
    a new connection across it is reset."""
    client, conn = connected_pair(sockets, proxy, other_server, 1)
    proxy.partition([[CALLER], [OTHER_SERVER]], loud=True)
    assert closed_by_peer(client)
    assert closed_by_peer(conn)
    assert closed_at_once(sockets, proxy, 1)
    assert not other_server.has_pending()


def test_a_refused_upstream_closes_the_caller(server: Server, sockets: list[socket.socket]) -> None:
    """Nothing listening behind the proxy: the caller's connection is closed."""
    with socket.socket() as probe:
        probe.bind((SERVER, 0))
        dead_port = probe.getsockname()[1]
    with FaultProxy([((SERVER, 0), (SERVER, dead_port))]) as refusing:
        assert closed_at_once(sockets, refusing, 0)
        assert refusing.open_connections() == 0


def test_max_connections_bounds_open_connections(
    server: Server, sockets: list[socket.socket]
) -> None:
    """Beyond ``max_connections`` a new connection is closed at once."""
    with FaultProxy([((SERVER, 0), (SERVER, server.port))], max_connections=1) as bounded:
        first = dial(sockets, bounded, 0)
        conn, _ = server.accept()
        assert closed_at_once(sockets, bounded, 0)
        first.sendall(b"ok")
        assert receive_exactly(conn, 2) == b"ok"


def test_close_stops_the_thread_and_frees_the_ports(
    server: Server, sockets: list[socket.socket]
) -> None:
    """close() ends every connection, the listening ports are free again, the
    thread is gone, a second close() is harmless and control calls then fail."""
    fault_proxy = FaultProxy([((SERVER, 0), (SERVER, server.port))])
    client, conn = connected_pair(sockets, fault_proxy, server, 0)
    address, port = fault_proxy.listening[0]
    fault_proxy.close()
    assert not fault_proxy._thread.is_alive()
    assert closed_by_peer(client)
    assert closed_by_peer(conn)
    with pytest.raises(ConnectionRefusedError):
        dial(sockets, fault_proxy, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((address, port))
        again.listen(1)
    fault_proxy.close()
    assert link(fault_proxy, CALLER, SERVER).forwarded == 1
    assert fault_proxy.open_connections() == 0
    with pytest.raises(ProxyError):
        fault_proxy.partition([[CALLER]])


def test_for_members_routes_each_member_to_itself() -> None:
    """`for_members` listens on (A, listen port) and forwards to (A, target port)."""
    members = ["127.0.0.2", "127.0.0.4"]
    # One target port shared by the members, as the peer port of a domain is.
    shared = free_port_on_all(members)
    servers = [Server(address, shared) for address in members]
    try:
        with FaultProxy.for_members(members, listen_port=0, target_port=shared) as fault_proxy:
            assert [address for address, _ in fault_proxy.listening] == members
            for index, srv in enumerate(servers):
                with socket.create_connection(
                    fault_proxy.listening[index], timeout=TIMEOUT, source_address=(CALLER, 0)
                ) as client:
                    conn, (peer, _) = srv.accept()
                    assert peer == CALLER
                    assert conn.getsockname() == (members[index], shared)
                    client.sendall(b"hi")
                    assert receive_exactly(conn, 2) == b"hi"
    finally:
        for srv in servers:
            srv.close()


@pytest.mark.parametrize(
    "routes",
    [
        [(("10.0.0.1", 0), (SERVER, 1))],
        [((SERVER, 0), ("192.168.1.1", 1))],
        [((SERVER, 0), (SERVER, 70000))],
        [],
    ],
)
def test_refuses_anything_but_loopback_routes(routes: list[tuple[tuple[str, int], ...]]) -> None:
    """Listening or forwarding outside 127.0.0.0/8, a bad port or no route: ValueError."""
    with pytest.raises(ValueError):
        FaultProxy(routes)  # type: ignore[arg-type]


def test_partition_refuses_bad_groups(proxy: FaultProxy) -> None:
    """A non-loopback host, or a host in two groups, is refused (and changes nothing)."""
    with pytest.raises(ValueError):
        proxy.partition([["8.8.8.8"]])
    with pytest.raises(ValueError):
        proxy.partition([[CALLER], [CALLER, SERVER]])
