"""The daemon's configuration: read once, validated, immutable.

`hqnlsd.tap` builds a `DaemonConfig` from the command line; everything below the
tap receives this object and never looks at options or the environment again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_CLIENT_PORT = 1236
DEFAULT_STATE_DIR = Path("/var/lib/hqnlsd")
DEFAULT_PUBLISHER_KEYS = Path("/etc/hqnlsd/publishers")
DEFAULT_HOSTS_FILE = Path("/etc/hosts")


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """Everything a daemon needs to know to start."""

    address: ipaddress.IPv4Address
    client_listen: str
    permit_dirs: tuple[Path, ...] | None
    hosts_file: Path
    state_dir: Path
    publisher_keys: Path
    domain_logging: bool = False
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    manhole_listen: str | None = None
    manhole_keys: Path | None = None
    metrics_listen: str | None = None
    #: The options given on the command line (with --config): SIGHUP re-merges
    #: the config file under them.
    command_line: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: Install a SIGHUP handler that re-reads permits (the daemon: yes; tests: no).
    handle_sighup: bool = True
    #: Put twistd's log observers behind the log-switch filter (tests: no).
    install_log_filter: bool = True

    @classmethod
    def build(
        cls,
        *,
        address: str,
        port: str | None,
        permit_path: str | None,
        hosts_file: str,
        state_dir: str,
        publisher_keys: str,
        domain_logging: bool = False,
        environ: Mapping[str, str] | None = None,
        manhole: str | None = None,
        manhole_keys: str | None = None,
        metrics: str | None = None,
        command_line: Mapping[str, object] | None = None,
    ) -> DaemonConfig:
        """Validate raw option values and build the config, or raise ConfigError."""
        try:
            addr = ipaddress.IPv4Address(address)
        except ipaddress.AddressValueError:
            raise ConfigError(
                f"--address {address!r} is not an IPv4 address (e.g. 127.0.0.1)"
            ) from None
        if (
            addr.is_multicast
            or addr.is_unspecified
            or addr == ipaddress.IPv4Address("255.255.255.255")
        ):
            raise ConfigError(f"--address {addr} is not a host address")
        listen = client_listen_description(port, addr)
        dirs = None
        if permit_path:
            dirs = tuple(Path(part) for part in permit_path.split(":") if part)
            if not dirs:
                raise ConfigError("-p needs at least one directory")
        hosts = Path(hosts_file)
        if not hosts.is_file():
            raise ConfigError(f"--hosts {hosts}: no such file")
        keys = Path(publisher_keys)
        if not keys.is_dir():
            raise ConfigError(
                f"--publisher-keys {keys}: no such directory (it holds the publishers' "
                "*.pub keys that permits must be sealed with)"
            )
        manhole_key_file = None
        if manhole:
            if not manhole_keys:
                raise ConfigError(
                    "--manhole needs --manhole-keys FILE (an OpenSSH authorized_keys file): "
                    "the manhole only accepts public-key logins"
                )
            manhole_key_file = Path(manhole_keys)
            if not manhole_key_file.is_file():
                raise ConfigError(f"--manhole-keys {manhole_key_file}: no such file")
        elif manhole_keys:
            raise ConfigError("--manhole-keys is only used with --manhole LISTEN")
        return cls(
            address=addr,
            client_listen=listen,
            permit_dirs=dirs,
            hosts_file=hosts,
            state_dir=Path(state_dir),
            publisher_keys=keys,
            domain_logging=domain_logging,
            environ=dict(os.environ if environ is None else environ),
            manhole_listen=manhole or None,
            manhole_keys=manhole_key_file,
            metrics_listen=metrics or None,
            command_line=dict(command_line or {}),
        )


def client_listen_description(port: str | None, address: ipaddress.IPv4Address) -> str:
    """The strports description of the client listener.

    A bare number is a TCP port on the daemon's own address; anything else is a
    full strports description, used as given.
    """
    if port is None:
        return f"tcp:{DEFAULT_CLIENT_PORT}:interface={address}"
    if port.isdigit():
        number = int(port)
        if not 0 <= number <= 65535:
            raise ConfigError(f"--port {port}: not a TCP port number")
        return f"tcp:{number}:interface={address}"
    if ":" not in port:
        raise ConfigError(
            f"--port {port!r}: give a port number or a strports description "
            "such as tcp:1236:interface=127.0.0.1"
        )
    return port
