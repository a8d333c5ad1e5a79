"""A harness for end-to-end tests: real ``twistd -n hqnlsd`` daemons on loopback addresses.

What it gives a test:

- `Publisher`: a temporary publisher key pair (``*.key`` + ``*.pub``) and sealing of
  `Permit` values with the library (`hqnlsd.permits.seal`), so tests write real
  sealed permit files;
- `product_permit` / `make_permit`: permit values with test-friendly defaults;
- `DaemonHarness`: one temporary tree per test (publisher keys, a hosts file with
  ``hqnserverN`` aliases, a shared permit directory, a state directory and a log
  file per daemon), a free TCP port per daemon on its own loopback address
  (127.0.0.1, 127.0.0.2, ...), and `Daemon` processes it always kills on exit;
- `LineClient`: a tiny blocking client of the text protocol with a timeout on
  every read.

Use it as a context manager from a fixture::

    @pytest.fixture
    def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
        with DaemonHarness(tmp_path) as harness:
            yield harness

On exit every daemon still running is killed (SIGKILL) and reaped, and the tail
of every daemon's log is printed: pytest shows it only when the test failed.
Every wait is bounded; a daemon that dies or does not answer in time raises
`DaemonError` with its log tail in the message. On Linux the daemons also get
``PR_SET_PDEATHSIG`` so they die with the test runner even if it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import ipaddress
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

from hqnlsd.identity import local_unique_id
from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.permits.seal import PublisherKey, sign_permit, write_key_files
from hqnlsd.protocols import client_side
from hqnlsd.protocols.replies import Err, FieldValue, Ok
from hqnlsd.status import Status
from hqnlsd.tools.ca import certificate_pem, create_ca, issue_member, write_issued

#: The repository root: on the daemons' PYTHONPATH so that twisted/plugins is found.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: How long a daemon may take to answer PING after it is started (seconds): several
#: twistd processes starting at once on a loaded two-core machine take many seconds.
READY_TIMEOUT = 60.0
#: How long a daemon may take to exit after a signal, or a failed start (seconds).
EXIT_TIMEOUT = 60.0
#: Timeout of every client connect and read (seconds): a reply that waits for a
#: commit (fsync, a backup's acknowledgement) can take seconds on a loaded machine.
IO_TIMEOUT = 20.0
#: Log lines shown when something fails.
TAIL_LINES = 60
#: The interval between readiness probes; each pause is a bounded wait on the process.
PROBE_INTERVAL = 0.05


class DaemonError(AssertionError):
    """A daemon did not start, stop or answer as expected; the message has its log tail."""


# -- permits and keys -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Publisher:
    """A temporary publisher: its private key, and the directory of its ``.pub`` file."""

    key: PublisherKey
    keys_dir: Path

    @classmethod
    def create(cls, keys_dir: Path, name: str = "test-publisher") -> Publisher:
        """Write ``NAME.key`` and ``NAME.pub`` into ``keys_dir`` (made if needed)."""
        keys_dir.mkdir(parents=True, exist_ok=True)
        key = PublisherKey.generate()
        write_key_files(keys_dir / name, key)
        return cls(key, keys_dir)

    def seal(self, permit: Permit, *, title: str | None = None) -> str:
        """The sealed permit text of ``permit``."""
        return sign_permit(permit, self.key, title=title)

    def write_permit(self, path: Path, permit: Permit) -> Path:
        """Seal ``permit`` into the file ``path``; returns ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.seal(permit, title=f"test permit {permit.number}"), "utf-8")
        return path


def product_permit(
    product: str = "Widget",
    *,
    publisher: str = "Test Publisher",
    version: str = "1.0",
    policy: int = int(Policy.GRAB),
    node_count: int = 0,
    floating_count: int = 3,
    start: datetime.date = datetime.date(2020, 1, 1),
    expiry: datetime.date = datetime.date(2099, 12, 31),
    update_minutes: int = 5,
    data: tuple[int, ...] = (),
    locked_nodes: tuple[HostId, ...] = (),
) -> ProductPermit:
    """A product permit valid from 2020 to 2099, 3 floating licences unless told otherwise."""
    return ProductPermit(
        publisher=publisher,
        product=product,
        version=version,
        policy=policy,
        node_count=node_count,
        floating_count=floating_count,
        start=start,
        expiry=expiry,
        update_minutes=update_minutes,
        data=data,
        locked_nodes=locked_nodes,
    )


def make_permit(
    servers: Sequence[HostId], products: Iterable[ProductPermit], *, number: int = 1
) -> Permit:
    """A permit for the server domain ``servers``."""
    return Permit(number=number, servers=tuple(servers), products=tuple(products))


def loopback(n: int) -> str:
    """The n-th loopback address used for daemon n (1 -> 127.0.0.1)."""
    if not 1 <= n <= 254:
        raise ValueError(f"daemon number {n} is not in 1..254")
    return f"127.0.0.{n}"


def hosts_file_text(addresses: Sequence[str]) -> str:
    """A hosts file giving ``addresses[i]`` the alias ``hqnserver{i+1}``."""
    lines = ["# hosts file written by tests/daemons.py"]
    for rank, address in enumerate(addresses, start=1):
        names = f"hqnserver{rank}"
        if address == "127.0.0.1":
            names = "localhost " + names
        lines.append(f"{address}\t{names}")
    return "\n".join(lines) + "\n"


#: Ports free_port has handed out in this test run: never handed out twice, so two
#: calls in a row (say --port and --peer-port of one daemon) never get the same one.
_HANDED_OUT: set[int] = set()
_PICK = random.Random()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(address: str) -> int:
    """A TCP port that is free on ``address`` right now, not one handed out before
    in this run, and below the kernel's ephemeral range: a port the kernel picked
    (bind to 0) is one it may also give to an outgoing connection before the
    daemon binds it (the flood tests open thousands), and the daemon then fails
    with "Address already in use"."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = _PICK.randrange(10000, low) if low > 11000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            port = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise AssertionError(f"no fresh TCP port on {address}")


def free_port_on_all(addresses: Sequence[str], *, avoid: Iterable[int] = ()) -> int:
    """A TCP port free on every one of ``addresses`` right now, not one of ``avoid``."""
    avoided = set(avoid)
    for _ in range(50):
        port = free_port(addresses[0])
        if port in avoided:
            continue
        try:
            for address in addresses[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no TCP port free on all of {', '.join(addresses)}")


# -- asking real daemons, and waiting for an answer -----------------------------------

#: Pause between two polls of a daemon in `wait_for` (each poll is a bounded call).
POLL = 0.1


def request_licence(
    daemon: Daemon,
    token: str,
    *,
    publisher: str,
    product: str,
    version: str,
    pid: int = 4242,
    timeout: float = IO_TIMEOUT,
) -> Ok | Err:
    """REQUEST one licence from ``daemon`` with client token ``token`` (one connection)."""
    with daemon.client(timeout=timeout) as client:
        return client.call(
            "REQUEST",
            publisher=publisher,
            product=product,
            version=version,
            user="tester",
            host="testhost",
            pid=pid,
            client=token,
        )


def wait_for(
    what: str, attempt: Callable[[], Ok | Err], done: Callable[[Ok | Err], bool], bound: float
) -> tuple[Ok | Err, float]:
    """Poll ``attempt`` until ``done`` holds for its reply (at most ``bound`` seconds).

    Returns the reply and the seconds it took; AssertionError with the last reply if late.
    """
    started = time.monotonic()
    while True:
        reply = attempt()
        if done(reply):
            return reply, time.monotonic() - started
        if time.monotonic() - started > bound:
            raise AssertionError(f"{what}: not within {bound} s; last reply {reply}")
        time.sleep(POLL)


def is_status(status: Status) -> Callable[[Ok | Err], bool]:
    """A predicate: the reply is an ERR with ``status``."""
    return lambda reply: isinstance(reply, Err) and reply.status is status


def is_grant(reply: Ok | Err) -> bool:
    """The reply is a grant (an OK with a handle)."""
    return isinstance(reply, Ok) and bool(reply.get("handle"))


# -- a blocking line client -------------------------------------------------------------


class LineClient:
    """A blocking client of the text protocol; every connect and read has a timeout."""

    def __init__(self, address: str, port: int, *, timeout: float = IO_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((address, port), timeout=timeout)
        self._buffer = bytearray()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def send_line(self, line: str | bytes) -> None:
        """Send one line (LF added)."""
        data = line.encode("utf-8") if isinstance(line, str) else line
        self.sock.sendall(data + b"\n")

    def read_line(self) -> str:
        """The next reply line, without its line end; raise on timeout or a closed connection."""
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete line within {self.timeout} s")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(
                    f"the server closed the connection (unread: {bytes(self._buffer)!r})"
                )
            self._buffer += chunk
        end = self._buffer.index(b"\n")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line.decode("utf-8").removesuffix("\r")

    def call(self, verb: str, /, **fields: FieldValue) -> Ok | Err:
        """Send a request, read its one-line reply."""
        self.sock.sendall(client_side.format_request(verb, **fields))
        return client_side.parse_reply_line(self.read_line())

    def listing(self, verb: str, /, **fields: FieldValue) -> list[str] | Ok | Err:
        """Send a request whose answer may be a listing: its lines, or a one-line reply."""
        self.sock.sendall(client_side.format_request(verb, **fields))
        first = self.read_line()
        if first.split(" ", 1)[0] in ("OK", "ERR"):
            return client_side.parse_reply_line(first)
        lines: list[str] = []
        text = client_side.unstuff_listing_line(first)
        while text is not None:
            lines.append(text)
            text = client_side.unstuff_listing_line(self.read_line())
        return lines

    def ok(self, verb: str, /, **fields: FieldValue) -> Ok:
        """`call`, insisting on an ``OK`` reply."""
        reply = self.call(verb, **fields)
        if not isinstance(reply, Ok):
            raise AssertionError(f"{verb} {fields}: expected OK, got {reply}")
        return reply

    def ping(self) -> None:
        """PING; raise unless the answer is ``OK pong``."""
        reply = self.call("PING")
        if not (isinstance(reply, Ok) and reply.word == "pong"):
            raise AssertionError(f"PING answered {reply}")


# -- daemon processes -----------------------------------------------------------------


#: Signals held while a daemon process is created (see `Daemon.start`).
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _die_with_parent() -> None:
    """In the child, before exec: take the signals `Daemon.start` held (the mask is
    inherited), and get SIGKILL when the test runner dies (Linux only)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))


def twistd_command() -> list[str]:
    """The ``twistd`` of this interpreter, as a command line prefix."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def daemon_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The daemons' environment: repo root on PYTHONPATH, no HQNPERMITPATH, unbuffered."""
    env = dict(os.environ if base is None else base)
    env.pop("HQNPERMITPATH", None)
    previous = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + previous if previous else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pause(process: subprocess.Popen[bytes]) -> None:
    """Wait PROBE_INTERVAL between two probes, or less if the process exits meanwhile."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=PROBE_INTERVAL)


class Daemon:
    """One ``twistd -n hqnlsd`` process: start it, wait for it, signal it, read its log."""

    def __init__(
        self,
        *,
        name: str,
        address: str,
        port: int,
        workdir: Path,
        state_dir: Path,
        permit_dirs: Sequence[Path],
        publisher_keys: Path,
        hosts_file: Path,
        extra_args: Sequence[str] = (),
        runtime_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.workdir = workdir
        self.state_dir = state_dir
        self.permit_dirs = tuple(permit_dirs)
        self.publisher_keys = publisher_keys
        self.hosts_file = hosts_file
        self.extra_args = tuple(extra_args)
        #: Where the daemon publishes its admin socket (the test's own, never /run/hqnlsd).
        self.runtime_dir = runtime_dir
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def argv(self) -> list[str]:
        """The full command line of the daemon."""
        args = [
            *twistd_command(),
            "-n",
            "--pidfile=",
            "hqnlsd",
            "--address",
            self.address,
            "--port",
            str(self.port),
            "--hosts",
            str(self.hosts_file),
            "--state-dir",
            str(self.state_dir),
            "--publisher-keys",
            str(self.publisher_keys),
        ]
        if self.permit_dirs:
            args += ["-p", ":".join(str(d) for d in self.permit_dirs)]
        if self.runtime_dir is not None:
            args += ["--runtime-dir", str(self.runtime_dir)]
        return args + list(self.extra_args)

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The process id of the running (or last) process."""
        if self.process is None:
            raise DaemonError(f"daemon {self.name} was never started")
        return self.process.pid

    def start(self) -> Daemon:
        """Start the process (appending to its log file); does not wait for it."""
        if self.running:
            raise DaemonError(f"daemon {self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"==== start {self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            # A SIGINT/SIGTERM handler that raises (bench/failover.py's) could
            # otherwise fire inside Popen, after the fork: the child would run on,
            # unrecorded, and `cleanup` would not kill it.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    cwd=self.workdir,
                    env=daemon_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Daemon:
        """Wait until the daemon answers PING on its port; DaemonError if it dies or is late."""
        process = self._process()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            code = process.poll()
            if code is not None:
                raise DaemonError(
                    f"daemon {self.name} exited with status {code} while starting\n"
                    + self.log_tail()
                )
            try:
                with self.client(timeout=min(IO_TIMEOUT, timeout)) as client:
                    client.ping()
                return self
            except (OSError, AssertionError, client_side.ReplyParseError) as error:
                last = error
            if time.monotonic() >= deadline:
                raise DaemonError(
                    f"daemon {self.name} did not answer PING on {self.address}:{self.port} "
                    f"within {timeout} s (last error: {last})\n" + self.log_tail()
                )
            _pause(process)

    def start_and_wait(self, timeout: float = READY_TIMEOUT) -> Daemon:
        """`start`, then `wait_ready`."""
        return self.start().wait_ready(timeout)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the process to exit; its return code (negative: killed by a signal)."""
        process = self._process()
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(
                f"daemon {self.name} (pid {process.pid}) did not exit within {timeout} s\n"
                + self.log_tail()
            ) from None

    def kill(self) -> int:
        """SIGKILL the daemon (as a crash would) and reap it; its return code."""
        return self.signal(signal.SIGKILL)

    def terminate(self, timeout: float = EXIT_TIMEOUT) -> int:
        """SIGTERM the daemon (an orderly stop) and wait for it; its return code."""
        return self.signal(signal.SIGTERM, timeout)

    def signal(self, signum: int, timeout: float = EXIT_TIMEOUT) -> int:
        """Send ``signum`` and wait (bounded) for the exit."""
        process = self._process()
        if process.poll() is None:
            process.send_signal(signum)
        return self.wait_exit(timeout)

    def cleanup(self) -> None:
        """Make sure no process is left: SIGKILL and reap (never raises for a dead one)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        try:
            process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered
            print(f"daemon {self.name} pid {process.pid} survived SIGKILL", file=sys.stderr)

    def client(self, *, timeout: float = IO_TIMEOUT) -> LineClient:
        """A new connection to the daemon's client port."""
        return LineClient(self.address, self.port, timeout=timeout)

    def log_text(self) -> str:
        """Everything the daemon has logged (all its starts)."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of the log, headed by the daemon's name."""
        tail = self.log_text().splitlines()[-lines:]
        return f"---- last {len(tail)} log lines of daemon {self.name} ({self.log_path}):\n" + (
            "\n".join(tail)
        )

    def wait_for_log(
        self, predicate: Callable[[str], bool], *, timeout: float = EXIT_TIMEOUT
    ) -> str:
        """Wait (bounded) until ``predicate(log text)`` holds; the log text."""
        process = self._process()
        deadline = time.monotonic() + timeout
        while True:
            exited = process.poll() is not None
            text = self.log_text()  # read after the poll: an exited daemon's log is complete
            if predicate(text):
                return text
            if exited:
                raise DaemonError(
                    f"daemon {self.name} exited before logging what was expected\n"
                    + self.log_tail()
                )
            if time.monotonic() >= deadline:
                raise DaemonError(
                    f"daemon {self.name}: the expected log lines did not appear within "
                    f"{timeout} s\n" + self.log_tail()
                )
            _pause(process)

    def _process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise DaemonError(f"daemon {self.name} was never started")
        return self.process


class DaemonHarness:
    """The temporary tree of one test and every daemon started in it (see module docstring).

    ``root/keys`` holds the publisher key pair, ``root/permits`` the shared permit
    directory, ``root/hosts`` the hosts file, ``root/run`` the runtime directory
    where every daemon publishes its admin socket, ``root/NAME/`` each daemon's
    state directory (``state``) and log (``NAME.log``).
    """

    def __init__(self, root: Path, *, unique_id: int | None = None) -> None:
        self.root = root
        self.unique_id = local_unique_id() if unique_id is None else unique_id
        self.publisher = Publisher.create(root / "keys")
        self.permit_dir = root / "permits"
        self.permit_dir.mkdir(parents=True, exist_ok=True)
        self.hosts_file = root / "hosts"
        self.runtime_dir = root / "run"
        self.write_hosts([loopback(1)])
        self.daemons: dict[str, Daemon] = {}

    def __enter__(self) -> DaemonHarness:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def host(self, n: int) -> HostId:
        """The `HostId` of daemon number n: its loopback address and this machine's id."""
        return HostId(ipaddress.IPv4Address(loopback(n)), self.unique_id)

    def write_hosts(self, addresses: Sequence[str]) -> Path:
        """(Re)write the hosts file: ``addresses[i]`` gets ``hqnserver{i+1}``."""
        self.hosts_file.write_text(hosts_file_text(addresses), "utf-8")
        return self.hosts_file

    def write_permit(self, permit: Permit, name: str = "test-hqn.permit") -> Path:
        """Seal ``permit`` into the shared permit directory as ``name``."""
        return self.publisher.write_permit(self.permit_dir / name, permit)

    def daemon(
        self,
        name: str,
        *,
        n: int = 1,
        port: int | None = None,
        permit_dirs: Sequence[Path] | None = None,
        extra_args: Sequence[str] = (),
    ) -> Daemon:
        """A daemon (not yet started) on ``127.0.0.n``, with a free port unless given."""
        if name in self.daemons:
            raise ValueError(f"there is already a daemon named {name!r}")
        address = loopback(n)
        workdir = self.root / name
        daemon = Daemon(
            name=name,
            address=address,
            port=free_port(address) if port is None else port,
            workdir=workdir,
            state_dir=workdir / "state",
            permit_dirs=(self.permit_dir,) if permit_dirs is None else permit_dirs,
            publisher_keys=self.publisher.keys_dir,
            hosts_file=self.hosts_file,
            extra_args=extra_args,
            runtime_dir=self.runtime_dir,
        )
        self.daemons[name] = daemon
        return daemon

    def start_all(self, *daemons: Daemon, timeout: float = READY_TIMEOUT) -> None:
        """Start several daemons at once, then wait until each answers (in parallel)."""
        for daemon in daemons:
            daemon.start()
        deadline = time.monotonic() + timeout
        for daemon in daemons:
            daemon.wait_ready(max(deadline - time.monotonic(), PROBE_INTERVAL))

    def close(self) -> None:
        """Kill and reap every daemon still running, then print every log tail."""
        for daemon in self.daemons.values():
            daemon.cleanup()
        for daemon in self.daemons.values():
            if daemon.starts:
                print(daemon.log_tail())


def domain_daemons(
    harness: DaemonHarness,
    size: int,
    products: Iterable[ProductPermit],
    *,
    peer_port: int | None = None,
    peer_dial_port: int | None = None,
    client_port: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[Daemon]:
    """Daemons ``hqnserver1..size`` (not started) on 127.0.0.1..size serving one permit
    whose server domain is all of them.

    Writes the hosts file, the sealed permit, a domain CA (``root/tls/ca.pem``) and a
    member certificate and key for each daemon (`hqnlsd.tools.ca`). Every daemon gets
    ``--peer-port`` (free on every member's address unless given) and, if given,
    ``--peer-dial-port`` (the port it dials its peers on: a proxy's). With
    ``client_port`` every member serves clients on that port (as a real site does,
    so that a client can follow ``TRY_SERVER addr=...``); else each gets a free one.
    """
    addresses = [loopback(n) for n in range(1, size + 1)]
    harness.write_hosts(addresses)
    harness.write_permit(make_permit([harness.host(n) for n in range(1, size + 1)], products))
    tls = harness.root / "tls"
    tls.mkdir(exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca = create_ca(now=now, days=2)
    ca_path = tls / "ca.pem"
    ca_path.write_bytes(certificate_pem(ca.certificate))
    taken = [] if client_port is None else [client_port]
    port = free_port_on_all(addresses, avoid=taken) if peer_port is None else peer_port
    members = []
    for n, address in enumerate(addresses, start=1):
        key_path, cert_path = write_issued(
            issue_member(ca, address, now=now, days=2), tls / f"member-{n}"
        )
        args = [
            "--domain-ca",
            str(ca_path),
            "--domain-cert",
            str(cert_path),
            "--domain-key",
            str(key_path),
            "--peer-port",
            str(port),
        ]
        if peer_dial_port is not None:
            args += ["--peer-dial-port", str(peer_dial_port)]
        members.append(
            harness.daemon(f"hqnserver{n}", n=n, port=client_port, extra_args=[*args, *extra_args])
        )
    return members
