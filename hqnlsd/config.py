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

from hqnlsd.limits import ConnectionLimits
from hqnlsd.listen import loopback_unless_named, split_description
from hqnlsd.protocols import DEFAULT_CLIENT_PORT

DEFAULT_STATE_DIR = Path("/var/lib/hqnlsd")
DEFAULT_PUBLISHER_KEYS = Path("/etc/hqnlsd/publishers")
DEFAULT_HOSTS_FILE = Path("/etc/hosts")
#: TCP port of the server-domain peer listener (`hqnlsd.domain.peers.DEFAULT_PEER_PORT`).
DEFAULT_PEER_PORT = 1237
#: Where root's daemons publish their admin sockets, one per daemon address.
ROOT_RUNTIME_DIR = Path("/run/hqnlsd")


def default_runtime_dir(environ: Mapping[str, str], euid: int | None = None) -> Path:
    """The runtime directory daemons publish their admin sockets in, and hqn_lsa reads.

    ``/run/hqnlsd`` for root; otherwise the service's own ``$RUNTIME_DIRECTORY``
    (systemd's ``RuntimeDirectory=hqnlsd``: ``/run/hqnlsd`` for a service user),
    ``$XDG_RUNTIME_DIR/hqnlsd`` (the user's private runtime directory), or
    ``/tmp/hqnlsd-UID`` where there is none (both sides check its owner and mode
    before trusting it).
    """
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return ROOT_RUNTIME_DIR
    service = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if service and os.path.isabs(service):
        return Path(service)
    base = environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        return Path(base) / "hqnlsd"
    return Path(f"/tmp/hqnlsd-{uid}")


def runtime_socket_name(address: ipaddress.IPv4Address | str, port: int | None) -> str:
    """The file name a daemon publishes its admin socket under: ``ADDRESS:PORT.sock``.

    The port (of the client listener) tells apart several daemons on one address;
    a daemon whose client listener has no TCP port publishes ``ADDRESS.sock``.
    """
    return f"{address}:{port}.sock" if port is not None else f"{address}.sock"


def client_port(listen: str) -> int | None:
    """The TCP port of a client listener description (``tcp:1236:...``), else None."""
    kind, _, rest = listen.partition(":")
    number = rest.split(":", 1)[0]
    if kind.lower() in ("tcp", "ssl") and number.isdigit():
        return int(number)
    return None


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
    #: The web console's listen description (loopback unless it names an interface;
    #: None: no console), and whether it is served over TLS to admin certificates.
    web_listen: str | None = None
    web_tls: bool = False
    #: Directory of server keys for challenge/response (`hqn_mp servercert`).
    server_keys: Path | None = None
    #: Local admin socket (None: none), its mode and group.
    admin_socket: Path | None = None
    admin_socket_mode: int = 0o660
    admin_socket_group: str | None = None
    #: Where the admin socket is also published as ``ADDRESS:PORT.sock`` for
    #: hqn_lsa to find this daemon by its address (None: not published).
    runtime_dir: Path | None = None
    #: Remote admin over mutual TLS (strports), and the domain TLS files it uses.
    admin_tls: str | None = None
    domain_ca: Path | None = None
    domain_cert: Path | None = None
    domain_key: Path | None = None
    #: Server domains (only with the domain TLS files): the peer listener's TCP
    #: port on --address, whether a peer's source address must be its
    #: certificate's, and the `DomainTimers` field values (None: the defaults).
    peer_port: int = DEFAULT_PEER_PORT
    #: the port peers are dialled on (None: peer_port)
    peer_dial_port: int | None = None
    peer_source_check: bool = True
    domain_timers: Mapping[str, float | int] | None = None
    #: Connection caps and timeouts of the listeners (the ``[limits]`` table).
    limits: ConnectionLimits = dataclasses.field(default_factory=ConnectionLimits)
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
        web: str | None = None,
        web_tls: bool = False,
        command_line: Mapping[str, object] | None = None,
        admin_socket: str | None = None,
        admin_socket_mode: str | None = None,
        admin_socket_group: str | None = None,
        runtime_dir: str | None = None,
        admin_tls: str | None = None,
        domain_tls: tuple[str | None, str | None, str | None] = (None, None, None),
        server_keys: str | None = None,
        peer_port: str | int | None = None,
        peer_dial_port: str | int | None = None,
        peer_source_check: bool = True,
        domain_timers: Mapping[str, float | int] | None = None,
        limits: Mapping[str, object] | None = None,
    ) -> DaemonConfig:
        """Validate raw option values and build the config, or raise ConfigError.

        Each concern is checked by its own function, in this order, so that of
        several wrong values the first one here is the one reported.
        """
        addr = _host_address(address)
        listen = client_listen_description(port, addr)
        dirs = _permit_dirs(permit_path)
        hosts = _hosts_file(hosts_file)
        keys = _publisher_keys(publisher_keys)
        manhole_key_file = _manhole_keys(manhole, manhole_keys)
        state = Path(state_dir)
        socket_path = _admin_socket_path(admin_socket, state)
        socket_mode = _admin_socket_mode(admin_socket_mode)
        env = dict(os.environ if environ is None else environ)
        runtime = _runtime_dir(runtime_dir, socket_path, env)
        tls_files = _domain_tls_files(domain_tls, admin_tls)
        web_listen = _web_listen(web, web_tls, tls_files)
        server_key_dir = _server_keys(server_keys)
        peer = _peer_port(peer_port)
        dial = None if peer_dial_port is None else _peer_port(peer_dial_port, '--peer-dial-port')
        _check_domain_timers(domain_timers)
        connection_limits = _connection_limits(limits)
        return cls(
            address=addr,
            client_listen=listen,
            permit_dirs=dirs,
            hosts_file=hosts,
            state_dir=state,
            publisher_keys=keys,
            domain_logging=domain_logging,
            environ=env,
            manhole_listen=manhole or None,
            manhole_keys=manhole_key_file,
            metrics_listen=metrics or None,
            web_listen=web_listen,
            web_tls=bool(web_tls),
            command_line=dict(command_line or {}),
            server_keys=server_key_dir,
            admin_socket=socket_path,
            admin_socket_mode=socket_mode,
            admin_socket_group=admin_socket_group or None,
            runtime_dir=runtime,
            admin_tls=admin_tls or None,
            domain_ca=tls_files[0],
            domain_cert=tls_files[1],
            domain_key=tls_files[2],
            peer_port=peer,
            peer_dial_port=dial,
            peer_source_check=peer_source_check,
            domain_timers=dict(domain_timers) if domain_timers else None,
            limits=connection_limits,
        )


# -- one validating function per concern of `DaemonConfig.build` ------------------


def _host_address(address: str) -> ipaddress.IPv4Address:
    """--address: an IPv4 address of one host (not multicast, unspecified or broadcast)."""
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
    return addr


def _permit_dirs(permit_path: str | None) -> tuple[Path, ...] | None:
    """-p: the permit directories, colon-separated (None: the default search)."""
    if not permit_path:
        return None
    dirs = tuple(Path(part) for part in permit_path.split(":") if part)
    if not dirs:
        raise ConfigError("-p needs at least one directory")
    return dirs


def _hosts_file(hosts_file: str) -> Path:
    """--hosts: the hosts file, which must exist."""
    hosts = Path(hosts_file)
    if not hosts.is_file():
        raise ConfigError(f"--hosts {hosts}: no such file")
    return hosts


def _publisher_keys(publisher_keys: str) -> Path:
    """--publisher-keys: the directory of the publishers' keys, which must exist."""
    keys = Path(publisher_keys)
    if not keys.is_dir():
        raise ConfigError(
            f"--publisher-keys {keys}: no such directory (it holds the publishers' "
            "*.pub keys that permits must be sealed with)"
        )
    return keys


def _manhole_keys(manhole: str | None, manhole_keys: str | None) -> Path | None:
    """--manhole-keys: required with --manhole (keys only), refused without it."""
    if not manhole:
        if manhole_keys:
            raise ConfigError("--manhole-keys is only used with --manhole LISTEN")
        return None
    if not manhole_keys:
        raise ConfigError(
            "--manhole needs --manhole-keys FILE (an OpenSSH authorized_keys file): "
            "the manhole only accepts public-key logins"
        )
    manhole_key_file = Path(manhole_keys)
    if not manhole_key_file.is_file():
        raise ConfigError(f"--manhole-keys {manhole_key_file}: no such file")
    return manhole_key_file


def _admin_socket_path(admin_socket: str | None, state: Path) -> Path | None:
    """--admin-socket: a path, ``off`` (None), or by default ``admin.sock`` in the state dir."""
    if admin_socket is None:
        return state / "admin.sock"
    if admin_socket.lower() in ("off", "none", ""):
        return None
    return Path(admin_socket)


def _admin_socket_mode(admin_socket_mode: str | None) -> int:
    """--admin-socket-mode: octal, default 660, never open to every local user."""
    try:
        socket_mode = int(admin_socket_mode or "660", 8)
    except ValueError:
        raise ConfigError(
            f"--admin-socket-mode {admin_socket_mode!r} is not an octal mode such as 660"
        ) from None
    if socket_mode & 0o007 or not 0 <= socket_mode <= 0o777:
        raise ConfigError(
            f"--admin-socket-mode {socket_mode:03o} would let every local user administer "
            "the server; use 660 (owner and group) or 600"
        )
    return socket_mode


def _runtime_dir(
    runtime_dir: str | None, socket_path: Path | None, env: Mapping[str, str]
) -> Path | None:
    """--runtime-dir: where the admin socket is published (None: not published)."""
    off = runtime_dir is not None and runtime_dir.lower() in ("off", "none", "")
    if socket_path is None or off:
        return None
    if runtime_dir is None:
        return default_runtime_dir(env)
    if not os.path.isabs(runtime_dir):
        raise ConfigError(f"--runtime-dir {runtime_dir!r}: give an absolute path, or 'off'")
    return Path(runtime_dir)


def _domain_tls_files(
    domain_tls: tuple[str | None, str | None, str | None], admin_tls: str | None
) -> list[Path | None]:
    """--domain-ca, --domain-cert, --domain-key: all three existing files, or none
    (and all three for --admin-tls)."""
    tls_files = [Path(name) if name else None for name in domain_tls]
    if any(tls_files) and not all(tls_files):
        raise ConfigError("give all of --domain-ca, --domain-cert and --domain-key, or none")
    options = ("--domain-ca", "--domain-cert", "--domain-key")
    for option, tls_file in zip(options, tls_files, strict=True):
        if tls_file is not None and not tls_file.is_file():
            raise ConfigError(f"{option} {tls_file}: no such file")
    if admin_tls and not all(tls_files):
        raise ConfigError(
            "--admin-tls needs --domain-ca, --domain-cert and --domain-key (the daemon's "
            "member certificate from hqn_ca member)"
        )
    return tls_files


def _web_listen(
    web: str | None, web_tls: bool, tls_files: list[Path | None]
) -> str | None:
    """--web: a TCP description, on loopback unless it names an interface; one on
    any other interface needs --web-tls (and --web-tls the domain TLS files)."""
    if not web:
        if web_tls:
            raise ConfigError("--web-tls is only used with --web LISTEN")
        return None
    try:
        description = loopback_unless_named(
            web, what="web console", kinds=frozenset({"tcp", "tcp6"})
        )
    except ValueError as error:
        raise ConfigError(f"--web: {error}") from None
    if web_tls and not all(tls_files):
        raise ConfigError(
            "--web-tls needs --domain-ca, --domain-cert and --domain-key (the daemon's "
            "member certificate from hqn_ca member; browsers present an admin certificate)"
        )
    interface = _interface_of(description)
    if not web_tls and not _is_loopback(interface):
        raise ConfigError(
            f"--web {web}: the web console shows who holds which licence; on an interface "
            "other than loopback it is served only over TLS (add --web-tls, with the "
            "domain certificates)"
        )
    return description


def _interface_of(description: str) -> str:
    """The ``interface=`` of a (loopback-completed) TCP description, unescaped."""
    for option in split_description(description)[1:]:
        key, sep, value = option.partition("=")
        if sep and key.lower() == "interface":
            return value.replace("\\", "")
    return ""


def _is_loopback(interface: str) -> bool:
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface.lower() == "localhost"


def _server_keys(server_keys: str | None) -> Path | None:
    """--server-keys: the directory of server keys and certificates, if given."""
    server_key_dir = Path(server_keys) if server_keys else None
    if server_key_dir is not None and not server_key_dir.is_dir():
        raise ConfigError(
            f"--server-keys {server_key_dir}: no such directory (it holds the "
            "*.serverkey/*.servercert pairs that hqn_mp servercert writes)"
        )
    return server_key_dir


def _check_domain_timers(domain_timers: Mapping[str, float | int] | None) -> None:
    """The ``DomainTimers`` field values, if any, must build a valid `DomainTimers`."""
    if not domain_timers:
        return
    from hqnlsd.domain.timing import DomainTimers

    try:
        DomainTimers(**domain_timers)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise ConfigError(f"domain timers: {error}") from None


def _connection_limits(limits: Mapping[str, object] | None) -> ConnectionLimits:
    """The ``[limits]`` table as `ConnectionLimits`."""
    try:
        return ConnectionLimits.from_mapping(limits or {})
    except ValueError as error:
        raise ConfigError(f"limits: {error}") from None


def _peer_port(value: str | int | None, option: str = "--peer-port") -> int:
    """A peer port number (default 1237), or ConfigError naming ``option``."""
    if value is None:
        return DEFAULT_PEER_PORT
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{option} {text}: not a TCP port number (1-65535)")
    return int(text)


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
