"""Held licences kept compactly (issue 14): one copy of a repeated name, tokens per
product, update order through the holders, and stored forms unchanged."""

from __future__ import annotations

import json

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Granted, Revoked, event_from_dict
from hqnlsd.licensing.requester import REQUESTER_FIELDS, Requester, requester_dict
from hqnlsd.licensing.results import Grant, HolderInfo
from tests.licensing.test_engine_requests import make_engine, make_permit, make_request
from tests.licensing.test_requester import STORED, WHO, granted


def fresh(text: str) -> str:
    """An equal string that is another object (as each parsed line gives)."""
    return "".join(list(text))


def holders_of(engine: Engine) -> list[HolderInfo]:
    """The holders of the default product."""
    listed = engine.holders("Harlequin", "LispWorks")
    assert isinstance(listed, list)
    return listed


def take(engine: Engine, pid: int, client: str | None = None) -> Grant:
    """A grant to process ``pid`` of alice on alpha (fresh string objects each time)."""
    result = engine.request(
        make_request(
            user=fresh("alice"),
            host=fresh("alpha"),
            group=fresh("staff"),
            address=fresh("10.0.0.1"),
            pid=pid,
            client=client,
        )
    ).result
    assert isinstance(result, Grant), result
    return result


def test_holders_share_one_copy_of_each_repeated_name() -> None:
    """User, host, group and address of many licences are one object each."""
    engine, _ = make_engine(make_permit(floating_count=5))
    for pid in range(1, 4):
        take(engine, pid)
    whos = [holder.who for holder in holders_of(engine)]
    for name in ("user", "host", "group", "address"):
        assert len({id(getattr(who, name)) for who in whos}) == 1, name
    assert [who.pid for who in whos] == [1, 2, 3]


def test_a_restored_engine_shares_the_names_too() -> None:
    """A snapshot read back (or a journal replayed) keeps one copy per name as well."""
    engine, clock = make_engine(make_permit(floating_count=5))
    for pid in range(1, 4):
        take(engine, pid)
    data = json.loads(json.dumps(engine.snapshot()))
    twin = Engine(clock)
    twin.restore(data)
    whos = [holder.who for holder in holders_of(twin)]
    assert len({id(who.user) for who in whos}) == 1
    assert len({id(who.address) for who in whos}) == 1
    assert json.dumps(twin.snapshot()) == json.dumps(engine.snapshot())


def test_a_replayed_grant_shares_the_names() -> None:
    """Grants decoded from their stored form (replication, journal) share names."""
    first = event_from_dict(json.loads(json.dumps(STORED)))
    second = event_from_dict(json.loads(json.dumps(STORED)))
    assert isinstance(first, Granted) and isinstance(second, Granted)
    assert first.who.user is second.who.user
    assert first.who.host is second.who.host
    assert first == second == granted(WHO)


def test_client_tokens_are_per_product() -> None:
    """The same token names one licence in each product, and is free again on release."""
    other = make_permit(product="Other")
    engine, _ = make_engine(make_permit(), other)
    one = take(engine, 1, client="job")
    again = take(engine, 1, client="job")
    assert again.duplicate and again.handle == one.handle
    result = engine.request(make_request(product="Other", pid=1, client="job")).result
    assert isinstance(result, Grant) and not result.duplicate
    engine.release(one.handle)
    assert not take(engine, 1, client="job").duplicate


def test_stored_forms_keep_their_order() -> None:
    """A grant's dict form is byte for byte what it always was, requester fields in order."""
    assert list(requester_dict(WHO)) == list(REQUESTER_FIELDS)
    assert json.dumps(granted(WHO).to_dict()) == json.dumps(STORED)


def test_update_order_follows_updates_and_releases() -> None:
    """GRAB takes back the least recently updated, whatever order they were granted in."""
    engine, clock = make_engine(make_permit(floating_count=3))
    handles = [take(engine, pid).handle for pid in (1, 2, 3)]
    clock.advance(60)
    engine.update(handles[0])
    engine.release(handles[1])
    clock.advance(10_000)  # past the crashout time of every holder
    engine.update(handles[0])
    outcome = engine.request(make_request(pid=4))
    revoked = [event.handle for event in outcome.events if isinstance(event, Revoked)]
    assert revoked == [handles[2]]


def test_requester_dict_is_the_requester() -> None:
    """requester_dict spells out every field of the record."""
    who = Requester(user="u", host="h", address="10.0.0.2", pid=7)
    assert requester_dict(who) == {name: getattr(who, name) for name in REQUESTER_FIELDS}
