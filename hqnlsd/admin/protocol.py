"""The admin protocol on a connection: greeting, then one response per request line.

`AdminProtocol` serves an already authorised peer (the local UNIX socket: the
socket file's permissions are the authorisation). `TLSAdminProtocol` first waits
for the TLS handshake, then asks `hqnlsd.tls.identify_peer` who the peer is: only
an admin certificate of the domain CA is served; a member's (or any other)
certificate is told why it is refused (``NOTADMIN``) and disconnected before it
can send a command. Requests are answered strictly in order, one at a time.
"""

from __future__ import annotations

import socket
import struct
import weakref
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

import hqnlsd
from hqnlsd.admin import wire
from hqnlsd.admin.handler import AdminError, AdminHandler
from hqnlsd.config import client_port
from hqnlsd.logging.badinput import BadInputLog, Scheduler
from hqnlsd.tls import PeerIdentity, PeerNotRecognised, Role, identify_peer

#: How many request lines may wait while one is being answered.
MAX_QUEUED = 64
#: Malformed admin requests of one peer are reported at most once per this many seconds.
MALFORMED_LOG_INTERVAL = 60.0
#: Peers whose malformed requests are reported one by one in an interval (the
#: others together): admins are few, a flood of them is not.
MALFORMED_SOURCES = 16
#: Refusals that mean the request itself was malformed (reported, rate-limited).
MALFORMED = frozenset({wire.BAD_REQUEST, wire.VERSION, wire.UNKNOWN_COMMAND})
#: The line of a peer's first malformed request in an interval.
MALFORMED_LINE = (
    "admin {source}: refused a {noun}: {detail} "
    "(more are counted and reported every {interval:g} s)"
)


class MalformedRequests:
    """Counts an admin handler's malformed requests and reports them rate-limited.

    The reporting is a `BadInputLog` (like bad client lines): per peer, the first
    malformed request in an interval of `MALFORMED_LOG_INTERVAL` is logged with
    its reason, later ones only counted and summarised when the interval ends.
    `stop` (when the admin service stops) logs what is still counted and cancels
    the interval's timer; refusals after it are only counted.
    """

    log = Logger()

    def __init__(self, clock: Scheduler) -> None:
        #: every malformed request refused
        self.total = 0
        self._stopped = False
        self._report = BadInputLog(
            self.log,
            clock,
            interval=MALFORMED_LOG_INTERVAL,
            max_sources=MALFORMED_SOURCES,
            noun="malformed request",
            line_format=MALFORMED_LINE,
            max_detail=200,
            source_kind="admin",
        )

    def refused(self, who: str, why: str) -> None:
        """Count one refusal of ``who``'s request; log it unless rate-limited."""
        self.total += 1
        if not self._stopped:
            self._report.note(who, why)

    def start(self) -> None:
        """Report refusals again (the admin service started again)."""
        self._stopped = False

    def stop(self) -> None:
        """Log what is still counted and cancel the interval's timer (the admin
        service stops: no timer may outlive it)."""
        self._stopped = True
        self._report.stop()


_MALFORMED: weakref.WeakKeyDictionary[AdminHandler, MalformedRequests] = weakref.WeakKeyDictionary()


def malformed_requests(handler: AdminHandler) -> MalformedRequests:
    """The one counter of ``handler``'s malformed requests (shared by its listeners)."""
    counter = _MALFORMED.get(handler)
    if counter is None:
        counter = _MALFORMED[handler] = MalformedRequests(handler.root.reactor)
    return counter


class MalformedRequestsReport(Service):
    """Starts and stops the reporting of ``handler``'s malformed requests with the
    admin service, so that no interval timer is left on the reactor after it."""

    def __init__(self, handler: AdminHandler) -> None:
        self.handler = handler

    def startService(self) -> None:
        """Report malformed requests (again)."""
        super().startService()
        malformed_requests(self.handler).start()

    def stopService(self) -> None:
        """Log what is still counted and cancel the interval's timer."""
        super().stopService()
        malformed_requests(self.handler).stop()


def unix_peer_label(transport: Any) -> str:
    """``uid N`` of the process at the other end of a UNIX socket (Linux), else ``local``."""
    handle = getattr(transport, "socket", None)
    option = getattr(socket, "SO_PEERCRED", None)
    if handle is None or option is None:
        return "local"
    try:
        raw = handle.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    except OSError:
        return "local"
    return f"uid {uid} pid {pid} (admin socket)"


class AdminProtocol(LineOnlyReceiver):
    """JSON-lines admin connection (see `hqnlsd.admin.wire`)."""

    delimiter = b"\n"
    MAX_LENGTH = wire.MAX_LINE
    log = Logger()

    def __init__(self, handler: AdminHandler) -> None:
        self.handler = handler
        self.who = "local"
        #: Through the local admin socket (False over TLS: some commands are refused).
        self.local = True
        #: The verified admin over TLS (None on the local socket): what it may do.
        self.peer: PeerIdentity | None = None
        self.authorised = False
        self._queue: list[bytes] = []
        self._busy = False

    def connectionMade(self) -> None:
        """A local socket peer is authorised by the socket's permissions: greet it."""
        self.who = unix_peer_label(self.transport)
        self.authorise()

    def authorise(self) -> None:
        """Mark the peer as an admin and send the greeting."""
        self.authorised = True
        me = self.handler.root.me
        self.send(
            wire.ok(
                {
                    "hello": wire.HELLO,
                    "versions": list(wire.SUPPORTED_VERSIONS),
                    "server": hqnlsd.__version__,
                    "address": str(me.address),
                    # The client port tells apart daemons on one address (hqn_lsa HOST:PORT).
                    "port": client_port(self.handler.root.config.client_listen),
                    "unique_id": me.unique_id,
                    "you": self.who,
                }
            )
        )

    def send(self, message: dict[str, Any]) -> None:
        """Write one message line (an over-long result becomes an INTERNAL error)."""
        try:
            line = wire.encode(message)
        except ValueError as error:
            line = wire.encode(wire.error(wire.INTERNAL, str(error), message.get("id")))
        if self.transport is not None:
            self.transport.write(line)

    def _hang_up(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        """Too long: say so, then hang up (the rest of the line cannot be trusted)."""
        self.send(
            wire.error(wire.LINE_TOO_LONG, f"a request line may be at most {wire.MAX_LINE} bytes")
        )
        self._hang_up()

    def lineReceived(self, line: bytes) -> None:
        """Queue the request; answer one at a time, in order."""
        if not self.authorised:
            return
        if not line.strip():
            return
        if len(self._queue) >= MAX_QUEUED:
            self.send(wire.error(wire.BAD_REQUEST, "too many requests queued; wait for answers"))
            self._hang_up()
            return
        self._queue.append(line)
        self._next()

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        line = self._queue.pop(0)
        self._busy = True
        request_id: Any = None
        try:
            message = wire.decode(line)
            request_id = message.get("id")
            version = message.get("v")
            if version not in wire.SUPPORTED_VERSIONS:
                raise wire.WireError(
                    wire.VERSION,
                    f"protocol version {version!r} is not spoken here; versions: "
                    f"{', '.join(map(str, wire.SUPPORTED_VERSIONS))}",
                )
            command = message.get("cmd")
            args = message.get("args", {})
            if not isinstance(command, str) or not isinstance(args, dict):
                raise wire.WireError(
                    wire.BAD_REQUEST, "a request needs 'cmd' (text) and 'args' (an object)"
                )
        except wire.WireError as error:
            malformed_requests(self.handler).refused(self.who, error.message)
            self._answer(wire.error(error.name, error.message, request_id))
            return
        answer = maybeDeferred(
            self.handler.handle, command, args, self.who, local=self.local, peer=self.peer
        )
        answer.addCallbacks(
            lambda result: wire.ok(result, request_id),
            lambda failure: self._failed(failure, request_id, command),
        )
        answer.addCallback(self._answer)

    def _failed(self, failure: Failure, request_id: Any, command: str) -> dict[str, Any]:
        if failure.check(AdminError):
            error: AdminError = failure.value  # type: ignore[assignment]
            if error.name in MALFORMED:
                malformed_requests(self.handler).refused(self.who, f"{command}: {error.message}")
            return wire.error(error.name, error.message, request_id)
        # Commands validate their arguments (AdminError BAD_REQUEST): anything else
        # is a bug, logged with its traceback and answered as such.
        self.log.failure("admin command {command} failed", failure, command=command)
        problem = f"{type(failure.value).__name__}: {str(failure.value)[:200]}"
        return wire.error(
            wire.INTERNAL, f"{command} failed inside the server: {problem}", request_id
        )

    def _answer(self, message: dict[str, Any]) -> None:
        self.send(message)
        self._busy = False
        self._next()


@implementer(IHandshakeListener)
class TLSAdminProtocol(AdminProtocol):
    """Admin connection over mutual TLS: only an admin certificate is served."""

    def __init__(self, handler: AdminHandler, ca_certificate: Any) -> None:
        super().__init__(handler)
        self.ca_certificate = ca_certificate

    def connectionMade(self) -> None:
        """Nothing yet: the peer is judged once the handshake completes."""

    def handshakeCompleted(self) -> None:
        """Serve an admin certificate; refuse anything else with a clear message."""
        try:
            peer = identify_peer(self.transport, self.ca_certificate)
        except PeerNotRecognised as error:
            self._refuse(f"this certificate is not accepted for administration: {error}")
            return
        if peer.role is not Role.ADMIN:
            self._refuse(
                f"the certificate of {peer} is a domain member's, not an admin's; "
                "remote administration needs an admin certificate (hqn_ca admin CA NAME)"
            )
            return
        self.who = f"{peer} (TLS, sha256 {peer.fingerprint[:16]})"
        self.local = False
        self.peer = peer
        self.authorise()

    def _refuse(self, message: str) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.warn(
            "admin connection from {peer} refused: {message}",
            peer=getattr(peer, "host", str(peer)),
            message=message,
            log_switch="ADMIN",
        )
        self.send(wire.error(wire.NOTADMIN, message))
        self._hang_up()


class AdminFactory(Factory):
    """Builds `AdminProtocol` (or `TLSAdminProtocol` when given the domain CA)."""

    def __init__(self, handler: AdminHandler, *, ca_certificate: Any = None) -> None:
        self.handler = handler
        self.ca_certificate = ca_certificate

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        """One protocol per connection."""
        protocol: AdminProtocol
        if self.ca_certificate is None:
            protocol = AdminProtocol(self.handler)
        else:
            protocol = TLSAdminProtocol(self.handler, self.ca_certificate)
        protocol.factory = self
        return protocol
