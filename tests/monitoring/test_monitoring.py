"""The Grafana dashboard and the Prometheus alerts of conf/ (issue 15).

- `promtool check rules` accepts conf/prometheus-alerts.yml, and `promtool test
  rules` runs tests/monitoring/alerts-test.yml: each alert fires on the series it
  is meant for and not on healthy ones. promtool comes from Debian's
  ``prometheus`` package (installed by .ci/run); without it these tests fail.
- conf/grafana-dashboard.json is a dashboard Grafana imports anywhere: a schema
  version, panels with targets, and every query on a ``datasource`` variable;
  every panel query is valid PromQL (promtool parses it, variables replaced).
- Every metric name the dashboard and the alerts use is one real daemons expose:
  a two-member server domain is started with a metrics listener on each member,
  a licence is granted and one refused, and both members are scraped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hqnlsd.metrics import PREFIX
from hqnlsd.status import Status
from tests.daemons import (
    DaemonHarness,
    domain_daemons,
    free_port,
    is_grant,
    is_status,
    loopback,
    product_permit,
    request_licence,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent.parent
ALERTS = REPO / "conf" / "prometheus-alerts.yml"
ALERT_TESTS = Path(__file__).resolve().parent / "alerts-test.yml"
DASHBOARD = REPO / "conf" / "grafana-dashboard.json"
PROMTOOL_TIMEOUT = 120.0
#: How long a pair of daemons may take to verify each other and elect a primary.
ELECTION_BOUND = 30.0
#: Alerts the issue asks for (and one more: a member's damaged domain state).
EXPECTED_ALERTS = {
    "HqnlsdDown",
    "HqnlsdProductAlmostFull",
    "HqnlsdDenialsRising",
    "HqnlsdDomainWithoutPrimary",
    "HqnlsdPeersDown",
    "HqnlsdJournalUnhealthy",
    "HqnlsdDomainStateDamaged",
}
NAME = re.compile(rf"\b{PREFIX}_[A-Za-z0-9_]+")


def promtool() -> str:
    """promtool's path; fails (never skips) when it is missing."""
    path = shutil.which("promtool")
    assert path, (
        "promtool is missing: install Debian's prometheus package "
        "(apt-get install -y prometheus; .ci/run does)"
    )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool with args from the repository root; bounded."""
    return subprocess.run(
        [promtool(), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of conf/prometheus-alerts.yml."""
    loaded = yaml.safe_load(ALERTS.read_text("utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    """conf/grafana-dashboard.json, parsed."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return loaded


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included (rows themselves not)."""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries() -> list[str]:
    """Every PromQL text of the dashboard: panel targets and variable queries."""
    queries = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def names_in(expressions: list[str]) -> set[str]:
    """The hqnlsd metric names PromQL expressions use (read loosely: every
    identifier that starts with the daemon's prefix)."""
    return {name for expression in expressions for name in NAME.findall(expression)}


# -- the rules ---------------------------------------------------------------------------


@pytest.mark.e2e  # runs promtool
def test_promtool_checks_the_rules() -> None:
    """`promtool check rules conf/prometheus-alerts.yml` passes, with every alert."""
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout, result.stdout
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS


@pytest.mark.e2e  # runs promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    """`promtool test rules`: every alert fires on its input and not on healthy series."""
    result = run_promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text("utf-8")))
    assert tested == EXPECTED_ALERTS


@pytest.mark.e2e  # runs promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests notice a wrong rule: with the 95 % threshold at 85 %, a product
    9 of 10 used fires where the tests say it must not."""
    conf = tmp_path / "conf"
    conf.mkdir()
    text = ALERTS.read_text("utf-8")
    assert "> 0.95" in text
    (conf / ALERTS.name).write_text(text.replace("> 0.95", "> 0.85"), "utf-8")
    tests = tmp_path / "tests" / "monitoring"
    tests.mkdir(parents=True)
    shutil.copy(ALERT_TESTS, tests / ALERT_TESTS.name)
    result = run_promtool("test", "rules", str(tests / ALERT_TESTS.name))
    assert result.returncode != 0
    assert "HqnlsdProductAlmostFull" in result.stdout + result.stderr


def test_denial_reasons_are_status_names() -> None:
    """Every reason the denial alert matches is a status the daemon counts denials under."""
    (rule,) = [r for r in alert_rules() if r["alert"] == "HqnlsdDenialsRising"]
    alternatives = re.findall(r'reason=~"([^"]+)"', rule["expr"])
    assert alternatives
    for alternative in alternatives:
        for reason in alternative.split("|"):
            assert reason in Status.__members__, reason
    # redirects and protocol errors are not refused licences
    assert not {"TRY_SERVER", "TRY_DOMAIN", "NEW_MASTER", "SYNTAX"} & set(
        alternatives[0].split("|")
    )


# -- the dashboard -------------------------------------------------------------------------


def test_dashboard_is_importable_grafana_json() -> None:
    """A schema version, a uid and title, panels with positions and targets, and every
    query on the ``datasource`` variable (so it imports into any Grafana)."""
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    on_variable = {"type": "prometheus", "uid": "${datasource}"}
    panels = list(dashboard_panels())
    assert len(panels) >= 10
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels if p not in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat", "bargauge", "state-timeline"}, panel
        assert panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == on_variable, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == on_variable, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == on_variable, variable["name"]
    # no data source of the author's own Grafana left behind
    text = DASHBOARD.read_text("utf-8")
    assert '"uid": "${datasource}"' in text
    assert not re.search(r'"uid":\s*"(?!\$\{datasource\}|hqnlsd-|-- Grafana --)', text)


def test_dashboard_shows_what_the_issue_asks() -> None:
    """Use per product against permitted, denials by reason, request latency, domain
    role and peers, failovers: each has a panel querying its series."""
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard_panels()}
    wanted = {
        "Use per product vs permitted": ("hqnlsd_licences_in_use", "hqnlsd_licences_permitted"),
        "Denials by reason": ("hqnlsd_denials_total", "by (reason)"),
        "REQUEST latency": ("hqnlsd_request_duration_seconds_bucket", "histogram_quantile"),
        "Role per member": ("hqnlsd_domain_role",),
        "Peers reached": ("hqnlsd_peers_up", "hqnlsd_domain_peers"),
        "Failovers": ("hqnlsd_failovers_total",),
    }
    for title, parts in wanted.items():
        for part in parts:
            assert part in by_title[title], (title, part)


#: What Grafana puts in place of the dashboard's variables, for checking the PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$job": ".*",
    "$instance": ".*",
    "$product": ".*",
}


@pytest.mark.e2e  # runs promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query, its variables replaced as Grafana would, parses: promtool
    checks them as the expressions of recording rules."""
    rules = []
    for n, panel in enumerate(dashboard_panels()):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, (panel["title"], expr)
            rules.append({"record": f"dashboard:panel{n}:{target['refId']}", "expr": expr})
    checked = tmp_path / "dashboard-queries.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


# -- against real daemons ----------------------------------------------------------------


def scrape(port: int, address: str) -> str:
    """GET /metrics of a daemon's metrics listener."""
    with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=20) as answer:
        body: bytes = answer.read()
    return body.decode("utf-8")


def exposed(text: str) -> tuple[set[str], set[str]]:
    """From a scrape: (names with at least one sample, names declared by a family).

    A declared family's names are its sample names: a counter's ``_total``, a
    histogram's ``_bucket``, ``_count`` and ``_sum``, a gauge's own name.
    """
    sampled: set[str] = set()
    declared: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family in text_string_to_metric_families(text):
        sampled.update(sample.name for sample in family.samples)
        declared.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return sampled, declared


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


@pytest.mark.e2e
def test_every_name_used_is_exposed_by_real_daemons(daemons: DaemonHarness) -> None:
    """Scrape both members of a running two-member domain (a grant and a denial
    made): every name an alert uses has samples, and every name the dashboard uses
    is exposed (labelled counters such as reclaims have no sample until the first
    event, but their family is there)."""
    widget = product_permit("Monitored", floating_count=1)
    ports = [free_port(loopback(n)) for n in (1, 2)]
    members = domain_daemons(daemons, 2, [widget])
    for member, port in zip(members, ports, strict=True):
        listen = f"tcp:{port}:interface={member.address}"
        member.extra_args = (*member.extra_args, "--metrics", listen)
    daemons.start_all(*members)

    def ask(token: str) -> Any:
        return request_licence(
            members[0], token, publisher="Test Publisher", product="Monitored", version="1.0"
        )

    wait_for("the primary grants", lambda: ask("first"), is_grant, ELECTION_BOUND)
    wait_for("a denial", lambda: ask("second"), is_status(Status.NOLICENCES), ELECTION_BOUND)
    alert_names = names_in([rule["expr"] for rule in alert_rules()])
    dashboard_names = names_in(dashboard_queries())
    assert {"hqnlsd_journal_healthy", "hqnlsd_domain_role", "hqnlsd_peers_up"} <= alert_names
    assert {"hqnlsd_request_duration_seconds_bucket", "hqnlsd_failovers_total"} <= dashboard_names
    # Both members reach each other and know their roles (a backup may be
    # verified a moment after the primary grants): scrape until they do, boundedly.
    deadline = time.monotonic() + ELECTION_BOUND
    while True:
        texts = [scrape(port, m.address) for m, port in zip(members, ports, strict=True)]
        sampled: set[str] = set()
        declared: set[str] = set()
        for text in texts:
            s, d = exposed(text)
            sampled |= s
            declared |= d
        roles = sorted(
            float(value)
            for text in texts
            for value in re.findall(r"\nhqnlsd_domain_role\{domain=.*\} (\S+)\n", text)
        )
        peered = roles == [1.0, 2.0] and all(
            re.search(r"\nhqnlsd_peers_up\{domain=.*\} 1\.0\n", t) for t in texts
        )
        if (peered and alert_names <= sampled) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alert_names - sampled, f"alerts use names no daemon exposes: {alert_names - sampled}"
    assert not dashboard_names - declared, (
        f"the dashboard uses names no daemon exposes: {dashboard_names - declared}"
    )
    # The new series have the values expected on both members: one peer of one,
    # reached; a healthy journal; one primary and one backup.
    for text in texts:
        assert re.search(r"\nhqnlsd_domain_peers\{domain=.*\} 1\.0\n", text), text
        assert re.search(r"\nhqnlsd_peers_up\{domain=.*\} 1\.0\n", text), text
        assert "\nhqnlsd_journal_healthy 1.0\n" in text
        assert "\nhqnlsd_journal_commit_failures_total 0.0\n" in text
    assert roles == [1.0, 2.0], roles


@pytest.mark.e2e  # runs promtool
def test_readme_scrape_configuration_is_valid(tmp_path: Path) -> None:
    """The prometheus.yml of the README's "Grafana and Prometheus" section passes
    `promtool check config`, with its rule file path pointed at conf/."""
    readme = (REPO / "README.md").read_text("utf-8")
    section = readme.split("\n## Grafana and Prometheus\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert "/etc/prometheus/hqnlsd-alerts.yml" in block
    config = tmp_path / "prometheus.yml"
    config.write_text(block.replace("/etc/prometheus/hqnlsd-alerts.yml", str(ALERTS)), "utf-8")
    result = run_promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout, result.stdout
