"""Where a client looks for licence servers (pure: environment and hosts file are inputs).

The search list, first match wins:

1. an explicit list (``servers=`` in the API, ``--server`` on the command line),
   each ``HOST`` or ``HOST:PORT``;
2. else ``HQNSERVERS``: host names separated by blanks or colons. A purely
   numeric item after a colon is the port of the host before it, so
   ``"127.0.0.1:1237 hqnserver2"`` and ``"a:b:c"`` both read as expected;
3. else the local host (``127.0.0.1``) and then ``hqnserver1``, ``hqnserver2``, ...
   in rank order, as the hosts file names them.

Redirects (``TRY_SERVER``, ``TRY_DOMAIN``) name addresses only; the client uses
the port of the server that redirected it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hqnlsd.identity import DEFAULT_HOSTS_PATH, HostsTable
from hqnlsd.protocols import DEFAULT_CLIENT_PORT

#: The host tried first when nothing else is configured.
LOCAL_HOST = "127.0.0.1"
#: The environment variable with the site's server list.
SERVERS_VARIABLE = "HQNSERVERS"

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?\Z")


@dataclasses.dataclass(frozen=True, order=True)
class ServerAddress:
    """A licence server's host (name or IPv4 address) and TCP port."""

    host: str
    port: int = DEFAULT_CLIENT_PORT

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.host):
            raise ValueError(f"{self.host!r} is not a host name or IPv4 address")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port (1..65535)")

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int = DEFAULT_CLIENT_PORT) -> ServerAddress:
        """``HOST`` or ``HOST:PORT``; ValueError if neither."""
        host, sep, port = text.strip().rpartition(":")
        if not sep:
            return cls(text.strip(), default_port)
        if not port.isdigit():
            raise ValueError(f"{text!r}: the port after ':' must be a number")
        return cls(host, int(port))


def parse_hqnservers(value: str, default_port: int = DEFAULT_CLIENT_PORT) -> list[ServerAddress]:
    """The servers named by an ``HQNSERVERS`` value (see the module docstring)."""
    found: list[ServerAddress] = []
    for word in value.split():
        items = word.split(":")
        for index, item in enumerate(items):
            if not item:
                continue
            if item.isdigit() and index > 0 and found and items[index - 1]:
                found[-1] = ServerAddress(found[-1].host, int(item))
                continue
            found.append(ServerAddress(item, default_port))
    return found


def _unique(servers: Iterable[ServerAddress]) -> list[ServerAddress]:
    seen: set[ServerAddress] = set()
    out: list[ServerAddress] = []
    for server in servers:
        if server not in seen:
            seen.add(server)
            out.append(server)
    return out


def search_list(
    explicit: Sequence[str | ServerAddress] | None = None,
    *,
    environ: Mapping[str, str],
    hosts: HostsTable | None,
    port: int = DEFAULT_CLIENT_PORT,
) -> list[ServerAddress]:
    """The servers to try, in order (module docstring); ValueError for a bad entry."""
    if explicit:
        return _unique(
            item if isinstance(item, ServerAddress) else ServerAddress.parse(item, port)
            for item in explicit
        )
    configured = environ.get(SERVERS_VARIABLE, "").strip()
    if configured:
        return _unique(parse_hqnservers(configured, port))
    servers = [ServerAddress(LOCAL_HOST, port)]
    if hosts is not None:
        servers.extend(ServerAddress(str(address), port) for _, address in hosts.ranked())
    return _unique(servers)


def load_hosts(path: str | Path = DEFAULT_HOSTS_PATH) -> HostsTable | None:
    """The hosts table, or None if the file cannot be read (then only the local host)."""
    try:
        return HostsTable.load(path)
    except OSError:
        return None
