"""Per-product administrative settings (what ``hqn_lsa`` changes), and their defaults.

The permit gives the starting values; the site administrator may then change
the policy flags (never a flag the publisher locked), the crashout and timeout
times, the locked nodes, the split between locked and floating licences, the
excluded hosts, the named users and the access levels. These settings are part
of the engine's durable state; they survive a restart and a permit reload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hqnlsd.licensing.events import JSON
from hqnlsd.permits.policy import KNOWN_FLAGS

#: TIML / LKNL timeout when the administrator has not set one (60 minutes).
DEFAULT_TIMEOUT_SECONDS = 60.0 * 60.0
#: GRAB crashout when the administrator has not set one: this many update periods.
DEFAULT_CRASHOUT_PERIODS = 3
#: Access level of users and groups without an entry (full access).
FULL_ACCESS = 8
#: Smallest crashout or timeout an administrator may set, in seconds.
MINIMUM_ADMIN_SECONDS = 1.0

#: A locked-node listing: (IPv4 address text, unique id; 0 matches any id).
NodeListing = tuple[str, int]


@dataclasses.dataclass(slots=True)
class ProductSettings:
    """The administrator's settings for one product; None means "as the permit says"."""

    flags: int | None = None
    #: Flags the administrator locked (``policy p MNEM!``) until the permit is re-read.
    locks: int = 0
    crashout: float | None = None
    timeout: float | None = None
    counts: tuple[int, int] | None = None  # (node-locked, floating) after ftol / ltof
    locked_nodes: tuple[NodeListing, ...] | None = None  # after addnode / rmnode
    excluded: set[str] = dataclasses.field(default_factory=set)
    named_users: set[str] = dataclasses.field(default_factory=set)
    user_access: dict[str, int] = dataclasses.field(default_factory=dict)
    group_access: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, JSON]:
        """JSON-safe form, in a canonical order (sets sorted)."""
        return {
            "flags": self.flags,
            "locks": self.locks,
            "crashout": self.crashout,
            "timeout": self.timeout,
            "counts": None if self.counts is None else list(self.counts),
            "locked_nodes": (
                None
                if self.locked_nodes is None
                else [[address, unique_id] for address, unique_id in self.locked_nodes]
            ),
            "excluded": sorted(self.excluded),
            "named_users": sorted(self.named_users),
            "user_access": dict(sorted(self.user_access.items())),
            "group_access": dict(sorted(self.group_access.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JSON]) -> ProductSettings:
        """The settings of ``to_dict``."""
        counts = data.get("counts")
        nodes = data.get("locked_nodes")
        return cls(
            flags=None if data.get("flags") is None else int(data["flags"]) & KNOWN_FLAGS,
            locks=int(data.get("locks") or 0) & KNOWN_FLAGS,
            crashout=None if data.get("crashout") is None else float(data["crashout"]),
            timeout=None if data.get("timeout") is None else float(data["timeout"]),
            counts=None if counts is None else (int(counts[0]), int(counts[1])),
            locked_nodes=(
                None
                if nodes is None
                else tuple((str(address), int(unique_id)) for address, unique_id in nodes)
            ),
            excluded={str(host) for host in data.get("excluded", ())},
            named_users={str(user) for user in data.get("named_users", ())},
            user_access={str(k): int(v) for k, v in data.get("user_access", {}).items()},
            group_access={str(k): int(v) for k, v in data.get("group_access", {}).items()},
        )

    def access_level(self, user: str, group: str | None) -> int:
        """ACCL: the user's entry, else the group's, else full access (8)."""
        level = self.user_access.get(user)
        if level is None and group is not None:
            level = self.group_access.get(group)
        return FULL_ACCESS if level is None else level

    def is_excluded(self, host: str, address: str) -> bool:
        """True if the host name (any case) or its address is excluded."""
        if not self.excluded:
            return False
        return host.lower() in self.excluded or address in self.excluded
