"""Prometheus metrics: what the daemon counts, and the loopback listener serving them.

`Metrics` owns its own `CollectorRegistry` (never prometheus_client's global one),
so tests and several daemons in one process never share a figure. The core calls
its small methods on events it already handles (a grant, a denial, a failover...);
nothing on the hot path does more than bump a counter.

Licence totals and use, the journal's health and each domain's peers are not
book-kept here at all: *callback collectors* ask provider functions for the current
figures when (and only when) somebody scrapes, so the figures can never drift from
the state they describe.

Metric names (all prefixed ``hqnlsd_``):

=======================================  =========  ===================================
name                                     type       labels
=======================================  =========  ===================================
``request_duration_seconds``             histogram  ``verb`` (REQUEST, UPDATE, ..., OTHER)
``denials_total``                        counter    ``reason`` (a status name)
``grants_total``                         counter
``releases_total``                       counter
``reclaims_total``                       counter    ``reason`` (crashout, timeout, ...)
``permit_read_errors_total``             counter    ``condition`` (100 .. 118)
``domain_role``                          gauge      ``domain`` (0 none, 1 backup, 2 primary)
``domain_epoch``                         gauge      ``domain``
``peers_up``                             gauge      ``domain`` (other members reached)
``domain_peers``                         gauge      ``domain`` (other members in all)
``domain_damaged``                       gauge      ``domain`` (1: stored state unusable)
``failovers_total``                      counter    ``domain``
``licences_permitted``                   gauge      ``publisher product version pool``
``licences_in_use``                      gauge      ``publisher product version pool``
``journal_healthy``                      gauge      (1; 0 from a failed commit until
                                                    its events are written)
``journal_commit_failures_total``        counter
``connections_open``                     gauge      ``listener`` (client, admin_tls, ...)
``connection_limit``                     gauge      ``listener``
``connections_refused_total``            counter    ``listener reason`` (per_source, global)
``connections_timed_out_total``          counter    ``listener reason`` (idle, handshake)
=======================================  =========  ===================================

``pool`` is ``floating`` or ``locked``. ``domain`` is whatever string the caller
names a domain with (its member addresses, as in the ``domain="..."`` of a
redirect). The usual ``process_*`` and ``python_*`` figures are included too.

`make_metrics_service` serves ``/metrics`` with ``twisted.web`` on a strports
listener that is bound to the loopback interface unless the description names
one; a failed bind stops the daemon's start-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.application.service import MultiService
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.web import http, pages
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from hqnlsd.listen import loopback_unless_named
from hqnlsd.listeners import Listener
from hqnlsd.status import Status

PREFIX = "hqnlsd"
"""Prefix of every hqnlsd metric name."""

VERBS = ("REQUEST", "UPDATE", "RELEASE", "QUERY", "USERS", "MESSAGE", "PING", "HELP", "QUIT")
"""Verbs of the client protocol with their own latency series; any other is OTHER."""

OTHER_VERB = "OTHER"
"""Label for verbs that are not in `VERBS` (so a client cannot add series at will)."""

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Histogram buckets (seconds): local answers take well under a millisecond, answers
that wait for domain replication a few milliseconds, a failing quorum seconds."""

_log = Logger(namespace="hqnlsd.metrics")


class MetricsError(ValueError):
    """The metrics listener cannot be configured; the message says why."""


class DomainRole(enum.IntEnum):
    """Value of the ``hqnlsd_domain_role`` gauge."""

    NONE = 0
    BACKUP = 1
    PRIMARY = 2


@dataclasses.dataclass(frozen=True, slots=True)
class LicenceCount:
    """One pool of one served product: how many licences it has and how many are held."""

    publisher: str
    product: str
    version: str
    pool: str  # "floating" or "locked"
    permitted: int
    in_use: int


LicenceProvider = Callable[[], Iterable[LicenceCount]]
"""A function the licence collector calls at scrape time."""


class ProductUse(Protocol):
    """What `licence_counts` needs of a product (`licensing.results.ProductStatus` has it)."""

    @property
    def publisher(self) -> str:
        """The publisher's name."""

    @property
    def product(self) -> str:
        """The product's name."""

    @property
    def version(self) -> str:
        """The product's version."""

    @property
    def node_count(self) -> int:
        """Size of the node-locked pool."""

    @property
    def floating_count(self) -> int:
        """Size of the floating pool."""

    @property
    def locked_used(self) -> int:
        """Node-locked licences held."""

    @property
    def floating_used(self) -> int:
        """Floating licences held."""


def licence_counts(products: Iterable[ProductUse]) -> Iterator[LicenceCount]:
    """Both pools of every product, e.g. ``licence_counts(engine.status())``."""
    for p in products:
        yield LicenceCount(
            p.publisher, p.product, p.version, "floating", p.floating_count, p.floating_used
        )
        yield LicenceCount(p.publisher, p.product, p.version, "locked", p.node_count, p.locked_used)


@dataclasses.dataclass(frozen=True, slots=True)
class JournalHealth:
    """The journal's health (`hqnlsd.persistence.store.Journal`) at one scrape."""

    healthy: bool
    commit_failures: int


@dataclasses.dataclass(frozen=True, slots=True)
class DomainPeers:
    """One domain's other members and how many of them this member reaches."""

    domain: str
    peers: int
    up: int


class _ScrapeTimeCollector:
    """Asks a provider for figures at scrape time (nothing kept in between).

    Subclasses name their families (`_families`) and fill them from what the
    provider returned (`_fill`). A failing provider is logged and its families go
    out without samples; the rest of the scrape is unharmed.
    """

    what = "figures"

    def __init__(self, provider: Callable[[], Any] | None) -> None:
        self.provider = provider

    def _families(self) -> tuple[Metric, ...]:
        raise NotImplementedError

    def _fill(self, families: tuple[Any, ...], figures: Any) -> None:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        """The families (without samples), so the registry can check names."""
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        """The current figures; a failing provider is logged and yields none."""
        families = self._families()
        if self.provider is not None:
            try:
                self._fill(families, self.provider())
            except Exception:
                _log.failure("the {what} for a metrics scrape could not be read", what=self.what)
                families = self._families()
        yield from families


class _LicenceCollector(_ScrapeTimeCollector):
    """Licences permitted and in use, per product and pool."""

    what = "licence figures"
    _LABELS = ("publisher", "product", "version", "pool")

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        permitted = GaugeMetricFamily(
            f"{PREFIX}_licences_permitted",
            "Licences the served permit holds, per product and pool (floating|locked).",
            labels=self._LABELS,
        )
        in_use = GaugeMetricFamily(
            f"{PREFIX}_licences_in_use",
            "Licences held by clients, per product and pool (floating|locked).",
            labels=self._LABELS,
        )
        return permitted, in_use

    def _fill(self, families: tuple[Any, ...], figures: Iterable[LicenceCount]) -> None:
        permitted, in_use = families
        for c in list(figures):
            labels = [c.publisher, c.product, c.version, c.pool]
            permitted.add_metric(labels, c.permitted)
            in_use.add_metric(labels, c.in_use)


class _JournalCollector(_ScrapeTimeCollector):
    """The journal's health and its failed commits."""

    what = "journal figures"

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        healthy = GaugeMetricFamily(
            f"{PREFIX}_journal_healthy",
            "1 while the licence state journal commits; 0 from a failed commit until "
            "its events have been written.",
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_journal_commit_failures",
            "Group commits of the licence state journal that failed (each is retried).",
        )
        return healthy, failures

    def _fill(self, families: tuple[Any, ...], figures: JournalHealth) -> None:
        healthy, failures = families
        healthy.add_metric([], 1 if figures.healthy else 0)
        failures.add_metric([], figures.commit_failures)


class _PeerCollector(_ScrapeTimeCollector):
    """Each domain's other members, and those this member reaches."""

    what = "domain peer figures"

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        peers = GaugeMetricFamily(
            f"{PREFIX}_domain_peers",
            "Other members of a server domain (hqnlsd_peers_up counts those reached).",
            labels=["domain"],
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_peers_up",
            "Other members of a server domain this daemon's links reach.",
            labels=["domain"],
        )
        return peers, up

    def _fill(self, families: tuple[Any, ...], figures: Iterable[DomainPeers]) -> None:
        peers, up = families
        for d in list(figures):
            peers.add_metric([d.domain], d.peers)
            up.add_metric([d.domain], d.up)


class Metrics:
    """Every figure the daemon exports, in a registry of its own."""

    def __init__(
        self,
        licence_provider: LicenceProvider | None = None,
        *,
        runtime: bool = True,
    ) -> None:
        """licence_provider is asked for licence figures at each scrape (it may be set
        later with `set_licence_provider`); runtime adds the process_* and python_*
        figures."""
        self.registry = CollectorRegistry()
        r = self.registry
        self._latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a client request's arrival to its answer, by verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._denials = Counter(
            f"{PREFIX}_denials",
            "Requests answered with an error, by status name.",
            ["reason"],
            registry=r,
        )
        self._grants = Counter(f"{PREFIX}_grants", "Licences granted.", registry=r)
        self._releases = Counter(f"{PREFIX}_releases", "Licences released by holders.", registry=r)
        self._reclaims = Counter(
            f"{PREFIX}_reclaims",
            "Licences taken back from their holders, by reason (crashout, timeout, ...).",
            ["reason"],
            registry=r,
        )
        self._permit_errors = Counter(
            f"{PREFIX}_permit_read_errors",
            "Permit files whose reading stopped at an error, by numbered condition.",
            ["condition"],
            registry=r,
        )
        self._role = Gauge(
            f"{PREFIX}_domain_role",
            "This daemon's role in a server domain: 0 none, 1 backup, 2 primary.",
            ["domain"],
            registry=r,
        )
        self._epoch = Gauge(
            f"{PREFIX}_domain_epoch",
            "Epoch of the domain's current view.",
            ["domain"],
            registry=r,
        )
        self._damaged = Gauge(
            f"{PREFIX}_domain_damaged",
            "1 while this daemon's stored state for a server domain cannot be used "
            "(it takes no part in the domain until recovered), else 0.",
            ["domain"],
            registry=r,
        )
        self._failovers = Counter(
            f"{PREFIX}_failovers",
            "Primary role changes seen in a domain.",
            ["domain"],
            registry=r,
        )
        self._connections_open = Gauge(
            f"{PREFIX}_connections_open",
            "Connections open on a listener (client, admin_tls, peer, metrics, manhole).",
            ["listener"],
            registry=r,
        )
        self._connection_limit = Gauge(
            f"{PREFIX}_connection_limit",
            "Most connections a listener holds at once; more are refused.",
            ["listener"],
            registry=r,
        )
        self._connections_refused = Counter(
            f"{PREFIX}_connections_refused",
            "Connections closed at once because a cap was reached, by reason "
            "(per_source: one address's cap; global: the listener's cap).",
            ["listener", "reason"],
            registry=r,
        )
        self._connections_timed_out = Counter(
            f"{PREFIX}_connections_timed_out",
            "Connections closed by a timeout, by reason (idle: nothing received for too "
            "long; handshake: TLS handshake or SSH login not done in time).",
            ["listener", "reason"],
            registry=r,
        )
        self._licences = _LicenceCollector(licence_provider)
        self._journal = _JournalCollector(None)
        self._peers = _PeerCollector(None)
        for collector in (self._licences, self._journal, self._peers):
            r.register(collector)
        if runtime:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        # Every series a client can make appear exists from the start at zero, so
        # rate() and absent() behave from the first scrape; the children are kept so
        # the hot path does not look its labels up each time.
        self._latency_of = {verb: self._latency.labels(verb) for verb in (*VERBS, OTHER_VERB)}
        self._other_latency = self._latency_of[OTHER_VERB]
        self._denials_of = {status: self._denials.labels(status.name) for status in Status}

    # -- the hot path ------------------------------------------------------------

    def observe_request(self, verb: str, seconds: float) -> None:
        """A client request took seconds to answer (verbs not in VERBS count as OTHER)."""
        self._latency_of.get(verb.upper(), self._other_latency).observe(seconds)

    def denied(self, status: Status) -> None:
        """A request was answered with an error."""
        self._denials_of[status].inc()

    def granted(self) -> None:
        """A licence was granted."""
        self._grants.inc()

    def released(self) -> None:
        """A holder released its licence."""
        self._releases.inc()

    def reclaimed(self, reason: str) -> None:
        """A licence was taken back (reason: a `licensing.events.Reason` value)."""
        self._reclaims.labels(str(reason)).inc()

    def permit_read_error(self, condition: int) -> None:
        """Reading a permit file stopped at a numbered condition (100 .. 118)."""
        self._permit_errors.labels(str(int(condition))).inc()

    # -- domains -------------------------------------------------------------------

    def set_domain_role(self, domain: str, role: DomainRole) -> None:
        """This daemon's role in domain is now role (its failover count exists from
        then on, at zero, so that increase() sees the first failover)."""
        self._role.labels(domain).set(int(role))
        self._failovers.labels(domain)

    def set_domain_epoch(self, domain: str, epoch: int) -> None:
        """The domain's current view has this epoch."""
        self._epoch.labels(domain).set(epoch)

    def set_domain_damaged(self, domain: str, reason: str | None) -> None:
        """This daemon's stored state for domain is damaged (a reason) or fine (None)."""
        self._damaged.labels(domain).set(0 if reason is None else 1)

    def failover(self, domain: str) -> None:
        """The primary role moved to another member of domain."""
        self._failovers.labels(domain).inc()

    def forget_domain(self, domain: str) -> None:
        """Drop every series of a domain no longer served (after a permit re-read)."""
        for metric in (self._role, self._epoch, self._failovers, self._damaged):
            with contextlib.suppress(KeyError):
                metric.remove(domain)

    # -- connections (`hqnlsd.limits.ConnectionEvents`) -------------------------------

    def connection_opened(self, listener: str) -> None:
        """A connection was accepted on listener."""
        self._connections_open.labels(listener).inc()

    def connection_closed(self, listener: str) -> None:
        """An accepted connection of listener is gone."""
        self._connections_open.labels(listener).dec()

    def connection_refused(self, listener: str, reason: str) -> None:
        """A connection was refused at once (per_source or global cap)."""
        self._connections_refused.labels(listener, reason).inc()

    def connection_timed_out(self, listener: str, reason: str) -> None:
        """A connection was closed by a timeout (idle or handshake)."""
        self._connections_timed_out.labels(listener, reason).inc()

    def set_connection_limit(self, listener: str, limit: int) -> None:
        """listener holds at most limit connections at once."""
        self._connection_limit.labels(listener).set(limit)
        self._connections_open.labels(listener)  # the series exists from the start

    # -- licences and output -------------------------------------------------------

    def set_licence_provider(self, provider: LicenceProvider | None) -> None:
        """Ask provider for the licence figures at each scrape from now on."""
        self._licences.provider = provider

    def set_journal_provider(self, provider: Callable[[], JournalHealth] | None) -> None:
        """Ask provider for the journal's health at each scrape from now on."""
        self._journal.provider = provider

    def set_peer_provider(self, provider: Callable[[], Iterable[DomainPeers]] | None) -> None:
        """Ask provider for each domain's peers (all, and reached) at each scrape."""
        self._peers.provider = provider

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, chosen from an HTTP Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


# -- the listener -------------------------------------------------------------------


class MetricsResource(Resource):
    """``/metrics``: the registry in the Prometheus text (or OpenMetrics) format."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        """Encode the current figures for the format the scraper accepts."""
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.exposition(
            accept.decode("latin-1") if accept is not None else None
        )
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class _QuietSite(Site):
    """A Site that writes no access log line per scrape (one every few seconds)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        """Scrapes are not logged."""


class _Root(Resource):
    """The site's root: a plain 404 for everything but its children."""

    def getChild(self, path: bytes, request: http.Request) -> Resource:
        """Unknown paths (and the root itself) are not found."""
        return cast(Resource, pages.notFound())

    def render_GET(self, request: http.Request) -> bytes:
        """The root itself is not found either."""
        return cast(bytes, pages.notFound().render(request))


def metrics_site(metrics: Metrics) -> Site:
    """The web site: ``/metrics`` and nothing else (anything else is a 404)."""
    root = _Root()
    root.putChild(b"metrics", MetricsResource(metrics))
    return _QuietSite(root, timeout=60)


def metrics_listen_description(description: str) -> str:
    """The strports description the metrics listener really uses.

    A bare port number means TCP; a ``tcp``, ``tcp6`` or ``ssl`` description
    without ``interface=`` is bound to the loopback interface; ``unix`` is kept.
    Other endpoint types raise MetricsError, as does an empty ``interface=``
    (listening on every interface must be asked for: ``interface=0.0.0.0``).
    """
    try:
        return loopback_unless_named(
            description, what="metrics", kinds=frozenset({"tcp", "tcp6", "ssl", "unix"})
        )
    except ValueError as error:
        raise MetricsError(str(error)) from None


class MetricsService(MultiService):
    """The metrics web listener (an IService); ``listening_port`` once bound."""

    def __init__(self, description: str, metrics: Metrics, reactor: Any) -> None:
        """Prepare a listener on description (already made loopback-safe)."""
        super().__init__()
        self.setName("metrics")
        self.description = description
        self.metrics = metrics
        self.listener = Listener.from_description(
            reactor, description, cast(IProtocolFactory, metrics_site(metrics))
        )
        self.listener.setServiceParent(self)

    @property
    def listening_port(self) -> IListeningPort | None:
        """The bound port (tests bind port 0 and read it here); None unless listening."""
        return self.listener.port

    def startService(self) -> None:
        """Start listening (if privilegedStartService has not bound already)."""
        super().startService()
        _log.info("metrics listening on {description} (/metrics)", description=self.description)


def make_metrics_service(description: str, metrics: Metrics, reactor: Any) -> MetricsService:
    """Build the service serving ``/metrics`` (not started).

    description is a strports description (``tcp:9236`` or ``9236`` means
    127.0.0.1 port 9236; ``tcp:9236:interface=0.0.0.0`` listens everywhere).
    Raises MetricsError for a description that is not allowed; a failed bind
    raises at start (privilegedStartService or startService) and so stops twistd.
    """
    return MetricsService(metrics_listen_description(description), metrics, reactor)
