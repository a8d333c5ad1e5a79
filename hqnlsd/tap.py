"""`twistd hqnlsd`: command-line options and the service tree they build."""

from __future__ import annotations

import contextlib
import os
import sys
from types import TracebackType
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from hqnlsd.config import (
    DEFAULT_HOSTS_FILE,
    DEFAULT_PUBLISHER_KEYS,
    DEFAULT_STATE_DIR,
    ConfigError,
    DaemonConfig,
)
from hqnlsd.configfile import config_from

#: Set (to anything but 0) in the environment: a failed start shows its traceback.
TRACEBACK_VARIABLE = "HQNLSD_TRACEBACK"


class Options(usage.Options):
    """Options of `twistd hqnlsd`."""

    synopsis = "[options]"
    longdesc = (
        "Serve licences for the products of the sealed permits found in the permit "
        "path, to applications speaking the hqnlsd text protocol. A failed start is "
        "one line and exit status 1; set HQNLSD_TRACEBACK=1 in the environment to "
        "see its Python traceback as well."
    )
    optFlags = [
        ["domain-log", "f", "Also log server-domain events (adds the DOMAIN log switch)."],
        [
            "no-peer-source-check",
            None,
            "Accept a domain peer whose connection comes from another address than its "
            "certificate's (NAT between members).",
        ],
        [
            "web-tls",
            None,
            "Serve the web console over TLS (the domain certificates; browsers present an "
            "admin certificate of the domain CA).",
        ],
    ]
    optParameters = [
        ["permit-path", "p", None, "Colon-separated directories to search for permits."],
        [
            "config",
            "c",
            None,
            "TOML configuration file (conf/hqnlsd.toml shows every key); "
            "options given on the command line win over it.",
        ],
        [
            "address",
            "a",
            None,
            "IPv4 address of this daemon (domain check, binding) [default: 127.0.0.1].",
        ],
        [
            "port",
            None,
            None,
            "Client listener: a port number or strports description "
            "(default tcp:1236 on --address).",
        ],
        [
            "hosts",
            None,
            None,
            f"Hosts file with the hqnserverN aliases [default: {DEFAULT_HOSTS_FILE}].",
        ],
        ["state-dir", None, None, f"Directory for durable state [default: {DEFAULT_STATE_DIR}]."],
        [
            "publisher-keys",
            None,
            None,
            "Directory of trusted publisher public keys (*.pub) "
            f"[default: {DEFAULT_PUBLISHER_KEYS}].",
        ],
        [
            "manhole",
            None,
            None,
            "SSH manhole listener (strports, e.g. tcp:2222; loopback unless "
            "interface= is given). Off by default.",
        ],
        ["manhole-keys", None, None, "OpenSSH authorized_keys file for the manhole."],
        [
            "server-keys",
            None,
            None,
            "Directory of server keys (hqn_mp servercert) to sign challenge/response replies.",
        ],
        [
            "admin-socket",
            None,
            None,
            "Local admin socket for hqn_lsa [default: STATE_DIR/admin.sock; 'off' for none].",
        ],
        ["admin-socket-mode", None, None, "Octal mode of the admin socket [default: 660]."],
        ["admin-socket-group", None, None, "Group that owns the admin socket."],
        [
            "runtime-dir",
            None,
            None,
            "Directory where the admin socket is also published as ADDRESS:PORT.sock, "
            "so that hqn_lsa -s ADDRESS finds this daemon [default: /run/hqnlsd as root, "
            "else $XDG_RUNTIME_DIR/hqnlsd; 'off' for none].",
        ],
        [
            "admin-tls",
            None,
            None,
            "Remote admin listener over mutual TLS (e.g. tcp:1238; loopback unless "
            "interface= is given; needs --domain-ca/--domain-cert/--domain-key). Off by default.",
        ],
        ["domain-ca", None, None, "Domain CA certificate (PEM), from hqn_ca init."],
        ["domain-cert", None, None, "This daemon's member certificate (PEM), from hqn_ca member."],
        ["domain-key", None, None, "This daemon's member private key (PEM, mode 0600)."],
        [
            "peer-port",
            None,
            None,
            "TCP port of the server-domain peer listener on --address (used with "
            "--domain-ca) [default: 1237].",
        ],
        [
            "peer-dial-port",
            None,
            None,
            "TCP port this daemon dials its domain peers on, when port forwarding or a "
            "proxy between members listens elsewhere [default: --peer-port].",
        ],
        [
            "metrics",
            None,
            None,
            "Prometheus metrics listener (strports, e.g. tcp:9236; "
            "loopback unless interface= is given). Off by default.",
        ],
        [
            "web",
            None,
            None,
            "Web console listener (strports, e.g. tcp:8236; loopback unless interface= "
            "is given, which needs --web-tls). Off by default.",
        ],
    ]

    config: DaemonConfig

    def parseOptions(self, options: Any = None) -> None:
        """Parse; under twistd an error is the reason and a pointer to --help, exit 1.

        twistd would print its whole usage text before the one line that matters.
        Called directly (no twistd ``parent``), a UsageError is raised as usual.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            sys.stderr.write(
                f"hqnlsd: {error}\n(twistd hqnlsd --help lists the options)\n"
            )
            raise SystemExit(1) from None

    def postOptions(self) -> None:
        """Merge the config file under the command line, then validate once into a DaemonConfig."""
        try:
            self.config = config_from(dict(self))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Any) -> IService:
    """Build the daemon's service tree from validated options.

    This runs before twistd forks (daemonised) or starts logging: a start-up
    It also creates twistd's ``--logfile`` 0600 before twistd opens it
    (`hqnlsd.logging.files`). A start-up
    failure found here (`hqnlsd.service.preflight`: the state directory, every TCP
    listener's address and port) is printed whole on stderr as one line, and
    twistd exits with status 1. A failure after the fork (a race, a damaged
    database) is logged as one ``cannot start:`` line and twistd exits with
    status 1, without a traceback unless ``HQNLSD_TRACEBACK=1`` is in the
    environment (`TRACEBACK_VARIABLE`).
    """
    from twisted.internet import reactor

    from hqnlsd.logging.files import prepare_log_file, twistd_log_path
    from hqnlsd.service import StartupError, build_service, preflight

    show_traceback = os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")
    try:
        # twistd's --uid: the user the daemon runs as once it has bound its ports.
        preflight(options.config, uid=_twistd_uid(options))
        service = build_service(options.config, reactor)
    except StartupError as error:
        if show_traceback:
            raise
        sys.stderr.write(f"hqnlsd: cannot start: {error}\n")
        raise SystemExit(1) from None
    if not show_traceback:
        _quiet_startup_errors()
    parent = getattr(options, "parent", None)
    log_path = twistd_log_path(parent)
    if log_path is not None:
        prepare_log_file(log_path)
    if parent is not None and not parent.get("nodaemon", True):
        # twistd forks after this and hands a failure to the terminal through a
        # 100-byte pipe: keep the terminal, to tell a failed start whole.
        service.terminal = TerminalReport()  # type: ignore[attr-defined]
    return service


def _twistd_uid(options: Any) -> int | None:
    """The uid twistd switches to (``--uid``), or None (it stays the effective uid)."""
    parent = getattr(options, "parent", None)
    uid = parent.get("uid") if parent is not None else None
    return uid if isinstance(uid, int) else None


class TerminalReport:
    """The stderr a daemonised twistd was started from, kept across its fork until
    the start succeeds (then closed, so that nothing waiting for its end hangs)."""

    def __init__(self) -> None:
        self._fd: int | None = os.dup(2)

    def failed(self, reason: str) -> None:
        """Write the one line of a failed start, then let go."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, f"hqnlsd: cannot start: {reason}\n".encode())
        self.close()

    def close(self) -> None:
        """Let go of the terminal."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _quiet_startup_errors() -> None:
    """No traceback for a StartupError that ends twistd: the service logged its line.

    twistd lets an exception of ``startService`` end the process (status 1) and
    Python prints its traceback; this hook prints nothing for StartupError (other
    exceptions, which are bugs, keep their traceback).
    """
    from hqnlsd.service import StartupError

    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if isinstance(value, StartupError):
            return
        previous(kind, value, traceback)

    sys.excepthook = hook
