"""From licensing events to licence log lines and usage records.

Grants, releases and revocations are all licensing events (`Granted`,
`Released`, `Revoked`) whatever caused them: a REQUEST, a RELEASE, a reclaim
inside a request, a crash-out found by housekeeping, ``hqn_lsa kill``, a
``reinit``. `LicenceFeed.observe` is given every batch of events the daemon
applies (where it hands them to the journal, or once a domain confirms them) and
turns each into one licence line (tagged LICENSE, for the log filter) and one
usage record. A `Released` or `Revoked` event stores only the handle; applying
it recorded on it, in memory, the holding it ended (``event.dropped``, see
`hqnlsd.licensing.events.Dropped`), and that names the holder, so the feed keeps
no copy of the holders. It keeps the version served of each product, learnt
from `ProductsLoaded` events and, at start up, by `seed` from the restored
engine. The feed runs after every commit, so a
line whose switches are off is not even built (`licence_logged` is asked first);
the usage record is always written.

Denials change no state and produce no event: the server calls `denied`, or,
for denials beyond a burst per address, `hqnlsd.logging.denials.DenialLog`
counts them and calls `denials` once per address per interval.
Role changes come from the domain layer: it calls `role`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from twisted.logger import Logger

from hqnlsd.licensing.events import Dropped, Event, Granted, ProductsLoaded, Released, Revoked
from hqnlsd.licensing.requester import Requester
from hqnlsd.logging.denials import Key as DenialKey
from hqnlsd.logging.observer import denial_switch, licence_logged, log_licence
from hqnlsd.logging.switches import LogSwitches
from hqnlsd.logging.usage import UsageReport, requester_fields
from hqnlsd.permits.model import ProductPermit


class EngineView(Protocol):
    """The read-only engine call `LicenceFeed.seed` uses."""

    def served(self) -> tuple[ProductPermit, ...]:
        """The products served."""
        ...


class LicenceFeed:
    """Logs and reports every licence transaction (see the module doc)."""

    def __init__(
        self,
        *,
        usage: UsageReport | None,
        switches: LogSwitches | None = None,
        log: Logger | None = None,
    ) -> None:
        self.usage = usage
        self.switches = switches
        self.log = log if log is not None else Logger(namespace="hqnlsd.licence")
        self._versions: dict[tuple[str, str], str] = {}

    # -- product versions ---------------------------------------------------------------

    def seed(self, engine: EngineView) -> None:
        """Learn the products a restored engine already serves (their versions name
        the product in the lines of its holders). Its holders need no learning: the
        events that end them say who they were."""
        for permit in engine.served():
            self._versions[(permit.publisher, permit.product)] = permit.version

    # -- events -------------------------------------------------------------------------

    def observe(self, events: Iterable[Event]) -> None:
        """Log and report the transactions among ``events`` (in order)."""
        for event in events:
            if isinstance(event, Granted):
                self._granted(event)
            elif isinstance(event, Released):
                self._ended("released", event.handle, event.at, None, event.dropped)
            elif isinstance(event, Revoked):
                self._ended("revoked", event.handle, event.at, event.reason, event.dropped)
            elif isinstance(event, ProductsLoaded):
                self._versions = {
                    (permit.publisher, permit.product): permit.version for permit in event.products
                }

    def _granted(self, event: Granted) -> None:
        indices = tuple(event.indices)
        licence_type = _licence_type(event.locked)
        version = self._versions.get((event.publisher, event.product))
        # Asked first: a line the switches drop is not even built.
        if licence_logged(self.switches):
            log_licence(
                self.log,
                "granted",
                switches=self.switches,
                publisher=event.publisher,
                product=event.product,
                version=version,
                indices=_indices(indices),
                licence_type=licence_type,
                **requester_fields(event.who),
                handle=event.handle,
            )
        if self.usage is not None:
            self.usage.grant(
                publisher=event.publisher,
                product=event.product,
                version=version,
                handle=event.handle,
                indices=indices,
                licence_type=licence_type,
                who=event.who,
                at=event.at,
            )

    def _ended(
        self, action: str, handle: str, at: float, reason: str | None, held: Dropped | None
    ) -> None:
        """A licence ended; ``held`` is what the event's holder had (None: the event
        does not say, as when it was read back from storage)."""
        who = None if held is None else held.who
        if held is None:
            publisher = product = version = licence_type = None
            indices: tuple[int, ...] | None = None
            held_seconds = None
        else:
            publisher, product = held.publisher, held.product
            version = self._versions.get((publisher, product))
            licence_type = _licence_type(held.locked)
            indices = held.indices
            held_seconds = round(at - held.granted_at, 3)
        if licence_logged(self.switches):
            log_licence(
                self.log,
                action,
                switches=self.switches,
                publisher=publisher,
                product=product,
                version=version,
                indices=_indices(indices) if indices else None,
                licence_type=licence_type,
                **requester_fields(who),
                handle=handle,
                reason=reason,
            )
        if self.usage is None:
            return
        record: dict[str, Any] = {
            "publisher": publisher,
            "product": product,
            "version": version,
            "handle": handle,
            "indices": indices,
            "who": who,
            "held_seconds": held_seconds,
            "at": at,
        }
        if reason is None:
            self.usage.release(**record)
        else:
            self.usage.revoked(reason=reason, **record)

    # -- things that are not events -------------------------------------------------------

    def denied(
        self,
        *,
        publisher: str,
        product: str,
        version: str | None,
        status: str,
        code: int | None,
        reason: str,
        who: Requester,
    ) -> None:
        """A REQUEST from ``who`` was refused: a licence line (redirects under EXTERR)
        and a record."""
        switch = denial_switch(status)
        if licence_logged(self.switches, switch):
            log_licence(
                self.log,
                "denied",
                switch=switch,
                switches=self.switches,
                publisher=publisher,
                product=product,
                version=version,
                **requester_fields(who),
                status=status,
                reason=reason,
            )
        if self.usage is not None:
            self.usage.denial(
                publisher=publisher,
                product=product,
                version=version,
                status=status,
                code=code,
                reason=reason,
                who=who,
            )

    def denials(
        self,
        *,
        address: str | None,
        sources: int,
        count: int,
        interval: float,
        since: float,
        rows: Sequence[tuple[DenialKey, int]],
        summary: str,
    ) -> None:
        """Denials counted, not logged one by one (`hqnlsd.logging.denials`): the
        ``summary`` line (a warning, tagged LICENSE) and one ``denials`` record."""
        self.log.warn("{summary}", summary=summary, log_switch="LICENSE")
        if self.usage is not None:
            self.usage.denials(
                address=address,
                sources=sources,
                count=count,
                interval=interval,
                since=since,
                rows=[
                    {
                        "publisher": publisher,
                        "product": product,
                        "version": version,
                        "status": status,
                        "code": code,
                        "count": number,
                    }
                    for (publisher, product, version, status, code), number in rows
                ],
            )

    def role(
        self,
        *,
        domain: str,
        role: str,
        previous: str | None,
        rank: int | None,
        epoch: int | None,
        primary: int | None,
        reason: str = "",
    ) -> None:
        """This server's role in ``domain`` changed: an INFO line and a record."""
        fields: dict[str, Any] = {
            "domain": domain,
            "role": role,
            "previous": previous,
            "rank": rank,
            "epoch": epoch,
            "primary": primary,
            "reason": reason,
        }
        # Untagged (INFO, on by default): a failover matters beyond domain debugging.
        self.log.info(
            "domain {domain}: {previous} -> {role} (rank {rank}, epoch {epoch}, "
            "primary {primary}) {reason}",
            **fields,
        )
        if self.usage is not None:
            self.usage.role(**fields)


def _indices(indices: Sequence[int]) -> str:
    return ",".join(map(str, indices))


def _licence_type(locked: bool) -> str:
    return "locked" if locked else "floating"
