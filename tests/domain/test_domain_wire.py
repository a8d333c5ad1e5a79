"""Tests for hqnlsd.domain views, messages, storage and timers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hqnlsd.domain.messages import (
    Accept,
    Accepted,
    Ack,
    Append,
    Decided,
    Message,
    MessageError,
    Prepare,
    Promise,
    Refuse,
    RefuseReason,
    decode,
    encode,
)
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Ballot, Value, View, initial_view

ballots = st.builds(Ballot, st.integers(0, 10**6), st.integers(1, 20))
views = st.builds(
    View,
    st.integers(0, 10**6),
    st.frozensets(st.integers(1, 20), min_size=1, max_size=20),
    st.none() | ballots,
)
json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
values = st.builds(Value, views, json_values)
batches = st.lists(st.lists(json_values, max_size=3).map(tuple), max_size=3).map(tuple)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Prepare, st.integers(0, 99), ballots),
    st.builds(
        Promise, st.integers(0, 99), ballots, st.none() | ballots, st.none() | values, batches
    ),
    st.builds(
        Refuse,
        st.integers(0, 99),
        ballots,
        st.sampled_from(RefuseReason),
        st.none() | ballots,
        st.floats(0, 10, allow_nan=False),
        st.integers(0, 99),
    ),
    st.builds(Accept, st.integers(0, 99), ballots, values),
    st.builds(Accepted, st.integers(0, 99), ballots),
    st.builds(Decided, values),
    st.builds(
        Append,
        st.integers(0, 99),
        st.floats(0, 1e6, allow_nan=False),
        st.integers(0, 99),
        batches,
        st.integers(0, 99),
    ),
    st.builds(
        Ack,
        st.integers(0, 99),
        st.floats(0, 1e6, allow_nan=False),
        st.integers(0, 99),
        st.booleans(),
    ),
)


def _normal(data: object) -> object:
    """JSON's view of ``data`` (tuples become lists)."""
    return json.loads(json.dumps(data))


@given(messages)
def test_message_round_trip(message: Message) -> None:
    """Every message survives encode -> JSON text -> decode unchanged."""
    wire = json.loads(json.dumps(encode(message)))
    back = decode(wire)
    assert type(back) is type(message)
    assert _normal(encode(back)) == _normal(encode(message))


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        {"type": "nonsense"},
        {"type": "prepare", "epoch": "1", "ballot": [1, 1]},
        {"type": "prepare", "epoch": 1, "ballot": [1]},
        {"type": "prepare", "epoch": True, "ballot": [1, 1]},
        {"type": "ack", "epoch": 1, "sent_at": 0.5, "match": 0, "granted": "yes"},
        {"type": "append", "epoch": 1, "sent_at": 0, "start": 0, "batches": [1], "commit": 0},
        {
            "type": "decided",
            "value": {"view": {"epoch": 1, "members": [], "origin": None}, "state": None},
        },
        {
            "type": "decided",
            "value": {"view": {"epoch": 1, "members": [30], "origin": None}, "state": None},
        },
        {
            "type": "refuse",
            "epoch": 1,
            "ballot": [1, 1],
            "reason": "bored",
            "promised": None,
            "wait": 0,
            "known_epoch": 0,
        },
    ],
)
def test_decode_rejects(wire: object) -> None:
    """Malformed messages raise MessageError, never anything else."""
    with pytest.raises(MessageError):
        decode(wire)


def test_view_primary_and_initial() -> None:
    """The lowest rank of a view is its primary; epoch 0 is the whole domain."""
    assert View(3, frozenset({4, 2, 9})).primary == 2
    view = initial_view(frozenset({1, 2, 3}))
    assert (view.epoch, view.members, view.origin) == (0, frozenset({1, 2, 3}), None)
    with pytest.raises(ValueError):
        View(-1, frozenset({1}))


def test_ballot_order() -> None:
    """Ballots order by round, then rank; two proposers never share one."""
    assert Ballot(2, 1) > Ballot(1, 20)
    assert Ballot(2, 3) > Ballot(2, 1)
    assert Ballot.from_json(Ballot(5, 4).to_json()) == Ballot(5, 4)


def test_safe_lease_arithmetic() -> None:
    """The primary relies on less than a granting member's lease lasts in real time.

    Worst case: the primary's clock runs slow by ``drift`` (its lease lasts
    longer in real time), the member's fast by ``drift`` (its grant ends sooner).
    """
    timers = DomainTimers(lease=2.0, drift=0.01, margin=0.1)
    primary_real = timers.safe_lease / (1 - timers.drift)
    member_real = timers.lease / (1 + timers.drift)
    assert primary_real + timers.margin <= member_real + 1e-12
    assert timers.safe_lease == pytest.approx(2.0 * 0.99 / 1.01 - 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drift": 0.6},
        {"drift": -0.1},
        {"margin": -1.0},
        {"lease": 0.3},  # nothing left after drift, margin and a tick
        {"election_timeout": 0.1},
        {"max_entries": 0},
    ],
)
def test_timers_rejected(kwargs: dict[str, float]) -> None:
    """Timers that cannot be safe or useful are refused."""
    with pytest.raises(ValueError):
        DomainTimers(**kwargs)  # type: ignore[arg-type]


def test_reactor_monotonic_clock() -> None:
    """Time comes from the monotonic source, timers from the reactor."""
    from twisted.internet.task import Clock

    from hqnlsd.domain.clock import ReactorMonotonicClock

    reactor = Clock()
    ticks = iter([100.0, 101.5])
    clock = ReactorMonotonicClock(reactor, lambda: next(ticks))
    fired: list[str] = []
    call = clock.callLater(2.0, fired.append, "x")
    assert call.active()
    assert clock.seconds() == 100.0
    reactor.advance(2.0)
    assert fired == ["x"]
    assert clock.seconds() == 101.5
