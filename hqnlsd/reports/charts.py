"""The report's charts, drawn by matplotlib (Agg backend, no display) as PNG bytes.

Every chart is drawn, with a "none in this range" note when it has nothing to
show, so a report always has the same charts. Labels come from the network (user,
host, product, status): they are escaped to one line of printable text, shortened,
and drawn with mathtext off (a ``$`` in a user name is a dollar sign, not TeX).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import warnings
from collections.abc import Sequence
from typing import Any, cast

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hqnlsd.logging.escape import escape_text
from hqnlsd.reports.analysis import DAY, HOUR, Analysis, ProductUsage

#: Bars shown at most in one chart (the CSV files have them all).
MAX_BARS = 20
#: Products drawn together in the hourly and daily charts at most.
MAX_PRODUCTS = 8
LABEL_CHARS = 40
#: Typed loosely: matplotlib types rc keys as a Literal of every known key.
_STYLE: dict[Any, Any] = {
    "text.parse_math": False,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def label(text: str | None) -> str:
    """Untrusted text as a short, printable chart label."""
    shown = escape_text("(unknown)" if text is None else text)
    return shown if len(shown) <= LABEL_CHARS else shown[: LABEL_CHARS - 1] + "…"


def _when(at: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(at, datetime.UTC)


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        # A name in a script the font lacks is drawn with boxes; say nothing per glyph.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        FigureCanvasAgg(figure).print_png(out)
    return out.getvalue()


def _figure(title: str, height: float = 3.6) -> tuple[Figure, matplotlib.axes.Axes]:
    figure = Figure(figsize=(9, height), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    return figure, axes


def _empty(axes: matplotlib.axes.Axes) -> None:
    axes.text(0.5, 0.5, "none in this range", ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def in_use(usage: ProductUsage, end: float) -> bytes:
    """Licences in use over time, with the permit's count as a line."""
    with matplotlib.rc_context(_STYLE):
        figure, axes = _figure(f"{label(usage.key)}: licences in use")
        times = [_when(at) for at, _ in usage.series] + [_when(end)]
        levels = [level for _, level in usage.series]
        levels.append(levels[-1] if levels else 0)
        axes.step(cast(Any, times), levels, where="post", label="in use")
        if usage.permitted is not None:
            axes.axhline(
                usage.permitted,
                color="tab:red",
                linestyle="--",
                label=f"permitted ({usage.permitted})",
            )
        axes.set_ylim(bottom=0, top=max([*levels, usage.permitted or 0, 1]) * 1.15)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("licences")
        axes.set_xlabel("time (UTC)")
        axes.legend(loc="upper left")
        figure.autofmt_xdate()
        return _png(figure)


def _per_bucket(analysis: Analysis, which: str, size: float, title: str) -> bytes:
    """Each bucket drawn across its whole hour or day (steps), peak solid, average dashed."""
    with matplotlib.rc_context(_STYLE):
        figure, axes = _figure(title)
        products = list(analysis.products.values())[:MAX_PRODUCTS]
        drawn = False
        top = 1.0
        for number, usage in enumerate(products):
            buckets = getattr(usage, which)
            if not buckets:
                continue
            drawn = True
            colour = f"C{number % 10}"
            times = cast(Any, [_when(b.start) for b in buckets] + [_when(buckets[-1].start + size)])
            peaks = [b.peak for b in buckets]
            averages = [b.average for b in buckets]
            top = max(top, *peaks)
            axes.step(
                times,
                [*peaks, peaks[-1]],
                where="post",
                color=colour,
                label=f"{label(usage.key)} peak",
            )
            axes.step(
                times,
                [*averages, averages[-1]],
                where="post",
                color=colour,
                linestyle="--",
                label=f"{label(usage.key)} average",
            )
        if not drawn:
            _empty(axes)
        else:
            axes.set_ylim(bottom=0, top=top * 1.15)
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_ylabel("licences")
            axes.set_xlabel("UTC")
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
            figure.autofmt_xdate()
        return _png(figure)


def hourly(analysis: Analysis) -> bytes:
    """Peak and average use per hour, per product."""
    return _per_bucket(analysis, "hourly", HOUR, "Peak and average licences in use per hour")


def daily(analysis: Analysis) -> bytes:
    """Peak and average use per day, per product."""
    return _per_bucket(analysis, "daily", DAY, "Peak and average licences in use per day")


def _bars(title: str, names: Sequence[str], values: Sequence[float], unit: str) -> bytes:
    with matplotlib.rc_context(_STYLE):
        shown = list(zip(names, values, strict=True))[:MAX_BARS]
        figure, axes = _figure(title, height=max(2.4, 0.8 + 0.28 * len(shown)))
        if not shown:
            _empty(axes)
            return _png(figure)
        positions = range(len(shown))
        axes.barh(positions, [value for _, value in shown], color="tab:blue")
        axes.set_yticks(positions, [name for name, _ in shown])
        axes.invert_yaxis()
        axes.set_xlabel(unit)
        if unit != "licence-hours":  # counts
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        return _png(figure)


def denials(analysis: Analysis) -> bytes:
    """Denials per product and status."""
    rows = list(analysis.denials.items())
    return _bars(
        "Denials per product and reason",
        [label(f"{product or '(any)'}: {status}") for (_, product, status), _ in rows],
        [count for _, count in rows],
        "denials",
    )


def true_denials(analysis: Analysis) -> bytes:
    """Denials, true denials and undecided ones, per product."""
    minutes = analysis.options.true_denial_seconds / 60
    with matplotlib.rc_context(_STYLE):
        rows = [(key, t) for key, t in analysis.totals.items() if t.denials][:MAX_BARS]
        figure, axes = _figure(
            f"Denials and true denials (no licence within {minutes:g} min)",
            height=max(2.4, 0.8 + 0.5 * len(rows)),
        )
        if not rows:
            _empty(axes)
            return _png(figure)
        positions = range(len(rows))
        width = 0.27
        for offset, (name, values) in enumerate(
            (
                ("denials", [t.denials for _, t in rows]),
                ("true denials", [t.true for _, t in rows]),
                ("undecided", [t.undecided for _, t in rows]),
            )
        ):
            axes.barh(
                [p + (offset - 1) * width for p in positions], values, height=width, label=name
            )
        axes.set_yticks(positions, [label(key) for key, _ in rows])
        axes.invert_yaxis()
        axes.set_xlabel("denials")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(loc="lower right")
        return _png(figure)


def top(title: str, rows: Sequence[tuple[str, float]]) -> bytes:
    """Licence-hours of the top users or hosts."""
    return _bars(title, [label(name) for name, _ in rows], [v for _, v in rows], "licence-hours")


def session_lengths(analysis: Analysis) -> bytes:
    """How long licences were held."""
    with matplotlib.rc_context(_STYLE):
        figure, axes = _figure("Session lengths (licences that ended)")
        buckets = analysis.session_lengths
        if not any(b.count for b in buckets):
            _empty(axes)
            return _png(figure)
        axes.bar([b.label for b in buckets], [b.count for b in buckets], color="tab:green")
        axes.set_ylabel("sessions")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        return _png(figure)


def revoked(analysis: Analysis) -> bytes:
    """Licences taken back, per product and reason."""
    rows = list(analysis.reclaimed.items())
    return _bars(
        "Licences revoked and reclaimed, per product and reason",
        [label(f"{product}: {reason}") for (_, product, reason), _ in rows],
        [count for _, count in rows],
        "licences",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Chart:
    """One chart: its PNG file name, the section it belongs to, a title, the image."""

    file: str
    section: str
    title: str
    png: bytes


def draw_all(analysis: Analysis, *, top_n: int = 10) -> list[Chart]:
    """Every chart of the report, in the order the report shows them."""
    charts = []
    end = analysis.end if analysis.end is not None else 0.0
    for number, usage in enumerate(analysis.products.values(), start=1):
        charts.append(
            Chart(
                f"in_use_{number}.png",
                "in-use",
                f"{usage.key}: licences in use",
                in_use(usage, end),
            )
        )
    charts += [
        Chart("hourly.png", "hourly", "Peak and average per hour", hourly(analysis)),
        Chart("daily.png", "daily", "Peak and average per day", daily(analysis)),
        Chart("denials.png", "denials", "Denials per product and reason", denials(analysis)),
        Chart("true_denials.png", "denials", "True denials", true_denials(analysis)),
        Chart(
            "users.png",
            "users",
            "Top users",
            top(
                "Top users (licence-hours)",
                [(t.name, t.licence_seconds / 3600) for t in analysis.users[:top_n]],
            ),
        ),
        Chart(
            "hosts.png",
            "users",
            "Top hosts",
            top(
                "Top hosts (licence-hours)",
                [(t.name, t.licence_seconds / 3600) for t in analysis.hosts[:top_n]],
            ),
        ),
        Chart("session_lengths.png", "sessions", "Session lengths", session_lengths(analysis)),
        Chart("revoked.png", "revoked", "Licences revoked", revoked(analysis)),
    ]
    return charts
