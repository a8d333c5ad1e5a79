"""Views, epochs and ballots: the persisted facts of a server domain.

A *view* is the set of members the primary counts as live, numbered by its
*epoch*. Epoch 0 is the whole domain and is known to every member without being
stored. View ``e + 1`` is decided by the members of view ``e`` (a quorum of them
accepts it) with single-decree Paxos, one instance per epoch; the ballots of that
instance are `Ballot` values. The decided value (`Value`) carries the new view and
the licence state the new view starts from, so deciding a view *is* the state
transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeGuard

from hqnlsd.domain.membership import MAX_RANK, validate_ranks

#: Every integer of the domain protocol (epochs, rounds, counts) is below this:
#: exact in a JSON number (a double) and in an SQLite INTEGER.
SAFE_INT = 2**53


def brief(value: object, limit: int = 40) -> str:
    """At most ``limit`` characters about a peer's ``value``, without recursing into
    containers (a peer's nesting can be deeper than ``repr`` can go)."""
    if isinstance(value, list | tuple | dict | set | frozenset):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of more digits than str() allows
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_whole(value: object, low: int = 0, high: int = SAFE_INT) -> TypeGuard[int]:
    """True if ``value`` is an int (not a bool) with ``low <= value < high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


#: An opaque, JSON-safe application state batch (a list of licence-engine events).
Batch = tuple[object, ...]


class Ballot(NamedTuple):
    """A Paxos ballot: a round number and the proposer's rank, ordered as a pair.

    Two proposers never share a ballot because the rank is part of it.
    """

    round: int
    rank: int

    def to_json(self) -> list[int]:
        """The ballot as a JSON-safe list ``[round, rank]``."""
        return [self.round, self.rank]

    @classmethod
    def from_json(cls, data: object) -> Ballot:
        """The ballot encoded by `to_json`.

        @raise ValueError: if ``data`` is not a pair ``[round, rank]`` with
            ``0 <= round < 2**53`` and a rank 1..20.
        """
        if (
            not isinstance(data, list)
            or len(data) != 2
            or not is_whole(data[0])
            or not is_whole(data[1], 1, MAX_RANK + 1)
        ):
            raise ValueError(f"not a ballot: {brief(data)}")
        return cls(int(data[0]), int(data[1]))


@dataclass(frozen=True)
class View:
    """The members of the domain at one epoch; the lowest rank is the primary.

    ``origin`` is the ballot of the proposer that built this view (None for the
    initial view, epoch 0). Equal epochs always have equal views: one epoch is
    decided once.
    """

    epoch: int
    members: frozenset[int]
    origin: Ballot | None = None

    def __post_init__(self) -> None:
        """Check the epoch and members."""
        if self.epoch < 0:
            raise ValueError(f"negative epoch {self.epoch}")
        validate_ranks(self.members)

    @property
    def primary(self) -> int:
        """The rank that acts as primary in this view (its lowest rank)."""
        return min(self.members)

    def to_json(self) -> dict[str, object]:
        """The view as a JSON-safe dict."""
        return {
            "epoch": self.epoch,
            "members": sorted(self.members),
            "origin": None if self.origin is None else self.origin.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> View:
        """The view encoded by `to_json`.

        @raise ValueError: if ``data`` is not a valid encoded view.
        """
        if not isinstance(data, dict):
            raise ValueError(f"not a view: {brief(data)}")
        epoch = data.get("epoch")
        members = data.get("members")
        origin = data.get("origin")
        if not is_whole(epoch):
            raise ValueError(f"bad epoch {brief(epoch)} (0 <= epoch < 2**53)")
        if (
            not isinstance(members, list)
            or len(members) > MAX_RANK
            or not all(isinstance(m, int) and not isinstance(m, bool) for m in members)
            or len(set(members)) != len(members)
        ):
            raise ValueError(f"bad members {brief(members)}")
        return cls(epoch, frozenset(members), None if origin is None else Ballot.from_json(origin))


def initial_view(domain: frozenset[int]) -> View:
    """Epoch 0: every member of the domain. Its quorum is the start-up rule."""
    return View(0, validate_ranks(domain), None)


@dataclass(frozen=True)
class Value:
    """What one Paxos instance decides: the next view and the state it starts from.

    ``state`` is the application snapshot after every entry that view
    ``epoch - 1`` may have committed; it is opaque and JSON-safe.
    """

    view: View
    state: object

    def to_json(self) -> dict[str, object]:
        """The value as a JSON-safe dict."""
        return {"view": self.view.to_json(), "state": self.state}

    @classmethod
    def from_json(cls, data: object) -> Value:
        """The value encoded by `to_json`.

        @raise ValueError: if ``data`` is not a valid encoded value.
        """
        if not isinstance(data, dict) or "view" not in data or "state" not in data:
            raise ValueError(f"not a value: {brief(data)}")
        return cls(View.from_json(data["view"]), data["state"])
