"""Why the daemon cannot start, told in one line.

`preflight` runs before twistd forks (`hqnlsd.tap.makeService`) and checks what an
admin can get wrong: the state directory and its files, the state database, the
admin socket, every TCP listener's address and port. The same explanations serve a
bind that fails later, in ``privilegedStartService`` (`explain_cannot_listen`,
`explain_os_error`), and a state directory another daemon holds
(`state_dir_locked`). Each line names the option, the path or address, and the cause.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import sqlite3
from pathlib import Path
from typing import Protocol

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from hqnlsd.config import DaemonConfig
from hqnlsd.listen import loopback_unless_named, split_description
from hqnlsd.persistence.store import DATABASE_NAME
from hqnlsd.securefiles import (
    UnsafePathError,
    check_state_dir,
    check_state_entries,
    check_trusted_file,
)


class StartupError(Exception):
    """The daemon cannot start; the message tells the admin why and what to do."""


class FailureReport(Protocol):
    """Where a failed start is told besides the log (`hqnlsd.tap.TerminalReport`)."""

    def failed(self, reason: str) -> None:
        """Tell ``reason`` (the one line, without "cannot start")."""

    def close(self) -> None:
        """The start succeeded: let go of the destination."""




@dataclasses.dataclass(frozen=True)
class TCPListener:
    """A TCP listener the configuration asks for: the option that sets it, the option
    that names its address, and where it binds (``0.0.0.0`` for every interface)."""

    option: str
    address_option: str
    host: str
    port: int


def tcp_listeners(config: DaemonConfig) -> list[TCPListener]:
    """Every TCP listener of ``config`` whose port is a number (port 0 and non-TCP
    descriptions are left to the real bind)."""
    wanted: list[tuple[str, str, str | None]] = [("--port", "--address", config.client_listen)]
    if config.domain_ca is not None:
        peer = f"tcp:{config.peer_port}:interface={config.address}"
        wanted.append(("--peer-port", "--address", peer))
    for option, description in (
        ("--metrics", config.metrics_listen),
        ("--web", config.web_listen),
        ("--manhole", config.manhole_listen),
        ("--admin-tls", config.admin_tls),
    ):
        if description is not None:
            try:
                safe = loopback_unless_named(description, what=option, kinds=frozenset({"tcp"}))
            except ValueError:
                continue  # not TCP (or refused later, with its own message)
            wanted.append((option, f"{option} interface=", safe))
    found: list[TCPListener] = []
    for option, address_option, description in wanted:
        if description is None:
            continue
        parts = split_description(description)
        if parts[0].lower() != "tcp" or len(parts) < 2 or not parts[1].isdigit():
            continue
        options = dict(part.partition("=")[::2] for part in parts[2:])
        host = options.get("interface", "").replace("\\:", ":") or "0.0.0.0"
        if int(parts[1]) != 0:
            found.append(TCPListener(option, address_option, host, int(parts[1])))
    return found


def explain_bind_error(listener: TCPListener, code: int | None, text: str) -> str:
    """The one line for a TCP listener that cannot bind: what, where, the real cause."""
    where = f"cannot listen on {listener.host}:{listener.port} ({listener.option})"
    if code == errno.EADDRINUSE:
        return (
            f"{where}: Address already in use: another program (another hqnlsd?) holds "
            f"that port; stop it, or give this daemon another {listener.option}"
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {listener.host} is not an address of this host (Cannot assign "
            f"requested address); give {listener.address_option} one of this host's "
            "addresses (ip -4 addr lists them)"
        )
    if code == errno.EACCES and listener.port < 1024:
        return (
            f"{where}: Permission denied: ports below 1024 need root or the "
            f"CAP_NET_BIND_SERVICE capability; give another {listener.option}"
        )
    return f"{where}: {text}"


def explain_cannot_listen(config: DaemonConfig, error: CannotListenError) -> str:
    """The one line for a bind that failed after the pre-flight check (a race)."""
    port = error.port
    if isinstance(port, bytes | str):  # a UNIX socket
        path = os.fsdecode(port)
        admin = config.admin_socket is not None and Path(path) == config.admin_socket
        if admin and "lock" in str(error.socketError).lower():
            return _admin_socket_in_use(Path(path))
        option = "--admin-socket" if admin else "--port"
        return f"cannot listen on {path} ({option}): {_strerror(error.socketError)}"
    interface = error.interface or "0.0.0.0"
    listener = next(
        (
            listener
            for listener in tcp_listeners(config)
            if listener.port == port and listener.host in (interface, "0.0.0.0")
        ),
        TCPListener("a listener option", "its interface=", interface, int(port)),
    )
    socket_error = error.socketError
    code = socket_error.errno if isinstance(socket_error, OSError) else None
    return explain_bind_error(listener, code, _strerror(socket_error))


def explain_os_error(config: DaemonConfig, error: OSError) -> str:
    """The one line for another OSError while binding: a UNIX socket's directory or
    lock file (twisted's lock is a symlink: the path is ``filename2``)."""
    raw = error.filename2 if error.filename2 is not None else error.filename
    name = os.fsdecode(raw) if raw is not None else "?"
    path = name.removesuffix(".lock")
    if config.admin_socket is not None and Path(path) == config.admin_socket:
        return f"cannot listen on {path} (--admin-socket): {error.strerror}"
    if path in config.client_listen:
        return f"cannot listen on {path} (--port): {error.strerror}"
    if Path(name) == config.state_dir or config.state_dir in Path(name).parents:
        return f"--state-dir {config.state_dir}: {error.strerror} ({name})"
    return f"{name}: {error.strerror}"


def _strerror(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def _admin_socket_in_use(path: Path) -> str:
    """The one line for an admin socket whose lock another live daemon holds."""
    pid = _lock_holder(path)
    who = "another running hqnlsd" + (f" (pid {pid})" if pid is not None else "")
    return (
        f"--admin-socket {path}: {who} listens on it; stop that daemon, or give this "
        "one its own --state-dir (or --admin-socket)"
    )


def _lock_holder(socket_path: Path) -> int | None:
    """The pid of the live process holding ``socket_path``'s lock (twisted's
    ``wantPID`` lock: a symlink to the pid), or None."""
    try:
        pid = int(os.readlink(f"{socket_path}.lock"))
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def state_dir_locked(state_dir: Path) -> str:
    """The one line for a state directory another daemon is using (with its pid if known)."""
    pid = _lock_holder(state_dir / "admin.sock")
    who = "another running hqnlsd" + (f" (pid {pid})" if pid is not None else "")
    return (
        f"--state-dir {state_dir}: {who} uses this state directory (its database is "
        "locked); stop that daemon, or give this one its own --state-dir"
    )


def preflight(config: DaemonConfig, *, uid: int | None = None) -> None:
    """Before twistd forks: check what an admin can get wrong; StartupError (one line).

    Run by `hqnlsd.tap.makeService`, so that a daemonised ``twistd hqnlsd`` still
    prints the whole line on its terminal (twistd passes a failure after the fork
    through a 100-byte pipe). The state directory is created (0700) if missing, as
    the start would, then checked as `hqnlsd.securefiles` says (``uid``: the user
    the daemon will run as, twistd's ``--uid``; default the effective uid), and
    so is the manhole's keys file; each TCP listener is bound and closed at once,
    as twisted binds (SO_REUSEADDR), so a port in TIME_WAIT is not reported. The
    real binds in ``privilegedStartService`` still explain a failure the same way.
    """
    state = config.state_dir
    if state.exists() and not state.is_dir():
        raise StartupError(f"--state-dir {state}: not a directory (a file of that name is there)")
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(f"--state-dir {state}: cannot create it: {error.strerror}") from None
    _check_files(config, uid)
    problem = _database_problem(state / DATABASE_NAME)
    if problem is not None:
        raise StartupError(problem)
    if config.admin_socket is not None and _lock_holder(config.admin_socket) is not None:
        raise StartupError(_admin_socket_in_use(config.admin_socket))
    for listener in tcp_listeners(config):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((listener.host, listener.port))
            except OSError as error:
                raise StartupError(
                    explain_bind_error(listener, error.errno, _strerror(error))
                ) from None


def _check_files(config: DaemonConfig, uid: int | None) -> None:
    """The state directory, what is in it and the manhole's keys file, as
    `hqnlsd.securefiles` wants them; a readable state directory is logged."""
    try:
        for warning in check_state_dir(config.state_dir, uid=uid):
            _preflight_log.warn("{warning}", warning=warning)
        check_state_entries(config.state_dir, sockets=[config.admin_socket])
        if config.manhole_keys is not None:
            check_trusted_file(config.manhole_keys, uid=uid, what="--manhole-keys")
    except UnsafePathError as error:
        raise StartupError(str(error)) from None
    except OSError as error:
        raise StartupError(f"{error.filename}: {error.strerror}") from None


#: The namespace its warnings always had (it shows in every log line).
_preflight_log = Logger(namespace="hqnlsd.service")


def _database_problem(path: Path) -> str | None:
    """Why the state database cannot be used (another daemon holds it, it is not a
    database), or None (also when it does not exist yet).

    Opened read-only and closed at once, never written: the daemon (maybe another
    user after ``--uid``) creates and owns the file.
    """
    if not path.exists():
        return None
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        message = str(error)
        if "locked" in message or "busy" in message:
            return state_dir_locked(path.parent)
        if "not a database" in message or "malformed" in message:
            return (
                f"--state-dir {path.parent}: {path} is damaged ({message}); restore it from "
                "a backup, or move it away to start with no licences held"
            )
        return None  # the real open says what it is
    finally:
        if db is not None:
            db.close()
    return None
