"""End to end, issue 5: the client library survives failover in a real server domain.

Three real ``twistd -n hqnlsd`` daemons on 127.0.0.1-3 (hqnserver1..3) serve one
permit whose server domain is the three; the product has two floating licences.
All three listen for clients on the *same* port, as a site's servers do: a
``TRY_SERVER`` names an address only and the client keeps the port.

Two applications hold the two licences, one through each client API:

- the Twisted API (`LicenceClient` on a private reactor thread) with an explicit
  server list that starts at a backup, and a connector that records every
  exchange (server, verb, answer), so the test sees the redirect itself;
- the blocking API (`BlockingLicenceClient`) configured by ``HQNSERVERS``, also
  starting at a backup.

Then the primary is SIGKILLed while both hold their licences: the clients'
automatic UPDATE fails, the same-token re-request reaches the new primary and
both hold the *same* handles again, within a bound, without ``on_lost``. The old
primary restarts and takes the role back: the clients follow the redirect of the
demoted member and UPDATE on hqnserver1 again. Releasing leaves nothing held.

Nothing here calls ``update()``: every UPDATE and re-request is the library's
own, driven by its timer (`Retry.update_fraction` makes it send UPDATE every
1.2 s of the permit's one-minute period). Throughout, every live member's
``sinfo`` is sampled and must never count more licences held than the permit
allows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from hqnlsd.admin.client import AdminClient, AdminClientError
from hqnlsd.client.api import RETRY_STATUSES, HeldLicence, LicenceClient, Process, Retry
from hqnlsd.client.blocking import BlockingLicence, BlockingLicenceClient, ReactorThread
from hqnlsd.client.connection import Answer, Link, connect_tcp
from hqnlsd.client.servers import ServerAddress
from hqnlsd.permits.policy import Policy
from hqnlsd.protocols.replies import Err, FieldValue, Ok
from hqnlsd.status import Status
from tests.daemons import (
    Daemon,
    DaemonHarness,
    domain_daemons,
    free_port_on_all,
    loopback,
    product_permit,
)

pytestmark = pytest.mark.e2e

PUBLISHER = "Test Publisher"
PRODUCT = "Failover Widget"
VERSION = "1.0"
#: Floating licences of the permit: both held by the test's two clients.
LICENCES = 2
PRIMARY, SECOND, THIRD = loopback(1), loopback(2), loopback(3)
#: How long three fresh daemons may take to verify each other and elect hqnserver1.
ELECTION_BOUND = 40.0
#: After SIGKILL of the primary, how long until both clients hold again (the domain
#: promises a serving backup within 5 s, held on simulated time by
#: tests/domain/test_domain_node.py; the clients UPDATE every 1.2 s; a loaded
#: machine is slower).
FAILOVER_BOUND = 20.0
#: After the old primary restarts, how long until it is primary and both clients UPDATE there.
FAILBACK_BOUND = 20.0
#: Bound of every call into a reactor thread, and of every admin call (seconds).
WAIT = 20.0
#: Pause between two samples of the domain (each sample is a bounded admin call).
POLL = 0.1
#: The clients' timing: UPDATE at 2 % of the 60 s period (every 1.2 s), quick retries.
CLIENT_RETRY = Retry(
    attempts=6,
    first_delay=0.2,
    factor=2.0,
    max_delay=1.0,
    recover_interval=0.5,
    update_fraction=0.02,
)
#: Answers the library retries on the same server ("not yet"), as exchanges record them.
RETRIED = frozenset(f"ERR {status.name}" for status in RETRY_STATUSES)
#: The clients' connect and reply timeout (seconds).
CLIENT_TIMEOUT = 3.0


# -- the domain ---------------------------------------------------------------------


def make_domain(harness: DaemonHarness) -> list[Daemon]:
    """hqnserver1..3 (not started): one permit for the three, one client port for all."""
    widget = product_permit(
        PRODUCT,
        publisher=PUBLISHER,
        version=VERSION,
        policy=int(Policy.GRAB | Policy.UVIS),
        floating_count=LICENCES,
        update_minutes=1,  # the shortest period a permit can give
    )
    addresses = [PRIMARY, SECOND, THIRD]
    return domain_daemons(harness, 3, [widget], client_port=free_port_on_all(addresses))


def domain_info(daemon: Daemon) -> dict[str, Any] | None:
    """``sinfo``'s entry for the domain on ``daemon`` (None if it cannot answer now)."""
    if not daemon.running:
        return None
    try:
        client = AdminClient.unix(daemon.state_dir / "admin.sock", timeout=WAIT)
    except AdminClientError:
        return None  # not listening yet (starting) or gone
    try:
        answer = client.call("sinfo", {})
    except AdminClientError:
        return None
    finally:
        client.close()
    assert answer.get("ok"), answer
    domains = answer["result"]["domains"]
    assert len(domains) == 1, domains
    info: dict[str, Any] = domains[0]
    return info


class DomainWatch:
    """Samples every live member's ``sinfo``; fails at once if one counts too many held."""

    def __init__(self, members: Sequence[Daemon]) -> None:
        self.members = tuple(members)
        #: The most licences any member ever counted as held.
        self.most_held = 0
        self.samples = 0

    def sample(self) -> dict[str, dict[str, Any]]:
        """Each answering member's domain info, by address; checks the held count."""
        seen: dict[str, dict[str, Any]] = {}
        for daemon in self.members:
            info = domain_info(daemon)
            if info is None:
                continue
            held = int(info["held"])
            assert held <= LICENCES, (
                f"{daemon.name} counts {held} licences held; the permit allows {LICENCES}: {info}"
            )
            self.most_held = max(self.most_held, held)
            seen[daemon.address] = info
        self.samples += 1
        return seen

    def primaries(self) -> set[str]:
        """The addresses of the members that call themselves primary now."""
        return {address for address, info in self.sample().items() if info["role"] == "primary"}

    def settled_on_first(self) -> bool:
        """All three answer, and each sees hqnserver1 as primary of a view of three."""
        seen = self.sample()
        return len(seen) == len(self.members) and all(
            info["primary"] == PRIMARY and len(info["view"]) == len(self.members)
            for info in seen.values()
        )

    def all_hold(self, count: int) -> bool:
        """All three answer, and each counts ``count`` licences held."""
        seen = self.sample()
        return len(seen) == len(self.members) and all(
            info["held"] == count for info in seen.values()
        )

    def wait(self, what: str, done: Callable[[], bool], bound: float) -> float:
        """Sample the domain until ``done()`` (at most ``bound`` s); the seconds it took."""
        started = time.monotonic()
        while True:
            self.sample()
            if done():
                return time.monotonic() - started
            if time.monotonic() - started > bound:
                raise AssertionError(f"{what}: not within {bound} s; domain: {self.sample()}")
            time.sleep(POLL)


# -- the clients --------------------------------------------------------------------


class Exchanges:
    """What the Twisted client said to which server, and what it heard (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[tuple[str, str, str]] = []

    def add(self, host: str, verb: str, outcome: str) -> None:
        """Record one exchange (called in the reactor thread)."""
        with self._lock:
            self._log.append((host, verb, outcome))

    def all(self) -> list[tuple[str, str, str]]:
        """Every exchange so far, oldest first."""
        with self._lock:
            return list(self._log)

    def since(self, mark: int) -> list[tuple[str, str, str]]:
        """The exchanges after the first ``mark``."""
        return self.all()[mark:]


def outcome_of(answer: Answer) -> str:
    """``OK``, ``ERR <STATUS>`` or ``listing``."""
    if isinstance(answer, Ok):
        return "OK"
    if isinstance(answer, Err):
        return f"ERR {answer.status.name}"
    return "listing"


class RecordingLink:
    """A real connection that records each call and its answer (a `Link`)."""

    def __init__(self, link: Link, host: str, exchanges: Exchanges) -> None:
        self.link = link
        self.host = host
        self.exchanges = exchanges

    @property
    def peer_host(self) -> str:
        """The address connected to."""
        return self.link.peer_host

    @property
    def is_open(self) -> bool:
        """True while the connection is up."""
        return self.link.is_open

    def call(self, verb: str, /, **fields: FieldValue) -> Deferred[Answer]:
        """The real call; its answer (or failure) recorded."""

        def answered(answer: Answer) -> Answer:
            self.exchanges.add(self.host, verb, outcome_of(answer))
            return answer

        def failed(failure: Any) -> Any:
            self.exchanges.add(self.host, verb, f"failed: {type(failure.value).__name__}")
            return failure

        return self.link.call(verb, **fields).addCallbacks(answered, failed)

    def close(self) -> None:
        """Close the real connection."""
        self.link.close()


def recording_connector(
    reactor: Any, exchanges: Exchanges
) -> Callable[[ServerAddress], Deferred[Link]]:
    """A connector for `LicenceClient`: real TCP, and a record of every exchange."""

    def connect(server: ServerAddress) -> Deferred[Link]:
        def connected(link: Link) -> Link:
            return RecordingLink(link, server.host, exchanges)

        def refused(failure: Any) -> Any:
            exchanges.add(server.host, "connect", f"failed: {type(failure.value).__name__}")
            return failure

        connecting: Deferred[Any] = connect_tcp(reactor, server, CLIENT_TIMEOUT)
        return connecting.addCallbacks(connected, refused)

    return connect


class Events:
    """``on_lost`` / ``on_regained`` calls of both clients (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[str] = []

    def lost(self, who: str) -> Callable[[Any, str], None]:
        """An ``on_lost`` callback for ``who``."""

        def record(_: Any, reason: str) -> None:
            with self._lock:
                self.calls.append(f"{who} lost: {reason}")

        return record

    def regained(self, who: str) -> Callable[[Any], None]:
        """An ``on_regained`` callback for ``who``."""

        def record(_: Any) -> None:
            with self._lock:
                self.calls.append(f"{who} regained")

        return record


def held_at(licence: HeldLicence | BlockingLicence, address: str, handle: str) -> bool:
    """The licence is held, with ``handle``, at the server on ``address``."""
    server = licence.server
    return (
        licence.held and licence.handle == handle and server is not None and server.host == address
    )


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as daemons:
        yield daemons


@pytest.fixture
def reactor_thread() -> Iterator[ReactorThread]:
    """A private reactor thread for the Twisted-API client (stopped at the end)."""
    running = ReactorThread()
    yield running
    running.stop()


def test_clients_follow_redirect_failover_and_failback(
    harness: DaemonHarness, reactor_thread: ReactorThread
) -> None:
    """Both APIs: redirected from a backup to the primary; after SIGKILL of the primary
    they hold the same handles at the new primary without on_lost; after the old
    primary's restart they UPDATE there; never more held than the permit allows;
    nothing held after release."""
    first, second, third = make_domain(harness)
    port = first.port
    watch = DomainWatch([first, second, third])
    harness.start_all(first, second, third, timeout=ELECTION_BOUND)
    watch.wait("hqnserver1 is primary of a view of three", watch.settled_on_first, ELECTION_BOUND)
    events = Events()

    # (1) Each client starts at a backup and is redirected (TRY_SERVER) to the primary.
    exchanges = Exchanges()
    twisted_client = LicenceClient(
        reactor_thread.reactor,
        servers=[SECOND, THIRD, PRIMARY],
        port=port,
        timeout=CLIENT_TIMEOUT,
        retry=CLIENT_RETRY,
        process=Process(user="twisted-app", host="clienthost", pid=1001),
        connector=recording_connector(reactor_thread.reactor, exchanges),
    )
    assert twisted_client.servers[0] == ServerAddress(SECOND, port)
    held: HeldLicence = reactor_thread.call(
        lambda: twisted_client.request(
            PUBLISHER,
            PRODUCT,
            VERSION,
            on_lost=events.lost("twisted"),
            on_regained=events.regained("twisted"),
        ),
        WAIT,
    )
    # hqnserver2 redirects; hqnserver1 grants (after "not yet" answers the library
    # retries, if its view of three is still settling).
    path = exchanges.all()
    assert path[0] == (SECOND, "REQUEST", "ERR TRY_SERVER"), path
    assert path[-1] == (PRIMARY, "REQUEST", "OK"), path
    assert all(host == PRIMARY and outcome in RETRIED for host, _, outcome in path[1:-1]), path
    print("Twisted client's first REQUEST:", path)
    twisted_handle = held.handle
    assert held_at(held, PRIMARY, twisted_handle) and twisted_handle

    blocking_client = BlockingLicenceClient(
        environ={"HQNSERVERS": f"{THIRD} {SECOND} {PRIMARY}"},
        port=port,
        timeout=CLIENT_TIMEOUT,
        retry=CLIENT_RETRY,
        process=Process(user="blocking-app", host="clienthost", pid=1002),
    )
    assert blocking_client.servers[0] == ServerAddress(THIRD, port)
    with blocking_client.request(
        PUBLISHER,
        PRODUCT,
        VERSION,
        on_lost=events.lost("blocking"),
        on_regained=events.regained("blocking"),
    ) as licence:  # released when the block is left
        try:
            follow_the_domain(first, watch, exchanges, events, held, licence)
        finally:
            reactor_thread.call(held.release, WAIT)
    assert licence.state == "released" and held.state == "released"
    assert exchanges.all()[-1] == (PRIMARY, "RELEASE", "OK"), exchanges.all()[-3:]
    watch.wait(
        "no member counts a licence held",
        lambda: watch.all_hold(0),
        ELECTION_BOUND,
    )
    assert events.calls == [], events.calls
    assert watch.most_held == LICENCES
    print(f"{watch.samples} samples of the domain; at most {watch.most_held} held")


def follow_the_domain(
    first: Daemon,
    watch: DomainWatch,
    exchanges: Exchanges,
    events: Events,
    held: HeldLicence,
    licence: BlockingLicence,
) -> None:
    """Steps 2 and 3 with both licences held: SIGKILL of hqnserver1, then its restart."""
    twisted_handle = held.handle
    blocking_handle = licence.handle
    # hqnserver3 answers and is first in HQNSERVERS: only its redirect leads to 1.
    assert held_at(licence, PRIMARY, blocking_handle) and blocking_handle
    assert blocking_handle != twisted_handle
    assert licence.period == 60.0
    watch.wait(
        "every member counts both licences",
        lambda: watch.all_hold(LICENCES),
        ELECTION_BOUND,
    )
    # The automatic UPDATE runs (every 1.2 s) at the primary.
    mark = len(exchanges.all())
    watch.wait(
        "the Twisted client UPDATEs at hqnserver1",
        lambda: (PRIMARY, "UPDATE", "OK") in exchanges.since(mark),
        5.0,
    )

    # (2) SIGKILL the primary while both hold their licences.
    mark = len(exchanges.all())
    first.kill()
    took = watch.wait(
        "both clients hold the same handles at a new primary",
        lambda: (
            len(primaries := watch.primaries()) == 1
            and (new := next(iter(primaries))) != PRIMARY
            and held_at(held, new, twisted_handle)
            and held_at(licence, new, blocking_handle)
        ),
        FAILOVER_BOUND,
    )
    new_primary = next(iter(watch.primaries()))
    print(f"failover: both clients held at {new_primary} {took:.2f} s after SIGKILL")
    assert events.calls == [], events.calls
    after_kill = exchanges.since(mark)
    print("Twisted client after the kill:", after_kill)
    # It re-requested with its token at the new primary and got its own handle back.
    assert (new_primary, "REQUEST", "OK") in after_kill, after_kill
    assert watch.sample()[new_primary]["held"] == LICENCES
    # Those two are all there is: a third application is refused, not granted a third.
    member = next(daemon for daemon in watch.members if daemon.address == new_primary)
    with member.client() as raw:
        third = raw.call(
            "REQUEST",
            publisher=PUBLISHER,
            product=PRODUCT,
            version=VERSION,
            user="third-app",
            host="clienthost",
            pid=1003,
            client="third-app",
        )
    assert isinstance(third, Err) and third.status is Status.NOLICENCES, third
    # Its UPDATEs now go to the new primary.
    mark = len(exchanges.all())
    watch.wait(
        "the Twisted client UPDATEs at the new primary",
        lambda: (new_primary, "UPDATE", "OK") in exchanges.since(mark),
        5.0,
    )
    assert all(host == new_primary for host, _, _ in exchanges.since(mark))

    # (3) Failback: hqnserver1 restarts, takes the role back, the clients follow.
    mark = len(exchanges.all())
    first.start_and_wait()
    took = watch.wait(
        "hqnserver1 is primary again and both clients hold their handles there",
        lambda: (
            watch.primaries() == {PRIMARY}
            and held_at(held, PRIMARY, twisted_handle)
            and held_at(licence, PRIMARY, blocking_handle)
        ),
        FAILBACK_BOUND,
    )
    print(f"failback: both clients held at {PRIMARY} {took:.2f} s after the restart")
    after_restart = exchanges.since(mark)
    print("Twisted client after the restart:", after_restart)
    assert events.calls == [], events.calls
    mark = len(exchanges.all())
    watch.wait(
        "the Twisted client UPDATEs at hqnserver1 again",
        lambda: (PRIMARY, "UPDATE", "OK") in exchanges.since(mark),
        5.0,
    )
    watch.wait(
        "every member counts both licences again",
        lambda: watch.all_hold(LICENCES),
        ELECTION_BOUND,
    )
