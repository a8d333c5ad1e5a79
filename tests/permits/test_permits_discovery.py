"""Tests for hqnlsd.permits.discovery: where permit files are found, in which order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hqnlsd.permits.discovery import (
    PERMIT_PATH_VARIABLE,
    discover,
    is_permit_file_name,
    permit_files_in,
)


def touch(directory: Path, *names: str) -> list[Path]:
    """Create empty files ``names`` in ``directory`` (made if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / name
        path.write_text("")
        paths.append(path)
    return paths


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """Separate directories for -p, the environment, the cwd and the defaults."""
    names = ("p1", "p2", "env1", "env2", "cwd", "hqn", "local")
    made = {name: tmp_path / name for name in names}
    for path in made.values():
        path.mkdir()
    return made


def run(
    dirs: dict[str, Path], permit_dirs: list[Path] | None, env: str | None = None
) -> tuple[list[Path], str | None]:
    """discover() with the fixture's cwd and defaults; files and source."""
    environ = {} if env is None else {PERMIT_PATH_VARIABLE: env}
    found = discover(
        permit_dirs, environ=environ, cwd=dirs["cwd"], defaults=(dirs["hqn"], dirs["local"])
    )
    return list(found.files), found.source


class TestNames:
    """The permit file name pattern ``.*hqn.permit[0-9]*$`` (re.match on the base name)."""

    @pytest.mark.parametrize(
        "name",
        ["hqn.permit", "hqn.permit2", "hqn.permit123", "Lisp-hqn.permit", "demo-hqn.permit",
         "hqn_permit", "xhqn.permit"],
    )
    def test_matching_names(self, name: str) -> None:
        """Names the pattern accepts ('.' matches any character, as in the original)."""
        assert is_permit_file_name(name)

    @pytest.mark.parametrize(
        "name",
        ["hqn.permit.bak", "hqn.permit2a", "hqn.permits", "hqn.form", "HQN.PERMIT", "permit",
         "hqnpermit", "hqn.permit~"],
    )
    def test_other_names(self, name: str) -> None:
        """Names the pattern refuses."""
        assert not is_permit_file_name(name)


class TestDirectory:
    """Files of one directory: pattern, regular files, raw directory order."""

    def test_raw_directory_order(self, tmp_path: Path) -> None:
        """The order is os.scandir's (ls -f), not sorted."""
        names = [f"{c}-hqn.permit" for c in "qwertyuiopasdfghjklzxcvbnm"]
        touch(tmp_path, *names)
        raw = [entry.name for entry in os.scandir(tmp_path)]
        assert [p.name for p in permit_files_in(tmp_path)] == raw

    def test_order_is_never_sorted(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a directory listing in a known unsorted order, that order is kept."""
        names = ["z-hqn.permit", "a-hqn.permit", "m-hqn.permit", "b-hqn.permit"]
        touch(tmp_path, *names)
        real_scandir = os.scandir

        class Listing:
            """os.scandir's result, in a chosen order."""

            def __init__(self, path: Path) -> None:
                self.entries = [e for n in names for e in real_scandir(path) if e.name == n]

            def __enter__(self) -> list[os.DirEntry[str]]:
                return self.entries

            def __exit__(self, *exc: object) -> None:
                return None

        monkeypatch.setattr("hqnlsd.permits.discovery.os.scandir", Listing)
        assert [p.name for p in permit_files_in(tmp_path)] == names

    def test_only_matching_regular_files(self, tmp_path: Path) -> None:
        """Non-matching names and directories that match are skipped; symlinks followed."""
        touch(tmp_path, "hqn.permit", "notes.txt", "hqn.permit.bak")
        (tmp_path / "dir-hqn.permit").mkdir()
        (tmp_path / "link-hqn.permit").symlink_to(tmp_path / "hqn.permit")
        (tmp_path / "dangling-hqn.permit").symlink_to(tmp_path / "absent")
        found = sorted(p.name for p in permit_files_in(tmp_path))
        assert found == ["hqn.permit", "link-hqn.permit"]

    def test_missing_directory_raises_oserror(self, tmp_path: Path) -> None:
        """The per-directory function leaves errors to its caller."""
        with pytest.raises(OSError):
            permit_files_in(tmp_path / "absent")


class TestTiers:
    """-p first, then HQNPERMITPATH, then cwd, /usr/local/HQN, /usr/local."""

    def test_p_dirs_in_order(self, dirs: dict[str, Path]) -> None:
        """All -p directories are searched, in the order given."""
        a = touch(dirs["p2"], "a-hqn.permit")
        b = touch(dirs["p1"], "b-hqn.permit")
        touch(dirs["env1"], "hqn.permit")
        touch(dirs["cwd"], "hqn.permit")
        assert run(dirs, [dirs["p2"], dirs["p1"]], str(dirs["env1"])) == (a + b, "-p")

    def test_env_when_p_finds_none(self, dirs: dict[str, Path]) -> None:
        """-p directories without permits fall through to HQNPERMITPATH."""
        env = touch(dirs["env2"], "hqn.permit2") + touch(dirs["env1"], "hqn.permit")
        touch(dirs["cwd"], "hqn.permit")
        env_value = f"{dirs['env2']}::{dirs['env1']}"
        assert run(dirs, [dirs["p1"]], env_value) == (env, PERMIT_PATH_VARIABLE)

    def test_env_without_p(self, dirs: dict[str, Path]) -> None:
        """No -p: HQNPERMITPATH is used."""
        env = touch(dirs["env1"], "hqn.permit")
        assert run(dirs, None, str(dirs["env1"])) == (env, PERMIT_PATH_VARIABLE)

    def test_defaults_when_env_finds_none(self, dirs: dict[str, Path]) -> None:
        """Nothing in -p or the variable: cwd, then the default directories, all of them."""
        local = touch(dirs["local"], "hqn.permit")
        cwd = touch(dirs["cwd"], "x-hqn.permit")
        hqn = touch(dirs["hqn"], "hqn.permit")
        assert run(dirs, [dirs["p1"]], str(dirs["env1"])) == (cwd + hqn + local, "defaults")

    def test_empty_variable_is_ignored(self, dirs: dict[str, Path]) -> None:
        """HQNPERMITPATH set to '' or ':' counts as unset."""
        cwd = touch(dirs["cwd"], "hqn.permit")
        assert run(dirs, None, ":") == (cwd, "defaults")
        assert run(dirs, None, "") == (cwd, "defaults")

    def test_nothing_found(self, dirs: dict[str, Path]) -> None:
        """No permit anywhere: no files, no source, every directory searched."""
        found = discover(
            [dirs["p1"]],
            environ={PERMIT_PATH_VARIABLE: str(dirs["env1"])},
            cwd=dirs["cwd"],
            defaults=(dirs["hqn"], dirs["local"]),
        )
        assert found.files == () and found.source is None
        assert found.searched == (
            dirs["p1"], dirs["env1"], dirs["cwd"], dirs["hqn"], dirs["local"],
        )

    def test_missing_explicit_directory_is_a_problem(self, dirs: dict[str, Path]) -> None:
        """A -p directory that does not exist is reported, and the search goes on."""
        cwd = touch(dirs["cwd"], "hqn.permit")
        found = discover(
            [dirs["p1"] / "absent"],
            environ={},
            cwd=dirs["cwd"],
            defaults=(dirs["hqn"] / "absent",),
        )
        assert list(found.files) == cwd
        assert len(found.problems) == 1 and "absent" in found.problems[0]

    def test_relative_dirs_are_relative_to_cwd(self, dirs: dict[str, Path]) -> None:
        """A relative -p or HQNPERMITPATH entry is taken relative to the injected cwd."""
        sub = touch(dirs["cwd"] / "permits", "hqn.permit")
        assert run(dirs, [Path("permits")]) == (sub, "-p")
        assert run(dirs, None, "permits") == (sub, PERMIT_PATH_VARIABLE)

    def test_same_directory_twice_is_read_once(self, dirs: dict[str, Path]) -> None:
        """The cwd being one of the defaults does not read its files twice."""
        cwd = touch(dirs["cwd"], "hqn.permit")
        found = discover(None, environ={}, cwd=dirs["cwd"], defaults=(dirs["cwd"],))
        assert list(found.files) == cwd
