"""Event appliers: how each licensing event changes the engine's state.

One free function per event type; ``apply_event`` dispatches. Applying never
consults a clock, a random source or a policy (the decision did), so a backup
replaying the same events ends in the same state. Events that name a handle no
longer held change nothing, so replaying a journal is robust. Applying a
`Released` or `Revoked` that ends a holding records it on the event, in memory
only (``dropped``), for whoever hears of the event next (the licence feed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hqnlsd.licensing.events import (
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
    Released,
    Revoked,
    TimeoutChanged,
    TombstonesPurged,
    Updated,
    UserAccessSet,
    set_dropped,
)
from hqnlsd.licensing.holdings import NO_SLOT, SLOT_MASK
from hqnlsd.licensing.pools import ProductState, Tombstone
from hqnlsd.licensing.settings import ProductSettings
from hqnlsd.licensing.state import EngineState
from hqnlsd.licensing.wording import product_name
from hqnlsd.permits.model import ProductPermit
from hqnlsd.permits.policy import KNOWN_FLAGS


def apply_event(state: EngineState, event: Event) -> None:
    """Apply one event to ``state``; EventError if it is not one or does not fit."""
    applier = _APPLIERS.get(type(event))
    if applier is None:
        raise EventError(f"not a licensing event: {event!r}")
    applier(state, event)


def _served(state: EngineState, publisher: str, product: str) -> ProductState:
    found = state.products.get((publisher, product))
    if found is None:
        raise EventError(f"{publisher} {product} is not served")
    return found


# -- licences -------------------------------------------------------------------------


def _granted(state: EngineState, event: Granted) -> None:
    product = _served(state, event.publisher, event.product)
    client = event.who.client
    if client is not None and client in product.tokens:
        raise EventError(f"client token {client!r} already holds a licence")
    max_index = product.node_count if event.locked else product.total
    if not all(0 < index <= max_index for index in event.indices) or not event.indices:
        raise EventError(f"licence indices {event.indices} are not in the pool")
    product.add(
        state.handles,
        handle=event.handle,
        indices=tuple(event.indices),
        locked=event.locked,
        on_locked_node=event.on_locked_node,
        who=event.who,
        access=event.access,
        granted_at=event.at,
        last_update=event.at,
    )
    state.tombstones.pop(event.handle, None)


def _updated(state: EngineState, event: Updated) -> None:
    handles = state.handles
    entry = handles.entry(event.handle)
    if entry != NO_SLOT:
        handles.product_at(entry).store.touch(entry & SLOT_MASK, event.at)


def _drop(state: EngineState, event: Released | Revoked) -> ProductState | None:
    """Drop the holder of the event's handle, recording on the event what it held
    (`Dropped`, in memory only) for whoever hears of the event after it is applied."""
    handles = state.handles
    handle = event.handle
    entry = handles.entry(handle)
    if entry == NO_SLOT:
        return None
    product = handles.product_at(entry)
    set_dropped(event, product.drop(entry & SLOT_MASK, handle))
    return product


def _revoked(state: EngineState, event: Revoked) -> None:
    product = _drop(state, event)
    if product is not None:
        state.tombstones[event.handle] = Tombstone(product.key, str(event.reason), event.at)


def _purged(state: EngineState, event: TombstonesPurged) -> None:
    state.tombstones = {
        handle: tomb for handle, tomb in state.tombstones.items() if tomb.at >= event.before
    }


def _refreshed(state: EngineState, event: HoldersRefreshed) -> None:
    for product in state.products.values():
        product.refresh(event.at)


# -- products -------------------------------------------------------------------------


def _loaded(state: EngineState, event: ProductsLoaded) -> None:
    wanted = {permit.key: permit for permit in event.products}
    if len(wanted) != len(event.products):
        raise EventError("a product is loaded twice")
    for key, current in state.products.items():
        if key not in wanted and current.holders:
            raise EventError(f"{product_name(current)} still has holders; revoke them first")
    state.products = {
        key: _reloaded(state.products.get(key), permit) for key, permit in wanted.items()
    }


def _reloaded(product: ProductState | None, permit: ProductPermit) -> ProductState:
    """The state of a product served (again) under ``permit``."""
    if product is None:
        return ProductState(permit, ProductSettings())
    product.settings.locks = 0  # the permit is re-read: admin locks end
    if product.permit == permit:
        return product
    if product.holders and not product.keeps_holders(permit):
        raise EventError(f"{product_name(product)} still has holders; revoke them first")
    old = product.permit
    if (old.node_count, old.floating_count) != (permit.node_count, permit.floating_count):
        product.settings.counts = None
    if old.locked_nodes != permit.locked_nodes:
        product.settings.locked_nodes = None
    product.permit = permit
    product.rebuild_pools()
    product.rebuild_listings()
    return product


# -- administrative settings ------------------------------------------------------------


def _policy(state: EngineState, event: PolicyChanged) -> None:
    _served(state, event.publisher, event.product).settings.flags = event.flags & KNOWN_FLAGS


def _policy_locked(state: EngineState, event: PolicyLocked) -> None:
    _served(state, event.publisher, event.product).settings.locks = event.locks & KNOWN_FLAGS


def _crashout(state: EngineState, event: CrashoutChanged) -> None:
    _served(state, event.publisher, event.product).settings.crashout = event.seconds


def _timeout(state: EngineState, event: TimeoutChanged) -> None:
    _served(state, event.publisher, event.product).settings.timeout = event.seconds


def _node_added(state: EngineState, event: LockedNodeAdded) -> None:
    product = _served(state, event.publisher, event.product)
    product.settings.locked_nodes = (*product.locked_nodes, (event.address, event.unique_id))
    product.rebuild_listings()


def _node_removed(state: EngineState, event: LockedNodeRemoved) -> None:
    product = _served(state, event.publisher, event.product)
    nodes = list(product.locked_nodes)
    node = (event.address, event.unique_id)
    if node in nodes:
        nodes.remove(node)
    product.settings.locked_nodes = tuple(nodes)
    product.rebuild_listings()


def _resized(state: EngineState, event: PoolsResized) -> None:
    product = _served(state, event.publisher, event.product)
    if product.holders:
        raise EventError(f"{product_name(product)} still has holders; revoke them first")
    if event.node_count < 0 or event.floating_count < 0:
        raise EventError(f"bad pool sizes {event.node_count}+{event.floating_count}")
    product.settings.counts = (event.node_count, event.floating_count)
    product.rebuild_pools()


def _excluded(state: EngineState, event: HostExcluded) -> None:
    _served(state, event.publisher, event.product).settings.excluded.add(event.host)


def _unexcluded(state: EngineState, event: HostUnexcluded) -> None:
    _served(state, event.publisher, event.product).settings.excluded.discard(event.host)


def _named_added(state: EngineState, event: NamedUserAdded) -> None:
    _served(state, event.publisher, event.product).settings.named_users.add(event.user)


def _named_removed(state: EngineState, event: NamedUserRemoved) -> None:
    _served(state, event.publisher, event.product).settings.named_users.discard(event.user)


def _set_level(table: dict[str, int], name: str, level: int | None) -> None:
    if level is None:
        table.pop(name, None)
    else:
        table[name] = level


def _user_access(state: EngineState, event: UserAccessSet) -> None:
    settings = _served(state, event.publisher, event.product).settings
    _set_level(settings.user_access, event.user, event.level)


def _group_access(state: EngineState, event: GroupAccessSet) -> None:
    settings = _served(state, event.publisher, event.product).settings
    _set_level(settings.group_access, event.group, event.level)


# Each applier takes its own event type; the dispatch below pairs them.
_APPLIERS: dict[type[Event], Callable[[EngineState, Any], object]] = {
    Granted: _granted,
    Updated: _updated,
    Released: _drop,  # nothing more to do (one call less per RELEASE)
    Revoked: _revoked,
    TombstonesPurged: _purged,
    HoldersRefreshed: _refreshed,
    ProductsLoaded: _loaded,
    PolicyChanged: _policy,
    PolicyLocked: _policy_locked,
    CrashoutChanged: _crashout,
    TimeoutChanged: _timeout,
    LockedNodeAdded: _node_added,
    LockedNodeRemoved: _node_removed,
    PoolsResized: _resized,
    HostExcluded: _excluded,
    HostUnexcluded: _unexcluded,
    NamedUserAdded: _named_added,
    NamedUserRemoved: _named_removed,
    UserAccessSet: _user_access,
    GroupAccessSet: _group_access,
}
