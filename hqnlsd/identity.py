"""Host identity: this machine's unique id, and the hosts file's ``hqnserverN`` ranks.

A host is known to the licence server as (IPv4 address, unique id). The unique
id is 32 bits derived from the machine's stable identity (``/etc/machine-id``),
so that a permit sealed for one machine is not served by another that happens
to have the same address.

The members of a multi-host server domain are ranked by the ``hqnserverN``
aliases (N = 1, 2, ...) of their addresses in the hosts file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: Where the machine's stable identity is read, first found wins.
MACHINE_ID_PATHS: tuple[Path, ...] = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
#: The hosts file read when no other is given.
DEFAULT_HOSTS_PATH = Path("/etc/hosts")
#: Domain separation: the unique id is ours, not a value another program derives.
UNIQUE_ID_PREFIX = b"hqnlsd unique id v1\x00"

_RANK_ALIAS = re.compile(r"hqnserver([1-9][0-9]{0,8})\Z")


def unique_id_of(identity: bytes) -> int:
    """The 32-bit unique id derived from a machine identity string."""
    return int.from_bytes(hashlib.sha256(UNIQUE_ID_PREFIX + identity).digest()[:4], "big")


def local_unique_id(
    paths: Sequence[Path] = MACHINE_ID_PATHS,
    getnode: Callable[[], int] = uuid.getnode,
) -> int:
    """This machine's unique id.

    From the first non-empty machine-id file of ``paths``; if there is none,
    from the MAC address that ``uuid.getnode`` finds.
    """
    for path in paths:
        try:
            identity = path.read_bytes().strip()
        except OSError:
            continue
        if identity:
            return unique_id_of(identity)
    return unique_id_of(b"node:%012x" % getnode())


def format_unique_id(unique_id: int) -> str:
    """A unique id as permits and tools write it: ``0x%08x``."""
    return f"0x{unique_id:08x}"


def rank_of_alias(name: str) -> int | None:
    """N for a name ``hqnserverN`` (N >= 1, case-insensitive), else None."""
    match = _RANK_ALIAS.match(name.lower())
    return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class HostsTable:
    """Name-to-address mapping of a hosts file (IPv4 only).

    As the resolver does, the first line that names a host wins; names are
    case-insensitive. IPv6 and malformed lines are ignored.
    """

    names: Mapping[str, ipaddress.IPv4Address]

    @classmethod
    def from_text(cls, text: str) -> HostsTable:
        """Parse hosts-file text."""
        names: dict[str, ipaddress.IPv4Address] = {}
        for raw in text.splitlines():
            fields = raw.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                address = ipaddress.IPv4Address(fields[0])
            except ipaddress.AddressValueError:
                continue  # IPv6 (::1 localhost) or junk: not ours to judge
            for name in fields[1:]:
                names.setdefault(name.lower(), address)
        return cls(names)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_HOSTS_PATH) -> HostsTable:
        """Read a hosts file; OSError if it cannot be read."""
        return cls.from_text(Path(path).read_bytes().decode("utf-8", errors="replace"))

    def address_of(self, name: str) -> ipaddress.IPv4Address | None:
        """The address of ``name``, or None."""
        return self.names.get(name.lower())

    def rank_addresses(self) -> dict[int, ipaddress.IPv4Address]:
        """Every ``hqnserverN`` alias: N -> its address."""
        found: dict[int, ipaddress.IPv4Address] = {}
        for name, address in self.names.items():
            rank = rank_of_alias(name)
            if rank is not None:
                found[rank] = address
        return found

    def rank_of(self, address: ipaddress.IPv4Address) -> int | None:
        """The rank of ``address``: the lowest N whose ``hqnserverN`` is it, or None."""
        ranks = [rank for rank, addr in self.rank_addresses().items() if addr == address]
        return min(ranks) if ranks else None

    def ranked(self) -> tuple[tuple[int, ipaddress.IPv4Address], ...]:
        """``(rank, address)`` of every ranked address, in rank order, one per address."""
        best: dict[ipaddress.IPv4Address, int] = {}
        for rank, address in sorted(self.rank_addresses().items()):
            best.setdefault(address, rank)
        return tuple(sorted((rank, address) for address, rank in best.items()))
