# mypy: allow-untyped-calls
"""Hypothesis properties of the client protocol under arbitrary input.

- no input, however chunked, makes the protocol raise;
- every complete non-blank line gets exactly one reply (a listing counts as
  one), in request order, whatever order the dispatcher's Deferreds settle in,
  until QUIT or an over-long line ends the connection;
- a second connection on the same factory is not disturbed.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from hqnlsd.protocols import grammar, tokenizer
from hqnlsd.protocols.client import ClientProtocol, ClientProtocolFactory
from hqnlsd.protocols.replies import Err, Ok, Reply, format_reply_text
from hqnlsd.status import Status
from tests.protocols.test_protocol_fakes import connect, read_replies

#: How the scripted dispatcher treats a REQUEST, chosen by its user= value.
BEHAVIOURS = ("sync", "later", "raise", "fail", "junk")


class Scripted:
    """A dispatcher whose behaviour each REQUEST picks with ``user=``.

    sync: OK now; later: OK through a Deferred settled by `settle_all`;
    raise: raises; fail: a Deferred that fails later; junk: not a reply.
    Every OK carries the request's pid, so tests can check the order.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Reply], Reply | None]] = []

    def dispatch(
        self, command: grammar.DispatchedCommand, peer: IPv4Address
    ) -> Reply | Deferred[Reply]:
        """Behave as the request's user= says; other verbs answer OK at once."""
        if not isinstance(command, grammar.Request):
            return Ok.of(verb=command.verb)
        reply = Ok.of(pid=command.pid)
        match command.user:
            case "sync":
                return reply
            case "later" | "fail":
                d: Deferred[Reply] = Deferred()
                self.waiting.append((d, reply if command.user == "later" else None))
                return d
            case "raise":
                raise RuntimeError("scripted failure")
        return "junk"  # type: ignore[return-value]

    def settle_all(self, rng: random.Random) -> None:
        """Settle every waiting Deferred, in an order `rng` chooses."""
        while self.waiting:
            d, reply = self.waiting.pop(rng.randrange(len(self.waiting)))
            if reply is None:
                d.errback(Failure(RuntimeError("scripted late failure")))
            else:
                d.callback(reply)


def request_line(pid: int, behaviour: str, verb: str = "REQUEST") -> bytes:
    """A valid REQUEST line whose dispatcher behaviour is `behaviour`."""
    return b"%s publisher=P product=Q version=1 user=%s host=h pid=%d" % (
        verb.encode(), behaviour.encode(), pid,
    )


def expected_reply(line: bytes) -> str | None:
    """What the scripted dispatcher answers to a REQUEST line we generated, or None."""
    for behaviour in BEHAVIOURS:
        if b" user=%s " % behaviour.encode() in line and line.lower().startswith(b"request "):
            if behaviour in ("sync", "later"):
                pid = int(line.rsplit(b"pid=", 1)[1].rstrip(b"\r"))
                return f"OK pid={pid}"
            return "INTERNAL"
    return None


def is_blank(line: bytes) -> bool:
    """Independent of the parser: only blanks, and at most one CR at the end."""
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.strip(b" \t") == b"" and b"\r" not in line and b"\xff" not in line


def is_over_long(line: bytes) -> bool:
    """More than MAX_LINE_BYTES before the LF, not counting one CR."""
    if line.endswith(b"\r"):
        line = line[:-1]
    return len(line) > grammar.MAX_LINE_BYTES


# Lines without LF and without 0xFF (telnet stripping would change what is blank).
garbage = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\xff", b""))
long_garbage = st.one_of(
    st.sampled_from([1023, 1024, 1025, 1026]), st.integers(min_value=1000, max_value=1100)
).map(lambda n: b"A" * n)
text_lines = st.text(max_size=40).map(lambda t: t.replace("\n", "").encode("utf-8"))
requests = st.tuples(
    st.integers(0, 10**6),
    st.sampled_from((*BEHAVIOURS, "later", "later")),
    st.sampled_from(["REQUEST", "request", "Request"]),
).map(lambda t: request_line(*t))
valid = st.one_of(
    st.sampled_from([b"PING", b"ping", b"HELP", b"HELP request", b"help USERS",
                     b'MESSAGE text="hi there"', b"RELEASE handle=H1", b"UPDATE handle=x",
                     b"USERS publisher=P product=Q version=1", b"QUERY handle=H what=data"]),
    requests,
    requests,
)
quit_line = st.sampled_from([b"QUIT", b"quit", b"  QUIT  "])
# Mostly valid commands, some garbage; at most one line that ends the connection,
# somewhere, so that most examples get far enough to test ordering.
ordinary = st.one_of(valid, valid, valid, valid, garbage, text_lines)


def insert_ender(body: list[bytes], ender: bytes | None, where: int) -> list[bytes]:
    """`body` with `ender` (if any) inserted at `where` (modulo the length)."""
    if ender is None:
        return body
    where %= len(body) + 1
    return [*body[:where], ender, *body[where:]]


lines = st.builds(
    insert_ender,
    st.lists(ordinary, max_size=25),
    st.one_of(st.none(), quit_line, long_garbage),
    st.integers(min_value=0),
)
terminators = st.sampled_from([b"\n", b"\r\n"])


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` split at the given positions (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def fresh_pair(
    dispatcher: Scripted, max_pipeline: int
) -> tuple[ClientProtocol, StringTransport, ClientProtocol, StringTransport]:
    """Two connections from one factory: the one under test and a bystander."""
    factory = ClientProtocolFactory(dispatcher, Clock(), max_pipeline=max_pipeline)
    ends = []
    for port in (1, 2):
        peer = IPv4Address("TCP", "127.0.0.1", port)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        ends.append((protocol, transport))
    (a, at), (b, bt) = ends
    return a, at, b, bt


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines,
    terminator_choices=st.lists(terminators, min_size=1),
    tail=st.one_of(st.just(b""), garbage, long_garbage),
    cuts=st.lists(st.integers(min_value=0, max_value=10**5), max_size=12),
    max_pipeline=st.integers(min_value=1, max_value=8),
    seed=st.randoms(use_true_random=False),
)
def test_one_reply_per_line_in_order(
    lines: list[bytes],
    terminator_choices: list[bytes],
    tail: bytes,
    cuts: list[int],
    max_pipeline: int,
    seed: random.Random,
) -> None:
    """Every complete non-blank line gets one reply, in order; others are undisturbed."""
    dispatcher = Scripted()
    protocol, transport, bystander, bystander_t = fresh_pair(dispatcher, max_pipeline)
    data = b"".join(
        line + terminator_choices[i % len(terminator_choices)] for i, line in enumerate(lines)
    ) + tail
    with capturedLogs():
        for i, chunk in enumerate(chunked(data, cuts)):
            protocol.dataReceived(chunk)
            bystander.dataReceived(request_line(i, "sync") + b"\n")
            if seed.random() < 0.3:
                dispatcher.settle_all(seed)
        dispatcher.settle_all(seed)

    replies = read_replies(transport.value())
    *raw_lines, tail = data.split(b"\n")  # what the protocol sees, CRs included
    position = 0
    closed_by = None
    for line in raw_lines:
        if is_over_long(line):
            assert position < len(replies), "no reply to an over-long line"
            reply = replies[position]
            assert isinstance(reply, Err) and reply.status is Status.LINE_TOO_LONG
            position += 1
            closed_by = "long"
            break
        if is_blank(line):
            continue
        assert position < len(replies), f"no reply to {line!r}"
        reply = replies[position]
        position += 1
        expected = expected_reply(line)
        if expected == "INTERNAL":
            assert isinstance(reply, Err) and reply.status is Status.INTERNAL
        elif expected is not None:
            assert format_reply_text(reply) == [expected]
        if reply == Ok.of("bye"):
            closed_by = "quit"
            break
    if closed_by is None and is_over_long(tail):
        reply = replies[position]
        assert isinstance(reply, Err) and reply.status is Status.LINE_TOO_LONG
        position += 1
        closed_by = "long"
    assert position == len(replies), f"extra replies: {replies[position:]}"
    assert transport.disconnecting == (closed_by is not None)

    # The bystander got exactly its own answers, in order, and stays open.
    bystander_replies = reply_texts(bystander_t.value())
    assert bystander_replies == [f"OK pid={i}" for i in range(len(bystander_replies))]
    assert len(bystander_replies) == len(chunked(data, cuts))
    assert not bystander_t.disconnecting


def reply_texts(data: bytes) -> list[str]:
    """The reply lines of a connection that only gets one-line replies."""
    return data.decode().split("\r\n")[:-1]


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=1200), max_size=8),
    settle_each=st.booleans(),
    seed=st.randoms(use_true_random=False),
)
def test_arbitrary_bytes_never_raise(
    chunks: list[bytes], settle_each: bool, seed: random.Random
) -> None:
    """Any bytes (telnet IAC, bad UTF-8, huge lines) give only well-formed replies."""
    dispatcher = Scripted()
    protocol, transport = connect(dispatcher, max_pipeline=3)
    with capturedLogs():
        for chunk in chunks:
            protocol.dataReceived(chunk)
            if settle_each:
                dispatcher.settle_all(seed)
        dispatcher.settle_all(seed)
    replies = read_replies(transport.value())
    *raw_lines, tail = b"".join(chunks).split(b"\n")
    expected = 0
    stopped = False
    for line in raw_lines:
        if is_over_long(line):
            expected += 1
            stopped = True
            break
        kind = classify(line)
        if kind != "blank":
            expected += 1
        if kind == "quit":
            stopped = True
            break
    if not stopped and is_over_long(tail):
        expected += 1
        stopped = True
    assert len(replies) == expected
    assert transport.disconnecting == stopped


def classify(line: bytes) -> str:
    """blank, quit or other: the parser decides only which lines are blank or QUIT."""
    try:
        command = grammar.parse_line(line)
    except tokenizer.WireError:
        return "other"
    if command is None:
        return "blank"
    return "quit" if isinstance(command, grammar.Quit) else "other"
