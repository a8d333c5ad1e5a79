"""Tests for hqnlsd.domain.membership: ranks and the quorum rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hqnlsd.domain.membership import (
    MembershipError,
    best_quorum_value,
    is_quorum,
    rank_from_alias,
    validate_ranks,
)

members_st = st.frozensets(st.integers(1, 20), min_size=1, max_size=20)


def test_rank_from_alias() -> None:
    """hqnserverN aliases give N for 1..20 and nothing else is a rank."""
    assert rank_from_alias("hqnserver1") == 1
    assert rank_from_alias("HQNSERVER20") == 20
    assert rank_from_alias(" hqnserver7 ") == 7
    assert rank_from_alias("hqnserver0") is None
    assert rank_from_alias("hqnserver21") is None
    assert rank_from_alias("hqnserver") is None
    assert rank_from_alias("myhost") is None


def test_validate_ranks() -> None:
    """A domain has 1..20 distinct members ranked 1..20."""
    assert validate_ranks([3, 1, 2]) == frozenset({1, 2, 3})
    with pytest.raises(MembershipError):
        validate_ranks([])
    with pytest.raises(MembershipError):
        validate_ranks([1, 1])
    with pytest.raises(MembershipError):
        validate_ranks([0, 1])
    with pytest.raises(MembershipError):
        validate_ranks([21])


@pytest.mark.parametrize(
    ("members", "present", "expected"),
    [
        ({1}, {1}, True),
        ({1}, set(), False),
        ({1, 2}, {1}, True),  # exactly half, with the lowest rank
        ({1, 2}, {2}, False),  # exactly half, without it
        ({1, 2, 3}, {2, 3}, True),
        ({1, 2, 3}, {1}, False),
        ({1, 2, 3, 4}, {1, 4}, True),
        ({1, 2, 3, 4}, {2, 3}, False),
        ({2, 5, 7, 9}, {2, 9}, True),  # the lowest *member*, not rank 1
        ({2, 5, 7, 9}, {1, 5, 7}, False),  # non-members do not count
        (set(range(1, 21)), set(range(1, 11)), True),
        (set(range(1, 21)), set(range(11, 21)), False),
    ],
)
def test_is_quorum(members: set[int], present: set[int], expected: bool) -> None:
    """The start-up rule: more than half, or exactly half with the lowest rank."""
    assert is_quorum(frozenset(members), present) is expected


@given(members_st, st.data())
def test_quorums_intersect(members: frozenset[int], data: st.DataObject) -> None:
    """Any two quorums of the same members share a member (what safety rests on)."""
    ordered = sorted(members)
    a = data.draw(st.frozensets(st.sampled_from(ordered)))
    b = data.draw(st.frozensets(st.sampled_from(ordered)))
    if is_quorum(members, a) and is_quorum(members, b):
        assert a & b


@given(members_st, st.data())
def test_quorum_or_complement(members: frozenset[int], data: st.DataObject) -> None:
    """Of a split into two halves exactly one side is a quorum (no deadlock by tie)."""
    ordered = sorted(members)
    side = data.draw(st.frozensets(st.sampled_from(ordered)))
    assert is_quorum(members, side) != is_quorum(members, members - side)


def test_best_quorum_value() -> None:
    """The progress a whole quorum has reached; members without a value have none."""
    assert best_quorum_value(frozenset({1, 2, 3}), {1: 5, 2: 3, 3: 1}) == 3
    assert best_quorum_value(frozenset({1, 2}), {1: 5}) == 5
    assert best_quorum_value(frozenset({1, 2}), {2: 5}) is None
    assert best_quorum_value(frozenset({1, 2, 3, 4}), {1: float("inf")}) is None
    assert best_quorum_value(frozenset({1, 2, 3, 4}), {1: float("inf"), 4: 2.0}) == 2.0
