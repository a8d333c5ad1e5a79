"""Property tests (hypothesis): the permit parser and reader never crash, round trips hold,
and no mutation of a sealed permit yields anything but the original or a known error."""

from __future__ import annotations

import datetime
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.format import format_permit, is_usable_host_address, parse_permit
from hqnlsd.permits.model import FORMAT_LINE, HostId, Permit, ProductPermit
from hqnlsd.permits.policy import VALID_POLICY_BITS
from hqnlsd.permits.reader import decode_permit_bytes, read_permit_text
from hqnlsd.permits.seal import PublisherKey, TrustedKeys, seal_text, sign_permit

KEY = PublisherKey.generate()
TRUSTED = TrustedKeys.of(KEY.public_key)
SETTINGS = settings(
    derandomize=True,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------

addresses = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(is_usable_host_address)
hosts = st.builds(HostId, addresses, st.integers(0, 0xFFFFFFFF))
words = st.text(
    st.characters(categories=("L", "N", "P", "S"), exclude_characters="#"), min_size=1, max_size=8
)
names = st.lists(words, min_size=1, max_size=3).map(" ".join)
dates = st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31))


@st.composite
def products(draw: st.DrawFn) -> ProductPermit:
    """Any valid product."""
    node = draw(st.integers(0, 65535))
    floating = draw(st.integers(1 if node == 0 else 0, 65535 - node))
    start, expiry = sorted((draw(dates), draw(dates)))
    policy = draw(st.integers(0, 2**32 - 1)) & VALID_POLICY_BITS
    return ProductPermit(
        publisher=draw(names),
        product=draw(names),
        version=draw(names),
        policy=policy,
        node_count=node,
        floating_count=floating,
        start=start,
        expiry=expiry,
        update_minutes=draw(st.integers(1, 65535)),
        data=tuple(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20))),
        locked_nodes=tuple(draw(st.lists(hosts, max_size=4))),
    )


@st.composite
def permits(draw: st.DrawFn) -> Permit:
    """Any valid permit (distinct server addresses)."""
    servers = draw(st.lists(hosts, min_size=1, max_size=20, unique_by=lambda h: h.address))
    return Permit(
        number=draw(st.integers(0, 10**18 - 1)),
        servers=tuple(servers),
        products=tuple(draw(st.lists(products(), min_size=1, max_size=3))),
    )


PERMIT_LIKE_LINES = [
    FORMAT_LINE, "NUMBER: 1", "SERVERS: 1", "SERVERS: 2", "127.0.0.1 0x1", "10.0.0.1 0xffffffff",
    "PERMITS: 1", "PERMITS: 2", "Harlequin", "LispWorks", "8.0",
    "0x41 0 5 01/01/2026 31/12/2030 5", "0x41 1 0 29/02/2024 01/03/2024 1", "DATA: 2", "1 2",
    "-5", "LOCKED-NODES: 0", "LOCKED-NODES: 1", "LOCK: 0123456789abcdef AAAA", "# comment", "",
]
permit_like_text = st.lists(
    st.one_of(st.sampled_from(PERMIT_LIKE_LINES), st.text(max_size=30)), max_size=40
).map("\n".join)


def check_reader_result(text: str) -> None:
    """The reader returns a result with a known condition, never raises."""
    result = read_permit_text(text, path="fuzz", trusted=TRUSTED)
    if result.error is not None:
        assert isinstance(result.error, PermitError)
        assert result.error.condition in set(Condition)
        assert result.error.line is None or result.error.line >= 1
        assert str(result.error).startswith("fuzz")
    else:
        assert result.permit is not None and result.permit.products


def check_parser_result(text: str) -> None:
    """The form parser returns a permit or raises PermitError with a known condition."""
    try:
        parsed = parse_permit(text)
    except PermitError as e:
        assert e.condition in set(Condition)
    else:
        assert 1 <= len(parsed.permit.servers) <= 20
        assert len(parsed.permit.products) == parsed.header.header.count


# -- properties ---------------------------------------------------------------


@SETTINGS
@given(st.text())
def test_reader_never_crashes_on_arbitrary_text(text: str) -> None:
    """Arbitrary text: a valid permit or a PermitError with a known condition."""
    check_reader_result(text)
    check_parser_result(text)


@SETTINGS
@given(st.binary())
def test_reader_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes (decoded as the file reader does) never crash the reader."""
    check_reader_result(decode_permit_bytes(data))


@SETTINGS
@given(permit_like_text)
def test_reader_never_crashes_on_permit_like_text(text: str) -> None:
    """Text made of permit-like lines reaches deep into the parser without crashing."""
    check_reader_result(text)
    check_parser_result(text)
    check_reader_result(FORMAT_LINE + "\nNUMBER: 1\nSERVERS: 1\n127.0.0.1 0x1\n" + text)


@SETTINGS
@given(permits())
def test_form_round_trip(permit: Permit) -> None:
    """Any valid permit written as a form parses back equal."""
    assert parse_permit(format_permit(permit)).permit == permit


@settings(SETTINGS, max_examples=100)
@given(permits())
def test_sign_read_round_trip(permit: Permit) -> None:
    """Any valid permit, sealed (by writer or by text), reads back valid and equal."""
    for text in (sign_permit(permit, KEY), seal_text(format_permit(permit), KEY)):
        result = read_permit_text(text, path="p", trusted=TRUSTED)
        assert result.error is None and result.permit == permit


SEALED_PERMIT = Permit(
    number=12,
    servers=(
        HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1A2B3C4D),
        HostId(ipaddress.IPv4Address("127.0.0.2"), 0x2),
    ),
    products=(
        ProductPermit("Harlequin", "LispWorks", "8.0", 0x41, 1, 5, datetime.date(2026, 1, 1),
                      datetime.date(2030, 12, 31), 5, (1, 2, 3, 4),
                      (HostId(ipaddress.IPv4Address("10.0.0.9"), 0x99),)),
        ProductPermit("Harlequin", "KnowledgeWorks", "2 beta", 0x10011, 0, 1,
                      datetime.date(2026, 1, 1), datetime.date(2026, 1, 1), 60, (-7,), ()),
    ),
)
SEALED_TEXT = sign_permit(SEALED_PERMIT, KEY)
SEALED_LINES = SEALED_TEXT.split("\n")


@st.composite
def mutations(draw: st.DrawFn) -> str:
    """The sealed permit with one to three random edits."""
    lines = list(SEALED_LINES)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["char", "delete", "duplicate", "swap", "insert", "digit"]))
        index = draw(st.integers(0, len(lines) - 1))
        line = lines[index]
        if kind == "char" and line:
            pos = draw(st.integers(0, len(line) - 1))
            lines[index] = line[:pos] + draw(st.characters()) + line[pos + 1 :]
        elif kind == "digit" and any(c.isdigit() for c in line):
            pos = draw(st.sampled_from([i for i, c in enumerate(line) if c.isdigit()]))
            lines[index] = line[:pos] + draw(st.sampled_from("0123456789")) + line[pos + 1 :]
        elif kind == "delete" and len(lines) > 1:
            del lines[index]
        elif kind == "duplicate":
            lines.insert(index, line)
        elif kind == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
        elif kind == "insert":
            lines.insert(index, draw(st.sampled_from(PERMIT_LIKE_LINES) | st.text(max_size=20)))
    return "\n".join(lines)


@settings(SETTINGS, max_examples=500)
@given(mutations())
def test_mutated_sealed_permit_is_original_or_error(text: str) -> None:
    """No edit of a sealed permit yields a different valid permit.

    Either the permit read is exactly the original (the edit touched only
    comments, spacing or the spelling of a number), or the reader reports a
    known condition and what it kept valid is a prefix of the original products.
    """
    result = read_permit_text(text, path="m", trusted=TRUSTED)
    if result.error is None:
        assert result.permit == SEALED_PERMIT
    else:
        assert result.error.condition in set(Condition)
        if result.permit is not None:
            assert result.permit.number == SEALED_PERMIT.number
            assert result.permit.servers == SEALED_PERMIT.servers
            kept = result.permit.products
            assert kept == SEALED_PERMIT.products[: len(kept)]


def test_mutation_strategy_reaches_both_outcomes() -> None:
    """Sanity check of the strategy: the original text itself is valid, a digit edit is not."""
    assert read_permit_text(SEALED_TEXT, path="m", trusted=TRUSTED).permit == SEALED_PERMIT
    edited = SEALED_TEXT.replace("0x41 ", "0x43 ")
    assert read_permit_text(edited, path="m", trusted=TRUSTED).error is not None
