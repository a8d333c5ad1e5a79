"""`Engine.holders_page`: one slice of a product's holders, as `Engine.holders` lists
them, and their count, without building the others."""

from __future__ import annotations

import datetime
import itertools
import random

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.results import Denied, Grant, LicenceRequest
from hqnlsd.permits.model import ProductPermit

NOW = 1_800_000_000.0
PERMIT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=0,
    node_count=0,
    floating_count=200,
    start=datetime.date(2026, 1, 1),
    expiry=datetime.date(2030, 12, 31),
    update_minutes=5,
)


def churned_engine(seed: int) -> Engine:
    """An engine whose holders were granted and released at random (reused slots, so
    the grant order is not the slot order)."""
    clock = Clock()
    clock.advance(NOW)
    counter = itertools.count(1)
    engine = Engine(clock, lambda: f"{next(counter):016x}")
    engine.load_products([PERMIT])
    rng = random.Random(seed)
    held: list[str] = []
    for step in range(400):
        clock.advance(1)
        if held and rng.random() < 0.4:
            engine.release(held.pop(rng.randrange(len(held))))
            continue
        result = engine.request(
            LicenceRequest(
                publisher="Harlequin",
                product="LispWorks",
                version="8.0",
                user=f"user{step % 7}",
                host=f"host{step % 5}",
                pid=step,
                address=f"10.0.0.{step % 9 + 1}",
                units=rng.choice((1, 1, 1, 2)),
            )
        ).result
        if isinstance(result, Grant):
            held.append(result.handle)
    return engine


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_page_is_the_slice_of_the_full_listing(seed: int) -> None:
    """For random offsets and limits (past the end too), the page is exactly that
    slice of `holders` and the total is its length."""
    engine = churned_engine(seed)
    full = engine.holders("Harlequin", "LispWorks")
    assert isinstance(full, list) and len(full) > 20
    rng = random.Random(seed)
    cases = [(0, 0), (0, len(full)), (len(full), 5), (len(full) - 1, 5), (0, 10**6)]
    cases += [(rng.randrange(len(full) + 10), rng.randrange(40)) for _ in range(200)]
    for offset, limit in cases:
        page = engine.holders_page("Harlequin", "LispWorks", offset, limit)
        assert page == (full[offset : offset + limit], len(full)), (offset, limit)


def test_a_page_of_a_product_not_served_is_badproduct_and_bad_bounds_raise() -> None:
    """As `holders`: BADPRODUCT for a product not served; a negative offset or limit
    is a ValueError."""
    engine = churned_engine(4)
    refused = engine.holders_page("Harlequin", "Nothing", 0, 10)
    assert isinstance(refused, Denied)
    assert refused == engine.holders("Harlequin", "Nothing")
    for offset, limit in ((-1, 10), (0, -1)):
        with pytest.raises(ValueError):
            engine.holders_page("Harlequin", "LispWorks", offset, limit)
