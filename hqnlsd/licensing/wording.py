"""Words the engine's answers share: a product's name, the usual refusals."""

from __future__ import annotations

from hqnlsd.licensing.pools import ProductState
from hqnlsd.licensing.results import AdminDone, Denied, Outcome
from hqnlsd.status import Status


def product_name(state: ProductState) -> str:
    """``publisher product version`` of a served product."""
    permit = state.permit
    return f"{permit.publisher} {permit.product} {permit.version}"


def illegal(message: str) -> Outcome[AdminDone | Denied]:
    """An administrative change refused as ILLEGAL (nothing changes)."""
    return Outcome(Denied(Status.ILLEGAL, message))


def wrong_version(state: ProductState, version: str) -> Denied:
    """BADPRODUCT for another version than the one served (named in the message)."""
    permit = state.permit
    return Denied(
        Status.BADPRODUCT,
        f"version {version} of {permit.publisher} {permit.product} is not served; "
        f"this server serves version {permit.version}",
    )
