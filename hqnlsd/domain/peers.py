"""Peer links between domain members: one JSON object a line over mutual TLS.

Topology: every member listens on its peer port (bound to its own address) and
keeps one outgoing link to every other member of the domains it shares with
it, with a `ClientService` that reconnects with `backoffPolicy`; when a peer
whose link we are backing off from reaches us (it restarted), we dial it at
once with a fresh backoff, so that it is heard without delay. A member sends
its domain messages on its *outgoing* link to the addressee and receives on
any link, so each direction of a pair has its own TCP connection and nothing
has to decide who dials whom. One link serves every domain two hosts share.

Wire (UTF-8 JSON, one object a line, at most `MAX_LINE` bytes)::

    {"t": "hello", "v": 1, "addr": "127.0.0.1", "domains": {"<domain id>": <rank>, ...}}
    {"t": "m", "d": "<domain id>", "m": <hqnlsd.domain.messages.encode(message)>}
    {"t": "ping", "n": 7}          {"t": "pong", "n": 7}
    {"t": "call", "id": 3, "d": "<domain id>", "body": {...}}
    {"t": "reply", "id": 3, "ok": true, "body": {...}}
    {"t": "reply", "id": 3, "ok": false, "error": "NAME", "message": "..."}

Calls: `PeerNetwork.call` asks a member of a shared domain to do something
(an admin change on the domain's acting primary, see `hqnlsd.admin.handler`)
and fires with the reply's body, or fails with `PeerCallError` (the callee's
error, no link, or no reply within the timeout). The callee runs
``call_handler(domain id, caller address, body)`` only for a domain the
link agreed on in the hellos, and replies on the link the call came in on.

Who may connect: the TLS layer proves the certificate was issued by the
domain CA (`hqnlsd.tls.server_options` requires a client certificate). The
listener then requires `identify_peer` role MEMBER whose certificate address
is a member of one of this host's domains and (unless turned off for NAT) is
the connection's source address; outgoing links bind their source to this
host's address so that check holds. The dialler checks the server's address
with service_identity (`client_options`). A sender's rank in a domain comes
from *this* host's hosts file, never from the wire: a hello that claims another
rank makes this link ignore that domain (and log why).

TLS 1.3 quirk: a client's ``handshakeCompleted`` fires even if the server
then rejects its certificate, so an outgoing link counts as up only once the
peer's first application message (its hello) has arrived.

Liveness: the dialler pings every ``ping_interval``; either end drops a link
on which nothing arrived for ``ping_timeout`` (a half-open connection: the
peer's machine died or the network cut it), which tells the domain nodes
``disconnected`` and lets the `ClientService` reconnect. Per-peer state (up,
last seen, round-trip time) is kept for admin tools (`PeerNetwork.peers`).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from hqnlsd.domain.messages import Message, MessageError, decode, encode
from hqnlsd.domain.view import brief, is_whole
from hqnlsd.listeners import Listener
from hqnlsd.tls import (
    DomainCredentials,
    PeerNotRecognised,
    Role,
    client_options,
    identify_peer,
    server_options,
)

#: Version of the line protocol above.
PROTOCOL_VERSION = 1
#: The longest line accepted (a `Decided` carries the whole licence state).
MAX_LINE = 64 * 1024 * 1024
#: Default TCP port of the peer listener.
DEFAULT_PEER_PORT = 1237
#: Invalid input from one peer is logged at most once per this many seconds (the
#: line names the field at fault and how many were dropped since the last line).
INVALID_LOG_INTERVAL = 60.0
#: The error name of a call refused as malformed (wrong types: the admin wire's
#: BAD_REQUEST): counted and reported like invalid messages.
MALFORMED_CALL = "BAD_REQUEST"
#: This many invalid lines or messages from one peer within `INVALID_WINDOW`
#: seconds close the link they arrived on (the peer reconnects by its backoff).
INVALID_CLOSE_THRESHOLD = 20
INVALID_WINDOW = 60.0

Address = ipaddress.IPv4Address
#: Domain id -> the rank of every member, by address (from this host's hosts file).
Domains = Mapping[str, Mapping[Address, int]]


class PeerCallError(Exception):
    """A peer call failed: an error name (a licence status name or ``UNREACHABLE``,
    ``TIMEOUT``, ``INTERNAL``) and a message for people."""

    def __init__(self, name: str, message: str) -> None:
        """The error ``name`` with ``message``."""
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class PeerTimers:
    """Timers of the peer links, in seconds."""

    #: how often the dialler pings
    ping_interval: float = 0.5
    #: silence after which a link is dropped as half-open
    ping_timeout: float = 2.0
    #: longest wait for the TLS handshake and the peer's hello
    handshake_timeout: float = 5.0
    #: TCP connect timeout
    connect_timeout: float = 5.0
    #: reconnection backoff: first delay and ceiling
    retry_initial: float = 0.2
    retry_max: float = 2.0

    def __post_init__(self) -> None:
        """Refuse a timeout that a healthy link could trip."""
        if self.ping_timeout <= self.ping_interval:
            raise ValueError("ping_timeout must be longer than ping_interval")


@dataclass(frozen=True)
class PeerInfo:
    """One peer as admin tools see it (monotonic seconds)."""

    address: Address
    #: our outgoing link is up (the peer answered on it)
    up: bool
    #: the peer's link to us is connected and identified
    inbound: bool
    #: when the last line arrived from it, on either link (None: never)
    last_seen: float | None
    #: round-trip time of the last ping on our link (None: not measured)
    rtt: float | None
    #: how many times our outgoing link came up
    connects: int
    #: the domains this link serves (ids)
    domains: tuple[str, ...]
    #: lines and messages from it dropped as invalid
    invalid: int = 0
    #: links from or to it closed for repeated invalid input
    invalid_closes: int = 0


@dataclass
class _PeerState:
    address: Address
    outbound: PeerLink | None = None
    inbound: set[PeerLink] = field(default_factory=set)
    last_seen: float | None = None
    rtt: float | None = None
    connects: int = 0
    service: ClientService | None = None
    #: invalid input: total, closes, when last logged, dropped since, recent times
    invalid: int = 0
    invalid_closes: int = 0
    invalid_logged_at: float = -math.inf
    invalid_unlogged: int = 0
    invalid_closes_unlogged: int = 0
    invalid_recent: collections.deque[float] = field(default_factory=collections.deque)
    #: our dialler is waiting out a reconnection delay (no dial in progress)
    backing_off: bool = False

    def info(self, domains: tuple[str, ...]) -> PeerInfo:
        return PeerInfo(
            self.address,
            self.outbound is not None,
            any(link.identified for link in self.inbound),
            self.last_seen,
            self.rtt,
            self.connects,
            domains,
            self.invalid,
            self.invalid_closes,
        )


def _strict_constant(name: str) -> object:
    """JSON's NaN and Infinity are not JSON: refuse them (`json.loads` takes them)."""
    raise ValueError(f"{name} is not a JSON number")


#: Made once: `json.dumps` with options builds a new encoder for every call. The
#: same options as ``json.dumps(payload, separators=(",", ":"), allow_nan=False)``.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _json(payload: Mapping[str, object]) -> bytes:
    return _encode(payload).encode("utf-8")


def encode_message(domain_id: str, message: Message) -> bytes:
    """The line that carries ``message`` of ``domain_id`` (what `PeerLink.send_message`
    sends)."""
    return _json({"t": "m", "d": domain_id, "m": encode(message)})


@implementer(IHandshakeListener)
class PeerLink(LineOnlyReceiver):
    """One TLS connection to or from a peer member (see the module docstring)."""

    log = Logger()
    delimiter = b"\n"

    def __init__(self, network: PeerNetwork, outbound_to: Address | None) -> None:
        """A link for ``network``; ``outbound_to`` is the peer we dial (None: accepted)."""
        self.network = network
        self.outbound_to = outbound_to
        self.peer: Address | None = outbound_to
        self.identified = False
        self.up = False
        self.claimed: dict[str, int] = {}
        #: LineOnlyReceiver's bound, read from `MAX_LINE` as the link is made
        self.MAX_LENGTH = MAX_LINE
        #: pieces of an unfinished line not yet handed to LineOnlyReceiver (see
        #: `dataReceived`), and their length
        self._pieces: list[bytes] = []
        self._pending = 0
        self._started = 0.0
        self._last_line = 0.0
        self._ping_seq = 0
        self._ping_sent: dict[int, float] = {}
        self._timer: Any = None
        self._closed = False
        self._hello_seen = False

    # -- connection ----------------------------------------------------------------

    def connectionMade(self) -> None:
        """Start the watchdog (handshake, hello and silence timeouts)."""
        self._started = self._last_line = self.network.clock.seconds()
        self._schedule()

    def handshakeCompleted(self) -> None:
        """Identify the peer from its certificate; greet it if it may talk to us."""
        try:
            identity = identify_peer(self.transport, self.network.credentials.ca_certificate)
        except PeerNotRecognised as error:
            self._refuse(f"peer not recognised: {error}")
            return
        if identity.role is not Role.MEMBER or identity.address is None:
            self._refuse(f"{identity} is not a domain member")
            return
        self.admit(identity.address)

    def admit(self, address: Address) -> None:
        """The peer proved (by its certificate, see `handshakeCompleted`) to be the
        member ``address``: greet it if it may talk to us, else close the link.
        Tests of the link under the TLS layer call this in place of the handshake."""
        identity = f"member {address}"  # as `PeerIdentity` names it in logs
        if self.outbound_to is not None:
            if address != self.outbound_to:
                self._refuse(f"dialled {self.outbound_to} but {address} answered")
                return
        else:
            if address not in self.network.member_addresses() or address == self.network.me:
                self._refuse(f"{identity} is not a member of a domain this host serves")
                return
            source = getattr(self.transport.getPeer(), "host", None)  # type: ignore[union-attr]
            if self.network.check_source and source != str(address):
                self._refuse(f"{identity} connected from {source}, not from its own address")
                return
            self.peer = address
            self.network._inbound_identified(self)
        self.identified = True
        self._write(
            {
                "t": "hello",
                "v": PROTOCOL_VERSION,
                "addr": str(self.network.me),
                "domains": self.network.hello_domains(address),
            }
        )

    def dataReceived(self, data: bytes) -> None:
        """LineOnlyReceiver's framing, fed whole lines where it can: it joins its
        buffer to every piece received, which for a long line (a `Decided` can be
        megabytes, in pieces of at most 32 KiB under TLS) costs time quadratic in
        the line's length, so pieces without a line end are gathered here and
        handed over at once, as soon as a line ends or the bound is passed."""
        if self.delimiter not in data:
            self._pieces.append(data)
            self._pending += len(data)
            if len(self._buffer) + self._pending <= self.MAX_LENGTH:
                return
            data = b""
        if self._pieces:
            data = b"".join([*self._pieces, data])
            self._pieces, self._pending = [], 0
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line (even an unfinished one) longer than `MAX_LINE`: drop the link."""
        if not self._closed:
            self._refuse(f"a line longer than {self.MAX_LENGTH} bytes")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Forget the link; the network tells the domain nodes if it was up."""
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.network._link_lost(self)

    # -- lines ---------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """Handle one line (nothing more once the link is closed)."""
        if self._closed:
            return
        if not self.identified or self.peer is None:
            self._refuse("application data before the peer was identified")
            return
        now = self.network.clock.seconds()
        self._last_line = now
        self.network._seen(self.peer, now)
        try:
            payload = json.loads(line, parse_constant=_strict_constant)
            kind = payload["t"] if isinstance(payload, dict) else None
        except (ValueError, KeyError, TypeError, RecursionError):
            # RecursionError: nesting deeper than the JSON decoder's stack
            self.network._invalid(self, "line: not a JSON object with a type")
            return
        if kind == "m":
            self._message(payload)
        elif kind == "ping":
            number = payload.get("n")
            if is_whole(number):
                self._write({"t": "pong", "n": number})
            else:
                self.network._invalid(self, "ping.n: not a whole number")
        elif kind == "pong":
            number = payload.get("n")
            if not is_whole(number):
                self.network._invalid(self, "pong.n: not a whole number")
                return
            sent = self._ping_sent.pop(number, None)
            if sent is not None:
                self.network._rtt(self.peer, now - sent)
        elif kind == "hello":
            if self._hello_seen:
                # One hello per link: repeated ones would repeat its log lines.
                self.network._invalid(self, "hello: a second hello on this link")
                return
            self._hello_seen = True
            self._hello(payload)
        elif kind == "call":
            self._call(payload)
        elif kind == "reply":
            self.network._replied(self.peer, payload)
        else:
            self.network._invalid(self, f"t: unknown line type {brief(kind)}")

    def _hello(self, payload: dict[str, Any]) -> None:
        if payload.get("v") != PROTOCOL_VERSION:
            self._refuse(f"peer protocol version {payload.get('v')!r}, not {PROTOCOL_VERSION}")
            return
        domains = payload.get("domains")
        if not isinstance(domains, dict):
            self._refuse("a hello without domains")
            return
        assert self.peer is not None
        self.claimed = {}
        for domain_id, rank in domains.items():
            ours = self.network.domains.get(domain_id, {}).get(self.peer)
            if ours is None:
                continue
            if rank != ours:
                self.log.error(
                    "peer {peer} says it is hqnserver{claimed} of domain {domain}, but the "
                    "hosts file here makes it hqnserver{ours}: the hosts files differ; this "
                    "domain is ignored on the link until they agree",
                    peer=str(self.peer),
                    claimed=rank,
                    domain=domain_id,
                    ours=ours,
                )
                continue
            self.claimed[domain_id] = rank
        if self.outbound_to is not None and not self.up:
            self.up = True
            self.network._outbound_up(self)

    def _message(self, payload: dict[str, Any]) -> None:
        assert self.peer is not None
        domain_id = payload.get("d")
        if not isinstance(domain_id, str) or domain_id not in self.claimed:
            return  # not a domain this link agreed on (see _hello)
        try:
            message = decode(payload.get("m"))
        except MessageError as error:
            self.network._invalid(self, f"{error.field}: {error}", domain_id)
            return
        why = self.network._deliver(domain_id, self.peer, message)
        if why is not None:
            self.network._invalid(self, why, domain_id)

    def _call(self, payload: dict[str, Any]) -> None:
        assert self.peer is not None
        number, domain_id, body = payload.get("id"), payload.get("d"), payload.get("body")
        if not is_whole(number):
            self.network._invalid(self, f"call.id: not a whole number: {brief(number)}")
            return
        if not isinstance(domain_id, str) or domain_id not in self.claimed:
            self._reply(number, PeerCallError("NOTVERIFIED", "not a domain this link serves"))
            return
        if not isinstance(body, dict):
            self.network._invalid(self, f"call.body: not an object: {brief(body)}", domain_id)
            self._reply(number, PeerCallError(MALFORMED_CALL, "a call's body must be an object"))
            return
        self.network._answer_call(domain_id, self.peer, body, self).addBoth(
            lambda outcome: self._reply(number, outcome)
        )

    def _reply(self, number: int, outcome: object) -> None:
        if isinstance(outcome, Failure):
            outcome = outcome.value
        if isinstance(outcome, PeerCallError):
            self._write(
                {
                    "t": "reply",
                    "id": number,
                    "ok": False,
                    "error": outcome.name,
                    "message": outcome.message,
                }
            )
        elif isinstance(outcome, dict):
            self._write({"t": "reply", "id": number, "ok": True, "body": outcome})
        else:
            self._write(
                {
                    "t": "reply",
                    "id": number,
                    "ok": False,
                    "error": "INTERNAL",
                    "message": f"the peer failed: {outcome}",
                }
            )

    # -- sending -------------------------------------------------------------------

    def send_message(self, domain_id: str, message: Message) -> None:
        """Send one domain message on this link."""
        self.send_line(encode_message(domain_id, message))

    def send_line(self, line: bytes) -> None:
        """Send one line already encoded (`encode_message`)."""
        if not self._closed and self.transport is not None:
            self.sendLine(line)

    def _write(self, payload: Mapping[str, object]) -> None:
        if not self._closed and self.transport is not None:
            self.sendLine(_json(payload))

    def _refuse(self, why: str) -> None:
        self.log.warn(
            "peer link {direction} {peer}: closed: {why}",
            direction="to" if self.outbound_to is not None else "from",
            peer=self._label(),
            why=why,
        )
        self.close()

    def _label(self) -> str:
        if self.peer is not None:
            return str(self.peer)
        address = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(address, "host", "?"))

    def close(self) -> None:
        """Drop the connection at once (no TLS goodbye: the peer may be gone)."""
        if not self._closed:
            self._closed = True
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- watchdog ------------------------------------------------------------------

    def _schedule(self) -> None:
        self._timer = self.network.clock.callLater(self.network.timers.ping_interval, self._watch)

    def _watch(self) -> None:
        self._timer = None
        if self._closed:
            return
        timers = self.network.timers
        now = self.network.clock.seconds()
        greeted = self.up if self.outbound_to is not None else self.identified
        if not greeted:
            if now - self._started > timers.handshake_timeout:
                self._refuse("no handshake and hello in time")
                return
        elif now - self._last_line > timers.ping_timeout:
            self._refuse(f"silent for {now - self._last_line:.1f}s (half-open link)")
            return
        elif self.outbound_to is not None:
            self._ping_seq += 1
            self._ping_sent = {n: t for n, t in self._ping_sent.items() if now - t < 60.0}
            self._ping_sent[self._ping_seq] = now
            self._write({"t": "ping", "n": self._ping_seq})
        self._schedule()


class _LinkFactory(Factory):
    """Builds links for the listener (accepted) or for one peer (dialled)."""

    #: No "Starting factory <... object at 0x...>" on every dial of a peer.
    noisy = False

    def __init__(self, network: PeerNetwork, outbound_to: Address | None) -> None:
        self.network = network
        self.outbound_to = outbound_to

    def buildProtocol(self, addr: Any) -> PeerLink:
        link = PeerLink(self.network, self.outbound_to)
        link.factory = self
        return link


@implementer(IStreamClientEndpoint)
class _PeerEndpoint:
    """Dials a peer at the port known *now* (tests learn ports as peers start)."""

    def __init__(self, network: PeerNetwork, address: Address) -> None:
        self.network = network
        self.address = address

    def __repr__(self) -> str:
        # ClientService logs "Scheduling retry N to connect {endpoint}": a peer's
        # address says which, an object id does not.
        return f"peer {self.address}"

    def connect(self, factory: Any) -> Deferred[Any]:
        state = self.network._peers.get(self.address)
        if state is not None:
            state.backing_off = False
        port = self.network.port_of(self.address)
        if port is None:
            return fail(ConnectionRefusedError(f"no peer port known for {self.address}"))
        network = self.network
        tcp = TCP4ClientEndpoint(
            network.reactor,
            str(self.address),
            port,
            timeout=network.timers.connect_timeout,
            bindAddress=(str(network.me), 0),
        )
        tls = wrapClientTLS(client_options(network.credentials, self.address), tcp)
        connected: Deferred[Any] = tls.connect(factory)
        return connected


class PeerNetwork(MultiService):
    """The peer listener, one reconnecting link per peer, and their state.

    ``deliver(domain_id, address, message)`` is called for every message
    received, and returns what is invalid about it (None: nothing);
    ``link_changed(address, up)`` when our outgoing link to a peer
    comes up or goes down (the domain nodes' ``connected``/``disconnected``).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        clock: Any,
        me: Address,
        credentials: DomainCredentials,
        *,
        listen_port: int = DEFAULT_PEER_PORT,
        port_of: Callable[[Address], int | None] | None = None,
        deliver: Callable[[str, Address, Message], str | None],
        link_changed: Callable[[Address, bool], None],
        timers: PeerTimers | None = None,
        check_source: bool = True,
    ) -> None:
        """Links for member ``me``; ``clock`` is monotonic (`ReactorMonotonicClock`)."""
        super().__init__()
        self.reactor = reactor
        self.clock = clock
        self.me = me
        self.credentials = credentials
        self.timers = timers if timers is not None else PeerTimers()
        self.check_source = check_source
        self.port_of: Callable[[Address], int | None] = (
            port_of if port_of is not None else (lambda address: listen_port)
        )
        self._deliver_to = deliver
        #: runs a peer's call: (domain id, caller, body) -> reply body (or a Deferred
        #: of it); raise `PeerCallError` to refuse. None: every call is refused.
        self.call_handler: (
            Callable[[str, Address, dict[str, Any]], dict[str, Any] | Deferred[dict[str, Any]]]
            | None
        ) = None
        #: calls waiting for their reply: number -> (callee, what the caller waits on)
        self._calls: dict[int, tuple[Address, Deferred[dict[str, Any]]]] = {}
        self._call_seq = 0
        #: (message, domain id, line) last sent: an Append sent to several members is
        #: encoded once
        self._last_sent: tuple[Message, str, bytes] | None = None
        self._link_changed = link_changed
        self.domains: dict[str, Mapping[Address, int]] = {}
        self._peers: dict[Address, _PeerState] = {}
        #: Binds in privilegedStartService, so a failed bind stops start-up. Its
        #: links are under TLS, and whatever `Listener.wrap` adds (the daemon's
        #: connection limits) is outside TLS.
        self.listener = Listener(
            TCP4ServerEndpoint(reactor, listen_port, interface=str(me)),
            _LinkFactory(self, None),
            requested=listen_port,
        )
        self.listener.wrap(self._under_tls)
        self.listener.setServiceParent(self)

    # -- configuration -------------------------------------------------------------

    @property
    def listening_port(self) -> int | None:
        """The TCP port the listener is bound to (None before start)."""
        host: Any = self.listener.address  # a TCP address: it has a port
        return None if host is None else int(host.port)

    def _under_tls(self, factory: IProtocolFactory) -> IProtocolFactory:
        """``factory``'s links under TLS with this member's certificate, a peer's required."""
        return TLSMemoryBIOFactory(server_options(self.credentials), False, factory)

    def set_domains(self, domains: Domains) -> None:
        """Serve these domains: dial every other member, drop links to former ones."""
        self.domains = {key: dict(ranks) for key, ranks in domains.items()}
        wanted = self.member_addresses() - {self.me}
        for address in sorted(set(self._peers) - wanted):
            state = self._peers.pop(address)
            if state.service is not None:
                state.service.disownServiceParent()
            for link in [*state.inbound, *([state.outbound] if state.outbound else [])]:
                link.close()
        for address in sorted(wanted - set(self._peers)):
            state = _PeerState(address)
            self._peers[address] = state
            self._dial(state)

    def _dial(self, state: _PeerState) -> None:
        """Keep a link to the peer of ``state``: a new dialler with a fresh backoff."""
        address = state.address
        policy = backoffPolicy(
            initialDelay=self.timers.retry_initial, maxDelay=self.timers.retry_max
        )

        def retry_delay(attempt: int) -> float:
            # Called as the dialler starts waiting; the next dial clears it.
            state.backing_off = True
            return policy(attempt)

        service = ClientService(
            _PeerEndpoint(self, address),
            _LinkFactory(self, address),
            retryPolicy=retry_delay,
            clock=self.reactor,
        )
        service.setName(f"peer-{address}")
        state.service = service
        state.backing_off = False
        service.setServiceParent(self)

    def member_addresses(self) -> set[Address]:
        """Every member address of every domain served here."""
        return {address for ranks in self.domains.values() for address in ranks}

    def hello_domains(self, peer: Address) -> dict[str, int]:
        """Our rank in every domain we share with ``peer``."""
        return {
            domain_id: ranks[self.me]
            for domain_id, ranks in sorted(self.domains.items())
            if peer in ranks and self.me in ranks
        }

    # -- use -----------------------------------------------------------------------

    def send(self, domain_id: str, address: Address, message: Message) -> None:
        """Send a domain message to ``address`` if our link to it is up (else drop it:
        the domain protocol resends what matters)."""
        state = self._peers.get(address)
        if state is not None and state.outbound is not None:
            # The primary sends one Append object to every member at the same
            # point: encode it once (the last message sent is remembered).
            last = self._last_sent
            if last is not None and last[0] is message and last[1] == domain_id:
                line = last[2]
            else:
                line = encode_message(domain_id, message)
                self._last_sent = (message, domain_id, line)
            state.outbound.send_line(line)

    def call(
        self, domain_id: str, address: Address, body: Mapping[str, Any], timeout: float
    ) -> Deferred[dict[str, Any]]:
        """Ask member ``address`` to run ``body`` for ``domain_id`` (its ``call_handler``).

        Fires with the reply's body; fails with `PeerCallError`: the callee's
        refusal, ``UNREACHABLE`` (no link up) or ``TIMEOUT`` (no reply within
        ``timeout`` seconds: the call may or may not have been carried out).
        """
        state = self._peers.get(address)
        if state is None or state.outbound is None:
            return fail(PeerCallError("UNREACHABLE", f"no link to the domain member {address}"))
        self._call_seq += 1
        number = self._call_seq
        # Cancelled (by the timeout or the caller): forget the call, so that a late
        # reply is dropped.
        def forget(_: Deferred[dict[str, Any]]) -> None:
            self._calls.pop(number, None)

        done: Deferred[dict[str, Any]] = Deferred(forget)

        def timed_out(result: object, seconds: float) -> Failure:
            return Failure(
                PeerCallError(
                    "TIMEOUT",
                    f"no answer from the domain member {address} within {seconds:g}s; "
                    "the change may or may not have been made: check with a listing",
                )
            )

        done.addTimeout(timeout, self.clock, onTimeoutCancel=timed_out)
        self._calls[number] = (address, done)
        state.outbound._write({"t": "call", "id": number, "d": domain_id, "body": dict(body)})
        return done

    def peers(self) -> list[PeerInfo]:
        """The state of every peer, by address."""
        return [
            state.info(tuple(sorted(d for d, ranks in self.domains.items() if address in ranks)))
            for address, state in sorted(self._peers.items())
        ]

    def is_up(self, address: Address) -> bool:
        """True if our outgoing link to ``address`` is up."""
        state = self._peers.get(address)
        return state is not None and state.outbound is not None

    def stopService(self) -> Deferred[None] | None:
        """Stop dialling and listening; drop every accepted link; fail waiting calls."""
        for number in sorted(self._calls):
            _address, done = self._calls.pop(number)
            done.errback(PeerCallError("UNREACHABLE", "this daemon is stopping"))
        for state in self._peers.values():
            for link in list(state.inbound):
                link.close()
        return super().stopService()  # type: ignore[no-any-return]

    # -- from the links --------------------------------------------------------------

    def _seen(self, address: Address, now: float) -> None:
        state = self._peers.get(address)
        if state is not None:
            state.last_seen = now

    def _rtt(self, address: Address, rtt: float) -> None:
        state = self._peers.get(address)
        if state is not None:
            state.rtt = rtt

    def _deliver(self, domain_id: str, address: Address, message: Message) -> str | None:
        """Hand ``message`` to the domain; what is invalid about it, or None."""
        try:
            return self._deliver_to(domain_id, address, message)
        except Exception as error:
            # A bug, not the peer's fault as far as we know; logged at the rate of
            # invalid input so that a peer cannot turn it into a flood of tracebacks.
            return f"handling the message failed: {type(error).__name__}: {str(error)[:120]}"

    def _invalid(self, link: PeerLink, why: str, domain_id: str | None = None) -> None:
        """Input from ``link``'s peer was dropped as invalid: log it (at most once per
        peer per `INVALID_LOG_INTERVAL`) and close the link after
        `INVALID_CLOSE_THRESHOLD` of them within `INVALID_WINDOW`."""
        state = self._peers.get(link.peer) if link.peer is not None else None
        if state is None:
            link.close()
            return
        now = self.clock.seconds()
        state.invalid += 1
        state.invalid_unlogged += 1
        recent = state.invalid_recent
        recent.append(now)
        while recent and now - recent[0] > INVALID_WINDOW:
            recent.popleft()
        if len(recent) >= INVALID_CLOSE_THRESHOLD:
            recent.clear()
            state.invalid_closes += 1
            state.invalid_closes_unlogged += 1
            link.close()
        if now - state.invalid_logged_at >= INVALID_LOG_INTERVAL:
            self.log.warn(
                "peer {peer}: dropped an invalid message{for_domain}: {why}; "
                "{count} invalid message(s) dropped and {closes} link(s) closed for them "
                "since the last report (at most one report a minute)",
                peer=str(state.address),
                for_domain="" if domain_id is None else f" for domain {domain_id}",
                why=why[:200],
                count=state.invalid_unlogged,
                closes=state.invalid_closes_unlogged,
            )
            state.invalid_logged_at = now
            state.invalid_unlogged = 0
            state.invalid_closes_unlogged = 0

    def _answer_call(
        self, domain_id: str, address: Address, body: dict[str, Any], link: PeerLink
    ) -> Deferred[dict[str, Any]]:
        handler = self.call_handler
        if handler is None:
            return fail(PeerCallError("NOTVERIFIED", "this member takes no calls"))
        try:
            result = handler(domain_id, address, body)
        except Exception as error:
            result = fail(error)
        done = result if isinstance(result, Deferred) else succeed(result)

        def report(failure: Failure) -> Failure:
            # A malformed call, or one that failed inside: reported like any invalid
            # input (rate-limited), never as an unhandled traceback; the caller gets
            # the error name and message.
            error = failure.value
            if isinstance(error, PeerCallError):
                if error.name == MALFORMED_CALL:
                    self._invalid(link, f"call: {error.message[:200]}", domain_id)
                return failure
            text = f"{type(error).__name__}: {str(error)[:120]}"
            self._invalid(link, f"call failed: {text}", domain_id)
            return Failure(PeerCallError("INTERNAL", f"the call failed: {text}"))

        return done.addErrback(report)

    def _replied(self, address: Address, payload: dict[str, Any]) -> None:
        number = payload.get("id")
        pending = self._calls.get(number) if isinstance(number, int) else None
        if pending is None or pending[0] != address:
            return  # late (timed out) or not ours to answer
        del self._calls[number]  # type: ignore[arg-type]
        _, done = pending
        body = payload.get("body")
        if payload.get("ok") is True and isinstance(body, dict):
            done.callback(body)
        else:
            done.errback(
                PeerCallError(
                    str(payload.get("error") or "INTERNAL"),
                    str(payload.get("message") or "the peer refused the call"),
                )
            )

    def _inbound_identified(self, link: PeerLink) -> None:
        assert link.peer is not None
        state = self._peers.get(link.peer)
        if state is None:
            link.close()
            return
        state.inbound.add(link)
        if state.outbound is None and state.backing_off and state.service is not None:
            # The peer is up (it just reached us, typically after a restart): dial
            # it now rather than after our backoff (up to retry_max plus jitter),
            # so that the domain hears it, and can admit it, at once.
            self.log.info("peer {peer} reached us: dialling it now", peer=str(link.peer))
            state.service.disownServiceParent()
            self._dial(state)

    def _outbound_up(self, link: PeerLink) -> None:
        assert link.peer is not None
        state = self._peers.get(link.peer)
        if state is None:
            link.close()
            return
        if state.outbound is not None and state.outbound is not link:
            state.outbound.close()
        state.outbound = link
        state.connects += 1
        self.log.info("peer link to {peer} is up", peer=str(link.peer))
        self._link_changed(link.peer, True)

    def _link_lost(self, link: PeerLink) -> None:
        if link.peer is None:
            return
        state = self._peers.get(link.peer)
        if state is None:
            return
        state.inbound.discard(link)
        if state.outbound is link:
            state.outbound = None
            self.log.info("peer link to {peer} is down", peer=str(link.peer))
            self._link_changed(link.peer, False)
