"""`hqnlsd.web.site`: the console's resources on a real listener on 127.0.0.1 (port
0), over a fake daemon with an in-memory engine (`tests.web.test_view`)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock, LoopingCall
from twisted.python.failure import Failure
from twisted.trial import unittest

from hqnlsd.licensing.requester import Requester
from hqnlsd.web import pages
from hqnlsd.web import site as site_module
from hqnlsd.web.recent import RecentEvents
from hqnlsd.web.site import API, MAX_HEADER_BYTES, make_web_service
from hqnlsd.web.view import ConsoleView
from tests.web.test_view import NOW, FakeDaemon

WAIT_LIMIT = 20
SCRIPT_USER = "<script>alert(1)</script>"


class _RawClient(protocol.Protocol):
    """Sends bytes and collects everything until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(self.data)


Answer = tuple[int, dict[bytes, bytes], bytes]


class ConsoleOverHTTP(unittest.TestCase):
    """A real web console listener on 127.0.0.1, asked over TCP."""

    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        clock = Clock()
        clock.advance(NOW)
        self.daemon = FakeDaemon(clock)
        self.recent = RecentEvents()
        view = ConsoleView(self.daemon, self.recent)  # type: ignore[arg-type]
        self.service = make_web_service("tcp:0:interface=127.0.0.1", view, self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        port = self.service.listening_port
        assert port is not None
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.port: int = address.port

    def send(self, raw: bytes) -> defer.Deferred[Answer]:
        """Send ``raw``; fire with (status code, lower-cased headers, body); bounded."""
        client = _RawClient(raw)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)
        connected = connectProtocol(endpoint, client)

        def parse(raw_answer: bytes) -> Answer:
            head, _, body = raw_answer.partition(b"\r\n\r\n")
            status_line, *header_lines = head.split(b"\r\n")
            fields = dict(line.split(b": ", 1) for line in header_lines if b": " in line)
            return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body

        body: defer.Deferred[bytes] = connected.addCallback(lambda _: client.done)
        body.addTimeout(WAIT_LIMIT, self.reactor)
        return body.addCallback(parse)

    def get(self, path: bytes, method: bytes = b"GET", *headers: bytes) -> defer.Deferred[Answer]:
        """One HTTP/1.0 request (the server closes after its answer)."""
        extra = b"".join(h + b"\r\n" for h in headers)
        return self.send(method + b" " + path + b" HTTP/1.0\r\n" + extra + b"\r\n")

    def assert_secured(self, headers: dict[bytes, bytes]) -> None:
        csp = headers[b"content-security-policy"]
        self.assertIn(b"default-src 'none'", csp)
        self.assertIn(b"frame-ancestors 'none'", csp)
        self.assertNotIn(b"unsafe-inline", csp)
        self.assertEqual(headers[b"x-content-type-options"], b"nosniff")

    @defer.inlineCallbacks
    def test_every_page_is_html_with_the_security_headers(self) -> Any:
        """Each page: 200, HTML, the headers, the navigation, a refresh without JavaScript."""
        for path in (b"/", b"/products", b"/holders", b"/domains", b"/events", b"/permits"):
            code, headers, body = yield self.get(path)
            self.assertEqual(code, 200, path)
            self.assertEqual(headers[b"content-type"], b"text/html; charset=utf-8")
            self.assert_secured(headers)
            self.assertIn(b'<meta http-equiv="refresh"', body)
            self.assertIn(b'href="/holders"', body)
            self.assertIn(b'name="viewport"', body)
        code, headers, body = yield self.get(b"/console.css")
        self.assertEqual((code, headers[b"content-type"]), (200, b"text/css; charset=utf-8"))
        self.assertIn(b"@media", body)
        code, headers, body = yield self.get(b"/console.js")
        self.assertEqual(code, 200)
        self.assert_secured(headers)

    @defer.inlineCallbacks
    def test_holders_in_html_and_json_escaped(self) -> Any:
        """A holder named like a script is shown as text, never as markup; the API has it as is."""
        self.daemon.take("Widget", SCRIPT_USER, host='"><img src=x>', pid=77)
        code, headers, body = yield self.get(b"/holders")
        self.assertEqual(code, 200)
        self.assertNotIn(b"<script>alert", body)
        self.assertNotIn(b"<img src=x>", body)
        self.assertIn(b"&lt;script&gt;alert(1)&lt;/script&gt;", body)
        self.assertIn(b"&quot;&gt;&lt;img src=x&gt;", body)
        code, headers, body = yield self.get(b"/api/holders")
        self.assertEqual((code, headers[b"content-type"]), (200, b"application/json"))
        self.assert_secured(headers)
        holders = json.loads(body)["holders"]
        self.assertEqual([(h["user"], h["pid"]) for h in holders], [(SCRIPT_USER, 77)])

    @defer.inlineCallbacks
    def test_events_page_and_api_show_the_reason(self) -> Any:
        """A denial in the ring is on /events and /api/events with its reason, escaped."""
        who = Requester(user=SCRIPT_USER, host="h", address="10.1.2.3", pid=5)
        self.recent.denial(
            NOW,
            publisher="P",
            product="Widget",
            version="1.0",
            status="NOLICENCES",
            reason="all 3 licences are in use",
            who=who,
        )
        _, _, body = yield self.get(b"/events")
        self.assertIn(b"all 3 licences are in use", body)
        self.assertIn(b"&lt;script&gt;", body)
        self.assertNotIn(b"<script>alert", body)
        _, _, body = yield self.get(b"/api/events")
        events = json.loads(body)["events"]
        self.assertEqual(
            [(e["kind"], e["status"], e["reason"]) for e in events],
            [("denial", "NOLICENCES", "all 3 licences are in use")],
        )

    @defer.inlineCallbacks
    def test_every_api_is_json(self) -> Any:
        for name in API:
            code, headers, body = yield self.get(b"/api/" + name.encode())
            self.assertEqual((code, headers[b"content-type"]), (200, b"application/json"), name)
            self.assertIsInstance(json.loads(body), dict)
        _, _, body = yield self.get(b"/api/overview")
        self.assertEqual(json.loads(body)["served"], 2)

    @defer.inlineCallbacks
    def test_anything_else_is_not_found(self) -> Any:
        """No listing, no file, nothing below a page."""
        for path in (
            b"/nope",
            b"/api",
            b"/api/",
            b"/api/nope",
            b"/holders/x",
            b"/console.css/x",
            b"/../etc/passwd",
            b"/%2e%2e/",
        ):
            code, headers, _ = yield self.get(path)
            self.assertEqual(code, 404, path)
            self.assert_secured(headers)

    @defer.inlineCallbacks
    def test_only_get_and_head(self) -> Any:
        """HEAD has no body; POST, PUT, DELETE... are 405, with Allow."""
        code, headers, body = yield self.get(b"/holders", b"HEAD")
        self.assertEqual((code, body), (200, b""))
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"):
            code, headers, _ = yield self.get(b"/api/holders", method)
            self.assertEqual(code, 405, method)
            self.assertEqual(headers[b"allow"], b"GET, HEAD")
            self.assert_secured(headers)

    @defer.inlineCallbacks
    def test_bodies_and_big_headers_are_refused(self) -> Any:
        """A request body (by length or chunked) gets 413; a line or headers too big 431."""
        code, _, _ = yield self.get(b"/", b"GET", b"Content-Length: 5")
        self.assertEqual(code, 413)
        code, _, _ = yield self.send(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        self.assertEqual(code, 413)
        half = b"a" * (MAX_HEADER_BYTES // 2)
        code, _, _ = yield self.get(b"/", b"GET", b"X-A: " + half, b"X-B: " + half)
        self.assertEqual(code, 431)
        # One line longer than the whole bound (a request line, a header): 431, said.
        for raw in (
            b"GET /" + b"a" * MAX_HEADER_BYTES + b" HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\nX-A: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n",
        ):
            code, headers, body = yield self.send(raw)
            self.assertEqual(code, 431)
            self.assertEqual(headers[b"connection"], b"close")
            self.assertIn(b"%d bytes" % MAX_HEADER_BYTES, body)
        many = [b"X-H%d: 1" % n for n in range(100)]
        code, _, _ = yield self.get(b"/", b"GET", *many)
        self.assertEqual(code, 400)

    @defer.inlineCallbacks
    def test_holders_a_slice_at_a_time(self) -> Any:
        """/api/holders?offset=&limit= (bad values: 400); the page shows at most
        PAGE_ROWS holders and says how many there are."""
        for n in range(4):
            self.daemon.take("Widget" if n < 3 else "Gadget", f"user{n}", pid=n)
        code, _, body = yield self.get(b"/api/holders?offset=1&limit=2")
        self.assertEqual(code, 200)
        answer = json.loads(body)
        self.assertEqual((answer["total"], answer["offset"], answer["limit"]), (4, 1, 2))
        self.assertEqual(len(answer["holders"]), 2)
        for bad in (b"limit=-1", b"limit=10001", b"offset=x", b"offset=-3", b"limit=1&limit=2"):
            code, headers, _ = yield self.get(b"/api/holders?" + bad)
            self.assertEqual(code, 400, bad)
            self.assert_secured(headers)
        self.patch(pages, "PAGE_ROWS", 3)
        _, _, body = yield self.get(b"/holders")
        self.assertEqual(body.count(b'<td data-label="User">'), 3)
        self.assertIn(b"3 of the 4 licences held", body)
        self.assertIn(b"/api/holders?offset=3", body)

    # Found attacking a real daemon's console (review of issue 15).

    @defer.inlineCallbacks
    def test_options_star_is_refused_like_any_other_method(self) -> Any:
        """``OPTIONS *`` (twisted.web answers it 200 before any resource) is a 405
        with the security headers, as OPTIONS on a path is."""
        code, headers, _ = yield self.send(
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(code, 405)
        self.assertEqual(headers[b"allow"], b"GET, HEAD")
        self.assert_secured(headers)
        code, headers, _ = yield self.send(
            b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(code, 405)
        self.assert_secured(headers)

    @defer.inlineCallbacks
    def test_head_logs_nothing_and_says_the_length(self) -> Any:
        """HEAD of a page, an API or a 404 logs no line (twisted.web logs one per HEAD
        whose resource returns a body: a HEAD flood filled the log) and carries the
        GET's Content-Length."""
        from twisted.logger import globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        for path in (b"/", b"/api/overview", b"/nope", b"/api/holders?limit=x"):
            code, headers, body = yield self.get(path, b"HEAD")
            get_code, _, get_body = yield self.get(path)
            self.assertEqual((code, body), (get_code, b""), path)
            self.assertEqual(headers[b"content-length"], b"%d" % len(get_body), path)
            self.assert_secured(headers)
        server_lines = [
            event.get("log_format")
            for event in seen
            if str(event.get("log_namespace", "")).startswith(("twisted.web", "hqnlsd"))
        ]
        self.assertEqual(server_lines, [])

    @defer.inlineCallbacks
    def test_a_slow_request_head_is_cut_off(self) -> Any:
        """Slowloris: a request head that trickles in (each byte within the idle
        timeout) is answered 408 and closed HEAD_DEADLINE after its first byte, so
        32 such clients cannot hold the console's every connection for ever."""
        self.patch(site_module.BoundedChannel, "HEAD_DEADLINE", 0.5)
        client = _RawClient(b"GET / HTTP/1.1\r\n")
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)
        yield connectProtocol(endpoint, client)

        trickling = LoopingCall(lambda: client.transport and client.transport.write(b"X: y\r\n"))
        trickling.start(0.1)
        answer = yield client.done.addTimeout(WAIT_LIMIT, self.reactor)
        trickling.stop()
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:60])
        # A whole request in time, and one after another on a kept connection, are served.
        code, _, _ = yield self.send(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /products HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n"
        )
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_controls_and_bidi_overrides_are_shown_escaped(self) -> Any:
        """A user or host with a right-to-left override, ESC or a line break (a
        refused REQUEST's names are shown as sent) appears as ``\\u202e``, ``\\x1b``,
        ``\\n`` on the page, as in the log and the usage report's page."""
        who = Requester(user="\u202eevil", host="a\x1b[31mb\nc", address="10.1.2.3", pid=5)
        self.recent.denial(
            NOW,
            publisher="P",
            product="Widget",
            version="1.0",
            status="ILLEGAL",
            reason="user must be 1 to 256 printable characters",
            who=who,
        )
        _, _, body = yield self.get(b"/events")
        for raw in ("\u202e", "\x1b", "\n"):
            self.assertNotIn(
                raw, body.decode("utf-8").partition("<main")[2].partition("</main>")[0]
            )
        self.assertIn(b"\\u202eevil", body)
        self.assertIn(b"a\\x1b[31mb\\nc", body)
        _, _, body = yield self.get(b"/api/events")
        self.assertEqual(json.loads(body)["events"][0]["user"], "\u202eevil")

    @defer.inlineCallbacks
    def test_a_silent_connection_is_cut_off_as_a_slow_head(self) -> Any:
        """A connection that sends nothing holds one of the console's few connections
        only HEAD_DEADLINE (not the idle timeout's minute): 408 and closed."""
        self.patch(site_module.BoundedChannel, "HEAD_DEADLINE", 0.5)
        client = _RawClient(b"")
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)
        yield connectProtocol(endpoint, client)
        answer = yield client.done.addTimeout(WAIT_LIMIT, self.reactor)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:60])

    @defer.inlineCallbacks
    def test_a_bad_slice_is_told_what_is_allowed(self) -> Any:
        """A 400 for offset or limit says what a good value is (a ten-digit offset
        was told it must be 'a whole number', which it was)."""
        for query, said in (
            (b"offset=99999999999", b"offset must be a whole number from 0 to 999999999"),
            (b"offset=-1", b"offset must be a whole number from 0 to 999999999"),
            (b"limit=x", b"limit must be a whole number from 0 to 999999999"),
            (b"limit=20000", b"limit 0 to 10000"),
        ):
            code, _, body = yield self.get(b"/api/holders?" + query)
            self.assertEqual(code, 400, query)
            self.assertIn(said, body, query)
