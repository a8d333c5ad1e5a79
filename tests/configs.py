"""A `DaemonConfig` for unit tests of the start-up checks, state under ``tmp_path``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hqnlsd.config import DaemonConfig


def daemon_config(
    tmp_path: Path, client_listen: str = "tcp:1236:interface=127.0.0.1", **changes: object
) -> DaemonConfig:
    """A config on ``client_listen`` with its state in ``tmp_path/state``."""
    values: dict[str, object] = {
        "address": ipaddress.IPv4Address("127.0.0.1"),
        "client_listen": client_listen,
        "permit_dirs": None,
        "hosts_file": tmp_path / "hosts",
        "state_dir": tmp_path / "state",
        "publisher_keys": tmp_path / "keys",
        "admin_socket": tmp_path / "state" / "admin.sock",
    }
    values.update(changes)
    return DaemonConfig(**values)  # type: ignore[arg-type]
