"""The one-line start-up failure messages, without processes (issue 11).

The real-process tests are in tests/daemon/test_e2e_startup.py; these cover the paths a
real start reaches only in a race (a bind that fails after the pre-flight check).
"""

from __future__ import annotations

import errno
from pathlib import Path

from twisted.internet.error import CannotListenError

from hqnlsd.config import DaemonConfig
from hqnlsd.daemon.startup import TCPListener, explain_cannot_listen, tcp_listeners
from tests.configs import daemon_config


def config(tmp_path: Path, **changes: object) -> DaemonConfig:
    """A config on 127.0.0.1:1236 with its state in ``tmp_path/state``."""
    return daemon_config(tmp_path, **{"client_listen": "tcp:1236:interface=127.0.0.1", **changes})  # type: ignore[arg-type]


def test_admin_socket_lock_is_not_an_address(tmp_path: Path) -> None:
    """The admin socket's lock held by another daemon: named as such, not as
    "cannot listen on 0.0.0.0:b'...'" with advice to change --port (the old line)."""
    cfg = config(tmp_path)
    path = str(cfg.admin_socket).encode()
    line = explain_cannot_listen(cfg, CannotListenError(None, path, "Cannot acquire lock"))
    assert line.startswith(f"--admin-socket {cfg.admin_socket}: another running hqnlsd")
    assert "0.0.0.0" not in line and "b'" not in line and "--port" not in line


def test_address_not_available_is_not_in_use(tmp_path: Path) -> None:
    """EADDRNOTAVAIL: "not an address of this host", --address; never "holds that port"."""
    cfg = config(tmp_path, client_listen="tcp:1236:interface=192.0.2.1")
    error = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    line = explain_cannot_listen(cfg, CannotListenError("192.0.2.1", 1236, error))
    assert line.startswith("cannot listen on 192.0.2.1:1236 (--port): 192.0.2.1 is not an address")
    assert "give --address" in line and "holds" not in line


def test_address_in_use_names_the_listener_option(tmp_path: Path) -> None:
    """EADDRINUSE on the metrics port: --metrics is the option to change, not --port."""
    cfg = config(tmp_path, metrics_listen="tcp:9236")
    error = OSError(errno.EADDRINUSE, "Address already in use")
    line = explain_cannot_listen(cfg, CannotListenError("127.0.0.1", 9236, error))
    assert "(--metrics)" in line and "another --metrics" in line


def test_tcp_listeners_of_a_config(tmp_path: Path) -> None:
    """Every numeric TCP listener, its options and where it binds (loopback by default)."""
    cfg = config(
        tmp_path,
        metrics_listen="tcp:9236",
        manhole_listen="tcp:2222:interface=0.0.0.0",
        domain_ca=tmp_path / "ca.pem",
        peer_port=1237,
    )
    assert tcp_listeners(cfg) == [
        TCPListener("--port", "--address", "127.0.0.1", 1236),
        TCPListener("--peer-port", "--address", "127.0.0.1", 1237),
        TCPListener("--metrics", "--metrics interface=", "127.0.0.1", 9236),
        TCPListener("--manhole", "--manhole interface=", "0.0.0.0", 2222),
    ]
