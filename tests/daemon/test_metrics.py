"""Tests of hqnlsd.metrics: the figures, the scrape-time licence collector, the listener.

The listener tests start the metrics service on 127.0.0.1 port 0 in the test's
(real) reactor and scrape it with a raw HTTP/1.0 client whose every wait is bounded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, error, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from hqnlsd.metrics import (
    VERBS,
    DomainPeers,
    DomainRole,
    JournalHealth,
    LicenceCount,
    Metrics,
    MetricsError,
    licence_counts,
    make_metrics_service,
    metrics_listen_description,
)
from hqnlsd.permits.errors import Condition
from hqnlsd.status import Status

WAIT_LIMIT = 10.0  # seconds any network wait of these tests may take


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The current value of one sample of metrics' own registry (None if absent)."""
    value: float | None = metrics.registry.get_sample_value(name, labels)
    return value


@dataclasses.dataclass
class FakeProduct:
    """A product's pools and use, shaped like licensing.results.ProductStatus."""

    publisher: str
    product: str
    version: str
    node_count: int
    floating_count: int
    locked_used: int
    floating_used: int


class TestCounters:
    """What each method of Metrics does to the figures."""

    def test_request_latency_by_verb(self) -> None:
        """Observations land in the verb's histogram, with count, sum and buckets."""
        m = Metrics(runtime=False)
        m.observe_request("REQUEST", 0.002)
        m.observe_request("request", 0.2)
        m.observe_request("PING", 0.0001)
        name = "hqnlsd_request_duration_seconds"
        assert sample(m, f"{name}_count", verb="REQUEST") == 2
        assert sample(m, f"{name}_sum", verb="REQUEST") == pytest.approx(0.202)
        assert sample(m, f"{name}_bucket", verb="REQUEST", le="0.0025") == 1
        assert sample(m, f"{name}_bucket", verb="REQUEST", le="0.25") == 2
        assert sample(m, f"{name}_count", verb="PING") == 1
        assert sample(m, f"{name}_count", verb="UPDATE") == 0

    def test_unknown_verbs_share_one_series(self) -> None:
        """A client cannot create series by sending made-up verbs: they count as OTHER."""
        m = Metrics(runtime=False)
        for verb in ("FROB", "x" * 50, "GET"):
            m.observe_request(verb, 0.001)
        assert sample(m, "hqnlsd_request_duration_seconds_count", verb="OTHER") == 3
        assert sample(m, "hqnlsd_request_duration_seconds_count", verb="FROB") is None

    def test_every_verb_and_denial_reason_exists_from_the_start(self) -> None:
        """Zero-valued series exist before anything happens, so rate() works at once."""
        m = Metrics(runtime=False)
        for verb in (*VERBS, "OTHER"):
            assert sample(m, "hqnlsd_request_duration_seconds_count", verb=verb) == 0
        for status in Status:
            assert sample(m, "hqnlsd_denials_total", reason=status.name) == 0

    def test_denials_by_status_name(self) -> None:
        """Each denial counts under its status name only."""
        m = Metrics(runtime=False)
        m.denied(Status.NOLICENCES)
        m.denied(Status.NOLICENCES)
        m.denied(Status.BADHANDLE)
        assert sample(m, "hqnlsd_denials_total", reason="NOLICENCES") == 2
        assert sample(m, "hqnlsd_denials_total", reason="BADHANDLE") == 1
        assert sample(m, "hqnlsd_denials_total", reason="NOACCESS") == 0

    def test_grants_releases_reclaims_and_permit_errors(self) -> None:
        """The plain counters count; reclaims by reason, permit errors by condition number."""
        m = Metrics(runtime=False)
        for _ in range(3):
            m.granted()
        m.released()
        m.reclaimed("crashout")
        m.reclaimed("crashout")
        m.reclaimed("timeout")
        m.permit_read_error(Condition.TRUNCATED)
        m.permit_read_error(103)
        assert sample(m, "hqnlsd_grants_total") == 3
        assert sample(m, "hqnlsd_releases_total") == 1
        assert sample(m, "hqnlsd_reclaims_total", reason="crashout") == 2
        assert sample(m, "hqnlsd_reclaims_total", reason="timeout") == 1
        assert sample(m, "hqnlsd_permit_read_errors_total", condition="105") == 1
        assert sample(m, "hqnlsd_permit_read_errors_total", condition="103") == 1

    def test_domain_figures_and_forgetting_a_domain(self) -> None:
        """Role, epoch and failovers per domain; forget_domain drops them all."""
        m = Metrics(runtime=False)
        a, b = "127.0.0.1 127.0.0.2 127.0.0.3", "127.0.0.4 127.0.0.5"
        m.set_domain_role(a, DomainRole.PRIMARY)
        m.set_domain_role(b, DomainRole.BACKUP)
        m.set_domain_epoch(a, 7)
        m.failover(a)
        m.failover(a)
        assert sample(m, "hqnlsd_domain_role", domain=a) == 2
        assert sample(m, "hqnlsd_domain_role", domain=b) == 1
        assert sample(m, "hqnlsd_domain_epoch", domain=a) == 7
        assert sample(m, "hqnlsd_failovers_total", domain=a) == 2
        m.set_domain_role(a, DomainRole.NONE)
        assert sample(m, "hqnlsd_domain_role", domain=a) == 0
        m.forget_domain(a)
        m.forget_domain("never seen")  # no error for an unknown domain
        for name in ("hqnlsd_domain_role", "hqnlsd_domain_epoch"):
            assert sample(m, name, domain=a) is None
        assert sample(m, "hqnlsd_failovers_total", domain=a) is None
        assert sample(m, "hqnlsd_domain_role", domain=b) == 1

    def test_registries_are_private(self) -> None:
        """Two Metrics never share a figure, and the global registry is never touched."""
        one, two = Metrics(runtime=False), Metrics()
        one.granted()
        assert sample(one, "hqnlsd_grants_total") == 1
        assert sample(two, "hqnlsd_grants_total") == 0
        assert REGISTRY.get_sample_value("hqnlsd_grants_total") is None

    def test_runtime_figures_are_optional(self) -> None:
        """process_* and python_* figures are there by default, and only then."""
        with_runtime, bare = Metrics(), Metrics(runtime=False)
        assert b"\npython_info{" in with_runtime.exposition()[0]
        assert b"python_info" not in bare.exposition()[0]


class TestScrapeTimeState:
    """Journal health and domain peers come from providers at scrape time, and only then."""

    def test_journal_health(self) -> None:
        """hqnlsd_journal_healthy is 1 or 0 and the commit failures a counter, as the
        provider says at each scrape; without a provider there are no samples."""
        m = Metrics(runtime=False)
        assert sample(m, "hqnlsd_journal_healthy") is None
        health = {"now": JournalHealth(healthy=True, commit_failures=0)}
        m.set_journal_provider(lambda: health["now"])
        assert sample(m, "hqnlsd_journal_healthy") == 1
        assert sample(m, "hqnlsd_journal_commit_failures_total") == 0
        health["now"] = JournalHealth(healthy=False, commit_failures=3)
        assert sample(m, "hqnlsd_journal_healthy") == 0
        assert sample(m, "hqnlsd_journal_commit_failures_total") == 3
        assert b"# TYPE hqnlsd_journal_commit_failures_total counter" in m.exposition()[0]

    def test_domain_peers_and_peers_up(self) -> None:
        """Per domain: the other members and how many of them this one reaches; a
        domain the provider no longer lists is gone from the next scrape."""
        m = Metrics(runtime=False)
        listed = [DomainPeers("D", peers=2, up=1), DomainPeers("E", peers=1, up=0)]
        m.set_peer_provider(lambda: listed)
        assert sample(m, "hqnlsd_domain_peers", domain="D") == 2
        assert sample(m, "hqnlsd_peers_up", domain="D") == 1
        assert sample(m, "hqnlsd_domain_peers", domain="E") == 1
        assert sample(m, "hqnlsd_peers_up", domain="E") == 0
        listed.pop()
        assert sample(m, "hqnlsd_domain_peers", domain="E") is None
        assert sample(m, "hqnlsd_peers_up", domain="E") is None

    def test_failing_providers_cost_only_their_figures(self) -> None:
        """A provider that raises is logged; the rest of the scrape is there."""

        def broken() -> Any:
            raise RuntimeError("not ready")

        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        try:
            m = Metrics(runtime=False)
            m.set_journal_provider(broken)
            m.set_peer_provider(broken)
            m.granted()
            text = m.exposition()[0].decode()
        finally:
            globalLogPublisher.removeObserver(observer)
        assert "hqnlsd_grants_total 1.0" in text
        assert "\nhqnlsd_journal_healthy " not in text
        assert "hqnlsd_peers_up{" not in text
        assert len([e for e in events if "log_failure" in e]) == 2

    def test_failovers_exist_at_zero_once_a_role_is_known(self) -> None:
        """A domain's failover counter is there from its first role, so increase()
        sees the first failover."""
        m = Metrics(runtime=False)
        m.set_domain_role("D", DomainRole.BACKUP)
        assert sample(m, "hqnlsd_failovers_total", domain="D") == 0


class TestLicenceCollector:
    """Licence figures come from the provider at scrape time, and only then."""

    def test_figures_are_read_at_each_scrape(self) -> None:
        """The provider is called once per scrape and its current answer is exported."""
        used = {"n": 1}
        calls = []

        def provider() -> Iterator[LicenceCount]:
            calls.append(1)
            yield LicenceCount("Harlequin", "LispWorks", "8.0", "floating", 5, used["n"])
            yield LicenceCount("Harlequin", "LispWorks", "8.0", "locked", 2, 0)

        m = Metrics(provider, runtime=False)
        assert calls == []  # nothing is asked before a scrape
        labels = {"publisher": "Harlequin", "product": "LispWorks", "version": "8.0"}
        text = m.exposition()[0].decode()
        assert len(calls) == 1
        families = {f.name: f for f in text_string_to_metric_families(text)}
        got = {
            (s.name, s.labels["pool"]): s.value
            for name in ("hqnlsd_licences_permitted", "hqnlsd_licences_in_use")
            for s in families[name].samples
            if {k: s.labels[k] for k in labels} == labels
        }
        assert got == {
            ("hqnlsd_licences_permitted", "floating"): 5,
            ("hqnlsd_licences_permitted", "locked"): 2,
            ("hqnlsd_licences_in_use", "floating"): 1,
            ("hqnlsd_licences_in_use", "locked"): 0,
        }
        used["n"] = 4
        assert sample(m, "hqnlsd_licences_in_use", pool="floating", **labels) == 4
        assert len(calls) == 2

    def test_provider_set_later(self) -> None:
        """Without a provider there are no licence samples; set_licence_provider adds them."""
        m = Metrics(runtime=False)
        labels = {"publisher": "P", "product": "Q", "version": "1", "pool": "floating"}
        assert sample(m, "hqnlsd_licences_permitted", **labels) is None
        m.set_licence_provider(lambda: [LicenceCount("P", "Q", "1", "floating", 3, 2)])
        assert sample(m, "hqnlsd_licences_permitted", **labels) == 3
        assert sample(m, "hqnlsd_licences_in_use", **labels) == 2

    def test_failing_provider_does_not_break_the_scrape(self) -> None:
        """A provider that raises costs the licence figures of that scrape only, and the
        failure is logged with its traceback."""

        def broken() -> list[LicenceCount]:
            raise RuntimeError("engine not ready")

        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        try:
            m = Metrics(broken, runtime=False)
            m.granted()
            text = m.exposition()[0].decode()
        finally:
            globalLogPublisher.removeObserver(observer)
        assert "hqnlsd_grants_total 1.0" in text
        assert "hqnlsd_licences_in_use{" not in text
        failures = [e["log_failure"] for e in events if "log_failure" in e]
        assert len(failures) == 1
        assert failures[0].check(RuntimeError)

    def test_licence_counts_from_product_status(self) -> None:
        """licence_counts gives both pools of every product, in order."""
        products = [
            FakeProduct("H", "LispWorks", "8.0", 2, 5, 1, 3),
            FakeProduct("H", "Other", "1.0", 0, 1, 0, 0),
        ]
        assert list(licence_counts(products)) == [
            LicenceCount("H", "LispWorks", "8.0", "floating", 5, 3),
            LicenceCount("H", "LispWorks", "8.0", "locked", 2, 1),
            LicenceCount("H", "Other", "1.0", "floating", 1, 0),
            LicenceCount("H", "Other", "1.0", "locked", 0, 0),
        ]


class TestExposition:
    """The body and content type a scraper gets."""

    def test_text_format_by_default(self) -> None:
        """Without an Accept header: the Prometheus text format 0.0.4."""
        m = Metrics(runtime=False)
        body, content_type = m.exposition()
        assert content_type.startswith("text/plain; version=0.0.4")
        assert b"# TYPE hqnlsd_grants_total counter" in body

    def test_openmetrics_on_request(self) -> None:
        """A scraper that asks for OpenMetrics gets it, ending with # EOF."""
        m = Metrics(runtime=False)
        body, content_type = m.exposition("application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")


class TestListenDescription:
    """Where the metrics listener listens."""

    @pytest.mark.parametrize(
        ("given", "used"),
        [
            ("9236", "tcp:9236:interface=127.0.0.1"),
            ("tcp:9236", "tcp:9236:interface=127.0.0.1"),
            ("tcp:9236:backlog=5", "tcp:9236:backlog=5:interface=127.0.0.1"),
            ("tcp6:9236", "tcp6:9236:interface=\\:\\:1"),
            ("tcp:9236:interface=0.0.0.0", "tcp:9236:interface=0.0.0.0"),
            ("TCP:9236:Interface=10.0.0.1", "TCP:9236:Interface=10.0.0.1"),
            ("unix:/run/hqnlsd/metrics.sock", "unix:/run/hqnlsd/metrics.sock"),
        ],
    )
    def test_loopback_unless_an_interface_is_named(self, given: str, used: str) -> None:
        """TCP without interface= is bound to loopback; a named interface is kept."""
        assert metrics_listen_description(given) == used

    @pytest.mark.parametrize(
        "bad", ["", "  ", "tcp", "tcp:", "tcp:9236:interface=", "udp:9236", "systemd:domain=INET"]
    )
    def test_refused_descriptions(self, bad: str) -> None:
        """Empty, portless, empty-interface and other endpoint types are refused."""
        with pytest.raises(MetricsError):
            metrics_listen_description(bad)

    def test_service_binds_loopback(self) -> None:
        """The built service asks the reactor for the port on 127.0.0.1 only."""
        reactor = MemoryReactor()
        svc = make_metrics_service("tcp:9236", Metrics(runtime=False), reactor)
        svc.privilegedStartService()
        svc.startService()
        assert len(reactor.tcpServers) == 1
        port, _factory, _backlog, interface = reactor.tcpServers[0]
        assert (port, interface) == (9236, "127.0.0.1")
        assert svc.name == "metrics"


def scrape_values(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text-format scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for s in family.samples
    }


class _HTTPClient(protocol.Protocol):
    """Sends one HTTP/1.0 request and collects everything until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        """Send the request; HTTP/1.0 makes the server close after the answer."""
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        """Keep the answer."""
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """The whole answer is in."""
        self.done.callback(self.data)


class TestScrapeOverHTTP(unittest.TestCase):
    """A real listener on 127.0.0.1 scraped over TCP."""

    timeout = 60

    def setUp(self) -> None:
        """Start a metrics service on 127.0.0.1, port 0, with a licence provider."""
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.in_use = 0
        self.metrics = Metrics(self.licences)
        self.service = make_metrics_service("tcp:0", self.metrics, self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        port = self.service.listening_port
        assert port is not None
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.assertEqual(address.host, "127.0.0.1")
        self.port: int = address.port

    def licences(self) -> list[LicenceCount]:
        """The licence figures the 'engine' has right now."""
        return [LicenceCount("Harlequin", "LispWorks", "8.0", "floating", 5, self.in_use)]

    def get(
        self, path: bytes, *headers: bytes
    ) -> defer.Deferred[tuple[int, dict[bytes, bytes], bytes]]:
        """GET path; fire with (status code, lower-cased headers, body); bounded."""
        request = b"GET " + path + b" HTTP/1.0\r\n" + b"".join(h + b"\r\n" for h in headers)
        client = _HTTPClient(request + b"\r\n")
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)
        connected = connectProtocol(endpoint, client)

        def answer(_: object) -> defer.Deferred[bytes]:
            return client.done

        def parse(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
            head, _, body = raw.partition(b"\r\n\r\n")
            status_line, *header_lines = head.split(b"\r\n")
            fields = dict(line.split(b": ", 1) for line in header_lines)
            return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body

        body: defer.Deferred[bytes] = connected.addCallback(answer)
        body.addTimeout(WAIT_LIMIT, self.reactor)
        parsed: defer.Deferred[tuple[int, dict[bytes, bytes], bytes]] = body.addCallback(parse)
        return parsed

    @defer.inlineCallbacks
    def test_scrape_shows_the_figures(self) -> Any:
        """After grants, denials, requests and a change of use, a scrape shows them all."""
        m = self.metrics
        m.granted()
        m.granted()
        m.released()
        m.denied(Status.NOLICENCES)
        m.observe_request("REQUEST", 0.003)
        m.set_domain_role("127.0.0.1", DomainRole.PRIMARY)
        self.in_use = 3
        code, headers, body = yield self.get(b"/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"text/plain; version=0.0.4"))
        values = scrape_values(body)
        product = (
            ("pool", "floating"),
            ("product", "LispWorks"),
            ("publisher", "Harlequin"),
            ("version", "8.0"),
        )
        self.assertEqual(values[("hqnlsd_grants_total", ())], 2)
        self.assertEqual(values[("hqnlsd_releases_total", ())], 1)
        self.assertEqual(values[("hqnlsd_denials_total", (("reason", "NOLICENCES"),))], 1)
        self.assertEqual(
            values[("hqnlsd_request_duration_seconds_count", (("verb", "REQUEST"),))], 1
        )
        self.assertEqual(values[("hqnlsd_domain_role", (("domain", "127.0.0.1"),))], 2)
        self.assertEqual(values[("hqnlsd_licences_permitted", product)], 5)
        self.assertEqual(values[("hqnlsd_licences_in_use", product)], 3)
        self.assertIn(("process_cpu_seconds_total", ()), values)
        # The next scrape sees the new use without anything being told.
        self.in_use = 1
        _, _, body = yield self.get(b"/metrics")
        self.assertEqual(scrape_values(body)[("hqnlsd_licences_in_use", product)], 1)

    @defer.inlineCallbacks
    def test_openmetrics_negotiation(self) -> Any:
        """An Accept header asking for OpenMetrics gets that format."""
        code, headers, body = yield self.get(
            b"/metrics", b"Accept: application/openmetrics-text; version=1.0.0"
        )
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    @defer.inlineCallbacks
    def test_only_metrics_is_served(self) -> Any:
        """Any other path is a 404."""
        for path in (b"/", b"/metricsx", b"/other"):
            code, _, _ = yield self.get(path)
            self.assertEqual(code, 404, path)

    def test_failed_bind_stops_start_up(self) -> None:
        """A listener on a port already in use raises at start instead of running deaf."""
        svc = make_metrics_service(f"tcp:{self.port}", Metrics(runtime=False), self.reactor)
        self.assertRaises(error.CannotListenError, svc.privilegedStartService)
        self.assertIsNone(svc.listening_port)
