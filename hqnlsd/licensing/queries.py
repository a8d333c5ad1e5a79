"""Read-only answers about the engine's state: QUERY, USERS, listings, status.

Nothing here changes the state; each function takes the `EngineState` it reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hqnlsd.licensing.pools import Holder, ProductState
from hqnlsd.licensing.results import (
    QUERY_KINDS,
    Denied,
    Grant,
    HolderInfo,
    ProductStatus,
    QueryAnswer,
)
from hqnlsd.licensing.state import EngineState
from hqnlsd.licensing.wording import product_name, wrong_version
from hqnlsd.permits.policy import Policy, describe
from hqnlsd.status import Status

_UVIS = int(Policy.UVIS)


def query(state: EngineState, handle: str, what: str) -> QueryAnswer | Denied:
    """QUERY: facts about a held licence (``what`` is one of QUERY_KINDS)."""
    found = state.holder(handle)
    if isinstance(found, Denied):
        return found
    product, holder = found
    kind = what.lower()
    answer = _ANSWERS.get(kind)
    if answer is None:
        return Denied(
            Status.ILLEGAL, f"QUERY what={what!r}: ask for one of {', '.join(QUERY_KINDS)}"
        )
    return QueryAnswer(kind, answer(product, holder))


def _policy_answer(product: ProductState, holder: Holder) -> dict[str, object]:
    word = product.policy_word
    return {"policy": word, "flags": describe(word)}


_ANSWERS: dict[str, Callable[[ProductState, Holder], dict[str, object]]] = {
    "data": lambda product, holder: {"data": product.permit.data},
    "period": lambda product, holder: {"period": product.period},
    "context": lambda product, holder: {
        "access": holder.access,
        "locked": holder.locked,
        "locked_node": holder.on_locked_node,
    },
    "policy": _policy_answer,
    "dates": lambda product, holder: {
        "start": product.permit.start,
        "expiry": product.permit.expiry,
    },
}


def users(
    state: EngineState, publisher: str, product: str, version: str
) -> list[HolderInfo] | Denied:
    """USERS for applications: the holders (without handles) if UVIS allows it."""
    found = state.product_or_denied(publisher, product)
    if isinstance(found, Denied):
        return found
    if version != found.permit.version:
        return wrong_version(found, version)
    if not found.flags & _UVIS:
        return Denied(
            Status.USERS_OFF,
            f"policy UVIS is off for {product_name(found)}: applications may not list its users",
        )
    return [holder_info(holder, with_handle=False) for holder in found.holders.values()]


def holders(state: EngineState, publisher: str, product: str) -> list[HolderInfo] | Denied:
    """Every holder of a product, oldest grant first, with handles."""
    found = state.product_or_denied(publisher, product)
    if isinstance(found, Denied):
        return found
    return [holder_info(holder, with_handle=True) for holder in found.holders.values()]


def holders_page(
    state: EngineState, publisher: str, product: str, offset: int, limit: int
) -> tuple[list[HolderInfo], int] | Denied:
    """``holders(...)[offset:offset + limit]`` and how many holders there are, building
    only the holders of the slice (the others are skipped in the grant order);
    ValueError for a negative offset or limit."""
    if offset < 0 or limit < 0:
        raise ValueError(f"offset {offset} and limit {limit} must be 0 or more")
    found = state.product_or_denied(publisher, product)
    if isinstance(found, Denied):
        return found
    store = found.store
    page = [
        holder_info(Holder(store, slot), with_handle=True)
        for slot in itertools.islice(store.in_grant_order(), offset, offset + limit)
    ]
    return page, store.count


def status(state: EngineState) -> list[ProductStatus]:
    """Every served product with its settings, totals and use."""
    return [_product_status(product) for product in state.products.values()]


def _product_status(product: ProductState) -> ProductStatus:
    settings = product.settings
    permit = product.permit
    return ProductStatus(
        publisher=permit.publisher,
        product=permit.product,
        version=permit.version,
        policy=product.policy_word,
        node_count=product.node_count,
        floating_count=product.floating_count,
        locked_used=product.locked_used,
        floating_used=product.floating_used,
        start=permit.start,
        expiry=permit.expiry,
        period=product.period,
        crashout=product.crashout,
        timeout=product.timeout,
        locked_nodes=product.locked_nodes,
        excluded=tuple(sorted(settings.excluded)),
        named_users=tuple(sorted(settings.named_users)),
        user_access=tuple(sorted(settings.user_access.items())),
        group_access=tuple(sorted(settings.group_access.items())),
        admin_locks=settings.locks,
    )


def grant_of(product: ProductState, holder: Holder, *, duplicate: bool) -> Grant:
    """The answer to the REQUEST that made (or, ``duplicate``, repeated) ``holder``."""
    permit = product.permit
    return Grant(
        handle=holder.handle,
        publisher=permit.publisher,
        product=permit.product,
        version=permit.version,
        indices=holder.indices,
        period=product.period,
        type="locked" if holder.locked else "floating",
        access=holder.access,
        data=permit.data,
        start=permit.start,
        expiry=permit.expiry,
        duplicate=duplicate,
    )


def holder_info(holder: Holder, *, with_handle: bool) -> HolderInfo:
    """A holder as listings show it (``with_handle``: for administrators)."""
    return HolderInfo(
        handle=holder.handle if with_handle else None,
        indices=holder.indices,
        type="locked" if holder.locked else "floating",
        who=holder.who,
        granted=holder.granted_at,
        last_update=holder.last_update,
    )
