"""End to end: a state directory others can write, or a symlink where a state file
should be, stops ``twistd hqnlsd`` with one line; the symlink's target is untouched
(issue 12, "Symlinks in a writable state directory").

Only loopback addresses; every wait has the harness's deadlines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_e2e_startup import failed_start, the_one_line
from tests.daemons import Daemon, DaemonHarness

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def _state_dir(daemon: Daemon, mode: int) -> Path:
    """Make ``daemon``'s state directory now, with ``mode`` (umask ignored)."""
    daemon.state_dir.mkdir(parents=True)
    os.chmod(daemon.state_dir, mode)
    return daemon.state_dir


def test_symlinked_usage_report_in_a_world_writable_state_dir(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """Another user's ``usage.jsonl -> FILE`` in a world-writable state directory: the
    daemon refuses to start (one line, how to fix it) and FILE is left as it was."""
    daemon = daemons.daemon("planted")
    state = _state_dir(daemon, 0o777)
    target = tmp_path / "only-root-may-write"
    target.write_text("precious\n")
    os.chmod(target, 0o600)
    (state / "usage.jsonl").symlink_to(target)
    line = the_one_line(failed_start(daemon), "--state-dir", str(state), "writable by others")
    assert f"chmod 700 {state}" in line
    assert target.read_text() == "precious\n"


def test_symlinked_usage_report_in_a_private_state_dir(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """A symlink where usage.jsonl should be, even in a 0700 state directory (left by a
    restore, say): refused at start-up, never followed."""
    daemon = daemons.daemon("linked")
    state = _state_dir(daemon, 0o700)
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("precious\n")
    (state / "usage.jsonl").symlink_to(target)
    the_one_line(failed_start(daemon), str(state / "usage.jsonl"), "symbolic link")
    assert target.read_text() == "precious\n"


def test_symlinked_database_is_refused(daemons: DaemonHarness, tmp_path: Path) -> None:
    """``hqnlsd.sqlite3 -> FILE``: refused, FILE untouched."""
    daemon = daemons.daemon("dblink")
    state = _state_dir(daemon, 0o700)
    target = tmp_path / "some.db"
    target.write_bytes(b"")
    (state / "hqnlsd.sqlite3").symlink_to(target)
    the_one_line(failed_start(daemon), str(state / "hqnlsd.sqlite3"), "symbolic link")
    assert target.read_bytes() == b""


def test_group_writable_state_dir_is_refused(daemons: DaemonHarness) -> None:
    """A state directory its group may write: refused with the chmod that fixes it."""
    daemon = daemons.daemon("groupw")
    state = _state_dir(daemon, 0o770)
    the_one_line(failed_start(daemon), "--state-dir", "writable by its group", f"chmod 700 {state}")


def test_state_dir_under_a_writable_directory_is_refused(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """A 0700 state directory inside a world-writable (not sticky) one: another user
    could rename it away and put their own in its place; refused, the parent named."""
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    daemon = daemons.daemon("under")
    daemon.state_dir = parent / "state"
    line = the_one_line(failed_start(daemon), "--state-dir", str(parent), "writable by others")
    assert f"chmod go-w {parent}" in line


def test_readable_state_dir_is_said_in_the_log(daemons: DaemonHarness) -> None:
    """A pre-existing 0755 state directory: the daemon starts, and the start-up log
    says others can read it, and how to stop that."""
    daemon = daemons.daemon("readable")
    state = _state_dir(daemon, 0o755)
    daemon.start_and_wait()
    text = daemon.wait_for_log(lambda text: f"chmod 700 {state}" in text)
    warnings = [line for line in text.splitlines() if "others may read" in line]
    assert len(warnings) == 1 and "#warn]" in warnings[0] and "mode 0755" in warnings[0], text
    daemon.terminate()
