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
import ipaddress
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from hqnlsd.licensing.events import (
    JSON,
    CrashoutChanged,
    Event,
    EventError,
    Granted,
    GroupAccessSet,
    HoldersRefreshed,
    HostExcluded,
    HostUnexcluded,
    LockedNodeAdded,
    LockedNodeRemoved,
    NamedUserAdded,
    NamedUserRemoved,
    PolicyChanged,
    PolicyLocked,
    PoolsResized,
    ProductsLoaded,
    Reason,
    Released,
    Revoked,
    TimeoutChanged,
    TombstonesPurged,
    Updated,
    UserAccessSet,
    product_from_dict,
    product_to_dict,
)
from hqnlsd.licensing.pools import Holder, ProductKey, ProductState, Tombstone
from hqnlsd.licensing.results import (
    QUERY_KINDS,
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
from hqnlsd.licensing.settings import (
    FULL_ACCESS,
    MINIMUM_ADMIN_SECONDS,
    ProductSettings,
)
from hqnlsd.permits.model import ProductPermit
from hqnlsd.permits.policy import KNOWN_FLAGS, Policy, describe
from hqnlsd.status import Status

# Plain ints: `IntFlag & int` builds enum members, too slow for the hot path.
GRAB = int(Policy.GRAB)
ONPN = int(Policy.ONPN)
TIML = int(Policy.TIML)
LKNL = int(Policy.LKNL)
LKNF = int(Policy.LKNF)
LKPR = int(Policy.LKPR)
UVIS = int(Policy.UVIS)
USRL = int(Policy.USRL)
ACCL = int(Policy.ACCL)

#: How long a taken-back handle is remembered (LOSTLICENCE rather than BADHANDLE).
TOMBSTONE_SECONDS = 24 * 60 * 60.0
#: Version of the ``snapshot()`` format.
SNAPSHOT_FORMAT = 1
#: Most licences one request may ask for.
MAX_UNITS = 65535
#: Longest text field (user, host, group, client token...) the engine accepts.
MAX_TEXT = 256
_HANDLE_ATTEMPTS = 16


class SecondsClock(Protocol):
    """What the engine needs of a clock (``IReactorTime`` and ``task.Clock`` fit)."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""
        ...


def local_date(seconds: float) -> datetime.date:
    """The local calendar date at ``seconds`` since the epoch."""
    return datetime.date.fromtimestamp(seconds)


def random_handle() -> str:
    """A fresh unguessable licence handle (16 hex digits)."""
    return secrets.token_hex(8)


class Engine:
    """Licence pools and policies for the products served here (see module docstring)."""

    def __init__(
        self,
        clock: SecondsClock,
        new_handle: Callable[[], str] = random_handle,
        *,
        tombstone_seconds: float = TOMBSTONE_SECONDS,
        today: Callable[[float], datetime.date] = local_date,
    ) -> None:
        self._clock = clock
        self._new_handle = new_handle
        self._today = today
        self.tombstone_seconds = tombstone_seconds
        self._products: dict[ProductKey, ProductState] = {}
        self._handles: dict[str, ProductState] = {}
        self._tokens: dict[tuple[ProductKey, str], str] = {}
        self._tombstones: dict[str, Tombstone] = {}
        #: Events applied since construction or the last ``restore`` (the journal
        #: uses it to check that a snapshot matches what it has written).
        self.applied = 0
        #: The latest time of any event applied: engine time never runs backwards,
        #: even if the wall clock is stepped back.
        self._latest = 0.0
        self._appliers: dict[type[Event], Callable[[Event], None]] = {
            Granted: self._apply_granted,  # type: ignore[dict-item]
            Updated: self._apply_updated,  # type: ignore[dict-item]
            Released: self._apply_released,  # type: ignore[dict-item]
            Revoked: self._apply_revoked,  # type: ignore[dict-item]
            TombstonesPurged: self._apply_purged,  # type: ignore[dict-item]
            HoldersRefreshed: self._apply_refreshed,  # type: ignore[dict-item]
            ProductsLoaded: self._apply_loaded,  # type: ignore[dict-item]
            PolicyChanged: self._apply_policy,  # type: ignore[dict-item]
            PolicyLocked: self._apply_policy_locked,  # type: ignore[dict-item]
            CrashoutChanged: self._apply_crashout,  # type: ignore[dict-item]
            TimeoutChanged: self._apply_timeout,  # type: ignore[dict-item]
            LockedNodeAdded: self._apply_node_added,  # type: ignore[dict-item]
            LockedNodeRemoved: self._apply_node_removed,  # type: ignore[dict-item]
            PoolsResized: self._apply_resized,  # type: ignore[dict-item]
            HostExcluded: self._apply_excluded,  # type: ignore[dict-item]
            HostUnexcluded: self._apply_unexcluded,  # type: ignore[dict-item]
            NamedUserAdded: self._apply_named_added,  # type: ignore[dict-item]
            NamedUserRemoved: self._apply_named_removed,  # type: ignore[dict-item]
            UserAccessSet: self._apply_user_access,  # type: ignore[dict-item]
            GroupAccessSet: self._apply_group_access,  # type: ignore[dict-item]
        }

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
        now = self._now()
        chosen: dict[ProductKey, ProductPermit] = {}
        for permit in products:
            chosen.setdefault(permit.key, permit)
        batch: list[Event] = []
        revoked = 0
        for key, state in self._products.items():
            replacement = chosen.get(key)
            if replacement is None:
                revoked += self._revoke_all(state, Reason.PRODUCT_REMOVED, now, batch)
            elif not _keeps_holders(state, replacement):
                revoked += self._revoke_all(state, Reason.PERMIT_CHANGED, now, batch)
        loaded = ProductsLoaded(tuple(chosen.values()))
        # Re-reading a permit ends the administrator's locks (policy MNEM!): record it.
        admin_locked = any(state.settings.locks for state in self._products.values())
        if batch or admin_locked or self._served_permits() != loaded.products:
            self._emit(loaded, batch)
        message = f"{len(chosen)} product(s) served"
        if revoked:
            message += f"; {revoked} licence(s) revoked"
        return Outcome(AdminDone(message, revoked), tuple(batch))

    def reinit(self, products: Iterable[ProductPermit] | None = None) -> Outcome[AdminDone]:
        """Revoke every licence (``hqn_lsa reinit``), then serve ``products`` if given."""
        now = self._now()
        batch: list[Event] = []
        revoked = 0
        for state in self._products.values():
            revoked += self._revoke_all(state, Reason.REINIT, now, batch)
        if products is not None:
            chosen: dict[ProductKey, ProductPermit] = {}
            for permit in products:
                chosen.setdefault(permit.key, permit)
            self._emit(ProductsLoaded(tuple(chosen.values())), batch)
        return Outcome(
            AdminDone(f"reinitialised; {revoked} licence(s) revoked", revoked), tuple(batch)
        )

    def product(self, publisher: str, product: str) -> ProductPermit | None:
        """The permit served for (publisher, product), or None."""
        state = self._products.get((publisher, product))
        return None if state is None else state.permit

    def served(self) -> tuple[ProductPermit, ...]:
        """Every product permit served, in load order."""
        return self._served_permits()

    # ======================================================================
    # Client commands
    # ======================================================================

    def request(self, request: LicenceRequest) -> Outcome[Grant | Denied]:
        """REQUEST: grant a licence, or say exactly why not (see module docstring)."""
        now = self._now()
        batch: list[Event] = []
        result = self._request(request, now, batch)
        return Outcome(result, tuple(batch))

    def update(self, handle: str) -> Outcome[UpdateAck | Denied]:
        """UPDATE: the holder is alive; LOSTLICENCE if its licence was taken back."""
        now = self._now()
        found = self._holder(handle)
        if isinstance(found, Denied):
            return Outcome(found)
        state, holder = found
        if self._today(now) > state.permit.expiry:
            return Outcome(
                Denied(
                    Status.PERMITEXPIRED,
                    f"the permit for {_name(state)} expired on {state.permit.expiry}; "
                    "release the licence",
                )
            )
        batch: list[Event] = []
        self._emit(Updated(holder.handle, now), batch)
        return Outcome(UpdateAck(holder.handle, state.period), tuple(batch))

    def release(self, handle: str) -> Outcome[ReleaseAck | Denied]:
        """RELEASE: give the licence back."""
        now = self._now()
        found = self._holder(handle)
        if isinstance(found, Denied):
            return Outcome(found)
        batch: list[Event] = []
        self._emit(Released(handle, now), batch)
        return Outcome(ReleaseAck(handle), tuple(batch))

    def query(self, handle: str, what: str) -> QueryAnswer | Denied:
        """QUERY: facts about a held licence (``what`` is one of QUERY_KINDS)."""
        found = self._holder(handle)
        if isinstance(found, Denied):
            return found
        state, holder = found
        permit = state.permit
        kind = what.lower()
        if kind == "data":
            return QueryAnswer(kind, {"data": permit.data})
        if kind == "period":
            return QueryAnswer(kind, {"period": state.period})
        if kind == "context":
            return QueryAnswer(
                kind,
                {
                    "access": holder.access,
                    "locked": holder.locked,
                    "locked_node": holder.on_locked_node,
                },
            )
        if kind == "policy":
            word = state.policy_word
            return QueryAnswer(kind, {"policy": word, "flags": describe(word)})
        if kind == "dates":
            return QueryAnswer(kind, {"start": permit.start, "expiry": permit.expiry})
        return Denied(
            Status.ILLEGAL, f"QUERY what={what!r}: ask for one of {', '.join(QUERY_KINDS)}"
        )

    def users(self, publisher: str, product: str, version: str) -> list[HolderInfo] | Denied:
        """USERS for applications: the holders (without handles) if UVIS allows it."""
        state = self._products.get((publisher, product))
        if state is None:
            return Denied(Status.BADPRODUCT, f"{publisher} {product} is not served here")
        if version != state.permit.version:
            return _wrong_version(state, version)
        if not state.flags & UVIS:
            return Denied(
                Status.USERS_OFF,
                f"policy UVIS is off for {_name(state)}: applications may not list its users",
            )
        return [_info(holder, with_handle=False) for holder in state.holders.values()]

    # ======================================================================
    # Listings for administrators
    # ======================================================================

    def holders(self, publisher: str, product: str) -> list[HolderInfo] | Denied:
        """Every holder of a product, oldest grant first, with handles."""
        state = self._products.get((publisher, product))
        if state is None:
            return Denied(Status.BADPRODUCT, f"{publisher} {product} is not served here")
        return [_info(holder, with_handle=True) for holder in state.holders.values()]

    def status(self) -> list[ProductStatus]:
        """Every served product with its settings, totals and use."""
        out = []
        for state in self._products.values():
            settings = state.settings
            out.append(
                ProductStatus(
                    publisher=state.permit.publisher,
                    product=state.permit.product,
                    version=state.permit.version,
                    policy=state.policy_word,
                    node_count=state.node_count,
                    floating_count=state.floating_count,
                    locked_used=state.locked_used,
                    floating_used=state.floating_used,
                    start=state.permit.start,
                    expiry=state.permit.expiry,
                    period=state.period,
                    crashout=state.crashout,
                    timeout=state.timeout,
                    locked_nodes=state.locked_nodes,
                    excluded=tuple(sorted(settings.excluded)),
                    named_users=tuple(sorted(settings.named_users)),
                    user_access=tuple(sorted(settings.user_access.items())),
                    group_access=tuple(sorted(settings.group_access.items())),
                    admin_locks=settings.locks,
                )
            )
        return out

    def product_of(self, handle: str) -> tuple[str, str, str] | None:
        """(publisher, product, version) of a held licence, or None."""
        state = self._handles.get(handle)
        if state is None:
            return None
        return (state.permit.publisher, state.permit.product, state.permit.version)

    def held_count(self) -> int:
        """Licence handles held, over all products."""
        return len(self._handles)

    def tombstone_count(self) -> int:
        """Handles remembered as taken back."""
        return len(self._tombstones)

    # ======================================================================
    # Periodic work
    # ======================================================================

    def expire(self) -> Outcome[int]:
        """Forget tombstones older than ``tombstone_seconds``; result: how many."""
        before = self._now() - self.tombstone_seconds
        stale = sum(1 for tomb in self._tombstones.values() if tomb.at < before)
        if not stale:
            return Outcome(0)
        batch: list[Event] = []
        self._emit(TombstonesPurged(before), batch)
        return Outcome(stale, tuple(batch))

    def resume(self) -> Outcome[int]:
        """Count every holder as updated now; call once after a restart or take-over.

        Holders could not UPDATE while no server was serving them; without this
        the first request would crash all of them out (GRAB).
        """
        if not self._handles:
            return Outcome(0)
        batch: list[Event] = []
        self._emit(HoldersRefreshed(self._now()), batch)
        return Outcome(len(self._handles), tuple(batch))

    # ======================================================================
    # Administration (hqn_lsa)
    # ======================================================================

    def set_policy(
        self, publisher: str, product: str, flags: int, lock: int = 0
    ) -> Outcome[AdminDone | Denied]:
        """Set the policy flags (low 16 bits), then lock the flags of ``lock`` until the
        permit is re-read (``policy p MNEM!``); refuse to change a flag locked by the
        publisher or, earlier, by the administrator."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if flags < 0 or flags & ~KNOWN_FLAGS:
            return _illegal(f"policy 0x{flags:x} has bits this server does not know")
        if lock < 0 or lock & ~KNOWN_FLAGS:
            return _illegal(f"policy lock 0x{lock:x} has bits this server does not know")
        changed_locked = (flags ^ state.flags) & state.locks
        if changed_locked:
            names = describe(changed_locked).split(" locked:")[0]
            return _illegal(f"policy flag(s) {names} of {_name(state)} are locked by the publisher")
        changed_locked = (flags ^ state.flags) & state.settings.locks
        if changed_locked:
            names = describe(changed_locked)
            return _illegal(
                f"policy flag(s) {names} of {_name(state)} are locked by the administrator "
                "until the permit is re-read"
            )
        message = f"policy {describe(flags)}"
        new_locks = state.settings.locks | lock
        if new_locks == state.settings.locks:
            return self._admin(PolicyChanged(publisher, product, flags), message)
        batch: list[Event] = []
        self._emit(PolicyChanged(publisher, product, flags), batch)
        self._emit(PolicyLocked(publisher, product, new_locks), batch)
        message += f"; locked until the permit is re-read: {describe(new_locks)}"
        return Outcome(AdminDone(message, 0), tuple(batch))

    def set_crashout(
        self, publisher: str, product: str, seconds: float | None
    ) -> Outcome[AdminDone | Denied]:
        """Set the GRAB crashout time in seconds (None: back to 3 update periods)."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if seconds is not None and not MINIMUM_ADMIN_SECONDS <= seconds < math.inf:
            return _illegal(f"crashout must be at least {MINIMUM_ADMIN_SECONDS:g} s, and finite")
        return self._admin(
            CrashoutChanged(publisher, product, None if seconds is None else float(seconds)),
            "crashout set",
        )

    def set_timeout(
        self, publisher: str, product: str, seconds: float | None
    ) -> Outcome[AdminDone | Denied]:
        """Set the TIML / LKNL timeout in seconds (None: back to 60 minutes)."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if seconds is not None and not MINIMUM_ADMIN_SECONDS <= seconds < math.inf:
            return _illegal(f"timeout must be at least {MINIMUM_ADMIN_SECONDS:g} s, and finite")
        return self._admin(
            TimeoutChanged(publisher, product, None if seconds is None else float(seconds)),
            "timeout set",
        )

    def kill(self, handle: str) -> Outcome[AdminDone | Denied]:
        """Take a licence back; its holder gets LOSTLICENCE at its next UPDATE."""
        found = self._holder(handle)
        if isinstance(found, Denied):
            return Outcome(found)
        batch: list[Event] = []
        self._emit(Revoked(handle, str(Reason.KILLED), self._now()), batch)
        return Outcome(AdminDone(f"licence {handle} killed", 1), tuple(batch))

    def kill_index(self, publisher: str, product: str, index: int) -> Outcome[AdminDone | Denied]:
        """Take back whichever licence holds licence number ``index`` of a product."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        for holder in state.holders.values():
            if index in holder.indices:
                return self.kill(holder.handle)
        return _illegal(f"licence {index} of {_name(state)} is not held")

    def add_node(
        self, publisher: str, product: str, address: str, unique_id: int = 0
    ) -> Outcome[AdminDone | Denied]:
        """List a host (once more) as a locked node of the product."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        node = _node(address, unique_id)
        if isinstance(node, Denied):
            return Outcome(node)
        return self._admin(
            LockedNodeAdded(publisher, product, *node), f"locked node {node[0]} added"
        )

    def remove_node(
        self, publisher: str, product: str, address: str, unique_id: int | None = 0
    ) -> Outcome[AdminDone | Denied]:
        """Remove one listing of a locked node that ``addnode`` added (never one of the
        permit's own); ``unique_id`` None: the host's last added listing, whatever its
        id. Revokes the product's licences."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        node = _node(address, 0 if unique_id is None else unique_id)
        if isinstance(node, Denied):
            return Outcome(node)
        added = list(state.locked_nodes)
        for own in [(str(host.address), host.unique_id) for host in state.permit.locked_nodes]:
            if own in added:
                added.remove(own)
        if unique_id is None:
            ids = [listing for listing in added if listing[0] == node[0]]
            node = ids[-1] if ids else node
        if node not in added:
            listed = "listed by the permit" if node in state.locked_nodes else "not listed"
            return _illegal(
                f"{node[0]} 0x{node[1]:08x} is {listed} as a locked node of {_name(state)}: "
                "only hosts added with addnode can be removed"
            )
        return self._admin(
            LockedNodeRemoved(publisher, product, *node),
            f"locked node {node[0]} removed",
            revoke=(state, Reason.NODES_CHANGED),
        )

    def float_to_locked(
        self, publisher: str, product: str, count: int = 1
    ) -> Outcome[AdminDone | Denied]:
        """Make ``count`` floating licences node-locked (``ftol``); revokes the product's."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if not 1 <= count <= state.floating_count:
            return _illegal(
                f"{_name(state)} has {state.floating_count} floating licence(s); "
                f"cannot make {count} node-locked"
            )
        return self._admin(
            PoolsResized(
                publisher, product, state.node_count + count, state.floating_count - count
            ),
            f"{count} floating licence(s) made node-locked",
            revoke=(state, Reason.POOLS_CHANGED),
        )

    def locked_to_float(
        self, publisher: str, product: str, count: int = 1
    ) -> Outcome[AdminDone | Denied]:
        """Make ``count`` node-locked licences floating (``ltof``); revokes the product's."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        converted = max(0, state.node_count - state.permit.node_count)
        if not 1 <= count <= converted:
            return _illegal(
                f"{_name(state)} has {converted} node-locked licence(s) made by ftol; "
                f"cannot make {count} floating (only licences converted by ftol can be)"
            )
        return self._admin(
            PoolsResized(
                publisher, product, state.node_count - count, state.floating_count + count
            ),
            f"{count} node-locked licence(s) made floating",
            revoke=(state, Reason.POOLS_CHANGED),
        )

    def exclude_host(self, publisher: str, product: str, host: str) -> Outcome[AdminDone | Denied]:
        """Refuse the product to a host (name, any case, or IPv4 address)."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        name = host.strip().lower()
        if not _good_text(name):
            return _illegal(f"bad host name {host!r}")
        return self._admin(HostExcluded(publisher, product, name), f"host {name} excluded")

    def unexclude_host(
        self, publisher: str, product: str, host: str
    ) -> Outcome[AdminDone | Denied]:
        """Let an excluded host take the product's licences again."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        name = host.strip().lower()
        if name not in state.settings.excluded:
            return _illegal(f"host {host} is not excluded from {_name(state)}")
        return self._admin(HostUnexcluded(publisher, product, name), f"host {name} readmitted")

    def add_named_user(
        self, publisher: str, product: str, user: str
    ) -> Outcome[AdminDone | Denied]:
        """Name a user for USRL (guaranteed licences)."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if not _good_text(user):
            return _illegal(f"bad user name {user!r}")
        return self._admin(NamedUserAdded(publisher, product, user), f"user {user} named")

    def remove_named_user(
        self, publisher: str, product: str, user: str
    ) -> Outcome[AdminDone | Denied]:
        """Stop naming a user for USRL."""
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if user not in state.settings.named_users:
            return _illegal(f"user {user} is not named for {_name(state)}")
        return self._admin(NamedUserRemoved(publisher, product, user), f"user {user} unnamed")

    def set_user_access(
        self, publisher: str, product: str, user: str, level: int
    ) -> Outcome[AdminDone | Denied]:
        """Give a user an ACCL access level 0..8 for the product."""
        return self._set_access(publisher, product, user, level, group=False)

    def remove_user_access(
        self, publisher: str, product: str, user: str
    ) -> Outcome[AdminDone | Denied]:
        """Remove a user's ACCL entry."""
        return self._set_access(publisher, product, user, None, group=False)

    def set_group_access(
        self, publisher: str, product: str, group: str, level: int
    ) -> Outcome[AdminDone | Denied]:
        """Give a group an ACCL access level 0..8 for the product."""
        return self._set_access(publisher, product, group, level, group=True)

    def remove_group_access(
        self, publisher: str, product: str, group: str
    ) -> Outcome[AdminDone | Denied]:
        """Remove a group's ACCL entry."""
        return self._set_access(publisher, product, group, None, group=True)

    # ======================================================================
    # Events
    # ======================================================================

    def apply(self, event: Event) -> None:
        """Apply one event (the only way the state changes); EventError if it does not fit.

        Events that name a handle no longer held (a repeated RELEASE...) change
        nothing, so replaying a journal is robust.
        """
        applier = self._appliers.get(type(event))
        if applier is None:
            raise EventError(f"not a licensing event: {event!r}")
        applier(event)
        self.applied += 1
        at = getattr(event, "at", None)
        if at is not None and at > self._latest:
            self._latest = at

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply events in order."""
        for event in events:
            self.apply(event)

    # ======================================================================
    # Snapshot / restore
    # ======================================================================

    def snapshot(self) -> dict[str, JSON]:
        """The whole state as JSON-safe data (``restore`` takes it back)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "latest": self._latest,
            "products": [
                {
                    "permit": product_to_dict(state.permit),
                    "settings": state.settings.to_dict(),
                    "holders": [_holder_to_dict(holder) for holder in state.holders.values()],
                }
                for state in self._products.values()
            ],
            "tombstones": [
                [handle, tomb.key[0], tomb.key[1], tomb.reason, tomb.at]
                for handle, tomb in self._tombstones.items()
            ],
        }

    def restore(self, state: Mapping[str, JSON]) -> None:
        """Replace the whole state with a ``snapshot()``; EventError if it is not one."""
        if state.get("format") != SNAPSHOT_FORMAT:
            raise EventError(f"unknown snapshot format {state.get('format')!r}")
        products: dict[ProductKey, ProductState] = {}
        handles: dict[str, ProductState] = {}
        tokens: dict[tuple[ProductKey, str], str] = {}
        tombstones: dict[str, Tombstone] = {}
        try:
            latest = float(state["latest"])
            for item in state["products"]:
                permit = product_from_dict(item["permit"])
                product = ProductState(permit, ProductSettings.from_dict(item["settings"]))
                if permit.key in products:
                    raise EventError(f"product {permit.key} twice in the snapshot")
                products[permit.key] = product
                for data in item["holders"]:
                    holder = _holder_from_dict(permit.key, data)
                    if holder.handle in handles:
                        raise EventError(f"handle {holder.handle} twice in the snapshot")
                    product.add(holder)
                    handles[holder.handle] = product
                    if holder.client is not None:
                        tokens[(permit.key, holder.client)] = holder.handle
                product.resort_updates()
            for handle, publisher, name, reason, at in state["tombstones"]:
                tombstones[str(handle)] = Tombstone((str(publisher), str(name)), str(reason), at)
        except (KeyError, TypeError, ValueError) as error:
            raise EventError(f"bad snapshot: {error!r}") from None
        self._products = products
        self._handles = handles
        self._tokens = tokens
        self._tombstones = tombstones
        self._latest = latest
        self.applied = 0

    # ======================================================================
    # Request decision
    # ======================================================================

    def _request(self, request: LicenceRequest, now: float, batch: list[Event]) -> Grant | Denied:
        problem = _invalid(request)
        if problem is not None:
            return Denied(Status.ILLEGAL, problem)
        address = str(ipaddress.IPv4Address(request.address))
        state = self._products.get((request.publisher, request.product))
        if state is None:
            return Denied(
                Status.BADPRODUCT, f"{request.publisher} {request.product} is not served here"
            )
        permit = state.permit
        if request.version != permit.version:
            return _wrong_version(state, request.version)
        if request.client is not None:
            handle = self._tokens.get((state.key, request.client))
            if handle is not None:
                holder = state.holders[handle]
                if not _same_owner(holder, request, address):
                    return Denied(
                        Status.TOKEN_HELD,
                        f"client token {request.client} is held by another client "
                        "(another user, host, address or process); every client process "
                        "needs a token of its own",
                    )
                self._emit(Updated(handle, now), batch)
                return _grant(state, holder, duplicate=True)
        today = self._today(now)
        if today < permit.start:
            return Denied(
                Status.PERMITOUTOFDATE, f"the permit for {_name(state)} starts on {permit.start}"
            )
        if today > permit.expiry:
            return Denied(
                Status.PERMITEXPIRED, f"the permit for {_name(state)} expired on {permit.expiry}"
            )
        flags = state.flags
        settings = state.settings
        if settings.excluded and settings.is_excluded(request.host, address):
            return Denied(
                Status.EXCLUDED, f"host {request.host} ({address}) is excluded from {_name(state)}"
            )
        access = FULL_ACCESS
        if flags & ACCL:
            access = settings.access_level(request.user, request.group)
            if access <= 0:
                return Denied(
                    Status.NOACCESS, f"user {request.user} has access level 0 for {_name(state)}"
                )
        if flags & GRAB:
            self._crash_out(state, now, batch)
        return self._allocate(state, request, address, access, flags, now, batch)

    def _allocate(
        self,
        state: ProductState,
        request: LicenceRequest,
        address: str,
        access: int,
        flags: int,
        now: float,
        batch: list[Event],
    ) -> Grant | Denied:
        units = request.units
        listings = state.listings_for(address, request.hostid)
        on_locked_node = listings > 0
        onpn = bool(flags & ONPN)
        no_float = on_locked_node and bool(flags & LKNF)
        # Pools this requester could ever use for this many units (True: locked).
        possible: list[bool] = []
        if on_locked_node and units <= state.node_count and (not onpn or units <= listings):
            possible.append(True)
        if not no_float and units <= state.floating_count and (not onpn or units <= 1):
            possible.append(False)
        if not possible:
            return self._never(state, request, address, listings, flags)
        usable = [
            locked
            for locked in possible
            if not onpn or self._onpn_room(state, address, locked, listings) >= units
        ]
        if not usable:
            return Denied(
                Status.TOOMANYLICENCES,
                f"policy ONPN: host {request.host} ({address}) already holds all the "
                f"licences of {_name(state)} it may hold",
            )
        for locked in usable:
            indices = (state.locked if locked else state.floating).lowest(units)
            if indices is not None:
                return self._give(
                    state, request, address, access, locked, listings, indices, now, batch
                )
        plan = self._plan_reclaim(state, request, on_locked_node, usable, units, flags, now)
        if plan is not None:
            handle = self._fresh_handle()
            if handle is None:
                return Denied(Status.INTERNAL, "could not make a unique licence handle")
            locked, victims, reason = plan
            for victim in victims:
                self._emit(Revoked(victim.handle, str(reason), now), batch)
            indices = (state.locked if locked else state.floating).lowest(units)
            if indices is not None:  # always: the victims freed enough
                return self._give(
                    state,
                    request,
                    address,
                    access,
                    locked,
                    listings,
                    indices,
                    now,
                    batch,
                    handle=handle,
                )
        if no_float and state.floating_count > 0:
            return Denied(
                Status.LOCKSNOFLOAT,
                f"all {state.node_count} node-locked licences of {_name(state)} are in use "
                "and policy LKNF keeps locked nodes off the floating licences",
            )
        if on_locked_node and not no_float:
            what = f"all {state.total} licences"
        elif on_locked_node:
            what = f"all {state.node_count} node-locked licences"
        else:
            what = f"all {state.floating_count} floating licences"
        return Denied(Status.NOLICENCES, f"{what} of {_name(state)} are in use; try again later")

    def _never(
        self,
        state: ProductState,
        request: LicenceRequest,
        address: str,
        listings: int,
        flags: int,
    ) -> Denied:
        """Why no pool can ever give this requester ``units`` licences."""
        onpn = bool(flags & ONPN)
        no_float = listings > 0 and bool(flags & LKNF)
        most = 0
        if listings:
            most = min(state.node_count, listings) if onpn else state.node_count
        if not no_float and state.floating_count:
            most = max(most, 1 if onpn else state.floating_count)
        if most:
            return Denied(
                Status.TOOMANYLICENCES,
                f"{request.units} licences asked for; host {request.host} can hold at most "
                f"{most} licence(s) of {_name(state)} at once",
            )
        if no_float:
            return Denied(
                Status.LOCKSNOFLOAT,
                f"{_name(state)} has no node-locked licences and policy LKNF keeps locked "
                "nodes off the floating licences",
            )
        return Denied(
            Status.NOLICENCES,
            f"{_name(state)} has only node-locked licences and host {request.host} "
            f"({address}) is not one of its locked nodes",
        )

    @staticmethod
    def _onpn_room(state: ProductState, address: str, locked: bool, listings: int) -> int:
        """ONPN: how many more licences of this pool the host may hold."""
        if locked:
            return listings - state.locked_by_address.get(address, 0)
        return 1 - state.floating_by_address.get(address, 0)

    def _plan_reclaim(
        self,
        state: ProductState,
        request: LicenceRequest,
        on_locked_node: bool,
        usable: list[bool],
        units: int,
        flags: int,
        now: float,
    ) -> tuple[bool, list[Holder], str] | None:
        """Which licences to take back for this requester, if a policy allows it.

        Tried in this order: TIML / LKNL (held longer than the timeout; LKNL
        exempts holders on locked nodes), LKPR (a locked node takes the oldest
        floating licence held off the locked nodes), USRL (a named user takes
        the oldest licence held by a user who is not named). Each takes the
        oldest eligible holders of one pool until enough licences are free.
        """
        if flags & (TIML | LKNL):
            limit = now - state.timeout
            exempt_locked_nodes = bool(flags & LKNL)

            def overdue(holder: Holder) -> bool:
                return holder.granted_at < limit and not (
                    exempt_locked_nodes and holder.on_locked_node
                )

            for locked in usable:
                victims = _oldest(state, locked, units, overdue)
                if victims is not None:
                    return locked, victims, Reason.TIMEOUT
        if flags & LKPR and on_locked_node and False in usable:
            victims = _oldest(state, False, units, lambda holder: not holder.on_locked_node)
            if victims is not None:
                return False, victims, Reason.LOCKED_PRIORITY
        named = state.settings.named_users
        if flags & USRL and request.user in named:
            for locked in usable:
                victims = _oldest(state, locked, units, lambda holder: holder.user not in named)
                if victims is not None:
                    return locked, victims, Reason.NAMED_USER
        return None

    def _give(
        self,
        state: ProductState,
        request: LicenceRequest,
        address: str,
        access: int,
        locked: bool,
        listings: int,
        indices: tuple[int, ...],
        now: float,
        batch: list[Event],
        *,
        handle: str | None = None,
    ) -> Grant | Denied:
        if handle is None:
            handle = self._fresh_handle()
            if handle is None:
                return Denied(Status.INTERNAL, "could not make a unique licence handle")
        self._emit(
            Granted(
                publisher=state.key[0],
                product=state.key[1],
                handle=handle,
                indices=indices,
                locked=locked,
                on_locked_node=listings > 0,
                user=request.user,
                host=request.host,
                address=address,
                pid=request.pid,
                uid=request.uid,
                group=request.group,
                hostid=request.hostid,
                client=request.client,
                access=access,
                at=now,
            ),
            batch,
        )
        return _grant(state, state.holders[handle], duplicate=False)

    def _crash_out(self, state: ProductState, now: float, batch: list[Event]) -> None:
        """GRAB: take back every licence not updated within the crashout time."""
        limit = now - state.crashout
        stale = []
        for holder in state.least_recently_updated():
            if holder.last_update >= limit:
                break
            stale.append(holder)
        # Canonical order: equal update times may be in a different order in a
        # replica restored from a snapshot; the tombstones must not differ.
        stale.sort(key=lambda holder: (holder.last_update, holder.granted_at, holder.handle))
        for holder in stale:
            self._emit(Revoked(holder.handle, str(Reason.CRASHOUT), now), batch)

    def _fresh_handle(self) -> str | None:
        for _ in range(_HANDLE_ATTEMPTS):
            handle = self._new_handle()
            if handle not in self._handles and handle not in self._tombstones:
                return handle
        return None

    # ======================================================================
    # Helpers
    # ======================================================================

    def _now(self) -> float:
        return max(self._clock.seconds(), self._latest)

    def _emit(self, event: Event, batch: list[Event]) -> None:
        self.apply(event)
        batch.append(event)

    def _served_permits(self) -> tuple[ProductPermit, ...]:
        return tuple(state.permit for state in self._products.values())

    def _holder(self, handle: str) -> tuple[ProductState, Holder] | Denied:
        state = self._handles.get(handle)
        if state is not None:
            return state, state.holders[handle]
        tomb = self._tombstones.get(handle)
        if tomb is not None:
            return Denied(
                Status.LOSTLICENCE,
                f"the licence {handle} of {tomb.key[0]} {tomb.key[1]} was taken back "
                f"({tomb.reason}); request a new one",
            )
        return Denied(Status.BADHANDLE, f"no licence has the handle {handle!r}")

    def _revoke_all(self, state: ProductState, reason: str, now: float, batch: list[Event]) -> int:
        handles = list(state.holders)
        for handle in handles:
            self._emit(Revoked(handle, str(reason), now), batch)
        return len(handles)

    def _admin_product(self, publisher: str, product: str) -> ProductState | Denied:
        state = self._products.get((publisher, product))
        if state is None:
            return Denied(Status.BADPRODUCT, f"{publisher} {product} is not served here")
        return state

    def _admin(
        self,
        event: Event,
        message: str,
        *,
        revoke: tuple[ProductState, str] | None = None,
    ) -> Outcome[AdminDone | Denied]:
        batch: list[Event] = []
        revoked = 0
        if revoke is not None:
            revoked = self._revoke_all(revoke[0], revoke[1], self._now(), batch)
            message += f"; {revoked} licence(s) revoked"
        self._emit(event, batch)
        return Outcome(AdminDone(message, revoked), tuple(batch))

    def _set_access(
        self, publisher: str, product: str, name: str, level: int | None, *, group: bool
    ) -> Outcome[AdminDone | Denied]:
        state = self._admin_product(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        what = "group" if group else "user"
        table = state.settings.group_access if group else state.settings.user_access
        if level is None:
            if name not in table:
                return _illegal(f"{what} {name} has no access level for {_name(state)}")
        elif not 0 <= level <= FULL_ACCESS:
            return _illegal(f"access level {level} is not in 0..{FULL_ACCESS}")
        if not _good_text(name):
            return _illegal(f"bad {what} name {name!r}")
        event: Event
        if group:
            event = GroupAccessSet(publisher, product, name, level)
        else:
            event = UserAccessSet(publisher, product, name, level)
        text = "removed" if level is None else f"set to {level}"
        return self._admin(event, f"access level of {what} {name} {text}")

    # -- appliers -----------------------------------------------------------------

    def _state(self, publisher: str, product: str) -> ProductState:
        state = self._products.get((publisher, product))
        if state is None:
            raise EventError(f"{publisher} {product} is not served")
        return state

    def _apply_granted(self, event: Granted) -> None:
        state = self._state(event.publisher, event.product)
        if event.handle in self._handles:
            raise EventError(f"handle {event.handle} is already held")
        token = None if event.client is None else (state.key, event.client)
        if token is not None and token in self._tokens:
            raise EventError(f"client token {event.client!r} already holds a licence")
        max_index = state.node_count if event.locked else state.total
        if not all(0 < index <= max_index for index in event.indices) or not event.indices:
            raise EventError(f"licence indices {event.indices} are not in the pool")
        state.add(Holder.from_event(state.key, event))
        self._handles[event.handle] = state
        self._tombstones.pop(event.handle, None)
        if token is not None:
            self._tokens[token] = event.handle

    def _apply_updated(self, event: Updated) -> None:
        state = self._handles.get(event.handle)
        if state is not None:
            state.touch(state.holders[event.handle], event.at)

    def _drop(self, handle: str) -> ProductState | None:
        state = self._handles.pop(handle, None)
        if state is None:
            return None
        holder = state.holders[handle]
        state.remove(holder)
        if holder.client is not None:
            self._tokens.pop((state.key, holder.client), None)
        return state

    def _apply_released(self, event: Released) -> None:
        self._drop(event.handle)

    def _apply_revoked(self, event: Revoked) -> None:
        state = self._drop(event.handle)
        if state is not None:
            self._tombstones[event.handle] = Tombstone(state.key, str(event.reason), event.at)

    def _apply_purged(self, event: TombstonesPurged) -> None:
        self._tombstones = {
            handle: tomb for handle, tomb in self._tombstones.items() if tomb.at >= event.before
        }

    def _apply_refreshed(self, event: HoldersRefreshed) -> None:
        for state in self._products.values():
            for holder in state.holders.values():
                holder.last_update = max(holder.last_update, event.at)
            state.resort_updates()

    def _apply_loaded(self, event: ProductsLoaded) -> None:
        wanted = {permit.key: permit for permit in event.products}
        if len(wanted) != len(event.products):
            raise EventError("a product is loaded twice")
        for key, current in self._products.items():
            if key not in wanted and current.holders:
                raise EventError(f"{_name(current)} still has holders; revoke them first")
        products: dict[ProductKey, ProductState] = {}
        for key, permit in wanted.items():
            state = self._products.get(key)
            if state is not None:
                state.settings.locks = 0  # the permit is re-read: admin locks end
            if state is None:
                state = ProductState(permit, ProductSettings())
            elif state.permit != permit:
                if state.holders and not _keeps_holders(state, permit):
                    raise EventError(f"{_name(state)} still has holders; revoke them first")
                old = state.permit
                if (old.node_count, old.floating_count) != (
                    permit.node_count,
                    permit.floating_count,
                ):
                    state.settings.counts = None
                if old.locked_nodes != permit.locked_nodes:
                    state.settings.locked_nodes = None
                state.permit = permit
                state.rebuild_pools()
                state.rebuild_listings()
            products[key] = state
        self._products = products

    def _apply_policy(self, event: PolicyChanged) -> None:
        self._state(event.publisher, event.product).settings.flags = event.flags & KNOWN_FLAGS

    def _apply_policy_locked(self, event: PolicyLocked) -> None:
        self._state(event.publisher, event.product).settings.locks = event.locks & KNOWN_FLAGS

    def _apply_crashout(self, event: CrashoutChanged) -> None:
        self._state(event.publisher, event.product).settings.crashout = event.seconds

    def _apply_timeout(self, event: TimeoutChanged) -> None:
        self._state(event.publisher, event.product).settings.timeout = event.seconds

    def _apply_node_added(self, event: LockedNodeAdded) -> None:
        state = self._state(event.publisher, event.product)
        state.settings.locked_nodes = (*state.locked_nodes, (event.address, event.unique_id))
        state.rebuild_listings()

    def _apply_node_removed(self, event: LockedNodeRemoved) -> None:
        state = self._state(event.publisher, event.product)
        nodes = list(state.locked_nodes)
        node = (event.address, event.unique_id)
        if node in nodes:
            nodes.remove(node)
        state.settings.locked_nodes = tuple(nodes)
        state.rebuild_listings()

    def _apply_resized(self, event: PoolsResized) -> None:
        state = self._state(event.publisher, event.product)
        if state.holders:
            raise EventError(f"{_name(state)} still has holders; revoke them first")
        if event.node_count < 0 or event.floating_count < 0:
            raise EventError(f"bad pool sizes {event.node_count}+{event.floating_count}")
        state.settings.counts = (event.node_count, event.floating_count)
        state.rebuild_pools()

    def _apply_excluded(self, event: HostExcluded) -> None:
        self._state(event.publisher, event.product).settings.excluded.add(event.host)

    def _apply_unexcluded(self, event: HostUnexcluded) -> None:
        self._state(event.publisher, event.product).settings.excluded.discard(event.host)

    def _apply_named_added(self, event: NamedUserAdded) -> None:
        self._state(event.publisher, event.product).settings.named_users.add(event.user)

    def _apply_named_removed(self, event: NamedUserRemoved) -> None:
        self._state(event.publisher, event.product).settings.named_users.discard(event.user)

    def _apply_user_access(self, event: UserAccessSet) -> None:
        table = self._state(event.publisher, event.product).settings.user_access
        if event.level is None:
            table.pop(event.user, None)
        else:
            table[event.user] = event.level

    def _apply_group_access(self, event: GroupAccessSet) -> None:
        table = self._state(event.publisher, event.product).settings.group_access
        if event.level is None:
            table.pop(event.group, None)
        else:
            table[event.group] = event.level


# ==========================================================================
# Module helpers
# ==========================================================================


def _name(state: ProductState) -> str:
    permit = state.permit
    return f"{permit.publisher} {permit.product} {permit.version}"


def _illegal(message: str) -> Outcome[AdminDone | Denied]:
    return Outcome(Denied(Status.ILLEGAL, message))


def _wrong_version(state: ProductState, version: str) -> Denied:
    permit = state.permit
    return Denied(
        Status.BADPRODUCT,
        f"version {version} of {permit.publisher} {permit.product} is not served; "
        f"this server serves version {permit.version}",
    )


def _good_text(text: object) -> bool:
    return isinstance(text, str) and 0 < len(text) <= MAX_TEXT and text.isprintable()


def _invalid(request: LicenceRequest) -> str | None:
    """What is wrong with a request's values, or None."""
    for name in ("publisher", "product", "version", "user", "host"):
        if not _good_text(getattr(request, name)):
            return f"{name} must be 1 to {MAX_TEXT} printable characters"
    for name in ("group", "client"):
        value = getattr(request, name)
        if value is not None and not _good_text(value):
            return f"{name} must be 1 to {MAX_TEXT} printable characters"
    if type(request.units) is not int or not 1 <= request.units <= MAX_UNITS:
        return f"units must be a whole number from 1 to {MAX_UNITS}, not {request.units!r}"
    if type(request.pid) is not int or request.pid < 0:
        return f"pid must be a whole number >= 0, not {request.pid!r}"
    if request.uid is not None and (type(request.uid) is not int or request.uid < 0):
        return f"uid must be a whole number >= 0, not {request.uid!r}"
    if request.hostid is not None and (
        type(request.hostid) is not int or not 0 <= request.hostid <= 0xFFFFFFFF
    ):
        return f"hostid must be a 32-bit unique id, not {request.hostid!r}"
    try:
        ipaddress.IPv4Address(request.address)
    except ValueError:
        return f"peer address {request.address!r} is not an IPv4 address"
    return None


def _node(address: str, unique_id: int) -> tuple[str, int] | Denied:
    try:
        text = str(ipaddress.IPv4Address(address))
    except ValueError:
        return Denied(Status.ILLEGAL, f"{address!r} is not an IPv4 address")
    if type(unique_id) is not int or not 0 <= unique_id <= 0xFFFFFFFF:
        return Denied(Status.ILLEGAL, f"unique id {unique_id!r} is not a 32-bit value")
    return text, unique_id


def _keeps_holders(state: ProductState, permit: ProductPermit) -> bool:
    """Whether holders keep their licences when ``permit`` replaces the product's permit."""
    old = state.permit
    if old == permit:
        return True
    if old.version != permit.version:
        return False
    counts_kept = (old.node_count, old.floating_count) == (
        permit.node_count,
        permit.floating_count,
    )
    new_counts = (
        (state.node_count, state.floating_count)
        if counts_kept
        else (permit.node_count, permit.floating_count)
    )
    new_nodes = (
        state.locked_nodes
        if old.locked_nodes == permit.locked_nodes
        else tuple((str(node.address), node.unique_id) for node in permit.locked_nodes)
    )
    return new_counts == (state.node_count, state.floating_count) and (
        new_nodes == state.locked_nodes
    )


def _oldest(
    state: ProductState,
    locked: bool,
    units: int,
    eligible: Callable[[Holder], bool],
) -> list[Holder] | None:
    """The oldest eligible holders of one pool whose licences, with the free ones,
    make ``units``; None if there are not enough."""
    pool = state.locked if locked else state.floating
    needed = units - len(pool)
    victims: list[Holder] = []
    for holder in state.holders.values():
        if needed <= 0:
            break
        if holder.locked == locked and eligible(holder):
            victims.append(holder)
            needed -= holder.units
    return victims if needed <= 0 and victims else None


def _same_owner(holder: Holder, request: LicenceRequest, address: str) -> bool:
    """Whether ``request`` comes from the client that took ``holder`` with its token.

    Everything that names the holding process must match: user, host, pid, uid,
    group, hostid (as given, absent included) and the connection's IP address
    (never its port: a client that reconnects repeats its REQUEST from a new one).
    """
    return (
        holder.user == request.user
        and holder.host == request.host
        and holder.pid == request.pid
        and holder.uid == request.uid
        and holder.group == request.group
        and holder.hostid == request.hostid
        and holder.address == address
    )


def _grant(state: ProductState, holder: Holder, *, duplicate: bool) -> Grant:
    permit = state.permit
    return Grant(
        handle=holder.handle,
        publisher=permit.publisher,
        product=permit.product,
        version=permit.version,
        indices=holder.indices,
        period=state.period,
        type="locked" if holder.locked else "floating",
        access=holder.access,
        data=permit.data,
        start=permit.start,
        expiry=permit.expiry,
        duplicate=duplicate,
    )


def _info(holder: Holder, *, with_handle: bool) -> HolderInfo:
    return HolderInfo(
        handle=holder.handle if with_handle else None,
        indices=holder.indices,
        type="locked" if holder.locked else "floating",
        user=holder.user,
        host=holder.host,
        address=holder.address,
        pid=holder.pid,
        uid=holder.uid,
        group=holder.group,
        granted=holder.granted_at,
        last_update=holder.last_update,
    )


_HOLDER_FIELDS = (
    "handle",
    "indices",
    "locked",
    "on_locked_node",
    "user",
    "host",
    "address",
    "pid",
    "uid",
    "group",
    "hostid",
    "client",
    "access",
    "granted_at",
    "last_update",
)


def _holder_to_dict(holder: Holder) -> dict[str, JSON]:
    out: dict[str, JSON] = {name: getattr(holder, name) for name in _HOLDER_FIELDS}
    out["indices"] = list(holder.indices)
    return out


def _holder_from_dict(key: ProductKey, data: Mapping[str, JSON]) -> Holder:
    values = {name: data[name] for name in _HOLDER_FIELDS}
    values["indices"] = tuple(int(index) for index in values["indices"])
    return Holder(key=key, **values)
