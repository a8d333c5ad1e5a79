"""The blocking client API: the Twisted API run on a private reactor in a thread.

::

    from hqnlsd.client import BlockingLicenceClient

    client = BlockingLicenceClient(trusted="publisher.pub")
    with client.request("Harlequin", "LispWorks", "8.0") as licence:
        print(licence.handle, licence.data)
        ...                            # UPDATE runs in the background
    # released here; and at process exit for any licence still held

How: one private reactor (a fresh reactor instance, never installed as the global
``twisted.internet.reactor``) runs in a daemon thread, started on first use and
shared by every blocking client of the process. Calls hand work to it with
``callFromThread`` and wait, bounded, for the result. So the blocking API works in
any program, one that runs Twisted's global reactor included, and the heartbeat
of every held licence runs in that thread while the program does its own work.
The ``on_lost`` / ``on_regained`` callbacks run in that thread too: keep them short
and thread-safe (set a flag, put on a queue).

At process exit (``atexit``) every licence still held is released (each RELEASE
bounded by the client's timeout) and the reactor thread is stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from hqnlsd.client.api import DEFAULT_RETRY, HeldLicence, LicenceClient, PingResult, Process, Retry
from hqnlsd.client.errors import ClientError
from hqnlsd.client.servers import ServerAddress
from hqnlsd.identity import DEFAULT_HOSTS_PATH
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.protocols import DEFAULT_CLIENT_PORT
from hqnlsd.protocols.replies import Ok

T = TypeVar("T")


class ReactorThread:
    """A private reactor running in a daemon thread; `call` runs work on it and waits."""

    def __init__(self) -> None:
        self.reactor = _new_reactor()
        self._thread = threading.Thread(
            target=self.reactor.run,
            kwargs={"installSignalHandlers": False},
            name="hqnlsd-client-reactor",
            daemon=True,
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the reactor thread runs."""
        return self._thread.is_alive()

    def call(self, work: Callable[[], Deferred[T]], timeout: float) -> T:
        """Run ``work`` in the reactor thread; its result (waiting for a Deferred).

        Raises what ``work`` raised, or TimeoutError after ``timeout`` seconds (the
        Deferred is then cancelled).
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking client calls cannot be made from its reactor thread")
        results: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        pending: list[Deferred[Any]] = []

        def run() -> None:
            deferred = maybeDeferred(work)
            pending.append(deferred)

            def done(result: object) -> None:
                if isinstance(result, Failure):
                    results.put((False, result.value))
                else:
                    results.put((True, result))

            deferred.addBoth(done)

        self.reactor.callFromThread(run)
        try:
            ok, value = results.get(timeout=timeout)
        except queue.Empty:
            self.reactor.callFromThread(_cancel_all, pending)
            raise TimeoutError(f"no result from the licence client in {timeout:g} s") from None
        if ok:
            result: T = value
            return result
        raise value

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reactor and wait (bounded) for the thread to end."""
        if self._thread.is_alive():
            self.reactor.callFromThread(self.reactor.stop)
            self._thread.join(timeout)


def _cancel_all(pending: list[Deferred[Any]]) -> None:
    for deferred in pending:
        deferred.cancel()


def _new_reactor() -> Any:
    try:
        from twisted.internet.epollreactor import EPollReactor

        return EPollReactor()
    except ImportError:  # not Linux
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()


_lock = threading.Lock()
_shared: ReactorThread | None = None
#: Licences held through the blocking API: released at exit.
_held: set[BlockingLicence] = set()


def shared_reactor_thread() -> ReactorThread:
    """The process's reactor thread for blocking clients (started on first use)."""
    global _shared
    with _lock:
        if _shared is None or not _shared.running:
            _shared = ReactorThread()
            atexit.register(_at_exit, _shared)
        return _shared


def _at_exit(thread: ReactorThread) -> None:
    for licence in list(_held):
        if licence._thread is thread:
            with contextlib.suppress(Exception):  # at exit: no traceback for a RELEASE
                licence.release()
    thread.stop()


def load_trusted(source: TrustedKeys | str | Path | None) -> TrustedKeys | None:
    """Trusted publisher keys from a ``.pub`` file, a directory of them, or as given."""
    if source is None or isinstance(source, TrustedKeys):
        return source
    path = Path(source)
    if path.is_dir():
        keys = TrustedKeys.load(path)
        if not keys.keys:
            raise ClientError(f"{path}: no usable publisher key (*.pub)")
        return keys
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise ClientError(f"{path}: cannot read the publisher key: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise ClientError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise ClientError(f"{path}: not an Ed25519 publisher key")
    return TrustedKeys.of(public)


class BlockingLicenceClient:
    """`LicenceClient` with calls that block (module docstring)."""

    def __init__(
        self,
        *,
        servers: Sequence[str | ServerAddress] | None = None,
        port: int = DEFAULT_CLIENT_PORT,
        environ: dict[str, str] | None = None,
        hosts_file: str | Path = DEFAULT_HOSTS_PATH,
        trusted: TrustedKeys | str | Path | None = None,
        timeout: float = 10.0,
        retry: Retry = DEFAULT_RETRY,
        process: Process | None = None,
        reactor_thread: ReactorThread | None = None,
    ) -> None:
        self._thread = reactor_thread or shared_reactor_thread()
        self.client = LicenceClient(
            self._thread.reactor,
            servers=servers,
            port=port,
            environ=environ,
            hosts_file=hosts_file,
            trusted=load_trusted(trusted),
            timeout=timeout,
            retry=retry,
            process=process,
        )

    @property
    def servers(self) -> tuple[ServerAddress, ...]:
        """The search list."""
        return self.client.servers

    @property
    def wait_limit(self) -> float:
        """The longest a whole search can take (each step is bounded): the blocking bound.

        Per server: its tries (connect + call each), or one try and then the
        RELEASE tries of a grant refused as not genuine.
        """
        retry = self.client.retry
        per_server = (retry.attempts + 1) * 2 * self.client.timeout + sum(
            retry.delay(n) for n in range(1, retry.attempts)
        )
        return (len(self.client.servers) + retry.max_redirects + 1) * per_server + 5.0

    def request(
        self,
        publisher: str,
        product: str,
        version: str,
        *,
        units: int = 1,
        on_lost: Callable[[BlockingLicence, str], object] | None = None,
        on_regained: Callable[[BlockingLicence], object] | None = None,
    ) -> BlockingLicence:
        """Take a licence; it is kept (UPDATE in the background) until released.

        Raises `LicenceDenied`, `NoServer` or `NotGenuineServer`.
        """
        box: list[BlockingLicence] = []

        def lost(_: HeldLicence, reason: str) -> None:
            if on_lost is not None and box:
                on_lost(box[0], reason)

        def regained(_: HeldLicence) -> None:
            if on_regained is not None and box:
                on_regained(box[0])

        held: HeldLicence = self._thread.call(
            lambda: self.client.request(
                publisher, product, version, units=units, on_lost=lost, on_regained=regained
            ),
            self.wait_limit,
        )
        licence = BlockingLicence(held, self._thread, self.client.timeout)
        box.append(licence)
        _held.add(licence)
        return licence

    def release_handle(self, handle: str) -> Ok:
        """RELEASE a licence by its handle (wherever the search finds it)."""
        return self._thread.call(lambda: self.client.release_handle(handle), self.wait_limit)

    def users(self, publisher: str, product: str, version: str) -> list[dict[str, str]]:
        """The holders of a product, one dict each (if the policy allows)."""
        return self._thread.call(
            lambda: self.client.users(publisher, product, version), self.wait_limit
        )

    def ping(self, servers: Sequence[ServerAddress] | None = None) -> list[PingResult]:
        """PING every server of the search list (or ``servers``)."""
        return self._thread.call(lambda: self.client.ping(servers), self.wait_limit)


class BlockingLicence:
    """A held licence (blocking API); a context manager that releases it on exit."""

    def __init__(self, held: HeldLicence, thread: ReactorThread, timeout: float) -> None:
        self.held_licence = held
        self._thread = thread
        self._timeout = timeout

    def __repr__(self) -> str:
        return repr(self.held_licence).replace("HeldLicence", "BlockingLicence", 1)

    @property
    def handle(self) -> str:
        """The licence's handle (it may change after the licence was lost and regained)."""
        return self.held_licence.handle

    @property
    def server(self) -> ServerAddress | None:
        """The server holding it."""
        return self.held_licence.server

    @property
    def state(self) -> str:
        """``held``, ``lost`` (being requested again) or ``released``."""
        return self.held_licence.state

    @property
    def held(self) -> bool:
        """True while held."""
        return self.held_licence.held

    @property
    def grant(self) -> dict[str, str]:
        """The fields of the grant: handle, period, type, access, data, start, expiry..."""
        return dict(self.held_licence.grant)

    @property
    def data(self) -> tuple[int, ...]:
        """The permit's application data."""
        return self.held_licence.data

    @property
    def period(self) -> float:
        """The update period, in seconds."""
        return self.held_licence.period

    def update(self) -> None:
        """Send UPDATE now (or request again, if lost)."""
        self._thread.call(self.held_licence.update, self._timeout * 4)

    def release(self) -> None:
        """Give the licence back (bounded; a failure is logged, not raised)."""
        _held.discard(self)
        if self._thread.running:
            self._thread.call(self.held_licence.release, self._timeout * 2 + 1)

    def detach(self) -> None:
        """Stop keeping the licence without releasing it (``hqnls request --hold``).

        The server frees it after its crashout time unless someone UPDATEs or
        RELEASEs the handle.
        """
        _held.discard(self)
        def detach() -> Deferred[None]:
            self.held_licence.detach()
            return succeed(None)

        self._thread.call(detach, self._timeout)

    def __enter__(self) -> BlockingLicence:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
