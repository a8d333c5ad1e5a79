"""The figures of a usage report, from records: pure (no files, no clock).

`analyse` takes the records (deduplicated with `dedupe` when they come from
several members) and `Options`, and returns an `Analysis`:

- **sessions**: one per licence handle, from its grant to its end (release or
  revocation). A licence still held when the records end is in use to the end of
  the report; an end whose grant was not read (rotated away, or granted before a
  failover) starts ``held_seconds`` before it.
- **in use**, per product (``PUBLISHER/PRODUCT``): the licence numbers held at
  every instant (a licence taken with ``units=3`` holds 3), as a step series
  from the start of the report; its peak (the highest level at any instant) and
  its time-weighted average, overall and per UTC hour and day.
- **denials** per product and status (single ``denial`` records and the counts
  of ``denials`` summaries; redirects, TRY_SERVER and TRY_DOMAIN, counted apart:
  they send a client elsewhere, they refuse no one), and **true denials**: a
  refused user who was not given a licence of that product within ``true_denial_seconds`` after the
  refusal. A refusal whose window outlasts the records is *undecided*; the
  summaries name no user and are not judged.
- **top users and hosts** (sessions started in the report's range, licence-hours
  held in it), the **session length** distribution (sessions that ended), the
  **licences revoked** per product and reason (the reclaims among them).

The report's range is ``[since, until]``; without them, from the first record
(or the start of a session found from ``held_seconds``) to the last.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hqnlsd.reports.records import (
    RECLAIM_REASONS,
    Denial,
    DenialCount,
    End,
    Grant,
    Record,
    RoleChange,
    identity,
)

HOUR = 3600.0
DAY = 86400.0
#: Default window of a true denial (seconds).
TRUE_DENIAL_SECONDS = 600.0

#: Statuses that send a client to another server (a backup names the primary, a
#: server names another domain's): not refusals, counted apart as redirects.
REDIRECT_STATUSES = frozenset({"TRY_SERVER", "TRY_DOMAIN"})

#: Session length buckets: label, lower bound (seconds, included).
LENGTH_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 min", 0.0),
    ("1-5 min", 60.0),
    ("5-15 min", 300.0),
    ("15-60 min", 900.0),
    ("1-4 h", 3600.0),
    ("4-8 h", 4 * 3600.0),
    ("8-24 h", 8 * 3600.0),
    (">= 24 h", 24 * 3600.0),
)


def product_key(publisher: str | None, product: str | None) -> str:
    """How a product is named in the report: ``PUBLISHER/PRODUCT``."""
    return f"{publisher}/{product}"


@dataclasses.dataclass(frozen=True)
class Options:
    """What to report: the range (seconds since the epoch), the products (each
    ``PUBLISHER/PRODUCT`` or a product name; none: all), the window of a true
    denial, and the permit's count of each product it is known for."""

    since: float | None = None
    until: float | None = None
    products: Sequence[str] = ()
    true_denial_seconds: float = TRUE_DENIAL_SECONDS
    permitted: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def wants(self, publisher: str | None, product: str | None) -> bool:
        """True if the product is reported (unnamed products only when all are)."""
        if not self.products:
            return True
        if product is None:
            return False
        return product in self.products or product_key(publisher, product) in self.products


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """One licence, from grant to end (``end`` None: still held when the records end)."""

    handle: str
    publisher: str
    product: str
    user: str | None
    host: str | None
    units: int
    start: float
    end: float | None
    ended_by: str | None  # "release", a revocation reason, or None

    @property
    def key(self) -> str:
        """The product's report name."""
        return product_key(self.publisher, self.product)

    @property
    def seconds(self) -> float | None:
        """How long it was held, if it ended."""
        return None if self.end is None else self.end - self.start


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    """Use in one hour or day (``start``, UTC): the highest level, the time-weighted
    average over the part of it inside the report's range."""

    start: float
    peak: int
    average: float


@dataclasses.dataclass(slots=True)
class ProductUsage:
    """Licences of one product in use over the report's range."""

    key: str
    permitted: int | None
    series: list[tuple[float, int]]
    peak: int
    peak_at: float | None
    average: float
    hourly: list[Bucket]
    daily: list[Bucket]


@dataclasses.dataclass(slots=True)
class ProductTotals:
    """Counts of one product over the report's range."""

    sessions: int = 0
    denials: int = 0
    redirects: int = 0
    true: int = 0
    undecided: int = 0
    revoked: int = 0
    reclaimed: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Top:
    """One user's (or host's) use: sessions started, licence-seconds held, denials."""

    name: str
    sessions: int
    licence_seconds: float
    denials: int


@dataclasses.dataclass(frozen=True, slots=True)
class LengthBucket:
    """How many sessions lasted ``[low, high)`` seconds."""

    label: str
    low: float
    high: float
    count: int


@dataclasses.dataclass(slots=True)
class Analysis:
    """Everything a report shows (see the module doc)."""

    start: float | None
    end: float | None
    options: Options
    products: dict[str, ProductUsage]
    totals: dict[str, ProductTotals]
    sessions: list[Session]
    denials: dict[tuple[str | None, str | None, str], int]
    redirects: dict[tuple[str | None, str | None, str], int]
    true_denials: list[Denial]
    users: list[Top]
    hosts: list[Top]
    session_lengths: list[LengthBucket]
    reclaimed: dict[tuple[str | None, str | None, str], int]
    roles: list[RoleChange]
    ends_without_start: int
    duplicates: int = 0

    @property
    def total_denials(self) -> int:
        """Every REQUEST refused in the range (of the products reported)."""
        return sum(self.denials.values())


def dedupe(records: Iterable[Record]) -> tuple[list[Record], int]:
    """The records without repeats of one transaction (`records.identity`), the
    first kept, and how many repeats were dropped."""
    seen: set[tuple[Any, ...]] = set()
    kept: list[Record] = []
    dropped = 0
    for record in records:
        key = identity(record)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(record)
    return kept, dropped


def analyse(records: Sequence[Record], options: Options) -> Analysis:
    """The report's figures (see the module doc)."""
    records, duplicates = dedupe(records)
    sessions, orphans = _sessions(records)
    start, end, last = _range(records, sessions, options)
    wanted = [s for s in sessions if options.wants(s.publisher, s.product)]
    in_range = [
        s
        for s in wanted
        if start is not None
        and end is not None
        and s.start <= end
        and (s.end is None or s.end >= start)
    ]
    analysis = Analysis(
        start=start,
        end=end,
        options=options,
        products={},
        totals=defaultdict(ProductTotals),
        sessions=[s for s in in_range if start is not None and s.start >= start],
        denials={},
        redirects={},
        true_denials=[],
        users=[],
        hosts=[],
        session_lengths=[],
        reclaimed={},
        roles=[],
        ends_without_start=orphans,
        duplicates=duplicates,
    )
    if start is None or end is None:
        analysis.totals = dict(analysis.totals)
        return analysis
    _usage(analysis, in_range, start, end)
    _denials(analysis, records, start, end, last)
    _people(analysis, records, in_range, start, end)
    _lengths(analysis)
    _reclaims(analysis, records, start, end)
    analysis.roles = [r for r in records if isinstance(r, RoleChange) and start <= r.at <= end]
    analysis.totals = dict(sorted(analysis.totals.items()))
    return analysis


def _sessions(records: Sequence[Record]) -> tuple[list[Session], int]:
    """A session per handle; and the ends that cannot be placed (no grant, no length)."""
    grants: dict[str, Grant] = {}
    ends: dict[str, End] = {}
    for record in records:
        if isinstance(record, Grant):
            grants.setdefault(record.handle, record)
        elif isinstance(record, End):
            ends.setdefault(record.handle, record)
    sessions = []
    orphans = 0
    for handle, grant in grants.items():
        end = ends.get(handle)
        sessions.append(
            Session(
                handle=handle,
                publisher=grant.publisher,
                product=grant.product,
                user=grant.user,
                host=grant.host,
                units=grant.units,
                start=grant.at,
                end=None if end is None else max(end.at, grant.at),
                ended_by=None if end is None else _ended_by(end),
            )
        )
    for handle, end in ends.items():
        if handle in grants:
            continue
        if end.held_seconds is None or end.publisher is None or end.product is None:
            orphans += 1
            continue
        sessions.append(
            Session(
                handle=handle,
                publisher=end.publisher,
                product=end.product,
                user=end.user,
                host=end.host,
                units=end.units or 1,
                start=end.at - end.held_seconds,
                end=end.at,
                ended_by=_ended_by(end),
            )
        )
    sessions.sort(key=lambda s: (s.start, s.handle))
    return sessions, orphans


def _ended_by(end: End) -> str:
    return "release" if end.kind == "release" else (end.reason or end.kind)


def _range(
    records: Sequence[Record], sessions: Sequence[Session], options: Options
) -> tuple[float | None, float | None, float | None]:
    """The report's start and end, and the time of the last record read."""
    times = [record.at for record in records]
    if not times:
        return options.since, options.until, None
    last = max(times)
    start = options.since
    if start is None:
        start = min(min(times), min((s.start for s in sessions), default=math.inf))
    end = options.until if options.until is not None else last
    return start, max(start, end), last


def _usage(analysis: Analysis, sessions: Sequence[Session], start: float, end: float) -> None:
    changes: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for session in sessions:
        totals = analysis.totals[session.key]
        if session.start >= start:
            totals.sessions += 1
        changes[session.key].append((max(session.start, start), session.units))
        if session.end is not None and session.end <= end:
            changes[session.key].append((session.end, -session.units))
    for key in sorted(changes):
        series = _series(changes[key], start)
        peak, peak_at = max(((level, -t) for t, level in series), default=(0, -start))
        analysis.products[key] = ProductUsage(
            key=key,
            permitted=analysis.options.permitted.get(key),
            series=series,
            peak=peak,
            peak_at=-peak_at,
            average=_integral(series, start, end) / (end - start) if end > start else peak,
            hourly=_buckets(series, start, end, HOUR),
            daily=_buckets(series, start, end, DAY),
        )


def _series(changes: list[tuple[float, int]], start: float) -> list[tuple[float, int]]:
    """The level after every change time (ends before starts at one instant), from ``start``."""
    series: list[tuple[float, int]] = [(start, 0)]
    level = 0
    for at, delta in sorted(changes):
        level += delta
        if series[-1][0] == at:
            series[-1] = (at, level)
        else:
            series.append((at, level))
    if len(series) > 1 and series[1][0] == start:
        series.pop(0)
    return series


def _integral(series: Sequence[tuple[float, int]], start: float, end: float) -> float:
    total = 0.0
    for index, (at, level) in enumerate(series):
        following = series[index + 1][0] if index + 1 < len(series) else end
        total += level * (min(following, end) - max(at, start))
    return total


def _buckets(
    series: Sequence[tuple[float, int]], start: float, end: float, size: float
) -> list[Bucket]:
    """Peak and time-weighted average per aligned ``size`` bucket (UTC hours, days)."""
    peaks: dict[float, int] = {}
    areas: dict[float, float] = defaultdict(float)
    for index, (at, level) in enumerate(series):
        following = series[index + 1][0] if index + 1 < len(series) else end
        here = math.floor(at / size) * size
        peaks[here] = max(peaks.get(here, level), level)
        moment = at
        while moment < following:
            bucket = math.floor(moment / size) * size
            upto = min(bucket + size, following)
            peaks[bucket] = max(peaks.get(bucket, level), level)
            areas[bucket] += level * (upto - moment)
            moment = upto
    buckets = []
    for bucket in sorted(peaks):
        span = min(bucket + size, end) - max(bucket, start)
        average = areas[bucket] / span if span > 0 else float(peaks[bucket])
        buckets.append(Bucket(bucket, peaks[bucket], average))
    return buckets


def _denials(
    analysis: Analysis, records: Sequence[Record], start: float, end: float, last: float | None
) -> None:
    options = analysis.options
    counts: Counter[tuple[str | None, str | None, str]] = Counter()
    redirects: Counter[tuple[str | None, str | None, str]] = Counter()
    granted: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for record in records:
        if isinstance(record, Grant):
            granted[(record.publisher, record.product, record.user)].append(record.at)
    for times in granted.values():
        times.sort()
    window = options.true_denial_seconds
    for record in records:
        if not start <= record.at <= end:
            continue
        if isinstance(record, DenialCount):
            for row in record.rows:
                if not options.wants(row.publisher, row.product):
                    continue
                redirect = row.status in REDIRECT_STATUSES
                (redirects if redirect else counts)[(row.publisher, row.product, row.status)] += (
                    row.count
                )
                if row.product is not None:
                    row_totals = analysis.totals[product_key(row.publisher, row.product)]
                    if redirect:
                        row_totals.redirects += row.count
                    else:
                        row_totals.denials += row.count
            continue
        if not isinstance(record, Denial) or not options.wants(record.publisher, record.product):
            continue
        totals = analysis.totals[product_key(record.publisher, record.product)]
        if record.status in REDIRECT_STATUSES:
            redirects[(record.publisher, record.product, record.status)] += 1
            totals.redirects += 1
            continue
        counts[(record.publisher, record.product, record.status)] += 1
        totals.denials += 1
        times = granted.get((record.publisher or "", record.product or "", record.user), [])
        after = bisect.bisect_left(times, record.at)
        if after < len(times) and times[after] <= record.at + window:
            continue  # given a licence in time
        if last is None or record.at + window > last:
            totals.undecided += 1
        else:
            totals.true += 1
            analysis.true_denials.append(record)
    analysis.denials = dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))
    analysis.redirects = dict(sorted(redirects.items(), key=lambda item: (-item[1], str(item[0]))))


def _people(
    analysis: Analysis,
    records: Sequence[Record],
    sessions: Sequence[Session],
    start: float,
    end: float,
) -> None:
    denied_users: Counter[str] = Counter()
    denied_hosts: Counter[str] = Counter()
    for record in records:
        if (
            isinstance(record, Denial)
            and start <= record.at <= end
            and record.status not in REDIRECT_STATUSES
            and analysis.options.wants(record.publisher, record.product)
        ):
            denied_users[_name(record.user)] += 1
            denied_hosts[_name(record.host)] += 1
    by_user: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    by_host: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for session in sessions:
        held = (
            min(session.end if session.end is not None else end, end) - max(session.start, start)
        ) * session.units
        for table, name in ((by_user, session.user), (by_host, session.host)):
            row = table[_name(name)]
            if session.start >= start:
                row[0] += 1
            row[1] += held
    analysis.users = _top(by_user, denied_users)
    analysis.hosts = _top(by_host, denied_hosts)


def _name(name: str | None) -> str:
    return name if name is not None else "(unknown)"


def _top(table: Mapping[str, list[float]], denied: Counter[str]) -> list[Top]:
    rows = [
        Top(
            name=name,
            sessions=int(table[name][0]) if name in table else 0,
            licence_seconds=table[name][1] if name in table else 0.0,
            denials=denied[name],
        )
        for name in set(table) | set(denied)
    ]
    rows.sort(key=lambda top: (-top.licence_seconds, -top.sessions, -top.denials, top.name))
    return rows


def _lengths(analysis: Analysis) -> None:
    lengths = [s.seconds for s in analysis.sessions if s.seconds is not None]
    bounds = [low for _, low in LENGTH_BUCKETS] + [math.inf]
    analysis.session_lengths = [
        LengthBucket(
            label, low, bounds[i + 1], sum(1 for length in lengths if low <= length < bounds[i + 1])
        )
        for i, (label, low) in enumerate(LENGTH_BUCKETS)
    ]


def _reclaims(analysis: Analysis, records: Sequence[Record], start: float, end: float) -> None:
    counts: Counter[tuple[str | None, str | None, str]] = Counter()
    for record in records:
        if (
            isinstance(record, End)
            and record.kind == "revoked"
            and start <= record.at <= end
            and analysis.options.wants(record.publisher, record.product)
        ):
            reason = record.reason or "revoked"
            counts[(record.publisher, record.product, reason)] += 1
            totals = analysis.totals[product_key(record.publisher, record.product)]
            totals.revoked += 1
            if reason in RECLAIM_REASONS:
                totals.reclaimed += 1
    analysis.reclaimed = dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))
