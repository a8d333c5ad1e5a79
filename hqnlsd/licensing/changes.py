"""The administrator's changes (``hqn_lsa``) and the products served.

Each change checks its values against the state, then emits the event that
records it (after the ``Revoked`` events of the licences it takes back, if it
changes pools or locked nodes). Refusals are ILLEGAL or BADPRODUCT, and change
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hqnlsd.licensing.checks import good_text, locked_node
from hqnlsd.licensing.events import (
    CrashoutChanged,
    Event,
    GroupAccessSet,
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
    Revoked,
    TimeoutChanged,
    UserAccessSet,
)
from hqnlsd.licensing.ledger import Ledger
from hqnlsd.licensing.pools import ProductKey, ProductState
from hqnlsd.licensing.results import AdminDone, Denied, Outcome
from hqnlsd.licensing.settings import FULL_ACCESS, MINIMUM_ADMIN_SECONDS, NodeListing
from hqnlsd.licensing.wording import illegal, product_name
from hqnlsd.permits.model import ProductPermit
from hqnlsd.permits.policy import KNOWN_FLAGS, describe

#: The answer of a change: done (with a message), or refused.
Change = Outcome[AdminDone | Denied]


def first_of_each(products: Iterable[ProductPermit]) -> tuple[ProductPermit, ...]:
    """The permits to serve: the first of each (publisher, product), in order."""
    chosen: dict[ProductKey, ProductPermit] = {}
    for permit in products:
        chosen.setdefault(permit.key, permit)
    return tuple(chosen.values())


class AdminChanges:
    """Administrative changes, decided on the ledger's state and emitted as events."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    # -- products -------------------------------------------------------------------

    def load_products(self, products: Iterable[ProductPermit]) -> Outcome[AdminDone]:
        """Serve exactly these products; revoke the licences they no longer allow
        (see `Engine.load_products`)."""
        ledger = self._ledger
        now = ledger.now()
        loaded = ProductsLoaded(first_of_each(products))
        wanted = {permit.key: permit for permit in loaded.products}
        batch: list[Event] = []
        revoked = 0
        for key, state in ledger.state.products.items():
            reason = _revoke_reason(state, wanted.get(key))
            if reason is not None:
                revoked += ledger.revoke_all(state, reason, now, batch)
        # Re-reading a permit ends the administrator's locks (policy MNEM!): record it.
        admin_locked = any(state.settings.locks for state in ledger.state.products.values())
        if batch or admin_locked or ledger.state.served_permits() != loaded.products:
            ledger.emit(loaded, batch)
        message = f"{len(wanted)} product(s) served"
        if revoked:
            message += f"; {revoked} licence(s) revoked"
        return Outcome(AdminDone(message, revoked), tuple(batch))

    def reinit(self, products: Iterable[ProductPermit] | None) -> Outcome[AdminDone]:
        """Revoke every licence, then serve ``products`` if given."""
        ledger = self._ledger
        now = ledger.now()
        batch: list[Event] = []
        revoked = 0
        for state in ledger.state.products.values():
            revoked += ledger.revoke_all(state, Reason.REINIT, now, batch)
        if products is not None:
            ledger.emit(ProductsLoaded(first_of_each(products)), batch)
        return Outcome(
            AdminDone(f"reinitialised; {revoked} licence(s) revoked", revoked), tuple(batch)
        )

    # -- policy and times -------------------------------------------------------------

    def set_policy(self, publisher: str, product: str, flags: int, lock: int) -> Change:
        """Set the policy flags, then lock those of ``lock`` until the permit is re-read."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        refusal = _policy_refusal(state, flags, lock)
        if refusal is not None:
            return illegal(refusal)
        message = f"policy {describe(flags)}"
        new_locks = state.settings.locks | lock
        if new_locks == state.settings.locks:
            return self._change(PolicyChanged(publisher, product, flags), message)
        batch: list[Event] = []
        self._ledger.emit(PolicyChanged(publisher, product, flags), batch)
        self._ledger.emit(PolicyLocked(publisher, product, new_locks), batch)
        message += f"; locked until the permit is re-read: {describe(new_locks)}"
        return Outcome(AdminDone(message, 0), tuple(batch))

    def set_crashout(self, publisher: str, product: str, seconds: float | None) -> Change:
        """Set the GRAB crashout time in seconds (None: back to 3 update periods)."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if seconds is not None and not MINIMUM_ADMIN_SECONDS <= seconds < math.inf:
            return illegal(f"crashout must be at least {MINIMUM_ADMIN_SECONDS:g} s, and finite")
        return self._change(
            CrashoutChanged(publisher, product, None if seconds is None else float(seconds)),
            "crashout set",
        )

    def set_timeout(self, publisher: str, product: str, seconds: float | None) -> Change:
        """Set the TIML / LKNL timeout in seconds (None: back to 60 minutes)."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if seconds is not None and not MINIMUM_ADMIN_SECONDS <= seconds < math.inf:
            return illegal(f"timeout must be at least {MINIMUM_ADMIN_SECONDS:g} s, and finite")
        return self._change(
            TimeoutChanged(publisher, product, None if seconds is None else float(seconds)),
            "timeout set",
        )

    # -- licences ---------------------------------------------------------------------

    def kill(self, handle: str) -> Change:
        """Take a licence back; its holder gets LOSTLICENCE at its next UPDATE."""
        found = self._ledger.state.holder(handle)
        if isinstance(found, Denied):
            return Outcome(found)
        batch: list[Event] = []
        self._ledger.emit(Revoked(handle, str(Reason.KILLED), self._ledger.now()), batch)
        return Outcome(AdminDone(f"licence {handle} killed", 1), tuple(batch))

    def kill_index(self, publisher: str, product: str, index: int) -> Change:
        """Take back whichever licence holds licence number ``index`` of a product."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        for holder in state.holders.values():
            if index in holder.indices:
                return self.kill(holder.handle)
        return illegal(f"licence {index} of {product_name(state)} is not held")

    # -- locked nodes and pools -------------------------------------------------------------

    def add_node(self, publisher: str, product: str, address: str, unique_id: int) -> Change:
        """List a host (once more) as a locked node of the product."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        node = locked_node(address, unique_id)
        if isinstance(node, Denied):
            return Outcome(node)
        return self._change(
            LockedNodeAdded(publisher, product, *node), f"locked node {node[0]} added"
        )

    def remove_node(
        self, publisher: str, product: str, address: str, unique_id: int | None
    ) -> Change:
        """Remove one listing that ``addnode`` added (``unique_id`` None: the host's last
        added listing); revokes the product's licences."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        node = locked_node(address, 0 if unique_id is None else unique_id)
        if isinstance(node, Denied):
            return Outcome(node)
        added = _added_listings(state)
        if unique_id is None:
            ids = [listing for listing in added if listing[0] == node[0]]
            node = ids[-1] if ids else node
        if node not in added:
            listed = "listed by the permit" if node in state.locked_nodes else "not listed"
            return illegal(
                f"{node[0]} 0x{node[1]:08x} is {listed} as a locked node of "
                f"{product_name(state)}: only hosts added with addnode can be removed"
            )
        return self._change(
            LockedNodeRemoved(publisher, product, *node),
            f"locked node {node[0]} removed",
            revoke=(state, Reason.NODES_CHANGED),
        )

    def float_to_locked(self, publisher: str, product: str, count: int) -> Change:
        """Make ``count`` floating licences node-locked (``ftol``); revokes the product's."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if not 1 <= count <= state.floating_count:
            return illegal(
                f"{product_name(state)} has {state.floating_count} floating licence(s); "
                f"cannot make {count} node-locked"
            )
        return self._change(
            PoolsResized(
                publisher, product, state.node_count + count, state.floating_count - count
            ),
            f"{count} floating licence(s) made node-locked",
            revoke=(state, Reason.POOLS_CHANGED),
        )

    def locked_to_float(self, publisher: str, product: str, count: int) -> Change:
        """Make ``count`` node-locked licences floating (``ltof``); revokes the product's."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        converted = max(0, state.node_count - state.permit.node_count)
        if not 1 <= count <= converted:
            return illegal(
                f"{product_name(state)} has {converted} node-locked licence(s) made by ftol; "
                f"cannot make {count} floating (only licences converted by ftol can be)"
            )
        return self._change(
            PoolsResized(
                publisher, product, state.node_count - count, state.floating_count + count
            ),
            f"{count} node-locked licence(s) made floating",
            revoke=(state, Reason.POOLS_CHANGED),
        )

    # -- hosts and users --------------------------------------------------------------------

    def exclude_host(self, publisher: str, product: str, host: str) -> Change:
        """Refuse the product to a host (name, any case, or IPv4 address)."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        name = host.strip().lower()
        if not good_text(name):
            return illegal(f"bad host name {host!r}")
        return self._change(HostExcluded(publisher, product, name), f"host {name} excluded")

    def unexclude_host(self, publisher: str, product: str, host: str) -> Change:
        """Let an excluded host take the product's licences again."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        name = host.strip().lower()
        if name not in state.settings.excluded:
            return illegal(f"host {host} is not excluded from {product_name(state)}")
        return self._change(HostUnexcluded(publisher, product, name), f"host {name} readmitted")

    def add_named_user(self, publisher: str, product: str, user: str) -> Change:
        """Name a user for USRL (guaranteed licences)."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if not good_text(user):
            return illegal(f"bad user name {user!r}")
        return self._change(NamedUserAdded(publisher, product, user), f"user {user} named")

    def remove_named_user(self, publisher: str, product: str, user: str) -> Change:
        """Stop naming a user for USRL."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        if user not in state.settings.named_users:
            return illegal(f"user {user} is not named for {product_name(state)}")
        return self._change(NamedUserRemoved(publisher, product, user), f"user {user} unnamed")

    def set_access(
        self, publisher: str, product: str, name: str, level: int | None, *, group: bool
    ) -> Change:
        """Set (``level`` None: remove) a user's or a group's ACCL access level."""
        state = self._ledger.state.product_or_denied(publisher, product)
        if isinstance(state, Denied):
            return Outcome(state)
        what = "group" if group else "user"
        refusal = _access_refusal(state, what, name, level, group=group)
        if refusal is not None:
            return illegal(refusal)
        event: Event
        if group:
            event = GroupAccessSet(publisher, product, name, level)
        else:
            event = UserAccessSet(publisher, product, name, level)
        text = "removed" if level is None else f"set to {level}"
        return self._change(event, f"access level of {what} {name} {text}")

    # -- emitting ---------------------------------------------------------------------------

    def _change(
        self,
        event: Event,
        message: str,
        *,
        revoke: tuple[ProductState, str] | None = None,
    ) -> Change:
        """Emit ``event``, after revoking the licences of ``revoke``'s product if given."""
        ledger = self._ledger
        batch: list[Event] = []
        revoked = 0
        if revoke is not None:
            revoked = ledger.revoke_all(revoke[0], revoke[1], ledger.now(), batch)
            message += f"; {revoked} licence(s) revoked"
        ledger.emit(event, batch)
        return Outcome(AdminDone(message, revoked), tuple(batch))


def _revoke_reason(state: ProductState, replacement: ProductPermit | None) -> str | None:
    """Why a product's licences go when ``replacement`` (None: nothing) is loaded."""
    if replacement is None:
        return Reason.PRODUCT_REMOVED
    if not state.keeps_holders(replacement):
        return Reason.PERMIT_CHANGED
    return None


def _policy_refusal(state: ProductState, flags: int, lock: int) -> str | None:
    """Why the policy may not become ``flags`` (locking ``lock``), or None."""
    if flags < 0 or flags & ~KNOWN_FLAGS:
        return f"policy 0x{flags:x} has bits this server does not know"
    if lock < 0 or lock & ~KNOWN_FLAGS:
        return f"policy lock 0x{lock:x} has bits this server does not know"
    changed_locked = (flags ^ state.flags) & state.locks
    if changed_locked:
        names = describe(changed_locked).split(" locked:")[0]
        return f"policy flag(s) {names} of {product_name(state)} are locked by the publisher"
    changed_locked = (flags ^ state.flags) & state.settings.locks
    if changed_locked:
        return (
            f"policy flag(s) {describe(changed_locked)} of {product_name(state)} are locked "
            "by the administrator until the permit is re-read"
        )
    return None


def _added_listings(state: ProductState) -> list[NodeListing]:
    """The product's locked-node listings that addnode added (not the permit's own)."""
    added = list(state.locked_nodes)
    for own in [(str(host.address), host.unique_id) for host in state.permit.locked_nodes]:
        if own in added:
            added.remove(own)
    return added


def _access_refusal(
    state: ProductState, what: str, name: str, level: int | None, *, group: bool
) -> str | None:
    """Why an ACCL entry may not be set (or removed), or None."""
    table = state.settings.group_access if group else state.settings.user_access
    if level is None:
        if name not in table:
            return f"{what} {name} has no access level for {product_name(state)}"
    elif not 0 <= level <= FULL_ACCESS:
        return f"access level {level} is not in 0..{FULL_ACCESS}"
    if not good_text(name):
        return f"bad {what} name {name!r}"
    return None
