"""Engine: REQUEST / UPDATE / RELEASE / QUERY / USERS and every status they can answer."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
from typing import Any

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine, local_date
from hqnlsd.licensing.events import Granted, Released, Revoked, Updated
from hqnlsd.licensing.results import (
    Denied,
    Grant,
    LicenceRequest,
    QueryAnswer,
    ReleaseAck,
    UpdateAck,
)
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.status import Status

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
DAY = 24 * 60 * 60.0


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (tests must not depend on the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


def make_permit(**changes: Any) -> ProductPermit:
    """A product permit: 3 floating licences, GRAB + UVIS, valid 2026-2030."""
    values: dict[str, Any] = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        policy=int(Policy.GRAB | Policy.UVIS),
        node_count=0,
        floating_count=3,
        start=datetime.date(2026, 1, 1),
        expiry=datetime.date(2030, 12, 31),
        update_minutes=5,
        data=(1, 2, 3, 4),
        locked_nodes=(),
    )
    values.update(changes)
    return ProductPermit(**values)


def make_engine(*permits: ProductPermit) -> tuple[Engine, Clock]:
    """An engine on a task.Clock at NOW with predictable handles h1, h2, ..."""
    clock = Clock()
    clock.advance(NOW)
    counter = itertools.count(1)
    engine = Engine(clock, lambda: f"h{next(counter)}", today=utc_day)
    engine.load_products(permits or (make_permit(),))
    return engine, clock


def make_request(**changes: Any) -> LicenceRequest:
    """A valid request for the default permit from 10.0.0.1."""
    values: dict[str, Any] = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        user="alice",
        host="alpha",
        pid=100,
        address="10.0.0.1",
    )
    values.update(changes)
    return LicenceRequest(**values)


def granted(engine: Engine, **changes: Any) -> Grant:
    """Request and insist on a grant."""
    result = engine.request(make_request(**changes)).result
    assert isinstance(result, Grant), result
    return result


def denied(engine: Engine, **changes: Any) -> Denied:
    """Request and insist on a denial."""
    result = engine.request(make_request(**changes)).result
    assert isinstance(result, Denied), result
    return result


# -- granting ---------------------------------------------------------------------


def test_grant_carries_everything_the_reply_needs() -> None:
    """A grant has the handle, index, period in seconds, type, access, data and dates."""
    engine, _ = make_engine()
    outcome = engine.request(make_request())
    grant = outcome.result
    assert isinstance(grant, Grant)
    assert grant.handle == "h1"
    assert grant.indices == (1,)
    assert grant.period == 300
    assert grant.type == "floating"
    assert grant.access == 8
    assert grant.data == (1, 2, 3, 4)
    assert (grant.start, grant.expiry) == (datetime.date(2026, 1, 1), datetime.date(2030, 12, 31))
    assert grant.duplicate is False
    assert [type(event) for event in outcome.events] == [Granted]
    event = outcome.events[0]
    assert isinstance(event, Granted)
    assert (event.who.user, event.who.host, event.who.address, event.who.pid, event.at) == (
        "alice",
        "alpha",
        "10.0.0.1",
        100,
        NOW,
    )


def test_indices_are_lowest_free_first_and_reused_after_release() -> None:
    """Licences are numbered 1..total; a released index is the next one handed out."""
    engine, _ = make_engine()
    first, second, third = (granted(engine, pid=pid) for pid in (1, 2, 3))
    assert [g.indices for g in (first, second, third)] == [(1,), (2,), (3,)]
    assert isinstance(engine.release(second.handle).result, ReleaseAck)
    assert granted(engine, pid=4).indices == (2,)


def test_units_take_several_licences_of_one_pool() -> None:
    """units=N takes N indices under one handle; they all come back on release."""
    engine, _ = make_engine(make_permit(floating_count=5))
    grant = granted(engine, units=3)
    assert grant.indices == (1, 2, 3)
    assert engine.status()[0].floating_used == 3
    engine.release(grant.handle)
    assert engine.status()[0].floating_used == 0


def test_nolicences_when_all_are_held() -> None:
    """When every licence is held the request is refused with NOLICENCES."""
    engine, _ = make_engine()
    for pid in range(3):
        granted(engine, pid=pid)
    refusal = denied(engine, pid=9)
    assert refusal.status is Status.NOLICENCES
    assert "3 floating licences" in refusal.message


def test_nolicences_when_units_exceed_what_is_free() -> None:
    """Units that the pool could give, but not now, are NOLICENCES."""
    engine, _ = make_engine()
    granted(engine)
    assert denied(engine, units=3).status is Status.NOLICENCES


def test_toomanylicences_when_units_exceed_the_pool() -> None:
    """Units the pool can never give are TOOMANYLICENCES, with the most possible."""
    engine, _ = make_engine()
    refusal = denied(engine, units=4)
    assert refusal.status is Status.TOOMANYLICENCES
    assert "at most 3" in refusal.message


def test_nolicences_for_a_host_that_is_not_a_locked_node() -> None:
    """Only node-locked licences and a host not listed: NOLICENCES saying why."""
    locked = (HostId(ipaddress.IPv4Address("10.0.0.9"), 0),)
    engine, _ = make_engine(make_permit(node_count=1, floating_count=0, locked_nodes=locked))
    refusal = denied(engine)
    assert refusal.status is Status.NOLICENCES
    assert "not one of its locked nodes" in refusal.message


# -- product, version, dates ---------------------------------------------------------


def test_unknown_product_is_badproduct() -> None:
    """A product not served here is BADPRODUCT."""
    engine, _ = make_engine()
    refusal = denied(engine, product="CLIM")
    assert refusal.status is Status.BADPRODUCT
    assert "CLIM" in refusal.message


def test_other_version_is_badproduct_naming_the_served_version() -> None:
    """Only one version is served; asking for another names the served one."""
    engine, _ = make_engine()
    refusal = denied(engine, version="7.1")
    assert refusal.status is Status.BADPRODUCT
    assert "serves version 8.0" in refusal.message


def test_before_start_is_permitoutofdate() -> None:
    """Before the start date: PERMITOUTOFDATE."""
    engine, _ = make_engine(make_permit(start=datetime.date(2027, 6, 16)))
    refusal = denied(engine)
    assert refusal.status is Status.PERMITOUTOFDATE
    assert "2027-06-16" in refusal.message


def test_start_and_expiry_days_are_included() -> None:
    """The permit is valid on its start day and on its expiry day."""
    day = datetime.date(2027, 6, 15)
    engine, _ = make_engine(make_permit(start=day, expiry=day))
    granted(engine)


def test_after_expiry_is_permitexpired() -> None:
    """After the expiry date: PERMITEXPIRED; so is an UPDATE once the date has passed."""
    engine, clock = make_engine(make_permit(expiry=datetime.date(2027, 6, 15)))
    grant = granted(engine)
    clock.advance(DAY)
    assert denied(engine, pid=2).status is Status.PERMITEXPIRED
    update = engine.update(grant.handle)
    assert isinstance(update.result, Denied)
    assert update.result.status is Status.PERMITEXPIRED
    assert update.events == ()


def test_date_is_the_local_date_by_default() -> None:
    """Without an injected ``today`` the engine uses the local date of the clock."""
    clock = Clock()
    clock.advance(NOW)
    engine = Engine(clock)
    assert engine._today is local_date
    assert local_date(NOW) == datetime.date.fromtimestamp(NOW)


# -- ILLEGAL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"units": 0}, "units"),
        ({"units": -2}, "units"),
        ({"units": 70000}, "units"),
        ({"pid": -1}, "pid"),
        ({"uid": -5}, "uid"),
        ({"hostid": 1 << 32}, "hostid"),
        ({"address": "not-an-address"}, "address"),
        ({"address": "::1"}, "address"),
        ({"user": ""}, "user"),
        ({"host": "a\nb"}, "host"),
        ({"client": ""}, "client"),
        ({"user": "x" * 300}, "user"),
    ],
)
def test_nonsense_is_illegal(changes: dict[str, Any], word: str) -> None:
    """Out-of-range or malformed values are ILLEGAL, with a message naming the field."""
    engine, _ = make_engine()
    outcome = engine.request(make_request(**changes))
    assert isinstance(outcome.result, Denied)
    assert outcome.result.status is Status.ILLEGAL
    assert word in outcome.result.message
    assert outcome.events == ()


def test_address_may_be_an_ipv4address_object() -> None:
    """The peer address may be given as an IPv4Address; it is recorded as text."""
    engine, _ = make_engine()
    outcome = engine.request(make_request(address=ipaddress.IPv4Address("10.1.2.3")))
    event = outcome.events[0]
    assert isinstance(event, Granted)
    assert event.who.address == "10.1.2.3"


# -- idempotent REQUEST -------------------------------------------------------------------


def test_same_client_token_returns_the_same_handle() -> None:
    """A retried REQUEST with the same client token gets the same handle, flagged duplicate."""
    engine, clock = make_engine()
    first = granted(engine, client="tok-1")
    clock.advance(10)
    outcome = engine.request(make_request(client="tok-1"))
    again = outcome.result
    assert isinstance(again, Grant)
    assert again.handle == first.handle
    assert again.indices == first.indices
    assert again.duplicate is True
    assert outcome.events == (Updated(first.handle, NOW + 10),)
    assert engine.status()[0].floating_used == 1


def test_client_token_is_free_again_after_release() -> None:
    """Once released, the token may take a new licence."""
    engine, _ = make_engine()
    first = granted(engine, client="tok")
    engine.release(first.handle)
    second = granted(engine, client="tok")
    assert second.handle != first.handle
    assert second.duplicate is False


def test_different_tokens_take_different_licences() -> None:
    """Two tokens, two licences."""
    engine, _ = make_engine()
    assert granted(engine, client="a").handle != granted(engine, client="b").handle


def test_duplicate_request_does_not_need_a_free_licence() -> None:
    """A retry is answered even when the pool is now full."""
    engine, _ = make_engine(make_permit(floating_count=1))
    first = granted(engine, client="tok")
    assert granted(engine, client="tok").handle == first.handle


@pytest.mark.parametrize(
    "other",
    [
        {"user": "mallory"},
        {"host": "beta"},
        {"address": "10.0.0.2"},
        {"pid": 666},
        {"uid": 1001},
        {"group": "guests"},
        {"hostid": 0x1234},
        {"user": "u2", "host": "h2", "pid": 666},
    ],
)
def test_client_token_is_bound_to_its_holder(other: dict[str, Any]) -> None:
    """The same token from another user, host, address, pid, uid, group or hostid is
    refused (TOKEN_HELD), never answered with the holder's handle, and changes nothing.

    Failed before issue 12: ``client=shared-token`` from another user, host and pid got
    the first holder's handle with ``duplicate=1`` (and refreshed its UPDATE time).
    """
    engine, clock = make_engine()
    owner = dict(uid=1000, group="staff", hostid=0x5678)
    first = granted(engine, client="shared-token", **owner)
    before = engine.snapshot()
    clock.advance(10)
    outcome = engine.request(make_request(client="shared-token", **{**owner, **other}))
    refusal = outcome.result
    assert isinstance(refusal, Denied), refusal
    assert refusal.status is Status.TOKEN_HELD
    assert "shared-token" in refusal.message and "another client" in refusal.message
    assert first.handle not in refusal.message
    assert outcome.events == ()
    assert engine.snapshot() == before
    # The holder itself still gets its handle back.
    again = granted(engine, client="shared-token", **owner)
    assert again.handle == first.handle and again.duplicate


def test_client_token_binding_compares_the_ip_address_only() -> None:
    """A reconnecting client (same user, host, pid and IP address; a new connection)
    still gets its handle: only the address's IP is compared, as the engine sees it."""
    engine, _ = make_engine()
    first = granted(engine, client="tok", address=ipaddress.IPv4Address("10.0.0.1"))
    again = granted(engine, client="tok", address="10.0.0.1")
    assert again.handle == first.handle and again.duplicate


def test_client_token_binding_holds_on_a_replica() -> None:
    """A backup that applied the primary's events (a domain after failover) decides the
    same: the holder's retry gets its handle, another client's reuse TOKEN_HELD."""
    primary, _ = make_engine()
    outcome = primary.request(make_request(client="tok", address="10.0.0.7"))
    assert isinstance(outcome.result, Grant)
    backup, _ = make_engine()
    for event in outcome.events:
        backup.apply(event)
    stranger = backup.request(make_request(client="tok", address="10.0.0.8")).result
    assert isinstance(stranger, Denied) and stranger.status is Status.TOKEN_HELD
    again = backup.request(make_request(client="tok", address="10.0.0.7")).result
    assert isinstance(again, Grant) and again.handle == outcome.result.handle and again.duplicate


# -- UPDATE / RELEASE / handles ---------------------------------------------------------------


def test_update_refreshes_and_returns_the_period() -> None:
    """UPDATE answers the period and records the time."""
    engine, clock = make_engine()
    grant = granted(engine)
    clock.advance(120)
    outcome = engine.update(grant.handle)
    assert outcome.result == UpdateAck(grant.handle, 300)
    assert outcome.events == (Updated(grant.handle, NOW + 120),)
    holders = engine.holders("Harlequin", "LispWorks")
    assert not isinstance(holders, Denied)
    assert holders[0].last_update == NOW + 120
    assert holders[0].granted == NOW


def test_unknown_handle_is_badhandle() -> None:
    """UPDATE, RELEASE and QUERY of a handle never given: BADHANDLE."""
    engine, _ = make_engine()
    for result in (
        engine.update("nope").result,
        engine.release("nope").result,
        engine.query("nope", "data"),
    ):
        assert isinstance(result, Denied)
        assert result.status is Status.BADHANDLE


def test_released_handle_is_badhandle() -> None:
    """After RELEASE the handle is unknown (the holder gave it back itself)."""
    engine, _ = make_engine()
    grant = granted(engine)
    outcome = engine.release(grant.handle)
    assert outcome.events == (Released(grant.handle, NOW),)
    for result in (engine.update(grant.handle).result, engine.release(grant.handle).result):
        assert isinstance(result, Denied)
        assert result.status is Status.BADHANDLE


def test_killed_handle_is_lostlicence_then_forgotten_after_a_day() -> None:
    """A taken-back handle is a tombstone: LOSTLICENCE, until purged after 24 h."""
    engine, clock = make_engine()
    grant = granted(engine)
    kill = engine.kill(grant.handle)
    assert kill.events == (Revoked(grant.handle, "killed", NOW),)
    for result in (
        engine.update(grant.handle).result,
        engine.release(grant.handle).result,
        engine.query(grant.handle, "data"),
    ):
        assert isinstance(result, Denied)
        assert result.status is Status.LOSTLICENCE
        assert "killed" in result.message
    clock.advance(DAY - 1)
    assert engine.expire().result == 0
    clock.advance(2)
    expired = engine.expire()
    assert expired.result == 1
    assert len(expired.events) == 1
    result = engine.update(grant.handle).result
    assert isinstance(result, Denied)
    assert result.status is Status.BADHANDLE


# -- QUERY ----------------------------------------------------------------------------------


def test_query_kinds() -> None:
    """QUERY answers data, period, context, policy and dates; other kinds are ILLEGAL."""
    engine, _ = make_engine()
    handle = granted(engine).handle
    assert engine.query(handle, "data") == QueryAnswer("data", {"data": (1, 2, 3, 4)})
    assert engine.query(handle, "PERIOD") == QueryAnswer("period", {"period": 300})
    assert engine.query(handle, "context") == QueryAnswer(
        "context", {"access": 8, "locked": False, "locked_node": False}
    )
    assert engine.query(handle, "policy") == QueryAnswer(
        "policy", {"policy": 0x41, "flags": "GRAB UVIS"}
    )
    assert engine.query(handle, "dates") == QueryAnswer(
        "dates", {"start": datetime.date(2026, 1, 1), "expiry": datetime.date(2030, 12, 31)}
    )
    wrong = engine.query(handle, "colour")
    assert isinstance(wrong, Denied)
    assert wrong.status is Status.ILLEGAL
    assert "data, period, context, policy, dates" in wrong.message


# -- USERS ----------------------------------------------------------------------------------


def test_users_lists_holders_without_handles_when_uvis() -> None:
    """UVIS on: applications see who holds licences, but never the handles."""
    engine, _ = make_engine()
    granted(engine, user="alice", host="alpha")
    granted(engine, user="bob", host="beta", address="10.0.0.2", pid=7)
    users = engine.users("Harlequin", "LispWorks", "8.0")
    assert not isinstance(users, Denied)
    assert [(u.who.user, u.who.host, u.who.address, u.who.pid, u.handle) for u in users] == [
        ("alice", "alpha", "10.0.0.1", 100, None),
        ("bob", "beta", "10.0.0.2", 7, None),
    ]


def test_users_off_without_uvis() -> None:
    """UVIS off: USERS_OFF."""
    engine, _ = make_engine(make_permit(policy=int(Policy.GRAB)))
    refusal = engine.users("Harlequin", "LispWorks", "8.0")
    assert isinstance(refusal, Denied)
    assert refusal.status is Status.USERS_OFF


def test_users_of_unknown_product_or_version_is_badproduct() -> None:
    """USERS for a product or version not served: BADPRODUCT."""
    engine, _ = make_engine()
    for args in (("Harlequin", "CLIM", "8.0"), ("Harlequin", "LispWorks", "9.9")):
        refusal = engine.users(*args)
        assert isinstance(refusal, Denied)
        assert refusal.status is Status.BADPRODUCT


def test_status_counts_totals_and_use() -> None:
    """The product listing shows totals and what is used, locked and floating."""
    locked = (HostId(ipaddress.IPv4Address("10.0.0.9"), 0),)
    engine, _ = make_engine(make_permit(node_count=1, floating_count=2, locked_nodes=locked))
    granted(engine, address="10.0.0.9")
    granted(engine)
    (status,) = engine.status()
    assert (status.total, status.used, status.locked_used, status.floating_used) == (3, 2, 1, 1)
    assert status.locked_nodes == (("10.0.0.9", 0),)
    assert status.crashout == 900.0
    assert status.timeout == 3600.0
    assert engine.held_count() == 2


def test_handle_collisions_are_avoided() -> None:
    """A handle generator that repeats itself never gives one handle to two holders."""
    clock = Clock()
    clock.advance(NOW)
    values = iter(["same", "same", "same", "other"])
    engine = Engine(clock, lambda: next(values), today=utc_day)
    engine.load_products([make_permit()])
    assert granted(engine).handle == "same"
    assert granted(engine, pid=2).handle == "other"


def test_handle_generator_stuck_is_internal() -> None:
    """A generator that only repeats a held handle gives INTERNAL, not a shared handle."""
    clock = Clock()
    clock.advance(NOW)
    engine = Engine(clock, lambda: "same", today=utc_day)
    engine.load_products([make_permit()])
    granted(engine)
    outcome = engine.request(make_request(pid=2))
    assert isinstance(outcome.result, Denied)
    assert outcome.result.status is Status.INTERNAL
    assert outcome.events == ()


class SteppedClock:
    """A wall clock an administrator can step back."""

    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        """The current (settable) time."""
        return self.now


def test_engine_time_never_runs_backwards() -> None:
    """A wall clock stepped back is treated as no time passing: events keep their order."""
    clock = SteppedClock(NOW)
    engine = Engine(clock, today=utc_day)
    engine.load_products([make_permit()])
    first = engine.request(make_request()).result
    assert isinstance(first, Grant)
    clock.now = NOW - 3600
    outcome = engine.update(first.handle)
    assert outcome.events == (Updated(first.handle, NOW),)
    second = engine.request(make_request(pid=2))
    event = second.events[0]
    assert isinstance(event, Granted)
    assert event.at == NOW
    clock.now = NOW + 5
    assert engine.update(first.handle).events == (Updated(first.handle, NOW + 5),)
    restored = Engine(SteppedClock(NOW - 7200), today=utc_day)
    restored.restore(engine.snapshot())
    assert restored.release(first.handle).events == (Released(first.handle, NOW + 5),)
