"""Finding a licence server: the search list asked in order, redirects, retries.

`ServerSearch.search` asks the servers of the search list (`hqnlsd.client.servers`)
in order until one answers ``OK`` or a listing. ``ERR TRY_SERVER addr=A`` sends
the search to A next, ``ERR TRY_DOMAIN domain="a1 a2"`` to those addresses;
``NEW_MASTER``, ``LOSTMASTER`` and ``NOTVERIFIED`` are retried on the same server
with exponential backoff (`Retry`), a bounded number of times, then the next
server is tried. An unreachable or silent server is skipped. Any other ``ERR``
is the answer (`LicenceDenied`). When nothing answered: `NoServer`, with the
reason for every server tried (`NotGenuineServer` if some answered unsigned).

With trusted publisher keys an ``OK`` counts only if its signature verifies
(`hqnlsd.protocols.signing.verify_reply`); a licence a refused server says it
granted is released at that server at once.

`hqnlsd.client.api` builds the licence API on this: `LicenceClient` searches
for REQUEST, USERS and RELEASE, and a `HeldLicence` searches again when its
server stops answering or redirects it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from hqnlsd.client.connection import Answer, Link, describe_failure
from hqnlsd.client.errors import LicenceDenied, NoServer, NotGenuineServer
from hqnlsd.client.servers import ServerAddress
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.permits.servercert import NotGenuine
from hqnlsd.protocols.replies import Err, FieldValue, Ok
from hqnlsd.protocols.signing import verify_reply
from hqnlsd.status import Status

#: Statuses that mean "this server cannot answer now": retry it, then go on.
RETRY_STATUSES = frozenset({Status.NEW_MASTER, Status.LOSTMASTER, Status.NOTVERIFIED})
#: Statuses that mean "the licence is gone": tell the application, request again.
LOST_STATUSES = frozenset({Status.LOSTLICENCE, Status.BADHANDLE})
#: Statuses that send the client elsewhere.
REDIRECT_STATUSES = frozenset({Status.TRY_SERVER, Status.TRY_DOMAIN})
#: Bytes of a challenge.
CHALLENGE_BYTES = 16

#: Opens a connection to a server.
Connector = Callable[[ServerAddress], "Deferred[Link]"]
#: Builds a request's fields for a server, given the challenge (or None).
FieldsFor = Callable[[bytes | None], dict[str, FieldValue]]


@dataclasses.dataclass(frozen=True)
class Retry:
    """Bounds of the search: retries of a busy server, redirects, re-requests."""

    #: Tries of one server answering NEW_MASTER / LOSTMASTER / NOTVERIFIED.
    attempts: int = 4
    #: The pause before the second try; each further pause is ``factor`` times longer.
    first_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0
    #: Redirects followed in one search (a loop of redirects ends there).
    max_redirects: int = 8
    #: While a held licence is lost, how often to request it again (seconds).
    recover_interval: float = 30.0
    #: UPDATE is sent when this fraction of the period has passed.
    update_fraction: float = 0.8

    def delay(self, attempt: int) -> float:
        """The pause after the ``attempt``-th failed try (1-based)."""
        return float(min(self.max_delay, self.first_delay * self.factor ** (attempt - 1)))


#: The bounds used unless a client is given others.
DEFAULT_RETRY = Retry()


@dataclasses.dataclass(frozen=True)
class Product:
    """A product as permits name it."""

    publisher: str
    product: str
    version: str

    def __str__(self) -> str:
        return f"{self.publisher} {self.product} {self.version}"

    def fields(self) -> dict[str, FieldValue]:
        """The ``publisher= product= version=`` fields."""
        return {"publisher": self.publisher, "product": self.product, "version": self.version}


@dataclasses.dataclass(frozen=True)
class Found:
    """A successful search: the reply, the server that gave it, and the open connection."""

    reply: Ok | list[str]
    server: ServerAddress
    connection: Link


def redirect_targets(reply: Err, current: ServerAddress) -> list[ServerAddress]:
    """Where a TRY_SERVER / TRY_DOMAIN sends the client (port of the current server)."""
    if reply.status is Status.TRY_SERVER:
        words = (reply.get("addr") or "").split()
    else:
        words = (reply.get("domain") or "").split()
    targets: list[ServerAddress] = []
    for word in words:
        try:
            targets.append(ServerAddress(word, current.port))
        except ValueError:
            continue
    return targets


@dataclasses.dataclass(frozen=True)
class _Question:
    """What one search asks every server: the verb, its fields, what a signature covers."""

    verb: str
    fields_for: FieldsFor
    signed_for: Product | None
    handle: str


@dataclasses.dataclass
class _Progress:
    """One search's state: the servers still to ask and why the others did not answer."""

    queue: collections.deque[ServerAddress]
    #: RELEASE only (None for other verbs): whether an earlier try may have taken effect.
    release_unknown: bool | None
    reasons: list[str] = dataclasses.field(default_factory=list)
    not_genuine: int = 0
    redirects: int = 0

    def skip(self, server: ServerAddress, why: str) -> None:
        """Note why ``server`` gave no answer; the search goes on."""
        self.reasons.append(f"{server}: {why}")

    def outcome_unknown(self) -> None:
        """A RELEASE may have arrived and taken effect without being confirmed."""
        if self.release_unknown is not None:
            self.release_unknown = True


class _Again(enum.Enum):
    """Ask the same server again, after the backoff pause."""

    AGAIN = "again"


#: What one try of one server gives: the answer, "next server" (None), or try again.
_TryOutcome = Found | None | _Again


class ServerSearch:
    """Asks the servers of a search list in order until one answers (module docstring)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        servers: Sequence[ServerAddress],
        connector: Connector,
        trusted: TrustedKeys | None,
        retry: Retry,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self.reactor = reactor
        #: The search list, in order.
        self.servers: tuple[ServerAddress, ...] = tuple(servers)
        self.connect = connector
        self.trusted = trusted
        self.retry = retry
        self._random = random_bytes

    def challenge(self, signed: bool = True) -> bytes | None:
        """A fresh random challenge if replies are verified (and ``signed``), else None."""
        return self._random(CHALLENGE_BYTES) if self.trusted is not None and signed else None

    def search(
        self,
        verb: str,
        fields_for: FieldsFor,
        *,
        signed_for: Product | None = None,
        handle: str = "",
        start: Sequence[ServerAddress] = (),
        last: ServerAddress | None = None,
        release_unknown: bool | None = None,
    ) -> Deferred[Found]:
        """Ask servers in order until one answers ``OK`` or a listing (module docstring).

        ``signed_for``: the product a signed reply must be for (REQUEST, UPDATE);
        with trusted keys such a reply must verify. ``handle``: the UPDATE's (or
        RELEASE's) handle (REQUEST's comes from its reply). ``start``: servers to
        try before the search list. ``last``: a server to try only after all the
        others (one that just stopped answering: a dead host would cost a timeout
        each time).

        ``release_unknown`` (RELEASE only; None for other verbs): whether an
        earlier RELEASE of ``handle`` may have taken effect unseen. Once one may
        have (that, or a try of this search got no answer or ``NEW_MASTER``: the
        server could not confirm it), ``BADHANDLE`` or ``LOSTLICENCE`` means the
        handle is gone: the search ends with ``OK handle=... gone=1``, as the
        licence is not held any more (a server answers that only once the state
        it read it from is durable). Without one, they are the answer
        (`LicenceDenied`: there was nothing to release).
        """
        question = _Question(verb, fields_for, signed_for, handle)
        progress = _Progress(self._order(start, last), release_unknown)
        return Deferred.fromCoroutine(self._search(question, progress))

    def _order(
        self, start: Sequence[ServerAddress], last: ServerAddress | None
    ) -> collections.deque[ServerAddress]:
        """``start``, then the search list, each server once; ``last`` at the end."""
        order = [*start, *self.servers]
        if last is not None:
            order = [server for server in order if server != last] + [last]
        return collections.deque(dict.fromkeys(order))

    async def _search(self, question: _Question, progress: _Progress) -> Found:
        while progress.queue:
            found = await self._ask_server(question, progress.queue.popleft(), progress)
            if found is not None:
                return found
        if progress.not_genuine:
            raise NotGenuineServer(progress.reasons)
        raise NoServer(progress.reasons)

    async def _ask_server(
        self, question: _Question, server: ServerAddress, progress: _Progress
    ) -> Found | None:
        """Ask one server, again after a pause while it is busy; None: go on to the next."""
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._try(question, server, attempt, progress)
            if outcome is not _Again.AGAIN:
                return outcome
            await deferLater(self.reactor, self.retry.delay(attempt))

    async def _try(
        self, question: _Question, server: ServerAddress, attempt: int, progress: _Progress
    ) -> _TryOutcome:
        """One try of ``server``: connect, ask, and judge the answer."""
        try:
            connection = await self.connect(server)
        except Exception as e:
            progress.skip(server, describe_failure(e))
            return None
        challenge = self.challenge(question.signed_for is not None)
        fields = question.fields_for(challenge)
        if challenge is not None:
            fields["challenge"] = challenge.hex()
        try:
            answer: Answer = await connection.call(question.verb, **fields)
        except Exception as e:
            connection.close()
            progress.skip(server, describe_failure(e))
            progress.outcome_unknown()  # it may have arrived and taken effect
            return None
        if isinstance(answer, Err):
            connection.close()
            return self._refused(question, server, connection, answer, attempt, progress)
        genuine = (
            challenge is None
            or not isinstance(answer, Ok)
            or await self._genuine(question, server, connection, answer, challenge, progress)
        )
        return Found(answer, server, connection) if genuine else None

    def _refused(
        self,
        question: _Question,
        server: ServerAddress,
        connection: Link,
        answer: Err,
        attempt: int,
        progress: _Progress,
    ) -> _TryOutcome:
        """What an ``ERR`` from ``server`` means for the search (its connection is closed)."""
        if progress.release_unknown and answer.status in LOST_STATUSES:
            # An earlier RELEASE did take effect (or the licence was
            # taken back meanwhile): either way it is not held.
            return Found(Ok.of(handle=question.handle, gone=1), server, connection)
        if answer.status is Status.NEW_MASTER:
            progress.outcome_unknown()  # not confirmed before a change of primary
        if answer.status in REDIRECT_STATUSES:
            self._redirect(answer, server, progress)
            return None
        if answer.status in RETRY_STATUSES:
            if attempt < self.retry.attempts:
                return _Again.AGAIN
            progress.skip(server, f"{answer.status.name} after {attempt} tries: {answer.msg}")
            return None
        raise LicenceDenied(answer, str(server))

    def _redirect(self, answer: Err, server: ServerAddress, progress: _Progress) -> None:
        """Ask the redirect's targets next; stop after too many redirects."""
        targets = redirect_targets(answer, server)
        progress.redirects += 1
        progress.skip(
            server,
            f"{answer.status.name} to {' '.join(t.host for t in targets) or 'nowhere'}",
        )
        if progress.redirects > self.retry.max_redirects:
            progress.reasons.append(f"more than {self.retry.max_redirects} redirects")
            progress.queue.clear()
            return
        for target in reversed(targets):
            if target in progress.queue:
                progress.queue.remove(target)
            progress.queue.appendleft(target)

    async def _genuine(
        self,
        question: _Question,
        server: ServerAddress,
        connection: Link,
        answer: Ok,
        challenge: bytes,
        progress: _Progress,
    ) -> bool:
        """Whether the signed ``answer`` verifies; if not, release what it granted."""
        assert question.signed_for is not None
        try:
            self.verify(
                connection, answer, challenge, question.verb, question.handle,
                question.signed_for,
            )
        except NotGenuine as e:
            progress.not_genuine += 1
            progress.skip(server, f"NOT GENUINE: {e}")
            self.log.warn(
                "licence server {server} is not genuine: {reason}",
                server=str(server),
                reason=str(e),
            )
            granted = answer.get("handle") if question.verb == "REQUEST" else None
            if granted:
                await self.release_refused(server, connection, granted)
            connection.close()
            return False
        return True

    async def release_refused(self, server: ServerAddress, connection: Link, handle: str) -> None:
        """RELEASE, at the server refused, the licence its unverified grant says it gave.

        Whoever answered may hold a licence for this process (a daemon without the
        server key, a member outside the certified domain): without this it would
        stay held until crashout. The RELEASE goes to that server only, never
        elsewhere: an impostor's handle may name another process's licence at a
        genuine server. Retried there (bounded by `Retry`) while it answers
        ``NEW_MASTER`` / ``LOSTMASTER`` / ``NOTVERIFIED``; no answer ends it (the
        server frees the licence after its crashout time).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                if not connection.is_open:
                    connection = await self.connect(server)
                answer = await connection.call("RELEASE", handle=handle)
            except Exception as e:
                connection.close()
                self.log.warn(
                    "RELEASE of {handle} at refused server {server}: no answer ({reason}); "
                    "it frees the licence after its crashout time",
                    handle=handle,
                    server=str(server),
                    reason=describe_failure(e),
                )
                return
            retry = isinstance(answer, Err) and answer.status in RETRY_STATUSES
            if retry and attempt < self.retry.attempts:
                connection.close()
                await deferLater(self.reactor, self.retry.delay(attempt))
                continue
            self._log_refused_release(server, handle, answer)
            return

    def _log_refused_release(self, server: ServerAddress, handle: str, answer: Answer) -> None:
        if isinstance(answer, Ok) or (
            isinstance(answer, Err) and answer.status in LOST_STATUSES
        ):
            self.log.info(
                "licence {handle} granted by refused server {server} released",
                handle=handle,
                server=str(server),
            )
            return
        outcome = (
            f"{answer.status.name}: {answer.msg}" if isinstance(answer, Err) else "a listing"
        )
        self.log.warn(
            "RELEASE of {handle} at refused server {server} answered {outcome}",
            handle=handle,
            server=str(server),
            outcome=outcome,
        )

    def verify(
        self,
        connection: Link,
        reply: Ok,
        challenge: bytes,
        verb: str,
        handle: str,
        product: Product,
    ) -> None:
        """Raise `NotGenuine` unless ``reply`` is signed for ``challenge`` by a server
        key the publisher certified for the address ``connection`` reached."""
        assert self.trusted is not None
        try:
            address = ipaddress.IPv4Address(connection.peer_host)
        except ValueError:
            raise NotGenuine(
                f"connected to {connection.peer_host!r}, not an IPv4 address"
            ) from None
        verify_reply(
            self.trusted,
            server=address,
            challenge=challenge,
            verb=verb,
            handle=(reply.get("handle") or "") if verb == "REQUEST" else handle,
            publisher=product.publisher,
            product=product.product,
            version=product.version,
            reply=reply,
        )
