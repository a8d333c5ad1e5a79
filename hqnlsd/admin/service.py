"""`make_admin_services`: the admin listeners a daemon's root service adds.

- The local UNIX socket (default ``STATE_DIR/admin.sock``), created with mode
  ``0660`` (configurable) and, if asked, handed to an owner group: whoever can
  connect to it is an administrator, so the file's permissions are the
  authorisation. A stale socket of a dead daemon is replaced (a ``.lock`` file
  beside it tells a live daemon's from a stale one).
- The same service published in the runtime directory as ``ADDRESS:PORT.sock``
  (`hqnlsd.config.runtime_socket_name`), so that ``hqn_lsa -s ADDRESS`` reaches
  this daemon and no other: one socket per daemon, named by its address and
  client port, with the admin socket's mode and group. The directory is made
  0700 (0750 and the admin group's with ``--admin-socket-group``) and refused
  if it is a symlink, not ours or root's, or writable by others.
- Optionally, remote administration over mutual TLS (`hqnlsd.tls`): the
  daemon's member certificate and the domain CA; only admin certificates are
  served (`TLSAdminProtocol`).

A listen that fails (path or port in use, group unknown) stops start-up, as
every other listener of the daemon does.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from hqnlsd.admin.daemon import AdministeredDaemon
from hqnlsd.admin.handler import AdminHandler
from hqnlsd.admin.protocol import AdminFactory, MalformedRequestsReport
from hqnlsd.config import DaemonConfig, client_port, runtime_socket_name
from hqnlsd.listen import loopback_unless_named
from hqnlsd.listeners import Listener
from hqnlsd.tls import DomainCredentials, server_options

#: The admin socket's file name in the state directory.
SOCKET_NAME = "admin.sock"
#: The admin socket's default mode: owner and group may connect.
DEFAULT_SOCKET_MODE = 0o660
#: The default port of remote (TLS) administration.
DEFAULT_TLS_PORT = 1238


def runtime_socket_path(config: DaemonConfig) -> Path | None:
    """Where ``config``'s daemon publishes its admin socket (None: it does not)."""
    if config.runtime_dir is None or config.admin_socket is None:
        return None
    return config.runtime_dir / runtime_socket_name(
        config.address, client_port(config.client_listen)
    )


def group_id(group: str | int) -> int:
    """A group name or number as a gid; ValueError naming it if unknown."""
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise ValueError(f"admin socket group {group!r}: no such group") from None


class RuntimeDirError(ValueError):
    """The runtime directory is unsafe or cannot be made; the message says which and why."""


def check_runtime_dir(path: Path, *, euid: int | None = None) -> None:
    """Raise RuntimeDirError unless ``path`` is a real directory only its owner may change.

    Its owner must be ``euid`` (default: ours) or root, and neither its group nor
    others may write to it: whoever can create a file there could publish a
    socket under a daemon's address and receive that daemon's admin commands.
    """
    uid = os.geteuid() if euid is None else euid
    try:
        info = os.lstat(path)
    except OSError as error:
        raise RuntimeDirError(f"runtime directory {path}: {error.strerror or error}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(f"runtime directory {path}: not a directory (or a symlink)")
    if info.st_uid not in (uid, 0):
        raise RuntimeDirError(
            f"runtime directory {path}: owned by uid {info.st_uid}, not by this user or root"
        )
    if info.st_mode & 0o022:
        raise RuntimeDirError(
            f"runtime directory {path}: mode {stat.S_IMODE(info.st_mode):03o} lets others "
            "create files in it; make it 700 or 750"
        )


def prepare_runtime_dir(path: Path, gid: int | None) -> None:
    """Make the runtime directory if missing (0700, or 0750 for ``gid``), then check it."""
    if not os.path.lexists(path):
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
            if gid is not None:
                os.chown(path, -1, gid)
                os.chmod(path, 0o750)
        except FileExistsError:
            pass  # another daemon made it meanwhile: checked below as any other
        except OSError as error:
            raise RuntimeDirError(
                f"runtime directory {path}: cannot create it: {error.strerror or error}"
            ) from None
    check_runtime_dir(path)


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
            # chmod follows links: only the socket we just bound is changed.
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise RuntimeDirError(f"{self.path}: not the socket just bound; not changed")
            if self.gid is not None:
                os.chown(self.path, -1, self.gid, follow_symlinks=False)
            os.chmod(self.path, self.mode)
            return port

        listening: Deferred[Any] = self._inner.listen(factory)
        return listening.addCallback(adjust)


def make_admin_services(
    root: AdministeredDaemon,
    *,
    socket_path: Path | None,
    socket_mode: int = DEFAULT_SOCKET_MODE,
    socket_group: str | int | None = None,
    runtime_socket: Path | None = None,
    tls_listen: str | None = None,
    tls_credentials: DomainCredentials | None = None,
    reactor: Any,
) -> list[IService]:
    """The admin listeners for ``root``: the UNIX socket and, if asked, TLS.

    ``socket_path`` None means no local socket; ``runtime_socket`` (with a local
    socket) is where it is also published for hqn_lsa; ``tls_listen`` (a strports TCP
    description, loopback unless ``interface=`` names one) needs
    ``tls_credentials`` (the daemon's member certificate and the domain CA).
    Raises ValueError with a message for the admin on bad settings.
    """
    handler = AdminHandler(root)
    if root.domains is not None:
        # This member runs the changes other members forward while it is a primary.
        root.domains.forwarded = handler.handle_forwarded
    # First, so that it stops after the listeners: no malformed-request timer outlives them.
    services: list[IService] = [MalformedRequestsReport(handler)]
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
        local = Listener(endpoint, AdminFactory(handler), requested=str(socket_path))
        local.setName("admin-socket")
        services.append(local)
        if runtime_socket is not None:
            # Checked (and made) now, so that an unsafe directory stops start-up
            # with one line, before anything listens.
            prepare_runtime_dir(Path(runtime_socket).parent, gid)
            published = AdminSocketEndpoint(reactor, Path(runtime_socket), socket_mode, gid)
            runtime = Listener(published, AdminFactory(handler), requested=str(runtime_socket))
            runtime.setName("admin-runtime-socket")
            services.append(runtime)
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
        remote = Listener(tcp, wrapped, requested=description)
        remote.setName("admin-tls")
        services.append(remote)
    return services
