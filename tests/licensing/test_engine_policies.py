"""Engine: every policy flag (GRAB ONPN TIML LKNL LKNF LKPR USRL ACCL), exclusion, locked nodes.

UVIS is covered with USERS in test_engine_requests.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
from typing import Any

from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Revoked
from hqnlsd.licensing.results import Denied, Grant, LicenceRequest, UpdateAck
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.status import Status

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
KEY = ("Harlequin", "LispWorks")
LOCKED_ADDRESS = "10.0.0.9"


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (tests must not depend on the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


def node(address: str, unique_id: int = 0) -> HostId:
    """A locked-node listing."""
    return HostId(ipaddress.IPv4Address(address), unique_id)


def make_engine(policy: Policy, **changes: Any) -> tuple[Engine, Clock]:
    """An engine serving one product with ``policy`` (3 floating unless changed)."""
    values: dict[str, Any] = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        policy=int(policy),
        node_count=0,
        floating_count=3,
        start=datetime.date(2026, 1, 1),
        expiry=datetime.date(2030, 12, 31),
        update_minutes=5,
        data=(),
        locked_nodes=(),
    )
    values.update(changes)
    clock = Clock()
    clock.advance(NOW)
    counter = itertools.count(1)
    engine = Engine(clock, lambda: f"h{next(counter)}", today=utc_day)
    engine.load_products([ProductPermit(**values)])
    return engine, clock


def ask(engine: Engine, address: str = "10.0.0.1", **changes: Any) -> Grant | Denied:
    """The result of a request from ``address``."""
    values: dict[str, Any] = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        user="alice",
        host="alpha",
        pid=100,
        address=address,
    )
    values.update(changes)
    return engine.request(LicenceRequest(**values)).result


def grant(engine: Engine, address: str = "10.0.0.1", **changes: Any) -> Grant:
    """Request and insist on a grant."""
    result = ask(engine, address, **changes)
    assert isinstance(result, Grant), result
    return result


def refusal(engine: Engine, address: str = "10.0.0.1", **changes: Any) -> Denied:
    """Request and insist on a denial."""
    result = ask(engine, address, **changes)
    assert isinstance(result, Denied), result
    return result


def lost(engine: Engine, handle: str) -> str:
    """Insist that UPDATE says LOSTLICENCE; return its message."""
    result = engine.update(handle).result
    assert isinstance(result, Denied), result
    assert result.status is Status.LOSTLICENCE
    return result.message


def is_alive(engine: Engine, handle: str) -> bool:
    """True if UPDATE of ``handle`` is accepted."""
    return isinstance(engine.update(handle).result, UpdateAck)


def used(engine: Engine) -> int:
    """Licences held of the product."""
    return engine.status()[0].used


# -- GRAB -------------------------------------------------------------------------------


def test_grab_frees_crashed_licences_at_the_next_request() -> None:
    """Not updated within crashout (3 x 5 min): freed at the next request, holder LOSTLICENCE."""
    engine, clock = make_engine(Policy.GRAB, floating_count=1)
    crashed = grant(engine)
    clock.advance(900)
    assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES  # exactly crashout: kept
    clock.advance(1)
    outcome = engine.request(
        LicenceRequest("Harlequin", "LispWorks", "8.0", "bob", "beta", 1, "10.0.0.2")
    )
    assert isinstance(outcome.result, Grant)
    assert outcome.events[0] == Revoked(crashed.handle, "crashout", NOW + 901)
    assert "crashout" in lost(engine, crashed.handle)


def test_grab_frees_only_at_a_request_for_that_product() -> None:
    """Time alone frees nothing: a late UPDATE before any request still keeps the licence."""
    engine, clock = make_engine(Policy.GRAB, floating_count=1)
    late = grant(engine)
    clock.advance(5000)
    assert is_alive(engine, late.handle)
    assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES


def test_updates_keep_a_licence_from_crashing_out() -> None:
    """A holder that updates every period is never crashed out."""
    engine, clock = make_engine(Policy.GRAB, floating_count=1)
    alive = grant(engine)
    for _ in range(10):
        clock.advance(300)
        engine.update(alive.handle)
        assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES
    assert used(engine) == 1


def test_grab_frees_every_stale_licence_but_not_fresh_ones() -> None:
    """All licences past crashout go at once; recently updated ones stay."""
    engine, clock = make_engine(Policy.GRAB, floating_count=3)
    stale1, stale2, fresh = (grant(engine, f"10.0.0.{n}") for n in (1, 2, 3))
    clock.advance(600)
    engine.update(fresh.handle)
    clock.advance(400)
    outcome = engine.request(
        LicenceRequest("Harlequin", "LispWorks", "8.0", "bob", "beta", 1, "10.0.0.4")
    )
    revoked = {event.handle for event in outcome.events if isinstance(event, Revoked)}
    assert revoked == {stale1.handle, stale2.handle}
    assert used(engine) == 2


def test_without_grab_crashed_licences_stay() -> None:
    """GRAB off: a silent holder keeps its licence forever."""
    engine, clock = make_engine(Policy(0), floating_count=1)
    silent = grant(engine)
    clock.advance(10 * 24 * 3600)
    assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES
    assert is_alive(engine, silent.handle)


def test_admin_crashout_replaces_the_default() -> None:
    """hqn_lsa crashout: a shorter crashout frees sooner."""
    engine, clock = make_engine(Policy.GRAB, floating_count=1)
    engine.set_crashout(*KEY, 60)
    crashed = grant(engine)
    clock.advance(61)
    grant(engine, "10.0.0.2")
    lost(engine, crashed.handle)


def test_resume_gives_holders_a_fresh_start_after_downtime() -> None:
    """After a restart, ``resume`` counts everyone as updated now (no mass crashout)."""
    engine, clock = make_engine(Policy.GRAB, floating_count=1)
    holder = grant(engine)
    clock.advance(3600)  # the daemon was down for an hour
    outcome = engine.resume()
    assert outcome.result == 1
    assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES
    assert is_alive(engine, holder.handle)


# -- ONPN -------------------------------------------------------------------------------


def test_onpn_one_floating_licence_per_machine() -> None:
    """ONPN: a second floating licence for the same address is TOOMANYLICENCES."""
    engine, _ = make_engine(Policy.ONPN)
    grant(engine)
    assert refusal(engine, pid=2).status is Status.TOOMANYLICENCES
    grant(engine, "10.0.0.2")
    assert refusal(engine, units=2, address="10.0.0.3").status is Status.TOOMANYLICENCES


def test_without_onpn_a_machine_may_hold_several() -> None:
    """ONPN off: one machine may hold all the licences."""
    engine, _ = make_engine(Policy(0))
    for pid in range(3):
        grant(engine, pid=pid)


def test_onpn_locked_node_one_licence_per_listing() -> None:
    """ONPN: a host listed twice gets two locked licences, then one floating, then no more."""
    listed = (node(LOCKED_ADDRESS), node(LOCKED_ADDRESS))
    engine, _ = make_engine(Policy.ONPN, node_count=3, floating_count=2, locked_nodes=listed)
    types = [grant(engine, LOCKED_ADDRESS, pid=pid).type for pid in range(3)]
    assert types == ["locked", "locked", "floating"]
    assert refusal(engine, LOCKED_ADDRESS, pid=9).status is Status.TOOMANYLICENCES


# -- TIML / LKNL ------------------------------------------------------------------------------


def test_timl_reclaims_the_oldest_licence_held_past_the_timeout() -> None:
    """TIML: with nothing free, the oldest licence held longer than the timeout moves."""
    engine, clock = make_engine(Policy.TIML, floating_count=2)
    oldest = grant(engine, "10.0.0.1")
    clock.advance(60)
    newer = grant(engine, "10.0.0.2")
    clock.advance(3600)  # both past the 60-minute timeout now
    taken = grant(engine, "10.0.0.3")
    assert taken.indices == oldest.indices
    assert "timeout" in lost(engine, oldest.handle)
    assert is_alive(engine, newer.handle)


def test_timl_does_not_reclaim_before_the_timeout() -> None:
    """TIML: nobody past the timeout, so NOLICENCES."""
    engine, clock = make_engine(Policy.TIML, floating_count=1)
    grant(engine)
    clock.advance(3599)
    assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES


def test_admin_timeout_replaces_the_default() -> None:
    """hqn_lsa timeout: a shorter timeout lets TIML reclaim sooner."""
    engine, clock = make_engine(Policy.TIML, floating_count=1)
    engine.set_timeout(*KEY, 120)
    held = grant(engine)
    clock.advance(121)
    grant(engine, "10.0.0.2")
    lost(engine, held.handle)


def test_timl_applies_to_locked_nodes_too() -> None:
    """TIML without LKNL: a licence held on a locked node can be reclaimed."""
    listed = (node(LOCKED_ADDRESS),)
    engine, clock = make_engine(Policy.TIML, floating_count=1, locked_nodes=listed)
    on_node = grant(engine, LOCKED_ADDRESS)
    assert on_node.type == "floating"
    clock.advance(3601)
    grant(engine, "10.0.0.2")
    lost(engine, on_node.handle)


def test_lknl_exempts_locked_nodes() -> None:
    """LKNL: the oldest licence past the timeout NOT held on a locked node moves."""
    listed = (node(LOCKED_ADDRESS),)
    engine, clock = make_engine(Policy.LKNL, floating_count=2, locked_nodes=listed)
    on_node = grant(engine, LOCKED_ADDRESS)
    clock.advance(10)
    off_node = grant(engine, "10.0.0.2")
    clock.advance(3601)
    third = grant(engine, "10.0.0.3")
    lost(engine, off_node.handle)
    assert is_alive(engine, on_node.handle)
    clock.advance(3601)  # now the on-node holder and the third are both past the timeout
    grant(engine, "10.0.0.4")
    lost(engine, third.handle)
    assert is_alive(engine, on_node.handle)
    assert used(engine) == 2


def test_lknl_with_only_locked_node_holders_gives_nolicences() -> None:
    """LKNL: licences held on locked nodes are never reclaimed for the timeout."""
    listed = (node(LOCKED_ADDRESS),)
    engine, clock = make_engine(Policy.LKNL, floating_count=1, locked_nodes=listed)
    grant(engine, LOCKED_ADDRESS)
    clock.advance(10 * 3600)
    assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES


# -- LKNF --------------------------------------------------------------------------------------


def test_locked_node_takes_a_locked_licence_first_then_floating() -> None:
    """A locked node gets node-locked licences first, then floating ones."""
    engine, _ = make_engine(Policy(0), node_count=1, floating_count=1,
                            locked_nodes=(node(LOCKED_ADDRESS),))
    first = grant(engine, LOCKED_ADDRESS)
    second = grant(engine, LOCKED_ADDRESS, pid=2)
    assert (first.type, first.indices) == ("locked", (1,))
    assert (second.type, second.indices) == ("floating", (2,))


def test_lknf_keeps_locked_nodes_off_floating_licences() -> None:
    """LKNF: a locked node with its locked licences in use gets LOCKSNOFLOAT."""
    engine, _ = make_engine(Policy.LKNF, node_count=1, floating_count=2,
                            locked_nodes=(node(LOCKED_ADDRESS),))
    assert grant(engine, LOCKED_ADDRESS).type == "locked"
    result = refusal(engine, LOCKED_ADDRESS, pid=2)
    assert result.status is Status.LOCKSNOFLOAT
    assert grant(engine, "10.0.0.2").type == "floating"  # others still float


def test_lknf_locked_node_without_locked_licences() -> None:
    """LKNF with no node-locked licences at all: a locked node can never get one."""
    engine, _ = make_engine(Policy.LKNF, node_count=0, floating_count=2,
                            locked_nodes=(node(LOCKED_ADDRESS),))
    assert refusal(engine, LOCKED_ADDRESS).status is Status.LOCKSNOFLOAT


def test_locked_node_matched_on_unique_id_when_listed_non_zero() -> None:
    """A listing with a unique id matches only a client sending that id."""
    engine, _ = make_engine(Policy.LKNF, node_count=1, floating_count=1,
                            locked_nodes=(node(LOCKED_ADDRESS, 0x1234),))
    assert grant(engine, LOCKED_ADDRESS, hostid=0x9999).type == "floating"
    assert grant(engine, LOCKED_ADDRESS, hostid=0x1234, pid=2).type == "locked"


def test_locked_licences_are_only_for_locked_nodes() -> None:
    """Other hosts never get a node-locked licence, even if it is free."""
    engine, _ = make_engine(Policy(0), node_count=2, floating_count=1,
                            locked_nodes=(node(LOCKED_ADDRESS),))
    assert grant(engine).type == "floating"
    assert refusal(engine, pid=2).status is Status.NOLICENCES


# -- LKPR ---------------------------------------------------------------------------------------


def test_lkpr_locked_node_reclaims_oldest_floating_held_off_nodes() -> None:
    """LKPR: a locked node with nothing free takes the oldest off-node floating licence."""
    listed = (node(LOCKED_ADDRESS), node("10.0.0.8"))
    engine, clock = make_engine(Policy.LKPR, node_count=1, floating_count=2, locked_nodes=listed)
    grant(engine, "10.0.0.8")  # locked licence
    clock.advance(1)
    on_node_floating = grant(engine, "10.0.0.8", pid=2)  # a locked node on floating: immune
    clock.advance(1)
    off_node = grant(engine, "10.0.0.1")
    taken = grant(engine, LOCKED_ADDRESS)
    assert taken.type == "floating"
    assert taken.indices == off_node.indices
    assert "locked-priority" in lost(engine, off_node.handle)
    assert is_alive(engine, on_node_floating.handle)


def test_lkpr_gives_no_priority_to_other_hosts() -> None:
    """LKPR: a host that is not a locked node gets NOLICENCES as usual."""
    engine, _ = make_engine(Policy.LKPR, floating_count=1, locked_nodes=(node(LOCKED_ADDRESS),))
    grant(engine, "10.0.0.1")
    assert refusal(engine, "10.0.0.2").status is Status.NOLICENCES


def test_without_lkpr_locked_nodes_wait() -> None:
    """LKPR off: a locked node with nothing free gets NOLICENCES."""
    engine, _ = make_engine(Policy(0), floating_count=1, locked_nodes=(node(LOCKED_ADDRESS),))
    grant(engine, "10.0.0.1")
    assert refusal(engine, LOCKED_ADDRESS).status is Status.NOLICENCES


# -- USRL ------------------------------------------------------------------------------------------


def test_usrl_named_user_reclaims_oldest_licence_of_a_non_named_user() -> None:
    """USRL: a named user with nothing free takes the oldest licence of a user not named."""
    engine, clock = make_engine(Policy.USRL, floating_count=3)
    engine.add_named_user(*KEY, "boss")
    engine.add_named_user(*KEY, "deputy")
    named = grant(engine, user="deputy")
    clock.advance(1)
    oldest_plain = grant(engine, "10.0.0.2", user="carol")
    clock.advance(1)
    grant(engine, "10.0.0.3", user="dave")
    assert refusal(engine, "10.0.0.4", user="erin").status is Status.NOLICENCES
    taken = grant(engine, "10.0.0.5", user="boss")
    assert taken.indices == oldest_plain.indices
    assert "named-user" in lost(engine, oldest_plain.handle)
    assert is_alive(engine, named.handle)


def test_usrl_never_reclaims_from_named_users() -> None:
    """USRL: when every holder is named, a named user gets NOLICENCES."""
    engine, _ = make_engine(Policy.USRL, floating_count=1)
    engine.add_named_user(*KEY, "boss")
    engine.add_named_user(*KEY, "deputy")
    grant(engine, user="deputy")
    assert refusal(engine, "10.0.0.2", user="boss").status is Status.NOLICENCES


def test_named_users_mean_nothing_without_usrl() -> None:
    """USRL off: naming a user gives no priority."""
    engine, _ = make_engine(Policy(0), floating_count=1)
    engine.add_named_user(*KEY, "boss")
    grant(engine, user="carol")
    assert refusal(engine, "10.0.0.2", user="boss").status is Status.NOLICENCES


# -- ACCL ------------------------------------------------------------------------------------


def test_accl_levels_user_beats_group_default_full() -> None:
    """ACCL: user entry, else group entry, else 8; the grant carries the level."""
    engine, _ = make_engine(Policy.ACCL, floating_count=5)
    engine.set_group_access(*KEY, "students", 3)
    engine.set_user_access(*KEY, "ta", 6)
    assert grant(engine, user="nobody").access == 8
    assert grant(engine, user="sam", group="students", pid=2).access == 3
    assert grant(engine, user="ta", group="students", pid=3).access == 6


def test_accl_level_zero_is_noaccess() -> None:
    """ACCL: level 0 (by user or by group) is NOACCESS; a user entry overrides the group's 0."""
    engine, _ = make_engine(Policy.ACCL, floating_count=5)
    engine.set_user_access(*KEY, "mallory", 0)
    engine.set_group_access(*KEY, "guests", 0)
    engine.set_user_access(*KEY, "vip", 2)
    assert refusal(engine, user="mallory").status is Status.NOACCESS
    assert refusal(engine, user="gus", group="guests").status is Status.NOACCESS
    assert grant(engine, user="vip", group="guests").access == 2
    engine.remove_group_access(*KEY, "guests")
    assert grant(engine, user="gus", group="guests", pid=2).access == 8


def test_access_levels_ignored_without_accl() -> None:
    """ACCL off: everyone has full access whatever the table says."""
    engine, _ = make_engine(Policy(0))
    engine.set_user_access(*KEY, "mallory", 0)
    assert grant(engine, user="mallory").access == 8


def test_query_context_reports_access_and_locked_flag() -> None:
    """QUERY context: the access level granted and whether the licence is node-locked."""
    engine, _ = make_engine(Policy.ACCL, node_count=1, floating_count=1,
                            locked_nodes=(node(LOCKED_ADDRESS),))
    engine.set_user_access(*KEY, "ann", 4)
    handle = grant(engine, LOCKED_ADDRESS, user="ann").handle
    answer = engine.query(handle, "context")
    assert not isinstance(answer, Denied)
    assert answer.values == {"access": 4, "locked": True, "locked_node": True}


# -- excluded hosts ----------------------------------------------------------------------------


def test_excluded_host_by_name_or_address() -> None:
    """An excluded host (name in any case, or address) is EXCLUDED until readmitted."""
    engine, _ = make_engine(Policy(0))
    engine.exclude_host(*KEY, "Alpha")
    engine.exclude_host(*KEY, "10.0.0.7")
    assert refusal(engine, host="ALPHA").status is Status.EXCLUDED
    assert refusal(engine, "10.0.0.7", host="gamma").status is Status.EXCLUDED
    grant(engine, host="beta")
    engine.unexclude_host(*KEY, "alpha")
    grant(engine, host="alpha", pid=2)


# -- reclaim order ------------------------------------------------------------------------------


def test_reclaim_takes_enough_units_or_nothing() -> None:
    """A multi-unit request reclaims only if the eligible licences add up to enough."""
    engine, clock = make_engine(Policy.TIML, floating_count=3)
    old = grant(engine, "10.0.0.1")
    clock.advance(3601)
    grant(engine, "10.0.0.2", units=2)  # fresh
    assert refusal(engine, "10.0.0.3", units=2).status is Status.NOLICENCES
    assert is_alive(engine, old.handle)
    assert grant(engine, "10.0.0.3").indices == old.indices
