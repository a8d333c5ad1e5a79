"""The report's figures as CSV files and a JSON summary (text, not yet written).

Times are ISO 8601 UTC. Text from the network (user, host, product, status) is
written as it was sent, except that a cell starting with ``= + - @`` or a tab
gets a leading ``'``: a spreadsheet opening the file must not run it as a formula.
"""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Iterable, Sequence
from typing import Any

from hqnlsd.reports.analysis import Analysis, Bucket

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def iso(at: float | None) -> str:
    """``at`` (seconds since the epoch) as ISO 8601 UTC, to the second."""
    if at is None:
        return ""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, float):
        return f"{value:.3f}"
    return value


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()


def _buckets(analysis: Analysis, which: str) -> Iterable[Sequence[Any]]:
    for key, usage in analysis.products.items():
        buckets: list[Bucket] = getattr(usage, which)
        for bucket in buckets:
            yield (iso(bucket.start), key, bucket.peak, bucket.average, usage.permitted)


def csv_files(analysis: Analysis) -> dict[str, str]:
    """File name -> CSV text, one file per table of the report."""
    return {
        "products.csv": _csv(
            (
                "product",
                "permitted",
                "peak",
                "peak_at",
                "average",
                "sessions",
                "denials",
                "redirects",
                "true_denials",
                "undecided_denials",
                "revoked",
                "reclaimed",
            ),
            (
                (
                    key,
                    usage.permitted if usage else None,
                    usage.peak if usage else 0,
                    iso(usage.peak_at) if usage else None,
                    usage.average if usage else 0.0,
                    totals.sessions,
                    totals.denials,
                    totals.redirects,
                    totals.true,
                    totals.undecided,
                    totals.revoked,
                    totals.reclaimed,
                )
                for key, totals in analysis.totals.items()
                for usage in [analysis.products.get(key)]
            ),
        ),
        "in_use.csv": _csv(
            ("time", "product", "in_use", "permitted"),
            (
                (iso(at), key, level, usage.permitted)
                for key, usage in analysis.products.items()
                for at, level in usage.series
            ),
        ),
        "hourly.csv": _csv(
            ("hour", "product", "peak", "average", "permitted"), _buckets(analysis, "hourly")
        ),
        "daily.csv": _csv(
            ("day", "product", "peak", "average", "permitted"), _buckets(analysis, "daily")
        ),
        "denials.csv": _csv(
            ("publisher", "product", "status", "count"),
            ((pub, prod, status, count) for (pub, prod, status), count in analysis.denials.items()),
        ),
        "redirects.csv": _csv(
            ("publisher", "product", "status", "count"),
            ((pub, prod, status, n) for (pub, prod, status), n in analysis.redirects.items()),
        ),
        "true_denials.csv": _csv(
            ("time", "publisher", "product", "status", "user", "host", "address", "pid"),
            (
                (iso(d.at), d.publisher, d.product, d.status, d.user, d.host, d.address, d.pid)
                for d in analysis.true_denials
            ),
        ),
        "users.csv": _csv(
            ("user", "sessions", "licence_hours", "denials"),
            ((t.name, t.sessions, t.licence_seconds / 3600, t.denials) for t in analysis.users),
        ),
        "hosts.csv": _csv(
            ("host", "sessions", "licence_hours", "denials"),
            ((t.name, t.sessions, t.licence_seconds / 3600, t.denials) for t in analysis.hosts),
        ),
        "sessions.csv": _csv(
            ("handle", "product", "user", "host", "units", "start", "end", "seconds", "ended_by"),
            (
                (
                    s.handle,
                    s.key,
                    s.user,
                    s.host,
                    s.units,
                    iso(s.start),
                    iso(s.end),
                    s.seconds,
                    s.ended_by,
                )
                for s in analysis.sessions
            ),
        ),
        "session_lengths.csv": _csv(
            ("length", "low_seconds", "high_seconds", "sessions"),
            (
                (b.label, b.low, None if b.high == float("inf") else b.high, b.count)
                for b in analysis.session_lengths
            ),
        ),
        "revoked.csv": _csv(
            ("publisher", "product", "reason", "count"),
            ((pub, prod, reason, n) for (pub, prod, reason), n in analysis.reclaimed.items()),
        ),
    }


def summary(analysis: Analysis, inputs: dict[str, Any]) -> dict[str, Any]:
    """The headline figures as JSON-ready data (``summary.json``)."""
    return {
        "start": iso(analysis.start),
        "end": iso(analysis.end),
        "true_denial_minutes": analysis.options.true_denial_seconds / 60,
        "inputs": inputs,
        "total_denials": analysis.total_denials,
        "total_redirects": sum(analysis.redirects.values()),
        "products": {
            key: {
                "permitted": usage.permitted if usage else None,
                "peak": usage.peak if usage else 0,
                "peak_at": iso(usage.peak_at) if usage else None,
                "average": round(usage.average, 4) if usage else 0.0,
                "sessions": totals.sessions,
                "denials": totals.denials,
                "redirects": totals.redirects,
                "true_denials": totals.true,
                "undecided_denials": totals.undecided,
                "revoked": totals.revoked,
                "reclaimed": totals.reclaimed,
            }
            for key, totals in analysis.totals.items()
            for usage in [analysis.products.get(key)]
        },
    }
