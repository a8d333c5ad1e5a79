"""``hqn_report``: a usage report (HTML with charts, PNG, CSV, JSON) from ``usage.jsonl``.

::

    hqn_report [-o DIR] [--since WHEN] [--until WHEN] [--product NAME]...
               [--true-denial-minutes N] [--permits PATH]... [--permitted NAME=N]...
               [--top N] SOURCE [SOURCE ...]

Each SOURCE is a daemon's state directory or a usage file, one per member of a
domain; rotated files beside it are read too (`hqnlsd.reports.sources`). The
figures are `hqnlsd.reports.analysis`'s; this module only parses the command
line, reads the permits for their counts, and writes the files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from hqnlsd.reports.analysis import TRUE_DENIAL_SECONDS, Options, analyse, product_key
from hqnlsd.reports.sources import ReadResult, ReportInputError, read_sources

#: The report's page inside the output directory.
REPORT_PAGE = "report.html"
SUMMARY_FILE = "summary.json"
#: Problems listed on stderr at most (all are counted, and listed in the page).
PROBLEMS_SHOWN = 10


class ReportError(Exception):
    """Something the user must fix: shown as one line, exit status 1."""


def parse_when(text: str) -> float:
    """A time for ``--since``/``--until``: ISO 8601 (a date, or a date and time; UTC
    unless an offset is given) or seconds since the epoch."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time (use 2026-01-31, 2026-01-31T09:30, or epoch seconds)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes (>= 0)")
    return value


def _permitted(text: str) -> tuple[str, int]:
    name, sep, count = text.rpartition("=")
    if not sep or not name or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give PUBLISHER/PRODUCT=COUNT")
    return name, int(count)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hqn_report",
        description="Write a usage report (HTML with charts, PNG charts, CSV and JSON) "
        "from hqnlsd's usage.jsonl files.",
    )
    parser.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SOURCE",
        help="a daemon's state directory or a usage.jsonl file (its rotations are read "
        "too); one per member of a domain: records in several are counted once",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("hqn-report"),
        metavar="DIR",
        help="directory to write the report into (default: %(default)s)",
    )
    parser.add_argument(
        "--since", type=parse_when, metavar="WHEN", help="report from this time (UTC)"
    )
    parser.add_argument(
        "--until", type=parse_when, metavar="WHEN", help="report up to this time (UTC)"
    )
    parser.add_argument(
        "--product",
        action="append",
        default=[],
        metavar="NAME",
        help="only this product (PUBLISHER/PRODUCT or PRODUCT); repeatable",
    )
    parser.add_argument(
        "--true-denial-minutes",
        type=_minutes,
        default=TRUE_DENIAL_SECONDS / 60,
        metavar="N",
        help="a denial is true if the user got no licence of the product within N minutes "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--permits",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="a permit file or a directory of them, for each product's "
        "count (drawn as a line); repeatable",
    )
    parser.add_argument(
        "--permitted",
        action="append",
        default=[],
        type=_permitted,
        metavar="PUBLISHER/PRODUCT=N",
        help="a product's licence count (over --permits); repeatable",
    )
    parser.add_argument(
        "--top",
        type=_positive,
        default=10,
        metavar="N",
        help="users and hosts shown in the page (default: %(default)s)",
    )
    return parser


def permitted_counts(paths: Sequence[Path]) -> dict[str, int]:
    """Each product's licence count from the permits at ``paths`` (the first read wins,
    as in the daemon). Seals are not checked: the count only draws a line."""
    from hqnlsd.permits.discovery import permit_files_in
    from hqnlsd.permits.errors import PermitError
    from hqnlsd.permits.format import parse_permit

    counts: dict[str, int] = {}
    for path in paths:
        try:
            files = sorted(permit_files_in(path)) if path.is_dir() else [path]
            if not path.exists():
                raise ReportError(f"--permits {path}: no such file or directory")
            for file in files:
                text = file.read_text("utf-8")
                try:
                    permit = parse_permit(text, path=str(file)).permit
                except PermitError as error:
                    raise ReportError(f"--permits: {error}") from None
                for product in permit.products:
                    counts.setdefault(
                        product_key(product.publisher, product.product), product.total
                    )
        except (OSError, UnicodeDecodeError) as error:
            raise ReportError(f"--permits {path}: cannot read: {error}") from None
    return counts


def _inputs(read: ReadResult) -> dict[str, Any]:
    return {
        "files": [str(path) for path in read.files],
        "lines": read.lines,
        "records": len(read.records),
        "skipped": read.skipped,
        "duplicates": read.duplicates,
        "unknown": read.unknown,
        "rotation_gaps": read.gaps,
        "problems": [{"file": str(p.path), "line": p.line, "why": p.why} for p in read.problems],
    }


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    """Read, analyse, write (see the module doc)."""
    # Late: matplotlib is loaded only when a report is drawn (not for --help).
    from hqnlsd.reports import charts, html, tables

    if args.since is not None and args.until is not None and args.until < args.since:
        raise ReportError("--until is before --since")
    permitted = permitted_counts(args.permits)
    permitted.update(dict(args.permitted))
    read = read_sources(args.sources)
    if read.gaps:
        err.write(
            "hqn_report: warning: rotated file(s) missing, their records are not counted: "
            + ", ".join(read.gaps)
            + "\n"
        )
    if read.skipped:
        err.write(f"hqn_report: skipped {read.skipped:,} malformed line(s):\n")
        for problem in read.problems[:PROBLEMS_SHOWN]:
            err.write(f"  {problem.path}:{problem.line}: {problem.why}\n")
    options = Options(
        since=args.since,
        until=args.until,
        products=tuple(args.product),
        true_denial_seconds=args.true_denial_minutes * 60,
        permitted=permitted,
    )
    analysis = analyse(read.records, options)
    inputs = _inputs(read)
    drawn = charts.draw_all(analysis, top_n=args.top)
    output: Path = args.output
    try:
        output.mkdir(parents=True, exist_ok=True)
        for chart in drawn:
            (output / chart.file).write_bytes(chart.png)
        csv_files = tables.csv_files(analysis)
        for name, text in csv_files.items():
            (output / name).write_text(text, "utf-8")
        summary = tables.summary(analysis, inputs)
        (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
        page = html.render(analysis, drawn, inputs, top_n=args.top)
        (output / REPORT_PAGE).write_text(page, "utf-8")
    except OSError as error:
        where = error.filename or output
        raise ReportError(f"cannot write the report: {where}: {error.strerror or error}") from None
    out.write(
        f"hqn_report: {len(read.records):,} records from {len(read.files)} file(s) "
        f"({read.duplicates:,} duplicates, {read.skipped:,} malformed lines skipped); "
        f"wrote {output / REPORT_PAGE}, {len(drawn)} charts, {len(csv_files)} CSV files "
        f"and {SUMMARY_FILE}\n"
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run hqn_report; return the exit status (0 ok, 1 error, 2 usage)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage message
        return e.code if isinstance(e.code, int) else 2
    try:
        run(args, out, err)
    except (ReportError, ReportInputError) as e:
        err.write(f"hqn_report: error: {e}\n")
        return 1
    except Exception as e:  # a bug: still a message, not a traceback
        err.write(f"hqn_report: internal error ({type(e).__name__}: {e}); please report it\n")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
