"""Tests for hqnlsd.permits.format: the permit text parser and writer."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress

import pytest

from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.format import (
    PermitParser,
    Seals,
    format_permit,
    insert_seals,
    keyword_of,
    parse_form,
    parse_permit,
)
from hqnlsd.permits.model import HostId, Permit, ProductPermit

SPEC_EXAMPLE = """\
# Demo permit form
THE HQNLSD LICENSE SERVER VERSION 3.0
NUMBER: 1
SERVERS: 1
# address     unique-id
127.0.0.1     0x1a2b3c4d
PERMITS: 1
Harlequin
LispWorks
8.0
# policy  node  floating  start(dmy)   expiry(dmy)  update(min)
0x41      0     5         01/01/2026   31/12/2030   5
DATA: 4
1 2 3 4
LOCKED-NODES: 0
"""


def host(address: str, unique_id: int) -> HostId:
    """A HostId from a dotted quad and an id."""
    return HostId(ipaddress.IPv4Address(address), unique_id)


SPEC_PRODUCT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=0x41,
    node_count=0,
    floating_count=5,
    start=datetime.date(2026, 1, 1),
    expiry=datetime.date(2030, 12, 31),
    update_minutes=5,
    data=(1, 2, 3, 4),
)
SPEC_PERMIT = Permit(number=1, servers=(host("127.0.0.1", 0x1A2B3C4D),), products=(SPEC_PRODUCT,))

RICH_PERMIT = Permit(
    number=4242,
    servers=(host("10.0.0.1", 1), host("10.0.0.2", 0xFFFFFFFF), host("10.0.0.3", 0)),
    products=(
        SPEC_PRODUCT,
        ProductPermit(
            publisher="Harlequin Ltd.  (UK)",
            product="ScriptWorks RIP",
            version="6.1 beta 2",
            policy=0x1001F1,
            node_count=3,
            floating_count=0,
            start=datetime.date(1999, 2, 28),
            expiry=datetime.date(1999, 2, 28),
            update_minutes=65535,
            data=(*range(-10, 11), 2**31 - 1, -(2**31)),
            locked_nodes=(host("192.168.1.5", 0xABC), host("192.168.1.5", 0xDEF)),
        ),
    ),
)


def parse_error(text: str) -> PermitError:
    """The PermitError that parsing ``text`` (as a form) raises."""
    with pytest.raises(PermitError) as caught:
        parse_permit(text, path="t.form")
    return caught.value


class TestParseSpecExample:
    """The SPEC's example form parses exactly as written."""

    def test_spec_example_parses_to_the_expected_permit(self) -> None:
        """Every field of the SPEC example is read."""
        assert parse_form(SPEC_EXAMPLE) == SPEC_PERMIT

    def test_crlf_line_endings_read_the_same(self) -> None:
        """A form saved with CRLF line endings reads the same."""
        assert parse_form(SPEC_EXAMPLE.replace("\n", "\r\n")) == SPEC_PERMIT

    def test_no_final_newline(self) -> None:
        """The last line need not end with a newline."""
        assert parse_form(SPEC_EXAMPLE.rstrip("\n")) == SPEC_PERMIT

    def test_comments_and_blank_lines_anywhere(self) -> None:
        """A comment and a blank line between every two lines change nothing."""
        lines = SPEC_EXAMPLE.splitlines()
        text = "\n".join(f"\n   # comment {i}\n\n{line}" for i, line in enumerate(lines))
        assert parse_form(text + "\n# trailing comment\n\n") == SPEC_PERMIT

    def test_data_values_may_span_lines(self) -> None:
        """DATA integers may be spread over several lines."""
        text = SPEC_EXAMPLE.replace("1 2 3 4", "1\n2 3\n  # a comment\n4")
        assert parse_form(text).products[0].data == (1, 2, 3, 4)

    def test_signed_data_and_spacing(self) -> None:
        """DATA values are signed; extra whitespace is allowed."""
        text = SPEC_EXAMPLE.replace("1 2 3 4", "  -1\t+2   -3 4  ")
        assert parse_form(text).products[0].data == (-1, 2, -3, 4)

    def test_names_keep_inner_spaces_and_lose_outer_ones(self) -> None:
        """Publisher, product and version lines are kept verbatim minus outer spaces."""
        text = (
            SPEC_EXAMPLE.replace("Harlequin\n", "   Harlequin  Ltd (UK)  \n")
            .replace("LispWorks\n", "LispWorks Enterprise\n")
            .replace("8.0\n", "8.0 beta 1\t\n")
        )
        product = parse_form(text).products[0]
        assert (product.publisher, product.product, product.version) == (
            "Harlequin  Ltd (UK)",
            "LispWorks Enterprise",
            "8.0 beta 1",
        )

    def test_policy_without_0x_and_uppercase(self) -> None:
        """The policy word is hex with or without 0x, any case."""
        assert parse_form(SPEC_EXAMPLE.replace("0x41 ", "41   ")).products[0].policy == 0x41
        text = SPEC_EXAMPLE.replace("0x41 ", "0X1F3").replace("0x1a2b3c4d", "0X1A2B3C4D")
        permit = parse_form(text)
        assert permit.products[0].policy == 0x1F3
        assert permit.servers[0].unique_id == 0x1A2B3C4D

    def test_locked_nodes_are_read(self) -> None:
        """LOCKED-NODES: n is followed by n host lines."""
        text = SPEC_EXAMPLE.replace(
            "LOCKED-NODES: 0", "LOCKED-NODES: 2\n10.1.1.1 0x1\n# x\n10.1.1.2   0xffffffff"
        )
        assert parse_form(text).products[0].locked_nodes == (
            host("10.1.1.1", 1),
            host("10.1.1.2", 0xFFFFFFFF),
        )

    def test_lock_lines_are_optional_for_forms_and_recorded(self) -> None:
        """A form may carry lock lines (re-sealing); they are returned, not checked."""
        text = SPEC_EXAMPLE.replace("PERMITS: 1", "PERMITS: 1\nLOCK: abc def") + "LOCK: x y\n"
        parsed = parse_permit(text)
        assert parsed.permit == SPEC_PERMIT
        assert parsed.header.lock is not None and parsed.header.lock.value == "abc def"
        assert parsed.header.lock.line == 8
        assert parsed.products[0].lock is not None
        assert parsed.products[0].lock.value == "x y"

    def test_sealed_mode_requires_lock_lines(self) -> None:
        """With require_locks a form is refused at its first missing lock (105)."""
        with pytest.raises(PermitError) as caught:
            parse_permit(SPEC_EXAMPLE, require_locks=True)
        assert caught.value.condition is Condition.TRUNCATED
        assert caught.value.line == 8  # where the LOCK line should be
        assert "hqn_mp sign" in caught.value.message

    def test_incremental_parser_sections(self) -> None:
        """The parser yields header, then products, then checks the end."""
        parser = PermitParser(SPEC_EXAMPLE, require_locks=False)
        header = parser.read_header()
        assert header.header.count == 1
        assert header.header.servers == SPEC_PERMIT.servers
        assert header.end_line == 7
        product = parser.read_product()
        assert product.product == SPEC_PRODUCT
        assert (product.line, product.end_line) == (8, 15)
        parser.read_end()


class TestParseErrors:
    """Each malformed form stops at the right line with the right condition."""

    @pytest.mark.parametrize(
        ("old", "new", "condition", "line"),
        [
            ("THE HQNLSD LICENSE SERVER VERSION 3.0", "THE HQNLSD LICENSE SERVER VERSION 2.0",
             Condition.BAD_FORMAT_VERSION, 2),
            ("NUMBER: 1", "NUMBR: 1", Condition.TRUNCATED, 3),
            ("NUMBER: 1", "NUMBER: one", Condition.BAD_NUMBER, 3),
            ("NUMBER: 1", "NUMBER: -1", Condition.BAD_NUMBER, 3),
            ("SERVERS: 1", "SERVERS: 0", Condition.BAD_SERVER_COUNT, 4),
            ("SERVERS: 1", "SERVERS: 21", Condition.BAD_SERVER_COUNT, 4),
            ("SERVERS: 1", "SERVERS: x", Condition.BAD_NUMBER, 4),
            ("SERVERS: 1", "SERVERS: 2", Condition.TRUNCATED, 7),
            ("127.0.0.1     0x1a2b3c4d", "127.0.0.256 0x1", Condition.BAD_ADDRESS, 6),
            ("127.0.0.1     0x1a2b3c4d", "localhost 0x1", Condition.BAD_ADDRESS, 6),
            ("127.0.0.1     0x1a2b3c4d", "127.0.0.1", Condition.BAD_ADDRESS, 6),
            ("127.0.0.1     0x1a2b3c4d", "127.0.0.1 1a2b3c4d", Condition.BAD_UNIQUE_ID, 6),
            ("127.0.0.1     0x1a2b3c4d", "127.0.0.1 0x123456789", Condition.BAD_UNIQUE_ID, 6),
            ("127.0.0.1     0x1a2b3c4d", "0.0.0.0 0x1", Condition.UNKNOWN_HOST_ADDRESS, 6),
            ("127.0.0.1     0x1a2b3c4d", "255.255.255.255 0x1",
             Condition.UNKNOWN_HOST_ADDRESS, 6),
            ("127.0.0.1     0x1a2b3c4d", "224.0.0.1 0x1", Condition.UNKNOWN_HOST_ADDRESS, 6),
            ("PERMITS: 1", "PERMITS: 0", Condition.BAD_NUMBER, 7),
            ("PERMITS: 1", "PERMIT: 1", Condition.TRUNCATED, 7),
            ("Harlequin\n", "DATA: 4\n", Condition.TRUNCATED, 8),
            ("0x41      0     5", "0x41      0", Condition.BAD_NUMBER, 12),
            ("0x41 ", "0xg1 ", Condition.BAD_NUMBER, 12),
            ("0x41 ", "0x8041", Condition.BAD_POLICY, 12),
            ("0x41 ", "0x241", Condition.BAD_POLICY, 12),
            ("0x41 ", "0x100000000", Condition.BAD_POLICY, 12),
            ("0     5 ", "0     0 ", Condition.BAD_COUNTS, 12),
            ("0     5 ", "-1    5 ", Condition.BAD_COUNTS, 12),
            ("0     5 ", "0 65536 ", Condition.BAD_COUNTS, 12),
            ("0     5 ", "65535 1 ", Condition.BAD_COUNTS, 12),
            ("0     5 ", "0     x ", Condition.BAD_NUMBER, 12),
            ("01/01/2026", "31/02/2026", Condition.BAD_DATE, 12),
            ("01/01/2026", "2026-01-01", Condition.BAD_DATE, 12),
            ("31/12/2030", "1/13/2030", Condition.BAD_DATE, 12),
            ("01/01/2026", "01/01/2031", Condition.START_AFTER_EXPIRY, 12),
            ("31/12/2030   5", "31/12/2030   0", Condition.BAD_NUMBER, 12),
            ("31/12/2030   5", "31/12/2030   x", Condition.BAD_NUMBER, 12),
            ("DATA: 4", "DATA: 5", Condition.DATA_MISSING, 15),
            ("DATA: 4", "DATA: 3", Condition.BAD_NUMBER, 14),
            ("DATA: 4", "DATA: many", Condition.BAD_NUMBER, 13),
            ("1 2 3 4", "1 2 three 4", Condition.BAD_NUMBER, 14),
            ("1 2 3 4", "1 2 3 2147483648", Condition.BAD_NUMBER, 14),
            ("DATA: 4\n1 2 3 4\n", "", Condition.TRUNCATED, 13),
            ("LOCKED-NODES: 0", "LOCKED-NODES: 1", Condition.TRUNCATED, 15),
            ("LOCKED-NODES: 0", "LOCKED-NODES: 1\n1.2.3 0x1", Condition.BAD_LOCKED_NODE, 16),
            ("LOCKED-NODES: 0", "LOCKED-NODES: 1\n1.2.3.4 1", Condition.BAD_LOCKED_NODE, 16),
            ("LOCKED-NODES: 0", "LOCKED-NODES: 1\n0.0.0.0 0x1", Condition.BAD_LOCKED_NODE, 16),
            ("LOCKED-NODES: 0", "LOCKED-NODES: 1\n1.2.3.4", Condition.BAD_LOCKED_NODE, 16),
            ("LOCKED-NODES: 0", "LOCKED-NODES: 0\nextra", Condition.TEXT_AFTER_LAST_PRODUCT, 16),
        ],
    )
    def test_condition_and_line(
        self, old: str, new: str, condition: Condition, line: int
    ) -> None:
        """The first problem is reported with its condition, file and line."""
        assert old in SPEC_EXAMPLE
        error = parse_error(SPEC_EXAMPLE.replace(old, new, 1))
        assert (error.condition, error.line, error.path) == (condition, line, "t.form")
        assert str(error).startswith(f"t.form:{line}: error {int(condition)}: ")

    def test_duplicate_server_address_is_condition_101(self) -> None:
        """An address listed twice in the domain is not a usable host (101)."""
        text = SPEC_EXAMPLE.replace("SERVERS: 1", "SERVERS: 2").replace(
            "0x1a2b3c4d\n", "0x1a2b3c4d\n127.0.0.1 0x2\n"
        )
        error = parse_error(text)
        assert (error.condition, error.line) == (Condition.UNKNOWN_HOST_ADDRESS, 7)
        assert "twice" in error.message

    def test_truncated_anywhere_is_an_error(self) -> None:
        """Every proper prefix (cut at a line) of the example fails; only the whole reads."""
        lines = SPEC_EXAMPLE.splitlines(keepends=True)
        for cut in range(len(lines)):
            if all(line.startswith("#") for line in lines[cut:]):
                continue
            with pytest.raises(PermitError) as caught:
                parse_permit("".join(lines[:cut]))
            assert caught.value.condition in (
                Condition.TRUNCATED,
                Condition.DATA_MISSING,
            ), cut

    def test_empty_file(self) -> None:
        """An empty or comment-only file is truncated (105) at line 1."""
        for text in ("", "\n\n", "# only a comment\n"):
            error = parse_error(text)
            assert (error.condition, error.line) == (Condition.TRUNCATED, 1)

    def test_undecodable_line_is_reported_at_its_line(self) -> None:
        """A line holding bytes that are not UTF-8 (surrogate-escaped) is condition 105."""
        text = SPEC_EXAMPLE.replace("LispWorks", "Lisp\udcffWorks")
        error = parse_error(text)
        assert (error.condition, error.line) == (Condition.TRUNCATED, 9)

    def test_too_many_products_is_condition_102(self) -> None:
        """A second product after PERMITS: 1 is text after the last product."""
        body = SPEC_EXAMPLE.split("PERMITS: 1\n")[1]
        error = parse_error(SPEC_EXAMPLE + body)
        assert (error.condition, error.line) == (Condition.TEXT_AFTER_LAST_PRODUCT, 16)

    def test_publisher_line_that_is_a_keyword_is_refused(self) -> None:
        """A keyword line where a name is expected means a line is missing."""
        assert keyword_of("DATA: 4") == "DATA"
        assert keyword_of("Data: Inc") is None
        assert keyword_of("LOCK:abc") == "LOCK"
        error = parse_error(SPEC_EXAMPLE.replace("8.0\n", "LOCK: x\n"))
        assert (error.condition, error.line) == (Condition.TRUNCATED, 10)


class TestWriter:
    """The writer's text reads back equal, with helpful comments."""

    @pytest.mark.parametrize("permit", [SPEC_PERMIT, RICH_PERMIT])
    def test_form_round_trip(self, permit: Permit) -> None:
        """format_permit -> parse_form gives the same permit."""
        text = format_permit(permit)
        assert parse_form(text) == permit
        assert "LOCK:" not in text
        assert "# policy  node  floating  start(dmy)   expiry(dmy)  update(min)" in text

    def test_spec_example_written_like_the_spec(self) -> None:
        """The writer lays the SPEC example out as the SPEC shows it."""
        text = format_permit(SPEC_PERMIT)
        significant = [
            line.rstrip() for line in text.splitlines() if line and not line.startswith("#")
        ]
        expected = [
            line.rstrip()
            for line in SPEC_EXAMPLE.splitlines()
            if line and not line.startswith("#")
        ]
        assert significant == expected

    def test_sealed_round_trip(self) -> None:
        """With seals, a LOCK line follows PERMITS and each product, read back as given."""
        seals = Seals("k1 s1", ("k2 s2", "k3 s3"))
        text = format_permit(RICH_PERMIT, seals)
        parsed = parse_permit(text, require_locks=True)
        assert parsed.permit == RICH_PERMIT
        assert parsed.header.lock is not None and parsed.header.lock.value == "k1 s1"
        assert [p.lock.value for p in parsed.products if p.lock] == ["k2 s2", "k3 s3"]

    def test_seal_count_must_match(self) -> None:
        """One product seal per product."""
        with pytest.raises(ValueError, match="seals"):
            format_permit(RICH_PERMIT, Seals("a b", ("c d",)))

    @pytest.mark.parametrize(
        "change",
        [
            {"publisher": "Two\nLines"},
            {"publisher": " padded"},
            {"product": ""},
            {"product": "# looks like a comment"},
            {"version": "DATA: 3"},
            {"floating_count": 70000},
            {"node_count": 0, "floating_count": 0},
            {"policy": 1 << 12},
            {"update_minutes": 0},
            {"data": (2**40,)},
            {"start": datetime.date(2031, 1, 1)},
        ],
    )
    def test_unwritable_permits_are_refused(self, change: dict[str, object]) -> None:
        """A permit that would not read back equal is a ValueError, not bad text."""
        product = dataclasses.replace(SPEC_PRODUCT, **change)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            format_permit(dataclasses.replace(SPEC_PERMIT, products=(product,)))

    def test_unwritable_domains_are_refused(self) -> None:
        """No servers, or a multicast server, cannot be written."""
        with pytest.raises(ValueError):
            format_permit(dataclasses.replace(SPEC_PERMIT, servers=()))
        with pytest.raises(ValueError):
            format_permit(
                dataclasses.replace(SPEC_PERMIT, servers=(host("239.1.1.1", 1),))
            )


class TestInsertSeals:
    """Sealing a form's text keeps everything the publisher wrote."""

    def test_inserts_after_permits_and_each_product(self) -> None:
        """Lock lines go after PERMITS and after the locked-node list; comments stay."""
        parsed = parse_permit(SPEC_EXAMPLE)
        text = insert_seals(SPEC_EXAMPLE, parsed, Seals("h sig", ("p sig",)))
        lines = text.splitlines()
        assert lines[6:8] == ["PERMITS: 1", "LOCK: h sig"]
        assert lines[-2:] == ["LOCKED-NODES: 0", "LOCK: p sig"]
        assert [line for line in lines if not line.startswith("LOCK:")] == (
            SPEC_EXAMPLE.splitlines()
        )

    def test_replaces_existing_locks(self) -> None:
        """Re-sealing replaces lock lines in place."""
        parsed = parse_permit(SPEC_EXAMPLE)
        once = insert_seals(SPEC_EXAMPLE, parsed, Seals("a a", ("b b",)))
        twice = insert_seals(once, parse_permit(once), Seals("c c", ("d d",)))
        assert twice == insert_seals(SPEC_EXAMPLE, parsed, Seals("c c", ("d d",)))

    def test_keeps_crlf(self) -> None:
        """Inserted lines use the file's CRLF line endings."""
        crlf = SPEC_EXAMPLE.replace("\n", "\r\n")
        text = insert_seals(crlf, parse_permit(crlf), Seals("a a", ("b b",)))
        assert "LOCK: a a\r\n" in text
        assert "\n" not in text.replace("\r\n", "")
