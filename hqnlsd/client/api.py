"""The Twisted client API: find a server, take a licence, keep it, give it back.

Everything waits on Deferreds and an injected reactor (for connections and time),
so the whole library runs under `task.Clock` and in-memory connections in tests::

    client = LicenceClient(reactor, trusted=TrustedKeys.load("keys/"))
    licence = await client.request("Harlequin", "LispWorks", "8.0",
                                   on_lost=warn, on_regained=relax)
    ...                       # UPDATE runs in the background every period
    await licence.release()

Finding a server (`LicenceClient.search`) is `hqnlsd.client.search`: the servers
of the search list are asked in order, redirects (``TRY_SERVER``, ``TRY_DOMAIN``)
followed, busy servers (``NEW_MASTER``, ``LOSTMASTER``, ``NOTVERIFIED``) retried
with backoff (`Retry`), unreachable ones skipped; any other ``ERR`` is the answer
(`LicenceDenied`), and when nothing answered: `NoServer`.

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

import dataclasses
import getpass
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from hqnlsd.client.connection import Answer, Link, connect_tcp, describe_failure
from hqnlsd.client.errors import ClientError, LicenceDenied
from hqnlsd.client.search import (
    DEFAULT_RETRY,
    LOST_STATUSES,
    REDIRECT_STATUSES,
    RETRY_STATUSES,
    Connector,
    FieldsFor,
    Found,
    Product,
    Retry,
    ServerSearch,
    redirect_targets,
)
from hqnlsd.client.servers import ServerAddress, load_hosts, search_list
from hqnlsd.identity import DEFAULT_HOSTS_PATH
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.permits.servercert import NotGenuine
from hqnlsd.protocols import DEFAULT_CLIENT_PORT, client_side
from hqnlsd.protocols.replies import Err, FieldValue, Ok
from hqnlsd.status import Status

__all__ = [
    "DEFAULT_RETRY",
    "LOST_STATUSES",
    "REDIRECT_STATUSES",
    "RETRY_STATUSES",
    "Connector",
    "FieldsFor",
    "Found",
    "HeldLicence",
    "LicenceClient",
    "PingResult",
    "Process",
    "Product",
    "Retry",
]


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
class PingResult:
    """What one server said to PING (``reply`` None if it could not be reached)."""

    server: ServerAddress
    reply: Ok | Err | None
    seconds: float
    problem: str = ""


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
        self.timeout = timeout
        self.process = process or Process.current()
        #: The search over the servers (redirects, retries, signed replies).
        self.server_search = ServerSearch(
            reactor,
            servers=search_list(servers, environ=env, hosts=hosts, port=port),
            connector=connector or self._connect_tcp,
            trusted=trusted,
            retry=retry,
            random_bytes=random_bytes,
        )
        #: Licences taken through this client and not yet released.
        self.held: set[HeldLicence] = set()
        self._release_at_shutdown = False

    @property
    def servers(self) -> tuple[ServerAddress, ...]:
        """The search list, in order."""
        return self.server_search.servers

    @property
    def trusted(self) -> TrustedKeys | None:
        """The publisher keys replies are verified with (None: not verified)."""
        return self.server_search.trusted

    @property
    def retry(self) -> Retry:
        """The bounds of searches, retries and re-requests."""
        return self.server_search.retry

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
        """Ask servers in order until one answers ``OK`` or a listing: see
        `ServerSearch.search`, which this is."""
        return self.server_search.search(
            verb,
            fields_for,
            signed_for=signed_for,
            handle=handle,
            start=start,
            last=last,
            release_unknown=release_unknown,
        )

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
                    connection = await self.server_search.connect(server)
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
        try:
            answer = await self._send_update()
        except NotGenuine as e:
            await self._recover(f"{self.server} is not genuine: {e}")
            return
        except Exception as e:
            if self.state == "held":
                await self._recover(
                    f"lost contact with {self.server}: {describe_failure(e)}", unreachable=True
                )
            return
        if answer is not None:
            await self._updated(answer)

    async def _send_update(self) -> Answer | None:
        """UPDATE at the licence's server, its signature checked; None if the
        licence was released while waiting for the answer."""
        search = self.client.server_search
        connection = self._connection
        if connection is None or not connection.is_open:
            assert self.server is not None
            connection = await search.connect(self.server)
            self._connection = connection
        challenge = search.challenge()
        fields: dict[str, FieldValue] = {"handle": self.handle}
        if challenge is not None:
            fields["challenge"] = challenge.hex()
        answer = await connection.call("UPDATE", **fields)
        if self.state != "held":
            return None
        if isinstance(answer, Ok) and challenge is not None:
            search.verify(connection, answer, challenge, "UPDATE", self.handle, self.product)
        return answer

    async def _updated(self, answer: Answer) -> None:
        """Act on the server's answer to UPDATE: next beat, or request again."""
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
                redirect_targets(answer, self.server)
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
                connection = await self.client.server_search.connect(server)
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
            first = redirect_targets(answer, server) if answer.status in REDIRECT_STATUSES else []
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
