"""Where permit files are found (SPEC 2.1).

Search, in tiers, stopping at the first tier that finds any permit file:

1. the directories of ``-p DIR[:DIR...]``;
2. the directories of ``HQNPERMITPATH`` (colon-separated);
3. the working directory, ``/usr/local/HQN``, ``/usr/local``.

A permit file is a regular file whose base name matches ``.*hqn.permit[0-9]*$``
(``re.match``). Within a directory files come in raw directory order (the order
of ``os.scandir``, as ``ls -f`` shows it): the order matters, since the first
permit read wins when two carry the same product.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

#: A permit file's base name matches this (``re.match``).
PERMIT_FILE_NAME = re.compile(r".*hqn.permit[0-9]*$")
#: The environment variable with a colon-separated permit path.
PERMIT_PATH_VARIABLE = "HQNPERMITPATH"
#: Searched after the working directory when neither -p nor the variable finds any.
DEFAULT_DIRS: tuple[Path, ...] = (Path("/usr/local/HQN"), Path("/usr/local"))


def is_permit_file_name(name: str) -> bool:
    """True if a base name is a permit file name."""
    return PERMIT_FILE_NAME.match(name) is not None


@dataclasses.dataclass(frozen=True)
class Discovery:
    """The outcome of a permit search.

    ``source`` is which tier found the files (``"-p"``, ``"HQNPERMITPATH"`` or
    ``"defaults"``), None when none did; ``searched`` every directory looked
    at; ``problems`` the explicitly named directories that could not be read.
    """

    files: tuple[Path, ...]
    source: str | None
    searched: tuple[Path, ...]
    problems: tuple[str, ...] = ()


def permit_files_in(directory: Path) -> list[Path]:
    """The permit files of one directory, in raw directory order; OSError if unreadable."""
    found: list[Path] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not is_permit_file_name(entry.name):
                continue
            try:
                if entry.is_file():  # follows symlinks, like the reader will
                    found.append(directory / entry.name)
            except OSError:
                continue
    return found


def split_path(value: str) -> list[Path]:
    """Directories of a colon-separated path; empty parts are skipped."""
    return [Path(part) for part in value.split(":") if part]


def discover(
    permit_dirs: Sequence[Path] | None,
    *,
    environ: Mapping[str, str],
    cwd: Path,
    defaults: Sequence[Path] = DEFAULT_DIRS,
) -> Discovery:
    """Search for permit files as SPEC 2.1 says (see the module docstring).

    ``permit_dirs`` are the ``-p`` directories (None or empty: no ``-p``);
    relative directories are taken relative to ``cwd``.
    """
    tiers: list[tuple[str, list[Path], bool]] = []
    if permit_dirs:
        tiers.append(("-p", list(permit_dirs), True))
    env_value = environ.get(PERMIT_PATH_VARIABLE, "")
    if split_path(env_value):
        tiers.append((PERMIT_PATH_VARIABLE, split_path(env_value), True))
    tiers.append(("defaults", [cwd, *defaults], False))

    searched: list[Path] = []
    problems: list[str] = []
    for source, dirs, explicit in tiers:
        files: list[Path] = []
        seen: set[str] = set()
        for directory in dirs:
            directory = cwd / directory
            real = os.path.realpath(directory)
            if real in seen:
                continue  # e.g. the working directory is /usr/local
            seen.add(real)
            searched.append(directory)
            try:
                files += permit_files_in(directory)
            except OSError as e:
                if explicit:
                    problems.append(f"{source} directory {directory}: {e.strerror or e}")
        if files:
            return Discovery(tuple(files), source, tuple(searched), tuple(problems))
    return Discovery((), None, tuple(searched), tuple(problems))
