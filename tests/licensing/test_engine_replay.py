"""Engine properties over random command sequences (hypothesis).

* licences held never exceed a product's pools; indices are unique and in range;
* replaying the emitted events on a fresh engine gives the same state;
* events survive their JSON form unchanged;
* snapshot -> JSON -> restore gives the same state, and the restored engine
  then decides exactly as the original would.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event, EventError, Granted, Released, event_from_dict
from hqnlsd.licensing.results import Denied, LicenceRequest
from hqnlsd.permits.model import HostId, ProductPermit
from hqnlsd.permits.policy import KNOWN_FLAGS, Policy

NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9", "10.0.0.10")
USERS = ("alice", "bob", "carol", "dave")
GROUPS = (None, "staff", "guests")
PRODUCTS = (("Harlequin", "LispWorks"), ("Harlequin", "CLIM"), ("Acme", "Short"))


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (tests must not depend on the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


def permits(policy: int, variant: int = 0) -> list[ProductPermit]:
    """Three products: locked + floating with repeated listings, floating only, expiring soon."""
    nodes = (
        HostId(ipaddress.IPv4Address("10.0.0.9"), 0),
        HostId(ipaddress.IPv4Address("10.0.0.9"), 0),
        HostId(ipaddress.IPv4Address("10.0.0.10"), 0xABCD),
    )
    return [
        ProductPermit("Harlequin", "LispWorks", "8.0", policy, 2, 3 + variant,
                      datetime.date(2026, 1, 1), datetime.date(2030, 12, 31), 5, (1, 2), nodes),
        ProductPermit("Harlequin", "CLIM", "2.0", policy, 0, 2, datetime.date(2026, 1, 1),
                      datetime.date(2030, 12, 31), 1),
        ProductPermit("Acme", "Short", "1", policy | int(Policy.GRAB), 1, 1,
                      datetime.date(2027, 6, 15), datetime.date(2027, 6, 16), 2, (), nodes[:1]),
    ]


def new_engine(clock: Clock, start: int = 1) -> tuple[Engine, Callable[[], int]]:
    """An engine with handles h<start>, h<start+1>...; returns it and a peek at the counter."""
    counter = itertools.count(start)
    last = [start - 1]

    def handle() -> str:
        last[0] = next(counter)
        return f"h{last[0]}"

    engine = Engine(clock, handle, today=utc_day, tombstone_seconds=20_000)
    return engine, lambda: last[0] + 1


index = st.integers(min_value=0, max_value=50)
product_index = st.sampled_from([0, 0, 0, 1, 1, 2])
ADVANCE = st.tuples(st.just("advance"), st.sampled_from([0, 1, 30, 300, 901, 2000, 3601, 86_400]))
REQUEST = st.tuples(
    st.just("request"),
    product_index,
    st.integers(min_value=0, max_value=len(ADDRESSES) - 1),
    st.integers(min_value=0, max_value=len(USERS) - 1),
    st.integers(min_value=0, max_value=len(GROUPS) - 1),
    st.sampled_from([1, 1, 1, 1, 2, 3]),
    st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
    st.sampled_from([None, None, 0xABCD, 0x1111]),
)
HANDLE = st.tuples(st.sampled_from(["update", "update", "release", "kill", "query"]), index)
ADMIN = st.one_of(
    st.tuples(st.just("policy"), product_index, st.integers(min_value=0, max_value=KNOWN_FLAGS)),
    st.tuples(st.sampled_from(["crashout", "timeout"]), product_index,
              st.one_of(st.none(), st.integers(min_value=-1, max_value=5000))),
    st.tuples(st.sampled_from(["addnode", "rmnode"]), product_index,
              st.integers(min_value=0, max_value=len(ADDRESSES) - 1)),
    st.tuples(st.sampled_from(["ftol", "ltof"]), product_index, st.integers(0, 3)),
    st.tuples(st.sampled_from(["exclude", "unexclude"]), product_index,
              st.integers(min_value=0, max_value=len(ADDRESSES) - 1)),
    st.tuples(st.sampled_from(["name", "unname"]), product_index,
              st.integers(min_value=0, max_value=len(USERS) - 1)),
    st.tuples(st.sampled_from(["uacc", "gacc"]), product_index,
              st.integers(min_value=0, max_value=3), st.one_of(st.none(), st.integers(-1, 9))),
    st.tuples(st.sampled_from(["reinit", "reload", "reload", "expire", "resume"]),
              st.integers(0, 2)),
)
#: Mostly requests, time passing and handle commands; some administration.
_WEIGHTED = (REQUEST, REQUEST, REQUEST, REQUEST, ADVANCE, ADVANCE, HANDLE, HANDLE, ADMIN)
COMMANDS = st.integers(min_value=0, max_value=len(_WEIGHTED) - 1).flatmap(
    lambda kind: _WEIGHTED[kind]
)
SEQUENCES = st.lists(COMMANDS, min_size=10, max_size=80)


class Runner:
    """Runs commands against one engine, recording events and handles."""

    def __init__(self, engine: Engine, clock: Clock, policy: int) -> None:
        self.engine = engine
        self.clock = clock
        self.policy = policy
        self.events: list[Event] = []
        self.handles: list[str] = []

    def record(self, outcome: Any) -> Any:
        """Keep the outcome's events; give back its result."""
        self.events.extend(outcome.events)
        return outcome.result

    def pick(self, number: int) -> str:
        """A handle seen so far (held, released or revoked), or a bogus one."""
        if not self.handles or number % 8 == 7:
            return "bogus"
        return self.handles[number % len(self.handles)]

    def run(self, command: tuple[Any, ...]) -> Any:
        """Execute one command; the value returned is comparable across engines."""
        engine = self.engine
        verb = command[0]
        if verb == "advance":
            self.clock.advance(command[1])
            return None
        if verb == "request":
            _, product, address, user, group, units, client, hostid = command
            publisher, name = PRODUCTS[product]
            version = {"LispWorks": "8.0", "CLIM": "2.0", "Short": "1"}[name]
            result = self.record(
                engine.request(
                    LicenceRequest(
                        publisher, name, version, USERS[user], f"host{address}", 1000 + user,
                        ADDRESSES[address], group=GROUPS[group], units=units,
                        client=None if client is None else f"tok{client}", hostid=hostid,
                    )
                )
            )
            handle = getattr(result, "handle", None)
            if handle is not None and handle not in self.handles:
                self.handles.append(handle)
            return result
        if verb in ("update", "release", "kill"):
            return self.record(getattr(engine, verb)(self.pick(command[1])))
        if verb == "query":
            return engine.query(self.pick(command[1]), "context")
        if verb == "reinit":
            return self.record(engine.reinit(permits(self.policy, command[1])))
        if verb == "reload":
            return self.record(engine.load_products(permits(self.policy, command[1])))
        if verb in ("expire", "resume"):
            return self.record(getattr(engine, verb)())
        publisher, name = PRODUCTS[command[1]]
        arg = command[2]
        if verb == "policy":
            return self.record(engine.set_policy(publisher, name, arg))
        if verb == "crashout":
            return self.record(engine.set_crashout(publisher, name, arg))
        if verb == "timeout":
            return self.record(engine.set_timeout(publisher, name, arg))
        if verb == "addnode":
            return self.record(engine.add_node(publisher, name, ADDRESSES[arg]))
        if verb == "rmnode":
            return self.record(engine.remove_node(publisher, name, ADDRESSES[arg]))
        if verb == "ftol":
            return self.record(engine.float_to_locked(publisher, name, arg))
        if verb == "ltof":
            return self.record(engine.locked_to_float(publisher, name, arg))
        if verb == "exclude":
            return self.record(engine.exclude_host(publisher, name, f"host{arg}"))
        if verb == "unexclude":
            return self.record(engine.unexclude_host(publisher, name, f"host{arg}"))
        if verb == "name":
            return self.record(engine.add_named_user(publisher, name, USERS[arg]))
        if verb == "unname":
            return self.record(engine.remove_named_user(publisher, name, USERS[arg]))
        if verb in ("uacc", "gacc"):
            level = command[3]
            who = USERS[arg] if verb == "uacc" else (GROUPS[1 + arg % 2] or "staff")
            if verb == "uacc":
                if level is None:
                    return self.record(engine.remove_user_access(publisher, name, who))
                return self.record(engine.set_user_access(publisher, name, who, level))
            if level is None:
                return self.record(engine.remove_group_access(publisher, name, who))
            return self.record(engine.set_group_access(publisher, name, who, level))
        raise AssertionError(f"unknown command {command!r}")


def check_invariants(engine: Engine) -> None:
    """Never more licences held than a pool has; indices unique and in their pool's range."""
    for status in engine.status():
        assert 0 <= status.locked_used <= status.node_count
        assert 0 <= status.floating_used <= status.floating_count
        assert status.used <= status.total
        holders = engine.holders(status.publisher, status.product)
        assert not isinstance(holders, Denied)
        indices = [i for holder in holders for i in holder.indices]
        assert len(indices) == len(set(indices)) == status.used
        for holder in holders:
            for i in holder.indices:
                if holder.type == "locked":
                    assert 1 <= i <= status.node_count
                else:
                    assert status.node_count < i <= status.total


def start(policy: int) -> tuple[Runner, Callable[[], int]]:
    """A runner on a fresh engine serving ``permits(policy)``."""
    clock = Clock()
    clock.advance(NOW)
    engine, next_handle = new_engine(clock)
    runner = Runner(engine, clock, policy)
    runner.record(engine.load_products(permits(policy)))
    return runner, next_handle


POLICIES = st.integers(min_value=0, max_value=KNOWN_FLAGS).map(
    lambda flags: flags | ((flags & int(Policy.ONPN | Policy.UVIS)) << 16)
)
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(policy=POLICIES, commands=SEQUENCES)
def test_counts_never_exceed_pools_and_replay_gives_same_state(
    policy: int, commands: list[tuple[Any, ...]]
) -> None:
    """Invariants hold after every command; replaying the events reproduces the state."""
    runner, _ = start(policy)
    for command in commands:
        runner.run(command)
        check_invariants(runner.engine)
    final = runner.engine.snapshot()

    replica, _ = new_engine(Clock())
    replica.apply_all(runner.events)
    assert replica.snapshot() == final

    decoded = [event_from_dict(json.loads(json.dumps(e.to_dict()))) for e in runner.events]
    assert decoded == runner.events
    from_json, _ = new_engine(Clock())
    from_json.apply_all(decoded)
    assert from_json.snapshot() == final


@SETTINGS
@given(
    policy=POLICIES,
    before=SEQUENCES,
    after=SEQUENCES,
)
def test_restored_engine_decides_like_the_original(
    policy: int, before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    """snapshot -> JSON -> restore is the same state, and the same commands then do the same."""
    runner, next_handle = start(policy)
    for command in before:
        runner.run(command)
    state = json.loads(json.dumps(runner.engine.snapshot()))

    twin_clock = Clock()
    twin_clock.advance(runner.clock.seconds())
    twin_engine, _ = new_engine(twin_clock, start=next_handle())
    twin_engine.restore(state)
    assert twin_engine.snapshot() == runner.engine.snapshot()
    twin = Runner(twin_engine, twin_clock, policy)
    twin.handles = list(runner.handles)

    runner.events.clear()
    for command in after:
        assert runner.run(command) == twin.run(command)
    assert twin_engine.snapshot() == runner.engine.snapshot()
    assert twin.events == runner.events


def test_restore_rejects_what_is_not_a_snapshot() -> None:
    """A wrong format or a damaged snapshot raises EventError and keeps the old state."""
    runner, _ = start(int(Policy.GRAB))
    before = runner.engine.snapshot()
    for bad in ({"format": 99}, {"format": 1}, {"format": 1, "products": [{}], "tombstones": []}):
        try:
            runner.engine.restore(bad)
        except EventError:
            pass
        else:
            raise AssertionError(f"restore({bad}) was accepted")
    assert runner.engine.snapshot() == before


def test_apply_refuses_events_that_do_not_fit() -> None:
    """A grant of indices already held, or for a product not served, raises EventError."""
    runner, _ = start(0)
    result = runner.run(("request", 1, 0, 0, 0, 1, None, None))
    event = runner.events[-1]
    assert isinstance(event, Granted), result
    clash = Granted(**{**{f: getattr(event, f) for f in event.__dataclass_fields__},
                       "handle": "other"})
    for bad in (clash, Granted(**{**{f: getattr(event, f) for f in event.__dataclass_fields__},
                                  "handle": "x", "product": "Nope"})):
        try:
            runner.engine.apply(bad)
        except EventError:
            pass
        else:
            raise AssertionError(f"apply({bad}) was accepted")
    check_invariants(runner.engine)


def test_event_dict_form_is_checked() -> None:
    """from_dict rejects unknown types, wrong classes and missing or extra fields."""
    event = Released("h1", 5.0)
    assert Event.from_dict(event.to_dict()) == event
    assert Released.from_dict(event.to_dict()) == event
    for bad, cls in (
        ({"type": "Bogus"}, Event),
        ({"handle": "h1", "at": 5.0}, Event),
        ({"type": "Released", "handle": "h1"}, Event),
        ({"type": "Released", "handle": "h1", "at": 5.0, "extra": 1}, Event),
        (event.to_dict(), Granted),
    ):
        try:
            cls.from_dict(bad)
        except EventError:
            pass
        else:
            raise AssertionError(f"{cls.__name__}.from_dict({bad}) was accepted")
