"""`RecentEvents`: the latest denials and reclaims, for the web console.

A bounded ring (the newest `CAPACITY` kept, the oldest dropped) of what the
usage report is told about refused requests (one by one, or counted per address
beyond a burst: `hqnlsd.logging.denials`) and licences taken back from their
holders (crashout, timeout, ``hqn_lsa kill``...). `RecordingUsageReport` is the
usage report that also feeds a ring: what it writes is exactly what
`UsageReport` writes; the daemon uses it only when the web console is on.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from typing import Any

from hqnlsd.licensing.requester import Requester
from hqnlsd.logging.usage import Clock, UsageReport

#: Events kept (each a few hundred bytes at most).
CAPACITY = 200


@dataclasses.dataclass(frozen=True, slots=True)
class RecentEvent:
    """One denial, count of denials, or reclaim (fields None where they do not apply)."""

    at: float
    #: ``denial`` (one refused REQUEST), ``denials`` (refused REQUESTs from one
    #: address counted over an interval), ``reclaim`` (a licence taken back).
    kind: str
    publisher: str | None
    product: str | None
    version: str | None
    #: The status name of a denial (NOLICENCES...); the reason word of a reclaim.
    status: str | None
    #: Why, in words (a denial's text; a reclaim's reason; a count's summary).
    reason: str
    user: str | None = None
    host: str | None = None
    address: str | None = None
    pid: int | None = None
    count: int = 1
    indices: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        record = dataclasses.asdict(self)
        record["indices"] = list(self.indices)
        return record


class RecentEvents:
    """The newest `CAPACITY` denials and reclaims (see the module)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("the recent events ring needs room for at least one")
        self._events: deque[RecentEvent] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._events)

    def newest_first(self) -> list[RecentEvent]:
        """Every event kept, the newest first."""
        return list(reversed(self._events))

    def denial(
        self,
        at: float,
        *,
        publisher: str,
        product: str,
        version: str | None,
        status: str,
        reason: str,
        who: Requester,
    ) -> None:
        """A REQUEST of ``who`` was refused."""
        self._events.append(
            RecentEvent(
                at=at,
                kind="denial",
                publisher=publisher,
                product=product,
                version=version,
                status=status,
                reason=reason,
                user=who.user,
                host=who.host,
                address=who.address,
                pid=who.pid,
            )
        )

    def denials(
        self, at: float, *, address: str | None, count: int, rows: Sequence[dict[str, Any]]
    ) -> None:
        """REQUESTs from ``address`` refused and counted, not recorded one by one:
        one event per product and status."""
        for row in rows:
            self._events.append(
                RecentEvent(
                    at=at,
                    kind="denials",
                    publisher=row.get("publisher"),
                    product=row.get("product"),
                    version=row.get("version"),
                    status=row.get("status"),
                    reason=f"{row.get('count', 0)} of {count} refused requests from "
                    f"{address or 'several addresses'} counted, not logged one by one",
                    address=address,
                    count=int(row.get("count", 0)),
                )
            )

    def reclaim(
        self,
        at: float,
        *,
        publisher: str | None,
        product: str | None,
        version: str | None,
        reason: str,
        who: Requester | None,
        indices: Sequence[int] | None,
    ) -> None:
        """A licence was taken back from ``who`` (None: not known) for ``reason``."""
        self._events.append(
            RecentEvent(
                at=at,
                kind="reclaim",
                publisher=publisher,
                product=product,
                version=version,
                status=reason,
                reason=reason,
                user=None if who is None else who.user,
                host=None if who is None else who.host,
                address=None if who is None else who.address,
                pid=None if who is None else who.pid,
                indices=tuple(indices or ()),
            )
        )


class RecordingUsageReport(UsageReport):
    """A `UsageReport` that also tells ``recent`` of denials and reclaims (it writes
    exactly what its parent writes)."""

    def __init__(self, directory: Any, clock: Clock, *, recent: RecentEvents) -> None:
        super().__init__(directory, clock)
        self.recent = recent
        self._seconds = clock.seconds

    def denial(self, **fields: Any) -> None:
        """Record, and keep in the ring."""
        super().denial(**fields)
        at = fields.get("at")
        self.recent.denial(
            self._seconds() if at is None else at,
            publisher=fields["publisher"],
            product=fields["product"],
            version=fields.get("version"),
            status=fields["status"],
            reason=fields["reason"],
            who=fields["who"],
        )

    def denials(self, **fields: Any) -> None:
        """Record, and keep in the ring."""
        super().denials(**fields)
        at = fields.get("at")
        self.recent.denials(
            self._seconds() if at is None else at,
            address=fields.get("address"),
            count=fields["count"],
            rows=fields["rows"],
        )

    def revoked(self, **fields: Any) -> None:
        """Record, and keep in the ring."""
        super().revoked(**fields)
        at = fields.get("at")
        self.recent.reclaim(
            self._seconds() if at is None else at,
            publisher=fields.get("publisher"),
            product=fields.get("product"),
            version=fields.get("version"),
            reason=fields["reason"],
            who=fields.get("who"),
            indices=fields.get("indices"),
        )
