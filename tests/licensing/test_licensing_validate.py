"""The validator of engine events and snapshots never refuses what the engine makes.

A backup checks every log entry and state snapshot from its peers
(`hqnlsd.licensing.validate`, through `EngineMachine.check_batch` /
`check_snapshot`). A validator stricter than the engine would make a backup
refuse what its primary decided and stall replication, so a seeded random mix
of every engine command, with extreme but legal values, is run and every event
and snapshot it produces must pass; and a few malformed forms must not.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import random

import pytest
from twisted.internet.task import Clock

from hqnlsd.domain.adapter import EngineMachine, entry_of
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import EventError
from hqnlsd.licensing.results import Grant, LicenceRequest
from hqnlsd.licensing.validate import check_event_dict, check_snapshot
from hqnlsd.permits.model import HostId, ProductPermit

PERMIT = ProductPermit(
    publisher="P" * 200,
    product="Q",
    version="1.0",
    policy=0x1FF,
    node_count=2,
    floating_count=3,
    start=datetime.date(2020, 1, 1),
    expiry=datetime.date(2099, 12, 31),
    update_minutes=65535,
    data=(*tuple(range(-3, 300)), 2**32 - 1),
    locked_nodes=(HostId(ipaddress.IPv4Address("10.0.0.1"), 0),),
)


def _request(rng: random.Random, number: int) -> LicenceRequest:
    return LicenceRequest(
        publisher=PERMIT.publisher,
        product=PERMIT.product,
        version=PERMIT.version,
        user=rng.choice(["u", "ü" * 256, "x y"]),
        host=rng.choice(["h", "H" * 256]),
        pid=rng.choice([0, 2**32 - 1, number]),
        address=rng.choice(["10.0.0.1", "10.0.0.2", "255.255.255.255"]),
        uid=rng.choice([None, 0, 2**32 - 1]),
        group=rng.choice([None, "g"]),
        hostid=rng.choice([None, 0, 0xFFFFFFFF]),
        client=rng.choice([None, f"token-{number}"]),
        units=rng.choice([1, 1, 2]),
    )


@pytest.mark.parametrize("seed", range(5))
def test_everything_the_engine_makes_passes(seed: int) -> None:
    """Events and snapshots of random commands (extreme legal values) all validate."""
    rng = random.Random(seed)
    clock = Clock()
    clock.advance(1_780_000_000 + rng.random())
    engine = Engine(clock)
    machine = EngineMachine(Engine(Clock()))
    key = (PERMIT.publisher, PERMIT.product)
    outcomes = [engine.load_products([PERMIT])]
    handles: list[str] = []
    for number in range(300):
        clock.advance(rng.choice([0.001, 1.0, 600.0]))
        roll = rng.randrange(16)
        if roll < 6:
            outcome = engine.request(_request(rng, number))
            if isinstance(outcome.result, Grant):
                handles.append(outcome.result.handle)
        elif roll < 8 and handles:
            outcome = engine.release(handles.pop(rng.randrange(len(handles))))
        elif roll == 8 and handles:
            outcome = engine.kill(rng.choice(handles))
        elif roll == 9:
            outcome = engine.set_crashout(*key, rng.choice([None, 1.0, 1e300]))
        elif roll == 10:
            outcome = engine.set_timeout(*key, rng.choice([None, 1.5, 1e300]))
        elif roll == 11:
            outcome = engine.add_node(*key, "10.0.0.2", rng.choice([0, 0xFFFFFFFF]))
        elif roll == 12:
            outcome = engine.set_user_access(*key, "u", rng.choice([0, 8]))
        elif roll == 13:
            outcome = engine.exclude_host(*key, "H" * 256)
        elif roll == 14:
            outcome = engine.float_to_locked(*key, 1)
        else:
            outcome = rng.choice([engine.expire, engine.resume])()
        outcomes.append(outcome)
    outcomes.append(engine.reinit([PERMIT]))
    events = [entry_of(event) for outcome in outcomes for event in outcome.events]
    assert len(events) > 50
    for entry in events:
        check_event_dict(entry)
    machine.check_batch(events)
    snapshot = json.loads(json.dumps(engine.snapshot()))
    check_snapshot(snapshot)
    machine.check_snapshot(snapshot)


@pytest.mark.parametrize(
    "entry",
    [
        None,
        {"type": "Released", "handle": "h"},
        {"type": "Released", "handle": "h", "at": 1.0, "extra": 1},
        {"type": "Released", "handle": 5, "at": 1.0},
        {"type": "Released", "handle": "h", "at": float("inf")},
        {"type": "Revoked", "handle": "h", "reason": "bored", "at": 1.0},
        {
            "type": "PoolsResized",
            "publisher": "P",
            "product": "Q",
            "node_count": 10**9,
            "floating_count": 0,
        },
        {"type": "Nonsense"},
    ],
)
def test_malformed_events_are_refused(entry: object) -> None:
    """Wrong types, missing or unknown fields, infinities, unknown reasons, counts
    beyond a permit's: EventError (a ValueError), naming the field."""
    with pytest.raises(EventError):
        check_event_dict(entry)
