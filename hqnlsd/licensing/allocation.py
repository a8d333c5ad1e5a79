"""The REQUEST decision: who may have a licence, from which pool, at whose expense.

The order of the checks and of the pools is the engine's policy (see
`hqnlsd.licensing.engine`); each step is a small function here. The decision
changes the state only through the ledger's events: GRAB's and the reclaims'
``Revoked``, a repeated token's ``Updated``, and the ``Granted`` itself.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from sys import intern

from hqnlsd.licensing.checks import invalid_request, normal_address, valid_address
from hqnlsd.licensing.events import Event, Granted, Reason, Revoked, Updated
from hqnlsd.licensing.holdings import NO_SLOT
from hqnlsd.licensing.ledger import Ledger
from hqnlsd.licensing.pools import FreeList, Holder, ProductState
from hqnlsd.licensing.queries import grant_of
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.results import Denied, Grant, LicenceRequest
from hqnlsd.licensing.settings import FULL_ACCESS
from hqnlsd.licensing.state import EngineState
from hqnlsd.licensing.wording import product_name, wrong_version
from hqnlsd.permits.policy import Policy
from hqnlsd.status import Status

# Plain ints: `IntFlag & int` builds enum members, too slow for the hot path.
GRAB = int(Policy.GRAB)
ONPN = int(Policy.ONPN)
TIML = int(Policy.TIML)
LKNL = int(Policy.LKNL)
LKNF = int(Policy.LKNF)
LKPR = int(Policy.LKPR)
USRL = int(Policy.USRL)
ACCL = int(Policy.ACCL)

#: A reclaim: the pool (True: locked), the holders to take back, and why.
Reclaim = tuple[bool, list[Holder], str]


class _Ask:
    """A REQUEST admitted for a product: what remains is to find it licences.

    Read-only by convention: a plain class (a frozen dataclass costs a setattr call
    per field, on every REQUEST).
    """

    __slots__ = ("access", "flags", "listings", "now", "product", "units", "who")

    def __init__(
        self,
        product: ProductState,
        who: Requester,
        units: int,
        access: int,
        flags: int,
        listings: int,
        now: float,
    ) -> None:
        self.product = product
        self.who = who
        self.units = units
        self.access = access
        self.flags = flags
        self.listings = listings  # how many times the requester is listed as a locked node
        self.now = now

    @property
    def on_locked_node(self) -> bool:
        return self.listings > 0

    @property
    def onpn(self) -> bool:
        return bool(self.flags & ONPN)

    @property
    def no_float(self) -> bool:
        """LKNF keeps this locked node off the floating licences."""
        return self.on_locked_node and bool(self.flags & LKNF)


def decide_request(
    ledger: Ledger,
    request: LicenceRequest,
    now: float,
    batch: list[Event],
    today: Callable[[float], datetime.date],
) -> Grant | Denied:
    """REQUEST: grant a licence (its events emitted into ``batch``), or say why not."""
    checked = _checked(ledger.state, request)
    if isinstance(checked, Denied):
        return checked
    product, who = checked
    if who.client is not None:
        repeated = _repeated(ledger, product, who, who.client, now, batch)
        if repeated is not None:
            return repeated
    access = _admitted(product, who, today(now))
    if isinstance(access, Denied):
        return access
    flags = product.flags
    if flags & GRAB:
        _crash_out(ledger, product, now, batch)
    listings = product.listings_for(who.address, who.hostid)
    ask = _Ask(product, who, request.units, access, flags, listings, now)
    return _allocate(ledger, ask, batch)


def _checked(
    state: EngineState, request: LicenceRequest
) -> tuple[ProductState, Requester] | Denied:
    """ILLEGAL values, BADPRODUCT; else the product and the requester."""
    address = valid_address(request)
    if address is None:
        problem = invalid_request(request)
        if problem is not None:
            return Denied(Status.ILLEGAL, problem)
        address = normal_address(request.address)
    product = state.products.get((request.publisher, request.product))
    if product is None:
        refused = state.product_or_denied(request.publisher, request.product)
        assert isinstance(refused, Denied)
        return refused
    if request.version != product.permit.version:
        return wrong_version(product, request.version)
    # Names repeat across holders: each held licence keeps the one shared copy.
    user = request.user
    host = request.host
    group = request.group
    who = Requester(
        intern(user) if type(user) is str else user,  # `shared`, written out
        intern(host) if type(host) is str else host,
        address,
        request.pid,
        request.uid,
        None if group is None else intern(group) if type(group) is str else group,
        request.hostid,
        request.client,
    )
    return product, who


def _repeated(
    ledger: Ledger,
    product: ProductState,
    who: Requester,
    client: str,
    now: float,
    batch: list[Event],
) -> Grant | Denied | None:
    """A client token already holding a licence: the same grant again, counted as an
    UPDATE, if its holder asks; TOKEN_HELD for anyone else; None if not held."""
    store = product.store
    slot = store.token_slot(client)
    if slot == NO_SLOT:  # the usual: a new token
        return None
    handle = store.handle(slot)
    if product.index is not None:  # the Updated's applier looks the handle up next
        product.index.remember(handle, product, slot)
    holder = Holder(store, slot, handle)
    if not store.same_process(slot, who):
        return Denied(
            Status.TOKEN_HELD,
            f"client token {client} is held by another client "
            "(another user, host, address or process); every client process "
            "needs a token of its own",
        )
    ledger.emit(Updated(handle, now), batch)
    return grant_of(product, holder, duplicate=True)


def _admitted(product: ProductState, who: Requester, today: datetime.date) -> int | Denied:
    """The requester's access level, or why the product is refused to it (dates,
    EXCLUDED, ACCL level 0)."""
    permit = product.permit
    if today < permit.start:
        return Denied(
            Status.PERMITOUTOFDATE,
            f"the permit for {product_name(product)} starts on {permit.start}",
        )
    if today > permit.expiry:
        return Denied(
            Status.PERMITEXPIRED,
            f"the permit for {product_name(product)} expired on {permit.expiry}",
        )
    settings = product.settings
    if settings.excluded and settings.is_excluded(who.host, who.address):
        return Denied(
            Status.EXCLUDED,
            f"host {who.host} ({who.address}) is excluded from {product_name(product)}",
        )
    if not product.flags & ACCL:
        return FULL_ACCESS
    access = settings.access_level(who.user, who.group)
    if access <= 0:
        return Denied(
            Status.NOACCESS, f"user {who.user} has access level 0 for {product_name(product)}"
        )
    return access


def _crash_out(ledger: Ledger, product: ProductState, now: float, batch: list[Event]) -> None:
    """GRAB: take back every licence not updated within the crashout time."""
    limit = now - product.crashout
    stale = []
    for holder in product.least_recently_updated():
        if holder.last_update >= limit:
            break
        stale.append(holder)
    # Canonical order: equal update times may be in a different order in a
    # replica restored from a snapshot; the tombstones must not differ.
    stale.sort(key=lambda holder: (holder.last_update, holder.granted_at, holder.handle))
    for holder in stale:
        ledger.emit(Revoked(holder.handle, str(Reason.CRASHOUT), now), batch)


# -- pools ------------------------------------------------------------------------------


def _allocate(ledger: Ledger, ask: _Ask, batch: list[Event]) -> Grant | Denied:
    """Free licences of a usable pool, else reclaimed ones, else why there are none."""
    possible = _possible_pools(ask)
    if not possible:
        return _never(ask)
    usable = [locked for locked in possible if not ask.onpn or _onpn_room(ask, locked) >= ask.units]
    if not usable:
        return Denied(
            Status.TOOMANYLICENCES,
            f"policy ONPN: host {ask.who.host} ({ask.who.address}) already holds all the "
            f"licences of {product_name(ask.product)} it may hold",
        )
    for locked in usable:
        indices = _pool(ask.product, locked).lowest(ask.units)
        if indices is not None:
            return _give(ledger, ask, locked, indices, ledger.fresh_handle(), batch)
    reclaimed = _reclaim(ledger, ask, usable, batch)
    if reclaimed is not None:
        return reclaimed
    return _exhausted(ask)


def _pool(product: ProductState, locked: bool) -> FreeList:
    return product.locked if locked else product.floating


def _possible_pools(ask: _Ask) -> list[bool]:
    """Pools this requester could ever use for this many units (True: locked), in the
    order tried."""
    product = ask.product
    possible: list[bool] = []
    if (
        ask.on_locked_node
        and ask.units <= product.node_count
        and (not ask.onpn or ask.units <= ask.listings)
    ):
        possible.append(True)
    if (
        not ask.no_float
        and ask.units <= product.floating_count
        and (not ask.onpn or ask.units <= 1)
    ):
        possible.append(False)
    return possible


def _onpn_room(ask: _Ask, locked: bool) -> int:
    """ONPN: how many more licences of this pool the host may hold."""
    if locked:
        return ask.listings - ask.product.locked_by_address.get(ask.who.address, 0)
    return 1 - ask.product.floating_by_address.get(ask.who.address, 0)


def _give(
    ledger: Ledger,
    ask: _Ask,
    locked: bool,
    indices: tuple[int, ...],
    handle: str | None,
    batch: list[Event],
) -> Grant | Denied:
    """Grant ``indices`` of one pool under ``handle`` (None: no unique handle was found)."""
    if handle is None:
        return Denied(Status.INTERNAL, "could not make a unique licence handle")
    product = ask.product
    publisher, name = product.key
    access = ask.access
    ledger.emit(
        Granted(
            publisher, name, handle, indices, locked, ask.listings > 0, ask.who, access, ask.now
        ),
        batch,
    )
    # What `grant_of` reads back from the holder just stored: the same values.
    permit = product.permit
    return Grant(
        handle,
        permit.publisher,
        permit.product,
        permit.version,
        indices,
        permit.update_minutes * 60,  # `ProductState.period`
        "locked" if locked else "floating",
        access,
        permit.data,
        permit.start,
        permit.expiry,
        False,
    )


def _never(ask: _Ask) -> Denied:
    """Why no pool can ever give this requester ``units`` licences."""
    product = ask.product
    most = 0
    if ask.listings:
        most = min(product.node_count, ask.listings) if ask.onpn else product.node_count
    if not ask.no_float and product.floating_count:
        most = max(most, 1 if ask.onpn else product.floating_count)
    if most:
        return Denied(
            Status.TOOMANYLICENCES,
            f"{ask.units} licences asked for; host {ask.who.host} can hold at most "
            f"{most} licence(s) of {product_name(product)} at once",
        )
    if ask.no_float:
        return Denied(
            Status.LOCKSNOFLOAT,
            f"{product_name(product)} has no node-locked licences and policy LKNF keeps "
            "locked nodes off the floating licences",
        )
    return Denied(
        Status.NOLICENCES,
        f"{product_name(product)} has only node-locked licences and host {ask.who.host} "
        f"({ask.who.address}) is not one of its locked nodes",
    )


def _exhausted(ask: _Ask) -> Denied:
    """Every licence this requester could use is held, and none may be reclaimed."""
    product = ask.product
    if ask.no_float and product.floating_count > 0:
        return Denied(
            Status.LOCKSNOFLOAT,
            f"all {product.node_count} node-locked licences of {product_name(product)} are "
            "in use and policy LKNF keeps locked nodes off the floating licences",
        )
    if ask.on_locked_node and not ask.no_float:
        what = f"all {product.total} licences"
    elif ask.on_locked_node:
        what = f"all {product.node_count} node-locked licences"
    else:
        what = f"all {product.floating_count} floating licences"
    return Denied(
        Status.NOLICENCES, f"{what} of {product_name(product)} are in use; try again later"
    )


# -- reclaims ---------------------------------------------------------------------------


def _reclaim(
    ledger: Ledger, ask: _Ask, usable: list[bool], batch: list[Event]
) -> Grant | Denied | None:
    """Take back licences for this requester if a policy allows it, and grant them."""
    plan = _plan_reclaim(ask, usable)
    if plan is None:
        return None
    handle = ledger.fresh_handle()
    if handle is None:
        return Denied(Status.INTERNAL, "could not make a unique licence handle")
    locked, victims, reason = plan
    for victim in victims:
        ledger.emit(Revoked(victim.handle, str(reason), ask.now), batch)
    indices = _pool(ask.product, locked).lowest(ask.units)
    if indices is None:  # never: the victims freed enough
        return None
    return _give(ledger, ask, locked, indices, handle, batch)


def _plan_reclaim(ask: _Ask, usable: list[bool]) -> Reclaim | None:
    """Which licences to take back for this requester, if a policy allows it.

    Tried in this order: TIML / LKNL (held longer than the timeout; LKNL
    exempts holders on locked nodes), LKPR (a locked node takes the oldest
    floating licence held off the locked nodes), USRL (a named user takes
    the oldest licence held by a user who is not named). Each takes the
    oldest eligible holders of one pool until enough licences are free.
    """
    for planner in (_overdue_victims, _locked_priority_victims, _named_user_victims):
        plan = planner(ask, usable)
        if plan is not None:
            return plan
    return None


def _overdue_victims(ask: _Ask, usable: list[bool]) -> Reclaim | None:
    """TIML / LKNL: licences held longer than the timeout."""
    if not ask.flags & (TIML | LKNL):
        return None
    limit = ask.now - ask.product.timeout
    exempt_locked_nodes = bool(ask.flags & LKNL)

    def overdue(holder: Holder) -> bool:
        return holder.granted_at < limit and not (exempt_locked_nodes and holder.on_locked_node)

    return _first_pool(ask, usable, overdue, Reason.TIMEOUT)


def _locked_priority_victims(ask: _Ask, usable: list[bool]) -> Reclaim | None:
    """LKPR: a locked node takes floating licences held off the locked nodes."""
    if not (ask.flags & LKPR and ask.on_locked_node and False in usable):
        return None
    return _first_pool(
        ask, (False,), lambda holder: not holder.on_locked_node, Reason.LOCKED_PRIORITY
    )


def _named_user_victims(ask: _Ask, usable: list[bool]) -> Reclaim | None:
    """USRL: a named user takes licences held by users who are not named."""
    named = ask.product.settings.named_users
    if not (ask.flags & USRL and ask.who.user in named):
        return None
    return _first_pool(ask, usable, lambda holder: holder.who.user not in named, Reason.NAMED_USER)


def _first_pool(
    ask: _Ask, pools: Sequence[bool], eligible: Callable[[Holder], bool], reason: str
) -> Reclaim | None:
    """The first of ``pools`` whose oldest eligible holders free enough licences."""
    for locked in pools:
        victims = _oldest(ask.product, locked, ask.units, eligible)
        if victims is not None:
            return locked, victims, reason
    return None


def _oldest(
    product: ProductState,
    locked: bool,
    units: int,
    eligible: Callable[[Holder], bool],
) -> list[Holder] | None:
    """The oldest eligible holders of one pool whose licences, with the free ones,
    make ``units``; None if there are not enough."""
    needed = units - len(_pool(product, locked))
    victims: list[Holder] = []
    for holder in product.holders.values():
        if needed <= 0:
            break
        if holder.locked == locked and eligible(holder):
            victims.append(holder)
            needed -= holder.units
    return victims if needed <= 0 and victims else None
