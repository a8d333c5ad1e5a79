"""What a domain member keeps on disk, and an in-memory implementation.

Every method of `DomainStorage` must be durable when it returns: the node sends
a promise, an acceptance or an acknowledgement only after the write it depends
on has returned. The node batches log entries (group commit): entries of one
reactor turn reach `append` together at the end of the turn, and until then
they are neither acknowledged nor counted toward a quorum by that member. The
daemon implements it on its state directory (SQLite, one transaction per call);
tests use `MemoryStorage`, which survives a simulated crash because the
simulation keeps the object and drops the node.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hqnlsd.domain.view import Ballot, Batch, Value, View


@dataclass(frozen=True)
class Durable:
    """Everything a member has persisted.

    ``view``/``base``: the latest view this member installed and the state it
    started from. ``entries``: the batches this member accepted from the view's
    primary, in order. ``promised``/``accepted``: this member's Paxos acceptor
    state for epoch ``view.epoch + 1``.
    """

    view: View
    base: object
    entries: tuple[Batch, ...] = ()
    promised: Ballot | None = None
    accepted: tuple[Ballot, Value] | None = None


class DomainStorage(Protocol):
    """The persistence a `DomainNode` needs; every call durable on return."""

    def load(self) -> Durable | None:
        """Everything persisted, or None if this member never stored anything."""

    def save_view(self, view: View, base: object) -> None:
        """Install ``view`` starting from ``base``: clear entries and acceptor state."""

    def save_promise(self, promised: Ballot) -> None:
        """Record a promise for the next epoch at ``promised``."""

    def save_accepted(self, ballot: Ballot, value: Value) -> None:
        """Record acceptance of ``value`` at ``ballot`` (which is also promised)."""

    def append(self, start: int, batches: Sequence[Batch]) -> None:
        """Store ``batches`` as entries ``start``, ``start + 1``, ... of the view.

        ``start`` is never beyond the current number of entries; entries from
        ``start`` on are replaced.
        """


def _json_copy(value: object) -> object:
    """A deep copy through JSON: proves the value is JSON-safe and unshared."""
    return json.loads(json.dumps(value))


@dataclass
class MemoryStorage:
    """`DomainStorage` in memory, JSON-encoding everything it keeps.

    Encoding proves that views, states and entries are JSON-safe (as the
    daemon's on-disk store needs) and that the node keeps no reference into what
    was stored. ``writes`` counts the durable writes, for tests.
    """

    _data: dict[str, object] | None = None
    writes: int = field(default=0)

    def load(self) -> Durable | None:
        """See `DomainStorage.load`."""
        if self._data is None:
            return None
        data = _json_copy(self._data)
        assert isinstance(data, dict)
        promised = data["promised"]
        accepted = data["accepted"]
        entries = data["entries"]
        assert isinstance(entries, list)
        return Durable(
            view=View.from_json(data["view"]),
            base=data["base"],
            entries=tuple(tuple(batch) for batch in entries),
            promised=None if promised is None else Ballot.from_json(promised),
            accepted=None
            if accepted is None
            else (Ballot.from_json(accepted[0]), Value.from_json(accepted[1])),
        )

    def save_view(self, view: View, base: object) -> None:
        """See `DomainStorage.save_view`."""
        self._data = {
            "view": view.to_json(),
            "base": _json_copy(base),
            "entries": [],
            "promised": None,
            "accepted": None,
        }
        self.writes += 1

    def save_promise(self, promised: Ballot) -> None:
        """See `DomainStorage.save_promise`."""
        self._require()["promised"] = promised.to_json()
        self.writes += 1

    def save_accepted(self, ballot: Ballot, value: Value) -> None:
        """See `DomainStorage.save_accepted`."""
        data = self._require()
        data["promised"] = ballot.to_json()
        data["accepted"] = [ballot.to_json(), _json_copy(value.to_json())]
        self.writes += 1

    def append(self, start: int, batches: Sequence[Batch]) -> None:
        """See `DomainStorage.append`."""
        entries = self._require()["entries"]
        assert isinstance(entries, list)
        if start > len(entries):
            raise ValueError(f"append at {start} leaves a gap after {len(entries)} entries")
        del entries[start:]
        entries.extend(_json_copy(list(batch)) for batch in batches)
        self.writes += 1

    def _require(self) -> dict[str, object]:
        """The stored data; a view must have been saved first."""
        if self._data is None:
            raise RuntimeError("save_view must come before any other write")
        return self._data
