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
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from hqnlsd.reports.analysis import dedupe
from hqnlsd.reports.records import MalformedRecord, Record, parse_record

#: The usage report's name in a state directory (`hqnlsd.logging.usage.USAGE_FILE`).
USAGE_FILE = "usage.jsonl"
#: Problems kept with their file and line (all are counted).
PROBLEMS_KEPT = 100
#: Longest line read as a record; a longer one is skipped, read past in pieces (the
#: daemon's longest record, a grant of 65,535 licence numbers, is under 0.5 MiB).
MAX_LINE_BYTES = 4 * 1024 * 1024


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
    #: Rotated files missing between two that were read (their records are not in
    #: the report).
    gaps: list[str] = dataclasses.field(default_factory=list)


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
        found = usage_files(Path(source))
        result.gaps.extend(_gaps(found))
        for path in found:
            result.files.append(path)
            records.extend(_read_file(path, result))
    result.records, result.duplicates = dedupe(records)
    return result


def _read_file(path: Path, result: ReadResult) -> list[Record]:
    """The records of one file, read line by line (a member keeps up to 96 MiB)."""
    records: list[Record] = []
    try:
        # Not blocking: a FIFO in the file's place would wait for a writer for ever.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(descriptor, "rb") as stream:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ReportInputError(f"{path}: not a regular file")
            os.set_blocking(descriptor, True)
            number = 0
            while raw := stream.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    _skip_rest(stream, raw)
                    result.lines += 1
                    _skip(result, path, number, f"line over {MAX_LINE_BYTES} bytes")
                elif raw.strip():
                    _read_line(raw, path, number, result, records)
    except OSError as error:
        raise ReportInputError(f"{path}: cannot read: {error.strerror or error}") from None
    return records


def _skip_rest(stream: BinaryIO, start: bytes) -> None:
    """Read past the rest of an over-long line, a piece at a time."""
    piece = start
    while piece and not piece.endswith(b"\n"):
        piece = stream.readline(MAX_LINE_BYTES)


def _gaps(files: list[Path]) -> list[str]:
    """The rotated files missing between the oldest one found and the live file."""
    numbers: set[int] = set()
    name = ""
    for path in files:
        rotated = re.fullmatch(r"(.+)\.([0-9]+)", path.name)
        if rotated:
            name = rotated.group(1)
            numbers.add(int(rotated.group(2)))
    if not numbers:
        return []
    parent = files[0].parent
    return [str(parent / f"{name}.{n}") for n in range(1, max(numbers)) if n not in numbers]


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
