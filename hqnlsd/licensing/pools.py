"""In-memory state of one served product: its pools, holders and counters.

Nothing here decides anything: the engine decides and these structures record
the result, each operation O(1) or O(log n) in the number of licences, so that a
REQUEST/RELEASE costs the same with ten or ten thousand licences held.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Iterator

from hqnlsd.licensing.events import Dropped, EventError
from hqnlsd.licensing.holdings import (
    LOCKED,
    NO_SLOT,
    ON_LOCKED_NODE,
    HandleIndex,
    HolderStore,
    split_new,
)
from hqnlsd.licensing.holdings import (
    Holder as Holder,
)
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.settings import (
    DEFAULT_CRASHOUT_PERIODS,
    DEFAULT_TIMEOUT_SECONDS,
    NodeListing,
    ProductSettings,
)
from hqnlsd.permits.model import ProductPermit
from hqnlsd.permits.policy import KNOWN_FLAGS

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
        if type(indices) is tuple and len(indices) == 1:  # the usual grant: one licence
            index = indices[0]
            if index in self._free:
                self._free.remove(index)
                return
        indices = tuple(indices)
        missing = [index for index in indices if index not in self._free]
        if missing or len(set(indices)) != len(indices):
            raise EventError(f"licence indices {indices} are not all free")
        self._free.difference_update(indices)

    def give(self, indices: Iterable[int]) -> None:
        """Mark indices as free again."""
        free = self._free
        heap = self._heap
        for index in indices:
            if index not in free:
                free.add(index)
                heapq.heappush(heap, index)
        if len(heap) > 2 * self.size + 64:
            self._heap = sorted(free)


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
        "index",
        "key",
        "listings",
        "locked",
        "locked_by_address",
        "number",
        "permit",
        "settings",
        "store",
        "tokens",
    )

    def __init__(self, permit: ProductPermit, settings: ProductSettings) -> None:
        self.key: ProductKey = permit.key
        self.permit = permit
        self.settings = settings
        #: The holders' columns (`hqnlsd.licensing.holdings`), with their grant and
        #: update orders and client tokens.
        self.store = HolderStore()
        #: The engine's index of held handles (set by the first `add`), and this
        #: product's number in it.
        self.index: HandleIndex[ProductState] | None = None
        self.number = -1
        #: Holders by handle, in grant order (the oldest first): a view of ``store``.
        self.holders = Holders(self)
        #: The handle held by each client token (idempotent REQUESTs): a view.
        self.tokens = Tokens(self)
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
        # Plain ints (as `locks_of`, without building a Policy: on every REQUEST).
        return (self.permit.policy >> 16) & KNOWN_FLAGS

    @property
    def flags(self) -> int:
        """Policy flags in force; locked flags always as the permit says."""
        # Plain ints (as `flags_of`, without building a Policy: on every REQUEST).
        policy = self.permit.policy
        permit_flags = policy & KNOWN_FLAGS
        flags = self.settings.flags
        if flags is None:
            return permit_flags
        locks = (policy >> 16) & KNOWN_FLAGS
        return (flags & ~locks) | (permit_flags & locks)

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

    def add(
        self,
        handles: HandleIndex[ProductState],
        *,
        handle: str,
        indices: tuple[int, ...],
        locked: bool,
        on_locked_node: bool,
        who: Requester,
        access: int,
        granted_at: float,
        last_update: float,
    ) -> Holder:
        """Record a grant in this product and in ``handles`` (the engine's index).

        EventError (nothing changed) if the handle is held or an index is not free;
        the applier has checked that the client token is free.
        """
        prefix, bits = split_new(handles, handle)
        pool = self.locked if locked else self.floating
        pool.take(indices)
        store = self.store
        slot = store.add(
            prefix,
            bits,
            handle,
            indices,
            (LOCKED if locked else 0) | (ON_LOCKED_NODE if on_locked_node else 0),
            who,
            access,
            granted_at,
            last_update,
        )
        self.index = handles
        handles.add(handle, self, slot)
        counter = self.locked_by_address if locked else self.floating_by_address
        address = who.address
        counter[address] = counter.get(address, 0) + len(indices)
        return Holder(store, slot)

    def remove(self, holder: Holder) -> None:
        """Record that a holder no longer has its licence."""
        self.drop(holder.slot, holder.given_handle)

    def drop(self, slot: int, handle: str | None) -> Dropped:
        """Record that the holder in ``slot`` (of ``handle``, if known) no longer has
        its licence; what it held."""
        store = self.store
        publisher, name = self.key
        dropped = store.dropped(slot, publisher, name)
        locked = dropped.locked
        indices = dropped.indices
        address = dropped.who.address
        assert self.index is not None and address is not None
        self.index.remove(self, slot, handle)
        store.remove(slot)
        pool = self.locked if locked else self.floating
        pool.give(indices)
        counter = self.locked_by_address if locked else self.floating_by_address
        left = counter[address] - len(indices)
        if left:
            counter[address] = left
        else:
            del counter[address]
        return dropped

    def touch(self, holder: Holder, at: float) -> None:
        """Record an UPDATE: the holder moves to the end of the update order."""
        holder.store.touch(holder.slot, at)

    def refresh(self, at: float) -> None:
        """Count every holder as updated at ``at`` at the latest (HoldersRefreshed)."""
        self.store.refresh(at)

    def least_recently_updated(self) -> Iterator[Holder]:
        """Holders from the least recently updated on (for GRAB)."""
        store = self.store
        for slot in store.in_update_order():
            yield Holder(store, slot)

    def resort_updates(self) -> None:
        """Rebuild the update order from the holders' last-update times (restore);
        equal times in grant order."""
        self.store.resort_updates()


class Holders:
    """A product's holders as a read-only mapping, handle -> `Holder`, in grant order."""

    __slots__ = ("_product",)

    def __init__(self, product: ProductState) -> None:
        self._product = product

    def __len__(self) -> int:
        return self._product.store.count

    def __bool__(self) -> bool:
        return self._product.store.count > 0

    def _found(self, handle: str) -> Holder | None:
        product = self._product
        index = product.index
        if index is None:
            return None
        slot = index.slot_in(handle, product)
        return None if slot == NO_SLOT else Holder(product.store, slot, handle)

    def __contains__(self, handle: object) -> bool:
        return isinstance(handle, str) and self._found(handle) is not None

    def __getitem__(self, handle: str) -> Holder:
        product = self._product
        index = product.index
        slot = NO_SLOT if index is None else index.slot_in(handle, product)
        if slot == NO_SLOT:
            raise KeyError(handle)
        return Holder(product.store, slot, handle)

    def __iter__(self) -> Iterator[str]:
        store = self._product.store
        for slot in store.in_grant_order():
            yield store.handle(slot)

    def values(self) -> Iterator[Holder]:
        """The holders, the oldest grant first."""
        store = self._product.store
        for slot in store.in_grant_order():
            yield Holder(store, slot)


class Tokens:
    """A product's client tokens as a read-only mapping, token -> handle."""

    __slots__ = ("_product",)

    def __init__(self, product: ProductState) -> None:
        self._product = product

    def get(self, token: str, default: str | None = None) -> str | None:
        product = self._product
        store = product.store
        slot = store.token_slot(token)
        if slot == NO_SLOT:
            return default
        handle = store.handle(slot)
        if product.index is not None:  # the handle is looked up next
            product.index.remember(handle, product, slot)
        return handle

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and self._product.store.token_slot(token) != NO_SLOT

    def __len__(self) -> int:
        return self._product.store.token_count
