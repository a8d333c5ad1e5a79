"""The admin command table (`hqnlsd.admin.table`) is the one list of admin commands:
the handler answers exactly its names, the sets of changes and of forwarded
commands come from it, and ``hqn_lsa`` sends only names it holds (and each of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import globalLogPublisher

from hqnlsd.admin import commands as lsa_commands
from hqnlsd.admin import handler, table
from hqnlsd.answers import admin_answer
from hqnlsd.commit import NotRecorded
from tests.admin.test_admin_handler import Rig, write_site


def test_every_name_hqn_lsa_sends_is_in_the_table_and_each_is_sent() -> None:
    """Each admin request hqn_lsa can send is a command of the table, and every
    command of the table is sent by some hqn_lsa command (none is unreachable)."""
    sent = {command.request for command in lsa_commands.COMMANDS if command.request}
    assert sent == set(table.NAMES)


def test_the_table_names_each_command_once() -> None:
    """No name twice: a second entry would silently replace the first in the dispatch."""
    assert len(table.NAMES) == len(set(table.NAMES))


def test_the_handler_answers_exactly_the_table_in_its_order(tmp_path: Path) -> None:
    """The handler's commands (and the order UNKNOWN_COMMAND lists them in) are the table's."""
    write_site(tmp_path)
    rig = Rig(tmp_path)
    try:
        assert rig.handler.commands == table.NAMES
    finally:
        rig.stop()


def test_changes_and_forwarded_commands_come_from_the_table() -> None:
    """CHANGES and FORWARDED are read from the table's flags (and re-exported by
    the handler module); only changes are forwarded."""
    assert {c.name for c in table.COMMANDS if c.changes} == handler.CHANGES
    assert {c.name for c in table.COMMANDS if c.forwarded} == handler.FORWARDED
    assert handler.FORWARDED <= handler.CHANGES
    assert {"loglevel", "recover"} == handler.CHANGES - handler.FORWARDED
    assert set(table.NAMES) - handler.CHANGES == {
        "id", "sinfo", "listhqn", "listp", "listu", "reread", "down"
    }


def test_admin_lines_keep_their_namespace(tmp_path: Path) -> None:
    """The lines of a change, wherever in the package they are written now, keep the
    namespace they had when one module held every command (it shows in the log)."""
    write_site(tmp_path)
    rig = Rig(tmp_path)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        rig.call("policy", product={"index": 1}, value="UVIS")
        rig.call("loglevel", text="full")
        rig.call("reread")
    finally:
        globalLogPublisher.removeObserver(events.append)
        rig.stop()
    admin = [event for event in events if event.get("log_switch") == "ADMIN"]
    assert {event["log_format"].split(":")[1].split()[0] for event in admin} >= {
        "{command}", "loglevel", "reread"
    }
    assert {event["log_namespace"] for event in admin} == {
        "hqnlsd.admin.handler.AdminHandler"
    }


class _FailingJournal:
    """A journal stand-in whose every commit fails as a journal's does (`NotRecorded`)."""

    def commit(self, events: Any) -> Deferred[None]:
        """Fail: the journal could not write."""
        return fail(NotRecorded("could not write the licence state: disk full"))


def test_a_reread_whose_commit_fails_is_answered_from_the_one_table(tmp_path: Path) -> None:
    """reread answers once what it re-read is durable, through the commit sink: a
    failed commit is logged and answered `admin_answer`, as every change's is."""
    write_site(tmp_path)
    rig = Rig(tmp_path)
    journal = rig.root.core.journal
    rig.root.core.journal = _FailingJournal()  # type: ignore[assignment]
    try:
        refused = rig.refused("reread")
    finally:
        rig.root.core.journal = journal
        rig.stop()
    assert (refused.name, refused.message) == admin_answer(NotRecorded("disk full"))
