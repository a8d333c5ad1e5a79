"""The permit data model: what a permit file says, once read and checked.

Everything here is immutable and free of I/O; the format module turns text into
these objects and back, the seal module signs and verifies them.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress

#: The only permit format line this server accepts (condition 114 otherwise).
FORMAT_LINE = "THE HQNLSD LICENSE SERVER VERSION 3.0"
#: A server domain has 1 to this many members (condition 115 otherwise).
MAX_SERVERS = 20


@dataclasses.dataclass(frozen=True, order=True)
class HostId:
    """A host as the licence server knows it: IPv4 address and 32-bit unique id."""

    address: ipaddress.IPv4Address
    unique_id: int

    def __str__(self) -> str:
        return f"{self.address} 0x{self.unique_id:08x}"


@dataclasses.dataclass(frozen=True)
class ProductPermit:
    """One product of a permit: who may use it, how many, under which policy."""

    publisher: str
    product: str
    version: str
    policy: int
    node_count: int
    floating_count: int
    start: datetime.date
    expiry: datetime.date
    update_minutes: int
    data: tuple[int, ...] = ()
    locked_nodes: tuple[HostId, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the product for serving: one version per (publisher, product)."""
        return (self.publisher, self.product)

    @property
    def total(self) -> int:
        """All licences of the product: node-locked plus floating."""
        return self.node_count + self.floating_count

    def valid_on(self, day: datetime.date) -> bool:
        """True between the start and the expiry date, both included."""
        return self.start <= day <= self.expiry


@dataclasses.dataclass(frozen=True)
class Permit:
    """A permit file's contents: its number, server domain and products."""

    number: int
    servers: tuple[HostId, ...]
    products: tuple[ProductPermit, ...]

    @property
    def domain_addresses(self) -> tuple[ipaddress.IPv4Address, ...]:
        """The addresses of the server domain, in file order."""
        return tuple(server.address for server in self.servers)
