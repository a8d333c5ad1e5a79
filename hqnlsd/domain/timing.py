"""Timers of a domain member, and the lease arithmetic that makes them safe.

Clocks are monotonic and may run at any rate within ``1 +/- drift`` of real
time (``drift`` is the documented bound, default 1 %; real monotonic clocks are
well inside 0.1 %). A member that acknowledges the primary at its local time
``t`` refuses to help any other candidate until its local time ``t + lease``:
at least ``lease / (1 + drift)`` real seconds after the primary sent the
message. The primary counts on that only for `safe_lease` of its own clock
(measured from when it sent), which is less than ``lease / (1 + drift)`` real
seconds by at least ``margin``: the old primary's authority ends before any
successor's can begin.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainTimers:
    """Every timer of a domain member, in seconds of its monotonic clock.

    With the defaults a backup serves about ``lease + stagger + 3 round trips``
    (2.5 s on a LAN) after the primary dies, well inside the 5 s promised.
    """

    #: how often the primary sends entries or heartbeats, and everyone re-sends
    tick: float = 0.2
    #: how long a member's acknowledgement binds it to the primary
    lease: float = 2.0
    #: bound on the rate error of any member's clock (0.01 = 1 %)
    drift: float = 0.01
    #: slack kept off the primary's lease for scheduling and processing delays
    margin: float = 0.1
    #: silence from the primary after which a backup may try to take over
    election_timeout: float = 1.0
    #: extra wait per lower-ranked live member before a backup tries, so that
    #: the lowest-ranked one usually goes first and candidates rarely duel
    stagger: float = 0.25
    #: how long a candidacy may take before it is abandoned and retried
    candidacy_timeout: float = 1.5
    #: silence after which the primary counts a member as gone
    peer_timeout: float = 1.0
    #: how long a member must be answering before the primary admits it (or
    #: hands over to it, if it ranks lower) and after a view change before the next
    settle: float = 1.0
    #: a member admitted less than this long ago is *flapping*: it must answer for
    #: `settle` before it is admitted again; any other (a clean restart) is
    #: admitted as soon as it answers at the current epoch
    flap_window: float = 10.0
    #: how long the primary waits for in-flight entries before a hand-over
    drain_timeout: float = 1.0
    #: how long a submission may wait for its quorum before it fails
    submit_timeout: float = 5.0
    #: entries after which the primary starts a new view to compact its log
    max_entries: int = 10_000

    def __post_init__(self) -> None:
        """Reject timers that would make the lease unsafe or useless."""
        if not 0 <= self.drift < 0.5:
            raise ValueError(f"drift must be in [0, 0.5), not {self.drift}")
        if self.margin < 0:
            raise ValueError("margin must not be negative")
        if self.safe_lease <= self.tick:
            raise ValueError(
                f"lease {self.lease}s leaves {self.safe_lease:.3f}s after drift and margin, "
                f"not more than one tick ({self.tick}s): the primary could never keep it"
            )
        if self.election_timeout <= self.tick:
            raise ValueError("election_timeout must be longer than a tick")
        if self.max_entries < 1:
            raise ValueError("max_entries must be at least 1")

    @property
    def safe_lease(self) -> float:
        """How long after sending the primary may rely on an acknowledgement.

        ``lease * (1 - drift) / (1 + drift) - margin``: the primary's clock may
        run slow by ``drift`` (so its seconds are longer), the granting member's
        fast by ``drift`` (so its lease is shorter in real time).
        """
        return self.lease * (1 - self.drift) / (1 + self.drift) - self.margin
