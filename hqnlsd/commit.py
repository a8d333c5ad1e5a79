"""One way to commit: an `EventSink` takes the events a decision applied, and its
Deferred fires once they are durable; it fails only with a `CommitFailed`.

Two sinks implement it: the daemon's journal (`hqnlsd.persistence.store.Journal`:
its group commit) and a member of a multi-host domain
(`hqnlsd.domain.runtime.DomainMember`: held by a quorum of the domain's view).
The client dispatcher and the admin handler commit through whichever holds the
product, and answer a failure from one table (`hqnlsd.answers`), so the two
never disagree about what a failure means.

The three outcomes, and what a caller may conclude from each:

* `Refused`: nothing happened; the sink would not take the events (a domain
  member that may not decide now; its `Refusal` says whom to ask instead).
* `OutcomeUnknown`: the events may or may not survive (the primary lost its
  authority or quorum before they were confirmed); the caller must not say
  "done", and a retry must be safe (a REQUEST's client token makes it so).
* `NotRecorded`: the sink could not write them (the journal keeps them queued
  and retries; `NotReplicated` for a domain member's storage or log).

This module is below the daemon and the domain (they import it, it imports
neither): it names only the events and, for type checking, the domain's
`Refusal`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

from hqnlsd.licensing.events import Event

if TYPE_CHECKING:
    from hqnlsd.domain.role import Refusal


class EventSink(Protocol):
    """Where the events of a decision are made durable (journal or domain member)."""

    def commit(self, events: Sequence[Event]) -> Deferred[None]:
        """Make ``events`` durable, after everything committed here before them.

        Call it in the same reactor turn as the engine command that applied the
        events. The Deferred fires with None once they, and every event given to
        this sink before them, are durable. With no events it is a barrier: it
        fires once everything already applied is durable, so an answer read from
        that state (a denial, a BADHANDLE) never overtakes it.

        It fails only with a `CommitFailed`: `Refused`, `OutcomeUnknown` or
        `NotRecorded`.
        """
        ...


class CommitFailed(Exception):
    """Events given to an `EventSink` that were not (or not surely) made durable."""


class Refused(CommitFailed):
    """The sink refused the events at once: nothing happened.

    ``refusal``: why the domain member may not decide now and whom to ask (None
    if it could not say); ``domain``: the domain's addresses in rank order.
    """

    def __init__(
        self,
        message: str,
        refusal: Refusal | None = None,
        domain: Sequence[ipaddress.IPv4Address] = (),
    ) -> None:
        """A refusal described by ``message`` (for logs)."""
        super().__init__(message)
        self.refusal = refusal
        self.domain = tuple(domain)


class OutcomeUnknown(CommitFailed):
    """The events may or may not survive: authority or quorum was lost first.

    ``domain``: the domain's addresses in rank order (empty for the journal).
    """

    def __init__(self, message: str, domain: Sequence[ipaddress.IPv4Address] = ()) -> None:
        """An unknown outcome described by ``message`` (for logs)."""
        super().__init__(message)
        self.domain = tuple(domain)


class NotRecorded(CommitFailed):
    """The sink could not write the events (the journal keeps them queued and retries)."""

    #: What failed, in the words of the log line that reports it.
    what = "journal commit failed"


class NotReplicated(NotRecorded):
    """A domain member could not log or replicate the events (its storage failed)."""

    what = "domain replication failed"
