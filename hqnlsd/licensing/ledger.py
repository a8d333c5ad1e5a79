"""The engine's state with the one way to change it: events, applied in order.

Every part of the engine that decides (allocation, administrative changes, the
facade's own commands) reads the state here and changes it only with ``emit``:
apply the event and add it to the batch the command returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from hqnlsd.licensing.appliers import apply_event
from hqnlsd.licensing.events import JSON, Event, Revoked
from hqnlsd.licensing.pools import ProductState
from hqnlsd.licensing.snapshot import snapshot_of, state_of
from hqnlsd.licensing.state import EngineState

_HANDLE_ATTEMPTS = 16


class SecondsClock(Protocol):
    """What the engine needs of a clock (``IReactorTime`` and ``task.Clock`` fit)."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""
        ...


class Ledger:
    """Engine state, engine time, and the events applied to them."""

    def __init__(self, clock: SecondsClock, new_handle: Callable[[], str]) -> None:
        self._clock = clock
        self._new_handle = new_handle
        self.state = EngineState()
        #: Events applied since construction or the last ``restore``.
        self.applied = 0
        #: The latest time of any event applied: engine time never runs backwards,
        #: even if the wall clock is stepped back.
        self.latest = 0.0

    def now(self) -> float:
        """Engine time: ``max(clock, latest event time)``."""
        return max(self._clock.seconds(), self.latest)

    def apply(self, event: Event) -> None:
        """Apply one event; EventError if it does not fit."""
        apply_event(self.state, event)
        self.applied += 1
        at = getattr(event, "at", None)
        if at is not None and at > self.latest:
            self.latest = at

    def emit(self, event: Event, batch: list[Event]) -> None:
        """Apply a decided event and add it to the command's batch."""
        self.apply(event)
        batch.append(event)

    def revoke_all(self, product: ProductState, reason: str, now: float, batch: list[Event]) -> int:
        """Take back every licence of a product; how many."""
        handles = list(product.holders)
        for handle in handles:
            self.emit(Revoked(handle, str(reason), now), batch)
        return len(handles)

    def fresh_handle(self) -> str | None:
        """A handle neither held nor remembered as taken back (None: none found)."""
        for _ in range(_HANDLE_ATTEMPTS):
            handle = self._new_handle()
            if handle not in self.state.handles and handle not in self.state.tombstones:
                return handle
        return None

    def snapshot(self) -> dict[str, JSON]:
        """The whole state as JSON-safe data."""
        return snapshot_of(self.state, self.latest)

    def restore(self, data: Mapping[str, JSON]) -> None:
        """Replace the whole state with a snapshot; EventError (nothing changed) if bad."""
        self.state, self.latest = state_of(data)
        self.applied = 0
