"""The client library over real TCP on loopback, against the real `LicenceServer`.

`RealServer` is the daemon's core as `hqnlsd.service` builds it: real sealed
permits on disk read by `PermitSource`, the `Engine`, the SQLite `Journal`, and
the daemon's client protocol listening on 127.0.0.1 (port 0). It runs on a
private reactor in a thread (`ReactorThread`), so both client APIs can be used
from the test's thread: the Twisted API by handing coroutines to that reactor,
the blocking API directly. Every wait is bounded by the thread's call timeout.

Also here: the challenge/response integration the lead adds to `LicenceServer`
(`SigningDispatcher` shows the exact code path) against a real server, and the
``atexit`` release of the blocking API in a real child process.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred, succeed

from hqnlsd.client.api import LicenceClient, Process, Retry
from hqnlsd.client.blocking import BlockingLicenceClient, ReactorThread
from hqnlsd.client.errors import LicenceDenied, NotGenuineServer
from hqnlsd.client.testing import FakeLicenceServer
from hqnlsd.identity import local_unique_id
from hqnlsd.licensing.engine import Engine
from hqnlsd.permits.model import HostId
from hqnlsd.permits.policy import Policy
from hqnlsd.permits.reader import read_permit_file
from hqnlsd.permits.seal import TrustedKeys
from hqnlsd.permits.servercert import ServerKeys, make_server_key
from hqnlsd.persistence.store import Journal, open_journal
from hqnlsd.protocols import grammar
from hqnlsd.protocols.client import ClientProtocolFactory
from hqnlsd.protocols.replies import Err, Listing, Reply
from hqnlsd.protocols.signing import sign_reply
from hqnlsd.server import LicenceServer, PermitSource
from hqnlsd.status import Status
from tests.daemons import REPO_ROOT, Publisher, make_permit, product_permit

T = TypeVar("T")
PRODUCT = ("Test Publisher", "Widget", "1.0")
#: Bound of every cross-thread wait in these tests (seconds).
WAIT = 20.0
ME = HostId(ipaddress.IPv4Address("127.0.0.1"), local_unique_id())


@pytest.fixture(scope="module")
def thread() -> Iterator[ReactorThread]:
    """A private reactor thread for the servers of this module (stopped at the end)."""
    running = ReactorThread()
    yield running
    running.stop()


def on(thread: ReactorThread, work: Callable[[], T]) -> T:
    """Run plain ``work`` in the reactor thread and return its result."""
    return thread.call(lambda: succeed(work()), WAIT)


def run_async(thread: ReactorThread, coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine (Twisted API) on the reactor thread; its result."""
    return thread.call(lambda: Deferred.fromCoroutine(coroutine()), WAIT)


class SigningDispatcher:
    """Challenge/response for `LicenceServer`: the integration code, as a wrapper.

    Exactly what the lead adds to `LicenceServer._request` / `_update`: answer the
    command without its challenge, then `sign_reply` with the server key of the
    permit of the product (for UPDATE, the product of the handle).
    """

    def __init__(self, server: LicenceServer, keys: ServerKeys) -> None:
        self.server = server
        self.keys = keys

    def dispatch(self, command: grammar.DispatchedCommand, peer: Any) -> Any:
        """Answer, then sign REQUEST and UPDATE replies to a challenge."""
        if not isinstance(command, grammar.Request | grammar.Update) or command.challenge is None:
            return self.server.dispatch(command, peer)
        bare = dataclasses.replace(command, challenge=None)
        answer = self.server.dispatch(bare, peer)
        sign = self._signer(command)
        if isinstance(answer, Deferred):
            return answer.addCallback(sign)
        return sign(answer)

    def _signer(self, command: grammar.Request | grammar.Update) -> Callable[[Reply], Reply]:
        if isinstance(command, grammar.Request):
            names: tuple[str, str, str] | None = (
                command.publisher, command.product, command.version)
        else:
            names = product_of_handle(self.server.engine, command.handle)

        def sign(reply: Reply) -> Reply:
            if names is None or isinstance(reply, Listing):
                return reply
            offer = self.server.catalogue.find(names[0], names[1])
            key = self.keys.get(offer.permit.number) if offer is not None else None
            handle = command.handle if isinstance(command, grammar.Update) else ""
            return sign_reply(
                key, challenge=command.challenge, verb=command.verb,
                handle=handle or reply.get("handle") or "",
                publisher=names[0], product=names[1], version=names[2], reply=reply,
            )

        return sign


def product_of_handle(engine: Engine, handle: str) -> tuple[str, str, str] | None:
    """The (publisher, product, version) a handle is a licence of (public engine API)."""
    for status in engine.status():
        holders = engine.holders(status.publisher, status.product)
        if isinstance(holders, list) and any(h.handle == handle for h in holders):
            return (status.publisher, status.product, status.version)
    return None


@dataclasses.dataclass
class RealServer:
    """A `LicenceServer` listening on 127.0.0.1, with its journal and publisher."""

    thread: ReactorThread
    root: Path
    publisher: Publisher
    server: LicenceServer | None = None
    journal: Journal | None = None
    port: Any = None
    number: int = 0
    keys: ServerKeys | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.number}"

    def start(self, port: int = 0) -> RealServer:
        """Open the journal, read the permits, listen (in the reactor thread)."""

        def build() -> None:
            reactor = self.thread.reactor
            source = PermitSource(
                permit_dirs=(self.root / "permits",), environ={},
                publisher_keys=self.publisher.keys_dir, hosts_file=self.root / "hosts", me=ME,
            )
            engine = Engine(reactor)
            self.journal = open_journal(self.root / "state", reactor)
            self.journal.restore(engine)
            self.server = LicenceServer(engine, self.journal, source, clock=reactor)
            self.server.load_permits()
            dispatcher: Any = self.server
            if self.keys is not None:
                dispatcher = SigningDispatcher(self.server, self.keys)
            self.port = reactor.listenTCP(
                port, ClientProtocolFactory(dispatcher, reactor), interface="127.0.0.1")
            self.number = self.port.getHost().port

        on(self.thread, build)
        return self

    def stop(self) -> None:
        """Stop listening, drop connections' server, close the journal."""

        def down() -> Deferred[None]:
            stopped: Deferred[None] = Deferred()
            done = self.port.stopListening() if self.port is not None else None
            self.port = None

            def close(_: object) -> None:
                if self.journal is not None:
                    self.journal.flush()
                    self.journal.close()
                    self.journal = None
                stopped.callback(None)

            if isinstance(done, Deferred):
                done.addBoth(close)
            else:
                close(None)
            return stopped

        self.thread.call(down, WAIT)

    def holders(self) -> list[str]:
        """The handles held now."""
        def read() -> list[str]:
            assert self.server is not None
            found = self.server.engine.holders(PRODUCT[0], PRODUCT[1])
            assert isinstance(found, list)
            return [h.handle or "" for h in found]

        return on(self.thread, read)


def make_real_server(thread: ReactorThread, root: Path, *, floating: int = 2) -> RealServer:
    """Seal a permit for this host (Widget, ``floating`` licences, UVIS) and start a server."""
    publisher = Publisher.create(root / "keys")
    widget = product_permit(policy=int(Policy.GRAB | Policy.UVIS), floating_count=floating,
                            start=datetime.date(2020, 1, 1), data=(7, 8))
    publisher.write_permit(root / "permits" / "test-hqn.permit", make_permit([ME], [widget],
                                                                             number=5))
    (root / "hosts").write_text("127.0.0.1 localhost\n")
    return RealServer(thread, root, publisher).start()


@pytest.fixture
def real(thread: ReactorThread, tmp_path: Path) -> Iterator[RealServer]:
    """A real server with two Widget licences."""
    server = make_real_server(thread, tmp_path)
    yield server
    server.stop()


def twisted_client(thread: ReactorThread, servers: list[str], **options: Any) -> LicenceClient:
    """A Twisted-API client on the reactor thread."""
    return LicenceClient(thread.reactor, servers=servers, timeout=5.0,
                         retry=Retry(first_delay=0.05), **options)


def test_twisted_api_against_the_real_server(thread: ReactorThread, real: RealServer) -> None:
    """REQUEST, UPDATE, USERS, RELEASE over TCP; the engine agrees at each step."""
    client = twisted_client(thread, [real.address],
                            process=Process(user="jo", host="box", pid=99))

    async def take() -> Any:
        return await client.request(*PRODUCT)

    licence = run_async(thread, take)
    assert licence.held and licence.data == (7, 8) and licence.period == 300.0
    assert licence.grant["type"] == "floating"
    assert real.holders() == [licence.handle]
    thread.call(licence.update, WAIT)
    assert licence.held
    users = thread.call(lambda: client.users(*PRODUCT), WAIT)
    assert [(u["user"], u["host"], u["pid"]) for u in users] == [("jo", "box", "99")]
    thread.call(licence.release, WAIT)
    assert real.holders() == []


def test_blocking_api_and_restart_keeps_the_handle(real: RealServer) -> None:
    """Blocking API: a server restart loses contact; the same token gets the same handle."""
    client = BlockingLicenceClient(servers=[real.address], timeout=5.0,
                                   retry=Retry(first_delay=0.05))
    events: list[str] = []
    with client.request(*PRODUCT, on_lost=lambda lic, why: events.append(why),
                        on_regained=lambda lic: events.append("regained")) as licence:
        handle = licence.handle
        assert real.holders() == [handle]
        port = real.number
        real.stop()
        real.start(port)  # same state directory: the journal restores the licence
        licence.update()
        assert licence.held and licence.handle == handle and events == []
        assert real.holders() == [handle]  # one licence, not two
        second = client.request(*PRODUCT)
        with pytest.raises(LicenceDenied) as caught:
            client.request(*PRODUCT)
        assert caught.value.status is Status.NOLICENCES
        second.release()
    assert real.holders() == []


def test_redirect_over_tcp(thread: ReactorThread) -> None:
    """TRY_SERVER from a server on 127.0.0.1 leads to 127.0.0.2 on the same port."""
    backup, primary = FakeLicenceServer(name="b"), FakeLicenceServer(name="p")
    first = on(thread, lambda: backup.listen(thread.reactor, "127.0.0.1"))
    number = first.getHost().port
    second = on(thread, lambda: primary.listen(thread.reactor, "127.0.0.2", number))
    try:
        backup.then("REQUEST", Err.of(Status.TRY_SERVER, "primary", n=2, addr="127.0.0.2"))
        client = BlockingLicenceClient(servers=[f"127.0.0.1:{number}"], timeout=5.0)
        with client.request("Harlequin", "LispWorks", "8.0") as licence:
            assert str(licence.server) == f"127.0.0.2:{number}"
            assert licence.handle == "p-1"
        assert primary.verbs() == ["REQUEST", "RELEASE"]
    finally:
        on(thread, first.stopListening)
        on(thread, second.stopListening)


def test_challenge_response_with_the_real_server(thread: ReactorThread, tmp_path: Path) -> None:
    """With the server key installed the real server's replies verify; without, detected."""
    real = make_real_server(thread, tmp_path)
    trusted = TrustedKeys.load(real.publisher.keys_dir)
    try:
        permit_file = real.root / "permits" / "test-hqn.permit"
        permit = read_permit_file(permit_file, trusted).permit
        assert permit is not None
        real.stop()
        real.keys = ServerKeys.of(make_server_key(real.publisher.key, permit))
        real.start()
        client = BlockingLicenceClient(servers=[real.address], trusted=trusted, timeout=5.0)
        with client.request(*PRODUCT) as licence:
            licence.update()
            assert licence.held and real.holders() == [licence.handle]
        assert real.holders() == []
        real.stop()
        real.keys = ServerKeys({})  # a server without the key (a stand-in with the permit)
        real.start()
        with pytest.raises(NotGenuineServer, match="did not sign"):
            client = BlockingLicenceClient(servers=[real.address], trusted=trusted, timeout=5.0)
            client.request(*PRODUCT)
    finally:
        real.stop()


@pytest.mark.e2e
def test_atexit_releases_in_a_real_process(real: RealServer) -> None:
    """A program that exits holding a licence (no release call) gives it back at exit."""
    script = textwrap.dedent(f"""
        from hqnlsd.client import BlockingLicenceClient
        licence = BlockingLicenceClient(servers=["{real.address}"], timeout=5).request(
            "Test Publisher", "Widget", "1.0")
        print(licence.handle, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    handle = done.stdout.strip()
    assert handle
    assert real.holders() == []



class DroppingConnection:
    """A real `Connection` whose first UPDATE is lost with the connection (a cut cable)."""

    def __init__(self, inner: Any, log: dict[str, Any]) -> None:
        self.inner = inner
        self.log = log

    @property
    def peer_host(self) -> str:
        """The address connected to."""
        return str(self.inner.peer_host)

    @property
    def is_open(self) -> bool:
        """True while the real connection is up."""
        return bool(self.inner.is_open)

    def call(self, verb: str, /, **fields: Any) -> Deferred[Any]:
        """Send for real, except the first UPDATE: the connection drops, no answer."""
        self.log["verbs"].append(verb)
        if verb == "UPDATE" and not self.log["dropped"]:
            self.log["dropped"] = True
            self.inner.close()
            from twisted.internet.error import ConnectionLost

            failed: Deferred[Any] = Deferred()
            failed.errback(ConnectionLost("the connection dropped"))
            return failed
        answer: Deferred[Any] = self.inner.call(verb, **fields)
        return answer

    def close(self) -> None:
        """Close the real connection."""
        self.inner.close()


def test_a_reconnecting_client_keeps_its_token_and_handle(
    thread: ReactorThread, real: RealServer
) -> None:
    """The library re-sending its REQUEST after lost contact (a new connection, so a new
    source port; same user, host, pid and IP address) still gets its own handle with
    duplicate=1; the same token from another process is refused TOKEN_HELD (issue 12)."""
    from hqnlsd.client.connection import connect_tcp

    log: dict[str, Any] = {"verbs": [], "dropped": False, "ports": []}

    def connector(server: Any) -> Deferred[Any]:
        def wrap(connection: Any) -> DroppingConnection:
            log["ports"].append(connection.protocol.tcp_transport().getHost().port)
            return DroppingConnection(connection, log)

        return connect_tcp(thread.reactor, server, 5.0).addCallback(wrap)

    me = Process(user="jo", host="box", pid=99)
    client = twisted_client(thread, [real.address], process=me, connector=connector)
    events: list[str] = []

    async def take() -> Any:
        return await client.request(*PRODUCT, token="jo-token",
                                    on_lost=lambda lic, why: events.append(why))

    licence = run_async(thread, take)
    handle = licence.handle
    assert "duplicate" not in licence.grant
    thread.call(licence.update, WAIT)  # lost contact: REQUEST again on a new connection
    assert log["verbs"] == ["REQUEST", "UPDATE", "REQUEST"]
    assert len(log["ports"]) == 2 and log["ports"][0] != log["ports"][1]
    assert licence.held and licence.handle == handle and events == []
    assert licence.grant.get("duplicate") == "1"
    assert real.holders() == [handle]

    stranger = twisted_client(thread, [real.address],
                              process=Process(user="u2", host="h2", pid=666))

    async def steal() -> Any:
        return await stranger.request(*PRODUCT, token="jo-token")

    with pytest.raises(LicenceDenied) as caught:
        run_async(thread, steal)
    assert caught.value.status is Status.TOKEN_HELD
    assert handle not in str(caught.value)
    assert real.holders() == [handle]
    thread.call(licence.release, WAIT)
    assert real.holders() == []
