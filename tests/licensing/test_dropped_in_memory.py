"""`Released` / `Revoked` carry the holding they ended in memory only (``dropped``):
the dict form (journal, snapshots, domain logs), equality and repr are as before."""

from __future__ import annotations

import dataclasses
import datetime
import itertools

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Dropped, Event, EventError, Granted, Released, Revoked
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


@pytest.mark.parametrize(
    ("pid", "uid", "hostid"),
    [(7, None, None), (7, 1000, 0xFFFFFFFF), (None, 2**70, None), (-3, None, 2**64), (0, 0, 0)],
)
def test_the_dropped_record_is_the_holder_as_stored(
    pid: int | None, uid: int | None, hostid: int | None
) -> None:
    """Whatever a replayed Granted stored (None, values that do not fit a column),
    the Dropped of its release and the repeated-token check read back that record."""
    engine, _clock, _grant = engine_with_holder()
    who = Requester(
        user="bob",
        host="bob-host",
        address="10.0.0.2",
        pid=pid,  # type: ignore[arg-type]
        uid=uid,
        group="staff",
        hostid=hostid,
        client="bob-token",
    )
    engine.apply(
        Granted(
            publisher="Harlequin",
            product="LispWorks",
            handle="0123456789abcdef",
            indices=(2,),
            locked=False,
            on_locked_node=False,
            who=who,
            access=8,
            at=NOW + 1,
        )
    )
    [holder] = [
        h for h in engine.holders("Harlequin", "LispWorks") if h.handle == "0123456789abcdef"
    ]  # type: ignore[union-attr]
    assert holder.who == who
    outcome = engine.release("0123456789abcdef")
    [event] = outcome.events
    assert isinstance(event, Released) and event.dropped is not None
    assert event.dropped.who == who
    assert (event.dropped.indices, event.dropped.locked, event.dropped.granted_at) == (
        (2,),
        False,
        NOW + 1,
    )


@pytest.mark.parametrize("uid", [None, 1000, 2**70])
def test_a_repeated_token_is_matched_against_the_stored_process(uid: int | None) -> None:
    """The same process repeating its token gets the same grant again; the same
    token from another process (any one fact differing) gets TOKEN_HELD."""
    engine, _clock, _grant = engine_with_holder()
    facts = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        user="carol",
        host="carol-host",
        pid=9,
        address="10.0.0.3",
        uid=uid,
        group="staff",
        hostid=77,
        client="carol-token",
    )
    first = engine.request(LicenceRequest(**facts)).result  # type: ignore[arg-type]
    again = engine.request(LicenceRequest(**facts)).result  # type: ignore[arg-type]
    assert isinstance(first, Grant) and isinstance(again, Grant)
    assert again == dataclasses.replace(first, duplicate=True)
    for name, other in (
        ("user", "dave"),
        ("host", "h2"),
        ("pid", 10),
        ("uid", 5),
        ("group", None),
        ("hostid", None),
        ("address", "10.0.0.4"),
    ):
        refused = engine.request(LicenceRequest(**{**facts, name: other})).result  # type: ignore[arg-type]
        assert not isinstance(refused, Grant), name
        assert refused.status.name == "TOKEN_HELD", name
