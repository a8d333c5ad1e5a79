"""The web console's `twisted.web` site and listener (see `hqnlsd.web`).

Resources are thin: each asks `hqnlsd.web.view.ConsoleView` for its figures and
renders them with `hqnlsd.web.pages` (HTML) or as JSON (``/api/...``).

Paths: ``/`` (overview), ``/products``, ``/holders``, ``/domains``, ``/events``,
``/permits``; ``/api/overview``, ``/api/products``, ``/api/holders``,
``/api/domains``, ``/api/events``, ``/api/permits``; ``/console.css`` and
``/console.js``. Anything else is a 404 (there is no file or directory served).

Hardening: only GET and HEAD (anything else 405); a request line and headers of at
most `MAX_HEADER_BYTES` and `MAX_HEADERS` headers, and no request body
(`BoundedChannel`: a Content-Length over `MAX_BODY_BYTES` or a chunked body is
answered 413 and the connection closed); every answer carries a strict
``Content-Security-Policy`` (no inline script or style, nothing from elsewhere,
no framing), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``
and ``Cache-Control: no-store``. The listener is under the ``web`` limits
(`hqnlsd.limits`): connection cap, idle timeout and, with TLS, the handshake
deadline. Requests are not logged one by one.

TLS (`make_web_service` with credentials): the daemon's member certificate and
the domain CA, as the admin TLS listener; the browser must present an *admin*
certificate of the domain CA (``hqn_ca admin``), checked on every request:
anything else (a member's certificate) is answered 403.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from hqnlsd.listeners import Listener
from hqnlsd.tls import DomainCredentials, PeerNotRecognised, Role, identify_peer, server_options
from hqnlsd.web import pages
from hqnlsd.web.view import ConsoleView

#: Longest request line plus headers, in bytes.
MAX_HEADER_BYTES = 8192
#: Most headers in one request.
MAX_HEADERS = 40
#: Longest request body accepted (GET and HEAD have none).
MAX_BODY_BYTES = 0
#: Seconds a connection may stay silent (twisted.web's own timer; the ``web``
#: limits of `hqnlsd.limits` set it from the configuration).
DEFAULT_TIMEOUT = 60

#: Every answer's security headers.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
        b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)

#: The JSON API: path under /api -> view method.
API = ("overview", "products", "holders", "domains", "events", "permits")

_log = Logger(namespace="hqnlsd.web")

_TOO_LARGE = f"a request line or headers over {MAX_HEADER_BYTES} bytes"


class BoundedChannel(http.HTTPChannel):
    """HTTP/1.1 with bounded requests (see the module).

    A request line or header line longer than `MAX_HEADER_BYTES`, or a request
    head (line and headers) longer than that in all, is answered 431; a request
    head not whole `HEAD_DEADLINE` seconds after its first byte (or, for the first
    request, after the connection was made) is answered 408
    (a client trickling a byte at a time, each within the idle timeout, would
    otherwise hold its connection for ever: a few dozen such took every
    connection of the console). Either way the connection is closed."""

    # twisted.web's own bound on the head is above ours (its 400 says nothing).
    totalHeadersSize = 2 * MAX_HEADER_BYTES
    maxHeaders = MAX_HEADERS
    MAX_LENGTH = MAX_HEADER_BYTES
    #: Seconds from a request head's first byte to its end.
    HEAD_DEADLINE = 10.0
    _refused = False
    _head_bytes = 0
    _head_timer: Any = None

    def connectionMade(self) -> None:
        """A new connection has HEAD_DEADLINE to send its first request head (a silent
        one would otherwise hold one of the console's connections for the idle
        timeout)."""
        super().connectionMade()
        self._start_head_timer()

    def dataReceived(self, data: bytes) -> None:
        """Bytes of a request head start its deadline (if not already running)."""
        if self._refused:
            return
        if not self._in_body():
            self._start_head_timer()
        super().dataReceived(data)

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.callLater(self.HEAD_DEADLINE, self._head_too_slow)

    def _in_body(self) -> bool:
        return bool(self.line_mode == 0)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse(
            http.REQUEST_TIMEOUT,
            "Request Timeout",
            f"the request head did not arrive within {self.HEAD_DEADLINE:g} s",
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, code: int, phrase: str, text: str) -> None:
        """Answer ``code`` with ``text`` and close; nothing more is read."""
        if self._refused:
            return
        self._refused = True
        self._stop_head_timer()
        body = (text + "\n").encode("ascii")
        head = [f"HTTP/1.1 {code} {phrase}".encode("ascii"), b"connection: close"]
        head += [name + b": " + value for name, value in SECURITY_HEADERS]
        head += [b"content-type: text/plain; charset=utf-8", b"content-length: %d" % len(body)]
        assert self.transport is not None
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or header line over MAX_HEADER_BYTES: 431."""
        self._refuse(431, "Request Header Fields Too Large", _TOO_LARGE)

    def lineReceived(self, line: bytes) -> None:
        """Nothing more is read of a refused request; a head over MAX_HEADER_BYTES: 431."""
        if self._refused:
            return
        self._head_bytes += len(line) + 2
        if self._head_bytes > MAX_HEADER_BYTES:
            self._refuse(431, "Request Header Fields Too Large", _TOO_LARGE)
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        """Nothing more is read of a refused request."""
        if not self._refused:
            super().rawDataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        """No deadline outlives its connection."""
        self._stop_head_timer()
        super().connectionLost(reason)

    def headerReceived(self, line: bytes) -> bool:
        """A header; a body (chunked, or longer than MAX_BODY_BYTES) is refused."""
        ok: bool = super().headerReceived(line)
        if ok and (self.length is None or self.length > MAX_BODY_BYTES):
            self._refused = True
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            self.loseConnection()
            return False
        return ok

    def allHeadersReceived(self) -> None:
        """Go on, unless refused: the head is whole (its deadline and size start again
        with the next request's)."""
        self._stop_head_timer()
        self._head_bytes = 0
        if not self._refused:
            super().allHeadersReceived()

    def allContentReceived(self) -> None:
        """Answer, unless refused."""
        if not self._refused:
            super().allContentReceived()


def _secure(request: Request) -> None:
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


class _Leaf(Resource):
    """A resource with no children: any deeper path is a 404."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        """The answer, or a 404 for a path below this one."""
        if request.postpath and request.postpath != [b""]:
            return _plain(request, http.NOT_FOUND, "not found")
        return self.answer(request)

    def answer(self, request: Request) -> bytes:
        """The body (and content type) of this resource."""
        raise NotImplementedError


class PageResource(_Leaf):
    """One HTML page: ``pages.BODIES[path]`` of the view's figures."""

    def __init__(self, view: ConsoleView, path: str) -> None:
        super().__init__()
        self.view = view
        self.path = path

    def answer(self, request: Request) -> bytes:
        """The whole page."""
        title, method, body = pages.BODIES[self.path]
        if method == "holders":
            data = self.view.holders(limit=pages.PAGE_ROWS)
        else:
            data = getattr(self.view, method)()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return pages.page(self.path, title, body(data)).encode("utf-8")


class ApiResource(_Leaf):
    """``/api/NAME``: the view's figures as JSON."""

    def __init__(self, view: ConsoleView, name: str) -> None:
        super().__init__()
        self.view = view
        self.name = name

    def answer(self, request: Request) -> bytes:
        """The figures, as JSON (``/api/holders`` takes ``offset`` and ``limit``)."""
        if self.name == "holders":
            try:
                data = self.view.holders(**_slice_arguments(request))
            except ValueError as error:
                return _plain(request, http.BAD_REQUEST, str(error))
        else:
            data = getattr(self.view, self.name)()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(data, sort_keys=True).encode("utf-8") + b"\n"


def _slice_arguments(request: Request) -> dict[str, int]:
    """``offset`` and ``limit`` of the query, each at most once, as whole numbers;
    ValueError otherwise."""
    arguments: dict[str, int] = {}
    for name in ("offset", "limit"):
        values = (request.args or {}).get(name.encode(), [])
        if len(values) > 1:
            raise ValueError(f"{name} given more than once")
        if values:
            text = values[0].decode("ascii", "replace")
            if not (text.isascii() and text.isdigit()) or len(text) > 9:
                raise ValueError(f"{name} must be a whole number from 0 to 999999999")
            arguments[name] = int(text)
    return arguments


class StaticText(_Leaf):
    """A fixed text (the style sheet, the script)."""

    def __init__(self, text: str, content_type: bytes) -> None:
        super().__init__()
        self.body = text.encode("utf-8")
        self.content_type = content_type

    def answer(self, request: Request) -> bytes:
        """The text."""
        request.setHeader(b"content-type", self.content_type)
        return self.body


class _Refusal(Resource):
    """An answer with a code and a line, whatever the method."""

    isLeaf = True

    def __init__(self, code: int, text: str, allow: bytes | None = None) -> None:
        super().__init__()
        self.code = code
        self.text = text
        self.allow = allow

    def render(self, request: Request) -> bytes:
        """The code and the line."""
        if self.allow is not None:
            request.setHeader(b"allow", self.allow)
        return _plain(request, self.code, self.text)


class _ApiRoot(Resource):
    """``/api/``: its children only; itself and anything else is a 404."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        """Not one of `API`: a 404."""
        return _Refusal(http.NOT_FOUND, "not found")

    def render(self, request: Request) -> bytes:
        """``/api`` itself: a 404 (no listing)."""
        return _plain(request, http.NOT_FOUND, "not found")


class ConsoleRoot(Resource):
    """The pages, the API, the style sheet and the script; 404 for anything else."""

    def __init__(self, view: ConsoleView) -> None:
        super().__init__()
        self.pages = {path.encode(): PageResource(view, path) for path in pages.BODIES}
        api = _ApiRoot()
        for name in API:
            api.putChild(name.encode(), ApiResource(view, name))
        self.api = api
        self.putChild(b"api", api)
        self.putChild(b"console.css", StaticText(pages.STYLE, b"text/css; charset=utf-8"))
        self.putChild(b"console.js", StaticText(pages.SCRIPT, b"text/javascript; charset=utf-8"))

    def getChild(self, path: bytes, request: Any) -> Resource:
        """A page by its name (the overview for ``/``), else a 404."""
        page = self.pages.get(path)
        if page is not None:
            return page
        return _Refusal(http.NOT_FOUND, "not found")


class _HeadOf(Resource):
    """HEAD of a resource: its GET's headers and Content-Length, no body (so that
    twisted.web does not log a line for each HEAD whose resource returned one)."""

    isLeaf = True

    def __init__(self, resource: Resource) -> None:
        super().__init__()
        self.resource = resource

    def render(self, request: Request) -> bytes:
        """The resource's answer without its body."""
        body = self.resource.render(request)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""


class ConsoleRequest(Request):
    """A request whose path is ``*`` (``OPTIONS *``), which twisted.web answers
    before asking the site for a resource, is refused 405 as any other method."""

    def process(self) -> None:
        """``*``: 405 with the security headers; anything else as twisted.web does."""
        if self.path != b"*":
            super().process()
            return
        _secure(self)
        self.setHeader(b"allow", b"GET, HEAD")
        body = _plain(self, http.NOT_ALLOWED, "only GET and HEAD")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


class ConsoleSite(Site):
    """The console's site: security headers and methods checked before any resource,
    the client's admin certificate too when served over TLS (``ca``)."""

    noisy = False
    protocol = BoundedChannel  # type: ignore[assignment]
    requestFactory = ConsoleRequest

    def __init__(
        self, root: ConsoleRoot, *, ca_certificate: Any = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(root, timeout=timeout)
        self.ca_certificate = ca_certificate

    def log(self, request: http.Request) -> None:
        """Requests are not logged one by one."""

    def getResourceFor(self, request: Request) -> Resource:
        """The resource, or a refusal (method, certificate); every answer secured."""
        _secure(request)
        if request.method not in (b"GET", b"HEAD"):
            return _Refusal(http.NOT_ALLOWED, "only GET and HEAD", allow=b"GET, HEAD")
        if self.ca_certificate is not None:
            try:
                identity = identify_peer(request.channel.transport, self.ca_certificate)
            except PeerNotRecognised as error:
                return _Refusal(http.FORBIDDEN, f"certificate not accepted: {error}")
            if identity.role is not Role.ADMIN:
                return _Refusal(http.FORBIDDEN, "an admin certificate is needed")
        resource: Resource = super().getResourceFor(request)
        if request.method == b"HEAD":
            return _HeadOf(resource)
        return resource


def console_site(view: ConsoleView, *, ca_certificate: Any = None) -> ConsoleSite:
    """The console's site for ``view`` (``ca_certificate``: TLS, admin certificates only)."""
    return ConsoleSite(ConsoleRoot(view), ca_certificate=ca_certificate)


class WebService(MultiService):
    """The web console listener (an IService); ``listening_port`` once bound."""

    def __init__(
        self,
        description: str,
        view: ConsoleView,
        reactor: Any,
        credentials: DomainCredentials | None = None,
    ) -> None:
        super().__init__()
        self.setName("web")
        self.description = description
        self.tls = credentials is not None
        site = console_site(
            view, ca_certificate=None if credentials is None else credentials.ca_certificate
        )
        self.site = site
        factory: IProtocolFactory = cast(IProtocolFactory, site)
        if credentials is not None:
            factory = TLSMemoryBIOFactory(server_options(credentials), False, site)
        self.listener = Listener.from_description(reactor, description, factory)
        self.listener.setServiceParent(self)

    @property
    def listening_port(self) -> IListeningPort | None:
        """The bound port (tests bind port 0 and read it here); None unless listening."""
        return self.listener.port

    def startService(self) -> None:
        """Start listening (if privilegedStartService has not bound already)."""
        super().startService()
        _log.info(
            "web console on {description} ({scheme})",
            description=self.description,
            scheme="https, admin certificates only" if self.tls else "http",
        )


def make_web_service(
    description: str,
    view: ConsoleView,
    reactor: Any,
    credentials: DomainCredentials | None = None,
) -> WebService:
    """The web console service (not started) on ``description`` (already checked and
    made loopback-safe by `hqnlsd.config`); TLS with ``credentials``."""
    return WebService(description, view, reactor, credentials)
