"""A failed commit is answered from one table (`hqnlsd.answers`), by the client
dispatcher and by the admin handler alike.

The table's texts are pinned here (they are what clients and administrators
read today); then one daemon core on a `task.Clock`, whose journal is swapped for
a sink that fails with each typed outcome, must answer a REQUEST with
`client_reply` and an admin change with `admin_answer` of that same failure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from hqnlsd.admin.handler import AdminError
from hqnlsd.answers import AdminAnswer, admin_answer, client_reply
from hqnlsd.commit import CommitFailed, NotRecorded, NotReplicated, OutcomeUnknown, Refused
from hqnlsd.domain.role import Refusal
from hqnlsd.protocols import grammar
from hqnlsd.protocols.replies import Err
from hqnlsd.status import Status
from tests.admin.test_admin_handler import WIDGET, Rig, write_site

DOMAIN = tuple(ipaddress.IPv4Address(f"127.0.0.{n}") for n in (1, 2))
PEER = IPv4Address("TCP", "127.0.0.9", 40000)
BACKUP = Refusal(
    Status.TRY_SERVER,
    "this server is a backup; ask the primary hqnserver2 at 127.0.0.2",
    DOMAIN,
    primary=2,
    primary_address=DOMAIN[1],
)

#: Each typed outcome a sink may fail with.
FAILURES: list[CommitFailed] = [
    Refused("member 1 is backup, not serving", BACKUP, DOMAIN),
    Refused("member 1 is takeover, not serving", None, DOMAIN),
    OutcomeUnknown("epoch 3 was installed", DOMAIN),
    NotRecorded("could not write the licence state: disk full"),
    NotReplicated("disk full"),
]


def test_client_replies_are_todays() -> None:
    """The client's ERR for each outcome: the refusal itself, NEW_MASTER "send it
    again" with the domain, INTERNAL for the journal and for a domain."""
    refused, unnamed, unknown, not_recorded, not_replicated = map(client_reply, FAILURES)
    assert refused == Err.of(
        Status.TRY_SERVER, BACKUP.msg, n=2, addr="127.0.0.2", domain="127.0.0.1 127.0.0.2"
    )
    again = (
        "not confirmed before a change of primary; send it again (a REQUEST with the same "
        "client= token; a RELEASE that did take effect is then answered BADHANDLE)"
    )
    assert unnamed == unknown == Err.of(Status.NEW_MASTER, again, domain="127.0.0.1 127.0.0.2")
    assert not_recorded == Err.of(
        Status.INTERNAL, "the server could not record the licence state durably; try again"
    )
    assert not_replicated == Err.of(
        Status.INTERNAL, "the server could not replicate the licence state; try again"
    )
    assert client_reply(RuntimeError("no sink fails so")) == not_recorded


def test_admin_answers_are_todays() -> None:
    """The admin error for each outcome: NEW_MASTER for a refusal, INTERNAL "may or
    may not" for an unknown outcome, INTERNAL "queued and retried" otherwise."""
    answers = [admin_answer(error) for error in FAILURES]
    refused = AdminAnswer("NEW_MASTER", "this member lost the primary role; nothing changed")
    unknown = AdminAnswer(
        "INTERNAL",
        "the domain did not confirm the change (the primary lost its quorum); "
        "it may or may not have been made: check with a listing",
    )
    not_recorded = AdminAnswer(
        "INTERNAL",
        "the change could not be recorded durably; it is queued and retried, "
        "check the daemon's log and the state directory",
    )
    assert answers == [refused, refused, unknown, not_recorded, not_recorded]


class FailingSink:
    """A journal stand-in whose every commit fails with ``error``."""

    def __init__(self, error: CommitFailed) -> None:
        self.error = error
        self.commits: list[tuple[Any, ...]] = []

    def commit(self, events: Sequence[Any]) -> Deferred[None]:
        """Fail (as the journal or a domain member would) with the chosen outcome."""
        self.commits.append(tuple(events))
        return fail(self.error)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A started daemon core (the dispatcher and the admin handler share its journal)."""
    write_site(tmp_path)
    made = Rig(tmp_path)
    yield made
    made.stop()


@pytest.mark.parametrize("error", FAILURES, ids=lambda error: type(error).__name__)
def test_dispatcher_and_admin_handler_answer_from_the_same_table(
    rig: Rig, error: CommitFailed
) -> None:
    """The same failed commit: the dispatcher answers `client_reply`, the admin handler
    `admin_answer`, of that failure (one table, never two meanings)."""
    server, journal = rig.root.server, rig.root.journal
    assert server is not None and journal is not None
    sink = FailingSink(error)
    server.journal = sink  # type: ignore[assignment]
    rig.root.core.journal = sink  # type: ignore[assignment]
    try:
        answered = answers_of(rig, sink)
    finally:
        server.journal = rig.root.core.journal = journal
    reply, admin_error = answered
    assert reply == client_reply(error)
    assert (admin_error.name, admin_error.message) == admin_answer(error)
    assert len(sink.commits) == 2, "both answered from a commit to the one sink"


def answers_of(rig: Rig, sink: FailingSink) -> tuple[Any, AdminError]:
    """A REQUEST's reply from the dispatcher and a change's error from the admin handler."""
    server = rig.root.server
    assert server is not None
    command = grammar.Request(
        publisher="Test Publisher", product="Widget", version="1.0", user="jo", host="box",
        pid=7,
    )
    answer = server.dispatch(command, PEER)
    replies: list[Any] = []
    if isinstance(answer, Deferred):
        answer.addBoth(replies.append)
    else:
        replies.append(answer)
    outcome = rig.pending("timeout", product=WIDGET, seconds=600.0)
    rig.clock.advance(0)
    (reply,), (failed,) = replies, outcome
    assert isinstance(failed, Failure) and isinstance(failed.value, AdminError), failed
    return reply, failed.value
