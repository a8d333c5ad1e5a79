"""Hostile clients of a live hqnlsd: seeded generators, attackers, and a prober.

Issue 12 asks for a hostile-client suite. This module is its toolbox, shared by
the CI tests (``tests/daemon/test_hostile_*.py``) and the long runs of
``bench/hostile.py``. Everything is seeded (`random.Random(seed)`), so a run can
be repeated exactly.

Generators (pure, no sockets):

- `protocol_line`: one line of the client protocol (SPEC 5): valid verbs with
  mutated keys and values, quoting errors, control characters, huge tokens, bad
  UTF-8, telnet bytes, overlong lines, forged log lines; `protocol_burst` glues
  several into one pipelined write.
- `mutate_permit`: byte flips, truncations, duplications, deletions and
  insertions of a real sealed permit file; `check_mutated_permit` reads one with
  the daemon's own reader and says what is wrong with the result, if anything.
- `admin_line`: one line of the JSON admin protocol (`hqnlsd.admin.wire`):
  wrong types, unknown commands, huge values, deep nesting, bad JSON, bad UTF-8.
  It never asks for a command that would stop or reset the daemon (``down``,
  ``reinit``, ``reread``, ``loglevel``, ``recover``), and gives every other
  state-changing command arguments of the wrong type only.
- Peer messages: `tests.peerfuzz` (issue 10) generates them; `peer_messages`
  here only drives it.

Attackers (blocking sockets with bounded waits, from 127.0.0.x sources other
than 127.0.0.1, so that a per-address limit never counts the prober's
connections): `protocol_lines`, `bad_lines`, `idle_flood`, `silent_clients`,
`slow_clients`, `never_reading`, `admin_messages`, `mutated_permits`,
`peer_messages`. Each returns an `AttackResult` (inputs tried, figures).

`Target` is the daemon under attack: one real ``twistd -n hqnlsd`` on 127.0.0.1
(hqnserver1 of a three-member domain whose other members are never started, so
that it has a peer listener and admin TLS), with a metrics listener and a
single-host product ``Probe`` that it serves alone. `Prober` is a thread that,
every few seconds, takes and releases a ``Probe`` licence with the client
library (`hqnlsd.client.BlockingLicenceClient`) from a fresh connection, and
asks ``sinfo`` through the local admin socket with hqn_lsa's client
(`hqnlsd.admin.client.AdminClient`); `Monitor` samples the daemon's RSS,
descriptors and log size from /proc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import random
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hqnlsd.admin.client import AdminClient, AdminClientError
from hqnlsd.client import BlockingLicenceClient, ClientError, Retry
from hqnlsd.domain.runtime import domain_id
from hqnlsd.permits.model import Permit
from hqnlsd.permits.reader import read_permit_file
from hqnlsd.permits.seal import TrustedKeys
from tests.daemons import (
    Daemon,
    DaemonHarness,
    domain_daemons,
    free_port,
    make_permit,
    product_permit,
)

# -- limits the daemon should enforce (issue 12) ----------------------------------------
#
#: The timeout (seconds) every listener gets for handshakes and idleness: the
#: ``[limits]`` table of the daemon's configuration file (`limits_toml`).
LISTENER_TIMEOUT = 5.0
#: How long after LISTENER_TIMEOUT a silent connection may still be open (busy machine).
SILENT_GRACE = 15.0
#: Log bytes a flood of bad lines may add (the daemon summarises repeated bad input).
LOG_BOUND = 64 * 1024
#: Reply bytes per byte of garbage a client may get back (replies to garbage bounded).
REPLY_AMPLIFICATION = 4
#: Growth of the daemon's resident memory an attack may cause (bytes).
RSS_BOUND = 64 * 1024 * 1024

#: The single-host product the prober takes and releases.
PROBE = ("Test Publisher", "Probe", "1.0")
#: The domain product (never served: the other members never run).
DOMAIN_PRODUCT = ("Test Publisher", "Domain", "1.0")
#: The product of the permit that `mutated_permits` mutates.
MUTANT = ("Test Publisher", "Mutant", "2.0")

#: Source addresses of attackers: 127.0.0.ATTACKER_BASE + k (never the prober's 127.0.0.1).
ATTACKER_BASE = 100


def attacker_source(k: int = 0) -> str:
    """The loopback source address of attacker ``k`` (127.0.0.100, 127.0.0.101, ...)."""
    return f"127.0.0.{ATTACKER_BASE + k % 150}"


# -- generators ----------------------------------------------------------------------

VERBS = ("REQUEST", "UPDATE", "RELEASE", "QUERY", "USERS", "MESSAGE", "PING", "HELP")
KEYS = (
    "publisher", "product", "version", "user", "host", "pid", "client", "handle", "units",
    "hostid", "uid", "group", "challenge", "what", "text", "msg", "data",
)
#: Characters that are wrong in a line: control characters, DEL, quote, backslash, blanks.
NASTY = "\x00\x01\x07\x08\x0b\x0c\x0d\x1b\x7f\"\\ \t=\u2028\u0085\ufeff"


def _token(rng: random.Random) -> str:
    """A value: ordinary, empty, nasty, numeric edge, unicode, or huge (under MAX_LINE)."""
    choices: list[Callable[[], str]] = [
        lambda: rng.choice(("Widget", "Probe", "1.0", "tester", "x")),
        lambda: "",
        lambda: "".join(rng.choice(NASTY + "ab") for _ in range(rng.randrange(1, 12))),
        lambda: str(rng.choice((0, -1, 65535, 65536, 2**31, 2**63, 10**30))),
        lambda: "0x" + "f" * rng.randrange(1, 40),
        lambda: "é€😀" * rng.randrange(1, 20),
        lambda: "A" * rng.choice((200, 500, 900)),
        lambda: '"' + "".join(rng.choice("ab\\\"") for _ in range(rng.randrange(0, 8))),
        lambda: "\\x" + rng.choice(("", "4", "zz", "00")),
        lambda: "\\u" + rng.choice(("", "d800", "dfff", "0000")),
        lambda: "\\U" + rng.choice(("0010ffff", "00110000", "ffffffff")),
    ]
    return rng.choice(choices)()


def _field(rng: random.Random) -> str:
    key = rng.choice((*KEYS, *KEYS, "Publisher", "1key", "k-y", "", "x" * 300))
    value = _token(rng)
    quoted = rng.random() < 0.5
    if quoted:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        value = '"' + (escaped if rng.random() < 0.8 else value) + '"'
    separator = rng.choice(("=", "=", "=", "==", " = ", ""))
    return f"{key}{separator}{value}"


#: The share of generated lines that end the connection: over-long lines, QUIT.
CLOSING_LINES = 0.004


def protocol_line(rng: random.Random) -> bytes:
    """One line of the client protocol (LF-terminated), mostly wrong (module docstring)."""
    verb = rng.choice((*VERBS, *VERBS, "request", "X", "", "GET / HTTP/1.0", "\x00"))
    choices: list[Callable[[], bytes]] = [
        lambda: " ".join([verb, *(_field(rng) for _ in range(rng.randrange(0, 8)))]).encode(
            "utf-8", "surrogatepass"
        ),
        lambda: (verb + " " + _token(rng)).encode("utf-8", "surrogatepass"),
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))).replace(b"\n", b""),
        lambda: b"\xff\xfb\x01\xff\xfd\x03" + verb.encode(),  # telnet negotiation
        lambda: verb.encode() + b' product="' + b"\xc3\x28\xed\xa0\x80\xf5" + b'"',
        lambda: b"REQUEST " + b"A" * rng.choice((900, 1000, 1015)),  # near MAX_LINE_BYTES
        lambda: b'MESSAGE text="line1\\n2026-01-01T00:00:00 granted handle FORGED\\x1b[2J\\x07"',
        lambda: b"USERS " + b" ".join(b"k%d=v" % i for i in range(rng.randrange(50, 170))),
        lambda: b"  \t  " + verb.encode() + b"\r",
        lambda: rng.choice((b"PING", b"HELP", b"HELP REQUEST", b"QUERY what=products")),
    ]
    if rng.random() < CLOSING_LINES:  # the daemon closes the connection after these
        choices = [
            lambda: b"REQUEST " + b"A" * rng.choice((1017, 1024, 1025, 5000, 70_000)),
            lambda: b"QUIT",
            lambda: b"QUIT " + _token(rng).encode("utf-8", "surrogatepass"),
        ]
    line = rng.choice(choices)()
    if line.lstrip().upper().startswith(b"QUIT") and len(choices) > 3:
        line = b"PING" + line.lstrip()[4:]  # QUIT only from the closing choices
    return line.replace(b"\n", b" ") + b"\n"


def protocol_burst(rng: random.Random, count: int) -> list[bytes]:
    """``count`` lines, to be sent pipelined in one write."""
    return [protocol_line(rng) for _ in range(count)]


#: Admin commands the generator may name with well-typed arguments (read only).
ADMIN_READ_ONLY = ("id", "sinfo", "listhqn", "listp", "listu")
#: Admin commands that change state: named only with wrongly typed arguments.
ADMIN_CHANGING = (
    "policy", "crashout", "timeout", "kill", "addnode", "rmnode", "ftol", "ltof", "exhost",
    "unexhost", "adduser", "remuser", "adduacc", "remuacc", "addgacc", "remgacc",
)
#: Never named: they stop or reset the daemon (an admin may; that is no attack).
ADMIN_NEVER = frozenset({"down", "reinit", "reread", "loglevel", "recover"})

_ADMIN_BAD: tuple[object, ...] = (
    None, True, 0, -1, 2**63, 10**300, 1.5e308, "", "x", [], {}, [None], {"a": [1, {"b": None}]},
)


def _admin_bad(rng: random.Random) -> object:
    choices: list[Callable[[], object]] = [
        lambda: rng.choice(_ADMIN_BAD),
        lambda: "x" * rng.choice((1000, 100_000)),
        lambda: ["y"] * rng.choice((10, 10_000)),
        lambda: {str(i): i for i in range(rng.choice((3, 5000)))},
        lambda: "\x00\x1b[31m\n\r\u2028",
    ]
    return rng.choice(choices)()


def _wrong_args(rng: random.Random) -> object:
    """Arguments of a state-changing command: never usable (wrong types throughout)."""
    keys = ("product", "value", "handle", "user", "host", "group", "node", "seconds", "index")
    if rng.random() < 0.2:
        return _admin_bad(rng)  # not even an object (or an empty one)
    wrong: tuple[object, ...] = (
        None, True, 1.5, [], [1, 2], {"index": "one"}, {"x": None}, 10**300,
    )
    return {rng.choice(keys): rng.choice(wrong) for _ in range(rng.randrange(1, 4))}


def admin_line(rng: random.Random) -> bytes:
    """One admin protocol line (LF-terminated), mostly wrong (module docstring)."""

    def request(cmd: object, args: object, **more: object) -> bytes:
        message: dict[str, object] = {"v": 1, "id": rng.randrange(10**6), "cmd": cmd}
        if args is not ...:
            message["args"] = args
        message.update(more)
        return json.dumps(message, separators=(",", ":")).encode()

    choices: list[Callable[[], bytes]] = [
        lambda: request(rng.choice(ADMIN_READ_ONLY), {}),
        lambda: request(rng.choice(ADMIN_READ_ONLY), {"product": _admin_bad(rng)}),
        lambda: request(rng.choice(ADMIN_CHANGING), _wrong_args(rng)),
        lambda: request(_admin_bad(rng), {}),
        lambda: request("nosuch" + str(rng.randrange(100)), {}),
        lambda: request("sinfo", ...),
        lambda: request("sinfo", {}, v=_admin_bad(rng)),
        lambda: request("sinfo", {}, id=_admin_bad(rng)),
        lambda: json.dumps(_admin_bad(rng)).encode(),
        lambda: b"{" * rng.choice((10, 1000, 100_000)),
        lambda: b"[" * rng.choice((10, 1000, 100_000)) + b"]",
        lambda: b'{"v":1,"cmd":"sinfo","args":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        lambda: b'{"v": 1, "cmd": "sinfo", "args": {}, "id": 1' + b"0" * 5000 + b"}",
        lambda: b'{"v": 1e999, "cmd": "sinfo"}',
        lambda: b'{"v": NaN, "cmd": "sinfo", "args": {}}',
        lambda: b'{"v": 1, "cmd": "s\xffinfo", "args": {}}',
        lambda: b'{"v": 1, "cmd": "sinfo", "cmd": "listp", "args": {}}',
        lambda: bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 80))).replace(
            b"\n", b"?"
        ),
        lambda: b"x" * rng.choice((1 << 20, (1 << 20) + 1)),  # at and over MAX_LINE
    ]
    line = rng.choice(choices)()
    line = line.replace(b"\n", b"?")
    if not line.strip():
        line = b"?"  # a blank line gets no answer; every line here gets exactly one
    return line + b"\n"


# -- mutated permits ---------------------------------------------------------------------


def mutate_permit(rng: random.Random, data: bytes) -> bytes:
    """``data`` (a sealed permit file) with one to four random byte-level edits."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        if not out:
            out = bytearray(b"\n")
        kind = rng.choice(("flip", "flip", "byte", "truncate", "duplicate", "delete", "insert",
                           "lines"))
        pos = rng.randrange(len(out))
        if kind == "flip":
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == "byte":
            out[pos] = rng.randrange(256)
        elif kind == "truncate":
            del out[pos:]
        elif kind == "duplicate":
            end = min(len(out), pos + rng.randrange(1, 200))
            out[pos:pos] = out[pos:end] * rng.randrange(1, 4)
        elif kind == "delete":
            del out[pos : pos + rng.randrange(1, 40)]
        elif kind == "insert":
            out[pos:pos] = rng.choice(
                (b"\x00", b"\r", b"\n", b"# x\n", b"\xef\xbb\xbf", b"\xff\xfe", b"9", b" ")
            )
        else:  # swap or duplicate whole lines
            lines = bytes(out).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if rng.random() < 0.5:
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(i, lines[j])
            out = bytearray(b"\n".join(lines))
    return bytes(out)


def check_mutated_permit(path: Path, original: Permit, trusted: TrustedKeys) -> str | None:
    """Read the (mutated) permit file ``path`` as the daemon does; None if the result is
    right, else what is wrong.

    Right: the reader does not raise, and what it returns as valid is what the
    publisher sealed: the whole original permit when it reports no error, else
    at most products of the original (each exactly as sealed) under the
    original's number and servers.
    """
    try:
        result = read_permit_file(path, trusted)
    except Exception as error:  # the reader must never raise
        return f"the reader raised {type(error).__name__}: {error}"
    if result.error is None:
        if result.permit != original:
            return f"read as valid but differs from the sealed permit: {result.permit}"
        return None
    if result.permit is not None:
        if (result.permit.number, result.permit.servers) != (original.number, original.servers):
            return f"kept a permit with another number or servers: {result.permit}"
        strangers = [p for p in result.permit.products if p not in original.products]
        if strangers:
            return f"kept products the publisher never sealed: {strangers}"
    return None


# -- the daemon under attack ------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """The daemon under attack and its listeners (module docstring)."""

    harness: DaemonHarness
    daemon: Daemon
    admin_tls_port: int
    metrics_port: int
    peer_port: int
    domain_key: str
    nofile: int | None

    @property
    def address(self) -> str:
        """The daemon's address (127.0.0.1)."""
        return self.daemon.address

    @property
    def admin_socket(self) -> Path:
        """The local admin socket (hqn_lsa's)."""
        return self.daemon.state_dir / "admin.sock"

    def listeners(self) -> dict[str, int]:
        """Every TCP listener of the daemon by name: its port."""
        return {
            "client": self.daemon.port,
            "admin-tls": self.admin_tls_port,
            "metrics": self.metrics_port,
            "peer": self.peer_port,
        }

    def start(self) -> None:
        """(Re)start the daemon, with the descriptor limit applied, and wait until it serves."""
        self.daemon.start()
        if self.nofile is not None:
            limit_descriptors(self.daemon.pid, self.nofile)
        self.daemon.wait_ready()


def limit_descriptors(pid: int, nofile: int) -> None:
    """Set process ``pid``'s RLIMIT_NOFILE (soft and hard) to ``nofile`` (Linux prlimit)."""
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (nofile, nofile))


def limits_toml(timeout: float) -> str:
    """A configuration file whose ``[limits]`` give every listener ``timeout`` seconds
    for its handshake and for idleness."""
    keys = ("client-idle-timeout", "handshake-timeout", "admin-idle-timeout",
            "metrics-idle-timeout")
    return "[limits]\n" + "".join(f"{key} = {float(timeout)}\n" for key in keys)


def make_target(
    harness: DaemonHarness,
    *,
    nofile: int | None = None,
    timeout: float | None = LISTENER_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> Target:
    """hqnserver1 of a three-member domain (the others never start), with admin TLS, a
    metrics listener and the single-host product `PROBE`; started and serving.

    ``timeout``: every listener's handshake and idle timeout (`limits_toml`); None
    leaves the daemon's defaults."""
    config: list[str] = []
    if timeout is not None:
        path = harness.root / "hostile.toml"
        path.write_text(limits_toml(timeout), "utf-8")
        config = ["--config", str(path)]
    admin_tls_port = free_port("127.0.0.1")
    metrics_port = free_port("127.0.0.1")
    members = domain_daemons(
        harness,
        3,
        [product_permit(DOMAIN_PRODUCT[1], version=DOMAIN_PRODUCT[2])],
        extra_args=[
            "--admin-tls",
            f"tcp:{admin_tls_port}:interface=127.0.0.1",
            "--metrics",
            f"tcp:{metrics_port}:interface=127.0.0.1",
            *config,
            *extra_args,
        ],
    )
    harness.write_permit(
        make_permit(
            [harness.host(1)],
            [product_permit(PROBE[1], version=PROBE[2], floating_count=20)],
            number=2,
        ),
        name="probe-hqn.permit",
    )
    daemon = members[0]
    args = list(daemon.extra_args)
    target = Target(
        harness=harness,
        daemon=daemon,
        admin_tls_port=admin_tls_port,
        metrics_port=metrics_port,
        peer_port=int(args[args.index("--peer-port") + 1]),
        domain_key=domain_id([harness.host(n) for n in (1, 2, 3)]),
        nofile=nofile,
    )
    target.start()
    return target


# -- watching the daemon -------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (bytes; 0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descriptors(pid: int) -> int:
    """How many descriptors process ``pid`` has open (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def log_size(daemon: Daemon) -> int:
    """The size of the daemon's log file (bytes)."""
    try:
        return daemon.log_path.stat().st_size
    except OSError:
        return 0


@dataclasses.dataclass
class ProbeRecord:
    """One round of the prober."""

    at: float
    client_ok: bool
    client_error: str
    client_seconds: float
    admin_ok: bool
    admin_error: str
    admin_seconds: float
    fds: int
    rss: int


class Prober(threading.Thread):
    """Every ``interval`` s: a fresh client takes and releases a `PROBE` licence, and
    ``sinfo`` is asked through the local admin socket; each within ``deadline`` s.

    ``records`` holds every round; `mark` and `since` cut them per attack.
    """

    def __init__(self, target: Target, *, interval: float = 2.0, deadline: float = 10.0) -> None:
        super().__init__(name="hostile-prober", daemon=True)
        self.target = target
        self.interval = interval
        self.deadline = deadline
        self.records: list[ProbeRecord] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._rounds = threading.Condition(self._lock)

    def run(self) -> None:
        """Probe until `stop`."""
        while not self._halt.is_set():
            self.probe_once()
            self._halt.wait(self.interval)

    def probe_once(self) -> ProbeRecord:
        """One round (also usable without the thread); recorded and returned."""
        started = time.monotonic()
        client_ok, client_error = self._client()
        client_seconds = time.monotonic() - started
        started = time.monotonic()
        admin_ok, admin_error = self._admin()
        admin_seconds = time.monotonic() - started
        pid = self.target.daemon.pid
        record = ProbeRecord(
            at=time.monotonic(),
            client_ok=client_ok and client_seconds <= self.deadline,
            client_error=client_error or ("late" if client_seconds > self.deadline else ""),
            client_seconds=client_seconds,
            admin_ok=admin_ok and admin_seconds <= self.deadline,
            admin_error=admin_error or ("late" if admin_seconds > self.deadline else ""),
            admin_seconds=admin_seconds,
            fds=descriptors(pid),
            rss=rss_bytes(pid),
        )
        with self._rounds:
            self.records.append(record)
            self._rounds.notify_all()
        return record

    def _client(self) -> tuple[bool, str]:
        client = BlockingLicenceClient(
            servers=[f"{self.target.address}:{self.target.daemon.port}"],
            environ={},
            timeout=self.deadline / 2,
            retry=Retry(attempts=1, max_redirects=0),
        )
        try:
            licence = client.request(*PROBE)
            licence.release()
            return True, ""
        except (ClientError, OSError, TimeoutError) as error:
            return False, f"{type(error).__name__}: {error}"

    def _admin(self) -> tuple[bool, str]:
        try:
            admin = AdminClient.unix(self.target.admin_socket, timeout=self.deadline)
        except AdminClientError as error:
            return False, str(error)
        try:
            answer = admin.call("sinfo", {})
            return bool(answer.get("ok")), "" if answer.get("ok") else str(answer)
        except AdminClientError as error:
            return False, str(error)
        finally:
            admin.close()

    def wait_rounds(self, count: int, timeout: float) -> None:
        """Wait (bounded) until ``count`` more rounds are recorded."""
        with self._rounds:
            wanted = len(self.records) + count
            self._rounds.wait_for(lambda: len(self.records) >= wanted, timeout)

    def stop(self) -> None:
        """End the thread (bounded wait)."""
        self._halt.set()
        self.join(self.deadline * 3)

    def since(self, start: int) -> list[ProbeRecord]:
        """The rounds recorded after the first ``start``."""
        with self._lock:
            return list(self.records[start:])

    def mark(self) -> int:
        """How many rounds are recorded now (for `since`)."""
        with self._lock:
            return len(self.records)


# -- attacks -------------------------------------------------------------------------------


@dataclasses.dataclass
class AttackResult:
    """What an attack did: inputs tried, and figures of its own (printed as they are)."""

    inputs: int
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)


def raise_own_descriptor_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit);
    the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _connect(address: str, port: int, source: str, timeout: float) -> socket.socket:
    sock = socket.create_connection((address, port), timeout, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Drain(threading.Thread):
    """Reads a socket until EOF (or ``done``): counts reply bytes, keeps the tail.
    The socket must have a short timeout (it is how ``done`` is noticed)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.received = 0
        self.tail = b""
        self.eof = False  # the thread has stopped reading
        self.closed = False  # ... because the server closed (or reset) the connection
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    self.closed = True
                    break
                self.received += len(data)
                self.tail = (self.tail + data)[-256:]
        except OSError:
            self.closed = True
        self.eof = True
        self.done.set()


def _sync(sock: socket.socket, buffer: bytearray, timeout: float) -> bool:
    """Read until an ``OK pong`` reply arrives (True) or the server closes (False)."""
    deadline = time.monotonic() + timeout
    while b"OK pong" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no pong within {timeout} s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except ConnectionError:
            return False
        if not data:
            return False
        buffer += data
    del buffer[: buffer.index(b"OK pong") + 7]
    return True


def protocol_lines(
    target: Target, count: int, seed: int, *, burst: int = 10, timeout: float = 30.0
) -> AttackResult:
    """``count`` fuzzed lines in pipelined bursts, each burst followed by a PING whose
    pong says the daemon handled it; reconnect whenever the daemon closes (QUIT, an
    over-long line, or too many bad lines: what follows in that burst is unread,
    hence the short bursts)."""
    rng = random.Random(seed)
    sent = closes = received = 0
    sock: socket.socket | None = None
    buffer = bytearray()
    try:
        while sent < count:
            if sock is None:
                sock = _connect(target.address, target.daemon.port, attacker_source(1), timeout)
                buffer.clear()
            lines = protocol_burst(rng, min(burst, count - sent))
            sent += len(lines)
            try:
                sock.sendall(b"".join(lines) + b"PING\n")
                before = len(buffer)
                alive = _sync(sock, buffer, timeout)
                received += len(buffer) - before
            except (ConnectionError, BrokenPipeError):
                alive = False
            if not alive:
                closes += 1
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()
    return AttackResult(
        sent,
        {"connections closed by the daemon": closes, "lines per connection": sent // (closes + 1)},
    )


def bad_lines(
    target: Target, count: int, *, line: bytes = b"X", timeout: float = 60.0
) -> AttackResult:
    """``count`` lines of ``X`` on one connection, replies drained meanwhile; then a
    PING. Figures: bytes sent and received, the amplification."""
    sock = _connect(target.address, target.daemon.port, attacker_source(2), timeout)
    sock.settimeout(1.0)  # shared by the drain thread: never changed while it runs
    drain = _Drain(sock)
    drain.start()
    data = (line + b"\n") * count
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        view = memoryview(data)
        while sent < len(data) and not drain.eof and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                sent += sock.send(view[sent : sent + 65536])
        if not drain.eof:
            sock.sendall(b"PING\n")
            while b"OK pong" not in drain.tail and not drain.eof and time.monotonic() < deadline:
                time.sleep(0.05)
    except OSError:
        pass
    finally:
        drain.done.set()
        drain.join(5.0)
        sock.close()
    lines = sent // (len(line) + 1)
    return AttackResult(
        lines,
        {
            "bytes sent": sent,
            "reply bytes": drain.received,
            "amplification": round(drain.received / max(sent, 1), 1),
            "closed by the daemon": drain.closed,
        },
    )


def _open_nonblocking(address: str, port: int, source: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        code = sock.connect_ex((address, port))
    except OSError:
        sock.close()
        return None
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


def _finish_connects(socks: list[socket.socket], timeout: float) -> tuple[list[socket.socket], int]:
    """Wait (bounded) for non-blocking connects; (the connected ones, how many failed)."""
    pending = {s.fileno(): s for s in socks}
    connected: list[socket.socket] = []
    failed = 0
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            sock = pending.pop(fd, None)
            if sock is None:
                continue
            poller.unregister(fd)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected.append(sock)
            else:
                failed += 1
                sock.close()
    for sock in pending.values():
        failed += 1
        sock.close()
    return connected, failed


def _closed_by_peer(sock: socket.socket) -> bool:
    """Has the other end closed (or reset) ``sock``? Never blocks."""
    poller = select.poll()  # not select.select: descriptors may be over 1024
    poller.register(sock, select.POLLIN)
    try:
        if not poller.poll(0):
            return False
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except (ConnectionError, OSError):
        return True


def idle_flood(
    target: Target,
    count: int,
    *,
    port: int | None = None,
    sources: int = 1,
    hold: float = 10.0,
    batch: int = 500,
    connect_timeout: float = 2.0,
) -> AttackResult:
    """Open ``count`` idle connections (from ``sources`` attacker addresses), hold them
    ``hold`` seconds while the prober probes, then close them all."""
    raise_own_descriptor_limit(count + 256)
    port = target.daemon.port if port is None else port
    held: list[socket.socket] = []
    failed = 0
    try:
        for start in range(0, count, batch):
            socks = []
            for k in range(start, min(count, start + batch)):
                sock = _open_nonblocking(target.address, port, attacker_source(10 + k % sources))
                if sock is None:
                    failed += 1
                else:
                    socks.append(sock)
            connected, lost = _finish_connects(socks, connect_timeout)
            held += connected
            failed += lost
        time.sleep(hold)
        closed = sum(_closed_by_peer(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    return AttackResult(
        count,
        {"connected": len(held), "not connected": failed, "closed by the daemon": closed},
    )


def silent_clients(
    target: Target, listener: str, count: int, *, wait: float, poll: float = 0.5
) -> AttackResult:
    """``count`` connections to ``listener`` (a name of `Target.listeners`) that say
    nothing; wait up to ``wait`` s for the daemon to close them all. Figures: how
    many it closed and how long the last one took."""
    port = target.listeners()[listener]
    socks = [_connect(target.address, port, attacker_source(20), 10.0) for _ in range(count)]
    started = time.monotonic()
    open_ = set(socks)
    last = 0.0
    try:
        while open_ and time.monotonic() - started < wait:
            for sock in [s for s in open_ if _closed_by_peer(s)]:
                open_.discard(sock)
                last = time.monotonic() - started
            time.sleep(poll)
    finally:
        for sock in socks:
            sock.close()
    return AttackResult(
        count,
        {
            "closed by the daemon": count - len(open_),
            "still open after": f"{wait:g} s" if open_ else "-",
            "last closed after": f"{last:.1f} s",
        },
    )


def slow_clients(
    target: Target, count: int, *, seconds: float, interval: float = 1.0
) -> AttackResult:
    """``count`` connections that each send a REQUEST one byte every ``interval`` s,
    for ``seconds``. Figures: bytes sent, connections the daemon closed."""
    raise_own_descriptor_limit(count + 256)
    line = b"REQUEST publisher=\"Test Publisher\" product=Probe version=1.0 user=slow " * 4
    socks = [_connect(target.address, target.daemon.port, attacker_source(30), 10.0)
             for _ in range(count)]
    alive = set(socks)
    sent = 0
    started = time.monotonic()
    try:
        position = 0
        while alive and time.monotonic() - started < seconds:
            for sock in list(alive):
                try:
                    sock.send(line[position % len(line) : position % len(line) + 1])
                    sent += 1
                except OSError:
                    alive.discard(sock)
            position += 1
            time.sleep(interval)
        closed = len(socks) - sum(not _closed_by_peer(s) for s in alive)
    finally:
        for sock in socks:
            sock.close()
    return AttackResult(sent, {"connections": count, "closed by the daemon": closed})


def never_reading(
    target: Target, clients: int, lines: int, *, stall: float = 3.0
) -> AttackResult:
    """``clients`` connections that each pipeline up to ``lines`` requests with large
    replies (HELP) and never read; each stops when the daemon has not taken a
    byte for ``stall`` s (it stopped reading: flow control). Figures: lines the
    kernel took."""
    request = b"HELP\nHELP REQUEST\nPING\n"
    per = request.count(b"\n")
    socks = [_connect(target.address, target.daemon.port, attacker_source(40), 10.0)
             for _ in range(clients)]
    taken = 0
    try:
        for sock in socks:
            sock.setblocking(False)
        data = request * (lines // per)
        offsets = dict.fromkeys(socks, 0)
        stalled_since = dict.fromkeys(socks, time.monotonic())
        while offsets:
            for sock in list(offsets):
                try:
                    n = sock.send(data[offsets[sock] : offsets[sock] + 65536])
                except BlockingIOError:
                    n = 0
                except OSError:
                    n = -1
                if n > 0:
                    offsets[sock] += n
                    stalled_since[sock] = time.monotonic()
                if (
                    n < 0
                    or offsets[sock] >= len(data)
                    or time.monotonic() - stalled_since[sock] > stall
                ):
                    taken += data.count(b"\n", 0, max(offsets.pop(sock), 0))
            time.sleep(0.01)
        time.sleep(1.0)  # let the daemon see it all
    finally:
        for sock in socks:
            sock.close()
    return AttackResult(clients * lines, {"lines the daemon's side took": taken})


def admin_messages(target: Target, count: int, seed: int, *, timeout: float = 30.0) -> AttackResult:
    """``count`` generated admin lines through the local admin socket, one answer read
    per line. Figures: answers by error name, connections dropped by the daemon."""
    rng = random.Random(seed)
    errors: dict[str, int] = {}
    drops = sent = 0
    sock: socket.socket | None = None
    buffer = b""

    def read_line() -> bytes | None:
        nonlocal buffer
        assert sock is not None
        while b"\n" not in buffer:
            try:
                data = sock.recv(1 << 16)
            except ConnectionError:
                return None
            if not data:
                return None
            buffer += data
        line, _, buffer = buffer.partition(b"\n")
        return line

    try:
        while sent < count:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(str(target.admin_socket))
                buffer = b""
                if read_line() is None:  # the greeting
                    raise ConnectionError("no admin greeting")
            line = admin_line(rng)
            sent += 1
            try:
                sock.sendall(line)
                answer = read_line()
            except (BrokenPipeError, ConnectionError):
                answer = None
            if answer is None:
                drops += 1
                errors["(connection dropped, no answer)"] = errors.get(
                    "(connection dropped, no answer)", 0
                ) + 1
                sock.close()
                sock = None
                continue
            message = json.loads(answer)
            name = "ok" if message.get("ok") else str(message.get("error"))
            errors[name] = errors.get(name, 0) + 1
            if name == "LINE_TOO_LONG":
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()
    return AttackResult(sent, {"answers": dict(sorted(errors.items())), "dropped": drops})


def mutated_permits(
    target: Target, count: int, seed: int, *, to_daemon: int = 0, workdir: Path
) -> AttackResult:
    """``count`` byte-level mutations of a sealed permit (product `MUTANT`), each read
    with the daemon's reader (`check_mutated_permit`); ``to_daemon`` of them also
    placed in the daemon's permit directory and re-read there (admin ``reread``),
    checking that it offers `MUTANT` only exactly as sealed. Figures: how many
    read as valid, as errors, and the wrong results (must be none)."""
    rng = random.Random(seed)
    harness = target.harness
    original = make_permit(
        [harness.host(1)],
        [product_permit(MUTANT[1], version=MUTANT[2], floating_count=7, data=(1, -2, 3))],
        number=3,
    )
    sealed = harness.publisher.seal(original, title="mutant").encode()
    trusted = TrustedKeys.of(harness.publisher.key.public_key)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "mutant-hqn.permit"
    valid = wrong = 0
    wrongs: list[str] = []
    every = max(1, count // to_daemon) if to_daemon else 0
    placed = harness.permit_dir / "mutant-hqn.permit"
    original_offered = False
    daemon_checks = daemon_wrong = daemon_offered = 0
    try:
        if to_daemon:  # first the sealed file itself: the daemon must offer it as sealed
            placed.write_bytes(sealed)
            original_offered, problem = _daemon_offers_only_sealed(target, original)
            if problem is not None:
                daemon_wrong += 1
                wrongs.append(f"daemon, unmutated: {problem}")
        for i in range(count):
            data = mutate_permit(rng, sealed)
            scratch.write_bytes(data)
            problem = check_mutated_permit(scratch, original, trusted)
            if problem is None:
                valid += read_permit_file(scratch, trusted).error is None
            else:
                wrong += 1
                wrongs.append(problem)
            if every and i % every == 0 and daemon_checks < to_daemon:
                placed.write_bytes(data)
                daemon_checks += 1
                offered, problem = _daemon_offers_only_sealed(target, original)
                daemon_offered += offered
                if problem is not None:
                    daemon_wrong += 1
                    wrongs.append(f"daemon: {problem}")
    finally:
        with contextlib.suppress(OSError):
            placed.unlink()
        if to_daemon:
            with contextlib.suppress(AdminClientError, OSError):
                _admin_call(target, "reread", {})
    return AttackResult(
        count,
        {
            "read as valid (the seals still verify)": valid,
            "rejected": count - valid - wrong,
            "wrong results": wrong,
            "unmutated permit offered by the daemon": original_offered,
            "re-read by the daemon": daemon_checks,
            "offered by the daemon (as sealed)": daemon_offered,
            "wrong offers by the daemon": daemon_wrong,
            "first wrong": wrongs[:3],
        },
    )


def _admin_call(target: Target, command: str, args: dict[str, Any]) -> dict[str, Any]:
    admin = AdminClient.unix(target.admin_socket, timeout=30.0)
    try:
        return admin.call(command, args)
    finally:
        admin.close()


def _daemon_offers_only_sealed(target: Target, original: Permit) -> tuple[bool, str | None]:
    """After ``reread``: (whether the daemon offers `MUTANT`, None if every product it
    lists is one that was sealed, exactly as sealed; else what is wrong)."""
    answer = _admin_call(target, "reread", {})
    if not answer.get("ok"):
        return False, f"reread answered {answer}"
    products = _admin_call(target, "listp", {}).get("result", {}).get("products", [])
    (sealed,) = original.products
    expected = {
        "version": sealed.version,
        "policy": sealed.policy,
        "node_count": sealed.node_count,
        "floating_count": sealed.floating_count,
        "start": sealed.start.isoformat(),
        "expiry": sealed.expiry.isoformat(),
    }
    offered = False
    for product in products:
        name = (product.get("publisher"), product.get("product"))
        if name in (PROBE[:2], DOMAIN_PRODUCT[:2]):
            continue
        if name != MUTANT[:2]:
            return offered, f"offers a product nobody sealed: {product}"
        offered = True
        seen = {key: product.get(key) for key in expected}
        if seen != expected:
            return offered, f"offers {MUTANT[1]} unlike its seal: {seen}"
    return offered, None


def peer_messages(target: Target, count: int, seed: int) -> AttackResult:
    """``count`` lines of `tests.peerfuzz` sent as domain member 3 (its certificate and
    address) to the peer listener, reconnecting whenever the daemon closes the link."""
    from tests.peerfuzz import PeerClient, fuzz_daemon

    def connect() -> PeerClient:
        return PeerClient(
            target.address,
            target.peer_port,
            source="127.0.0.3",
            tls_dir=target.harness.root / "tls",
            member=3,
            domain_id=target.domain_key,
            rank=3,
        )

    stats = fuzz_daemon(connect, target.domain_key, count, seed)
    return AttackResult(stats.sent, {"links": stats.connects, "links closed": stats.closed})


# -- measuring an attack -------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """An attack's outcome as bench/hostile.py prints it."""

    name: str
    inputs: int
    crashes: int
    hangs: int
    probes: int
    client_served: int
    admin_served: int
    rss_before: int
    rss_after: int
    fds_before: int
    fds_max: int
    fds_after: int
    log_bytes: int
    seconds: float
    figures: dict[str, Any]
    failures: list[str]

    @property
    def served_throughout(self) -> bool:
        """Every probe round served both the fresh client and hqn_lsa's client."""
        return self.probes > 0 and self.client_served == self.admin_served == self.probes

    @property
    def rss_growth(self) -> int:
        """Resident memory after minus before (bytes)."""
        return self.rss_after - self.rss_before

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        data = dataclasses.asdict(self)
        data["served_throughout"] = self.served_throughout
        data["rss_growth"] = self.rss_growth
        return data


def run_attack(
    target: Target,
    prober: Prober,
    name: str,
    attack: Callable[[], AttackResult],
    *,
    settle_rounds: int = 1,
) -> Report:
    """Run ``attack`` while ``prober`` probes; measure around it (module docstring).

    A daemon that exits counts as a crash (and is restarted for the next attack);
    a probe round that is not served within the prober's deadline as a hang.
    After the attack ``settle_rounds`` more probe rounds are waited for, so that
    every attack is judged by at least one round after it too.
    """
    pid = target.daemon.pid
    rss_before, fds_before, log_before = rss_bytes(pid), descriptors(pid), log_size(target.daemon)
    mark = prober.mark()
    started = time.monotonic()
    failures: list[str] = []
    try:
        result = attack()
    except Exception as error:  # an attack that breaks is reported, not fatal to the run
        result = AttackResult(0, {"attack failed": f"{type(error).__name__}: {error}"})
    seconds = time.monotonic() - started
    prober.wait_rounds(settle_rounds, prober.deadline * 3 + prober.interval)
    crashed = not target.daemon.running
    rss_after, fds_after = rss_bytes(pid), descriptors(pid)
    log_bytes = log_size(target.daemon) - log_before
    rounds = prober.since(mark)
    for record in rounds:
        if not record.client_ok:
            failures.append(f"client: {record.client_error}")
        if not record.admin_ok:
            failures.append(f"hqn_lsa: {record.admin_error}")
    report = Report(
        name=name,
        inputs=result.inputs,
        crashes=int(crashed),
        hangs=sum(
            (not r.client_ok and r.client_seconds >= prober.deadline / 2)
            or (not r.admin_ok and r.admin_seconds >= prober.deadline)
            for r in rounds
        ),
        probes=len(rounds),
        client_served=sum(r.client_ok for r in rounds),
        admin_served=sum(r.admin_ok for r in rounds),
        rss_before=rss_before,
        rss_after=rss_after,
        fds_before=fds_before,
        fds_max=max([fds_before, fds_after, *(r.fds for r in rounds)]),
        fds_after=fds_after,
        log_bytes=log_bytes,
        seconds=round(seconds, 1),
        figures=result.figures,
        failures=failures[:5],
    )
    if crashed:
        target.start()
    return report


@contextlib.contextmanager
def probing(target: Target, *, interval: float = 2.0, deadline: float = 10.0) -> Iterator[Prober]:
    """A running `Prober` of ``target``, stopped on exit."""
    prober = Prober(target, interval=interval, deadline=deadline)
    prober.start()
    try:
        yield prober
    finally:
        prober.stop()

