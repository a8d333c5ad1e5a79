"""`make_admin_services`: the admin listeners a daemon's root service adds.

- The local UNIX socket (default ``STATE_DIR/admin.sock``), created with mode
  ``0660`` (configurable) and, if asked, handed to an owner group: whoever can
  connect to it is an administrator, so the file's permissions are the
  authorisation. A stale socket of a dead daemon is replaced (a ``.lock`` file
  beside it tells a live daemon's from a stale one).
- Optionally, remote administration over mutual TLS (`hqnlsd.tls`): the
  daemon's member certificate and the domain CA; only admin certificates are
  served (`TLSAdminProtocol`).

A listen that fails (path or port in use, group unknown) stops start-up, as
every other listener of the daemon does.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from hqnlsd.admin.handler import AdminHandler
from hqnlsd.admin.protocol import AdminFactory
from hqnlsd.listen import loopback_unless_named
from hqnlsd.tls import DomainCredentials, server_options

if TYPE_CHECKING:
    from hqnlsd.service import HqnlsdService

#: The admin socket's file name in the state directory.
SOCKET_NAME = "admin.sock"
#: The admin socket's default mode: owner and group may connect.
DEFAULT_SOCKET_MODE = 0o660
#: The default port of remote (TLS) administration.
DEFAULT_TLS_PORT = 1238


def group_id(group: str | int) -> int:
    """A group name or number as a gid; ValueError naming it if unknown."""
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise ValueError(f"admin socket group {group!r}: no such group") from None


@implementer(IStreamServerEndpoint)
class AdminSocketEndpoint:
    """A UNIX server endpoint that sets the socket's mode and group once bound."""

    def __init__(self, reactor: Any, path: Path, mode: int, gid: int | None) -> None:
        self.path = path
        self.mode = mode
        self.gid = gid
        self._inner = endpoints.UNIXServerEndpoint(reactor, str(path), mode=mode, wantPID=True)

    def listen(self, factory: Any) -> Deferred[Any]:
        """Bind the socket (its directory made 0700 if missing), then chown its group."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

        def adjust(port: Any) -> Any:
            if self.gid is not None:
                os.chown(self.path, -1, self.gid)
            os.chmod(self.path, self.mode)
            return port

        listening: Deferred[Any] = self._inner.listen(factory)
        return listening.addCallback(adjust)


def make_admin_services(
    root: HqnlsdService,
    *,
    socket_path: Path | None,
    socket_mode: int = DEFAULT_SOCKET_MODE,
    socket_group: str | int | None = None,
    tls_listen: str | None = None,
    tls_credentials: DomainCredentials | None = None,
    reactor: Any,
) -> list[IService]:
    """The admin listeners for ``root``: the UNIX socket and, if asked, TLS.

    ``socket_path`` None means no local socket; ``tls_listen`` (a strports TCP
    description, loopback unless ``interface=`` names one) needs
    ``tls_credentials`` (the daemon's member certificate and the domain CA).
    Raises ValueError with a message for the admin on bad settings.
    """
    handler = AdminHandler(root)
    if root.domains is not None:
        # This member runs the changes other members forward while it is a primary.
        root.domains.forwarded = handler.handle_forwarded
    services: list[IService] = []
    if socket_path is not None:
        if not 0 <= socket_mode <= 0o777:
            raise ValueError(f"admin socket mode {socket_mode:o} is not a file mode")
        if socket_mode & 0o007:
            raise ValueError(
                f"admin socket mode {socket_mode:03o} lets every local user administer "
                "the server; use 660 (owner and group) or 600"
            )
        gid = None if socket_group is None else group_id(socket_group)
        endpoint = AdminSocketEndpoint(reactor, Path(socket_path), socket_mode, gid)
        local = StreamServerEndpointService(endpoint, AdminFactory(handler))
        local._raiseSynchronously = True
        local.setName("admin-socket")
        services.append(local)
    if tls_listen is not None:
        if tls_credentials is None:
            raise ValueError(
                "remote administration (TLS) needs the domain CA and this daemon's "
                "member certificate and key"
            )
        description = loopback_unless_named(tls_listen, what="admin TLS", kinds=frozenset({"tcp"}))
        tcp = endpoints.serverFromString(reactor, description)
        wrapped = TLSMemoryBIOFactory(
            server_options(tls_credentials),
            False,
            AdminFactory(handler, ca_certificate=tls_credentials.ca_certificate),
        )
        remote = StreamServerEndpointService(tcp, wrapped)
        remote._raiseSynchronously = True
        remote.setName("admin-tls")
        services.append(remote)
    return services
