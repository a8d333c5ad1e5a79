"""Hostile input without a daemon: the seeded generators of `tests.hostile` fed to the
parsers and readers in process (issue 12).

- fuzzed client protocol lines: `grammar.parse_line` gives a command, nothing, or a
  `WireError`; a `ClientProtocol` answers every line it reads, in well-formed
  replies, until QUIT or an over-long line ends the connection;
- mutated sealed permit files: the daemon's reader never raises and never returns
  a product the publisher did not seal (`tests.hostile.check_mutated_permit`);
- fuzzed admin protocol lines: `hqnlsd.admin.wire.decode` gives an object or a
  `WireError` (deep nesting used to escape as RecursionError).

bench/hostile.py runs the same generators at full size against a live daemon.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

from hqnlsd.admin import wire as admin_wire
from hqnlsd.permits.model import HostId, Permit
from hqnlsd.permits.reader import read_permit_file
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.protocols import grammar, tokenizer
from tests.daemons import Publisher, make_permit, product_permit
from tests.hostile import (
    admin_line,
    check_mutated_permit,
    mutate_permit,
    protocol_burst,
    protocol_line,
)
from tests.protocols.test_protocol_fakes import FakeLicences, connect, read_replies

#: Inputs per test in CI (bench/hostile.py: 250,000 lines, 22,000 permits).
LINES = 5000
PERMITS = 2000
ADMIN_LINES = 3000


def test_generators_are_seeded_and_line_shaped() -> None:
    """The same seed gives the same inputs; every generated line is exactly one line."""
    first = [protocol_line(random.Random(7)) for _ in range(3)]
    assert first == [protocol_line(random.Random(7)) for _ in range(3)]
    rng = random.Random(8)
    for line in protocol_burst(rng, 500):
        assert line.endswith(b"\n") and line.count(b"\n") == 1, line[:80]
    for line in (admin_line(rng) for _ in range(500)):
        assert line.endswith(b"\n") and line.count(b"\n") == 1, line[:80]
        assert line.strip(), line  # a blank admin line gets no answer; these all do


def test_fuzzed_lines_parse_or_fail_cleanly() -> None:
    """Every fuzzed line is a command, nothing (blank), or a WireError with a status."""
    rng = random.Random(12)
    outcomes = {"command": 0, "blank": 0, "error": 0}
    for _ in range(LINES):
        line = protocol_line(rng)[:-1]
        try:
            command = grammar.parse_line(line)
        except tokenizer.WireError as error:
            assert error.reply().status is error.status
            outcomes["error"] += 1
        else:
            outcomes["command" if command is not None else "blank"] += 1
    # the generator reaches both: most lines are wrong, some are commands
    assert outcomes["error"] > LINES // 2 and outcomes["command"] > 10, outcomes


def test_fuzzed_lines_through_the_protocol_are_each_answered() -> None:
    """Bursts of fuzzed lines through a ClientProtocol: no exception, well-formed
    replies, one per line, until QUIT or an over-long line closes the connection."""
    rng = random.Random(13)
    sent = answered = 0
    while sent < LINES:
        protocol, transport = connect(FakeLicences(capacity=3))
        expected = 0
        for line in protocol_burst(rng, 100):
            sent += 1
            if transport.disconnecting:
                break
            protocol.dataReceived(line)
            expected += _answered(line)
        replies = read_replies(transport.value())
        answered += len(replies)
        if transport.disconnecting:  # QUIT, or an over-long line: answered, then closed
            assert 1 <= len(replies) <= expected
        else:
            assert len(replies) == expected, (len(replies), expected)
        protocol.connectionLost()
    assert answered > LINES // 2


def _answered(line: bytes) -> bool:
    """Does the protocol answer ``line`` (LF-terminated)? Every line but a blank one."""
    try:
        return grammar.parse_line(line[:-1]) is not None
    except tokenizer.WireError:
        return True


def _sealed_permit(tmp_path: Path) -> tuple[bytes, TrustedKeys, Permit]:
    """A real sealed permit file (two products), its trusted key, and its permit."""
    publisher = Publisher.create(tmp_path / "keys")
    me = HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1234)
    original = make_permit(
        [me],
        [
            product_permit("Mutant", version="2.0", floating_count=7, data=(1, -2, 3)),
            product_permit("Other", version="1 beta", floating_count=1),
        ],
        number=3,
    )
    text = publisher.seal(original, title="mutant").encode()
    return text, TrustedKeys.of(publisher.key.public_key), original


def test_mutated_permit_files_never_give_a_product_not_sealed(tmp_path: Path) -> None:
    """Byte flips, truncations, duplications...: the reader never raises, and returns
    only the sealed permit itself or products exactly as sealed (or nothing)."""
    data, trusted, original = _sealed_permit(tmp_path)
    path = tmp_path / "mutant-hqn.permit"
    path.write_bytes(data)
    assert read_permit_file(path, trusted).permit == original
    rng = random.Random(22)
    valid = rejected = 0
    for _ in range(PERMITS):
        path.write_bytes(mutate_permit(rng, data))
        problem = check_mutated_permit(path, original, trusted)
        assert problem is None, (problem, path.read_bytes())
        if read_permit_file(path, trusted).error is None:
            valid += 1
        else:
            rejected += 1
    # both outcomes are reached: edits of comments and blanks keep the seals valid
    assert valid >= 1 and rejected > PERMITS // 2, (valid, rejected)


def test_fuzzed_admin_lines_decode_or_fail_cleanly() -> None:
    """Every fuzzed admin line decodes to an object or raises WireError (BAD_REQUEST):
    never another exception (a deeply nested array used to raise RecursionError,
    which dropped the admin connection with an unhandled error in the log)."""
    rng = random.Random(32)
    errors = 0
    for _ in range(ADMIN_LINES):
        line = admin_line(rng)[:-1]
        try:
            message = admin_wire.decode(line)
        except admin_wire.WireError as error:
            assert error.name == admin_wire.BAD_REQUEST
            errors += 1
        else:
            assert isinstance(message, dict)
    assert errors > ADMIN_LINES // 10


def test_deeply_nested_admin_line_is_a_bad_request() -> None:
    """The finding itself: 100,000 nested arrays are a BAD_REQUEST, not a RecursionError."""
    for line in (b"[" * 100_000 + b"]", b'{"v": 1, "cmd": "sinfo", "args": ' + b"{" * 50_000):
        try:
            admin_wire.decode(line)
        except admin_wire.WireError as error:
            assert error.name == admin_wire.BAD_REQUEST
            assert "nested" in error.message or "JSON" in error.message
        else:  # pragma: no cover - decode must refuse it
            raise AssertionError("a deeply nested line was accepted")
