"""In-memory state of one served product: its pools, holders and counters.

Nothing here decides anything: the engine decides and these structures record
the result, each operation O(1) or O(log n) in the number of licences, so that a
REQUEST/RELEASE costs the same with ten or ten thousand licences held.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Iterator

from hqnlsd.licensing.events import EventError, Granted
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.settings import (
    DEFAULT_CRASHOUT_PERIODS,
    DEFAULT_TIMEOUT_SECONDS,
    NodeListing,
    ProductSettings,
)
from hqnlsd.permits.model import ProductPermit
from hqnlsd.permits.policy import flags_of, locks_of

ProductKey = tuple[str, str]


class FreeList:
    """The free licence indices of one pool; hands out the lowest first.

    A set says what is free; a heap (with lazily dropped stale entries) finds the
    lowest free indices in O(log n).
    """

    __slots__ = ("_free", "_heap", "size")

    def __init__(self, indices: range) -> None:
        self.size = len(indices)
        self._heap: list[int] = list(indices)  # a range is already a sorted heap
        # From the list, not the range again: one int object per index, not two.
        self._free: set[int] = set(self._heap)

    def __len__(self) -> int:
        return len(self._free)

    def __contains__(self, index: object) -> bool:
        return index in self._free

    def lowest(self, count: int) -> tuple[int, ...] | None:
        """The ``count`` lowest free indices, or None if fewer are free (no change)."""
        if count > len(self._free):
            return None
        heap = self._heap
        free = self._free
        while heap[0] not in free:  # stale: taken through apply() without a pop
            heapq.heappop(heap)
        if count == 1:
            return (heap[0],)
        found: list[int] = []
        seen: set[int] = set()
        while len(found) < count:
            index = heapq.heappop(heap)
            if index in free and index not in seen:
                seen.add(index)
                found.append(index)
        for index in found:
            heapq.heappush(heap, index)
        return tuple(found)

    def take(self, indices: Iterable[int]) -> None:
        """Mark indices as used; EventError if one of them is not free."""
        indices = tuple(indices)
        missing = [index for index in indices if index not in self._free]
        if missing or len(set(indices)) != len(indices):
            raise EventError(f"licence indices {indices} are not all free")
        self._free.difference_update(indices)

    def give(self, indices: Iterable[int]) -> None:
        """Mark indices as free again."""
        for index in indices:
            if index not in self._free:
                self._free.add(index)
                heapq.heappush(self._heap, index)
        if len(self._heap) > 2 * self.size + 64:
            self._heap = sorted(self._free)


#: Bits of `Holder`'s packed pool facts.
_LOCKED = 1
_ON_LOCKED_NODE = 2


class Holder:
    """A licence held by a process: who, where, since when, last seen when.

    Compact, since there is one per held licence: slots only, the two pool facts
    (``locked``, ``on_locked_node``) packed in one small int, and nothing its
    product already knows (the product key). ``who`` and ``indices`` are the
    objects of the `Granted` event, shared with whoever else keeps them.
    ``older`` and ``newer`` link the product's holders in update order (two slots
    cost less than a table entry per holder).
    """

    __slots__ = (
        "_where",
        "access",
        "granted_at",
        "handle",
        "indices",
        "last_update",
        "newer",
        "older",
        "who",
    )

    def __init__(
        self,
        *,
        handle: str,
        indices: tuple[int, ...],
        locked: bool,
        on_locked_node: bool,
        who: Requester,
        access: int,
        granted_at: float,
        last_update: float,
    ) -> None:
        self.handle = handle
        self.indices = indices
        self._where = (_LOCKED if locked else 0) | (_ON_LOCKED_NODE if on_locked_node else 0)
        self.who = who
        self.access = access
        self.granted_at = granted_at
        self.last_update = last_update
        #: The neighbours in the product's update order (None: the end, or not held).
        self.older: Holder | None = None
        self.newer: Holder | None = None

    @classmethod
    def from_event(cls, event: Granted) -> Holder:
        """The holder a Granted event creates."""
        return cls(
            handle=event.handle,
            indices=tuple(event.indices),
            locked=event.locked,
            on_locked_node=event.on_locked_node,
            who=event.who,
            access=event.access,
            granted_at=event.at,
            last_update=event.at,
        )

    @property
    def locked(self) -> bool:
        """Whether the licence is from the node-locked pool (else the floating one)."""
        return bool(self._where & _LOCKED)

    @property
    def on_locked_node(self) -> bool:
        """Whether the holder's host is one of the product's locked nodes."""
        return bool(self._where & _ON_LOCKED_NODE)

    @property
    def units(self) -> int:
        """How many licences this holder has."""
        return len(self.indices)

    def __repr__(self) -> str:
        return (
            f"Holder(handle={self.handle!r}, indices={self.indices!r}, locked={self.locked!r}, "
            f"on_locked_node={self.on_locked_node!r}, who={self.who!r}, access={self.access!r}, "
            f"granted_at={self.granted_at!r}, last_update={self.last_update!r})"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Tombstone:
    """A handle whose licence was taken away: its holder gets LOSTLICENCE."""

    key: ProductKey
    reason: str
    at: float


class ProductState:
    """One served product: permit, settings, pools, holders and ONPN counters."""

    __slots__ = (
        "floating",
        "floating_by_address",
        "holders",
        "key",
        "least_recent",
        "listings",
        "locked",
        "locked_by_address",
        "most_recent",
        "permit",
        "settings",
        "tokens",
    )

    def __init__(self, permit: ProductPermit, settings: ProductSettings) -> None:
        self.key: ProductKey = permit.key
        self.permit = permit
        self.settings = settings
        #: Holders by handle, in grant order (the oldest first).
        self.holders: dict[str, Holder] = {}
        #: The ends of the holders' update order (linked through `Holder.older` and
        #: `Holder.newer`), for GRAB: the least recently updated first.
        self.least_recent: Holder | None = None
        self.most_recent: Holder | None = None
        #: The handle held by each client token (idempotent REQUESTs).
        self.tokens: dict[str, str] = {}
        self.floating_by_address: dict[str, int] = {}
        self.locked_by_address: dict[str, int] = {}
        self.listings: dict[str, list[int]] = {}
        self.locked = FreeList(range(1, 1))
        self.floating = FreeList(range(1, 1))
        self.rebuild_pools()
        self.rebuild_listings()

    # -- effective values (permit, overridden by the administrator) --------------

    @property
    def node_count(self) -> int:
        """Node-locked licences now (permit, or after ftol / ltof)."""
        counts = self.settings.counts
        return self.permit.node_count if counts is None else counts[0]

    @property
    def floating_count(self) -> int:
        """Floating licences now (permit, or after ftol / ltof)."""
        counts = self.settings.counts
        return self.permit.floating_count if counts is None else counts[1]

    @property
    def total(self) -> int:
        """All licences of the product now."""
        return self.node_count + self.floating_count

    @property
    def locks(self) -> int:
        """Flags the publisher locked (from the permit)."""
        return int(locks_of(self.permit.policy))

    @property
    def flags(self) -> int:
        """Policy flags in force; locked flags always as the permit says."""
        permit_flags = int(flags_of(self.permit.policy))
        if self.settings.flags is None:
            return permit_flags
        locks = self.locks
        return (self.settings.flags & ~locks) | (permit_flags & locks)

    @property
    def policy_word(self) -> int:
        """The full policy word in force: flags, and the publisher's locks above them."""
        return self.flags | (self.locks << 16)

    @property
    def period(self) -> int:
        """Update period in seconds."""
        return self.permit.update_minutes * 60

    @property
    def crashout(self) -> float:
        """GRAB crashout in seconds."""
        if self.settings.crashout is not None:
            return self.settings.crashout
        return float(DEFAULT_CRASHOUT_PERIODS * max(self.period, 60))

    @property
    def timeout(self) -> float:
        """TIML / LKNL timeout in seconds."""
        timeout = self.settings.timeout
        return DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout

    @property
    def locked_nodes(self) -> tuple[NodeListing, ...]:
        """The locked-node listings now (permit, or after addnode / rmnode)."""
        if self.settings.locked_nodes is not None:
            return self.settings.locked_nodes
        return tuple((str(node.address), node.unique_id) for node in self.permit.locked_nodes)

    @property
    def locked_used(self) -> int:
        """Node-locked licences held."""
        return self.locked.size - len(self.locked)

    @property
    def floating_used(self) -> int:
        """Floating licences held."""
        return self.floating.size - len(self.floating)

    def keeps_holders(self, permit: ProductPermit) -> bool:
        """Whether holders keep their licences when ``permit`` replaces this one:
        the same version, and the pools and locked nodes in force unchanged."""
        old = self.permit
        if old == permit:
            return True
        if old.version != permit.version:
            return False
        counts_kept = (old.node_count, old.floating_count) == (
            permit.node_count,
            permit.floating_count,
        )
        new_counts = (
            (self.node_count, self.floating_count)
            if counts_kept
            else (permit.node_count, permit.floating_count)
        )
        new_nodes = (
            self.locked_nodes
            if old.locked_nodes == permit.locked_nodes
            else tuple((str(node.address), node.unique_id) for node in permit.locked_nodes)
        )
        return new_counts == (self.node_count, self.floating_count) and (
            new_nodes == self.locked_nodes
        )

    # -- derived structures ------------------------------------------------------

    def rebuild_pools(self) -> None:
        """Fresh free lists for the current counts, minus the holders' indices."""
        nodes = self.node_count
        self.locked = FreeList(range(1, nodes + 1))
        self.floating = FreeList(range(nodes + 1, nodes + self.floating_count + 1))
        for holder in self.holders.values():
            (self.locked if holder.locked else self.floating).take(holder.indices)

    def rebuild_listings(self) -> None:
        """Index the locked-node listings by address, for O(1) matching."""
        listings: dict[str, list[int]] = {}
        for address, unique_id in self.locked_nodes:
            listings.setdefault(address, []).append(unique_id)
        self.listings = listings

    def listings_for(self, address: str, hostid: int | None) -> int:
        """How many times a host is listed as a locked node (0: not a locked node).

        A listing matches on the address, and on the unique id too unless the
        listed id is 0.
        """
        ids = self.listings.get(address)
        if not ids:
            return 0
        return sum(1 for unique_id in ids if unique_id == 0 or unique_id == hostid)

    # -- recording decisions ---------------------------------------------------------

    def add(self, holder: Holder) -> None:
        """Record a grant (and its client token: the applier has checked it is free)."""
        if holder.handle in self.holders:
            raise EventError(f"handle {holder.handle} is already held")
        client = holder.who.client
        pool = self.locked if holder.locked else self.floating
        pool.take(holder.indices)
        self.holders[holder.handle] = holder
        self._append_update(holder)
        if client is not None:
            self.tokens[client] = holder.handle
        counter = self.locked_by_address if holder.locked else self.floating_by_address
        address = holder.who.address
        counter[address] = counter.get(address, 0) + holder.units

    def remove(self, holder: Holder) -> None:
        """Record that a holder no longer has its licence."""
        del self.holders[holder.handle]
        self._unlink_update(holder)
        if holder.who.client is not None:
            self.tokens.pop(holder.who.client, None)
        pool = self.locked if holder.locked else self.floating
        pool.give(holder.indices)
        counter = self.locked_by_address if holder.locked else self.floating_by_address
        address = holder.who.address
        left = counter[address] - holder.units
        if left:
            counter[address] = left
        else:
            del counter[address]

    def touch(self, holder: Holder, at: float) -> None:
        """Record an UPDATE: the holder moves to the end of the update order."""
        holder.last_update = max(holder.last_update, at)
        if holder is not self.most_recent:
            self._unlink_update(holder)
            self._append_update(holder)

    def least_recently_updated(self) -> Iterator[Holder]:
        """Holders from the least recently updated on (for GRAB)."""
        holder = self.least_recent
        while holder is not None:
            yield holder
            holder = holder.newer

    def resort_updates(self) -> None:
        """Rebuild the update order from the holders' last-update times (restore)."""
        ordered = sorted(self.holders.values(), key=lambda holder: holder.last_update)
        self.least_recent = self.most_recent = None
        for holder in ordered:
            holder.older = holder.newer = None
            self._append_update(holder)

    def _append_update(self, holder: Holder) -> None:
        """Put ``holder`` (not in the update order) at its most recent end."""
        last = self.most_recent
        holder.older = last
        holder.newer = None
        if last is None:
            self.least_recent = holder
        else:
            last.newer = holder
        self.most_recent = holder

    def _unlink_update(self, holder: Holder) -> None:
        """Take ``holder`` out of the update order."""
        older, newer = holder.older, holder.newer
        if older is None:
            self.least_recent = newer
        else:
            older.newer = newer
        if newer is None:
            self.most_recent = older
        else:
            newer.older = older
        holder.older = holder.newer = None
