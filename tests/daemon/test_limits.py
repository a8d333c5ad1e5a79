# mypy: allow-untyped-calls
"""The connection limits of every listener (`hqnlsd.limits`), on task.Clock and StringTransport."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from hqnlsd.limits import (
    MAX_LINGERING,
    REFUSAL_LINGER,
    ConnectionLimits,
    LimitedFactory,
    client_connection_cap,
    limit_listener,
)
from hqnlsd.metrics import Metrics
from hqnlsd.protocols.client import ClientProtocolFactory


class Events:
    """Records what the limiting factory reports (as `hqnlsd.metrics.Metrics` would)."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self.refused: Counter[tuple[str, str]] = Counter()
        self.timed_out: Counter[tuple[str, str]] = Counter()

    def connection_opened(self, listener: str) -> None:
        self.open[listener] += 1

    def connection_closed(self, listener: str) -> None:
        self.open[listener] -= 1

    def connection_refused(self, listener: str, reason: str) -> None:
        self.refused[(listener, reason)] += 1

    def connection_timed_out(self, listener: str, reason: str) -> None:
        self.timed_out[(listener, reason)] += 1


class Echo(Protocol):
    """The wrapped protocol: remembers what it got."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


class KeepAliveTransport(StringTransport):
    """A StringTransport that remembers setTcpKeepAlive and abortConnection."""

    def __init__(self, host: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.keepalive: int | None = None
        self.aborted = False

    def setTcpKeepAlive(self, enabled: int) -> None:
        self.keepalive = enabled

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


def connect(factory: LimitedFactory, host: str) -> tuple[Protocol | None, KeepAliveTransport]:
    """Accept one connection from ``host`` as a TCP port would (None: refused at once)."""
    transport = KeepAliveTransport(host)
    protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
    if protocol is not None:
        protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: Protocol | None) -> None:
    assert protocol is not None
    protocol.connectionLost(None)  # type: ignore[arg-type]


def echo_factory() -> Factory:
    return Factory.forProtocol(Echo)


def test_per_source_cap_refuses_the_next_connection_of_that_address_only() -> None:
    """Over the per-source cap a connection is closed at once with its ERR line; another
    address still gets in, and the address gets in again once one of its own closed."""
    events = Events()
    factory = LimitedFactory(
        echo_factory(),
        listener="client",
        clock=Clock(),
        max_connections=10,
        per_source=2,
        events=events,
        refusal=b"ERR busy\r\n",
    )
    first, _ = connect(factory, "10.0.0.1")
    connect(factory, "10.0.0.1")
    _refused, transport = connect(factory, "10.0.0.1")
    assert transport.value() == b"ERR busy\r\n"
    assert transport.disconnecting
    assert events.refused == {("client", "per_source"): 1}
    _other, other_transport = connect(factory, "10.0.0.2")
    assert not other_transport.disconnecting and other_transport.value() == b""
    assert events.open["client"] == 3
    lose(first)
    assert events.open["client"] == 2
    _, again = connect(factory, "10.0.0.1")
    assert not again.disconnecting
    assert events.open["client"] == 3


class HalfCloseTransport(KeepAliveTransport):
    """A TCP-like transport that can close its write half only."""

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def test_a_refusal_half_closes_and_drains_so_its_line_is_not_lost_to_a_reset() -> None:
    """Closing with unread input makes the kernel send a reset that destroys the ERR
    line: the refusal half-closes, drops what the client sends, and closes when the
    client does or after REFUSAL_LINGER. At most MAX_LINGERING refusals hold a
    descriptor at once: a further refused socket is closed at once, without a line
    (Twisted accepts a growing burst per reactor turn, and each refusal with a line
    holds its descriptor until its write is done)."""
    clock = Clock()
    factory = LimitedFactory(
        echo_factory(), listener="client", clock=clock, max_connections=0,
        refusal=b"ERR busy\r\n",
    )
    lingering = []
    for n in range(MAX_LINGERING):
        transport = HalfCloseTransport(f"10.0.1.{n}")
        refusal = factory.buildProtocol(IPv4Address("TCP", f"10.0.1.{n}", 40000))
        assert refusal is not None
        refusal.makeConnection(transport)
        lingering.append((refusal, transport))
    for refusal, transport in lingering:
        assert transport.value() == b"ERR busy\r\n"
        assert transport.write_closed and not transport.disconnecting
        refusal.dataReceived(b"REQUEST publisher=x\n")  # dropped, no answer
        assert transport.value() == b"ERR busy\r\n"
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.2.1", 40000)) is None
    first, _ = lingering[0]
    first.connectionLost(None)  # type: ignore[arg-type]  # the client closed
    assert factory.lingering == MAX_LINGERING - 1
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.2.2", 40000)) is not None
    clock.advance(REFUSAL_LINGER)
    assert all(t.aborted for _, t in lingering[1:])
    assert not lingering[0][1].aborted


def test_refusals_without_half_close_close_at_once_and_are_counted_out() -> None:
    """On a transport that cannot half-close, the refusal writes its line and closes;
    its descriptor is counted until the connection is lost."""
    factory = LimitedFactory(
        echo_factory(), listener="client", clock=Clock(), max_connections=0,
        refusal=b"ERR busy\r\n",
    )
    refusal, transport = connect(factory, "10.0.3.1")
    assert refusal is not None and transport.disconnecting
    assert transport.value() == b"ERR busy\r\n" and factory.lingering == 1
    lose(refusal)
    assert factory.lingering == 0


def test_global_cap_refuses_every_address() -> None:
    """At the global cap nobody new gets in (the refusal is counted as global)."""
    events = Events()
    factory = LimitedFactory(
        echo_factory(), listener="client", clock=Clock(), max_connections=3, events=events
    )
    held = [connect(factory, f"10.0.0.{n}")[0] for n in range(1, 4)]
    protocol, transport = connect(factory, "10.0.0.9")
    assert protocol is None or transport.disconnecting
    assert events.refused == {("client", "global"): 1}
    lose(held[0])
    _, transport = connect(factory, "10.0.0.9")
    assert not transport.disconnecting


def test_refused_without_a_message_is_not_even_built() -> None:
    """A listener with no refusal line closes the socket before any protocol exists."""
    factory = LimitedFactory(echo_factory(), listener="metrics", clock=Clock(), max_connections=1)
    connect(factory, "127.0.0.1")
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None


def test_keepalive_is_switched_on_unless_disabled() -> None:
    """Every accepted TCP connection gets SO_KEEPALIVE (unless keepalive=False)."""
    on = LimitedFactory(echo_factory(), listener="client", clock=Clock())
    _, transport = connect(on, "10.0.0.1")
    assert transport.keepalive == 1
    off = LimitedFactory(echo_factory(), listener="client", clock=Clock(), keepalive=False)
    _, transport = connect(off, "10.0.0.1")
    assert transport.keepalive is None


def test_idle_timeout_closes_a_silent_connection_and_data_resets_it() -> None:
    """Silent for idle_timeout seconds: aborted and counted; every byte received restarts it."""
    clock = Clock()
    events = Events()
    factory = LimitedFactory(
        echo_factory(), listener="metrics", clock=clock, idle_timeout=10.0, events=events
    )
    protocol, transport = connect(factory, "127.0.0.1")
    assert protocol is not None
    clock.advance(8)
    protocol.dataReceived(b"GET")
    clock.advance(8)
    assert not transport.aborted
    clock.advance(2.5)
    assert transport.aborted
    assert events.timed_out == {("metrics", "idle"): 1}
    lose(protocol)
    assert not clock.getDelayedCalls()


def test_handshake_timeout_closes_unless_established() -> None:
    """A connection not established within handshake_timeout is aborted, data or not;
    an established one then only has the idle timeout."""
    clock = Clock()
    events = Events()
    done = {"value": False}
    factory = LimitedFactory(
        echo_factory(),
        listener="admin_tls",
        clock=clock,
        handshake_timeout=5.0,
        established=lambda protocol: done["value"],
        idle_timeout=30.0,
        events=events,
    )
    slow, slow_transport = connect(factory, "127.0.0.1")
    assert slow is not None
    for _ in range(4):
        clock.advance(1)
        slow.dataReceived(b"x")  # trickling bytes do not keep a handshake alive
    clock.advance(1.5)
    assert slow_transport.aborted
    assert events.timed_out == {("admin_tls", "handshake"): 1}
    lose(slow)
    fine, fine_transport = connect(factory, "127.0.0.1")
    assert fine is not None
    done["value"] = True
    clock.advance(6)
    assert not fine_transport.aborted
    clock.advance(25)
    assert fine_transport.aborted
    assert events.timed_out[("admin_tls", "idle")] == 1


def test_handshake_without_idle_timeout_keeps_an_established_connection() -> None:
    """The manhole: a login deadline, and no limit on an open shell's silence."""
    clock = Clock()
    factory = LimitedFactory(
        echo_factory(),
        listener="manhole",
        clock=clock,
        handshake_timeout=5.0,
        established=lambda protocol: True,
    )
    _, transport = connect(factory, "127.0.0.1")
    clock.advance(3600)
    assert not transport.aborted
    assert not clock.getDelayedCalls()


def test_wrapped_protocol_sees_the_data_and_the_peer() -> None:
    """The wrapper is transparent: data and the peer's address reach the wrapped protocol."""
    factory = LimitedFactory(echo_factory(), listener="client", clock=Clock())
    protocol, _ = connect(factory, "10.1.2.3")
    assert protocol is not None
    protocol.dataReceived(b"hello")
    inner = protocol.wrappedProtocol  # type: ignore[attr-defined]
    assert inner.received == b"hello"
    assert inner.transport.getPeer().host == "10.1.2.3"


def test_metrics_count_connections_refusals_and_timeouts() -> None:
    """Metrics implements the events: open gauge, refusals and timeouts by reason."""
    metrics = Metrics(runtime=False)
    clock = Clock()
    factory = LimitedFactory(
        echo_factory(),
        listener="client",
        clock=clock,
        max_connections=5,
        per_source=1,
        idle_timeout=1.0,
        events=metrics,
    )
    metrics.set_connection_limit("client", 5)
    connect(factory, "10.0.0.1")
    connect(factory, "10.0.0.1")
    clock.advance(2)
    text = metrics.exposition()[0].decode()
    assert 'hqnlsd_connections_open{listener="client"} 1.0' in text
    assert 'hqnlsd_connections_refused_total{listener="client",reason="per_source"} 1.0' in text
    assert 'hqnlsd_connections_timed_out_total{listener="client",reason="idle"} 1.0' in text
    assert 'hqnlsd_connection_limit{listener="client"} 5.0' in text


# -- the client port's cap from the descriptor limit ------------------------------------


def test_client_cap_leaves_the_reserve_and_the_other_listeners_room() -> None:
    """auto: soft RLIMIT_NOFILE minus the reserve minus the other listeners' caps."""
    limits = ConnectionLimits(descriptor_reserve=64, listener_max_connections=32)
    assert client_connection_cap(limits, other_listeners=0, nofile=512) == 448
    assert client_connection_cap(limits, other_listeners=2, nofile=512) == 384
    explicit = ConnectionLimits(client_max_connections=100)
    assert client_connection_cap(explicit, other_listeners=0, nofile=512) == 100


def test_client_cap_never_exceeds_what_the_descriptors_allow() -> None:
    """An explicit cap above what the descriptor limit allows is lowered to it; a limit
    too small for the reserve still leaves one client connection (and says so)."""
    explicit = ConnectionLimits(client_max_connections=100000)
    assert client_connection_cap(explicit, other_listeners=0, nofile=512) == 448
    assert client_connection_cap(ConnectionLimits(), other_listeners=0, nofile=40) == 1


def test_limits_from_mapping_checks_values() -> None:
    """The [limits] table's values, dashed names as in the file; 0 turns a timeout off."""
    limits = ConnectionLimits.from_mapping(
        {"client_idle_timeout": 0, "client_per_source": 5, "client_max_connections": "auto"}
    )
    assert limits.client_idle_timeout is None
    assert limits.client_per_source == 5
    assert limits.client_max_connections is None
    with pytest.raises(ValueError, match="client_per_source"):
        ConnectionLimits.from_mapping({"client_per_source": -1})
    with pytest.raises(ValueError, match="handshake_timeout"):
        ConnectionLimits.from_mapping({"handshake_timeout": 0})


# -- the client protocol's own idle timeout ---------------------------------------------


def test_client_idle_close_is_reported() -> None:
    """The client protocol's idle close (which waits for pending replies) is counted."""
    clock = Clock()
    closed: list[str] = []

    class Never:
        def dispatch(self, command: object, peer: object) -> object:
            raise AssertionError("no command is sent")

    factory = ClientProtocolFactory(
        Never(),  # type: ignore[arg-type]
        clock,
        idle_timeout=5.0,
        on_idle_close=lambda: closed.append("idle"),
    )
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1))
    protocol.makeConnection(transport)
    clock.advance(6)
    assert transport.disconnecting
    assert closed == ["idle"]


# -- the [limits] table of the configuration file ---------------------------------------


def test_config_file_limits_table_reaches_the_daemon_config(tmp_path: Path) -> None:
    """[limits] keys (dashed) become the DaemonConfig's ConnectionLimits."""
    from hqnlsd.configfile import config_from

    (tmp_path / "keys").mkdir()
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    path = tmp_path / "hqnlsd.toml"
    path.write_text(
        'hosts = "hosts"\npublisher-keys = "keys"\nstate-dir = "state"\n'
        "[limits]\nclient-idle-timeout = 0\nclient-per-source = 8\n"
        "client-max-connections = 100\nhandshake-timeout = 2.5\nkeepalive = false\n"
    )
    config = config_from({"config": str(path)})
    assert config.limits == ConnectionLimits(
        client_idle_timeout=None,
        client_per_source=8,
        client_max_connections=100,
        handshake_timeout=2.5,
        keepalive=False,
    )
    assert (
        config_from(
            {
                "config": None,
                "hosts": str(tmp_path / "hosts"),
                "publisher-keys": str(tmp_path / "keys"),
            }
        ).limits
        == ConnectionLimits()
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("client_per_source = 3", "unknown key 'client_per_source' in [limits] (did you mean"),
        ("client-per-source = -1", "limits.client-per-source must be a finite number"),
        ("handshake-timeout = 0", "limits.handshake-timeout must be more than 0"),
        ('client-max-connections = "lots"', "limits.client-max-connections must be"),
        ("keepalive = 1", "limits.keepalive must be true or false"),
    ],
)
def test_config_file_limits_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    """A wrong [limits] key or value is an error naming the file and the key."""
    from hqnlsd.configfile import ConfigFileError, load_config_file

    path = tmp_path / "hqnlsd.toml"
    path.write_text(f"[limits]\n{table}\n")
    with pytest.raises(ConfigFileError, match=re.escape(message)):
        load_config_file(path)


def test_keepalive_timing_is_set_on_a_real_socket() -> None:
    """On a real TCP socket: SO_KEEPALIVE on, first probe after KEEPALIVE_IDLE seconds."""
    import socket

    from hqnlsd.limits import KEEPALIVE_IDLE, enable_keepalive

    class Transport:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def setTcpKeepAlive(self, enabled: int) -> None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

        def getHandle(self) -> socket.socket:
            return self.sock

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        enable_keepalive(Transport(sock))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE


def test_keepalive_leaves_unix_sockets_alone() -> None:
    """A UNIX socket listener (``unix:`` description): its transport has the TCP
    methods, but keepalive is not asked of it."""
    import socket

    from hqnlsd.limits import enable_keepalive

    calls: list[int] = []

    class Transport:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def setTcpKeepAlive(self, enabled: int) -> None:
            calls.append(enabled)

        def getHandle(self) -> socket.socket:
            return self.sock

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        enable_keepalive(Transport(sock))
    assert calls == []


def test_the_remote_web_console_caps_each_address_to_a_quarter_of_its_connections() -> None:
    """The console served beyond loopback (``web_tls``) lets one address hold at most a
    quarter of ``listener_max_connections``: one remote client cannot take every
    connection (each waits out the TLS handshake deadline). On loopback (``web``),
    where every local user is 127.0.0.1, there is no per-address cap."""
    limits = ConnectionLimits(listener_max_connections=8)
    events = Events()
    remote = limit_listener("web_tls", echo_factory(), limits, Clock(), events)
    taken = [connect(remote, "10.0.0.9") for _ in range(2)]
    assert all(protocol is not None for protocol, _ in taken)
    refused, _ = connect(remote, "10.0.0.9")
    assert refused is None  # closed before any protocol is built
    assert events.refused == {("web_tls", "per_source"): 1}
    other, _ = connect(remote, "10.0.0.10")
    assert other is not None
    local = limit_listener("web", echo_factory(), limits, Clock(), Events())
    assert all(connect(local, "127.0.0.1")[0] is not None for _ in range(8))
