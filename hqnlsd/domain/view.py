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
from typing import NamedTuple

from hqnlsd.domain.membership import validate_ranks

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

        @raise ValueError: if ``data`` is not a pair of integers.
        """
        if (
            not isinstance(data, list)
            or len(data) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in data)
        ):
            raise ValueError(f"not a ballot: {data!r}")
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
            raise ValueError(f"not a view: {data!r}")
        epoch = data.get("epoch")
        members = data.get("members")
        origin = data.get("origin")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"bad epoch in {data!r}")
        if not isinstance(members, list) or not all(
            isinstance(m, int) and not isinstance(m, bool) for m in members
        ):
            raise ValueError(f"bad members in {data!r}")
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
            raise ValueError(f"not a value: {data!r}")
        return cls(View.from_json(data["view"]), data["state"])
