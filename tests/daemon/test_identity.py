"""Tests for hqnlsd.identity: the local unique id and the hosts file."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest

from hqnlsd.identity import (
    UNIQUE_ID_PREFIX,
    HostsTable,
    format_unique_id,
    local_unique_id,
    rank_of_alias,
    unique_id_of,
)


def ip(text: str) -> ipaddress.IPv4Address:
    """An IPv4 address."""
    return ipaddress.IPv4Address(text)


def no_node() -> int:
    """A getnode that must not be called."""
    raise AssertionError("uuid.getnode should not be needed")


class TestUniqueId:
    """The 32-bit unique id from the machine id."""

    def test_derived_from_machine_id_with_prefix(self, tmp_path: Path) -> None:
        """SHA-256 of prefix + machine id, first 4 bytes, big-endian."""
        path = tmp_path / "machine-id"
        path.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
        expected = int.from_bytes(
            hashlib.sha256(UNIQUE_ID_PREFIX + b"3d1219c7c4c5404aaa1f6d2a48adfda4").digest()[:4],
            "big",
        )
        assert local_unique_id([path], getnode=no_node) == expected
        assert 0 <= expected <= 0xFFFFFFFF

    def test_different_machines_differ(self, tmp_path: Path) -> None:
        """Two machine ids give two unique ids; the same one gives the same."""
        a, b = tmp_path / "a", tmp_path / "b"
        a.write_text("aaaa")
        b.write_text("bbbb")
        assert local_unique_id([a], getnode=no_node) != local_unique_id([b], getnode=no_node)
        assert local_unique_id([a], getnode=no_node) == unique_id_of(b"aaaa")

    def test_fallback_to_dbus_then_node(self, tmp_path: Path) -> None:
        """A missing or empty first file falls back to the next, then to getnode."""
        empty, dbus = tmp_path / "empty", tmp_path / "dbus"
        empty.write_text("\n")
        dbus.write_text("dbus-id")
        missing = tmp_path / "missing"
        assert local_unique_id([missing, empty, dbus], getnode=no_node) == unique_id_of(
            b"dbus-id"
        )
        assert local_unique_id([missing, empty], getnode=lambda: 0x0242AC110002) == (
            unique_id_of(b"node:0242ac110002")
        )

    def test_default_paths_work_here(self) -> None:
        """On this machine the default call returns a 32-bit id, stable across calls."""
        first = local_unique_id()
        assert 0 <= first <= 0xFFFFFFFF and first == local_unique_id()

    def test_format(self) -> None:
        """Unique ids print as 0x and 8 hex digits."""
        assert format_unique_id(0x1A2B) == "0x00001a2b"


HOSTS = """\
# a typical hosts file
127.0.0.1   localhost hqnserver1
127.0.1.1   mybox.example.org   mybox
::1         localhost ip6-localhost hqnserver3
fe00::0     ip6-localnet
10.0.0.2    Alpha  HQNSERVER2   # alias case does not matter
10.0.0.3    beta hqnserver4 hqnserver7
10.0.0.9    alpha hqnserver0 hqnserver01 hqnserverX
not-an-ip   junk
10.0.0.5
10.0.0.6    localhost hqnserver5
"""


class TestHostsTable:
    """Hosts-file parsing: first entry wins, hqnserverN ranks, IPv6 ignored."""

    TABLE = HostsTable.from_text(HOSTS)

    def test_names_first_entry_wins_case_insensitive(self) -> None:
        """The first IPv4 line naming a host gives its address."""
        assert self.TABLE.address_of("localhost") == ip("127.0.0.1")
        assert self.TABLE.address_of("ALPHA") == ip("10.0.0.2")
        assert self.TABLE.address_of("mybox") == ip("127.0.1.1")
        assert self.TABLE.address_of("ip6-localnet") is None
        assert self.TABLE.address_of("junk") is None

    def test_ranks(self) -> None:
        """hqnserverN gives rank N; lowest N if several; N >= 1 without leading zero."""
        assert self.TABLE.rank_of(ip("127.0.0.1")) == 1
        assert self.TABLE.rank_of(ip("10.0.0.2")) == 2
        assert self.TABLE.rank_of(ip("10.0.0.3")) == 4
        assert self.TABLE.rank_of(ip("10.0.0.6")) == 5
        assert self.TABLE.rank_of(ip("10.0.0.9")) is None
        assert self.TABLE.rank_of(ip("127.0.1.1")) is None

    def test_ipv6_alias_is_ignored(self) -> None:
        """An alias on an IPv6 line is not a rank (IPv4 only)."""
        assert 3 not in self.TABLE.rank_addresses()

    def test_ranked_list(self) -> None:
        """(rank, address) in rank order, one entry per address."""
        assert self.TABLE.ranked() == (
            (1, ip("127.0.0.1")),
            (2, ip("10.0.0.2")),
            (4, ip("10.0.0.3")),
            (5, ip("10.0.0.6")),
        )

    def test_alias_names_first_wins_too(self) -> None:
        """An hqnserverN alias listed twice belongs to its first address."""
        table = HostsTable.from_text("10.0.0.1 hqnserver1\n10.0.0.2 hqnserver1 hqnserver2\n")
        assert table.ranked() == ((1, ip("10.0.0.1")), (2, ip("10.0.0.2")))

    @pytest.mark.parametrize(
        ("name", "rank"),
        [("hqnserver1", 1), ("HqnServer12", 12), ("hqnserver0", None), ("hqnserver01", None),
         ("hqnserver", None), ("hqnserver1x", None), ("xhqnserver1", None)],
    )
    def test_rank_of_alias(self, name: str, rank: int | None) -> None:
        """Only hqnserverN with N >= 1 in plain decimal is a rank alias."""
        assert rank_of_alias(name) == rank

    def test_load_from_file(self, tmp_path: Path) -> None:
        """load() reads any path; bytes that are not UTF-8 do not stop it."""
        path = tmp_path / "hosts"
        path.write_bytes(b"# caf\xe9\n127.0.0.1 localhost hqnserver1\n")
        assert HostsTable.load(path).ranked() == ((1, ip("127.0.0.1")),)

    def test_load_missing_file_raises_oserror(self, tmp_path: Path) -> None:
        """A missing hosts file is an OSError for the caller to report."""
        with pytest.raises(OSError):
            HostsTable.load(tmp_path / "absent")

    def test_repo_demo_hosts_file(self) -> None:
        """conf/hosts gives 127.0.0.1 rank 1."""
        conf = Path(__file__).resolve().parents[2] / "conf" / "hosts"
        assert HostsTable.load(conf).ranked() == ((1, ip("127.0.0.1")),)
