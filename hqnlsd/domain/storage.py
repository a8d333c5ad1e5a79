"""What a domain member keeps on disk, and an in-memory implementation.

Every method of `DomainStorage` must be durable when it returns: the node sends
a promise, an acceptance or an acknowledgement only after the write it depends
on has returned. The node makes every call through its writer (a thread of
its own in the daemon, so the reactor is not stopped by the disk) and batches
log entries (group commit): one `append` is in flight at a time, the entries
that arrive meanwhile reach the next one together, and until its `append` has
returned an entry is neither acknowledged nor counted toward a quorum (nor,
by the primary, sent) by that member. The
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
class Amnesia:
    """A member that lost (part of) its domain state and was recovered (docs/domains.md).

    Until it installs a view that includes it with an epoch above ``epoch`` it
    never promises, accepts or grants as a member, never stands and is never
    primary: it may have forgotten log entries it acknowledged or promises it
    made in any view up to ``epoch`` (an upper bound of the last epoch it could
    have installed). ``round``: the highest ballot round it is known to have
    seen, kept so that its own ballots stay above it.
    """

    epoch: int
    round: int = 0

    def to_json(self) -> dict[str, int]:
        """The JSON form."""
        return {"epoch": self.epoch, "round": self.round}

    @classmethod
    def from_json(cls, data: object) -> Amnesia:
        """The amnesia encoded by `to_json`; ValueError if it is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"not an amnesia record: {data!r}")
        epoch, round_ = data.get("epoch"), data.get("round", 0)
        for value in (epoch, round_):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"not an amnesia record: {data!r}")
        assert isinstance(epoch, int) and isinstance(round_, int)
        return cls(epoch, round_)


@dataclass(frozen=True)
class Durable:
    """Everything a member has persisted.

    ``view``/``base``: the latest view this member installed and the state it
    started from. ``entries``: the batches this member accepted from the view's
    primary, in order. ``promised``/``accepted``: this member's Paxos acceptor
    state for epoch ``view.epoch + 1``. ``amnesia``: set while this member is a
    recovered amnesiac (`Amnesia`); it survives `save_view`.
    """

    view: View
    base: object
    entries: tuple[Batch, ...] = ()
    promised: Ballot | None = None
    accepted: tuple[Ballot, Value] | None = None
    amnesia: Amnesia | None = None


class DomainStorage(Protocol):
    """The persistence a `DomainNode` needs; every call durable on return."""

    def load(self) -> Durable | None:
        """Everything persisted, or None if this member never stored anything."""

    def save_view(self, view: View, base: object) -> None:
        """Install ``view`` starting from ``base``: clear entries and acceptor state
        (not the amnesia record)."""

    def save_amnesia(self, amnesia: Amnesia | None) -> None:
        """Record (or, with None, clear) this member's amnesia (`Amnesia`)."""

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
        amnesia = data.get("amnesia")
        assert isinstance(entries, list)
        return Durable(
            view=View.from_json(data["view"]),
            base=data["base"],
            entries=tuple(tuple(batch) for batch in entries),
            promised=None if promised is None else Ballot.from_json(promised),
            accepted=None
            if accepted is None
            else (Ballot.from_json(accepted[0]), Value.from_json(accepted[1])),
            amnesia=None if amnesia is None else Amnesia.from_json(amnesia),
        )

    def save_view(self, view: View, base: object) -> None:
        """See `DomainStorage.save_view`."""
        amnesia = None if self._data is None else self._data.get("amnesia")
        self._data = {
            "view": view.to_json(),
            "base": _json_copy(base),
            "entries": [],
            "promised": None,
            "accepted": None,
            "amnesia": amnesia,
        }
        self.writes += 1

    def save_amnesia(self, amnesia: Amnesia | None) -> None:
        """See `DomainStorage.save_amnesia`."""
        self._require()["amnesia"] = None if amnesia is None else amnesia.to_json()
        self.writes += 1

    def reset_amnesiac(self, view: View, base: object, amnesia: Amnesia) -> None:
        """Recovery: replace everything by ``view``/``base`` with no log and no
        acceptor state, as an amnesiac (one write)."""
        self._data = {
            "view": view.to_json(),
            "base": _json_copy(base),
            "entries": [],
            "promised": None,
            "accepted": None,
            "amnesia": amnesia.to_json(),
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
