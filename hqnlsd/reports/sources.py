"""Finding and reading ``usage.jsonl`` files: a daemon's live file and its rotations.

A source is a daemon's state directory (its ``usage.jsonl``) or a usage file;
either way the file's rotations beside it (``usage.jsonl.1`` ... ``.N``, any N:
the daemon keeps five) are read too, the oldest (highest number) first, the live
file last. Several sources, one per member of a domain, are read in the order
given and their records deduplicated (`hqnlsd.reports.analysis.dedupe`).

A line that is not a well-formed record is skipped and counted (`ReadResult`),
never fatal: a report is written from every good line. A source that does not
exist or cannot be read is a `ReportInputError`: a report silently missing a
member would be wrong.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

from hqnlsd.reports.analysis import dedupe
from hqnlsd.reports.records import MalformedRecord, Record, parse_record

#: The usage report's name in a state directory (`hqnlsd.logging.usage.USAGE_FILE`).
USAGE_FILE = "usage.jsonl"
#: Problems kept with their file and line (all are counted).
PROBLEMS_KEPT = 100


class ReportInputError(Exception):
    """A source that does not exist or cannot be read."""


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """A skipped line: where, and why."""

    path: Path
    line: int
    why: str


@dataclasses.dataclass(slots=True)
class ReadResult:
    """What the sources held: distinct records in reading order, and what was not used."""

    records: list[Record] = dataclasses.field(default_factory=list)
    files: list[Path] = dataclasses.field(default_factory=list)
    lines: int = 0
    skipped: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)
    unknown: int = 0  # records of kinds this reader does not know
    duplicates: int = 0


def usage_files(source: Path) -> list[Path]:
    """The usage files of ``source`` (a state directory or a usage file), oldest first."""
    try:
        if source.is_dir():
            live = source / USAGE_FILE
        elif source.exists():
            live = source
        else:
            raise ReportInputError(f"{source}: no such file or directory")
        rotation = re.compile(re.escape(live.name) + r"\.([0-9]+)")
        rotated = []
        for entry in os.scandir(live.parent):
            found = rotation.fullmatch(entry.name)
            if found:
                rotated.append((int(found.group(1)), Path(live.parent, entry.name)))
    except OSError as error:
        raise ReportInputError(f"{source}: {error.strerror or error}") from None
    files = [path for _, path in sorted(rotated, reverse=True)]
    if live.exists():
        files.append(live)
    if not files:
        raise ReportInputError(f"{source}: no {USAGE_FILE} (nor rotated ones) there")
    return files


def read_sources(sources: Sequence[Path]) -> ReadResult:
    """Every record of every source, deduplicated, in reading order."""
    result = ReadResult()
    records: list[Record] = []
    for source in sources:
        for path in usage_files(Path(source)):
            result.files.append(path)
            records.extend(_read_file(path, result))
    result.records, result.duplicates = dedupe(records)
    return result


def _read_file(path: Path, result: ReadResult) -> list[Record]:
    """The records of one file, read line by line (a member keeps up to 96 MiB)."""
    records: list[Record] = []
    try:
        with open(path, "rb") as stream:
            for number, raw in enumerate(stream, start=1):
                if raw.strip():
                    _read_line(raw, path, number, result, records)
    except OSError as error:
        raise ReportInputError(f"{path}: cannot read: {error.strerror or error}") from None
    return records


def _read_line(
    raw: bytes, path: Path, number: int, result: ReadResult, records: list[Record]
) -> None:
    result.lines += 1
    try:
        record = parse_record(raw.decode("utf-8"))
    except UnicodeDecodeError:
        _skip(result, path, number, "not UTF-8")
        return
    except MalformedRecord as error:
        _skip(result, path, number, str(error))
        return
    if record is None:
        result.unknown += 1
    else:
        records.append(record)


def _skip(result: ReadResult, path: Path, line: int, why: str) -> None:
    result.skipped += 1
    if len(result.problems) < PROBLEMS_KEPT:
        result.problems.append(Problem(path, line, why))
