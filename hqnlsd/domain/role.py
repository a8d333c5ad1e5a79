"""What a domain member is doing, and why it may not grant when it may not.

The domain says it in roles and reasons (`RoleInfo`, `Refusal`); the client
dispatcher (`hqnlsd.answers.refusal_reply`) turns a refusal into the reply.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from hqnlsd.status import Status


class Role(enum.Enum):
    """A member's role in its domain at one instant."""

    #: the acting primary, holding a lease from a quorum: it may grant
    PRIMARY = "primary"
    #: a verified backup whose primary is alive: redirect clients to it
    BACKUP = "backup"
    #: a take-over (or hand-over) is in progress, here or at a candidate, and can
    #: complete: this member reaches a quorum of its view
    TAKEOVER = "takeover"
    #: a backup whose primary went silent, no take-over yet (or none can complete
    #: until the members in ``RoleInfo.waiting`` are back)
    LOSTMASTER = "lostmaster"
    #: not (or no longer) verified: not in a view, or a primary without a quorum
    NOTVERIFIED = "notverified"


#: The client-protocol status for each role that may not serve.
_STATUS = {
    Role.BACKUP: Status.TRY_SERVER,
    Role.TAKEOVER: Status.NEW_MASTER,
    Role.LOSTMASTER: Status.LOSTMASTER,
    Role.NOTVERIFIED: Status.NOTVERIFIED,
}


@dataclass(frozen=True)
class RoleInfo:
    """A member's role with what admin tools and the client protocol need.

    ``primary``: the rank clients should try (``TRY_SERVER n=primary``), if
    known. ``epoch``/``members``: the view this member installed.
    ``waiting``: when the members this member reaches are no quorum of its view
    (so no view change can complete), the members of the view it cannot reach:
    the domain waits for them. Empty otherwise.
    """

    rank: int
    role: Role
    primary: int | None
    epoch: int
    members: frozenset[int]
    waiting: frozenset[int] = frozenset()

    @property
    def can_serve(self) -> bool:
        """True if this member may grant licences right now."""
        return self.role is Role.PRIMARY

    @property
    def status(self) -> Status | None:
        """The status to answer a client with, or None if this member serves."""
        return _STATUS.get(self.role)


@dataclass(frozen=True)
class Refusal:
    """Why a member may not grant now, and whom a client should ask instead.

    ``status``: its role's status (``TRY_SERVER`` only with a primary to
    name, else ``NEW_MASTER``, ``LOSTMASTER`` or ``NOTVERIFIED``). ``msg``: the
    reason, in words for the client. ``domain``: the members' addresses in rank
    order. ``primary``/``primary_address``: for ``TRY_SERVER``, the acting
    primary's rank and address.
    """

    status: Status
    msg: str
    domain: tuple[ipaddress.IPv4Address, ...]
    primary: int | None = None
    primary_address: ipaddress.IPv4Address | None = None
