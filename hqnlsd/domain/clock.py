"""A monotonic clock for the domain logic on top of a real reactor.

The reactor's ``seconds()`` is wall-clock time, which NTP or an admin can step;
leases must be measured on a monotonic clock. `ReactorMonotonicClock` reads
``time.monotonic`` and schedules through the reactor (delays are relative, so a
stepped wall clock only moves a timer, and every decision re-reads this clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class ReactorMonotonicClock:
    """``seconds()`` from a monotonic source, ``callLater`` from the reactor."""

    def __init__(self, reactor: Any, source: Callable[[], float] = time.monotonic) -> None:
        """Wrap ``reactor`` (an IReactorTime); ``source`` is for tests."""
        self._reactor = reactor
        self._source = source

    def seconds(self) -> float:
        """Monotonic now, in seconds."""
        return self._source()

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> Any:
        """Schedule through the reactor; returns its IDelayedCall."""
        return self._reactor.callLater(delay, callable, *args, **kw)
