"""Connection limits of the daemon's TCP listeners: caps, timeouts, TCP keepalive.

A peer on the network must not be able to use up the daemon's file descriptors
(then ``accept()`` fails for everybody, and the journal or the admin socket with
it), nor hold connections that never do anything. `LimitedFactory` wraps the
factory of a listener (a `twisted.protocols.policies.WrappingFactory`, outermost,
so outside TLS or SSH) and, for each accepted connection:

- refuses it at once when the listener already holds ``max_connections``
  connections (``global``), or ``per_source`` from the same address
  (``per_source``): the socket is closed before any protocol exists, or, for the
  client port, after one ``ERR`` line that says why (the client library then tries
  its next server or later);
- switches on TCP keepalive (``SO_KEEPALIVE``, with probes after a few minutes'
  silence), so connections of hosts that vanished are found and closed;
- closes it (abort, no goodbye) when it is not *established* within
  ``handshake_timeout`` seconds (the TLS handshake of the admin listener, the SSH
  login of the manhole), and when nothing at all was received for
  ``idle_timeout`` seconds.

Every open, close, refusal and timeout is reported to a `ConnectionEvents` (the
daemon's `hqnlsd.metrics.Metrics`), per listener. The client port's own idle
timeout lives in `hqnlsd.protocols.client.ClientProtocol` (it waits for replies
still owed), and the domain peer links have their own handshake and silence
watchdog (`hqnlsd.domain.peers`); here they get the cap and keepalive.

`ConnectionLimits` holds the settings (the ``[limits]`` table of the config file);
`client_connection_cap` derives the client port's cap from ``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

#: Labels of the limited listeners (the ``listener`` label of the metrics).
LISTENERS = ("client", "admin_tls", "peer", "metrics", "manhole", "web", "web_tls")

#: TCP keepalive timing: first probe after this much silence, then every
#: KEEPALIVE_INTERVAL, and the connection is dropped after KEEPALIVE_COUNT unanswered.
KEEPALIVE_IDLE = 300
KEEPALIVE_INTERVAL = 60
KEEPALIVE_COUNT = 5

#: Seconds a refused connection may linger, draining what its client sent, so
#: that its ERR line is not lost to a reset.
REFUSAL_LINGER = 1.0
#: Refused connections of a listener that may hold a descriptor at once (writing
#: their ERR line, lingering). Twisted accepts a growing burst of connections per
#: reactor turn under load, so without this bound a flood of refused connections
#: could use descriptors the reserve keeps for the journal and the admins; over
#: it, a refused socket is closed at once, without its line.
MAX_LINGERING = 16

#: One log line per listener at most this often for refused connections.
REFUSAL_LOG_INTERVAL = 60.0

_log = Logger(namespace="hqnlsd.limits")


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """The ``[limits]`` settings (seconds and connection counts; None: no limit)."""

    #: A client connection that sends nothing for this long is closed (None: never).
    client_idle_timeout: float | None = 900.0
    #: Client connections one source address may hold at once (None: no cap).
    client_per_source: int | None = 64
    #: Client connections at once (None: derived from RLIMIT_NOFILE, see
    #: `client_connection_cap`).
    client_max_connections: int | None = None
    #: Descriptors kept from the client port for the journal, logs and admin sockets.
    descriptor_reserve: int = 64
    #: Connections at once on each other TCP listener (admin TLS, peers, metrics, web,
    #: manhole).
    listener_max_connections: int = 32
    #: TLS handshake (admin TLS) and SSH login (manhole) deadline.
    handshake_timeout: float = 10.0
    #: An admin TLS connection that sends nothing for this long is closed (None: never).
    admin_idle_timeout: float | None = 3600.0
    #: A metrics connection that sends nothing for this long is closed.
    metrics_idle_timeout: float = 60.0
    #: A web console connection that sends nothing for this long is closed.
    web_idle_timeout: float = 60.0
    #: SO_KEEPALIVE on every accepted TCP connection.
    keepalive: bool = True
    #: Seconds over which repeated bad lines, MESSAGEs and denials of one source
    #: address are counted before one summary line (`hqnlsd.logging.badinput`).
    log_interval: float = 60.0
    #: Denied REQUESTs of one source address logged and recorded one by one per
    #: log_interval; the rest are counted and summarised (`hqnlsd.logging.denials`).
    denials_logged: int = 20

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> ConnectionLimits:
        """Build from field values (a timeout or cap of 0 means none; ``"auto"`` for
        client_max_connections means derived); ValueError naming the field."""
        known = {field.name: field for field in dataclasses.fields(cls)}
        settings: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown limit {name!r}")
            settings[name] = _checked(name, value)
        return cls(**settings)


# Fields where 0 means "none" (the others must be positive).
_ZERO_IS_NONE = frozenset(
    {"client_idle_timeout", "client_per_source", "client_max_connections", "admin_idle_timeout"}
)
_COUNTS = frozenset(
    {
        "client_per_source",
        "client_max_connections",
        "descriptor_reserve",
        "listener_max_connections",
        "denials_logged",
    }
)


def _checked(name: str, value: object) -> object:
    """One `ConnectionLimits` field value, checked; ValueError naming it."""
    if name == "keepalive":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return value
    if name == "client_max_connections" and value == "auto":
        return None
    integer = name in _COUNTS
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be {'a whole number' if integer else 'seconds'}")
    if integer and not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number, zero or more, not {value!r}")
    if value == 0:
        if name in _ZERO_IS_NONE:
            return None
        if name != "descriptor_reserve":
            raise ValueError(f"{name} must be more than 0")
    return value if integer else float(value)


def client_connection_cap(
    limits: ConnectionLimits, *, other_listeners: int, nofile: int | None = None
) -> int:
    """How many client connections the daemon holds at once.

    At most the soft ``RLIMIT_NOFILE`` (``nofile``, default: this process's)
    minus the descriptor reserve and minus ``listener_max_connections`` for each
    of the ``other_listeners`` TCP listeners: so a full client port never leaves
    the journal, the admin sockets, admins and peers without a descriptor. An
    explicit ``client_max_connections`` is used when it is lower. Never below 1.
    """
    if nofile is None:
        nofile = soft_nofile()
    room = nofile - limits.descriptor_reserve - limits.listener_max_connections * other_listeners
    cap = (
        room if limits.client_max_connections is None else min(limits.client_max_connections, room)
    )
    return max(1, cap)


def soft_nofile() -> int:
    """This process's soft limit of open descriptors (a large number if unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class ConnectionEvents(Protocol):
    """What a limited listener reports (`hqnlsd.metrics.Metrics` implements it)."""

    def connection_opened(self, listener: str) -> None:
        """A connection was accepted."""

    def connection_closed(self, listener: str) -> None:
        """An accepted connection is gone."""

    def connection_refused(self, listener: str, reason: str) -> None:
        """A connection was refused at once (``per_source`` or ``global``)."""

    def connection_timed_out(self, listener: str, reason: str) -> None:
        """A connection was closed by a timeout (``idle`` or ``handshake``)."""


class Clock(Protocol):
    """The part of the reactor the limits use (task.Clock fits)."""

    def seconds(self) -> float:
        """Now."""
        ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> IDelayedCall:
        """Call later."""
        ...


def enable_keepalive(transport: object) -> None:
    """SO_KEEPALIVE on ``transport`` (a TCP transport; others are left alone), with
    probes after KEEPALIVE_IDLE seconds of silence where the platform allows."""
    set_keepalive = getattr(transport, "setTcpKeepAlive", None)
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if isinstance(handle, socket.socket) and handle.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return  # a UNIX socket (its transport has the TCP methods too)
    if set_keepalive is None:
        return
    with contextlib.suppress(OSError):
        set_keepalive(1)
    if not isinstance(handle, socket.socket):
        return
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        number = getattr(socket, option, None)
        if number is not None:
            # Not supported here: the system's keepalive timing stays.
            with contextlib.suppress(OSError):
                handle.setsockopt(socket.IPPROTO_TCP, number, value)


class _Refusal(TwistedProtocol):
    """Writes one line and closes: what a client over a cap gets.

    Closing a socket that holds unread input makes the kernel answer with a reset,
    which destroys the line in flight: a client that sent its request at once
    would see a reset instead of the reason. So the refusal half-closes (the line
    and then end of stream reach the client), reads and drops what the client
    sends, and closes when the client does, or after ``REFUSAL_LINGER`` seconds.
    At most ``MAX_LINGERING`` refusals of a listener exist at once (a flood of
    refused connections must not hold descriptors): `LimitedFactory` closes the
    socket of any further one at once, without a line.
    """

    def __init__(self, message: bytes, factory: LimitedFactory) -> None:
        self.message = message
        self.owner = factory
        self._lingering = True
        factory.lingering += 1
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        assert transport is not None
        transport.write(self.message)
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        self._timer = self.owner.clock.callLater(REFUSAL_LINGER, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        """What a refused client sends is dropped."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._lingering:
            self._lingering = False
            self.owner.lingering -= 1


class LimitedProtocol(ProtocolWrapper):
    """One accepted connection under its listener's limits (see the module docstring)."""

    factory: LimitedFactory

    def __init__(self, factory: LimitedFactory, wrappedProtocol: Any, source: str) -> None:
        super().__init__(factory, wrappedProtocol)
        self.source = source
        self._last_data = 0.0
        self._timer: IDelayedCall | None = None
        self._handshaking = False
        self._closed = False

    def makeConnection(self, transport: Any) -> None:
        """Register, switch keepalive on, start the handshake or idle timer."""
        factory = self.factory
        if factory.keepalive:
            enable_keepalive(transport)
        self._last_data = factory.clock.seconds()
        if factory.handshake_timeout is not None:
            self._handshaking = True
            self._arm(factory.handshake_timeout)
        elif factory.idle_timeout is not None:
            self._arm(factory.idle_timeout)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        """Note the time (the idle timer looks at it), and pass the data on."""
        self._last_data = self.factory.clock.seconds()
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the timer, unregister, tell the wrapped protocol."""
        self._closed = True
        self._disarm()
        super().connectionLost(reason)

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.factory.clock.callLater(delay, self._check)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._closed:
            return
        factory = self.factory
        now = factory.clock.seconds()
        if self._handshaking:
            established = factory.established
            if established is None or not established(self.wrappedProtocol):
                self._time_out("handshake")
                return
            self._handshaking = False
        idle = factory.idle_timeout
        if idle is None:
            return
        silent = now - self._last_data
        if silent >= idle:
            self._time_out("idle")
        else:
            self._arm(idle - silent)

    def _time_out(self, reason: str) -> None:
        factory = self.factory
        # Counted, not logged: a flood of silent connections must not flood the log.
        if factory.events is not None:
            factory.events.connection_timed_out(factory.listener, reason)
        self._closed = True
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif self.transport is not None:
            self.transport.loseConnection()


class LimitedFactory(WrappingFactory[LimitedProtocol]):
    """Wraps a listener's factory with its connection limits (see the module docstring).

    :param listener: the listener's label in metrics and logs (`LISTENERS`).
    :param clock: the reactor (``seconds`` and ``callLater``; task.Clock in tests).
    :param max_connections: connections at once (None: no cap).
    :param per_source: connections at once from one address (None: no cap).
    :param handshake_timeout: seconds for ``established(protocol)`` to become true
        (asked once, at the deadline, of the wrapped protocol; None: no deadline).
    :param idle_timeout: seconds without a byte received (None: no limit).
    :param keepalive: switch SO_KEEPALIVE on.
    :param events: where opens, closes, refusals and timeouts are reported.
    :param refusal: the bytes a refused connection gets before it is closed (None:
        it is closed before any protocol is built).
    """

    protocol = LimitedProtocol

    def __init__(
        self,
        wrappedFactory: Any,
        *,
        listener: str,
        clock: Clock,
        max_connections: int | None = None,
        per_source: int | None = None,
        handshake_timeout: float | None = None,
        established: Callable[[Any], bool] | None = None,
        idle_timeout: float | None = None,
        keepalive: bool = True,
        events: ConnectionEvents | None = None,
        refusal: bytes | None = None,
    ) -> None:
        super().__init__(wrappedFactory)
        self.listener = listener
        self.clock = clock
        self.max_connections = max_connections
        self.per_source = per_source
        self.handshake_timeout = handshake_timeout
        self.established = established
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.events = events
        self.refusal = refusal
        self.by_source: Counter[str] = Counter()
        #: Refusals that hold a descriptor: writing their line, draining (`_Refusal`).
        self.lingering = 0
        self._refused_since_log = 0
        self._last_refusal_log: float | None = None

    def buildProtocol(self, addr: Any) -> Any:
        """The wrapped protocol, or a refusal (or None) when a cap is reached."""
        source = addr.host if isinstance(addr, IPv4Address | IPv6Address) else ""
        reason = None
        if self.max_connections is not None and len(self.protocols) >= self.max_connections:
            reason = "global"
        elif self.per_source is not None and source and self.by_source[source] >= self.per_source:
            reason = "per_source"
        if reason is not None:
            self._refused(source, reason)
            if self.refusal is None or self.lingering >= MAX_LINGERING:
                return None  # Twisted closes the socket at once
            return _Refusal(self.refusal, self)
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped, source)

    def registerProtocol(self, p: Any) -> None:
        """Count an accepted connection (per source, too)."""
        super().registerProtocol(p)
        self.by_source[p.source] += 1
        if self.events is not None:
            self.events.connection_opened(self.listener)

    def unregisterProtocol(self, p: Any) -> None:
        """Forget a closed connection."""
        if p in self.protocols:
            self.by_source[p.source] -= 1
            if self.by_source[p.source] <= 0:
                del self.by_source[p.source]
            if self.events is not None:
                self.events.connection_closed(self.listener)
        super().unregisterProtocol(p)

    def _refused(self, source: str, reason: str) -> None:
        """Count a refusal; log one line per REFUSAL_LOG_INTERVAL at most."""
        if self.events is not None:
            self.events.connection_refused(self.listener, reason)
        self._refused_since_log += 1
        now = self.clock.seconds()
        last = self._last_refusal_log
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        cap = self.max_connections if reason == "global" else self.per_source
        which = "in all" if reason == "global" else f"from {source}"
        _log.warn(
            "{listener}: refused {count} connection(s) since the last report: at most "
            "{cap} at once {which} ([limits] of the configuration)",
            listener=self.listener,
            count=self._refused_since_log,
            cap=cap,
            which=which,
        )
        self._refused_since_log = 0
        self._last_refusal_log = now


# -- the daemon's listeners ---------------------------------------------------------------


def tls_established(protocol: Any) -> bool:
    """Has the TLS handshake of ``protocol`` (a TLSMemoryBIOProtocol of the mutual-TLS
    admin listener) completed? It has once the client's certificate is known."""
    try:
        return protocol.getPeerCertificate() is not None
    except Exception:
        return False


def ssh_logged_in(protocol: Any) -> bool:
    """Has the SSH client of ``protocol`` (an SSHServerTransport) logged in? After a
    successful login its service is the connection service."""
    from twisted.conch.ssh.connection import SSHConnection

    return isinstance(getattr(protocol, "service", None), SSHConnection)


def _client_refusal() -> bytes:
    from hqnlsd.protocols.replies import Err, format_reply
    from hqnlsd.status import Status

    return format_reply(
        Err(
            Status.NOTVERIFIED,
            "too many connections to this server; try again later or another server",
        )
    )


def _set_site_timeout(factory: Any, seconds: float) -> None:
    """Set twisted.web's own idle timer of a site (under a TLS factory, or not)."""
    site = getattr(factory, "wrappedFactory", factory)
    if hasattr(site, "timeOut"):
        site.timeOut = seconds


def limit_listener(
    listener: str,
    factory: Any,
    limits: ConnectionLimits,
    clock: Clock,
    events: ConnectionEvents | None,
    *,
    client_cap: int | None = None,
) -> LimitedFactory:
    """``factory`` wrapped with the limits ``limits`` sets for ``listener`` (`LISTENERS`).

    - ``client``: at most ``client_cap`` connections, ``client_per_source`` per
      address, refused with one ``ERR NOTVERIFIED`` line; its idle timeout is the
      client protocol's own;
    - ``admin_tls``: the TLS handshake within ``handshake_timeout``, then
      ``admin_idle_timeout``;
    - ``manhole``: the SSH login within ``handshake_timeout``, then no idle limit;
    - ``metrics``: ``metrics_idle_timeout`` (also the HTTP site's own timeout);
    - ``web``: ``web_idle_timeout`` (also the HTTP site's own timeout); ``web_tls``:
      the same, the TLS handshake within ``handshake_timeout``, and one address at
      most a quarter of ``listener_max_connections``;
    - ``peer``: the peer links watch their own handshake and silence;
    - every one: keepalive, and the others at most ``listener_max_connections``.
    """
    common: dict[str, Any] = {
        "listener": listener,
        "clock": clock,
        "keepalive": limits.keepalive,
        "events": events,
    }
    if listener == "client":
        limited = LimitedFactory(
            factory,
            max_connections=client_cap,
            per_source=limits.client_per_source,
            refusal=_client_refusal(),
            **common,
        )
    elif listener == "admin_tls":
        limited = LimitedFactory(
            factory,
            max_connections=limits.listener_max_connections,
            handshake_timeout=limits.handshake_timeout,
            established=tls_established,
            idle_timeout=limits.admin_idle_timeout,
            **common,
        )
    elif listener == "manhole":
        limited = LimitedFactory(
            factory,
            max_connections=limits.listener_max_connections,
            handshake_timeout=limits.handshake_timeout,
            established=ssh_logged_in,
            **common,
        )
    elif listener == "metrics":
        _set_site_timeout(factory, limits.metrics_idle_timeout)  # twisted.web's own timer
        limited = LimitedFactory(
            factory,
            max_connections=limits.listener_max_connections,
            idle_timeout=limits.metrics_idle_timeout,
            **common,
        )
    elif listener in ("web", "web_tls"):
        _set_site_timeout(factory, limits.web_idle_timeout)
        tls = listener == "web_tls"
        limited = LimitedFactory(
            factory,
            max_connections=limits.listener_max_connections,
            # Beyond loopback one address holds at most a quarter (on loopback every
            # local user is the same address).
            per_source=max(1, limits.listener_max_connections // 4) if tls else None,
            handshake_timeout=limits.handshake_timeout if tls else None,
            established=tls_established if tls else None,
            idle_timeout=limits.web_idle_timeout,
            **common,
        )
    elif listener == "peer":
        limited = LimitedFactory(factory, max_connections=limits.listener_max_connections, **common)
    else:
        raise ValueError(f"unknown listener {listener!r}")
    limited.noisy = False
    return limited
