# mypy: allow-untyped-calls
"""StringTransport tests of the client protocol: every verb, every error path."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from hqnlsd.protocols import client_side, grammar
from hqnlsd.protocols.client import ClientProtocolFactory
from hqnlsd.protocols.replies import Err, Listing, Ok
from hqnlsd.status import Status
from tests.protocols.test_protocol_fakes import (
    PEER,
    FakeLicences,
    Manual,
    Raising,
    connect,
    read_replies,
)

REQUEST = (
    b"REQUEST publisher=Harlequin product=LispWorks version=8.0 user=jo host=box pid=%d"
)


def reply_lines(data: bytes) -> list[str]:
    """The reply text lines written so far."""
    return data.decode().split("\r\n")[:-1]


def ok_handle(reply: Ok | Err | Listing) -> str:
    """The handle of an OK reply (fails the test otherwise)."""
    assert isinstance(reply, Ok), reply
    handle = reply.get("handle")
    assert handle is not None
    return handle


def status_of(reply: Ok | Err | Listing) -> Status:
    """The status of an ERR reply (fails the test otherwise)."""
    assert isinstance(reply, Err), reply
    return reply.status


# -- verbs ------------------------------------------------------------------


def test_request_reaches_dispatcher_typed_with_peer() -> None:
    """A REQUEST line becomes a typed Request and the peer address; the OK comes back."""
    pool = FakeLicences()
    protocol, transport = connect(pool)
    protocol.dataReceived(REQUEST % 42 + b"\n")
    assert pool.calls == [
        (grammar.Request("Harlequin", "LispWorks", "8.0", "jo", "box", 42), PEER)
    ]
    assert reply_lines(transport.value()) == [
        'OK handle=H1 period=300 type=floating access=8 data="1 2 3 4" '
        "start=01/01/2026 expiry=31/12/2030"
    ]


def test_every_dispatched_verb() -> None:
    """UPDATE, QUERY, USERS, MESSAGE, RELEASE each reach the dispatcher and answer."""
    pool = FakeLicences()
    protocol, transport = connect(pool)
    protocol.dataReceived(REQUEST % 1 + b"\n")
    protocol.dataReceived(
        b"UPDATE handle=H1\nQUERY handle=H1 what=data\n"
        b"USERS publisher=Harlequin product=LispWorks version=8.0\n"
        b'MESSAGE text="started OK"\nRELEASE handle=H1\nUPDATE handle=H1\n'
    )
    got = read_replies(transport.value())
    assert ok_handle(got[0]) == "H1"
    assert got[1:] == [
        Ok.of(handle="H1", period=300),
        Ok.of(handle="H1", what="data"),
        Listing(("handle=H1 user=jo host=box pid=1",)),
        Ok(),
        Ok.of(handle="H1"),
        Err.of(Status.LOSTLICENCE, "request again", handle="H1"),
    ]
    assert pool.messages == ["started OK"]
    assert [type(command) for command, _ in pool.calls] == [
        grammar.Request, grammar.Update, grammar.Query, grammar.Users, grammar.Message,
        grammar.Release, grammar.Update,
    ]


def test_redirect_reply_on_the_wire() -> None:
    """A dispatcher's TRY_SERVER reply is written exactly as SPEC 5 shows it."""
    redirect = Err.of(
        Status.TRY_SERVER, "ask the primary", n=2, addr="127.0.0.2", domain="a1 a2 a3"
    )
    protocol, transport = connect(Raising(lambda: redirect))
    protocol.dataReceived(b"RELEASE handle=H1\n")
    assert transport.value() == (
        b'ERR TRY_SERVER code=0xC80E1006 n=2 addr=127.0.0.2 domain="a1 a2 a3" '
        b'msg="ask the primary"\r\n'
    )


def test_quoting_round_trip_through_the_protocol() -> None:
    """Quoted, escaped text reaches the dispatcher intact, and comes back parseable."""
    text = 'Jo "the admin" said:\tC:\\temp\nnext line \u00e9\U0001f600'
    echo = Raising()
    protocol, transport = connect(echo)
    echo.result = lambda: Ok.of(data=text, msg_copy=text)
    line = client_side.format_request("MESSAGE", text=text)
    assert b"\n" not in line[:-1]
    protocol.dataReceived(line.replace(b"\n", b"\r\n"))
    (reply,) = read_replies(transport.value())
    assert reply == Ok.of(data=text, msg_copy=text)
    pool = FakeLicences()
    protocol, transport = connect(pool)
    protocol.dataReceived(line)
    assert pool.messages == [text]


def test_ping_help_answered_by_protocol() -> None:
    """PING and HELP never reach the dispatcher."""
    pool = FakeLicences()
    protocol, transport = connect(pool)
    protocol.dataReceived(b"PING\nhelp\nHELP release\nHELP BORROW\n")
    got = read_replies(transport.value())
    assert got[0] == Ok.of("pong")
    assert got[1] == grammar.help_listing()
    assert got[2] == grammar.help_listing("RELEASE")
    assert status_of(got[3]) is Status.UNKNOWN_COMMAND
    assert pool.calls == []
    assert not transport.disconnecting


def test_quit_says_bye_and_closes() -> None:
    """QUIT answers OK bye, closes, and ignores what follows it."""
    pool = FakeLicences()
    protocol, transport = connect(pool)
    protocol.dataReceived(b"PING\r\nQUIT\r\n" + REQUEST % 1 + b"\r\n")
    assert reply_lines(transport.value()) == ["OK pong", "OK bye"]
    assert transport.disconnecting
    assert transport.producer is None  # unregistered, or a real TCP close would hang
    protocol.dataReceived(b"PING\n")
    assert reply_lines(transport.value()) == ["OK pong", "OK bye"]
    assert pool.calls == []


# -- framing ----------------------------------------------------------------


def test_lf_crlf_and_fragments() -> None:
    """LF and CRLF lines both work, split anywhere across packets."""
    protocol, transport = connect(FakeLicences())
    stream = b"PING\nPING\r\n\r\n\n  \nping\r\n"
    for i in range(len(stream)):
        protocol.dataReceived(stream[i : i + 1])
    assert reply_lines(transport.value()) == ["OK pong"] * 3


def test_blank_lines_get_no_reply() -> None:
    """Empty lines are ignored."""
    protocol, transport = connect(FakeLicences())
    protocol.dataReceived(b"\n\r\n \t \n")
    assert transport.value() == b""


def test_line_of_exactly_the_limit_is_accepted() -> None:
    """1024 bytes plus CR LF is a normal line."""
    protocol, transport = connect(pool := FakeLicences())
    prefix = b'MESSAGE text="'
    line = prefix + b"x" * (grammar.MAX_LINE_BYTES - len(prefix) - 1) + b'"'
    assert len(line) == grammar.MAX_LINE_BYTES
    protocol.dataReceived(line + b"\r")
    protocol.dataReceived(b"\n")
    assert reply_lines(transport.value()) == ["OK"]
    assert pool.messages == ["x" * (grammar.MAX_LINE_BYTES - len(prefix) - 1)]
    assert not transport.disconnecting


def test_over_long_line_closes() -> None:
    """1025 bytes before the LF: ERR LINE_TOO_LONG and the connection closes."""
    pool = FakeLicences()
    protocol, transport = connect(pool)
    protocol.dataReceived(b"PING\n" + b"M" * (grammar.MAX_LINE_BYTES + 1) + b"\nPING\n")
    got = read_replies(transport.value())
    assert got[0] == Ok.of("pong")
    assert status_of(got[1]) is Status.LINE_TOO_LONG
    assert len(got) == 2
    assert transport.disconnecting


def test_over_long_unfinished_line_closes_at_once() -> None:
    """A client can't make the server buffer an endless line: it is cut off early."""
    protocol, transport = connect(FakeLicences())
    protocol.dataReceived(b"x" * grammar.MAX_LINE_BYTES + b"\r")
    assert transport.value() == b"" and not transport.disconnecting
    protocol.dataReceived(b"y")
    assert status_of(read_replies(transport.value())[0]) is Status.LINE_TOO_LONG
    assert transport.disconnecting


def test_crlf_split_at_the_limit() -> None:
    """A 1024-byte line whose CR arrives first and LF later is not over-long."""
    protocol, transport = connect(FakeLicences())
    protocol.dataReceived(b"P" * grammar.MAX_LINE_BYTES + b"\r")
    protocol.dataReceived(b"\nPING\n")
    got = read_replies(transport.value())
    assert status_of(got[0]) is Status.UNKNOWN_COMMAND
    assert got[1] == Ok.of("pong")


# -- errors keep the connection ---------------------------------------------


def test_errors_keep_connection() -> None:
    """Missing key, bad number, repeated key, unknown verb, bad UTF-8: ERR, then go on."""
    pool = FakeLicences()
    protocol, transport = connect(pool)
    protocol.dataReceived(
        b"REQUEST publisher=P product=Q version=1 user=u host=h\n"
        b"REQUEST publisher=P product=Q version=1 user=u host=h pid=abc\n"
        b"RELEASE handle=H1 handle=H2\n"
        b"FROB x=1\n"
        b"PING \xc3\x28\n"
        b'MESSAGE text="unfinished\n'
        b"PING\n"
    )
    got = read_replies(transport.value())
    assert [r.status if isinstance(r, Err) else r for r in got] == [
        Status.SYNTAX, Status.SYNTAX, Status.SYNTAX, Status.UNKNOWN_COMMAND, Status.SYNTAX,
        Status.SYNTAX, Ok.of("pong"),
    ]
    messages = [r.msg for r in got if isinstance(r, Err)]
    assert "missing pid=" in messages[0]
    assert "pid=" in messages[1] and "'abc'" in messages[1]
    assert "handle= given twice" in messages[2]
    assert "UTF-8" in messages[4]
    assert pool.calls == []
    assert not transport.disconnecting


def test_telnet_negotiation_is_ignored() -> None:
    """A telnet client's IAC negotiation does not disturb the session."""
    protocol, transport = connect(FakeLicences())
    protocol.dataReceived(b"\xff\xfd\x03\xff\xfb\x18\xff\xfb\x1f")
    protocol.dataReceived(b"\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0PING\r\n\xff\xfd\x01\r\n")
    assert reply_lines(transport.value()) == ["OK pong"]


def test_dispatcher_exception_is_internal_and_logged() -> None:
    """A dispatcher that raises gives ERR INTERNAL, logs the failure, keeps serving."""
    protocol, transport = connect(Raising())
    with capturedLogs() as events:
        protocol.dataReceived(b"RELEASE handle=H1\nPING\n")
    got = read_replies(transport.value())
    assert status_of(got[0]) is Status.INTERNAL and got[1] == Ok.of("pong")
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["verb"] == "RELEASE"


def test_failed_deferred_and_non_reply_are_internal() -> None:
    """A failed Deferred, or an answer that is no reply, gives ERR INTERNAL."""
    for result in (
        lambda: fail(ValueError("boom")),
        lambda: "OK",
        lambda: succeed(42),
        lambda: None,
    ):
        protocol, transport = connect(Raising(result))
        with capturedLogs() as events:
            protocol.dataReceived(b"RELEASE handle=H1\n")
        assert [status_of(r) for r in read_replies(transport.value())] == [Status.INTERNAL]
        assert any(e["log_level"] in (LogLevel.error, LogLevel.critical) for e in events)
        assert not transport.disconnecting


def test_non_ipv4_peer_refused() -> None:
    """Clients over anything but IPv4 get ERR ILLEGAL and are closed."""
    protocol, transport = connect(FakeLicences(), peer=UNIXAddress(b"/tmp/x"))  # type: ignore[arg-type]
    assert status_of(read_replies(transport.value())[0]) is Status.ILLEGAL
    assert transport.disconnecting
    protocol.dataReceived(b"PING\n")
    assert len(read_replies(transport.value())) == 1


# -- pipelining ---------------------------------------------------------------


def test_replies_in_request_order_whatever_the_deferreds_do() -> None:
    """Pipelined requests are answered in order even if later ones finish first."""
    manual = Manual()
    protocol, transport = connect(manual)
    protocol.dataReceived(b"RELEASE handle=A\nRELEASE handle=B\nPING\nRELEASE handle=C\n")
    assert transport.value() == b""
    (_, a), (_, b), (_, c) = manual.pending
    c.callback(Ok.of(handle="C"))
    b.callback(Ok.of(handle="B"))
    assert transport.value() == b""
    a.callback(Ok.of(handle="A"))
    assert reply_lines(transport.value()) == [
        "OK handle=A", "OK handle=B", "OK pong", "OK handle=C",
    ]


def test_sync_error_waits_behind_pending_reply() -> None:
    """A syntax error answered at once still waits for the earlier pending reply."""
    manual = Manual()
    protocol, transport = connect(manual)
    protocol.dataReceived(b"RELEASE handle=A\nBOGUS\n")
    assert transport.value() == b""
    manual.pending[0][1].callback(Ok.of(handle="A"))
    got = read_replies(transport.value())
    assert got[0] == Ok.of(handle="A") and status_of(got[1]) is Status.UNKNOWN_COMMAND


def test_quit_waits_for_pending_replies() -> None:
    """QUIT behind a pending request closes only after that reply is written."""
    manual = Manual()
    protocol, transport = connect(manual)
    protocol.dataReceived(b"RELEASE handle=A\nQUIT\nPING\n")
    assert transport.value() == b"" and not transport.disconnecting
    manual.pending[0][1].callback(Ok.of(handle="A"))
    assert reply_lines(transport.value()) == ["OK handle=A", "OK bye"]
    assert transport.disconnecting


def test_pipeline_limit_pauses_reading() -> None:
    """Beyond max_pipeline pending requests, reading pauses until replies settle."""
    manual = Manual()
    protocol, transport = connect(manual, max_pipeline=2)
    protocol.dataReceived(b"".join(b"RELEASE handle=%d\n" % i for i in range(5)))
    assert len(manual.pending) == 2
    assert transport.producerState == "paused"
    manual.pending[1][1].callback(Ok.of(handle="1"))
    assert len(manual.pending) == 2  # the head is still pending: nothing written yet
    manual.pending[0][1].callback(Ok.of(handle="0"))
    assert len(manual.pending) == 4
    for i in (2, 3):
        manual.pending[i][1].callback(Ok.of(handle=str(i)))
    assert len(manual.pending) == 5
    assert transport.producerState == "producing"
    manual.pending[4][1].callback(Ok.of(handle="4"))
    assert reply_lines(transport.value()) == [f"OK handle={i}" for i in range(5)]


def test_write_backpressure_pauses_reading() -> None:
    """When the transport's write buffer is full, no more lines are processed."""
    protocol, transport = connect(FakeLicences())
    assert transport.producer is protocol and transport.streaming
    protocol.pauseProducing()  # what a real transport does when its buffer fills
    assert transport.producerState == "paused"
    protocol.dataReceived(b"PING\nPING\n")
    assert transport.value() == b""
    protocol.resumeProducing()
    assert transport.producerState == "producing"
    assert reply_lines(transport.value()) == ["OK pong", "OK pong"]


def test_connection_lost_with_pending_deferreds() -> None:
    """Replies that settle after the connection is gone are dropped quietly."""
    manual = Manual()
    protocol, transport = connect(manual)
    protocol.dataReceived(b"RELEASE handle=A\nRELEASE handle=B\nRELEASE handle=C\n")
    protocol.connectionLost(Failure(ConnectionDone()))
    transport.clear()
    (_, a), (_, b), (_, c) = manual.pending
    with capturedLogs() as events:
        b.callback(Ok.of(handle="B"))
        a.errback(Failure(RuntimeError("late")))
        c.callback(Ok.of(handle="C"))
    assert transport.value() == b""
    assert any(e.get("log_failure") is not None for e in events)
    # Deferreds were consumed: no "Unhandled error in Deferred" later.
    for d in (a, b, c):
        assert d.called and d.result is None
    protocol.dataReceived(b"PING\n")
    assert transport.value() == b""


def test_other_connections_are_unaffected() -> None:
    """One client's over-long line or failure closes only its own connection."""
    pool = FakeLicences()
    factory = ClientProtocolFactory(pool, Clock())
    ends = []
    for port in (1, 2):
        peer = IPv4Address("TCP", "127.0.0.1", port)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        ends.append((protocol, transport))
    (bad, bad_t), (good, good_t) = ends
    good.dataReceived(REQUEST % 1 + b"\n")
    bad.dataReceived(b"\xff" * 3000)
    good.dataReceived(b"PING\n")
    assert bad_t.disconnecting and not good_t.disconnecting
    got = read_replies(good_t.value())
    assert ok_handle(got[0]) == "H1" and got[1] == Ok.of("pong")


# -- idle timeout -------------------------------------------------------------


def test_no_idle_timeout_by_default() -> None:
    """Without idle_timeout nothing is scheduled and the connection stays."""
    clock = Clock()
    _, transport = connect(FakeLicences(), clock)
    assert clock.getDelayedCalls() == []
    clock.advance(10**6)
    assert not transport.disconnecting


def test_idle_timeout_closes_silent_connections() -> None:
    """With idle_timeout, silence closes the connection; input resets the timer."""
    clock = Clock()
    protocol, transport = connect(FakeLicences(), clock, idle_timeout=30)
    clock.advance(29)
    protocol.dataReceived(b"PING\n")
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    assert reply_lines(transport.value()) == ["OK pong"]


def test_trickled_bytes_without_a_line_end_do_not_keep_a_connection() -> None:
    """A slow client sending a byte at a time and never a whole line is idle.

    Only complete lines count as activity: a "slowloris" trickling one byte a
    second would otherwise hold its descriptor for ever.
    """
    clock = Clock()
    protocol, transport = connect(FakeLicences(), clock, idle_timeout=30)
    for _ in range(29):
        clock.advance(1)
        protocol.dataReceived(b"P")
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_a_line_completed_slowly_counts_as_activity() -> None:
    """The line a slow typist finishes resets the idle timer like any other."""
    clock = Clock()
    protocol, transport = connect(FakeLicences(), clock, idle_timeout=30)
    for byte in b"PIN":
        clock.advance(9)
        protocol.dataReceived(bytes([byte]))
    protocol.dataReceived(b"G\n")
    clock.advance(29)
    assert not transport.disconnecting
    assert reply_lines(transport.value()) == ["OK pong"]


def test_idle_timeout_waits_for_pending_replies() -> None:
    """A connection waiting on the dispatcher is not idle."""
    clock = Clock()
    manual = Manual()
    protocol, transport = connect(manual, clock, idle_timeout=5)
    protocol.dataReceived(b"RELEASE handle=A\n")
    clock.advance(12)
    assert not transport.disconnecting
    manual.pending[0][1].callback(Ok.of(handle="A"))
    clock.advance(5)
    assert transport.disconnecting
    assert reply_lines(transport.value()) == ["OK handle=A"]


def test_timer_cancelled_on_connection_lost() -> None:
    """Losing the connection cancels the idle timer."""
    clock = Clock()
    protocol, _ = connect(FakeLicences(), clock, idle_timeout=5)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_delayed_dispatcher_with_clock() -> None:
    """A dispatcher answering later on the clock gets its replies written then."""
    clock = Clock()
    pool = FakeLicences(clock=clock, delay=1.0)
    protocol, transport = connect(pool, clock)
    protocol.dataReceived(REQUEST % 1 + b"\nPING\n")
    assert transport.value() == b""
    clock.advance(1.0)
    got = read_replies(transport.value())
    assert ok_handle(got[0]) == "H1" and got[1] == Ok.of("pong")


def test_factory_checks_options() -> None:
    """Nonsense options are refused when the factory is built."""
    with pytest.raises(ValueError):
        ClientProtocolFactory(FakeLicences(), Clock(), idle_timeout=0)
    with pytest.raises(ValueError):
        ClientProtocolFactory(FakeLicences(), Clock(), max_pipeline=0)

