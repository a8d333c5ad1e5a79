"""``hqn_lsa`` name resolution without real daemons: how names parse, which published
sockets are found and trusted, greeting checks against small fake admin services,
and the command line's misuse (``-w``) and ``--help``."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.admin import wire
from hqnlsd.admin.client import AdminClientError
from hqnlsd.admin.commands import UsageError
from hqnlsd.admin.service import RuntimeDirError, check_runtime_dir, prepare_runtime_dir
from hqnlsd.config import client_port, default_runtime_dir, runtime_socket_name
from hqnlsd.tools import lsa

#: Bound on every fake service's wait (seconds).
IO_TIMEOUT = 5.0


class FakeDaemon:
    """A UNIX socket that greets as an hqnlsd admin service at ``address``/``port``,
    answers every request with an empty OK and records the requests it got."""

    def __init__(self, path: Path, address: str, port: int | None) -> None:
        self.path = path
        self.greeting = {
            "hello": wire.HELLO,
            "versions": list(wire.SUPPORTED_VERSIONS),
            "address": address,
            "port": port,
        }
        self.requests: list[dict[str, Any]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # One thread a connection, as the daemon serves several at once.
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT)
            buffer = b""
            try:
                conn.sendall(wire.encode(wire.ok(self.greeting)))
                while chunk := conn.recv(65536):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, _, buffer = buffer.partition(b"\n")
                        message = wire.decode(line)
                        self.requests.append(message)
                        conn.sendall(wire.encode(wire.ok({"fake": True}, message.get("id"))))
            except OSError:
                pass

    def close(self) -> None:
        """Stop serving (bounded) and close the listener."""
        self.stopping.set()
        self.thread.join(IO_TIMEOUT)
        self.listener.close()


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty runtime directory (0700) that hqn_lsa uses; no HQN_LSA_SOCKET."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv(lsa.RUNTIME_ENV, str(directory))
    monkeypatch.delenv(lsa.SOCKET_ENV, raising=False)
    yield directory


@pytest.fixture
def fakes() -> Iterator[list[FakeDaemon]]:
    """Fake daemons started by a test, all closed afterwards."""
    started: list[FakeDaemon] = []
    yield started
    for fake in started:
        fake.close()


def fake(fakes: list[FakeDaemon], path: Path, address: str, port: int | None) -> FakeDaemon:
    """Start a fake daemon at ``path`` (closed by the ``fakes`` fixture)."""
    daemon = FakeDaemon(path, address, port)
    fakes.append(daemon)
    return daemon


def hosts(tmp_path: Path) -> Path:
    """A hosts file with hqnserver1..3 on 127.0.0.1..3."""
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost hqnserver1\n127.0.0.2 hqnserver2\n127.0.0.3 hqnserver3\n")
    return path


def run(*argv: str) -> tuple[int, str, str]:
    """hqn_lsa's main in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = lsa.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# -- names --------------------------------------------------------------------------


def test_parse_name_forms() -> None:
    """N is hqnserverN; HOST:PORT; anything else a host name or address."""
    assert lsa.parse_name("1") == ("hqnserver1", "hqnserver1", None)
    assert lsa.parse_name("12") == ("hqnserver12", "hqnserver12", None)
    assert lsa.parse_name("hqnserver2") == ("hqnserver2", "hqnserver2", None)
    assert lsa.parse_name("10.0.0.1") == ("10.0.0.1", "10.0.0.1", None)
    assert lsa.parse_name("box:1236") == ("box:1236", "box", 1236)
    for bad in ("0", ":1236", "box:", "box:x", "box:70000", "box:0"):
        with pytest.raises(UsageError):
            lsa.parse_name(bad)


def test_runtime_socket_names_and_client_port() -> None:
    """A daemon publishes ADDRESS:PORT.sock (ADDRESS.sock without a TCP client port)."""
    assert runtime_socket_name("127.0.0.1", 1236) == "127.0.0.1:1236.sock"
    assert runtime_socket_name("127.0.0.1", None) == "127.0.0.1.sock"
    assert client_port("tcp:1236:interface=127.0.0.1") == 1236
    assert client_port("unix:/tmp/x") is None


def test_default_runtime_dir() -> None:
    """root: /run/hqnlsd; a service user: systemd's $RUNTIME_DIRECTORY; a user:
    $XDG_RUNTIME_DIR/hqnlsd, else /tmp/hqnlsd-UID."""
    assert default_runtime_dir({}, 0) == Path("/run/hqnlsd")
    assert default_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/5"}, 5) == Path("/run/user/5/hqnlsd")
    assert default_runtime_dir({}, 5) == Path("/tmp/hqnlsd-5")
    service = {"RUNTIME_DIRECTORY": "/run/hqnlsd", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert default_runtime_dir(service, 5) == Path("/run/hqnlsd")


def test_is_local_address() -> None:
    """Loopback and this machine's addresses are local; TEST-NET is not."""
    assert lsa.is_local_address("127.0.0.5")
    assert not lsa.is_local_address("192.0.2.1")


# -- the runtime directory ---------------------------------------------------------


def test_published_sockets_match_exactly(runtime: Path, fakes: list[FakeDaemon]) -> None:
    """Only sockets named for that address (and port): not 127.0.0.10 for 127.0.0.1,
    not a plain file, not a symlink to a socket elsewhere."""
    fake(fakes, runtime / "127.0.0.1:1236.sock", "127.0.0.1", 1236)
    fake(fakes, runtime / "127.0.0.10:1236.sock", "127.0.0.10", 1236)
    fake(fakes, runtime / "127.0.0.1.sock", "127.0.0.1", None)
    (runtime / "127.0.0.1:99.sock").write_text("not a socket")
    elsewhere = fake(fakes, runtime.parent / "elsewhere.sock", "127.0.0.1", 7)
    (runtime / "127.0.0.1:7.sock").symlink_to(elsewhere.path)
    owner = os.geteuid()
    found = lsa.published_sockets(runtime, owner, "127.0.0.1")
    assert [(path.name, port) for path, _, port in found] == [
        ("127.0.0.1.sock", None),
        ("127.0.0.1:1236.sock", 1236),
    ]
    assert [p.name for p, _, _ in lsa.published_sockets(runtime, owner, "127.0.0.1", 1236)] == [
        "127.0.0.1:1236.sock"
    ]
    assert len(lsa.published_sockets(runtime, owner)) == 3


def test_runtime_dir_trust(tmp_path: Path) -> None:
    """Refused: writable by others, a symlink, missing; another user's unless named."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(AdminClientError, match="lets others"):
        lsa.trusted_runtime_dir(open_dir, explicit=True)
    with pytest.raises(RuntimeDirError, match="lets others"):
        check_runtime_dir(open_dir)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(AdminClientError, match="symlink"):
        lsa.trusted_runtime_dir(link, explicit=True)
    with pytest.raises(RuntimeDirError, match="symlink"):
        check_runtime_dir(link)
    with pytest.raises(AdminClientError, match="does not exist"):
        lsa.trusted_runtime_dir(tmp_path / "missing", explicit=False)
    with pytest.raises(RuntimeDirError, match="lets others"):
        prepare_runtime_dir(open_dir, None)
    made = tmp_path / "made" / "run"
    prepare_runtime_dir(made, None)
    assert os.stat(made).st_mode & 0o777 == 0o700
    grouped = tmp_path / "grouped"
    prepare_runtime_dir(grouped, os.getegid())
    assert os.stat(grouped).st_mode & 0o777 == 0o750
    assert lsa.trusted_runtime_dir(made, explicit=False) == os.geteuid()
    if os.geteuid() == 0:
        # Another user's directory: trusted in a directory only root may change (as
        # systemd's RuntimeDirectory=hqnlsd for a service user), not in one like /tmp.
        os.chown(made, 65534, -1)
        os.chmod(made.parent, 0o755)
        assert lsa.trusted_runtime_dir(made, explicit=False) == 65534
        os.chmod(made.parent, 0o1777)
        with pytest.raises(AdminClientError, match="not by you or root"):
            lsa.trusted_runtime_dir(made, explicit=False)
        assert lsa.trusted_runtime_dir(made, explicit=True) == 65534
        with pytest.raises(RuntimeDirError, match="owned by uid 65534"):
            check_runtime_dir(made)


# -- hqn_lsa against fake daemons -------------------------------------------------


def test_server_number_means_hqnserver_n(runtime: Path, tmp_path: Path) -> None:
    """'server 1' is hqnserver1 of the hosts file, never the address 0.0.0.1."""
    code, _, err = run("--hosts", str(hosts(tmp_path)), "-s", "1", "-lp")
    assert code == 1
    assert "hqnserver1 (127.0.0.1)" in err
    assert "0.0.0.1" not in err


def test_s_reaches_only_the_daemon_at_that_address(
    runtime: Path, tmp_path: Path, fakes: list[FakeDaemon]
) -> None:
    """-s 2 reaches 127.0.0.2's socket; a published socket whose daemon says it is
    elsewhere is refused; HQN_LSA_SOCKET is used only for its own daemon's address."""
    first = fake(fakes, runtime / "127.0.0.1:1236.sock", "127.0.0.1", 1236)
    second = fake(fakes, runtime / "127.0.0.2:1236.sock", "127.0.0.2", 1236)
    liar = fake(fakes, runtime / "127.0.0.3:1236.sock", "127.0.0.1", 1236)
    host_file = str(hosts(tmp_path))
    code, _, err = run("--json", "--hosts", host_file, "-s", "2", "-lg", "exterr-")
    assert code == 0, err
    assert [r["cmd"] for r in second.requests] == ["loglevel"]
    assert first.requests == []
    code, _, err = run("--hosts", host_file, "-s", "hqnserver3", "-lg", "exterr-")
    assert code == 1
    assert "hqnserver3 (127.0.0.3)" in err and "is at 127.0.0.1, not 127.0.0.3" in err
    code, _, err = run(
        "--hosts", host_file, "--socket", str(first.path), "-s", "127.0.0.9", "-lg", "exterr-"
    )
    assert code == 1
    assert "127.0.0.9" in err
    assert first.requests == [] and liar.requests == []
    assert [r["cmd"] for r in second.requests] == ["loglevel"]


def test_several_daemons_on_one_address_need_a_port(
    runtime: Path, tmp_path: Path, fakes: list[FakeDaemon]
) -> None:
    """Two daemons on 127.0.0.1: the address alone is ambiguous (exit 1, nothing sent);
    ADDRESS:PORT picks one; the local host without -s is ambiguous too."""
    one = fake(fakes, runtime / "127.0.0.1:1236.sock", "127.0.0.1", 1236)
    other = fake(fakes, runtime / "127.0.0.1:1240.sock", "127.0.0.1", 1240)
    empty_hosts = tmp_path / "empty-hosts"
    empty_hosts.write_text("")
    code, _, err = run("--hosts", str(empty_hosts), "-s", "127.0.0.1", "-lp")
    assert code == 1
    assert "several daemons on 127.0.0.1 (client ports 1236, 1240)" in err
    code, _, err = run("--hosts", str(empty_hosts), "-lp")
    assert code == 1
    assert "several daemons here" in err
    assert one.requests == [] and other.requests == []
    code, _, err = run("--json", "--hosts", str(empty_hosts), "-s", "127.0.0.1:1240", "-lp")
    assert code == 0, err
    assert one.requests == [] and [r["cmd"] for r in other.requests] == ["listp"]


def test_default_is_the_lowest_hqnserver_that_answers(
    runtime: Path, tmp_path: Path, fakes: list[FakeDaemon]
) -> None:
    """No -s: hqnserver1 has no daemon, so hqnserver2's; the local host comes last."""
    second = fake(fakes, runtime / "127.0.0.2:1236.sock", "127.0.0.2", 1236)
    local = fake(fakes, runtime / "127.0.0.4:1236.sock", "127.0.0.4", 1236)
    code, _, err = run("--json", "--hosts", str(hosts(tmp_path)), "-lp")
    assert code == 0, err
    assert [r["cmd"] for r in second.requests] == ["listp"] and local.requests == []


def test_failed_server_leaves_no_server(
    runtime: Path, tmp_path: Path, fakes: list[FakeDaemon]
) -> None:
    """'server 1 3' with nothing at 3: the later command goes nowhere (exit 1)."""
    first = fake(fakes, runtime / "127.0.0.1:1236.sock", "127.0.0.1", 1236)
    code, _, err = run("--hosts", str(hosts(tmp_path)), "-s", "1", "3", "-lg", "exterr-")
    assert code == 1
    assert "hqnserver3" in err
    assert first.requests == []


def test_wait_below_minimum_is_misuse(runtime: Path, fakes: list[FakeDaemon]) -> None:
    """-w 1: exit 2 and nothing run (the minimum is 2 s)."""
    daemon = fake(fakes, runtime / "127.0.0.1:1236.sock", "127.0.0.1", 1236)
    for value in ("1", "x", "nan", "-3"):
        code, out, err = run("-w", value, "-lp")
        assert code == 2, (value, err)
        assert "-w" in err and out == ""
    assert daemon.requests == []
    with pytest.raises(UsageError):
        lsa.parse_wait(["1.5"])
    assert lsa.parse_wait(["2"]) == 2.0


def test_help_lists_the_global_options() -> None:
    """--help shows -s, -w, -y, --json, --socket, --runtime-dir and the environment."""
    code, out, _ = run("--help")
    assert code == 0
    for option in (
        "-s, -server NAME",
        "-w SECONDS",
        "-y ",
        "--json",
        "--socket PATH",
        "--runtime-dir DIR",
        "HQN_LSA_SOCKET",
        "HQN_LSA_RUNTIME_DIR",
        "listp+|lp+",
    ):
        assert option in out, option


def test_two_names_of_one_daemon_get_each_command_once(
    runtime: Path, tmp_path: Path, fakes: list[FakeDaemon]
) -> None:
    """'server 1 127.0.0.1 hqnserver1 2': two daemons, each asked once."""
    first = fake(fakes, runtime / "127.0.0.1:1236.sock", "127.0.0.1", 1236)
    second = fake(fakes, runtime / "127.0.0.2:1236.sock", "127.0.0.2", 1236)
    code, out, err = run(
        "--json",
        "--hosts",
        str(hosts(tmp_path)),
        "-s",
        "1",
        "127.0.0.1",
        "hqnserver1",
        "2",
        "-lg",
        "exterr-",
    )
    assert code == 0, err + out
    assert [r["cmd"] for r in first.requests] == ["loglevel"]
    assert [r["cmd"] for r in second.requests] == ["loglevel"]
