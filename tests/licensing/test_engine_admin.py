"""Engine: administrative changes (hqn_lsa), permit reloads and reinit."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import itertools
from typing import Any

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import (
    PolicyChanged,
    PoolsResized,
    ProductsLoaded,
    Revoked,
)
from hqnlsd.licensing.results import AdminDone, Denied, Grant, LicenceRequest, UpdateAck
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.status import Status

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
KEY = ("Harlequin", "LispWorks")


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (tests must not depend on the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


def make_permit(**changes: Any) -> ProductPermit:
    """GRAB + UVIS, 3 floating, GRAB locked by the publisher unless changed."""
    values: dict[str, Any] = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        policy=int(Policy.GRAB | Policy.UVIS) | (int(Policy.GRAB) << 16),
        node_count=0,
        floating_count=3,
        start=datetime.date(2026, 1, 1),
        expiry=datetime.date(2030, 12, 31),
        update_minutes=5,
        data=(7,),
        locked_nodes=(),
    )
    values.update(changes)
    return ProductPermit(**values)


def make_engine(*permits: ProductPermit) -> tuple[Engine, Clock]:
    """An engine on a task.Clock at NOW serving ``permits`` (default: make_permit())."""
    clock = Clock()
    clock.advance(NOW)
    counter = itertools.count(1)
    engine = Engine(clock, lambda: f"h{next(counter)}", today=utc_day)
    engine.load_products(permits or (make_permit(),))
    return engine, clock


def grant(engine: Engine, address: str = "10.0.0.1", **changes: Any) -> Grant:
    """Request and insist on a grant."""
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
    result = engine.request(LicenceRequest(**values)).result
    assert isinstance(result, Grant), result
    return result


def done(outcome: Any) -> AdminDone:
    """Insist an admin command succeeded."""
    assert isinstance(outcome.result, AdminDone), outcome.result
    assert outcome.events, "a successful admin change produces events"
    return outcome.result


def refused(outcome: Any, status: Status = Status.ILLEGAL) -> str:
    """Insist an admin command was refused with ``status`` and changed nothing."""
    assert isinstance(outcome.result, Denied), outcome.result
    assert outcome.result.status is status
    assert outcome.events == ()
    return str(outcome.result.message)


def is_lost(engine: Engine, handle: str, reason: str) -> bool:
    """True if UPDATE of ``handle`` says LOSTLICENCE for ``reason``."""
    result = engine.update(handle).result
    return (
        isinstance(result, Denied)
        and result.status is Status.LOSTLICENCE
        and reason in result.message
    )


def is_alive(engine: Engine, handle: str) -> bool:
    """True if UPDATE of ``handle`` is accepted."""
    return isinstance(engine.update(handle).result, UpdateAck)


# -- policy ------------------------------------------------------------------------------


def test_set_policy_changes_unlocked_flags() -> None:
    """hqn_lsa policy: an unlocked flag (UVIS) can be turned off; USERS then says USERS_OFF."""
    engine, _ = make_engine()
    outcome = engine.set_policy(*KEY, int(Policy.GRAB))
    done(outcome)
    assert outcome.events == (PolicyChanged("Harlequin", "LispWorks", int(Policy.GRAB)),)
    result = engine.users("Harlequin", "LispWorks", "8.0")
    assert isinstance(result, Denied)
    assert result.status is Status.USERS_OFF
    assert engine.status()[0].policy == int(Policy.GRAB) | (int(Policy.GRAB) << 16)


def test_set_policy_refuses_to_change_a_locked_flag() -> None:
    """A flag the publisher locked cannot be changed; the message names it."""
    engine, _ = make_engine()
    message = refused(engine.set_policy(*KEY, int(Policy.UVIS)))
    assert "GRAB" in message
    assert "locked by the publisher" in message
    assert engine.status()[0].policy & int(Policy.GRAB)


def test_set_policy_refuses_unknown_bits_and_products() -> None:
    """Bits outside the known flags are ILLEGAL; an unknown product is BADPRODUCT."""
    engine, _ = make_engine()
    refused(engine.set_policy(*KEY, 1 << 12))
    refused(engine.set_policy(*KEY, int(Policy.GRAB) << 16))
    refused(engine.set_policy("Harlequin", "CLIM", 1), Status.BADPRODUCT)


# -- crashout / timeout ----------------------------------------------------------------------


def test_crashout_and_timeout_settings() -> None:
    """Crashout and timeout can be set in seconds, reset to default, and must be positive."""
    engine, _ = make_engine()
    done(engine.set_crashout(*KEY, 42))
    done(engine.set_timeout(*KEY, 99))
    status = engine.status()[0]
    assert (status.crashout, status.timeout) == (42.0, 99.0)
    done(engine.set_crashout(*KEY, None))
    done(engine.set_timeout(*KEY, None))
    status = engine.status()[0]
    assert (status.crashout, status.timeout) == (900.0, 3600.0)
    refused(engine.set_crashout(*KEY, 0))
    refused(engine.set_timeout(*KEY, -5))
    refused(engine.set_timeout(*KEY, float("nan")))


# -- kill --------------------------------------------------------------------------------------


def test_kill_by_handle_and_by_index() -> None:
    """kill takes a licence back (by handle or by licence number); the holder gets LOSTLICENCE."""
    engine, _ = make_engine()
    first, second = grant(engine), grant(engine, pid=2)
    assert done(engine.kill(first.handle)).revoked == 1
    assert done(engine.kill_index(*KEY, second.indices[0])).revoked == 1
    assert is_lost(engine, first.handle, "killed")
    assert is_lost(engine, second.handle, "killed")
    refused(engine.kill_index(*KEY, 3))
    refused(engine.kill("no-such"), Status.BADHANDLE)


# -- locked nodes and pools --------------------------------------------------------------------


def test_addnode_makes_a_host_a_locked_node() -> None:
    """addnode: the host can now use node-locked licences."""
    engine, _ = make_engine(make_permit(node_count=1, floating_count=0))
    done(engine.add_node(*KEY, "10.0.0.5"))
    assert grant(engine, "10.0.0.5").type == "locked"
    assert engine.status()[0].locked_nodes == (("10.0.0.5", 0),)
    refused(engine.add_node(*KEY, "nonsense"))
    refused(engine.add_node(*KEY, "10.0.0.5", 1 << 40))


def test_rmnode_revokes_the_products_licences() -> None:
    """rmnode removes one listing and revokes every licence of the product.

    (The listing is added with addnode first: the manual lets rmnode remove only those.)"""
    engine, _ = make_engine(make_permit(node_count=1, floating_count=1))
    done(engine.add_node(*KEY, "10.0.0.5"))
    locked = grant(engine, "10.0.0.5")
    floating = grant(engine, "10.0.0.6")
    result = done(engine.remove_node(*KEY, "10.0.0.5"))
    assert result.revoked == 2
    assert is_lost(engine, locked.handle, "nodes-changed")
    assert is_lost(engine, floating.handle, "nodes-changed")
    assert engine.status()[0].locked_nodes == ()
    refused(engine.remove_node(*KEY, "10.0.0.5"))


def test_ftol_and_ltof_move_licences_between_pools_and_revoke() -> None:
    """ftol makes floating licences node-locked, ltof the reverse; both revoke the product's."""
    engine, _ = make_engine()
    held = grant(engine)
    outcome = engine.float_to_locked(*KEY, 2)
    assert done(outcome).revoked == 1
    assert outcome.events[-1] == PoolsResized("Harlequin", "LispWorks", 2, 1)
    assert is_lost(engine, held.handle, "pools-changed")
    status = engine.status()[0]
    assert (status.node_count, status.floating_count) == (2, 1)
    assert grant(engine).indices == (3,)  # floating now numbered after the 2 locked
    refused(engine.float_to_locked(*KEY, 2))
    done(engine.locked_to_float(*KEY, 2))
    status = engine.status()[0]
    assert (status.node_count, status.floating_count, status.used) == (0, 3, 0)
    refused(engine.locked_to_float(*KEY, 1))
    refused(engine.float_to_locked(*KEY, 0))


# -- hosts, users, access ------------------------------------------------------------------------


def test_host_and_user_lists_refuse_nonsense() -> None:
    """Removing what is not there, bad names and bad levels are ILLEGAL."""
    engine, _ = make_engine()
    refused(engine.unexclude_host(*KEY, "nowhere"))
    refused(engine.exclude_host(*KEY, "   "))
    refused(engine.remove_named_user(*KEY, "nobody"))
    refused(engine.add_named_user(*KEY, ""))
    refused(engine.set_user_access(*KEY, "ann", 9))
    refused(engine.set_group_access(*KEY, "staff", -1))
    refused(engine.remove_user_access(*KEY, "ann"))
    refused(engine.remove_group_access(*KEY, "staff"))


def test_settings_are_listed() -> None:
    """Excluded hosts, named users and access levels appear in the product status."""
    engine, _ = make_engine()
    done(engine.exclude_host(*KEY, "Bad.Host"))
    done(engine.add_named_user(*KEY, "boss"))
    done(engine.set_user_access(*KEY, "ann", 3))
    done(engine.set_group_access(*KEY, "staff", 5))
    status = engine.status()[0]
    assert status.excluded == ("bad.host",)
    assert status.named_users == ("boss",)
    assert status.user_access == (("ann", 3),)
    assert status.group_access == (("staff", 5),)
    done(engine.remove_named_user(*KEY, "boss"))
    done(engine.remove_user_access(*KEY, "ann"))
    status = engine.status()[0]
    assert (status.named_users, status.user_access) == ((), ())


# -- reinit and reload -----------------------------------------------------------------------------


def test_reinit_revokes_everything() -> None:
    """reinit revokes every licence of every product (as documented)."""
    other = make_permit(product="CLIM")
    engine, _ = make_engine(make_permit(), other)
    first = grant(engine)
    second = grant(engine, product="CLIM")
    outcome = engine.reinit()
    assert done(outcome).revoked == 2
    assert {type(event) for event in outcome.events} == {Revoked}
    assert is_lost(engine, first.handle, "reinit")
    assert is_lost(engine, second.handle, "reinit")
    assert engine.held_count() == 0


def test_reinit_with_products_serves_the_new_set() -> None:
    """reinit(products) revokes all, then serves exactly the products re-read."""
    engine, _ = make_engine()
    grant(engine)
    outcome = engine.reinit([make_permit(product="CLIM")])
    assert isinstance(outcome.events[-1], ProductsLoaded)
    assert engine.product(*KEY) is None
    assert engine.product("Harlequin", "CLIM") is not None


def test_reload_with_unchanged_products_keeps_licences() -> None:
    """Loading the same permits again (SIGHUP) keeps every licence and changes nothing."""
    engine, _ = make_engine()
    held = grant(engine)
    done(engine.set_timeout(*KEY, 77))
    outcome = engine.load_products([make_permit()])
    assert outcome.events == ()
    assert is_alive(engine, held.handle)
    assert engine.status()[0].timeout == 77.0


def test_reload_with_a_renewed_permit_keeps_licences_and_settings() -> None:
    """A permit that only changes dates / data keeps the holders and the admin settings."""
    engine, _ = make_engine()
    held = grant(engine)
    done(engine.add_named_user(*KEY, "boss"))
    renewed = make_permit(expiry=datetime.date(2035, 1, 1), data=(8, 9))
    outcome = engine.load_products([renewed])
    assert [type(event) for event in outcome.events] == [ProductsLoaded]
    assert is_alive(engine, held.handle)
    assert engine.product(*KEY) == renewed
    assert engine.status()[0].named_users == ("boss",)


def test_reload_with_other_counts_revokes_and_resets_the_split() -> None:
    """New licence counts revoke the product's licences; an ftol split gives way to the permit."""
    engine, _ = make_engine()
    done(engine.float_to_locked(*KEY, 1))
    held = grant(engine)
    outcome = engine.load_products([make_permit(floating_count=5)])
    assert done(outcome).revoked == 1
    assert is_lost(engine, held.handle, "permit-changed")
    status = engine.status()[0]
    assert (status.node_count, status.floating_count) == (0, 5)


def test_reload_with_a_new_version_revokes() -> None:
    """A new version of the product replaces the old one; old licences are revoked."""
    engine, _ = make_engine()
    held = grant(engine)
    engine.load_products([make_permit(version="9.0")])
    assert is_lost(engine, held.handle, "permit-changed")
    grant(engine, version="9.0")


def test_reload_without_a_product_revokes_and_stops_serving_it() -> None:
    """A product no longer in the permits: licences revoked, requests BADPRODUCT."""
    engine, _ = make_engine(make_permit(), make_permit(product="CLIM"))
    held = grant(engine)
    clim = grant(engine, product="CLIM")
    outcome = engine.load_products([make_permit(product="CLIM")])
    assert done(outcome).revoked == 1
    assert is_lost(engine, held.handle, "product-removed")
    assert is_alive(engine, clim.handle)
    result = engine.request(
        LicenceRequest("Harlequin", "LispWorks", "8.0", "a", "b", 1, "10.0.0.1")
    ).result
    assert isinstance(result, Denied)
    assert result.status is Status.BADPRODUCT


def test_first_permit_of_a_product_wins() -> None:
    """Two permits for one product: the first one read is served."""
    engine, _ = make_engine()
    engine.load_products([make_permit(version="9.0"), make_permit(version="8.0")])
    permit = engine.product(*KEY)
    assert permit is not None
    assert permit.version == "9.0"
    assert [p.version for p in engine.served()] == ["9.0"]


@pytest.mark.parametrize("field", ["node_count", "floating_count"])
def test_reload_keeps_holders_only_if_pools_fit(field: str) -> None:
    """Changing either pool size is a permit change that revokes."""
    base = make_permit(node_count=1, floating_count=1)
    engine, _ = make_engine(base)
    held = grant(engine)
    changes: dict[str, Any] = {field: 2}
    engine.load_products([dataclasses.replace(base, **changes)])
    assert is_lost(engine, held.handle, "permit-changed")


# -- the manual's policy locks (MNEM!) and conversions (issue 11) ------------------------------


def test_admin_lock_fixes_a_flag_until_the_permit_is_re_read() -> None:
    """policy MNEM!: the flag is locked by the administrator; a later change of it is
    refused by the engine, other flags still change; a re-read of the permit (even an
    unchanged one) unlocks it; the lock survives a snapshot and restore."""
    engine, clock = make_engine()
    done(engine.set_policy(*KEY, int(Policy.GRAB | Policy.UVIS), lock=int(Policy.UVIS)))
    assert engine.status()[0].admin_locks == int(Policy.UVIS)
    message = refused(engine.set_policy(*KEY, int(Policy.GRAB)))
    assert "UVIS" in message and "locked" in message
    done(engine.set_policy(*KEY, int(Policy.GRAB | Policy.UVIS | Policy.TIML)))
    copy = Engine(clock, lambda: "x", today=utc_day)
    copy.restore(engine.snapshot())
    assert copy.status()[0].admin_locks == int(Policy.UVIS)
    reread = engine.load_products((make_permit(),))
    assert reread.events, "a re-read with admin locks in force must record their end"
    assert engine.status()[0].admin_locks == 0
    done(engine.set_policy(*KEY, int(Policy.GRAB)))


def test_admin_lock_of_an_unknown_bit_is_refused() -> None:
    """A lock of a bit no flag has is ILLEGAL and changes nothing."""
    engine, _ = make_engine()
    refused(engine.set_policy(*KEY, int(Policy.GRAB), lock=1 << 12))


def test_ltof_converts_only_licences_ftol_made_node_locked() -> None:
    """ltof may turn back only licences that ftol converted: the permit's own node-locked
    licences stay node-locked (ILLEGAL, nothing changed)."""
    nodes = (HostId(ipaddress.IPv4Address("10.0.0.5"), 0),)
    engine, _ = make_engine(make_permit(node_count=1, floating_count=2, locked_nodes=nodes))
    message = refused(engine.locked_to_float(*KEY, 1))
    assert "ftol" in message
    done(engine.float_to_locked(*KEY, 2))
    refused(engine.locked_to_float(*KEY, 3))
    done(engine.locked_to_float(*KEY, 2))
    status = engine.status()[0]
    assert (status.node_count, status.floating_count) == (1, 2)


def test_rmnode_removes_only_hosts_addnode_added() -> None:
    """rmnode may remove only listings added with addnode, never the permit's own;
    without a unique id it removes the host's added listing whatever its id."""
    nodes = (HostId(ipaddress.IPv4Address("10.0.0.5"), 0),)
    engine, _ = make_engine(make_permit(node_count=1, floating_count=1, locked_nodes=nodes))
    message = refused(engine.remove_node(*KEY, "10.0.0.5"))
    assert "addnode" in message
    done(engine.add_node(*KEY, "10.0.0.5", 0))
    done(engine.add_node(*KEY, "10.0.0.9", 7))
    done(engine.remove_node(*KEY, "10.0.0.5"))
    assert engine.status()[0].locked_nodes == (("10.0.0.5", 0), ("10.0.0.9", 7))
    refused(engine.remove_node(*KEY, "10.0.0.5"))
    done(engine.remove_node(*KEY, "10.0.0.9", None))
    assert engine.status()[0].locked_nodes == (("10.0.0.5", 0),)
