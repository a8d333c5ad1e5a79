"""``hqn_lsa``: inspect and configure running hqnlsd daemons.

Four ways to give commands (the same commands in each):

- options: ``hqn_lsa -sinfo -lg exterr-`` (each ``-COMMAND`` starts a command,
  the words after it are its arguments);
- an interactive prompt with history (no arguments at all);
- standard input: ``hqn_lsa - < commands`` (one command a line, ``#`` comments);
- a file: ``hqn_lsa FILE``.

Servers: ``server NAME ...`` (or ``-server NAME ...``) sends the following
commands to each; without it the first of hqnserver1, hqnserver2, ... (from the
hosts file), then the local host, that answers. The local host (and any
loopback or local address) is reached through the daemon's admin socket, whose
file permissions say who may administer it; another host over mutual TLS with
an admin certificate (``--ca --cert --key``, from ``hqn_ca admin``).

Global options: ``--json`` (one JSON object per answer and line), ``--socket
PATH``, ``--hosts FILE``, ``--tls-port N``, ``--ca/--cert/--key FILE``,
``-w SECONDS`` (reply timeout, 2 or more, default 10), ``-y`` (do not ask
before commands that revoke licences; without a terminal they are refused
unless -y is given).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
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
from hqnlsd.config import DEFAULT_HOSTS_FILE, DEFAULT_STATE_DIR
from hqnlsd.identity import HostsTable, format_unique_id, local_unique_id, rank_of_alias

#: Default reply timeout and its minimum (seconds).
DEFAULT_WAIT = 10.0
MINIMUM_WAIT = 2.0
#: Names meaning "this machine".
LOCAL_NAMES = frozenset({"local", "localhost", "."})
#: Interactive history file (``HQN_LSA_HISTORY`` overrides it).
HISTORY_FILE = "~/.hqn_lsa_history"
PROMPT = "hqn_lsa> "
#: Global options that take a value.
_VALUED = {"--socket", "--hosts", "--tls-port", "--ca", "--cert", "--key"}


class Target:
    """One server to send commands to: a UNIX socket path or a TLS address."""

    def __init__(self, name: str, *, path: Path | None = None, address: str = "", port: int = 0):
        self.name = name
        self.path = path
        self.address = address
        self.port = port

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.name} (socket {self.path})"
        return f"{self.name} ({self.address}:{self.port} TLS)"


class Session:
    """The state of one hqn_lsa run: servers, settings, connections, outcome."""

    def __init__(self, options: dict[str, str], *, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.json = "--json" in options
        self.wait = DEFAULT_WAIT
        self.yes = False
        self.can_ask = False
        self.socket_path = Path(
            options.get("--socket")
            or os.environ.get("HQN_LSA_SOCKET")
            or DEFAULT_STATE_DIR / SOCKET_NAME
        )
        self.hosts_file = Path(options.get("--hosts") or DEFAULT_HOSTS_FILE)
        self.tls_port = int(options.get("--tls-port") or DEFAULT_TLS_PORT)
        self.tls_files = tuple(options.get(name) for name in ("--ca", "--cert", "--key"))
        self.targets: list[Target] | None = None
        self.clients: dict[str, AdminClient] = {}
        self.failures = 0

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

    def _local_addresses(self) -> set[str]:
        try:
            return set(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            return set()

    def resolve(self, name: str) -> Target:
        """The target a server name means (see the module docstring)."""
        if name.startswith("unix:"):
            return Target(name, path=Path(name[5:]))
        if name.startswith("tls:"):
            host, _, port = name[4:].partition(":")
            return Target(name, address=self._address(host), port=int(port or self.tls_port))
        if name.lower() in LOCAL_NAMES:
            return Target("local host", path=self.socket_path)
        address = self._address(name)
        ip = ipaddress.IPv4Address(address)
        if ip.is_loopback or address in self._local_addresses():
            return Target(name, path=self.socket_path)
        return Target(name, address=address, port=self.tls_port)

    def _address(self, name: str) -> str:
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            pass
        try:
            found = HostsTable.load(self.hosts_file).address_of(name)
        except OSError:
            found = None
        if found is not None:
            return str(found)
        try:
            return socket.gethostbyname(name)
        except OSError:
            raise UsageError(f"server {name!r}: unknown host (not in {self.hosts_file})") from None

    def connect(self, target: Target) -> AdminClient:
        """A connection to ``target`` (kept for the next commands)."""
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
        self.clients[key] = client
        return client

    def default_targets(self) -> list[Target]:
        """hqnserver1, hqnserver2, ... then the local host: the first that answers."""
        candidates: list[Target] = []
        try:
            table = HostsTable.load(self.hosts_file)
            ranks = sorted(
                (rank, name) for name in table.names if (rank := rank_of_alias(name)) is not None
            )
            for _, name in ranks:
                candidates.append(self.resolve(name))
        except (OSError, UsageError):
            pass
        candidates.append(Target("local host", path=self.socket_path))
        tried = []
        for target in candidates:
            try:
                self.connect(target)
            except AdminClientError as error:
                tried.append(str(error))
                continue
            return [target]
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
            if len(words) != 1:
                raise UsageError("w SECONDS")
            try:
                value = float(words[0])
            except ValueError:
                raise UsageError(f"-w {words[0]!r}: give a number of seconds") from None
            if value < MINIMUM_WAIT:
                raise UsageError(f"-w {words[0]}: the reply timeout is at least {MINIMUM_WAIT:g} s")
            self.wait = value
            self.close()
        elif name == "y":
            self.yes = True
        elif name == "server":
            if not words:
                shown = ", ".join(map(str, self.targets)) if self.targets else "default search"
                self.say(f"servers: {shown}")
                return
            self.targets = [self.resolve(word) for word in words]

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
                        answer["result"]["who"] = f"server {target.name}"
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
        "commands (hqn_lsa -COMMAND ARGS..., or one a line at the prompt / in a file):\n"
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
    session.say("hqn_lsa: type 'help' for the commands, 'quit' to leave")
    try:
        while True:
            try:
                line = input(PROMPT)
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
