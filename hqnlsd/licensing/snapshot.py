"""The engine's whole state as JSON-safe data, and back (journal compaction, restore).

The format is stable: state databases written by earlier versions restore, and
a holder stays one flat dict (its `Requester` fields side by side with the rest).
"""

from __future__ import annotations

from collections.abc import Mapping

from hqnlsd.licensing.events import JSON, EventError, product_from_dict, product_to_dict
from hqnlsd.licensing.pools import Holder, ProductState, Tombstone
from hqnlsd.licensing.requester import REQUESTER_FIELDS, requester_from
from hqnlsd.licensing.settings import ProductSettings
from hqnlsd.licensing.state import EngineState

#: Version of the ``snapshot()`` format.
SNAPSHOT_FORMAT = 1

#: A holder's keys in its dict form, in the order written.
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


def snapshot_of(state: EngineState, latest: float) -> dict[str, JSON]:
    """The whole state (and the engine's latest event time) as JSON-safe data."""
    return {
        "format": SNAPSHOT_FORMAT,
        "latest": latest,
        "products": [
            {
                "permit": product_to_dict(product.permit),
                "settings": product.settings.to_dict(),
                "holders": [_holder_to_dict(holder) for holder in product.holders.values()],
            }
            for product in state.products.values()
        ],
        "tombstones": [
            [handle, tomb.key[0], tomb.key[1], tomb.reason, tomb.at]
            for handle, tomb in state.tombstones.items()
        ],
    }


def state_of(data: Mapping[str, JSON]) -> tuple[EngineState, float]:
    """The state and latest event time of a ``snapshot_of``; EventError if it is not one."""
    if data.get("format") != SNAPSHOT_FORMAT:
        raise EventError(f"unknown snapshot format {data.get('format')!r}")
    state = EngineState()
    try:
        latest = float(data["latest"])
        for item in data["products"]:
            _restore_product(state, item)
        for handle, publisher, name, reason, at in data["tombstones"]:
            state.tombstones[str(handle)] = Tombstone((str(publisher), str(name)), str(reason), at)
    except (KeyError, TypeError, ValueError) as error:
        raise EventError(f"bad snapshot: {error!r}") from None
    return state, latest


def _restore_product(state: EngineState, item: Mapping[str, JSON]) -> None:
    permit = product_from_dict(item["permit"])
    product = ProductState(permit, ProductSettings.from_dict(item["settings"]))
    if permit.key in state.products:
        raise EventError(f"product {permit.key} twice in the snapshot")
    state.products[permit.key] = product
    for data in item["holders"]:
        values = {name: data[name] for name in _HOLDER_FIELDS}
        who = requester_from(values)
        values["indices"] = tuple(int(index) for index in values["indices"])
        if values["handle"] in state.handles:
            raise EventError(f"handle {values['handle']} twice in the snapshot")
        product.add(state.handles, who=who, **values)
    product.resort_updates()


def _holder_to_dict(holder: Holder) -> dict[str, JSON]:
    who = holder.who
    out: dict[str, JSON] = {
        name: getattr(who if name in REQUESTER_FIELDS else holder, name) for name in _HOLDER_FIELDS
    }
    out["indices"] = list(holder.indices)
    return out
