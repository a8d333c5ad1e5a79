"""``hqn_lsa``: inspect and configure running hqnlsd daemons.

Four ways to give commands (the same commands in each):

- options: ``hqn_lsa -sinfo -lg exterr-`` (each ``-COMMAND`` starts a command,
  the words after it are its arguments);
- an interactive prompt with history (no arguments at all);
- standard input: ``hqn_lsa - < commands`` (one command a line, ``#`` comments);
- a file: ``hqn_lsa FILE``.

Servers (``-s NAME ...`` / ``server NAME ...``, see `GLOBAL_HELP`): a name is
``N`` (meaning ``hqnserverN``), ``hqnserverN``, a host name, an IPv4 address or
``HOST:PORT`` (PORT: the daemon's client port, to tell apart daemons sharing an
address). Each name reaches exactly that daemon or fails naming it:

- a daemon on this machine is reached through the admin socket it publishes in
  the runtime directory as ``ADDRESS:PORT.sock`` (`hqnlsd.config.runtime_socket_name`),
  and its greeting must name that address (and port);
- an explicit ``--socket PATH`` (or ``HQN_LSA_SOCKET``) is the server when no
  ``-s`` is given, and is used for a name only if its daemon is at that address;
- an address of this machine with no daemon published there fails; any other
  address is reached over mutual TLS with an admin certificate (``--ca --cert
  --key``, from ``hqn_ca admin``), whose certificate must name that address.

Without ``-s``: hqnserver1, hqnserver2, ... (from the hosts file), then the
daemon on the local host, the first that really answers at its address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import socket
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from hqnlsd.admin import commands as catalogue
from hqnlsd.admin.client import AdminClient, AdminClientError
from hqnlsd.admin.commands import (
    Planned,
    UsageError,
    check_lock,
    lock_meaning,
    parse_command,
)
from hqnlsd.admin.render import render
from hqnlsd.admin.service import DEFAULT_TLS_PORT, SOCKET_NAME
from hqnlsd.config import DEFAULT_HOSTS_FILE, DEFAULT_STATE_DIR, default_runtime_dir
from hqnlsd.identity import HostsTable, format_unique_id, local_unique_id, rank_of_alias

#: Default reply timeout and its minimum (seconds).
DEFAULT_WAIT = 10.0
MINIMUM_WAIT = 2.0
#: Names meaning "the daemon on this machine" (``localhost`` is a host name: 127.0.0.1).
LOCAL_NAMES = frozenset({"local", "."})
#: Environment variables: the admin socket to use without -s, the runtime directory.
SOCKET_ENV = "HQN_LSA_SOCKET"
RUNTIME_ENV = "HQN_LSA_RUNTIME_DIR"
#: Interactive history file (``HQN_LSA_HISTORY`` overrides it).
HISTORY_FILE = "~/.hqn_lsa_history"
PROMPT = "hqn_lsa> "
#: Global options that take a value.
_VALUED = {"--socket", "--runtime-dir", "--hosts", "--tls-port", "--ca", "--cert", "--key"}
#: A published admin socket's file name: ``ADDRESS:PORT.sock`` or ``ADDRESS.sock``.
_PUBLISHED = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?\.sock\Z")

GLOBAL_HELP = f"""usage: hqn_lsa [GLOBAL OPTIONS] [-COMMAND [ARGS...] ...] [- | FILE]

No commands: an interactive prompt. '-': commands from standard input, FILE: from
a file (one command a line, no leading dash). Exit status: 0 if every command
succeeded, 1 if one failed, 2 on misuse (nothing is then run).

global options:
  -s, -server NAME ...  the server(s) for the following commands (fan-out if several).
                        NAME: N (= hqnserverN), hqnserverN, a host name, an address,
                        or HOST:PORT (the daemon's client port, when daemons share an
                        address). A name with no daemon behind it fails (exit 1) and
                        nothing is sent anywhere. Default: hqnserver1, 2, ... then the
                        daemon on this host, the first that answers at its address.
  -w SECONDS            how long to wait for a connection or an answer (at least
                        {MINIMUM_WAIT:g}, default {DEFAULT_WAIT:g}).
  -y                    do not ask before commands that revoke licences (without a
                        terminal they are refused unless -y is given).
  --json                one JSON object per answer and line.
  --socket PATH         the admin socket of the daemon to use when no -s is given
                        (with -s, only if it is the daemon named) [env {SOCKET_ENV}].
  --runtime-dir DIR     where daemons publish their admin sockets as ADDRESS:PORT.sock
                        [env {RUNTIME_ENV}; default /run/hqnlsd as root, else
                        $XDG_RUNTIME_DIR/hqnlsd].
  --hosts FILE          hosts file with the hqnserverN aliases [default {DEFAULT_HOSTS_FILE}].
  --ca, --cert, --key FILE
                        remote administration over mutual TLS with an admin
                        certificate (hqn_ca admin); --tls-port N [default {DEFAULT_TLS_PORT}].
environment: {SOCKET_ENV}, {RUNTIME_ENV}, HQN_LSA_HISTORY (the prompt's history file).
"""


class Target:
    """One server to send commands to: a UNIX socket path or a TLS address.

    ``name`` is how the admin named it (``hqnserverN`` for ``N``); ``address``
    and ``port`` (None: any) are the daemon's, checked against its greeting.
    """

    def __init__(
        self,
        name: str,
        *,
        path: Path | None = None,
        address: str = "",
        port: int = 0,
        client_port: int | None = None,
    ):
        self.name = name
        self.path = path
        self.address = address
        self.port = port
        self.client_port = client_port

    @property
    def identity(self) -> str:
        """The daemon behind it: two names of one daemon have one identity."""
        if self.path is not None:
            return f"unix:{os.path.realpath(self.path)}"
        return f"tls:{self.address}:{self.port}"

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.name} (socket {self.path})"
        return f"{self.name} ({self.address}:{self.port} TLS)"


def parse_name(word: str) -> tuple[str, str, int | None]:
    """A server name as (label, host, port): ``N`` is ``hqnserverN``; ``HOST:PORT``.

    UsageError for an empty host, a bad port or ``0``.
    """
    if word.isdigit():
        if int(word) < 1:
            raise UsageError(f"server {word}: hqnserver numbers start at 1")
        return f"hqnserver{int(word)}", f"hqnserver{int(word)}", None
    host, colon, port_text = word.rpartition(":")
    if not colon:
        return word, word, None
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"server {word!r}: give HOST:PORT with a port from 1 to 65535")
    return word, host, int(port_text)


def is_local_address(address: str) -> bool:
    """True if ``address`` is loopback or assigned to this machine (it can be bound)."""
    if ipaddress.IPv4Address(address).is_loopback:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def trusted_runtime_dir(path: Path, *, explicit: bool) -> int:
    """The owner uid of the runtime directory ``path`` if it may be trusted.

    Raise AdminClientError unless it is a real directory (no symlink) that
    neither group nor others may write to; the default directory must also be
    ours or root's, or sit in a directory only root may change (``/run/hqnlsd``
    of a service user: root made it; ``/tmp/hqnlsd-UID`` could be anyone's).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise AdminClientError(
            f"no daemon publishes an admin socket in {path} (the runtime directory does "
            "not exist: is hqnlsd running, with the same --runtime-dir?)"
        ) from None
    except OSError as error:
        raise AdminClientError(f"runtime directory {path}: {error.strerror or error}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise AdminClientError(f"runtime directory {path}: not a directory (or a symlink)")
    if info.st_mode & 0o022:
        raise AdminClientError(
            f"runtime directory {path}: mode {stat.S_IMODE(info.st_mode):03o} lets others "
            "put sockets in it; not trusted"
        )
    if not explicit and info.st_uid not in (0, os.geteuid()) and not _root_only(path.parent):
        raise AdminClientError(
            f"runtime directory {path}: owned by uid {info.st_uid}, not by you or root; "
            "not trusted (name it with --runtime-dir if it is right)"
        )
    return info.st_uid


def _root_only(directory: Path) -> bool:
    """True if only root may create or rename entries in ``directory``."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o022


def published_sockets(
    runtime_dir: Path, owner: int, address: str | None = None, port: int | None = None
) -> list[tuple[Path, str, int | None]]:
    """The admin sockets published in ``runtime_dir``: (path, address, port) each.

    Only sockets (no symlinks, no other files) owned by the directory's owner or
    root; only those of ``address`` (and ``port``) if given, sorted.
    """
    try:
        names = sorted(os.listdir(runtime_dir))
    except OSError as error:
        raise AdminClientError(
            f"runtime directory {runtime_dir}: {error.strerror or error}"
        ) from None
    found = []
    for name in names:
        match = _PUBLISHED.match(name)
        if match is None:
            continue
        entry_address, entry_port = match.group(1), match.group(2)
        number = int(entry_port) if entry_port is not None else None
        if address is not None and entry_address != address:
            continue
        if port is not None and number != port:
            continue
        try:
            info = os.lstat(runtime_dir / name)
        except OSError:
            continue
        if stat.S_ISSOCK(info.st_mode) and info.st_uid in (owner, 0):
            found.append((runtime_dir / name, entry_address, number))
    return found


class Session:
    """The state of one hqn_lsa run: servers, settings, connections, outcome."""

    def __init__(self, options: dict[str, str], *, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.json = "--json" in options
        self.wait = DEFAULT_WAIT
        self.yes = False
        self.can_ask = False
        explicit = options.get("--socket") or os.environ.get(SOCKET_ENV)
        #: The admin socket given with --socket / HQN_LSA_SOCKET (the server without -s).
        self.socket_path: Path | None = Path(explicit) if explicit else None
        runtime = options.get("--runtime-dir") or os.environ.get(RUNTIME_ENV)
        self.runtime_explicit = bool(runtime)
        self.runtime_dir = Path(runtime) if runtime else default_runtime_dir(os.environ)
        self.hosts_file = Path(options.get("--hosts") or DEFAULT_HOSTS_FILE)
        self.tls_port = int(options.get("--tls-port") or DEFAULT_TLS_PORT)
        self.tls_files = tuple(options.get(name) for name in ("--ca", "--cert", "--key"))
        self.targets: list[Target] | None = None
        #: Why the last 'server' failed: later commands go nowhere (never to a default).
        self.target_error: str | None = None
        self.clients: dict[str, AdminClient] = {}
        self.failures = 0
        #: At the prompt: 'server' says what it connected to.
        self.interactive = False

    # -- output -------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Print a result."""
        print(text, file=self.out, flush=True)

    def fail(self, text: str, *, command: str = "", server: str = "") -> None:
        """Report a failed command (stderr, or a JSON line with --json)."""
        self.failures += 1
        if self.json:
            self.emit(
                {
                    "server": server or None,
                    "command": command,
                    "ok": False,
                    "error": "HQN_LSA",
                    "message": text,
                }
            )
        else:
            print(f"hqn_lsa: {text}", file=self.err, flush=True)

    def emit(self, record: dict[str, Any]) -> None:
        """One JSON line."""
        print(json.dumps(record, sort_keys=True), file=self.out, flush=True)

    # -- servers --------------------------------------------------------------------------

    def resolve(self, word: str) -> Target:
        """The daemon a server name means, connected (see the module docstring).

        AdminClientError or UsageError naming ``word`` if no daemon is there;
        nothing is sent to any daemon but the greeting is read.
        """
        if word.startswith("unix:"):
            target = Target(word, path=Path(word[5:]))
            self.connect(target)
            return target
        if word.startswith("tls:"):
            host, _, tls_port = word[4:].partition(":")
            if tls_port and not tls_port.isdigit():
                raise UsageError(f"server {word!r}: give tls:HOST[:PORT]")
            address = self._address(word, host)
            target = Target(word, address=address, port=int(tls_port or self.tls_port))
            self.connect(target)
            return target
        if word.lower() in LOCAL_NAMES:
            return self.local_host()
        label, host, port = parse_name(word)
        return self.locate(label, self._address(label, host), port)

    def _address(self, label: str, host: str) -> str:
        """The IPv4 address of ``host`` (an address, the hosts file, then DNS)."""
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            pass
        try:
            found = HostsTable.load(self.hosts_file).address_of(host)
        except OSError:
            found = None
        if found is not None:
            return str(found)
        if rank_of_alias(host) is not None:
            raise UsageError(f"server {label}: no {host} alias in {self.hosts_file}")
        try:
            return socket.gethostbyname(host)
        except OSError:
            raise UsageError(
                f"server {label!r}: unknown host (not in {self.hosts_file} nor DNS)"
            ) from None

    def locate(self, label: str, address: str, port: int | None) -> Target:
        """The daemon at ``address`` (and client ``port``), connected; or AdminClientError.

        A daemon published in the runtime directory under that address; else the
        --socket daemon if its greeting names that address; else, for an address
        of another machine, TLS. Never another daemon's socket.
        """
        where = f"{address}:{port}" if port is not None else address
        named = label if label == where else f"{label} ({where})"
        live: list[Target] = []
        notes: list[str] = []
        try:
            owner = trusted_runtime_dir(self.runtime_dir, explicit=self.runtime_explicit)
            published = published_sockets(self.runtime_dir, owner, address, port)
        except AdminClientError as error:
            notes.append(str(error))
        else:
            if not published:
                notes.append(
                    f"no daemon publishes an admin socket for {where} in {self.runtime_dir}"
                )
            for path, _, number in published:
                target = Target(label, path=path, address=address, client_port=number)
                try:
                    self.connect(target)
                except AdminClientError as error:
                    notes.append(str(error))
                    continue
                live.append(target)
        if len(live) > 1:
            for target in live:
                self.clients.pop(str(target)).close()
            ports = ", ".join(str(target.client_port) for target in live)
            raise AdminClientError(
                f"{named}: several daemons on {address} (client ports {ports}): "
                f"name one as {address}:PORT"
            )
        if live:
            return live[0]
        if self.socket_path is not None:
            target = Target(label, path=self.socket_path, address=address, client_port=port)
            try:
                self.connect(target)
                return target
            except AdminClientError as error:
                notes.append(str(error))
        if is_local_address(address):
            raise AdminClientError(f"{named}: no hqnlsd daemon there: " + "; ".join(notes))
        target = Target(label, address=address, port=self.tls_port, client_port=port)
        self.connect(target)  # its errors name the target
        return target

    def local_host(self) -> Target:
        """The daemon on this machine: --socket if given, else the one published here."""
        if self.socket_path is not None:
            target = Target("local host", path=self.socket_path)
            self.connect(target)
            return target
        live: list[Target] = []
        try:
            owner = trusted_runtime_dir(self.runtime_dir, explicit=self.runtime_explicit)
            published = published_sockets(self.runtime_dir, owner)
        except AdminClientError as error:
            why, published = str(error), []
        else:
            why = f"no daemon answers on an admin socket in {self.runtime_dir}"
        for path, address, number in published:
            where = f"{address}:{number}" if number is not None else address
            target = Target(where, path=path, address=address, client_port=number)
            try:
                self.connect(target)
            except AdminClientError:
                continue
            live.append(target)
        if not live:
            # A daemon started with --runtime-dir off and the default state directory.
            legacy = DEFAULT_STATE_DIR / SOCKET_NAME
            if legacy.exists():
                target = Target("local host", path=legacy)
                self.connect(target)
                return target
            raise AdminClientError(f"local host: {why}")
        if len(live) > 1:
            for target in live:
                self.clients.pop(str(target)).close()
            raise AdminClientError(
                "local host: several daemons here ("
                + ", ".join(target.name for target in live)
                + "): choose one with -s ADDRESS[:PORT]"
            )
        return live[0]

    def connect(self, target: Target) -> AdminClient:
        """A connection to ``target`` (kept for the next commands), its greeting checked."""
        key = str(target)
        client = self.clients.get(key)
        if client is not None:
            return client
        if target.path is not None:
            client = AdminClient.unix(target.path, timeout=self.wait)
        else:
            ca, cert, key_file = self.tls_files
            if not (ca and cert and key_file):
                raise AdminClientError(
                    f"{target}: remote administration needs --ca, --cert and --key "
                    "(an admin certificate made with hqn_ca admin)"
                )
            client = AdminClient.tls(
                target.address,
                target.port,
                ca=Path(ca),
                cert=Path(cert),
                key=Path(key_file),
                timeout=self.wait,
            )
        # The daemon says where it serves; a socket of another daemon is never used
        # (over TLS the certificate already names the address dialled).
        said_address = client.greeting.get("address")
        said_port = client.greeting.get("port")
        wrong = ""
        if target.path is not None and target.address and said_address != target.address:
            wrong = f"its daemon is at {said_address}, not {target.address}"
        elif target.client_port is not None and said_port != target.client_port:
            wrong = f"its daemon serves clients on port {said_port}, not {target.client_port}"
        if wrong:
            client.close()
            raise AdminClientError(f"{client.label}: {wrong}")
        self.clients[key] = client
        return client

    def default_targets(self) -> list[Target]:
        """hqnserver1, hqnserver2, ... then the local host: the first that answers there.

        With --socket (or HQN_LSA_SOCKET), that socket's daemon.
        """
        if self.socket_path is not None:
            return [self.local_host()]
        tried: list[str] = []
        try:
            table = HostsTable.load(self.hosts_file)
        except OSError as error:
            tried.append(f"hosts file {self.hosts_file}: {error.strerror or error}")
        else:
            for rank, address in table.ranked():
                try:
                    return [self.locate(f"hqnserver{rank}", str(address), None)]
                except (AdminClientError, UsageError) as error:
                    tried.append(str(error))
        try:
            return [self.local_host()]
        except AdminClientError as error:
            tried.append(str(error))
        raise AdminClientError("no server answered:\n  " + "\n  ".join(tried))

    def close(self) -> None:
        """Close every connection."""
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    # -- commands -----------------------------------------------------------------------

    def run_words(self, words: Sequence[str]) -> None:
        """Run one command given as words (a leading dash on its name is allowed)."""
        if not words:
            return
        words = [words[0].lstrip("-"), *words[1:]] if words[0] != "-" else list(words)
        try:
            planned = parse_command(words)
        except UsageError as error:
            self.fail(str(error), command=words[0])
            return
        try:
            self.run(planned)
        except UsageError as error:
            self.fail(str(error), command=planned.command.name)

    def run(self, planned: Planned) -> None:
        """Run one parsed command."""
        command = planned.command
        if command.name == "policy" and planned.args.get("list"):
            # The manual's `policy` alone: the policies and mnemonics, answered here.
            self._show(None, "policies", {"text": catalogue.policy_table()})
            return
        if command.kind == "setting":
            self._setting(planned)
        elif command.kind == "local":
            self._local(planned)
        else:
            self._remote(planned)

    def _setting(self, planned: Planned) -> None:
        name, words = planned.command.name, planned.words
        if name == "w":
            self.wait = parse_wait(words)
            self.close()
        elif name == "y":
            self.yes = True
        elif name == "server":
            self.connect_servers(words)

    def connect_servers(self, words: Sequence[str]) -> None:
        """'server [NAME ...]': connect to each (none: the default); later commands go to all.

        If one name fails, no server is left selected: a later command fails
        rather than going to another daemon than the ones named.
        """
        self.close()
        self.targets = None
        self.target_error = None
        try:
            targets = [self.resolve(word) for word in words] if words else self.default_targets()
        except (AdminClientError, UsageError) as error:
            self.close()
            self.targets = []
            self.target_error = "'" + " ".join(["server", *words]) + "' failed"
            self.fail(str(error), command="server")
            return
        unique: dict[str, Target] = {}
        for target in targets:  # two names of one daemon: it gets each command once
            unique.setdefault(target.identity, target)
        self.targets = list(unique.values())
        kept = {str(target) for target in self.targets}
        for key in [key for key in self.clients if key not in kept]:
            self.clients.pop(key).close()
        if self.interactive and not self.json:
            self.say("connected to " + ", ".join(map(str, self.targets)))

    def prompt(self) -> str:
        """The interactive prompt: the connected server, or how many there are."""
        if not self.targets:
            return PROMPT
        if len(self.targets) == 1:
            return f"hqn_lsa [{self.targets[0].name}]> "
        return f"hqn_lsa [{len(self.targets)} servers]> "

    def _local(self, planned: Planned) -> None:
        name, words = planned.command.name, planned.words
        if name == "help":
            self.say(help_text(words[0] if words else None))
        elif name == "policyword":
            self._show(None, "policyword", lock_meaning(words))
        elif name == "lk":
            checked = check_lock(words)
            if checked["problems"]:
                self.fail("lock string: " + "; ".join(checked["problems"]), command="lk")
            else:
                self._show(None, "lk", checked)
        elif name == "id":
            if not words:
                # The manual: this machine, and the connected server(s).
                self._show(None, "id", {**local_identity(), "who": "this machine"})
                try:
                    targets = self.targets if self.targets is not None else self.default_targets()
                except AdminClientError as error:
                    # No server is no failure here: id is how an admin gets this
                    # machine's unique id before any daemon runs.
                    print(f"hqn_lsa: id: no server connected ({error})", file=self.err)
                    return
                if self.targets is None:
                    self.targets = targets
                for target in targets:
                    try:
                        answer = self.connect(target).call("id", {})
                    except AdminClientError as error:
                        self.fail(str(error), command="id", server=str(target))
                        continue
                    if answer.get("ok") and isinstance(answer.get("result"), dict):
                        # A socket given by path is named by the address its daemon
                        # says it serves (one word: "server 127.0.0.1").
                        said = self.connect(target).greeting.get("address")
                        name = target.name if target.address or not said else str(said)
                        answer["result"]["who"] = f"server {name}"
                    self._answer(target, "id", answer, many=False)
                return
            for word in words:
                target = self.resolve(word)
                try:
                    answer = self.connect(target).call("id", {})
                except AdminClientError as error:
                    self.fail(str(error), command="id", server=str(target))
                    continue
                self._answer(target, "id", answer, many=len(words) > 1)

    def _confirm(self, planned: Planned, targets: Sequence[Target]) -> bool:
        if self.yes or not (planned.command.revokes or planned.command.asks):
            return True
        what = " ".join([planned.command.name, *planned.words])
        where = ", ".join(map(str, targets))
        does = planned.command.asks or "revokes licences"
        if not self.can_ask:
            self.fail(
                f"'{what}' {does} on {where}; there is no terminal to ask for "
                "confirmation: add -y to run it",
                command=planned.command.name,
            )
            return False
        reply = input(f"'{what}' {does} on {where}. Continue? [y/N] ")
        if reply.strip().lower() in ("y", "yes"):
            return True
        self.say("not done")
        return False

    def _remote(self, planned: Planned) -> None:
        if self.target_error is not None:
            self.fail(
                f"no server to send it to: {self.target_error}",
                command=planned.command.name,
            )
            return
        try:
            targets = self.targets if self.targets is not None else self.default_targets()
        except AdminClientError as error:
            self.fail(str(error), command=planned.command.name)
            return
        if self.targets is None:
            self.targets = targets
        if not self._confirm(planned, targets):
            return
        for target in targets:
            # Several items (kill p n n ...): one request each, in order, on each server.
            for args in planned.requests or (planned.args,):
                try:
                    answer = self.connect(target).call(planned.command.request, args)
                except AdminClientError as error:
                    self.clients.pop(str(target), None)
                    self.fail(str(error), command=planned.command.name, server=str(target))
                    break
                name = planned.command.name
                if name == "listp" and "product" in args:
                    name = "listp+"  # listp PRODUCT: the full details of that one
                self._answer(target, name, answer, many=len(targets) > 1)

    def _answer(self, target: Target, name: str, answer: dict[str, Any], *, many: bool) -> None:
        if not answer.get("ok"):
            self.failures += 1
            if self.json:
                self.emit(
                    {
                        "server": str(target),
                        "command": name,
                        "ok": False,
                        "error": answer.get("error"),
                        "message": answer.get("message"),
                    }
                )
            else:
                prefix = f"{target.name}: " if many else ""
                print(
                    f"hqn_lsa: {prefix}{answer.get('error')}: {answer.get('message')}",
                    file=self.err,
                    flush=True,
                )
            return
        self._show(target, name, answer.get("result"), many=many)

    def _show(self, target: Target | None, name: str, result: Any, *, many: bool = False) -> None:
        if self.json:
            self.emit(
                {
                    "server": None if target is None else str(target),
                    "command": name,
                    "ok": True,
                    "result": result,
                }
            )
            return
        text = render(name, result)
        if many and target is not None:
            text = f"== {target} ==\n{text}"
        self.say(text)


def parse_wait(words: Sequence[str]) -> float:
    """The seconds of ``w SECONDS``; UsageError unless one number of at least MINIMUM_WAIT."""
    if len(words) != 1:
        raise UsageError("w SECONDS")
    try:
        value = float(words[0])
    except ValueError:
        raise UsageError(f"-w {words[0]!r}: give a number of seconds") from None
    if not value >= MINIMUM_WAIT or value == float("inf"):
        raise UsageError(f"-w {words[0]}: the wait is at least {MINIMUM_WAIT:g} s")
    return value


def local_identity() -> dict[str, Any]:
    """This machine's address and unique id (``id`` without a host)."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    unique_id = local_unique_id()
    return {
        "address": address,
        "unique_id": unique_id,
        "unique_id_hex": format_unique_id(unique_id),
    }


def help_text(name: str | None = None) -> str:
    """Every command with its usage, or one command's help."""
    if name is not None:
        command = catalogue.find(name.lstrip("-"))
        if command is None:
            return f"no command {name!r}"
        extra = " (asks first unless -y: it revokes licences)" if command.revokes else ""
        if command.asks:
            extra = f" (asks first unless -y: it {command.asks})"
        return f"{command.usage}\n  short name: {command.short}\n  {command.help}{extra}"
    rows = []
    for command in catalogue.COMMANDS:
        names = command.name if command.short == command.name else f"{command.name}|{command.short}"
        rows.append(f"  {names.ljust(14)} {command.usage}")
    return (
        GLOBAL_HELP
        + "\ncommands (hqn_lsa -COMMAND ARGS..., or one a line at the prompt / in a file):\n"
        + "\n".join(rows)
        + "\nPRODUCT is its number in listp, or PUBLISHER PRODUCT. 'help COMMAND' explains one."
    )


def split_options(argv: Sequence[str]) -> tuple[dict[str, str], list[list[str]], str | None]:
    """Global options, the option-mode commands, and the input (``-``, a file or None)."""
    options: dict[str, str] = {}
    commands: list[list[str]] = []
    source: str | None = None
    items = list(argv)
    i = 0
    while i < len(items):
        word = items[i]
        i += 1
        if word == "--json":
            options["--json"] = "1"
        elif word in _VALUED or word.split("=", 1)[0] in _VALUED:
            key, eq, value = word.partition("=")
            if not eq:
                if i >= len(items):
                    raise UsageError(f"{key} needs a value")
                value = items[i]
                i += 1
            options[key] = value
        elif word in ("--help", "-help"):
            commands.append(["help"])
        elif word == "-":
            source = "-"
        elif word.startswith("-") and catalogue.find(word[1:]) is not None:
            commands.append([word[1:]])
        elif commands:
            commands[-1].append(word)
        elif catalogue.find(word) is not None:
            commands.append([word])
        elif source is None and not word.startswith("-"):
            source = word
        else:
            raise UsageError(f"{word!r} is not a command or option; hqn_lsa -help lists them")
    return options, commands, source


def _lines(stream: Iterable[str]) -> Iterable[list[str]]:
    for number, line in enumerate(stream, start=1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise UsageError(f"line {number}: {error}") from None
        if words:
            yield words


def interactive(session: Session) -> None:
    """The prompt, with readline history when available."""
    history = Path(os.path.expanduser(os.environ.get("HQN_LSA_HISTORY", HISTORY_FILE)))
    readline: Any = None
    try:
        import readline as readline_module

        readline = readline_module
        if history.exists():
            readline.read_history_file(str(history))
    except (ImportError, OSError):
        pass
    session.interactive = True
    session.say("hqn_lsa: type 'help' for the commands, 'quit' to leave")
    try:
        while True:
            try:
                line = input(session.prompt())
            except EOFError:
                session.say("")
                break
            try:
                words = shlex.split(line, comments=True)
            except ValueError as error:
                session.fail(str(error))
                continue
            if words and words[0].lstrip("-").lower() in ("quit", "exit", "q"):
                break
            session.run_words(words)
    finally:
        if readline is not None:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(str(history))
            except OSError:
                pass


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run hqn_lsa; exit status 0 if every command succeeded, 1 if one failed, 2 on misuse."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        options, option_commands, source = split_options(args)
        for words in option_commands:  # a bad -w is misuse: exit 2, nothing run
            if catalogue.find(words[0]) is catalogue.find("w"):
                parse_wait(words[1:])
        session = Session(options, out=out, err=err)
    except (UsageError, ValueError) as error:
        print(f"hqn_lsa: {error}", file=err)
        return 2
    try:
        if (
            source is not None
            and option_commands
            and not all(
                (catalogue.find(words[0]) or catalogue.COMMANDS[0]).kind == "setting"
                for words in option_commands
            )
        ):
            print("hqn_lsa: give commands as options or from a file / stdin, not both", file=err)
            return 2
        for words in option_commands:  # settings before a file / stdin, or the commands
            session.run_words(words)
        if source == "-":
            session.can_ask = False
            for words in _lines(sys.stdin):
                session.run_words(words)
        elif source is not None:
            session.can_ask = sys.stdin.isatty()
            try:
                with open(source, encoding="utf-8") as stream:
                    for words in _lines(stream):
                        session.run_words(words)
            except OSError as error:
                session.fail(f"cannot read {source}: {error.strerror or error}")
        elif not option_commands:
            session.can_ask = sys.stdin.isatty()
            interactive(session)
    except UsageError as error:
        session.fail(str(error))
    except KeyboardInterrupt:
        session.fail("interrupted")
    finally:
        session.close()
    return 1 if session.failures else 0


if __name__ == "__main__":
    sys.exit(main())
