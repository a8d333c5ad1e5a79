"""Held licences stored by column (issue 14): a few bytes per holder, no object each.

A product's holders live in `HolderStore`: one array (or list of shared
strings) per fact, indexed by a small int *slot*; a released slot is reused.
Grant order (listings, reclaims) and update order (GRAB) are doubly linked
lists through the slots. Client tokens are found through an open-addressing
table of slots (`HolderStore.token_slot`). Handles are found, over all
products, through `HandleIndex`: a handle made of a prefix and 16 lowercase hex
digits (what the engine makes: ``random_handle``, a domain's tagged handles) is
kept as its prefix's number and a 64-bit int; any other handle as its string.

`Holder` is a view of one slot, made when asked for (listings, the feed, the
journal, the decisions that walk the holders): it reads the columns, and
``who`` builds the `Requester` again from them. A view is valid until its slot
is released; nothing keeps one longer.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from hqnlsd.licensing.events import Dropped, EventError
from hqnlsd.licensing.requester import Requester

#: Bits of the flags column.
LOCKED = 1
ON_LOCKED_NODE = 2
_MANY = 4  # the indices are not one index: in ``HolderStore.many``
_SPILLED = 8  # an int column holds _SPILL for this slot: the value is in ``spill``

#: In an int column: None, and "not an int that fits: see ``spill``".
_NONE = -1
_SPILL = -2
_INT_MAX = 2**63 - 1

#: The int columns, side by side in ``HolderStore.ints`` (``_INTS`` per slot); those
#: that may spill (``spill`` is keyed ``slot * _INTS + column``).
_BITS, _PID, _UID, _HOSTID, _ACCESS, _FIRST = range(6)
_INTS = 6
#: The references, side by side in ``HolderStore.refs`` (``_REFS`` per slot).
_USER, _HOST, _ADDRESS, _GROUP, _CLIENT = range(5)
_REFS = 5
_NO_REFS = (None,) * _REFS
#: The links, side by side in ``HolderStore.links``: grant order, update order.
_EARLIER, _LATER, _OLDER, _NEWER = range(4)
_LINKS = 4
#: The times, side by side in ``HolderStore.times``.
_GRANTED, _UPDATED = range(2)

#: No slot (end of a linked order, empty table entry).
NO_SLOT = -1
#: A client token table entry: the slot (below 2**24, as in `HandleIndex`), and how
#: far the entry is from its home above it (_FAR: that far or more).
_TOKEN_SLOT = 0xFFFFFF
_TOKEN_DIST = 24
_FAR = 0x7F
#: The prefix number of a handle kept as its string.
_ODD = 0xFFFF
_HEX = "016x"
_BITS64 = 2**64 - 1


def _packed(value: object) -> int:
    """``value`` as stored in an int column (_NONE, or _SPILL if it does not fit)."""
    if value is None:
        return _NONE
    if type(value) is int and 0 <= value <= _INT_MAX:
        return value
    return _SPILL


class Holder:
    """A view of one held licence (its product's store and slot); see the module doc."""

    __slots__ = ("given_handle", "slot", "store")

    def __init__(self, store: HolderStore, slot: int, handle: str | None = None) -> None:
        self.store = store
        self.slot = slot
        self.given_handle = handle  # when the view was found by it

    @property
    def handle(self) -> str:
        """The licence handle."""
        handle = self.given_handle
        return self.store.handle(self.slot) if handle is None else handle

    @property
    def indices(self) -> tuple[int, ...]:
        """The licence indices held, in the order granted."""
        store = self.store
        slot = self.slot
        if store.flags[slot] & _MANY:
            return store.many[slot]
        return (store.ints[slot * _INTS + _FIRST],)

    @property
    def units(self) -> int:
        """How many licences this holder has."""
        store = self.store
        if store.flags[self.slot] & _MANY:
            return len(store.many[self.slot])
        return 1

    @property
    def locked(self) -> bool:
        """Whether the licence is from the node-locked pool (else the floating one)."""
        return bool(self.store.flags[self.slot] & LOCKED)

    @property
    def on_locked_node(self) -> bool:
        """Whether the holder's host is one of the product's locked nodes."""
        return bool(self.store.flags[self.slot] & ON_LOCKED_NODE)

    @property
    def who(self) -> Requester:
        """The process holding the licence (built from the columns)."""
        return self.store.who(self.slot)

    @property
    def access(self) -> int:
        """The access level granted."""
        return self.store.number(self.slot, _ACCESS)  # type: ignore[return-value]

    @property
    def granted_at(self) -> float:
        """When the licence was granted."""
        return self.store.times[self.slot * 2 + _GRANTED]

    @property
    def last_update(self) -> float:
        """When the holder last updated (or was granted, or refreshed)."""
        return self.store.times[self.slot * 2 + _UPDATED]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Holder) and other.store is self.store and other.slot == self.slot

    def __hash__(self) -> int:
        return hash((id(self.store), self.slot))

    def __repr__(self) -> str:
        return (
            f"Holder(handle={self.handle!r}, indices={self.indices!r}, locked={self.locked!r}, "
            f"on_locked_node={self.on_locked_node!r}, who={self.who!r}, access={self.access!r}, "
            f"granted_at={self.granted_at!r}, last_update={self.last_update!r})"
        )


class HolderStore:
    """The holders of one product, by column (see the module doc).

    Columns of one kind sit side by side, a fixed number per slot, so that a
    holder is stored with a few calls: ``ints`` (handle bits, pid, uid, hostid,
    access level, licence index), ``refs`` (user, host, address, group, client
    token: shared strings), ``times`` (granted, last update), ``links`` (grant and
    update order), ``prefixes`` (the handle's prefix number) and ``flags``.
    """

    __slots__ = (
        "count",
        "first_granted",
        "flags",
        "free",
        "ints",
        "last_granted",
        "least_recent",
        "links",
        "many",
        "most_recent",
        "odd",
        "prefixes",
        "refs",
        "spill",
        "times",
        "token_count",
        "token_table",
    )

    def __init__(self) -> None:
        self.ints = array("q")
        self.refs: list[str | None] = []
        self.times = array("d")
        self.links = array("i")
        self.prefixes = array("H")
        self.flags = bytearray()
        self.odd: dict[int, str] = {}  # handles kept as strings (prefix _ODD)
        self.many: dict[int, tuple[int, ...]] = {}  # indices that are not one index
        self.spill: dict[int, object] = {}  # int values that do not fit (_SPILL)
        self.first_granted = self.last_granted = NO_SLOT
        self.least_recent = self.most_recent = NO_SLOT
        self.count = 0
        self.free = array("i")  # released slots, reused last-released first
        self.token_table = array("i", [NO_SLOT]) * 8
        self.token_count = 0

    # -- reading ---------------------------------------------------------------------

    def handle(self, slot: int) -> str:
        prefix = self.prefixes[slot]
        if prefix == _ODD:
            return self.odd[slot]
        return HANDLE_PREFIXES[prefix] + format(self.ints[slot * _INTS] & _BITS64, _HEX)

    def number(self, slot: int, column: int) -> object:
        value = self.ints[slot * _INTS + column]
        if value >= 0:
            return value
        if value == _NONE:
            return None
        return self.spill[slot * _INTS + column]

    def who(self, slot: int) -> Requester:
        at = slot * _INTS
        ints = self.ints
        pid = ints[at + _PID]
        uid = ints[at + _UID]
        hostid = ints[at + _HOSTID]
        refs = self.refs
        at = slot * _REFS
        if pid >= 0 and uid >= _NONE and hostid >= _NONE:  # nothing spilled: the usual
            return Requester(
                refs[at],  # type: ignore[arg-type]
                refs[at + 1],  # type: ignore[arg-type]
                refs[at + 2],  # type: ignore[arg-type]
                pid,
                None if uid == _NONE else uid,
                refs[at + 3],
                None if hostid == _NONE else hostid,
                refs[at + 4],
            )
        user, host, address, group, client = refs[at : at + _REFS]
        return Requester(
            user,  # type: ignore[arg-type]
            host,  # type: ignore[arg-type]
            address,  # type: ignore[arg-type]
            pid if pid >= 0 else self.number(slot, _PID),  # type: ignore[arg-type]
            uid if uid >= 0 else None if uid == _NONE else self.number(slot, _UID),  # type: ignore[arg-type]
            group,
            hostid if hostid >= 0 else None if hostid == _NONE else self.number(slot, _HOSTID),  # type: ignore[arg-type]
            client,
        )

    def same_process(self, slot: int, who: Requester) -> bool:
        """``self.who(slot).same_process(who)``, without building the holder's record."""
        at = slot * _INTS
        ints = self.ints
        pid = ints[at + _PID]
        uid = ints[at + _UID]
        hostid = ints[at + _HOSTID]
        if pid < 0 or uid < _NONE or hostid < _NONE:  # a spilled value: the long way
            return self.who(slot).same_process(who)
        refs = self.refs
        at = slot * _REFS
        return (
            refs[at + _USER] == who.user
            and refs[at + _HOST] == who.host
            and pid == who.pid
            and (None if uid == _NONE else uid) == who.uid
            and refs[at + _GROUP] == who.group
            and (None if hostid == _NONE else hostid) == who.hostid
            and refs[at + _ADDRESS] == who.address
        )

    def dropped(self, slot: int, publisher: str, product: str) -> Dropped:
        """What the holder in ``slot`` (of that product) holds, as its `Dropped`."""
        flags = self.flags[slot]
        ints = self.ints
        at = slot * _INTS
        pid = ints[at + _PID]
        if flags & _SPILLED or pid < 0:
            who = self.who(slot)
        else:  # `who`, written out (one per RELEASE)
            uid = ints[at + _UID]
            hostid = ints[at + _HOSTID]
            refs = self.refs
            held = slot * _REFS
            who = Requester(
                refs[held],  # type: ignore[arg-type]
                refs[held + 1],  # type: ignore[arg-type]
                refs[held + 2],  # type: ignore[arg-type]
                pid,
                None if uid == _NONE else uid,
                refs[held + 3],
                None if hostid == _NONE else hostid,
                refs[held + 4],
            )
        return Dropped(
            publisher,
            product,
            self.many[slot] if flags & _MANY else (ints[at + _FIRST],),
            bool(flags & LOCKED),
            who,
            self.times[slot * 2 + _GRANTED],
        )

    def updated(self, slot: int) -> float:
        return self.times[slot * 2 + _UPDATED]

    def in_grant_order(self) -> Iterator[int]:
        """Slots, the oldest grant first (safe while the current slot is released)."""
        slot = self.first_granted
        links = self.links
        while slot != NO_SLOT:
            following = links[slot * _LINKS + _LATER]
            yield slot
            slot = following

    def in_update_order(self) -> Iterator[int]:
        """Slots, the least recently updated first."""
        slot = self.least_recent
        links = self.links
        while slot != NO_SLOT:
            following = links[slot * _LINKS + _NEWER]
            yield slot
            slot = following

    # -- changing ----------------------------------------------------------------------

    def add(
        self,
        prefix: int,
        bits: int,
        handle: str,
        indices: tuple[int, ...],
        flags: int,
        who: Requester,
        access: int,
        granted_at: float,
        last_update: float,
    ) -> int:
        """Store a holder (its handle split by `split_handle`); its slot."""
        pid = who.pid
        uid = who.uid
        hostid = who.hostid
        client = who.client
        first = indices[0] if len(indices) == 1 else None
        if (
            type(pid) is int
            and 0 <= pid <= _INT_MAX
            and (uid is None or (type(uid) is int and 0 <= uid <= _INT_MAX))
            and (hostid is None or (type(hostid) is int and 0 <= hostid <= _INT_MAX))
            and type(access) is int
            and 0 <= access <= _INT_MAX
            and type(first) is int
            and 0 <= first <= _INT_MAX
        ):
            ints = (
                bits,
                pid,
                _NONE if uid is None else uid,
                _NONE if hostid is None else hostid,
                access,
                first,
            )
        else:
            ints = (bits, _packed(pid), _packed(uid), _packed(hostid), _packed(access), 0)
            if _SPILL in ints[1:]:
                flags |= _SPILLED
            flags |= _MANY
        refs = (who.user, who.host, who.address, who.group, client)
        last = self.last_granted
        links = (last, NO_SLOT, self.most_recent, NO_SLOT)
        if self.free:
            slot = self.free.pop()
            self.ints[slot * _INTS : slot * _INTS + _INTS] = array("q", ints)
            self.refs[slot * _REFS : slot * _REFS + _REFS] = refs
            self.times[slot * 2] = granted_at
            self.times[slot * 2 + 1] = last_update
            self.links[slot * _LINKS : slot * _LINKS + _LINKS] = array("i", links)
            self.prefixes[slot] = prefix
            self.flags[slot] = flags
        else:
            slot = len(self.flags)
            self.ints.extend(ints)
            self.refs.extend(refs)
            self.times.append(granted_at)
            self.times.append(last_update)
            self.links.extend(links)
            self.prefixes.append(prefix)
            self.flags.append(flags)
        if prefix == _ODD:
            self.odd[slot] = handle
        if flags & _MANY:
            self.many[slot] = tuple(indices)
        if flags & _SPILLED:
            given = (bits, pid, uid, hostid, access, first)
            for column in range(1, _INTS - 1):
                if ints[column] == _SPILL:
                    self.spill[slot * _INTS + column] = given[column]
        self.count += 1
        # Grant order and update order: at the end (the links above point back).
        if last == NO_SLOT:
            self.first_granted = slot
        else:
            self.links[last * _LINKS + _LATER] = slot
        self.last_granted = slot
        recent = self.most_recent
        if recent == NO_SLOT:
            self.least_recent = slot
        else:
            self.links[recent * _LINKS + _NEWER] = slot
        self.most_recent = slot
        if client is not None:
            self._add_token(client, slot)
        return slot

    def remove(self, slot: int) -> None:
        """Forget a holder; its slot is free again."""
        at = slot * _REFS
        client = self.refs[at + _CLIENT]
        if client is not None:
            self._remove_token(client, slot)
        links = self.links
        earlier, later = links[slot * _LINKS + _EARLIER], links[slot * _LINKS + _LATER]
        if earlier == NO_SLOT:
            self.first_granted = later
        else:
            links[earlier * _LINKS + _LATER] = later
        if later == NO_SLOT:
            self.last_granted = earlier
        else:
            links[later * _LINKS + _EARLIER] = earlier
        self.unlink_update(slot)
        flags = self.flags[slot]
        if flags & _MANY:
            del self.many[slot]
        if flags & _SPILLED:
            for column in range(_INTS):
                self.spill.pop(slot * _INTS + column, None)
        if self.prefixes[slot] == _ODD:
            del self.odd[slot]
        # Drop the references, so that names and tokens no longer held are freed.
        self.refs[at : at + _REFS] = _NO_REFS
        self.flags[slot] = 0
        self.count -= 1
        if self.count:
            self.free.append(slot)
        else:  # the last one: start again from nothing (frees the columns)
            self.__init__()  # type: ignore[misc]

    def touch(self, slot: int, at: float) -> None:
        """An UPDATE at ``at``: the slot moves to the end of the update order."""
        times = self.times
        if at > times[slot * 2 + _UPDATED]:
            times[slot * 2 + _UPDATED] = at
        last = self.most_recent
        if slot != last:
            # `unlink_update` then `append_update`, written out (one per UPDATE); the
            # slot is not the most recent, so it has a newer one.
            links = self.links
            older, newer = links[slot * _LINKS + _OLDER], links[slot * _LINKS + _NEWER]
            if older == NO_SLOT:
                self.least_recent = newer
            else:
                links[older * _LINKS + _NEWER] = newer
            links[newer * _LINKS + _OLDER] = older
            links[slot * _LINKS + _OLDER] = last
            links[slot * _LINKS + _NEWER] = NO_SLOT
            links[last * _LINKS + _NEWER] = slot
            self.most_recent = slot

    def refresh(self, at: float) -> None:
        """Every holder updated at ``at`` at the latest; the update order rebuilt."""
        times = self.times
        for slot in self.in_grant_order():
            if at > times[slot * 2 + _UPDATED]:
                times[slot * 2 + _UPDATED] = at
        self.resort_updates()

    def resort_updates(self) -> None:
        """Rebuild the update order from the last-update times (equal: grant order)."""
        ordered = sorted(self.in_grant_order(), key=self.updated)
        self.least_recent = self.most_recent = NO_SLOT
        for slot in ordered:
            self.append_update(slot)

    def append_update(self, slot: int) -> None:
        """Put ``slot`` (not in the update order) at its most recent end."""
        links = self.links
        last = self.most_recent
        links[slot * _LINKS + _OLDER] = last
        links[slot * _LINKS + _NEWER] = NO_SLOT
        if last == NO_SLOT:
            self.least_recent = slot
        else:
            links[last * _LINKS + _NEWER] = slot
        self.most_recent = slot

    def unlink_update(self, slot: int) -> None:
        """Take ``slot`` out of the update order."""
        links = self.links
        older, newer = links[slot * _LINKS + _OLDER], links[slot * _LINKS + _NEWER]
        if older == NO_SLOT:
            self.least_recent = newer
        else:
            links[older * _LINKS + _NEWER] = newer
        if newer == NO_SLOT:
            self.most_recent = older
        else:
            links[newer * _LINKS + _OLDER] = older
        links[slot * _LINKS + _OLDER] = links[slot * _LINKS + _NEWER] = NO_SLOT

    # -- client tokens (open addressing, linear probing, no tombstones) -------------------
    #
    # An entry is the slot, and above it (`_TOKEN_DIST`) how far the entry is from its
    # home (up to _FAR; _FAR: at least that far, hash the token to know): a removal
    # shifts entries back without reading their tokens.

    def token_slot(self, token: str) -> int:
        """The slot holding client token ``token``, or NO_SLOT."""
        table = self.token_table
        mask = len(table) - 1
        at = hash(token) & mask
        refs = self.refs
        while True:
            entry = table[at]
            if entry == NO_SLOT:
                return NO_SLOT
            slot = entry & _TOKEN_SLOT
            if refs[slot * _REFS + _CLIENT] == token:
                return slot
            at = (at + 1) & mask

    def _add_token(self, token: str, slot: int) -> None:
        if (self.token_count + 1) * 2 > len(self.token_table):
            self._resize_tokens(len(self.token_table) * 2)
        self._place_token(self.token_table, hash(token), slot)
        self.token_count += 1

    @staticmethod
    def _place_token(table: array[int], hashed: int, slot: int) -> None:
        mask = len(table) - 1
        home = at = hashed & mask
        while table[at] != NO_SLOT:
            at = (at + 1) & mask
        table[at] = slot | (min((at - home) & mask, _FAR) << _TOKEN_DIST)

    def _remove_token(self, token: str, slot: int) -> None:
        table = self.token_table
        mask = len(table) - 1
        hole = hash(token) & mask
        while table[hole] & _TOKEN_SLOT != slot:
            hole = (hole + 1) & mask
        at = hole
        while True:  # shift back the entries the hole would cut off from their home
            at = (at + 1) & mask
            moved = table[at]
            if moved == NO_SLOT:
                break
            distance = moved >> _TOKEN_DIST
            if distance == _FAR:
                token_at = (moved & _TOKEN_SLOT) * _REFS + _CLIENT
                distance = (at - hash(self.refs[token_at])) & mask
            gap = (at - hole) & mask
            if distance >= gap:
                table[hole] = (moved & _TOKEN_SLOT) | (min(distance - gap, _FAR) << _TOKEN_DIST)
                hole = at
        table[hole] = NO_SLOT
        self.token_count -= 1
        size = len(table)
        if size > 8 and self.token_count * 8 < size:
            self._resize_tokens(size // 2)

    def _resize_tokens(self, size: int) -> None:
        old = self.token_table
        table = array("i", [NO_SLOT]) * size
        refs = self.refs
        place = self._place_token
        for entry in old:
            if entry != NO_SLOT:
                slot = entry & _TOKEN_SLOT
                place(table, hash(refs[slot * _REFS + _CLIENT]), slot)
        self.token_table = table


#: Handle prefixes by number (a domain's tag and its dash; "" for plain handles).
HANDLE_PREFIXES: list[str] = [""]
_PREFIX_NUMBERS: dict[str, int] = {"": 0}


def split_handle(handle: str, *, new: bool) -> tuple[int, int]:
    """``handle`` as (prefix number, 64 bits); (_ODD, 0) if it is not ``prefix + 16
    lowercase hex digits``, or (with ``new`` false) its prefix was never seen: then no
    holder has it."""
    if type(handle) is not str or len(handle) < 16:
        return _ODD, 0
    tail = handle[-16:]
    try:
        bits = int(tail, 16)
    except ValueError:
        return _ODD, 0
    if format(bits, _HEX) != tail:
        return _ODD, 0
    if bits > _INT_MAX:
        bits -= 2**64  # kept signed (the int column)
    prefix = handle[:-16]
    number = _PREFIX_NUMBERS.get(prefix)
    if number is None:
        if not new or len(HANDLE_PREFIXES) >= _ODD:
            return _ODD, 0
        number = len(HANDLE_PREFIXES)
        HANDLE_PREFIXES.append(prefix)
        _PREFIX_NUMBERS[prefix] = number
    return number, bits


#: A `HandleIndex` entry: 24 bits of the handle's hash (its home in tables of up to
#: 2**24 entries, and a first check of a match), the product's number and the slot.
_SLOT_BITS = 24
_PRODUCT_BITS = 15
_KEY_SHIFT = _SLOT_BITS + _PRODUCT_BITS
_KEY_LOW = 0xFFFFFF
_SLOT_MASK = 0xFFFFFF  # 2**_SLOT_BITS - 1
#: The slot of a `HandleIndex` entry is ``entry & SLOT_MASK``.
SLOT_MASK = _SLOT_MASK
_PRODUCT_MASK = 0x7FFF  # 2**_PRODUCT_BITS - 1


class Product(Protocol):
    """What `HandleIndex` needs of a product (`hqnlsd.licensing.pools.ProductState`)."""

    store: HolderStore
    number: int


ProductT = TypeVar("ProductT", bound=Product)


class HandleIndex(Generic[ProductT]):
    """Every held handle, over all products: handle -> (product, slot).

    An open-addressing table (linear probing, entries shifted back on removal)
    of ints: 24 bits of the handle's hash, the product's number and the slot. A
    match is confirmed by the handle the product's columns give back. The last
    handle looked up is remembered with its entry: a command looks its handle up
    again as its event is applied.
    """

    __slots__ = (
        "_count",
        "_mask",
        "_memo_at",
        "_memo_entry",
        "_memo_handle",
        "_products",
        "_table",
    )

    def __init__(self) -> None:
        self._products: list[ProductT] = []
        self._table = array("q", [NO_SLOT]) * 8
        self._mask = 7
        self._count = 0
        self._memo_handle: object = None
        self._memo_entry = NO_SLOT
        self._memo_at = NO_SLOT  # where the remembered entry is in the table (if known)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, handle: object) -> bool:
        return self._entry(handle) != NO_SLOT  # type: ignore[arg-type]

    def product_at(self, entry: int) -> ProductT:
        """The product of an entry (not NO_SLOT)."""
        return self._products[(entry >> _SLOT_BITS) & _PRODUCT_MASK]

    def get(self, handle: str) -> ProductT | None:
        """The product holding ``handle``, or None."""
        entry = self._entry(handle)
        if entry == NO_SLOT:
            return None
        return self._products[(entry >> _SLOT_BITS) & _PRODUCT_MASK]

    def holder(self, handle: str) -> tuple[ProductT, Holder] | None:
        """The product and holder of ``handle``, or None."""
        entry = self._entry(handle)
        if entry == NO_SLOT:
            return None
        product = self._products[(entry >> _SLOT_BITS) & _PRODUCT_MASK]
        return product, Holder(product.store, entry & _SLOT_MASK, handle)

    def remember(self, handle: str, product: ProductT, slot: int) -> None:
        """Make ``handle`` (held by ``product`` in ``slot``) the one remembered: it is
        about to be looked up."""
        self._memo_handle = handle
        self._memo_entry = self._entry_of(hash(handle), product.number, slot)
        self._memo_at = NO_SLOT

    def slot_in(self, handle: str, product: ProductT) -> int:
        """The slot of ``handle`` if ``product`` holds it, else NO_SLOT."""
        entry = self._entry(handle)
        if entry == NO_SLOT or (entry >> _SLOT_BITS) & _PRODUCT_MASK != product.number:
            return NO_SLOT
        if self._products[product.number] is not product:
            return NO_SLOT
        return entry & _SLOT_MASK

    @staticmethod
    def _entry_of(hashed: int, number: int, slot: int) -> int:
        return ((hashed & _KEY_LOW) << _KEY_SHIFT) | (number << _SLOT_BITS) | slot

    def entry(self, handle: str) -> int:
        """The entry of ``handle`` (`product_at`; its slot: ``entry & SLOT_MASK``), or
        NO_SLOT if not held."""
        if handle is self._memo_handle:
            return self._memo_entry
        hashed = hash(handle)
        low = hashed & _KEY_LOW
        table = self._table
        mask = self._mask
        at = hashed & mask
        while True:
            entry = table[at]
            if entry == NO_SLOT:
                break
            if entry >> _KEY_SHIFT == low:
                store = self._products[(entry >> _SLOT_BITS) & _PRODUCT_MASK].store
                if store.handle(entry & _SLOT_MASK) == handle:
                    break
            at = (at + 1) & mask
        self._memo_handle = handle
        self._memo_entry = entry
        self._memo_at = at
        return entry

    _entry = entry

    def number_of(self, product: ProductT) -> int:
        """The product's number here (given on its first holder)."""
        number = product.number
        if 0 <= number < len(self._products) and self._products[number] is product:
            return number
        number = len(self._products)
        if number > _PRODUCT_MASK:
            raise EventError("too many products have held licences")
        self._products.append(product)
        product.number = number
        return number

    def add(self, handle: str, product: ProductT, slot: int) -> None:
        """Index a handle, not held (`__contains__`), held by ``product`` in ``slot``."""
        if slot > _SLOT_MASK:
            raise EventError(f"more than {_SLOT_MASK} holders of one product")
        hashed = hash(handle)
        entry = self._entry_of(hashed, self.number_of(product), slot)
        if (self._count + 1) * 2 > len(self._table):
            self._resize(len(self._table) * 2)
        table = self._table
        mask = self._mask
        at = hashed & mask
        while table[at] != NO_SLOT:
            at = (at + 1) & mask
        table[at] = entry
        self._count += 1
        self._memo_handle = handle
        self._memo_entry = entry
        self._memo_at = at

    def _home(self, entry: int, mask: int) -> int:
        if mask <= _KEY_LOW:
            return (entry >> _KEY_SHIFT) & mask
        store = self._products[(entry >> _SLOT_BITS) & _PRODUCT_MASK].store
        return hash(store.handle(entry & _SLOT_MASK)) & mask

    def remove(self, product: ProductT, slot: int, handle: str | None = None) -> None:
        """Forget the handle of a product's slot (before the slot's columns are);
        ``handle``: that handle, if known."""
        table = self._table
        mask = self._mask
        at = self._memo_at
        entry = self._memo_entry
        if (
            handle is not None
            and handle is self._memo_handle
            and at != NO_SLOT
            and entry != NO_SLOT
            and entry & _SLOT_MASK == slot
            and (entry >> _SLOT_BITS) & _PRODUCT_MASK == product.number
        ):
            # Just looked up (a RELEASE, a revocation): its place is known.
            hole = at
        else:
            hashed = hash(product.store.handle(slot) if handle is None else handle)
            entry = ((hashed & _KEY_LOW) << _KEY_SHIFT) | (product.number << _SLOT_BITS) | slot
            hole = hashed & mask
        self._memo_handle = None
        self._memo_at = NO_SLOT
        while table[hole] != entry:
            hole = (hole + 1) & mask
        at = hole
        small = mask <= _KEY_LOW
        while True:
            at = (at + 1) & mask
            moved = table[at]
            if moved == NO_SLOT:
                break
            home = (moved >> _KEY_SHIFT) & mask if small else self._home(moved, mask)
            if (at - home) & mask >= (at - hole) & mask:
                table[hole] = moved
                hole = at
        table[hole] = NO_SLOT
        self._count -= 1
        size = len(table)
        if size > 8 and self._count * 8 < size:
            self._resize(size // 2)

    def _resize(self, size: int) -> None:
        old = self._table
        self._table = table = array("q", [NO_SLOT]) * size
        self._mask = mask = size - 1
        home = self._home
        for entry in old:
            if entry != NO_SLOT:
                at = home(entry, mask)
                while table[at] != NO_SLOT:
                    at = (at + 1) & mask
                table[at] = entry


def split_new(handles: HandleIndex[ProductT], handle: str) -> tuple[int, int]:
    """`split_handle` of a handle for a new holder; EventError if it is held."""
    if handle in handles:
        raise EventError(f"handle {handle} is already held")
    return split_handle(handle, new=True)
