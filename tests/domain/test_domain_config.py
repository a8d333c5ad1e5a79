"""Server-domain options of `twistd hqnlsd` and how the service tree uses them.

No processes here: the options parser, the config file and `build_service` are
driven directly (with a `MemoryReactorClock`, so nothing listens).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from hqnlsd.domain.timing import DomainTimers
from hqnlsd.service import HqnlsdService, StartupError
from hqnlsd.tap import Options
from hqnlsd.tools.ca import certificate_pem, create_ca, issue_member, write_issued

NOW = datetime.datetime.now(datetime.UTC)


def base_args(tmp_path: Path) -> list[str]:
    """The options every test needs: hosts file, state and publisher-key directories."""
    (tmp_path / "hosts").write_text("127.0.0.1 localhost hqnserver1\n", "utf-8")
    (tmp_path / "keys").mkdir(exist_ok=True)
    return [
        "--hosts",
        str(tmp_path / "hosts"),
        "--state-dir",
        str(tmp_path / "state"),
        "--publisher-keys",
        str(tmp_path / "keys"),
    ]


def tls_args(tmp_path: Path, *, other_ca: bool = False) -> list[str]:
    """--domain-ca/--domain-cert/--domain-key for 127.0.0.1 (issued by another CA if told)."""
    ca = create_ca(now=NOW, days=30)
    (tmp_path / "ca.pem").write_bytes(certificate_pem(ca.certificate))
    issuer = create_ca(now=NOW, days=30) if other_ca else ca
    key, cert = write_issued(issue_member(issuer, "127.0.0.1", now=NOW), tmp_path / "member")
    return [
        "--domain-ca",
        str(tmp_path / "ca.pem"),
        "--domain-cert",
        str(cert),
        "--domain-key",
        str(key),
    ]


def parse(args: list[str]) -> Options:
    """Parse ``args`` as twistd would."""
    options = Options()
    options.parseOptions(args)
    return options


def test_defaults_without_domain_tls(tmp_path: Path) -> None:
    """No --domain-ca: peer port 1237, source check on, default timers, no runtime."""
    config = parse(base_args(tmp_path)).config
    assert (config.peer_port, config.peer_source_check, config.domain_timers) == (1237, True, None)
    service = HqnlsdService(config, MemoryReactorClock())
    assert service.domains is None
    assert service.manhole_namespace()["domains"] is None


def test_command_line_options(tmp_path: Path) -> None:
    """--peer-port and --no-peer-source-check reach the config and the runtime."""
    args = [*base_args(tmp_path), *tls_args(tmp_path), "--peer-port", "4321"]
    config = parse([*args, "--no-peer-source-check"]).config
    assert (config.peer_port, config.peer_source_check) == (4321, False)
    service = HqnlsdService(config, MemoryReactorClock())
    assert service.domains is not None
    assert service.domains.network.port_of(config.address) == 4321
    assert service.domains.timers == DomainTimers()
    with pytest.raises(usage.UsageError, match="--peer-port 0"):
        parse([*args[:-1], "0"])


def test_peer_dial_port(tmp_path: Path) -> None:
    """--peer-dial-port (or [domain] peer-dial-port) is the port peers are dialled on."""
    args = [*base_args(tmp_path), *tls_args(tmp_path), "--peer-port", "4321"]
    config = parse([*args, "--peer-dial-port", "4400"]).config
    assert (config.peer_port, config.peer_dial_port) == (4321, 4400)
    service = HqnlsdService(config, MemoryReactorClock())
    assert service.domains is not None
    assert service.domains.network.port_of(config.address) == 4400
    assert service.domains.network.listener.requested == 4321
    conf = tmp_path / "dial.toml"
    conf.write_text("[domain]\npeer-dial-port = 4500\n", "utf-8")
    assert parse([*args, "--config", str(conf)]).config.peer_dial_port == 4500
    with pytest.raises(usage.UsageError, match="--peer-dial-port 70000"):
        parse([*args, "--peer-dial-port", "70000"])


def test_config_file_keys(tmp_path: Path) -> None:
    """[domain] peer-port, peer-source-check and timers, from the file."""
    tls = tls_args(tmp_path)
    conf = tmp_path / "hqnlsd.toml"
    conf.write_text(
        "[domain]\n"
        f'ca = "{tls[1]}"\ncert = "{tls[3]}"\nkey = "{tls[5]}"\n'
        "peer-port = 5555\npeer-source-check = false\nlease = 3.0\n",
        "utf-8",
    )
    config = parse([*base_args(tmp_path), "--config", str(conf)]).config
    assert (config.peer_port, config.peer_source_check) == (5555, False)
    assert config.domain_timers == {"lease": 3.0}
    service = HqnlsdService(config, MemoryReactorClock())
    assert service.domains is not None and service.domains.timers.lease == 3.0
    conf.write_text(conf.read_text("utf-8").replace("false", "true"), "utf-8")
    assert parse([*base_args(tmp_path), "--config", str(conf)]).config.peer_source_check


def test_bad_credentials_stop_startup(tmp_path: Path) -> None:
    """A member certificate from another CA: StartupError naming server domains."""
    config = parse([*base_args(tmp_path), *tls_args(tmp_path, other_ca=True)]).config
    with pytest.raises(StartupError, match=r"server domains: .*not issued by the domain CA"):
        HqnlsdService(config, MemoryReactorClock())


def test_metrics_count_the_domains_this_member_is_primary_of(tmp_path: Path) -> None:
    """Licence figures: this daemon's own products plus those of the domains it is the
    acting primary of; peers_up and domain_peers follow the runtime's members and links."""
    from hqnlsd.licensing.engine import Engine
    from tests.daemons import product_permit

    config = parse([*base_args(tmp_path), *tls_args(tmp_path)]).config
    reactor = MemoryReactorClock()
    service = HqnlsdService(config, reactor)
    assert service.domains is not None
    assert [p.product for p in service._licence_figures()] == []
    engine = Engine(reactor)
    engine.load_products([product_permit("Domain Widget", floating_count=4)])
    service.domains.serving_engines = lambda: [engine]  # type: ignore[method-assign]
    (figures,) = service._licence_figures()
    assert (figures.product, figures.floating_count) == ("Domain Widget", 4)
    # Peers: read from the runtime's members and links at each scrape.
    me, up, down = (ipaddress.IPv4Address(f"127.0.0.{n}") for n in (1, 2, 3))
    member = SimpleNamespace(spec=SimpleNamespace(ranks={me: 1, up: 2, down: 3}))
    service.domains.members = {"D": member}  # type: ignore[dict-item]
    service.domains.network.is_up = lambda address: address == up  # type: ignore[method-assign]
    scrape = service.metrics.exposition()[0]
    assert b'hqnlsd_peers_up{domain="D"} 1.0' in scrape
    assert b'hqnlsd_domain_peers{domain="D"} 2.0' in scrape
    service.domains.network.is_up = lambda address: True  # type: ignore[method-assign]
    assert b'hqnlsd_peers_up{domain="D"} 2.0' in service.metrics.exposition()[0]


def test_metrics_show_a_damaged_domain(tmp_path: Path) -> None:
    """hqnlsd_domain_damaged follows the runtime's damage reports (1 damaged, 0 fine)."""
    config = parse([*base_args(tmp_path), *tls_args(tmp_path)]).config
    service = HqnlsdService(config, MemoryReactorClock())
    assert service.domains is not None
    for listener in service.domains.damage_listeners:
        listener("D", "ValueError: bad view")
    assert b'hqnlsd_domain_damaged{domain="D"} 1.0' in service.metrics.exposition()[0]
    for listener in service.domains.damage_listeners:
        listener("D", None)
    assert b'hqnlsd_domain_damaged{domain="D"} 0.0' in service.metrics.exposition()[0]
