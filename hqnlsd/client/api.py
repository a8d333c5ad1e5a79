"""The Twisted client API: find a server, take a licence, keep it, give it back.

Everything waits on Deferreds and an injected reactor (for connections and time),
so the whole library runs under `task.Clock` and in-memory connections in tests::

    client = LicenceClient(reactor, trusted=TrustedKeys.load("keys/"))
    licence = await client.request("Harlequin", "LispWorks", "8.0",
                                   on_lost=warn, on_regained=relax)
    ...                       # UPDATE runs in the background every period
    await licence.release()

Finding a server (`LicenceClient.search`): the servers of the search list
(`hqnlsd.client.servers`) are asked in order. ``ERR TRY_SERVER addr=A`` sends the
client to A next, ``ERR TRY_DOMAIN domain="a1 a2"`` to those addresses;
``NEW_MASTER``, ``LOSTMASTER`` and ``NOTVERIFIED`` are retried on the same server
with exponential backoff (`Retry`), a bounded number of times, then the next
server is tried. An unreachable or silent server is skipped. Any other ``ERR``
is the answer (`LicenceDenied`). When nothing answered: `NoServer`, with the
reason for every server tried.

Challenge/response: with ``trusted`` publisher keys, every REQUEST and UPDATE
carries a fresh random ``challenge=`` and an ``OK`` counts only if it is signed
by a server key that the publisher certified for a server domain containing the
address connected to (`hqnlsd.protocols.signing.verify_reply`). A server
failing this is skipped as not genuine (`NotGenuineServer` if no server passed);
a licence it granted is released there first (never at another server: an
impostor's handle may be someone else's).

A `HeldLicence` sends UPDATE a bit before each update period ends, and:

- on ``LOSTLICENCE`` / ``BADHANDLE`` calls ``on_lost`` and requests again;
- on lost contact (connection failure, timeout, a not-genuine answer, a redirect:
  then its target is asked first) requests again through the whole search list,
  first from the server it knew, with the *same* ``client=`` token: a server that
  still holds the licence (this one after a restart, or a new primary after
  failover) answers with the same handle, so a lost reply never takes two
  licences. ``on_lost`` is called only if this re-request fails;
- keeps re-requesting every `Retry.recover_interval` while lost; ``on_regained``
  is called when it holds a licence again;
- `HeldLicence.release` (or leaving ``async with``) stops all that and sends
  RELEASE; `LicenceClient.close` releases every licence of the client, and runs
  by itself before the reactor shuts down (a system event trigger), so a Twisted
  program that stops its reactor gives its licences back.

Callbacks get the licence (and the reason, for ``on_lost``); exceptions they
raise are logged, never propagated.
"""

from __future__ import annotations

import collections
import dataclasses
import getpass
import ipaddress
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger

from hqnlsd.client.connection import Answer, Link, connect_tcp, describe_failure
from hqnlsd.client.errors import ClientError, LicenceDenied, NoServer, NotGenuineServer
from hqnlsd.client.servers import ServerAddress, load_hosts, search_list
from hqnlsd.identity import DEFAULT_HOSTS_PATH
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.permits.servercert import NotGenuine
from hqnlsd.protocols import DEFAULT_CLIENT_PORT, client_side
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

Connector = Callable[[ServerAddress], "Deferred[Link]"]


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
class Process:
    """Who asks: the ``user=``, ``host=``, ``pid=`` (and optional ids) of REQUEST."""

    user: str
    host: str
    pid: int
    uid: int | None = None
    group: str | None = None
    hostid: int | None = None

    @classmethod
    def current(cls) -> Process:
        """This process: login name, host name, pid and uid."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid{os.getuid()}"
        return cls(
            user=user, host=socket.gethostname() or "localhost", pid=os.getpid(), uid=os.getuid()
        )

    def fields(self) -> dict[str, FieldValue]:
        """The REQUEST fields naming this process."""
        out: dict[str, FieldValue] = {"user": self.user, "host": self.host, "pid": self.pid}
        if self.uid is not None:
            out["uid"] = self.uid
        if self.group is not None:
            out["group"] = self.group
        if self.hostid is not None:
            out["hostid"] = f"0x{self.hostid:08x}"
        return out


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


@dataclasses.dataclass(frozen=True)
class PingResult:
    """What one server said to PING (``reply`` None if it could not be reached)."""

    server: ServerAddress
    reply: Ok | Err | None
    seconds: float
    problem: str = ""


#: Builds a request's fields for a server, given the challenge (or None).
FieldsFor = Callable[[bytes | None], dict[str, FieldValue]]


class LicenceClient:
    """Finds licence servers and takes licences from them (Twisted API)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        servers: Sequence[str | ServerAddress] | None = None,
        port: int = DEFAULT_CLIENT_PORT,
        environ: dict[str, str] | None = None,
        hosts_file: str | Path = DEFAULT_HOSTS_PATH,
        trusted: TrustedKeys | None = None,
        timeout: float = 10.0,
        retry: Retry = DEFAULT_RETRY,
        process: Process | None = None,
        connector: Connector | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.reactor = reactor
        env = dict(os.environ) if environ is None else environ
        hosts = None if servers or env.get("HQNSERVERS", "").strip() else load_hosts(hosts_file)
        #: The search list, in order.
        self.servers: tuple[ServerAddress, ...] = tuple(
            search_list(servers, environ=env, hosts=hosts, port=port)
        )
        self.trusted = trusted
        self.timeout = timeout
        self.retry = retry
        self.process = process or Process.current()
        self._connector: Connector = connector or self._connect_tcp
        self._random = random_bytes
        #: Licences taken through this client and not yet released.
        self.held: set[HeldLicence] = set()
        self._release_at_shutdown = False

    def _track(self, licence: HeldLicence) -> None:
        """Remember a held licence; release it when the reactor shuts down."""
        self.held.add(licence)
        if not self._release_at_shutdown and hasattr(self.reactor, "addSystemEventTrigger"):
            self.reactor.addSystemEventTrigger("before", "shutdown", self.close)
            self._release_at_shutdown = True

    def close(self) -> Deferred[None]:
        """Release every licence still held (also run before the reactor shuts down)."""
        from twisted.internet.defer import gatherResults

        releasing = [licence.release() for licence in list(self.held)]
        self.held.clear()
        done: Deferred[Any] = gatherResults(releasing, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def _connect_tcp(self, server: ServerAddress) -> Deferred[Link]:
        connecting: Deferred[Any] = connect_tcp(self.reactor, server, self.timeout)
        return connecting

    # -- the search -----------------------------------------------------------------

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
        return Deferred.fromCoroutine(
            self._search(verb, fields_for, signed_for, handle, start, last, release_unknown)
        )

    async def _search(
        self,
        verb: str,
        fields_for: FieldsFor,
        signed_for: Product | None,
        handle: str,
        start: Sequence[ServerAddress],
        last: ServerAddress | None = None,
        release_unknown: bool | None = None,
    ) -> Found:
        order = [*start, *self.servers]
        if last is not None:
            order = [server for server in order if server != last] + [last]
        queue = collections.deque(dict.fromkeys(order))
        reasons: list[str] = []
        not_genuine = 0
        redirects = 0
        while queue:
            server = queue.popleft()
            attempt = 0
            while True:
                attempt += 1
                try:
                    connection = await self._connector(server)
                except Exception as e:
                    reasons.append(f"{server}: {describe_failure(e)}")
                    break
                challenge = (
                    self._random(CHALLENGE_BYTES)
                    if self.trusted is not None and signed_for is not None
                    else None
                )
                fields = fields_for(challenge)
                if challenge is not None:
                    fields["challenge"] = challenge.hex()
                try:
                    answer: Answer = await connection.call(verb, **fields)
                except Exception as e:
                    connection.close()
                    reasons.append(f"{server}: {describe_failure(e)}")
                    if release_unknown is not None:
                        release_unknown = True  # it may have arrived and taken effect
                    break
                if isinstance(answer, Err):
                    connection.close()
                    if release_unknown and answer.status in LOST_STATUSES:
                        # An earlier RELEASE did take effect (or the licence was
                        # taken back meanwhile): either way it is not held.
                        return Found(Ok.of(handle=handle, gone=1), server, connection)
                    if release_unknown is not None and answer.status is Status.NEW_MASTER:
                        release_unknown = True  # not confirmed before a change of primary
                    if answer.status in REDIRECT_STATUSES:
                        targets = _redirect_targets(answer, server)
                        redirects += 1
                        reasons.append(
                            f"{server}: {answer.status.name} to "
                            f"{' '.join(t.host for t in targets) or 'nowhere'}"
                        )
                        if redirects > self.retry.max_redirects:
                            reasons.append(f"more than {self.retry.max_redirects} redirects")
                            queue.clear()
                            break
                        for target in reversed(targets):
                            if target in queue:
                                queue.remove(target)
                            queue.appendleft(target)
                        break
                    if answer.status in RETRY_STATUSES:
                        if attempt < self.retry.attempts:
                            await deferLater(self.reactor, self.retry.delay(attempt))
                            continue
                        reasons.append(
                            f"{server}: {answer.status.name} after {attempt} tries: {answer.msg}"
                        )
                        break
                    raise LicenceDenied(answer, str(server))
                if challenge is not None and isinstance(answer, Ok):
                    assert signed_for is not None
                    try:
                        self._verify(connection, answer, challenge, verb, handle, signed_for)
                    except NotGenuine as e:
                        not_genuine += 1
                        reasons.append(f"{server}: NOT GENUINE: {e}")
                        self.log.warn(
                            "licence server {server} is not genuine: {reason}",
                            server=str(server),
                            reason=str(e),
                        )
                        granted = answer.get("handle") if verb == "REQUEST" else None
                        if granted:
                            await self._release_refused(server, connection, granted)
                        connection.close()
                        break
                return Found(answer, server, connection)
        if not_genuine:
            raise NotGenuineServer(reasons)
        raise NoServer(reasons)

    async def _release_refused(self, server: ServerAddress, connection: Link, handle: str) -> None:
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
                    connection = await self._connector(server)
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
            if isinstance(answer, Ok) or (
                isinstance(answer, Err) and answer.status in LOST_STATUSES
            ):
                self.log.info(
                    "licence {handle} granted by refused server {server} released",
                    handle=handle,
                    server=str(server),
                )
            else:
                outcome = (
                    f"{answer.status.name}: {answer.msg}"
                    if isinstance(answer, Err)
                    else "a listing"
                )
                self.log.warn(
                    "RELEASE of {handle} at refused server {server} answered {outcome}",
                    handle=handle,
                    server=str(server),
                    outcome=outcome,
                )
            return

    def _verify(
        self,
        connection: Link,
        reply: Ok,
        challenge: bytes,
        verb: str,
        handle: str,
        product: Product,
    ) -> None:
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

    # -- licences --------------------------------------------------------------------

    def request(
        self,
        publisher: str,
        product: str,
        version: str,
        *,
        units: int = 1,
        on_lost: Callable[[HeldLicence, str], object] | None = None,
        on_regained: Callable[[HeldLicence], object] | None = None,
        token: str | None = None,
    ) -> Deferred[HeldLicence]:
        """Take a licence and keep it (UPDATE in the background) until released."""
        licence = HeldLicence(
            self,
            Product(publisher, product, version),
            units=units,
            token=token or secrets.token_hex(12),
            on_lost=on_lost,
            on_regained=on_regained,
        )
        return Deferred.fromCoroutine(licence._take())

    def release_handle(self, handle: str) -> Deferred[Ok]:
        """RELEASE a licence by handle (one this process does not hold, e.g. ``hqnls``)."""

        async def run() -> Ok:
            found = await self.search(
                "RELEASE", lambda _: {"handle": handle}, handle=handle, release_unknown=False
            )
            found.connection.close()
            assert isinstance(found.reply, Ok)
            return found.reply

        return Deferred.fromCoroutine(run())

    def users(self, publisher: str, product: str, version: str) -> Deferred[list[dict[str, str]]]:
        """The current holders of a product, one dict per holder (policy UVIS)."""
        product_fields = Product(publisher, product, version).fields()

        async def run() -> list[dict[str, str]]:
            found = await self.search("USERS", lambda _: dict(product_fields))
            found.connection.close()
            if isinstance(found.reply, Ok):  # an empty answer some servers give as OK
                return []
            return [client_side.parse_fields(line) for line in found.reply]

        return Deferred.fromCoroutine(run())

    def ping(self, servers: Sequence[ServerAddress] | None = None) -> Deferred[list[PingResult]]:
        """PING every server of the search list (or ``servers``), one after the other."""

        async def run() -> list[PingResult]:
            results: list[PingResult] = []
            for server in servers or self.servers:
                started = self.reactor.seconds()
                try:
                    connection = await self._connector(server)
                except Exception as e:
                    results.append(PingResult(server, None, 0.0, describe_failure(e)))
                    continue
                try:
                    answer = await connection.call("PING")
                except Exception as e:
                    results.append(PingResult(server, None, 0.0, describe_failure(e)))
                    continue
                finally:
                    connection.close()
                elapsed = self.reactor.seconds() - started
                if isinstance(answer, list):
                    results.append(PingResult(server, None, elapsed, "a listing, not a reply"))
                else:
                    results.append(PingResult(server, answer, elapsed))
            return results

        return Deferred.fromCoroutine(run())


def _redirect_targets(reply: Err, current: ServerAddress) -> list[ServerAddress]:
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


class HeldLicence:
    """A licence this process holds; kept alive by UPDATE until `release`.

    ``state`` is ``"held"``, ``"lost"`` (the server took it back or cannot be
    reached; being requested again), ``"released"`` or ``"detached"``.
    """

    log = Logger()

    def __init__(
        self,
        client: LicenceClient,
        product: Product,
        *,
        units: int,
        token: str,
        on_lost: Callable[[HeldLicence, str], object] | None,
        on_regained: Callable[[HeldLicence], object] | None,
    ) -> None:
        self.client = client
        self.product = product
        self.units = units
        #: The ``client=`` token: the same for every (re-)request of this licence.
        self.token = token
        self.on_lost = on_lost
        self.on_regained = on_regained
        self.state = "new"
        self.handle = ""
        self.server: ServerAddress | None = None
        #: The fields of the last grant (handle, period, type, access, data, dates...).
        self.grant: dict[str, str] = {}
        self.period = 0.0
        #: Why the licence was last lost ("" if never).
        self.lost_reason = ""
        self._connection: Link | None = None
        self._timer: IDelayedCall | None = None
        self._busy = False

    def __repr__(self) -> str:
        return f"<HeldLicence {self.product} handle={self.handle} {self.state} at {self.server}>"

    @property
    def data(self) -> tuple[int, ...]:
        """The permit's application data."""
        return tuple(int(word) for word in self.grant.get("data", "").split())

    @property
    def held(self) -> bool:
        """True while the licence is held."""
        return self.state == "held"

    def _request_fields(self, challenge: bytes | None) -> dict[str, FieldValue]:
        fields = self.product.fields()
        fields.update(self.client.process.fields())
        fields["client"] = self.token
        if self.units != 1:
            fields["units"] = self.units
        return fields

    async def _request(
        self, first: Sequence[ServerAddress] = (), *, unreachable: bool = False
    ) -> Found:
        """REQUEST (again) with this licence's token: ``first``, then the server that
        granted it, then the search list; with ``unreachable`` that server goes last."""
        current = self.server
        if current is not None and unreachable:
            return await self.client.search(
                "REQUEST",
                self._request_fields,
                signed_for=self.product,
                start=first,
                last=current,
            )
        start = (*first, current) if current is not None else tuple(first)
        return await self.client.search(
            "REQUEST", self._request_fields, signed_for=self.product, start=start
        )

    def _adopt(self, found: Found) -> None:
        assert isinstance(found.reply, Ok)
        if self._connection is not None and self._connection is not found.connection:
            self._connection.close()
        self._connection = found.connection
        self.server = found.server
        self.grant = dict(found.reply.fields)
        self.handle = self.grant.get("handle", "")
        try:
            self.period = float(self.grant.get("period", "0"))
        except ValueError:
            self.period = 0.0
        self.state = "held"
        self._schedule(self._update_delay())

    async def _take(self) -> HeldLicence:
        found = await self._request()
        self._adopt(found)
        self.client._track(self)
        return self

    # -- the heartbeat ---------------------------------------------------------------

    def _update_delay(self) -> float:
        period = self.period if self.period > 0 else 60.0
        return max(1.0, period * self.client.retry.update_fraction)

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        if self.state in ("held", "lost"):
            self._timer = self.client.reactor.callLater(delay, self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        Deferred.fromCoroutine(self._beat()).addErrback(
            lambda failure: self.log.failure("licence heartbeat failed", failure)
        )

    def update(self) -> Deferred[None]:
        """Send UPDATE now (or request again, if lost); the timer restarts after it."""
        self._cancel_timer()
        return Deferred.fromCoroutine(self._beat())

    async def _beat(self) -> None:
        if self._busy or self.state not in ("held", "lost"):
            return
        self._busy = True
        try:
            if self.state == "lost":
                await self._recover("")
            else:
                await self._update_once()
        finally:
            self._busy = False

    async def _update_once(self) -> None:
        client = self.client
        connection = self._connection
        try:
            if connection is None or not connection.is_open:
                assert self.server is not None
                connection = await client._connector(self.server)
                self._connection = connection
            challenge = client._random(CHALLENGE_BYTES) if client.trusted is not None else None
            fields: dict[str, FieldValue] = {"handle": self.handle}
            if challenge is not None:
                fields["challenge"] = challenge.hex()
            answer = await connection.call("UPDATE", **fields)
            if self.state != "held":
                return  # released while waiting
            if isinstance(answer, Ok) and challenge is not None:
                client._verify(connection, answer, challenge, "UPDATE", self.handle, self.product)
        except NotGenuine as e:
            await self._recover(f"{self.server} is not genuine: {e}")
            return
        except Exception as e:
            if self.state == "held":
                await self._recover(
                    f"lost contact with {self.server}: {describe_failure(e)}", unreachable=True
                )
            return
        if isinstance(answer, Ok):
            period = answer.get("period")
            if period is not None and period.isdigit():
                self.period = float(period)
            self._schedule(self._update_delay())
            return
        if isinstance(answer, Err) and answer.status in LOST_STATUSES:
            self._mark_lost(f"{answer.status.name}: {answer.msg}")
            await self._recover("")
            return
        if isinstance(answer, Err):
            targets = (
                _redirect_targets(answer, self.server)
                if answer.status in REDIRECT_STATUSES and self.server is not None
                else []
            )
            await self._recover(
                f"{self.server} answered {answer.status.name}: {answer.msg}", first=targets
            )
        else:
            await self._recover(f"{self.server} answered a listing")

    async def _recover(
        self,
        contact_problem: str,
        first: Sequence[ServerAddress] = (),
        *,
        unreachable: bool = False,
    ) -> None:
        """Request the licence again (same token; ``first`` asked first); lost if that fails.

        ``unreachable``: the licence's server just failed to answer, so it is asked
        last (a dead host would otherwise cost a second timeout before the others).
        """
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        was_lost = self.state == "lost"
        try:
            found = await self._request(first, unreachable=unreachable)
        except ClientError as e:
            if self.state in ("released", "detached"):
                return
            if not was_lost:
                reason = (
                    f"{contact_problem}; requesting again failed: {e}"
                    if contact_problem
                    else str(e)
                )
                self._mark_lost(reason)
            self._schedule(self.client.retry.recover_interval)
            return
        if self.state in ("released", "detached"):  # given up while re-requesting
            await self._send_release(found)
            return
        self._adopt(found)
        if was_lost:
            self._log_regained()
            self._notify(self.on_regained, "on_regained", self)

    def _log_regained(self) -> None:
        self.log.info(
            "licence for {product} regained (handle {handle} at {server})",
            product=str(self.product),
            handle=self.handle,
            server=str(self.server),
        )

    def _mark_lost(self, reason: str) -> None:
        if self.state != "held":
            return
        self.state = "lost"
        self.lost_reason = reason
        self.log.warn(
            "licence for {product} lost: {reason}", product=str(self.product), reason=reason
        )
        self._notify(self.on_lost, "on_lost", self, reason)

    def _notify(self, callback: Callable[..., object] | None, what: str, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.log.failure("the {what} callback raised", what=what)

    # -- release ---------------------------------------------------------------------

    def release(self) -> Deferred[None]:
        """Stop the heartbeat and give the licence back (errors are logged, not raised).

        A server that cannot be reached frees the licence itself after its
        crashout time.
        """
        if self.state in ("released", "detached"):
            return Deferred.fromCoroutine(_nothing())
        self.client.held.discard(self)
        was_held = self.state == "held"
        self.state = "released"
        self._cancel_timer()
        connection, self._connection = self._connection, None
        if not was_held or not self.handle:
            if connection is not None:
                connection.close()
            return Deferred.fromCoroutine(_nothing())
        return Deferred.fromCoroutine(self._release(connection))

    def detach(self) -> None:
        """Stop the heartbeat and forget the licence without releasing it.

        The server keeps it until its crashout time passes without an UPDATE (or
        someone releases the handle): how ``hqnls request --hold`` leaves a licence
        to a script.
        """
        self.client.held.discard(self)
        self.state = "detached"
        self._cancel_timer()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _release(self, connection: Link | None) -> None:
        """RELEASE the handle until a server confirms it, or says it is gone.

        An OK to RELEASE is final (the server answers it only once durable, or
        held by a quorum of its domain). ``NEW_MASTER`` (not confirmed before a
        change of primary), a redirect, ``LOSTMASTER``/``NOTVERIFIED`` or no
        answer at all: it is sent again through the search (`LicenceClient.search`,
        bounded by `Retry`), and once a try's outcome was unknown, ``BADHANDLE``
        there means the first one did take effect: released.
        """
        assert self.server is not None
        server = self.server
        first: list[ServerAddress] = []
        unknown = False
        unreachable = False
        try:
            if connection is None or not connection.is_open:
                connection = await self.client._connector(server)
            try:
                answer = await connection.call("RELEASE", handle=self.handle)
            except Exception:
                unknown = unreachable = True
                raise
        except Exception as e:
            unreachable = True
            self.log.info(
                "RELEASE of {handle} at {server}: no answer ({reason}); sending it again",
                handle=self.handle,
                server=str(server),
                reason=describe_failure(e),
            )
        else:
            if isinstance(answer, Ok):
                return
            if not isinstance(answer, Err):
                self.log.warn("RELEASE of {handle}: answered a listing", handle=self.handle)
                return
            if answer.status in LOST_STATUSES:
                self.log.info(
                    "RELEASE of {handle}: {status}: the licence was not held any more",
                    handle=self.handle,
                    status=answer.status.name,
                )
                return
            if answer.status not in RETRY_STATUSES | REDIRECT_STATUSES:
                self.log.warn(
                    "RELEASE of {handle}: {status}: {msg}",
                    handle=self.handle,
                    status=answer.status.name,
                    msg=answer.msg,
                )
                return
            unknown = answer.status is Status.NEW_MASTER
            first = _redirect_targets(answer, server) if answer.status in REDIRECT_STATUSES else []
        finally:
            if connection is not None:
                connection.close()
        await self._release_again(first, server, unknown=unknown, unreachable=unreachable)

    async def _release_again(
        self,
        first: Sequence[ServerAddress],
        server: ServerAddress,
        *,
        unknown: bool,
        unreachable: bool,
    ) -> None:
        """Send the RELEASE again through the search (see `_release`)."""
        handle = self.handle
        try:
            found = await self.client.search(
                "RELEASE",
                lambda _: {"handle": handle},
                handle=handle,
                start=first if unreachable else (*first, server),
                last=server if unreachable else None,
                release_unknown=unknown,
            )
        except LicenceDenied as e:
            self.log.warn("RELEASE of {handle}: {reason}", handle=handle, reason=str(e))
            return
        except ClientError as e:
            self.log.warn(
                "RELEASE of {handle} was not confirmed ({reason}); the server frees it "
                "after its crashout time",
                handle=handle,
                reason=str(e),
            )
            return
        found.connection.close()
        self.log.info(
            "RELEASE of {handle} confirmed by {server}{gone}",
            handle=handle,
            server=str(found.server),
            gone=" (the handle was gone: an earlier try took effect)"
            if isinstance(found.reply, Ok) and found.reply.get("gone")
            else "",
        )

    async def _send_release(self, found: Found) -> None:
        """Release the licence a re-request found after `release` was called."""
        reply, connection = found.reply, found.connection
        if isinstance(reply, Ok) and reply.get("handle"):
            self.handle = reply.get("handle") or ""
            self.server = found.server  # a RELEASE sent again starts there
            await self._release(connection)
        else:
            connection.close()

    async def __aenter__(self) -> HeldLicence:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()


async def _nothing() -> None:
    return None
