"""Logging bad input in bounded lines and bounded memory, however much of it comes.

Whoever can reach the client port can send garbage as fast as the network
carries it. Logged line by line, 200 kB of input made 17 MB of log. `BadInputLog`
reports it per *source* (a client's address) per *interval* (60 s by default):

* the first bad input of a source in an interval (the first ``burst`` of them)
  is logged whole (its detail cut to `MAX_DETAIL` characters);
* the rest are counted; when the interval ends, one summary line per source that
  sent more: ``client 10.0.0.7 sent 812 more bad lines in the last 60 s (last:
  ...)``;
* at most ``max_sources`` sources are tracked per interval; input from any other
  source is counted together and reported as one line at the end of the interval
  (``... bad lines from sources beyond the first 256 ...``), so an attacker with
  many addresses grows neither memory nor the log without bound.

So each interval logs at most ``(burst + 1) * max_sources + 2`` lines of bounded
length. The same class bounds the lines of well-formed input that is logged as
such (MESSAGE texts: ``burst=10``, its own ``line_format``). The
interval starts with the first bad input after a quiet one; no timer runs while
nothing is wrong. `window` counts the intervals, for callers that bound
something per interval (the client protocol closes a connection that sends too
many bad lines in one). The per-source, per-interval bookkeeping itself
(`SourceIntervals`) is shared with `hqnlsd.logging.denials.DenialLog`, which
summarises denied REQUESTs the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, LogLevel

#: Seconds over which bad input is counted before its summary is logged.
DEFAULT_INTERVAL = 60.0
#: Sources tracked one by one in an interval; the others are counted together.
DEFAULT_MAX_SOURCES = 256
#: Characters of a detail (and of a source) kept and logged.
MAX_DETAIL = 160
#: The line of one input logged whole.
LINE_FORMAT = (
    "client {source} sent a {noun}: {detail} "
    "(more from it are counted and reported every {interval:g} s)"
)

T = TypeVar("T")


class Scheduler(Protocol):
    """The part of IReactorTime used (the reactor and task.Clock fit)."""

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        """Call ``callable(*args, **kw)`` in `delay` seconds."""
        ...


class _Tally:
    """What one source sent in the current interval."""

    __slots__ = ("last", "seen", "unlogged")

    def __init__(self) -> None:
        self.seen = 0
        self.unlogged = 0
        self.last = ""


def _cut(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SourceIntervals(Generic[T]):
    """The bookkeeping `BadInputLog` and `hqnlsd.logging.denials.DenialLog` share.

    One tally per source for the current interval, made by ``new`` on the
    source's first input; at most ``max_sources`` of them (`tally` answers None
    for any further source: the caller counts those together). The first input
    after a quiet interval starts an interval; when it ends, ``on_end`` is given
    the tallies (in the order their sources first came) and they are forgotten.
    No timer runs while nothing comes.
    """

    def __init__(
        self,
        clock: Scheduler,
        *,
        interval: float,
        max_sources: int,
        new: Callable[[], T],
        on_end: Callable[[dict[str, T]], None],
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self._clock = clock
        self.interval = interval
        self.max_sources = max_sources
        self._new = new
        self._on_end = on_end
        self._tallies: dict[str, T] = {}
        self._timer: IDelayedCall | None = None
        #: Intervals begun so far.
        self.window = 0

    @property
    def tracked(self) -> int:
        """Sources tracked one by one in the current interval."""
        return len(self._tallies)

    def tally(self, source: str) -> T | None:
        """The tally of ``source`` (cut to `MAX_DETAIL`) in this interval, or None
        when it is beyond the ``max_sources`` tracked (starts an interval if none runs)."""
        if self._timer is None:
            self.window += 1
            self._timer = self._clock.callLater(self.interval, self._end_interval)
        found = self._tallies.get(source)
        if found is None and len(self._tallies) < self.max_sources:
            found = self._tallies[source] = self._new()
        return found

    def _end_interval(self) -> None:
        self._timer = None
        tallies, self._tallies = self._tallies, {}
        self._on_end(tallies)

    def stop(self) -> None:
        """End the current interval now (``on_end`` runs) and cancel its timer."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._end_interval()


class BadInputLog:
    """Reports bad input per source per interval (see the module doc).

    :param log: where the lines go.
    :param clock: schedules the end of an interval.
    :param interval: seconds per interval.
    :param max_sources: sources tracked one by one per interval.
    :param noun: what is counted, singular (``bad line`` -> ``bad lines``).
    :param level: the level of every line.
    :param burst: inputs of one source logged whole per interval.
    :param line_format: the format of those lines (fields ``source``,
        ``detail``, ``noun``, ``interval``).
    :param max_detail: characters of a detail kept and logged.
    :param source_kind: what a source is, in the summary lines (``client
        10.0.0.7 sent 812 more bad lines...``; ``admin`` for the admin listeners).
    """

    def __init__(
        self,
        log: Logger,
        clock: Scheduler,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_sources: int = DEFAULT_MAX_SOURCES,
        noun: str = "bad line",
        level: LogLevel = LogLevel.warn,
        burst: int = 1,
        line_format: str = LINE_FORMAT,
        max_detail: int = MAX_DETAIL,
        source_kind: str = "client",
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._log = log
        self._intervals: SourceIntervals[_Tally] = SourceIntervals(
            clock, interval=interval, max_sources=max_sources, new=_Tally,
            on_end=self._summarise,
        )
        self.interval = interval
        self.max_sources = max_sources
        self.noun = noun
        self.level = level
        self.burst = burst
        self.line_format = line_format
        self.max_detail = max(max_detail, 8)
        self.source_kind = source_kind
        self._other_count = 0
        self._other_last = ""

    @property
    def window(self) -> int:
        """Intervals begun so far (bad input in two of them never counts together)."""
        return self._intervals.window

    @property
    def tracked(self) -> int:
        """Sources tracked one by one in the current interval."""
        return self._intervals.tracked

    def note(self, source: str, detail: str) -> None:
        """``source`` sent bad input, ``detail`` says what: log it or count it."""
        source = _cut(source)
        tally = self._intervals.tally(source)
        if tally is not None and tally.seen >= self.burst:
            tally.unlogged += 1
            tally.last = _cut(detail, self.max_detail)
            return
        if tally is not None:
            tally.seen += 1
            self._log.emit(
                self.level, self.line_format,
                source=source, noun=self.noun, detail=_cut(detail, self.max_detail),
                interval=self.interval,
            )
            return
        if not self._other_count:
            self._log.emit(
                self.level,
                "{noun}s from more than {limit} sources in {interval:g} s: those from "
                "further sources are counted together (first: {source}: {detail})",
                noun=self.noun, limit=self.max_sources, interval=self.interval,
                source=source, detail=_cut(detail, self.max_detail),
            )
        self._other_count += 1
        self._other_last = f"{source}: {_cut(detail, self.max_detail)}"

    def _summarise(self, sources: dict[str, _Tally]) -> None:
        """Log one summary per source that sent more than its first, and forget them."""
        for source, tally in sources.items():
            if tally.unlogged:
                self._log.emit(
                    self.level,
                    "{kind} {source} sent {count} more {noun}s in the last {interval:g} s "
                    "(last: {detail})",
                    kind=self.source_kind, source=source, count=tally.unlogged, noun=self.noun,
                    interval=self.interval, detail=tally.last,
                )
        if self._other_count:
            self._log.emit(
                self.level,
                "{count} {noun}s from sources beyond the first {limit} in the last "
                "{interval:g} s (last from {last})",
                count=self._other_count, noun=self.noun, limit=self.max_sources,
                interval=self.interval, last=self._other_last,
            )
        self._other_count = 0
        self._other_last = ""

    def stop(self) -> None:
        """Log what is still counted now, and cancel the timer (at shutdown)."""
        self._intervals.stop()
