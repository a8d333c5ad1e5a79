"""The engine's whole state: served products, held handles, tombstones.

Client tokens are per product (`ProductState.tokens`).

Plain containers, changed only by the appliers (`hqnlsd.licensing.appliers`)
and replaced whole by a restore (`hqnlsd.licensing.snapshot`).
"""

from __future__ import annotations

import dataclasses

from hqnlsd.licensing.holdings import HandleIndex
from hqnlsd.licensing.pools import Holder, ProductKey, ProductState, Tombstone
from hqnlsd.licensing.results import Denied
from hqnlsd.permits.model import ProductPermit
from hqnlsd.status import Status


@dataclasses.dataclass(slots=True)
class EngineState:
    """Products by key, and the index that finds a licence by handle."""

    products: dict[ProductKey, ProductState] = dataclasses.field(default_factory=dict)
    #: The product (and slot) of every held handle.
    handles: HandleIndex[ProductState] = dataclasses.field(default_factory=HandleIndex)
    #: Handles taken back, remembered for LOSTLICENCE.
    tombstones: dict[str, Tombstone] = dataclasses.field(default_factory=dict)

    def served_permits(self) -> tuple[ProductPermit, ...]:
        """Every product permit served, in load order."""
        return tuple(state.permit for state in self.products.values())

    def product_or_denied(self, publisher: str, product: str) -> ProductState | Denied:
        """A served product, or BADPRODUCT."""
        state = self.products.get((publisher, product))
        if state is None:
            return Denied(Status.BADPRODUCT, f"{publisher} {product} is not served here")
        return state

    def holder(self, handle: str) -> tuple[ProductState, Holder] | Denied:
        """The product and holder of a handle; LOSTLICENCE or BADHANDLE if not held."""
        found = self.handles.holder(handle)
        if found is not None:
            return found
        return self.not_held(handle)

    def not_held(self, handle: str) -> Denied:
        """Why ``handle`` (not held) is refused: LOSTLICENCE if it was taken back, else
        BADHANDLE."""
        tomb = self.tombstones.get(handle)
        if tomb is not None:
            return Denied(
                Status.LOSTLICENCE,
                f"the licence {handle} of {tomb.key[0]} {tomb.key[1]} was taken back "
                f"({tomb.reason}); request a new one",
            )
        return Denied(Status.BADHANDLE, f"no licence has the handle {handle!r}")
