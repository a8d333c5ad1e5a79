"""Admin changes made durable: through the one commit path (`hqnlsd.commit.EventSink`),
answered from the one table of failures (`hqnlsd.answers.admin_answer`).

A change's events go to the daemon's journal (its own products) or to the
domain member that holds the product (`DomainRoute.sink`: a quorum of the
domain), and the admin hears "done" only once they are durable, as a REQUEST's
client does. The change is logged under the ADMIN log switch with who made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hqnlsd.admin.context import ADMIN_LOG, AdminError
from hqnlsd.answers import admin_answer
from hqnlsd.commit import CommitFailed, EventSink, NotRecorded
from hqnlsd.licensing.events import Event
from hqnlsd.licensing.results import AdminDone, Denied, Outcome

if TYPE_CHECKING:
    from hqnlsd.admin.daemon import AdministeredDaemon
    from hqnlsd.domain.runtime import DomainRoute


class Durability:
    """Commits the admin changes of one daemon (see the module docstring)."""


    def __init__(self, root: AdministeredDaemon) -> None:
        self.root = root
        #: An instance attribute, not a class one: a `Logger` on a class names its
        #: lines after that class, and these keep the namespace they always had.
        self.log = ADMIN_LOG

    def commit(
        self,
        outcome: Outcome[AdminDone | Denied],
        command: str,
        target: str,
        who: str,
        route: DomainRoute | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Refuse a Denied; else answer once the change's events are durable, and log it."""
        result = outcome.result
        if isinstance(result, Denied):
            raise AdminError(result.status.name, result.message)
        answer = {"message": result.message, "revoked": result.revoked}
        return self.after(outcome.events, answer, command, target, who, route)

    def durable(self, events: Sequence[Event], route: DomainRoute | None) -> Deferred[Any]:
        """Commit ``events`` to the journal, or for a domain to this member (its quorum).

        A refusal or an unknown outcome fails as its `AdminError`
        (`hqnlsd.answers.admin_answer`); a commit not recorded stays
        `NotRecorded`, for `settled` to log with the command (a reinit reports
        it per domain as it is).
        """
        sink: EventSink = self.root.journal if route is None else route.sink

        def failed(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, CommitFailed) and not isinstance(error, NotRecorded):
                return Failure(AdminError(*admin_answer(error)))
            return failure

        return sink.commit(events).addErrback(failed)

    def settled(
        self, events: Sequence[Event], command: str, route: DomainRoute | None = None
    ) -> Deferred[Any]:
        """`durable`, with any failure an `AdminError`: one not already so is logged
        with ``command`` and answered from `hqnlsd.answers.admin_answer`. With no
        events, a barrier: it fires once everything committed before is durable."""

        def failed(failure: Failure) -> Any:
            if failure.check(AdminError):
                failure.raiseException()
            self.log.failure("admin {command}: journal commit failed", failure, command=command)
            raise AdminError(*admin_answer(failure.value))

        return self.durable(events, route).addErrback(failed)

    def after(
        self,
        events: Sequence[Event],
        answer: dict[str, Any],
        command: str,
        target: str,
        who: str,
        route: DomainRoute | None = None,
    ) -> Deferred[dict[str, Any]]:
        """``answer``, once ``events`` are `settled`; the change logged under ADMIN."""

        def committed(_: object) -> dict[str, Any]:
            self.log.info(
                "admin {who}: {command} {target}: {message}",
                log_switch="ADMIN",
                who=who,
                command=command,
                target=target,
                message=answer.get("message", ""),
            )
            return answer

        return self.settled(events, command, route).addCallback(committed)
