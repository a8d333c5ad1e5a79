"""How the daemon answers what it could not do, to each audience, in one place.

A domain member's refusal (`Refusal`) and a commit's typed failure
(`hqnlsd.commit.CommitFailed`) become the client protocol's ``ERR``
(`refusal_reply`, `client_reply`) or the admin protocol's error name and
message (`admin_answer`). The client dispatcher (`hqnlsd.server`) and the admin
handler (`hqnlsd.admin.handler`) both answer from here, so one failure never
means two things to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from hqnlsd.admin.wire import INTERNAL
from hqnlsd.commit import NotReplicated, OutcomeUnknown, Refused
from hqnlsd.protocols.replies import Err
from hqnlsd.status import Status

if TYPE_CHECKING:
    from hqnlsd.domain.role import Refusal

#: The client's NEW_MASTER when a domain did not confirm a change (or refused it
#: without saying whom to ask): whether it happened is unknown, so send it again.
UNCONFIRMED = (
    "not confirmed before a change of primary; send it again (a REQUEST "
    "with the same client= token; a RELEASE that did take effect is then "
    "answered BADHANDLE)"
)
#: The client's INTERNAL when the journal could not write.
NOT_RECORDED = "the server could not record the licence state durably; try again"
#: The client's INTERNAL when a domain member could not log or replicate.
NOT_REPLICATED = "the server could not replicate the licence state; try again"


def refusal_reply(refusal: Refusal) -> Err:
    """The ``ERR`` for a domain member that may not grant: the one place a domain's
    role and reason become a client reply (``TRY_SERVER n=RANK addr=ADDRESS``
    when it names the primary to ask; always ``domain=`` with its members)."""
    domain = " ".join(str(address) for address in refusal.domain)
    if refusal.primary is not None and refusal.primary_address is not None:
        return Err.of(
            refusal.status,
            refusal.msg,
            n=refusal.primary,
            addr=str(refusal.primary_address),
            domain=domain,
        )
    return Err.of(refusal.status, refusal.msg, domain=domain)


def client_reply(error: object) -> Err:
    """The client's ``ERR`` for a commit that failed with ``error``.

    Refused with a `Refusal`: that refusal (nothing happened; ask there).
    Refused without one, or `OutcomeUnknown`: NEW_MASTER "send it again" with
    the domain's addresses. Not recorded: INTERNAL "try again" (so too any
    failure that is no `CommitFailed`, which no sink should raise).
    """
    if isinstance(error, Refused) and error.refusal is not None:
        return refusal_reply(error.refusal)
    if isinstance(error, Refused | OutcomeUnknown):
        domain = " ".join(str(address) for address in error.domain)
        return Err.of(Status.NEW_MASTER, UNCONFIRMED, domain=domain)
    if isinstance(error, NotReplicated):
        return Err.of(Status.INTERNAL, NOT_REPLICATED)
    return Err.of(Status.INTERNAL, NOT_RECORDED)


class AdminAnswer(NamedTuple):
    """An admin command's error: its name and the message for the administrator."""

    name: str
    message: str


def admin_answer(error: object) -> AdminAnswer:
    """The admin error for a change whose commit failed with ``error`` (a failure
    that is no `CommitFailed`, which no sink should raise, as not recorded)."""
    if isinstance(error, Refused):
        return AdminAnswer("NEW_MASTER", "this member lost the primary role; nothing changed")
    if isinstance(error, OutcomeUnknown):
        return AdminAnswer(
            INTERNAL,
            "the domain did not confirm the change (the primary lost its quorum); "
            "it may or may not have been made: check with a listing",
        )
    return AdminAnswer(
        INTERNAL,
        "the change could not be recorded durably; it is queued and retried, "
        "check the daemon's log and the state directory",
    )
