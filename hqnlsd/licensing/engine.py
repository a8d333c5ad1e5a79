"""The licensing engine: pools, holders and every policy, as pure decisions.

Commands (``request``, ``update``, ``release``, the administrator's changes,
``load_products``, ``expire``...) decide with the injected clock, then express
the decision as events (``hqnlsd.licensing.events``) and apply them with
``apply``; the state changes nowhere else. Each command returns an ``Outcome``
(result + events) so the caller can persist or replicate exactly what changed
before answering, and a backup replaying the same events with ``apply`` ends in
the same state.

No sockets, no reactor: time is ``clock.seconds()`` (wall-clock seconds; the
date for start / expiry checks is the local date of that time, or whatever the
injected ``today`` says), handles come from an injected ``new_handle``.

Policies follow the original hqn_lsd (LispWorks Guide to the License Server,
section 2.6). A REQUEST is decided in this order:

1. ILLEGAL for malformed values; BADPRODUCT for a product not served or another
   version than the one served (the message names the served version).
2. A client token that already holds a live licence: the same handle again
   (``Grant.duplicate``), counted as an UPDATE, if the request comes from the
   holder (same user, host, pid, uid, group, hostid and IP address); from anyone
   else TOKEN_HELD, and nothing changes.
3. PERMITOUTOFDATE before the start date, PERMITEXPIRED after the expiry date
   (both days included); EXCLUDED for an excluded host (name or address);
   ACCL: the user's level, else the group's, else 8; 0 is NOACCESS.
4. GRAB: every licence of the product not updated within the crashout time
   is revoked (its holder gets LOSTLICENCE at its next UPDATE).
5. Pools: a locked node (the peer address listed in LOCKED-NODES, and the
   client's unique id too if the listing's id is non-zero) tries the locked pool,
   then the floating one unless LKNF; other hosts only the floating pool. One
   request takes all its ``units`` from one pool, lowest indices first.
   Units no usable pool can ever give: TOOMANYLICENCES (or NOLICENCES /
   LOCKSNOFLOAT when no pool is usable at all). ONPN: at most one floating
   licence per address, and on a locked node at most one locked licence per
   listing; beyond that TOOMANYLICENCES.
6. Nothing free: TIML / LKNL reclaim the oldest licences held longer than the
   timeout (LKNL: not those held on locked nodes); then LKPR lets a locked node
   reclaim the oldest floating licences held off the locked nodes; then USRL
   lets a named user reclaim the oldest licences of users who are not named.
   Otherwise LOCKSNOFLOAT (a locked node kept off free floating licences by
   LKNF) or NOLICENCES.

Engine time is ``max(clock, latest event time)``: a wall clock stepped back
cannot reorder events.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable, Iterable, Mapping

from hqnlsd.licensing import queries
from hqnlsd.licensing.allocation import decide_request
from hqnlsd.licensing.changes import AdminChanges
from hqnlsd.licensing.checks import MAX_TEXT, MAX_UNITS
from hqnlsd.licensing.events import (
    JSON,
    Event,
    HoldersRefreshed,
    Released,
    TombstonesPurged,
    Updated,
)
from hqnlsd.licensing.holdings import NO_SLOT
from hqnlsd.licensing.ledger import Ledger, SecondsClock
from hqnlsd.licensing.results import (
    AdminDone,
    Denied,
    Grant,
    HolderInfo,
    LicenceRequest,
    Outcome,
    ProductStatus,
    QueryAnswer,
    ReleaseAck,
    UpdateAck,
)
from hqnlsd.licensing.snapshot import SNAPSHOT_FORMAT
from hqnlsd.licensing.wording import product_name
from hqnlsd.permits.model import ProductPermit
from hqnlsd.status import Status

__all__ = [
    "MAX_TEXT",
    "MAX_UNITS",
    "SNAPSHOT_FORMAT",
    "TOMBSTONE_SECONDS",
    "Engine",
    "SecondsClock",
    "local_date",
    "random_handle",
]

#: How long a taken-back handle is remembered (LOSTLICENCE rather than BADHANDLE).
TOMBSTONE_SECONDS = 24 * 60 * 60.0


def local_date(seconds: float) -> datetime.date:
    """The local calendar date at ``seconds`` since the epoch."""
    return datetime.date.fromtimestamp(seconds)


def random_handle() -> str:
    """A fresh unguessable licence handle (16 hex digits)."""
    return secrets.token_hex(8)


class Engine:
    """Licence pools and policies for the products served here (see module docstring).

    A facade: the state and its events are the `Ledger`'s, the REQUEST decision is
    `hqnlsd.licensing.allocation`'s, the administrator's changes `AdminChanges`',
    the read-only answers `hqnlsd.licensing.queries`'.
    """

    def __init__(
        self,
        clock: SecondsClock,
        new_handle: Callable[[], str] = random_handle,
        *,
        tombstone_seconds: float = TOMBSTONE_SECONDS,
        today: Callable[[float], datetime.date] = local_date,
    ) -> None:
        self._clock = clock
        self._today = today
        self.tombstone_seconds = tombstone_seconds
        self._ledger = Ledger(clock, new_handle)
        self._changes = AdminChanges(self._ledger)

    @property
    def applied(self) -> int:
        """Events applied since construction or the last ``restore`` (the journal
        uses it to check that a snapshot matches what it has written)."""
        return self._ledger.applied

    @applied.setter
    def applied(self, count: int) -> None:
        self._ledger.applied = count

    # ======================================================================
    # Products
    # ======================================================================

    def load_products(self, products: Iterable[ProductPermit]) -> Outcome[AdminDone]:
        """Serve exactly these products (the first of each (publisher, product) wins).

        Holders of an unchanged product keep their licences (SIGHUP). A product
        whose permit changed keeps them too if its version, its pools and its
        locked nodes stay the same (e.g. a renewal with a later expiry date);
        otherwise, and for products no longer served, the licences are revoked.
        Administrative settings survive, except the pool split and locked-node
        list when the permit changes them.
        """
        return self._changes.load_products(products)

    def reinit(self, products: Iterable[ProductPermit] | None = None) -> Outcome[AdminDone]:
        """Revoke every licence (``hqn_lsa reinit``), then serve ``products`` if given."""
        return self._changes.reinit(products)

    def product(self, publisher: str, product: str) -> ProductPermit | None:
        """The permit served for (publisher, product), or None."""
        state = self._ledger.state.products.get((publisher, product))
        return None if state is None else state.permit

    def served(self) -> tuple[ProductPermit, ...]:
        """Every product permit served, in load order."""
        return self._ledger.state.served_permits()

    # ======================================================================
    # Client commands
    # ======================================================================

    def request(self, request: LicenceRequest) -> Outcome[Grant | Denied]:
        """REQUEST: grant a licence, or say exactly why not (see module docstring)."""
        now = self._ledger.now()
        batch: list[Event] = []
        result = decide_request(self._ledger, request, now, batch, self._today)
        return Outcome(result, tuple(batch))

    def update(self, handle: str) -> Outcome[UpdateAck | Denied]:
        """UPDATE: the holder is alive; LOSTLICENCE if its licence was taken back."""
        ledger = self._ledger
        now = ledger.now()
        handles = ledger.state.handles
        entry = handles.entry(handle)  # remembered: the applier looks it up again
        if entry == NO_SLOT:
            return Outcome(ledger.state.not_held(handle))
        state = handles.product_at(entry)
        if self._today(now) > state.permit.expiry:
            return Outcome(
                Denied(
                    Status.PERMITEXPIRED,
                    f"the permit for {product_name(state)} expired on {state.permit.expiry}; "
                    "release the licence",
                )
            )
        event = Updated(handle, now)
        ledger.apply(event)
        return Outcome(UpdateAck(handle, state.period), (event,))

    def release(self, handle: str) -> Outcome[ReleaseAck | Denied]:
        """RELEASE: give the licence back."""
        ledger = self._ledger
        now = ledger.now()
        if ledger.state.handles.entry(handle) == NO_SLOT:  # remembered for the applier
            return Outcome(ledger.state.not_held(handle))
        event = Released(handle, now)
        ledger.apply(event)
        return Outcome(ReleaseAck(handle), (event,))

    def query(self, handle: str, what: str) -> QueryAnswer | Denied:
        """QUERY: facts about a held licence (``what`` is one of QUERY_KINDS)."""
        return queries.query(self._ledger.state, handle, what)

    def users(self, publisher: str, product: str, version: str) -> list[HolderInfo] | Denied:
        """USERS for applications: the holders (without handles) if UVIS allows it."""
        return queries.users(self._ledger.state, publisher, product, version)

    # ======================================================================
    # Listings for administrators
    # ======================================================================

    def holders(self, publisher: str, product: str) -> list[HolderInfo] | Denied:
        """Every holder of a product, oldest grant first, with handles."""
        return queries.holders(self._ledger.state, publisher, product)

    def holders_page(
        self, publisher: str, product: str, offset: int, limit: int
    ) -> tuple[list[HolderInfo], int] | Denied:
        """At most ``limit`` holders of a product from the ``offset``-th in ``holders``
        order, and how many it has in all, without building the others (a console
        lists a page at a time); ValueError for a negative offset or limit."""
        return queries.holders_page(self._ledger.state, publisher, product, offset, limit)

    def status(self) -> list[ProductStatus]:
        """Every served product with its settings, totals and use."""
        return queries.status(self._ledger.state)

    def product_of(self, handle: str) -> tuple[str, str, str] | None:
        """(publisher, product, version) of a held licence, or None."""
        state = self._ledger.state.handles.get(handle)
        if state is None:
            return None
        return (state.permit.publisher, state.permit.product, state.permit.version)

    def held_count(self) -> int:
        """Licence handles held, over all products."""
        return len(self._ledger.state.handles)

    def tombstone_count(self) -> int:
        """Handles remembered as taken back."""
        return len(self._ledger.state.tombstones)

    # ======================================================================
    # Periodic work
    # ======================================================================

    def expire(self) -> Outcome[int]:
        """Forget tombstones older than ``tombstone_seconds``; result: how many."""
        before = self._ledger.now() - self.tombstone_seconds
        tombstones = self._ledger.state.tombstones
        stale = sum(1 for tomb in tombstones.values() if tomb.at < before)
        if not stale:
            return Outcome(0)
        batch: list[Event] = []
        self._ledger.emit(TombstonesPurged(before), batch)
        return Outcome(stale, tuple(batch))

    def resume(self) -> Outcome[int]:
        """Count every holder as updated now; call once after a restart or take-over.

        Holders could not UPDATE while no server was serving them; without this
        the first request would crash all of them out (GRAB).
        """
        held = len(self._ledger.state.handles)
        if not held:
            return Outcome(0)
        batch: list[Event] = []
        self._ledger.emit(HoldersRefreshed(self._ledger.now()), batch)
        return Outcome(held, tuple(batch))

    # ======================================================================
    # Administration (hqn_lsa)
    # ======================================================================

    def set_policy(
        self, publisher: str, product: str, flags: int, lock: int = 0
    ) -> Outcome[AdminDone | Denied]:
        """Set the policy flags (low 16 bits), then lock the flags of ``lock`` until the
        permit is re-read (``policy p MNEM!``); refuse to change a flag locked by the
        publisher or, earlier, by the administrator."""
        return self._changes.set_policy(publisher, product, flags, lock)

    def set_crashout(
        self, publisher: str, product: str, seconds: float | None
    ) -> Outcome[AdminDone | Denied]:
        """Set the GRAB crashout time in seconds (None: back to 3 update periods)."""
        return self._changes.set_crashout(publisher, product, seconds)

    def set_timeout(
        self, publisher: str, product: str, seconds: float | None
    ) -> Outcome[AdminDone | Denied]:
        """Set the TIML / LKNL timeout in seconds (None: back to 60 minutes)."""
        return self._changes.set_timeout(publisher, product, seconds)

    def kill(self, handle: str) -> Outcome[AdminDone | Denied]:
        """Take a licence back; its holder gets LOSTLICENCE at its next UPDATE."""
        return self._changes.kill(handle)

    def kill_index(self, publisher: str, product: str, index: int) -> Outcome[AdminDone | Denied]:
        """Take back whichever licence holds licence number ``index`` of a product."""
        return self._changes.kill_index(publisher, product, index)

    def add_node(
        self, publisher: str, product: str, address: str, unique_id: int = 0
    ) -> Outcome[AdminDone | Denied]:
        """List a host (once more) as a locked node of the product."""
        return self._changes.add_node(publisher, product, address, unique_id)

    def remove_node(
        self, publisher: str, product: str, address: str, unique_id: int | None = 0
    ) -> Outcome[AdminDone | Denied]:
        """Remove one listing of a locked node that ``addnode`` added (never one of the
        permit's own); ``unique_id`` None: the host's last added listing, whatever its
        id. Revokes the product's licences."""
        return self._changes.remove_node(publisher, product, address, unique_id)

    def float_to_locked(
        self, publisher: str, product: str, count: int = 1
    ) -> Outcome[AdminDone | Denied]:
        """Make ``count`` floating licences node-locked (``ftol``); revokes the product's."""
        return self._changes.float_to_locked(publisher, product, count)

    def locked_to_float(
        self, publisher: str, product: str, count: int = 1
    ) -> Outcome[AdminDone | Denied]:
        """Make ``count`` node-locked licences floating (``ltof``); revokes the product's."""
        return self._changes.locked_to_float(publisher, product, count)

    def exclude_host(self, publisher: str, product: str, host: str) -> Outcome[AdminDone | Denied]:
        """Refuse the product to a host (name, any case, or IPv4 address)."""
        return self._changes.exclude_host(publisher, product, host)

    def unexclude_host(
        self, publisher: str, product: str, host: str
    ) -> Outcome[AdminDone | Denied]:
        """Let an excluded host take the product's licences again."""
        return self._changes.unexclude_host(publisher, product, host)

    def add_named_user(
        self, publisher: str, product: str, user: str
    ) -> Outcome[AdminDone | Denied]:
        """Name a user for USRL (guaranteed licences)."""
        return self._changes.add_named_user(publisher, product, user)

    def remove_named_user(
        self, publisher: str, product: str, user: str
    ) -> Outcome[AdminDone | Denied]:
        """Stop naming a user for USRL."""
        return self._changes.remove_named_user(publisher, product, user)

    def set_user_access(
        self, publisher: str, product: str, user: str, level: int
    ) -> Outcome[AdminDone | Denied]:
        """Give a user an ACCL access level 0..8 for the product."""
        return self._changes.set_access(publisher, product, user, level, group=False)

    def remove_user_access(
        self, publisher: str, product: str, user: str
    ) -> Outcome[AdminDone | Denied]:
        """Remove a user's ACCL entry."""
        return self._changes.set_access(publisher, product, user, None, group=False)

    def set_group_access(
        self, publisher: str, product: str, group: str, level: int
    ) -> Outcome[AdminDone | Denied]:
        """Give a group an ACCL access level 0..8 for the product."""
        return self._changes.set_access(publisher, product, group, level, group=True)

    def remove_group_access(
        self, publisher: str, product: str, group: str
    ) -> Outcome[AdminDone | Denied]:
        """Remove a group's ACCL entry."""
        return self._changes.set_access(publisher, product, group, None, group=True)

    # ======================================================================
    # Events
    # ======================================================================

    def apply(self, event: Event) -> None:
        """Apply one event (the only way the state changes); EventError if it does not fit.

        Events that name a handle no longer held (a repeated RELEASE...) change
        nothing, so replaying a journal is robust.
        """
        self._ledger.apply(event)

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply events in order."""
        for event in events:
            self._ledger.apply(event)

    # ======================================================================
    # Snapshot / restore
    # ======================================================================

    def snapshot(self) -> dict[str, JSON]:
        """The whole state as JSON-safe data (``restore`` takes it back)."""
        return self._ledger.snapshot()

    def restore(self, state: Mapping[str, JSON]) -> None:
        """Replace the whole state with a ``snapshot()``; EventError if it is not one."""
        self._ledger.restore(state)
