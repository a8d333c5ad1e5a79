"""Denied REQUESTs logged one by one up to a burst per address, then summarised.

A well-formed REQUEST that is refused (BADPRODUCT, NOLICENCES, ILLEGAL...) is a
licence line and a usage record. Anyone who can reach the client port can send
them by the hundred thousand on one connection: bounded by rotation, they would
still push the site's real history (grants, real denials) out of the log and the
usage report. `DenialLog` keeps the usual line and record for the first
``burst`` denials of each source address per interval (20 per 60 s by default:
far more than a site's real denials), and counts the rest by (publisher,
product, version, status). When the interval ends, each address that had more
gets ONE summary line::

    client 10.0.0.7: 99,980 more denials in the last 60 s not logged one by one:
    BADPRODUCT 99,980 (Harlequin/Nope 1.0)

(the top `TOP_SHOWN` rows, then "and N others") and ONE ``denials`` usage record
with every count (`LicenceFeed.denials`), so a usage report still counts every
denial exactly. Memory is bounded as `BadInputLog`'s is (the same
`SourceIntervals` bookkeeping): at most ``max_sources`` addresses per interval,
the denials of any further address counted together (a record with address
null); at most ``max_keys`` (publisher, product, version, status) rows per
address, further denials counted by status alone (the names null). Client
names are cut to `MAX_DETAIL` characters.

The metrics count every denial from the reply itself (`hqnlsd.service`), so
summarising here never hides one from them.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from twisted.logger import Logger

from hqnlsd.licensing.requester import Requester
from hqnlsd.logging.badinput import (
    DEFAULT_INTERVAL,
    DEFAULT_MAX_SOURCES,
    MAX_DETAIL,
    Scheduler,
    SourceIntervals,
)

#: Denials of one address logged and recorded one by one per interval.
DEFAULT_BURST = 20
#: (publisher, product, version, status) rows counted per address per interval.
DEFAULT_MAX_KEYS = 32
#: Rows named in a summary line (the record has all of them).
TOP_SHOWN = 3
#: Characters of a client-supplied name shown in a summary line.
SHOWN_NAME = 40
#: Addresses beyond ``max_sources`` told apart (to count them) per interval.
OTHER_SOURCES_COUNTED = 4096

#: (publisher, product, version, status name, code); names None: counted by status alone.
Key = tuple[str | None, str | None, str | None, str, int | None]


class DenialSink(Protocol):
    """Where denials go (`hqnlsd.logging.feed.LicenceFeed`)."""

    def denied(
        self,
        *,
        publisher: str,
        product: str,
        version: str | None,
        status: str,
        code: int | None,
        reason: str,
        who: Requester,
    ) -> None:
        """One denial: its licence line and record."""

    def denials(
        self,
        *,
        address: str | None,
        sources: int,
        count: int,
        interval: float,
        since: float,
        rows: list[tuple[Key, int]],
        summary: str,
    ) -> None:
        """Denials counted and not logged one by one: one line and one record."""


def _cut(text: str | None, limit: int = MAX_DETAIL) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


class _Counts:
    """The denials of one address (or of the addresses beyond the cap) in an interval."""

    __slots__ = ("by_key", "count", "seen", "since", "sources")

    def __init__(self, since: float) -> None:
        self.seen = 0
        self.count = 0
        self.by_key: Counter[Key] = Counter()
        self.sources: set[str] | int = 1
        self.since = since

    def add(self, key: Key, max_keys: int) -> None:
        self.count += 1
        if key in self.by_key or len(self.by_key) < max_keys:
            self.by_key[key] += 1
        else:
            self.by_key[(None, None, None, key[3], key[4])] += 1


class Clock(Scheduler, Protocol):
    """The reactor calls used (task.Clock fits)."""

    def seconds(self) -> float:
        """Now."""
        ...


class DenialLog:
    """Logs denials one by one up to ``burst`` per address per interval, then counts.

    :param sink: the feed that writes lines and records.
    :param clock: ends intervals, and says when one began.
    :param burst: denials per address per interval logged one by one.
    :param interval: seconds per interval.
    :param max_sources: addresses tracked one by one per interval.
    :param max_keys: distinct (publisher, product, version, status) per address.
    """

    DEFAULT_MAX_KEYS = DEFAULT_MAX_KEYS

    def __init__(
        self,
        sink: DenialSink,
        clock: Clock,
        *,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        max_sources: int = DEFAULT_MAX_SOURCES,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if burst < 1 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1")
        self._sink = sink
        self._clock = clock
        self.burst = burst
        self.max_keys = max_keys
        self._log = Logger()
        self._intervals: SourceIntervals[_Counts] = SourceIntervals(
            clock, interval=interval, max_sources=max_sources,
            new=lambda: _Counts(clock.seconds()), on_end=self._summarise,
        )
        self.interval = interval
        self._others: _Counts | None = None
        self._other_sources: set[str] = set()

    @property
    def tracked(self) -> int:
        """Addresses tracked one by one in the current interval."""
        return self._intervals.tracked

    def note(
        self,
        *,
        publisher: str,
        product: str,
        version: str | None,
        status: str,
        code: int | None,
        reason: str,
        who: Requester,
    ) -> None:
        """A REQUEST from ``who`` was refused: log and record it (`LicenceFeed.denied`),
        or count it by its source address."""
        source = _cut(who.address) or ""
        counts = self._intervals.tally(source)
        if counts is not None and counts.seen < self.burst:
            counts.seen += 1
            self._sink.denied(
                publisher=publisher,
                product=product,
                version=version,
                status=status,
                code=code,
                reason=reason,
                who=who,
            )
            return
        key: Key = (_cut(publisher), _cut(product), _cut(version), status, code)
        if counts is None:
            if self._others is None:
                self._others = _Counts(self._clock.seconds())
                self._log.warn(
                    "denials from more than {limit} addresses in {interval:g} s: those "
                    "from further addresses are counted together (first: {source})",
                    limit=self._intervals.max_sources, interval=self.interval, source=source,
                )
            if len(self._other_sources) < OTHER_SOURCES_COUNTED:
                self._other_sources.add(source)
            counts = self._others
        counts.add(key, self.max_keys)

    def _summarise(self, tallies: dict[str, _Counts]) -> None:
        for address, counts in tallies.items():
            if counts.count:
                self._report(address, 1, counts)
        if self._others is not None:
            self._report(None, len(self._other_sources), self._others)
        self._others = None
        self._other_sources = set()

    def _report(self, address: str | None, sources: int, counts: _Counts) -> None:
        rows = sorted(counts.by_key.items(), key=lambda row: -row[1])
        named = [row for row in rows if row[0][1] is not None][:TOP_SHOWN]
        shown = [
            f"{status} {count:,} ({_shown(publisher)}/{_shown(product)} {_shown(version)})"
            for (publisher, product, version, status, _code), count in named
        ]
        rest = counts.count - sum(count for _key, count in named)
        if rest:
            shown.append(f"and {rest:,} others")
        who = (
            f"client {address}" if address is not None
            else f"clients beyond the first {self._intervals.max_sources} ({sources} counted)"
        )
        summary = (
            f"{who}: {counts.count:,} more denials in the last {self.interval:g} s "
            f"not logged one by one: {', '.join(shown)}"
        )
        self._sink.denials(
            address=address, sources=sources, count=counts.count, interval=self.interval,
            since=counts.since, rows=rows, summary=summary,
        )

    def stop(self) -> None:
        """Report what is still counted now, and cancel the timer (at shutdown)."""
        self._intervals.stop()


def _shown(name: str | None) -> str:
    return _cut(name, SHOWN_NAME) or "-"
