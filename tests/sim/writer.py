"""A `hqnlsd.persistence.store.Writer` for simulations: writes complete later.

The daemon's `ThreadWriter` runs a member's storage calls on a thread of its
own, one at a time, in order; the member hears that a write completed on a
later reactor turn. `SimWriter` does the same on a simulated clock: each piece of
work submitted runs (and then its ``done``) some simulated time later, one at a
time and in order, so a simulation can deliver messages, run timers and crash
members while writes are still in flight. `crash` drops every piece of work not
yet run: what a killed process had not written is not on its disk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


class SimWriter:
    """A `Writer` whose submitted work completes after ``delay()`` simulated seconds.

    ``clock`` schedules the completions (``callLater``; a member's clock, so the
    simulation checks its invariants after each). ``held``: while True nothing
    completes (a test's disk that stalls); `release` lets it go on.
    """

    def __init__(self, clock: Any, delay: Callable[[], float], held: bool = False) -> None:
        self._clock = clock
        self._delay = delay
        self._queue: deque[tuple[Callable[[], None], Callable[[], None]]] = deque()
        self._call: Any = None
        self.held = held
        #: pieces of work run so far (each a durable write), and submitted so far
        self.completed = 0
        self.submitted = 0
        self.crashed = False

    @property
    def in_flight(self) -> int:
        """Pieces of work submitted and not yet run."""
        return len(self._queue)

    def submit(self, work: Callable[[], None], done: Callable[[], None]) -> None:
        """Run ``work`` then ``done`` later, after everything submitted before."""
        if self.crashed:
            return
        self.submitted += 1
        self._queue.append((work, done))
        self._schedule()

    def call(self, work: Callable[[], _T]) -> _T:
        """Run what is queued, then ``work``, now (the caller blocks on the writer);
        the queued work's ``done`` comes back on a later turn, as from a thread."""
        self._run_queued()
        return work()

    def stop(self) -> None:
        """Run what is queued (the writer ends once its work is done)."""
        self._run_queued()

    def release(self) -> None:
        """Let held writes complete (each after its delay)."""
        self.held = False
        self._schedule()

    def complete_one(self) -> None:
        """Run the oldest queued work and its ``done`` now (a test's disk, step by step)."""
        self._cancel()
        self._finish()
        self._schedule()

    def crash(self) -> None:
        """The process is killed: work not yet run never reaches the disk."""
        self.crashed = True
        self._cancel()
        self._queue.clear()

    def _run_queued(self) -> None:
        self._cancel()
        while self._queue:
            work, done = self._queue.popleft()
            work()
            self.completed += 1
            self._clock.callLater(0, done)

    def _schedule(self) -> None:
        if self._call is None and self._queue and not self.held and not self.crashed:
            self._call = self._clock.callLater(self._delay(), self._due)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _due(self) -> None:
        self._call = None
        self._finish()
        self._schedule()

    def _finish(self) -> None:
        work, done = self._queue.popleft()
        work()
        self.completed += 1
        done()
