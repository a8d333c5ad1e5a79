"""Domain membership: member ranks and the quorum rule.

A member of a server domain is identified by its *rank*, the ``N`` of its
``hqnserverN`` host alias (1 to 20). Ranks order everything in a domain: the
lowest-ranked live member is the acting primary, and the lowest-ranked member of
a set breaks ties when that set is split exactly in half.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Set

from hqnlsd.permits.model import MAX_SERVERS

#: The highest rank a member can have (SPEC: at most 20 members).
MAX_RANK = MAX_SERVERS

_ALIAS = re.compile(r"^hqnserver([1-9][0-9]?)$", re.IGNORECASE)


class MembershipError(ValueError):
    """A set of ranks that cannot be a server domain."""


def rank_from_alias(alias: str) -> int | None:
    """The rank named by a ``hqnserverN`` alias, or None if ``alias`` is not one.

    Ranks outside 1..20 are not ranks: ``hqnserver0`` and ``hqnserver21`` give None.
    """
    match = _ALIAS.match(alias.strip())
    if match is None:
        return None
    rank = int(match.group(1))
    return rank if 1 <= rank <= MAX_RANK else None


def validate_ranks(ranks: Iterable[int]) -> frozenset[int]:
    """The ranks as a frozenset, after checking they can form a domain.

    A domain has 1 to 20 distinct members, each ranked 1..20.

    @raise MembershipError: for an empty set, a rank out of range or a duplicate.
    """
    listed = list(ranks)
    members = frozenset(listed)
    if not members:
        raise MembershipError("a domain has at least one member")
    if len(members) != len(listed):
        raise MembershipError(f"duplicate rank in {sorted(listed)}")
    bad = [rank for rank in members if not 1 <= rank <= MAX_RANK]
    if bad:
        raise MembershipError(f"ranks must be 1..{MAX_RANK}, not {sorted(bad)}")
    return members


def is_quorum(members: Set[int], present: Iterable[int]) -> bool:
    """True if ``present`` holds a quorum of ``members``.

    A quorum is more than half of ``members``, or exactly half if that half
    contains the lowest-ranked member (the tie-break that stops both halves of an
    even split from acting). Ranks in ``present`` that are not members are
    ignored. Any two quorums of the same members share at least one member.
    """
    if not members:
        return False
    here = {rank for rank in present if rank in members}
    twice = 2 * len(here)
    if twice > len(members):
        return True
    return twice == len(members) and min(members) in here


def best_quorum_value(members: Set[int], value_of: dict[int, float]) -> float | None:
    """The highest ``v`` such that the members with ``value_of[m] >= v`` are a quorum.

    Members missing from ``value_of`` have no value. Returns None if no quorum
    has a value at all. Used for commit indexes and lease expiry: the progress a
    whole quorum is known to have reached.
    """
    candidates = sorted({value_of[m] for m in members if m in value_of}, reverse=True)
    for value in candidates:
        if is_quorum(members, [m for m in members if m in value_of and value_of[m] >= value]):
            return value
    return None
