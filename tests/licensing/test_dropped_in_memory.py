"""`Released` / `Revoked` carry the holding they ended in memory only (``dropped``):
the dict form (journal, snapshots, domain logs), equality and repr are as before."""

from __future__ import annotations

import datetime
import itertools

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Dropped, Event, EventError, Released, Revoked
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.results import Grant, LicenceRequest
from hqnlsd.permits.model import ProductPermit

NOW = 1_800_000_000.0

PERMIT = ProductPermit(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    policy=0,
    node_count=0,
    floating_count=3,
    start=datetime.date(2026, 1, 1),
    expiry=datetime.date(2030, 12, 31),
    update_minutes=5,
    data=(),
    locked_nodes=(),
)


def engine_with_holder() -> tuple[Engine, Clock, Grant]:
    """An engine serving PERMIT with one licence held by alice (pid 42)."""
    clock = Clock()
    clock.advance(NOW)
    counter = itertools.count(1)
    engine = Engine(clock, lambda: f"h{next(counter)}")
    engine.load_products([PERMIT])
    outcome = engine.request(
        LicenceRequest(
            publisher="Harlequin",
            product="LispWorks",
            version="8.0",
            user="alice",
            host="alice-host",
            pid=42,
            address="10.0.0.1",
            uid=1042,
        )
    )
    assert isinstance(outcome.result, Grant)
    return engine, clock, outcome.result


def test_applying_a_release_records_what_it_ended() -> None:
    engine, clock, grant = engine_with_holder()
    clock.advance(30)
    (event,) = engine.release(grant.handle).events
    assert isinstance(event, Released)
    dropped = event.dropped
    assert dropped is not None
    assert (dropped.publisher, dropped.product, dropped.indices, dropped.locked) == (
        "Harlequin",
        "LispWorks",
        grant.indices,
        False,
    )
    assert (dropped.who.user, dropped.who.pid, dropped.granted_at) == ("alice", 42, NOW)


def test_a_revocation_records_what_it_ended() -> None:
    engine, _, grant = engine_with_holder()
    (event,) = engine.kill(grant.handle).events
    assert isinstance(event, Revoked) and event.dropped is not None
    assert (event.dropped.product, event.dropped.who.pid) == ("LispWorks", 42)


def test_dropped_is_not_in_the_dict_form() -> None:
    engine, clock, grant = engine_with_holder()
    clock.advance(30)
    (released,) = engine.release(grant.handle).events
    assert released.to_dict() == {"type": "Released", "handle": grant.handle, "at": NOW + 30}
    assert Released.dict_fields() == (("handle", "str"), ("at", "float"))
    assert Revoked.dict_fields() == (("handle", "str"), ("reason", "str"), ("at", "float"))
    again = Event.from_dict(released.to_dict())
    assert isinstance(again, Released) and again.dropped is None
    assert again == released and hash(again) == hash(released)
    assert repr(released) == f"Released(handle={grant.handle!r}, at={NOW + 30!r})"


def test_dropped_is_neither_an_argument_nor_read_from_a_dict() -> None:
    who = Requester(user="u", host="h", address="10.0.0.1", pid=1)
    with pytest.raises(TypeError):
        Released("h1", NOW, Dropped("p", "q", (1,), False, who, NOW))  # type: ignore[call-arg]
    with pytest.raises(EventError):
        Event.from_dict({"type": "Released", "handle": "h1", "at": NOW, "dropped": None})


def test_an_event_for_a_handle_not_held_records_nothing() -> None:
    engine, _, _ = engine_with_holder()
    event = Released("nonesuch", NOW)
    engine.apply(event)
    assert event.dropped is None
