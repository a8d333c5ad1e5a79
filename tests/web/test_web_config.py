"""The web console's configuration: ``--web``/``--web-tls``, the ``[web]`` table, and
the ``web`` listener limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from hqnlsd.config import ConfigError, DaemonConfig
from hqnlsd.configfile import config_from, load_config_file
from hqnlsd.limits import ConnectionLimits, limit_listener
from hqnlsd.web.site import DEFAULT_TIMEOUT, ConsoleRoot, ConsoleSite


def build(tmp_path: Path, **options: Any) -> DaemonConfig:
    (tmp_path / "hosts").write_text("127.0.0.1 hqnserver1\n")
    (tmp_path / "keys").mkdir(exist_ok=True)
    return DaemonConfig.build(
        address="127.0.0.1",
        port=None,
        permit_path=None,
        hosts_file=str(tmp_path / "hosts"),
        state_dir=str(tmp_path / "state"),
        publisher_keys=str(tmp_path / "keys"),
        environ={},
        **options,
    )


def test_off_by_default(tmp_path: Path) -> None:
    config = build(tmp_path)
    assert (config.web_listen, config.web_tls) == (None, False)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("8236", "tcp:8236:interface=127.0.0.1"),
        ("tcp:8236", "tcp:8236:interface=127.0.0.1"),
        ("tcp:8236:interface=127.0.0.2", "tcp:8236:interface=127.0.0.2"),
        ("tcp6:8236", "tcp6:8236:interface=\\:\\:1"),
    ],
)
def test_loopback_unless_an_interface_is_named(tmp_path: Path, given: str, used: str) -> None:
    assert build(tmp_path, web=given).web_listen == used


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"web": "tcp:8236:interface=0.0.0.0"}, "only over TLS"),
        ({"web": "tcp:8236:interface=192.0.2.1"}, "only over TLS"),
        ({"web": "tcp:8236:interface="}, "empty interface"),
        ({"web": "unix:/tmp/web.sock"}, "use one of tcp, tcp6"),
        ({"web": "tcp:8236:interface=0.0.0.0", "web_tls": True}, "--web-tls needs --domain-ca"),
        ({"web_tls": True}, "--web-tls is only used with --web"),
    ],
)
def test_refused(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, **options)


def test_the_web_table(tmp_path: Path) -> None:
    """``[web] listen`` and ``tls`` set --web and --web-tls; the command line wins."""
    path = tmp_path / "hqnlsd.toml"
    path.write_text("[web]\nlisten = 8236\ntls = false\n")
    assert load_config_file(path) == {"web": "8236", "web-tls": False}
    (tmp_path / "hosts").write_text("127.0.0.1 hqnserver1\n")
    (tmp_path / "keys").mkdir()
    options = {
        "config": str(path),
        "hosts": str(tmp_path / "hosts"),
        "state-dir": str(tmp_path / "state"),
        "publisher-keys": str(tmp_path / "keys"),
    }
    assert config_from(options).web_listen == "tcp:8236:interface=127.0.0.1"
    assert config_from({**options, "web": "tcp:9000"}).web_listen == "tcp:9000:interface=127.0.0.1"


def test_web_listener_limits() -> None:
    """Capped like the other listeners, the idle timeout (and twisted.web's own timer)
    from ``web-idle-timeout``; with TLS the handshake deadline too."""
    limits = ConnectionLimits(web_idle_timeout=7.0, handshake_timeout=3.0)
    site = ConsoleSite(ConsoleRoot(None))  # type: ignore[arg-type]
    assert site.timeOut == DEFAULT_TIMEOUT
    plain = limit_listener("web", site, limits, Clock(), None)
    assert site.timeOut == 7.0
    assert (plain.max_connections, plain.idle_timeout, plain.handshake_timeout) == (
        limits.listener_max_connections,
        7.0,
        None,
    )
    tls = limit_listener("web_tls", site, limits, Clock(), None)
    assert (tls.idle_timeout, tls.handshake_timeout) == (7.0, 3.0)
    assert tls.established is not None
    site.timeOut = None  # the TLS case proper: the site under a TLS factory
    wrapped = type("TLSFactory", (), {"wrappedFactory": site})()
    limit_listener("web_tls", wrapped, limits, Clock(), None)
    assert site.timeOut == 7.0
