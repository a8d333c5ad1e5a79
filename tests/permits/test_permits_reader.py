"""Tests for hqnlsd.permits.reader: sealed permits, conditions, tampering, serving."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import pytest

from hqnlsd.identity import HostsTable
from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.format import format_permit
from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.reader import (
    MAX_PERMIT_BYTES,
    Serving,
    build_catalogue,
    domain_decision,
    read_catalogue,
    read_permit_file,
    read_permit_text,
)
from hqnlsd.permits.seal import PublisherKey, TrustedKeys, seal_text, sign_permit

KEY = PublisherKey.generate()
TRUSTED = TrustedKeys.of(KEY.public_key)
ME = HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1A2B3C4D)


def host(address: str, unique_id: int) -> HostId:
    """A HostId from a dotted quad and an id."""
    return HostId(ipaddress.IPv4Address(address), unique_id)


def product(name: str = "LispWorks", **change: object) -> ProductPermit:
    """A valid product, with fields changed as asked."""
    base = ProductPermit(
        publisher="Harlequin",
        product=name,
        version="8.0",
        policy=0x41,
        node_count=2,
        floating_count=5,
        start=datetime.date(2026, 1, 1),
        expiry=datetime.date(2030, 12, 31),
        update_minutes=5,
        data=(1, -2, 3, 4),
        locked_nodes=(host("10.0.0.9", 0x99), host("10.0.0.10", 0x100)),
    )
    return dataclasses.replace(base, **change)  # type: ignore[arg-type]


def permit(
    *products: ProductPermit, number: int = 1, servers: tuple[HostId, ...] = (ME,)
) -> Permit:
    """A permit of ``products`` (default: two) for ``servers``."""
    return Permit(number, servers, products or (product("LispWorks"), product("KnowledgeWorks")))


def read(text: str, trusted: TrustedKeys = TRUSTED) -> tuple[Permit | None, PermitError | None]:
    """Read sealed text; return the permit read and the error."""
    result = read_permit_text(text, path="p.permit", trusted=trusted)
    return result.permit, result.error


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with the only occurrence of ``old`` replaced."""
    assert text.count(old) == 1, (old, text.count(old))
    return text.replace(old, new)


def replace_in_product(text: str, index: int, old: str, new: str) -> str:
    """Replace the only ``old`` in product ``index`` (0-based) of a written permit."""
    marker = f"# product {index + 1} of "
    start = text.index(marker)
    end = text.find("# product ", start + 1)
    end = len(text) if end < 0 else end
    return text[:start] + replace_once(text[start:end], old, new) + text[end:]


def lines_of(text: str, fragment: str) -> list[int]:
    """The 1-based numbers of the lines containing ``fragment``."""
    return [i for i, line in enumerate(text.splitlines(), 1) if fragment in line]


def line_of(text: str, fragment: str) -> int:
    """The 1-based number of the only line containing ``fragment``."""
    numbers = lines_of(text, fragment)
    assert len(numbers) == 1, fragment
    return numbers[0]


def lock_lines(text: str) -> list[int]:
    """The numbers of the LOCK lines of ``text``."""
    return [i for i, line in enumerate(text.splitlines(), 1) if line.startswith("LOCK:")]


SEALED = sign_permit(permit(), KEY)


class TestRoundTrip:
    """form -> sign -> read gives the permit back."""

    def test_form_sign_read(self) -> None:
        """A permit written as a form, sealed by text, reads back valid and equal."""
        original = permit()
        form = format_permit(original)
        sealed = seal_text(form, KEY)
        result = read_permit_text(sealed, path="x", trusted=TRUSTED)
        assert result.ok and result.permit == original
        assert result.key_ids == (KEY.key_id,) * 3

    def test_sign_permit_read(self) -> None:
        """sign_permit's text reads back valid and equal."""
        assert read(SEALED) == (permit(), None)

    def test_comments_may_change_after_sealing(self) -> None:
        """Seals cover fields, not text: comments and spacing can be edited."""
        edited = "# my own note\n" + SEALED.replace("# address", "#   edited\n\n# address")
        edited = edited.replace("PERMITS: 2", "PERMITS:    2")
        assert read(edited) == (permit(), None)

    def test_a_form_is_not_a_sealed_permit(self) -> None:
        """Reading an unsealed form stops at the missing header lock (105)."""
        got, error = read(format_permit(permit()))
        assert got is None and error is not None
        assert error.condition is Condition.TRUNCATED


class TestEveryCondition:
    """Each numbered condition 100-118 is produced by a crafted file, table or host."""

    def expect(self, text: str, condition: Condition, line: int | None = None) -> PermitError:
        """Read ``text``; check the condition (and line) of its error."""
        _, error = read(text)
        assert error is not None, "expected an error"
        assert error.condition is condition, str(error)
        assert error.path == "p.permit"
        if line is not None:
            assert error.line == line, str(error)
        return error

    def test_100_server_seal_wrong(self) -> None:
        """Changing the permit number breaks the header seal, reported at its LOCK line."""
        self.expect(
            replace_once(SEALED, "NUMBER: 1", "NUMBER: 2"),
            Condition.SERVER_SEAL_WRONG,
            lock_lines(SEALED)[0],
        )

    @pytest.mark.parametrize("address", ["0.0.0.0", "255.255.255.255", "224.0.0.9"])
    def test_101_unusable_server_address(self, address: str) -> None:
        """A server address that is no unicast host is condition 101."""
        self.expect(
            replace_once(SEALED, "127.0.0.1 ", f"{address} "),
            Condition.UNKNOWN_HOST_ADDRESS,
            line_of(SEALED, "0x1a2b3c4d"),
        )

    def test_101_address_twice_in_domain(self) -> None:
        """The same address twice in the domain is condition 101."""
        text = sign_permit(permit(servers=(ME, host("127.0.0.2", 2))), KEY)
        text = replace_once(text, "127.0.0.2 ", "127.0.0.1 ")
        self.expect(text, Condition.UNKNOWN_HOST_ADDRESS, line_of(text, "0x00000002"))

    def test_102_text_after_last_product(self) -> None:
        """A valid permit followed by another product's text is condition 102."""
        one = sign_permit(permit(product()), KEY)
        extra = one[one.index("# product 1 of 1") :]
        error = self.expect(one + extra, Condition.TEXT_AFTER_LAST_PRODUCT)
        assert error.line == len(one.splitlines()) + 2  # the extra publisher line
        got, _ = read(one + extra)
        assert got is not None and got.products == (product(),)

    def test_103_product_seal_wrong(self) -> None:
        """Changing a product's floating count breaks that product's seal."""
        text = replace_in_product(SEALED, 1, "2     5 ", "2     6 ")
        self.expect(text, Condition.PRODUCT_SEAL_WRONG, lock_lines(SEALED)[2])

    def test_104_untrusted_key(self) -> None:
        """A permit sealed by a key that is not trusted is condition 104."""
        _, error = read(SEALED, TrustedKeys.of(PublisherKey.generate().public_key))
        assert error is not None and error.condition is Condition.UNTRUSTED_KEY
        assert KEY.key_id in error.message

    def test_104_product_sealed_by_untrusted_key(self) -> None:
        """A product sealed by another key (header by a trusted one) is 104 at its lock."""
        other = PublisherKey.generate()
        theirs = sign_permit(permit(), other).splitlines()
        ours = SEALED.splitlines()
        last = lock_lines(SEALED)[2] - 1
        ours[last] = theirs[last]
        got, error = read("\n".join(ours) + "\n")
        assert error is not None and error.condition is Condition.UNTRUSTED_KEY
        assert error.line == last + 1
        assert got is not None and got.products == (product("LispWorks"),)

    def test_105_truncated(self) -> None:
        """A file cut in the middle of a product is condition 105, at the end."""
        lines = SEALED.splitlines()
        cut = line_of(SEALED, "KnowledgeWorks")
        text = "\n".join(lines[:cut]) + "\n"
        self.expect(text, Condition.TRUNCATED, cut)

    def test_105_keyword_missing(self) -> None:
        """A misspelt keyword is condition 105."""
        self.expect(replace_once(SEALED, "SERVERS: 1", "SERVER: 1"), Condition.TRUNCATED, 4)

    def test_106_bad_address(self) -> None:
        """A server address that is not a dotted quad is condition 106."""
        self.expect(replace_once(SEALED, "127.0.0.1 ", "127.0.1 "), Condition.BAD_ADDRESS, 6)

    def test_107_bad_unique_id(self) -> None:
        """A server unique id that is not 0x + 1-8 hex digits is condition 107."""
        self.expect(replace_once(SEALED, "0x1a2b3c4d", "0xZZ"), Condition.BAD_UNIQUE_ID, 6)

    def test_108_bad_date(self) -> None:
        """An impossible date is condition 108."""
        text = replace_in_product(SEALED, 0, "31/12/2030", "31/11/2030")
        self.expect(text, Condition.BAD_DATE)

    def test_109_start_after_expiry(self) -> None:
        """A start date after the expiry date is condition 109."""
        text = replace_in_product(SEALED, 0, "01/01/2026", "01/01/2031")
        self.expect(text, Condition.START_AFTER_EXPIRY)

    def test_110_unknown_policy_bits(self) -> None:
        """A policy word with bits beyond the known flags and locks is condition 110."""
        text = replace_in_product(SEALED, 0, "0x41 ", "0x2000041 ")
        self.expect(text, Condition.BAD_POLICY)

    @pytest.mark.parametrize(("node", "floating"), [("-1", "5"), ("0", "0"), ("0", "65536")])
    def test_111_bad_counts(self, node: str, floating: str) -> None:
        """Negative, both-zero or too large counts are condition 111."""
        text = replace_in_product(SEALED, 0, "2     5 ", f"{node} {floating} ")
        self.expect(text, Condition.BAD_COUNTS)

    def test_112_data_missing(self) -> None:
        """Fewer DATA values than announced before the next keyword is condition 112."""
        text = replace_in_product(SEALED, 0, "DATA: 4", "DATA: 5")
        first_locked_nodes = lines_of(SEALED, "LOCKED-NODES")[0]
        self.expect(text, Condition.DATA_MISSING, first_locked_nodes)

    def test_113_bad_number(self) -> None:
        """A number that is not a number is condition 113."""
        self.expect(replace_once(SEALED, "NUMBER: 1", "NUMBER: 1x"), Condition.BAD_NUMBER, 3)

    def test_114_format_version(self) -> None:
        """Another format line is condition 114."""
        text = replace_once(SEALED, "VERSION 3.0", "VERSION 2.0")
        self.expect(text, Condition.BAD_FORMAT_VERSION, 2)

    @pytest.mark.parametrize("count", ["0", "21"])
    def test_115_server_count(self, count: str) -> None:
        """Zero or more than 20 servers is condition 115."""
        self.expect(
            replace_once(SEALED, "SERVERS: 1", f"SERVERS: {count}"),
            Condition.BAD_SERVER_COUNT,
            4,
        )

    def test_115_twenty_servers_are_fine(self) -> None:
        """Exactly 20 servers is a valid domain."""
        servers = tuple(host(f"127.0.0.{i}", i) for i in range(1, 21))
        assert read(sign_permit(permit(servers=servers), KEY))[1] is None

    def test_116_member_without_alias(self) -> None:
        """A multi-host domain with a member lacking an hqnserverN alias: 116, not served."""
        domain = permit(servers=(ME, host("127.0.0.2", 2)))
        hosts = HostsTable.from_text("127.0.0.1 localhost hqnserver1\n127.0.0.2 other\n")
        decision = domain_decision(domain, ME, hosts, path="p.permit")
        assert decision.serving is Serving.NOT_SERVED
        assert decision.condition is not None
        assert decision.condition.condition is Condition.NO_SERVER_ALIAS
        assert "127.0.0.2" in decision.condition.message
        assert decision.condition.path == "p.permit"

    def test_116_only_for_multi_host_domains(self) -> None:
        """A single-host domain needs no alias."""
        decision = domain_decision(permit(), ME, HostsTable.from_text(""))
        assert decision.serving is Serving.HERE and decision.condition is None

    def test_117_unique_id_mismatch(self) -> None:
        """This address with another unique id: read fine, but not served here (117)."""
        sealed = sign_permit(permit(servers=(host("127.0.0.1", 0xDEADBEEF),)), KEY)
        got, error = read(sealed)
        assert error is None and got is not None
        decision = domain_decision(got, ME, HostsTable.from_text(""))
        assert decision.serving is Serving.NOT_SERVED
        assert decision.condition is not None
        assert decision.condition.condition is Condition.UNIQUE_ID_MISMATCH
        assert "0xdeadbeef" in decision.condition.message
        assert "0x1a2b3c4d" in decision.condition.message

    @pytest.mark.parametrize("node", ["10.0.0.256 0x1", "10.0.0.1 0xq", "0.0.0.0 0x1", "x"])
    def test_118_bad_locked_node(self, node: str) -> None:
        """A malformed or unusable locked node is condition 118."""
        text = replace_in_product(SEALED, 0, "10.0.0.9      0x00000099", node)
        self.expect(text, Condition.BAD_LOCKED_NODE)

    def test_every_condition_is_covered_here(self) -> None:
        """This class has a test for each of the 19 conditions."""
        names = " ".join(name for name in dir(self) if name.startswith("test_1"))
        for condition in Condition:
            assert f"test_{int(condition)}_" in names, condition


class TestTampering:
    """Changing any sealed field of a sealed permit is detected."""

    @pytest.mark.parametrize(
        ("where", "old", "new", "condition"),
        [
            (None, "PERMITS: 2", "PERMITS: 1", Condition.SERVER_SEAL_WRONG),
            (None, "127.0.0.1 ", "127.0.0.2 ", Condition.SERVER_SEAL_WRONG),
            (None, "0x1a2b3c4d", "0x1a2b3c4e", Condition.SERVER_SEAL_WRONG),
            (0, "Harlequin", "Harlequim", Condition.PRODUCT_SEAL_WRONG),
            (0, "LispWorks", "LispWorkz", Condition.PRODUCT_SEAL_WRONG),
            (0, "8.0", "8.1", Condition.PRODUCT_SEAL_WRONG),
            (0, "0x41 ", "0x51 ", Condition.PRODUCT_SEAL_WRONG),
            (0, "2     5 ", "3     5 ", Condition.PRODUCT_SEAL_WRONG),
            (0, "2     5 ", "2     50", Condition.PRODUCT_SEAL_WRONG),
            (0, "01/01/2026", "01/01/2025", Condition.PRODUCT_SEAL_WRONG),
            (0, "31/12/2030", "31/12/2031", Condition.PRODUCT_SEAL_WRONG),
            (0, "2030   5", "2030   6", Condition.PRODUCT_SEAL_WRONG),
            (0, "1 -2 3 4", "1 2 3 4", Condition.PRODUCT_SEAL_WRONG),
            (0, "DATA: 4\n1 -2 3 4", "DATA: 3\n1 -2 3", Condition.PRODUCT_SEAL_WRONG),
            (0, "10.0.0.9 ", "10.0.0.8 ", Condition.PRODUCT_SEAL_WRONG),
            (0, "0x00000099", "0x00000098", Condition.PRODUCT_SEAL_WRONG),
            (0, "LOCKED-NODES: 2", "LOCKED-NODES: 1", Condition.TRUNCATED),
            (1, "KnowledgeWorks", "Knowledge Works", Condition.PRODUCT_SEAL_WRONG),
            (1, "0x00000100", "0x00000101", Condition.PRODUCT_SEAL_WRONG),
        ],
    )
    def test_field_change_is_detected(
        self, where: int | None, old: str, new: str, condition: Condition
    ) -> None:
        """The change is reported; products before the changed one stay valid."""
        if where is None:
            text = replace_once(SEALED, old, new)
        else:
            text = replace_in_product(SEALED, where, old, new)
        got, error = read(text)
        assert error is not None and error.condition is condition, str(error)
        if where is None:
            assert got is None
        else:
            assert got is not None
            assert got.products == permit().products[:where]

    def test_removing_a_locked_node_line_is_detected(self) -> None:
        """Dropping a locked node and its count together breaks the product seal."""
        text = replace_in_product(SEALED, 0, "LOCKED-NODES: 2", "LOCKED-NODES: 1")
        text = replace_in_product(text, 0, "10.0.0.10     0x00000100\n", "")
        _, error = read(text)
        assert error is not None and error.condition is Condition.PRODUCT_SEAL_WRONG

    def test_dropping_the_last_product_is_detected(self) -> None:
        """Removing the last product (and fixing the count) breaks the header seal."""
        text = SEALED[: SEALED.index("\n# product 2 of 2")] + "\n"
        _, error = read(text)
        assert error is not None and error.condition is Condition.TRUNCATED
        _, error = read(replace_once(text, "PERMITS: 2", "PERMITS: 1"))
        assert error is not None and error.condition is Condition.SERVER_SEAL_WRONG

    def test_product_cannot_move_to_another_domain(self) -> None:
        """A product block spliced into a permit of another domain fails its seal."""
        ours = sign_permit(permit(product("A")), KEY)
        theirs = sign_permit(permit(product("B"), servers=(host("10.9.9.9", 9),)), KEY)
        block = theirs[theirs.index("# product 1 of 1") :]
        moved = ours[: ours.index("# product 1 of 1")] + block
        got, error = read(moved)
        assert error is not None and error.condition is Condition.PRODUCT_SEAL_WRONG
        assert got is not None and got.products == ()

    def test_product_cannot_move_to_another_permit_number(self) -> None:
        """A product block spliced into another permit of the same domain fails."""
        one = sign_permit(permit(product("A"), number=1), KEY)
        two = sign_permit(permit(product("B"), number=2), KEY)
        moved = two[: two.index("# product 1 of 1")] + one[one.index("# product 1 of 1") :]
        _, error = read(moved)
        assert error is not None and error.condition is Condition.PRODUCT_SEAL_WRONG

    def test_swapping_lock_lines_is_detected(self) -> None:
        """Two products' seals exchanged: the first product fails."""
        lines = SEALED.splitlines()
        _, first, second = lock_lines(SEALED)
        lines[first - 1], lines[second - 1] = lines[second - 1], lines[first - 1]
        got, error = read("\n".join(lines))
        assert error is not None and error.condition is Condition.PRODUCT_SEAL_WRONG
        assert error.line == first
        assert got is not None and got.products == ()


class TestStopAtFirstError:
    """An error stops that file; products verified before it stay valid."""

    def test_products_before_the_error_stay_valid(self) -> None:
        """Product 1 valid, product 2 broken, product 3 never read."""
        three = permit(product("A"), product("B"), product("C"))
        text = replace_in_product(sign_permit(three, KEY), 1, "DATA: 4", "DATA: x")
        got, error = read(text)
        assert error is not None and error.condition is Condition.BAD_NUMBER
        assert got is not None and [p.product for p in got.products] == ["A"]

    def test_first_error_wins(self) -> None:
        """With a bad seal in product 1 and bad syntax in product 2, 103 is reported."""
        text = replace_in_product(SEALED, 0, "LispWorks", "LispWorkz")
        text = replace_in_product(text, 1, "DATA: 4", "DATA: x")
        _, error = read(text)
        assert error is not None and error.condition is Condition.PRODUCT_SEAL_WRONG


class TestFiles:
    """The thin file-reading function."""

    def test_read_file(self, tmp_path: Path) -> None:
        """A sealed permit file reads like its text, with its path."""
        path = tmp_path / "hqn.permit"
        path.write_text(SEALED)
        result = read_permit_file(path, TRUSTED)
        assert result.ok and result.path == str(path) and result.permit == permit()

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a PermitError result, not an exception."""
        result = read_permit_file(tmp_path / "gone.permit", TRUSTED)
        assert result.permit is None and result.error is not None
        assert result.error.condition is Condition.TRUNCATED
        assert "cannot read" in result.error.message

    def test_huge_file(self, tmp_path: Path) -> None:
        """A file above the size limit is not read."""
        path = tmp_path / "hqn.permit"
        path.write_bytes(b"#" * (MAX_PERMIT_BYTES + 1))
        result = read_permit_file(path, TRUSTED)
        assert result.error is not None and "larger" in result.error.message

    def test_non_utf8_bytes_in_a_comment_are_harmless(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 in a comment line do not matter; a BOM is dropped."""
        path = tmp_path / "hqn.permit"
        path.write_bytes(b"\xef\xbb\xbf# \xff\xfe latin-1 comment\n" + SEALED.encode())
        assert read_permit_file(path, TRUSTED).ok

    def test_non_utf8_bytes_in_a_field_stop_at_that_line(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 in a product name stop the file at that line."""
        path = tmp_path / "hqn.permit"
        data = SEALED.encode().replace(b"KnowledgeWorks", b"Knowledge\xffWorks")
        path.write_bytes(data)
        result = read_permit_file(path, TRUSTED)
        assert result.error is not None and result.error.condition is Condition.TRUNCATED
        assert result.error.line == line_of(SEALED, "KnowledgeWorks")
        assert [p.product for p in result.products] == ["LispWorks"]


class TestCatalogue:
    """Versioning across files and the serving decision for this daemon."""

    HOSTS = HostsTable.from_text(
        "127.0.0.1 localhost hqnserver1\n127.0.0.2 two hqnserver2\n127.0.0.3 hqnserver3\n"
    )

    def files(self, tmp_path: Path, *permits: Permit) -> list[Path]:
        """Seal each permit into its own file, in order."""
        paths = []
        for index, item in enumerate(permits):
            path = tmp_path / f"{index}-hqn.permit"
            path.write_text(sign_permit(item, KEY))
            paths.append(path)
        return paths

    def test_first_permit_read_wins(self, tmp_path: Path) -> None:
        """Two versions of a product: the first file read is served, the other recorded."""
        old = permit(product("LispWorks", version="7.1"), number=1)
        new = permit(product("LispWorks", version="8.0"), number=2)
        for first, second in ((old, new), (new, old)):
            directory = tmp_path / first.products[0].version
            directory.mkdir()
            paths = self.files(directory, first, second)
            catalogue = read_catalogue(paths, TRUSTED, ME, self.HOSTS)
            offer = catalogue.find("Harlequin", "LispWorks")
            assert offer is not None and offer.here
            assert offer.product.version == first.products[0].version
            assert offer.path == str(paths[0])
            assert len(catalogue.not_served) == 1
            loser = catalogue.not_served[0]
            assert loser.path == str(paths[1])
            assert loser.product.version == second.products[0].version
            assert "first permit read wins" in loser.reason
            assert catalogue.served_products() == (first.products[0],)

    def test_other_domain_is_kept_for_redirects(self) -> None:
        """A permit of another domain is read; its products are known, not served."""
        theirs = permit(product("Other"), servers=(host("10.1.1.1", 5), host("10.1.1.2", 6)))
        files = [read_permit_text(sign_permit(theirs, KEY), path="t", trusted=TRUSTED)]
        catalogue = build_catalogue(files, ME, HostsTable.from_text(""))
        assert catalogue.served == {}
        offer = catalogue.find("Harlequin", "Other")
        assert offer is not None and not offer.here
        assert offer.domain == theirs.servers
        assert catalogue.files[0].decision is not None
        assert catalogue.files[0].decision.serving is Serving.OTHER_DOMAIN
        assert catalogue.errors == ()

    def test_served_here_beats_an_earlier_other_domain(self) -> None:
        """A product served here is never redirected, even if another domain came first."""
        theirs = permit(product("LispWorks"), servers=(host("10.1.1.1", 5),))
        ours = permit(product("LispWorks", version="9.0"), number=2)
        files = [
            read_permit_text(sign_permit(p, KEY), path=str(i), trusted=TRUSTED)
            for i, p in enumerate((theirs, ours))
        ]
        catalogue = build_catalogue(files, ME, self.HOSTS)
        offer = catalogue.find("Harlequin", "LispWorks")
        assert offer is not None and offer.here and offer.product.version == "9.0"
        assert catalogue.elsewhere == {}

    def test_permit_for_another_machine_is_read_but_not_served(self) -> None:
        """Our address with another unique id: read, listed with 117, not served."""
        other_machine = permit(servers=(host("127.0.0.1", 0x0BADF00D),))
        files = [read_permit_text(sign_permit(other_machine, KEY), path="m", trusted=TRUSTED)]
        catalogue = build_catalogue(files, ME, self.HOSTS)
        assert files[0].ok
        assert catalogue.served == {} and catalogue.elsewhere == {}
        assert catalogue.find("Harlequin", "LispWorks") is None
        assert {n.condition for n in catalogue.not_served} == {Condition.UNIQUE_ID_MISMATCH}
        assert [e.condition for e in catalogue.errors] == [Condition.UNIQUE_ID_MISMATCH]

    def test_multi_host_domain_with_aliases_is_served_with_ranks(self) -> None:
        """Every member aliased: served here, ranks from the hosts file."""
        domain = (host("127.0.0.3", 3), ME, host("127.0.0.2", 2))
        decision = domain_decision(permit(servers=domain), ME, self.HOSTS)
        assert decision.serving is Serving.HERE
        assert decision.ranks == {
            ipaddress.IPv4Address("127.0.0.1"): 1,
            ipaddress.IPv4Address("127.0.0.2"): 2,
            ipaddress.IPv4Address("127.0.0.3"): 3,
        }

    def test_multi_host_domain_without_aliases_is_not_served(self) -> None:
        """A member without alias: condition 116 in the catalogue, nothing served."""
        domain = (ME, host("127.0.0.4", 4))
        files = [read_permit_text(sign_permit(permit(servers=domain), KEY), path="d",
                                  trusted=TRUSTED)]
        catalogue = build_catalogue(files, ME, self.HOSTS)
        assert catalogue.served == {}
        assert [e.condition for e in catalogue.errors] == [Condition.NO_SERVER_ALIAS]

    def test_read_errors_are_listed_per_file(self, tmp_path: Path) -> None:
        """A broken file and a good one: the good one is served, the error listed."""
        good, bad = self.files(tmp_path, permit(product("A")), permit(product("B"), number=2))
        bad.write_text(bad.read_text().replace("NUMBER: 2", "NUMBER: 3"))
        catalogue = read_catalogue([bad, good], TRUSTED, ME, self.HOSTS)
        assert [r.file.path for r in catalogue.files] == [str(bad), str(good)]
        assert catalogue.files[0].decision is None
        assert [e.condition for e in catalogue.errors] == [Condition.SERVER_SEAL_WRONG]
        assert set(catalogue.served) == {("Harlequin", "A")}
