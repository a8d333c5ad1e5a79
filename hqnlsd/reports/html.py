"""The report as one self-contained HTML page: styles inline, charts as ``data:`` URIs.

Every value shown is escaped: user, host and product names, statuses and file
names may hold anything a client sent. First to one line of printable text
(`hqnlsd.logging.escape.escape_text`, as the daemon's log lines: a NUL, ESC or a
bidi override shows as ``\x00``, ``\x1b``, ``\u202e``), then `html.escape`
(quotes included).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

from hqnlsd.logging.escape import escape_text
from hqnlsd.reports.analysis import Analysis
from hqnlsd.reports.charts import Chart
from hqnlsd.reports.records import RECLAIM_REASONS
from hqnlsd.reports.tables import iso

#: Rows of a long table shown in the page (the CSV files have them all).
MAX_ROWS = 200

_STYLE = """
body { font-family: sans-serif; margin: 1em auto; max-width: 1000px; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc;
  margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
.wide { overflow-x: auto; }
"""


def _e(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    # One line of printable text first (controls, bidi overrides... as \\x1b,
    # \\u202e; a backslash doubled), then HTML's own characters.
    return html.escape(escape_text(str(value)), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, limit: int = MAX_ROWS) -> str:
    out = ['<div class="wide"><table><thead><tr>']
    out += [f"<th>{_e(name)}</th>" for name in header]
    out.append("</tr></thead><tbody>")
    shown = 0
    more = 0
    for row in rows:
        if shown >= limit:
            more += 1
            continue
        shown += 1
        cells = []
        for value in row:
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            cells.append(f'<td class="n">{_e(value)}</td>' if numeric else f"<td>{_e(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    if not shown:
        out.append(f'<tr><td colspan="{len(header)}">none</td></tr>')
    out.append("</tbody></table></div>")
    if more:
        out.append(f'<p class="note">{more:,} more rows in the CSV file.</p>')
    return "".join(out)


def _image(chart: Chart) -> str:
    data = base64.b64encode(chart.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(chart.title)}" '
        f'data-chart="{_e(chart.file)}"></figure>'
    )


def render(
    analysis: Analysis, charts: Sequence[Chart], inputs: dict[str, Any], *, top_n: int = 10
) -> str:
    """The whole page."""
    by_section: dict[str, list[Chart]] = {}
    for chart in charts:
        by_section.setdefault(chart.section, []).append(chart)

    def images(section: str) -> str:
        return "".join(_image(chart) for chart in by_section.get(section, []))

    minutes = analysis.options.true_denial_seconds / 60
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>hqnlsd usage report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>hqnlsd usage report</h1>",
        f"<p>From <b>{_e(iso(analysis.start))}</b> to <b>{_e(iso(analysis.end))}</b> (UTC).</p>",
        _inputs(inputs, analysis),
        "<h2>Products</h2>",
        _table(
            (
                "product",
                "permitted",
                "peak",
                "peak at",
                "average",
                "licences given",
                "denials",
                "redirects",
                f"true denials ({minutes:g} min)",
                "undecided",
                "revoked",
                "reclaimed",
            ),
            (
                (
                    key,
                    usage.permitted if usage else None,
                    usage.peak if usage else 0,
                    iso(usage.peak_at) if usage else "",
                    usage.average if usage else 0.0,
                    t.sessions,
                    t.denials,
                    t.redirects,
                    t.true,
                    t.undecided,
                    t.revoked,
                    t.reclaimed,
                )
                for key, t in analysis.totals.items()
                for usage in [analysis.products.get(key)]
            ),
        ),
        f'<p class="note">All denials in the range: {analysis.total_denials:,}.</p>',
        "<h2>Licences in use</h2>",
        '<p class="note">Licence numbers held at each moment; the dashed line is the '
        "permit's count (when known).</p>",
        images("in-use"),
        "<h2>Peak and average per hour and per day</h2>",
        images("hourly"),
        images("daily"),
        _table(
            ("day", "product", "peak", "average"),
            (
                (iso(b.start)[:10], key, b.peak, b.average)
                for key, usage in analysis.products.items()
                for b in usage.daily
            ),
        ),
        '<p class="note">Per hour: hourly.csv.</p>',
        "<h2>Denials</h2>",
        f'<p class="note">A true denial is a refused user who was not given a licence of '
        f"that product within {minutes:g} minutes; undecided: the records end before "
        "that time is up. Denials counted in summary records name no user and are not "
        "judged.</p>",
        images("denials"),
        _table(
            ("publisher", "product", "status", "denials"),
            ((pub, prod, status, n) for (pub, prod, status), n in analysis.denials.items()),
        ),
        "<h3>Redirects</h3>",
        '<p class="note">REQUESTs answered TRY_SERVER or TRY_DOMAIN: sent to the server '
        "that serves the product (a domain's acting primary, another domain), not "
        "refused; not counted as denials.</p>",
        _table(
            ("publisher", "product", "status", "redirects"),
            ((pub, prod, status, n) for (pub, prod, status), n in analysis.redirects.items()),
        ),
        "<h3>True denials</h3>",
        _table(
            ("time", "product", "status", "user", "host", "address", "pid"),
            (
                (iso(d.at), d.product, d.status, d.user, d.host, d.address, d.pid)
                for d in analysis.true_denials
            ),
        ),
        "<h2>Top users and hosts</h2>",
        images("users"),
        _table(
            ("user", "licences given", "licence-hours", "denials"),
            ((t.name, t.sessions, t.licence_seconds / 3600, t.denials) for t in analysis.users),
            limit=top_n,
        ),
        _table(
            ("host", "licences given", "licence-hours", "denials"),
            ((t.name, t.sessions, t.licence_seconds / 3600, t.denials) for t in analysis.hosts),
            limit=top_n,
        ),
        "<h2>Session lengths</h2>",
        images("sessions"),
        _table(("length", "sessions"), ((b.label, b.count) for b in analysis.session_lengths)),
        "<h2>Licences revoked and reclaimed</h2>",
        '<p class="note">Reclaims are the licences housekeeping took back to give to '
        f"someone else ({_e(', '.join(sorted(RECLAIM_REASONS)))}).</p>",
        images("revoked"),
        _table(
            ("publisher", "product", "reason", "reclaim", "licences"),
            (
                (pub, prod, reason, "yes" if reason in RECLAIM_REASONS else "no", n)
                for (pub, prod, reason), n in analysis.reclaimed.items()
            ),
        ),
        "<h2>Server role changes</h2>",
        _table(
            ("time", "domain", "role", "previous", "rank", "epoch"),
            ((iso(r.at), r.domain, r.role, r.previous, r.rank, r.epoch) for r in analysis.roles),
        ),
        _problems(inputs),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _inputs(inputs: dict[str, Any], analysis: Analysis) -> str:
    files = "".join(f"<li>{_e(name)}</li>" for name in inputs.get("files", []))
    return (
        f"<p>Read {inputs.get('lines', 0):,} lines from {len(inputs.get('files', []))} "
        f"file(s); {inputs.get('skipped', 0):,} malformed line(s) skipped, "
        f"{inputs.get('duplicates', 0):,} duplicate record(s) counted once, "
        f"{inputs.get('unknown', 0):,} record(s) of unknown kinds ignored, "
        f"{analysis.ends_without_start:,} licence end(s) without a known start.</p>"
        f"<details><summary>Files</summary><ul>{files}</ul></details>" + _gaps(inputs)
    )


def _gaps(inputs: dict[str, Any]) -> str:
    gaps = inputs.get("rotation_gaps", [])
    if not gaps:
        return ""
    return (
        "<p><strong>Rotated files missing</strong> (their records are not counted): "
        + ", ".join(_e(name) for name in gaps)
        + "</p>"
    )


def _problems(inputs: dict[str, Any]) -> str:
    problems = inputs.get("problems", [])
    if not problems:
        return ""
    return "<h2>Skipped lines</h2>" + _table(
        ("file", "line", "why"), ((p["file"], p["line"], p["why"]) for p in problems)
    )
