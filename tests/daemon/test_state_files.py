"""Every file of the state directory is opened without following a symbolic link
(issue 12, "Symlinks in a writable state directory"): the usage report, the
journal, the log switches, the manhole host key, a domain's database.

Each test plants ``NAME -> target`` where the daemon keeps NAME, lets the module
write, and insists the target is unchanged and the write refused (or, for a file
replaced whole, that the link is replaced, never written through).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from hqnlsd.domain.sqlstore import DomainStoreError, SqliteDomainStorage, domain_file_name
from hqnlsd.logging.switches import SWITCHES_FILE, LogSwitches
from hqnlsd.logging.usage import USAGE_FILE, UsageReport
from hqnlsd.manhole import HOST_KEY_NAME, ManholeError, load_or_create_host_key
from hqnlsd.persistence.store import DATABASE_NAME, JournalError, open_journal

PRECIOUS = b"only root may write this\n"


def plant(state: Path, name: str, tmp_path: Path) -> Path:
    """``state/name -> tmp_path/target-name`` holding PRECIOUS; the target."""
    state.mkdir(mode=0o700, exist_ok=True)
    target = tmp_path / f"target-{name}"
    target.write_bytes(PRECIOUS)
    (state / name).symlink_to(target)
    return target


def test_usage_report_is_not_written_through_a_link(tmp_path: Path) -> None:
    """The finding: usage.jsonl -> FILE made the daemon append to FILE."""
    state = tmp_path / "state"
    target = plant(state, USAGE_FILE, tmp_path)
    clock = Clock()
    report = UsageReport(state, clock)
    report.role(domain="d", role="primary", previous=None, rank=1, epoch=1, primary=1)
    clock.advance(0)
    assert report.stats.write_errors == 1
    assert target.read_bytes() == PRECIOUS


def test_usage_report_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """A FIFO where usage.jsonl goes would block a plain open for writing forever."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / USAGE_FILE)
    clock = Clock()
    report = UsageReport(state, clock)
    report.role(domain="d", role="primary", previous=None, rank=1, epoch=1, primary=1)
    clock.advance(0)
    assert report.stats.write_errors == 1


def test_journal_database_link_is_refused(tmp_path: Path) -> None:
    """hqnlsd.sqlite3 -> FILE: the journal does not open, FILE is untouched."""
    state = tmp_path / "state"
    target = plant(state, DATABASE_NAME, tmp_path)
    with pytest.raises(JournalError, match="symbolic link"):
        open_journal(state, Clock())
    assert target.read_bytes() == PRECIOUS


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_journal_companion_link_is_refused(tmp_path: Path, suffix: str) -> None:
    """SQLite's own files next to the database: a link there is refused too."""
    state = tmp_path / "state"
    target = plant(state, DATABASE_NAME + suffix, tmp_path)
    with pytest.raises(JournalError, match="symbolic link"):
        open_journal(state, Clock())
    assert target.read_bytes() == PRECIOUS


def test_log_switches_are_not_read_through_a_link(tmp_path: Path) -> None:
    """A linked switches file, valid as it is, is not read (the start-up setting is
    used)..."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    LogSwitches.load(elsewhere).apply("none")
    target = elsewhere / SWITCHES_FILE
    written = target.read_bytes()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / SWITCHES_FILE).symlink_to(target)
    switches = LogSwitches.load(state)
    assert switches.value == switches.startup
    switches.apply("small")  # ...and saving replaces the link, never writes through it
    assert target.read_bytes() == written
    assert not (state / SWITCHES_FILE).is_symlink()


def test_log_switches_temporary_link_is_not_followed(tmp_path: Path) -> None:
    """A link planted at the temporary name the save uses: removed, not written."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_bytes(PRECIOUS)
    for name in (f"{SWITCHES_FILE}.tmp", f".{SWITCHES_FILE}.{os.getpid()}.tmp"):
        (state / name).symlink_to(target)
    LogSwitches.load(state).apply("small")
    assert target.read_bytes() == PRECIOUS


def test_manhole_host_key_link_is_refused(tmp_path: Path) -> None:
    """manhole_host_key -> FILE: refused, never read."""
    state = tmp_path / "state"
    target = plant(state, HOST_KEY_NAME, tmp_path)
    os.chmod(target, 0o600)
    with pytest.raises(ManholeError, match="not a regular file"):
        load_or_create_host_key(state)
    assert target.read_bytes() == PRECIOUS


def test_manhole_public_key_is_not_written_through_a_link(tmp_path: Path) -> None:
    """manhole_host_key.pub -> FILE (left before the key is made): replaced, FILE kept."""
    state = tmp_path / "state"
    target = plant(state, HOST_KEY_NAME + ".pub", tmp_path)
    load_or_create_host_key(state)
    assert target.read_bytes() == PRECIOUS
    assert not (state / (HOST_KEY_NAME + ".pub")).is_symlink()


def test_domain_database_link_is_refused(tmp_path: Path) -> None:
    """domain-*.sqlite3 -> FILE: refused, FILE untouched (and not chmod-ed)."""
    state = tmp_path / "state"
    target = plant(state, domain_file_name("d1"), tmp_path)
    os.chmod(target, 0o644)
    with pytest.raises(DomainStoreError, match="symbolic link"):
        SqliteDomainStorage.in_state_dir(state, "d1")
    assert target.read_bytes() == PRECIOUS
    assert target.stat().st_mode & 0o777 == 0o644


def test_new_domain_database_is_private(tmp_path: Path) -> None:
    """A new domain database is made 0600 from the start."""
    storage = SqliteDomainStorage.in_state_dir(tmp_path, "d1")
    storage.close()
    assert (tmp_path / domain_file_name("d1")).stat().st_mode & 0o777 == 0o600
