"""``hqnls``: every command against the real `LicenceServer` over loopback TCP, and a fake.

`hqnls.main` runs in the test's thread (its blocking client on the library's
private reactor thread); the server runs on another reactor thread
(`tests.test_client_real.RealServer`). ``run`` starts real child processes, each
bounded by the child's own exit (the commands are one-line Python programs).
"""

from __future__ import annotations

import io
import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqnlsd.client.blocking import ReactorThread
from hqnlsd.client.testing import FakeLicenceServer
from hqnlsd.tools import hqnls
from tests.client.test_client_real import PRODUCT, WAIT, RealServer, make_real_server, on
from tests.daemons import REPO_ROOT

PRODUCT_ARGS = ["--publisher", PRODUCT[0], "--product", PRODUCT[1], "--version", PRODUCT[2]]


@pytest.fixture(scope="module")
def thread() -> Iterator[ReactorThread]:
    """The reactor thread of this module's servers."""
    running = ReactorThread()
    yield running
    running.stop()


@pytest.fixture
def real(thread: ReactorThread, tmp_path: Path) -> Iterator[RealServer]:
    """A real server with two Widget licences."""
    server = make_real_server(thread, tmp_path)
    yield server
    server.stop()


def hqnls_main(*argv: str) -> tuple[int, str]:
    """Run ``hqnls`` in-process; its exit status and standard output."""
    out = io.StringIO()
    status = hqnls.main(list(argv), out)
    return status, out.getvalue()


def server_args(real: RealServer) -> list[str]:
    """``--server`` for the real server, short timeouts."""
    return ["--server", real.address, "--timeout", "5"]


@pytest.mark.e2e
def test_run_holds_the_licence_while_the_command_runs(
    real: RealServer, tmp_path: Path
) -> None:
    """The command sees its handle, the server lists it as held; exit code passed through."""
    seen = tmp_path / "seen.json"
    child = (
        "import json, os, subprocess, sys\n"
        f"users = subprocess.run([sys.executable, '-m', 'hqnlsd.tools.hqnls', 'users', "
        f"'--json', '--server', {real.address!r}, *{PRODUCT_ARGS!r}], capture_output=True, "
        "text=True, timeout=60).stdout\n"
        f"json.dump({{'handle': os.environ['HQNLS_HANDLE'], 'users': json.loads(users)}}, "
        f"open({str(seen)!r}, 'w'))\n"
        "sys.exit(3)\n"
    )
    status, _ = hqnls_main("run", *server_args(real), *PRODUCT_ARGS, "--",
                           sys.executable, "-c", child)
    assert status == 3
    record = json.loads(seen.read_text())
    assert record["handle"]
    assert len(record["users"]) == 1 and record["users"][0]["type"] == "floating"
    assert real.holders() == []  # released when the command ended


@pytest.mark.e2e
def test_run_without_a_licence_exits_69(real: RealServer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """No licence free: a clear message, exit 69, and the command never runs."""
    holders = []
    for _ in range(2):
        status, handle = hqnls_main("request", "--hold", *server_args(real), *PRODUCT_ARGS)
        assert status == 0
        holders.append(handle.strip())
    marker = tmp_path / "ran"
    status, _ = hqnls_main("run", *server_args(real), *PRODUCT_ARGS, "--",
                           sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert status == hqnls.EX_UNAVAILABLE == 69
    err = capsys.readouterr().err
    assert "no licence for Test Publisher Widget 1.0" in err and "NOLICENCES" in err
    assert not marker.exists()
    assert sorted(real.holders()) == sorted(holders)


def test_run_missing_command_releases(real: RealServer,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A command that does not exist: 127, and the licence is given back."""
    status, _ = hqnls_main("run", *server_args(real), *PRODUCT_ARGS, "--",
                           "/nonexistent/program")
    assert status == 127
    assert "command not found" in capsys.readouterr().err
    assert real.holders() == []


def test_request_hold_and_release(real: RealServer, capsys: pytest.CaptureFixture[str]) -> None:
    """request releases at exit unless --hold; release HANDLE frees it; twice is an error."""
    status, out = hqnls_main("request", *server_args(real), *PRODUCT_ARGS)
    assert status == 0 and out.strip()
    assert real.holders() == []
    status, out = hqnls_main("request", "--hold", "--json", *server_args(real), *PRODUCT_ARGS)
    grant = json.loads(out)
    assert status == 0 and grant["data"] == "7 8" and grant["server"] == real.address
    assert real.holders() == [grant["handle"]]
    status, out = hqnls_main("release", *server_args(real), grant["handle"])
    assert status == 0 and out.strip() == f"released {grant['handle']}"
    assert real.holders() == []
    status, _ = hqnls_main("release", *server_args(real), grant["handle"])
    assert status == 1
    assert "BADHANDLE" in capsys.readouterr().err


def test_users_table_and_json(real: RealServer) -> None:
    """users prints an aligned table (or JSON) of the holders."""
    status, out = hqnls_main("users", *server_args(real), *PRODUCT_ARGS)
    assert status == 0 and out.strip() == "no licences of Test Publisher Widget 1.0 are held"
    status, _ = hqnls_main("request", "--hold", *server_args(real), *PRODUCT_ARGS)
    assert status == 0
    status, out = hqnls_main("users", *server_args(real), *PRODUCT_ARGS)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["INDEX", "TYPE", "USER"]
    assert lines[1].split()[:2] == ["1", "floating"]
    assert lines[0].index("USER") == lines[1].index(lines[1].split()[2])
    status, out = hqnls_main("users", "--json", *server_args(real), *PRODUCT_ARGS)
    assert [record["index"] for record in json.loads(out)] == ["1"]


def test_status_pings_each_server(real: RealServer) -> None:
    """status shows each server's answer to PING; 69 when none answers."""
    status, out = hqnls_main("status", "--server", real.address, "--server", "127.0.0.1:1",
                             "--timeout", "5")
    assert status == 0
    first, second = out.splitlines()
    assert first.startswith(real.address) and "OK pong" in first
    assert second.startswith("127.0.0.1:1") and "unreachable: connection refused" in second
    status, out = hqnls_main("status", "--json", "--server", "127.0.0.1:1", "--timeout", "5")
    assert status == 69 and json.loads(out)[0]["problem"]


@pytest.mark.e2e
def test_trust_rejects_a_fake_server(thread: ReactorThread, real: RealServer,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--trust PUB: a server that cannot sign is reported as not genuine, exit 69."""
    fake = FakeLicenceServer(publisher=PRODUCT[0], product=PRODUCT[1], version=PRODUCT[2])
    port = on(thread, lambda: fake.listen(thread.reactor, "127.0.0.1"))
    try:
        pub = next(real.publisher.keys_dir.glob("*.pub"))
        status, _ = hqnls_main("run", "--trust", str(pub), "--server",
                               f"127.0.0.1:{port.getHost().port}", "--timeout", "5",
                               *PRODUCT_ARGS, "--", sys.executable, "-c", "pass")
        assert status == 69
        err = capsys.readouterr().err
        assert "NOT GENUINE" in err and "did not sign" in err
        assert fake.verbs() == ["REQUEST", "RELEASE"]  # its grant given back (issue 12)
        assert fake.holders == {}
    finally:
        thread.call(port.stopListening, WAIT)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing command after -- or a bad --server is a usage error (2)."""
    status, _ = hqnls_main("run", "--server", "127.0.0.1:1", *PRODUCT_ARGS)
    assert status == 2 and "needs a command" in capsys.readouterr().err
    status, _ = hqnls_main("status", "--server", "bad host")
    assert status == 2
    assert hqnls_main("frobnicate")[0] == 2


@pytest.mark.e2e
def test_console_script_module(real: RealServer) -> None:
    """``python -m hqnlsd.tools.hqnls run`` works as a real process, exit code passed on."""
    done = subprocess.run(
        [sys.executable, "-m", "hqnlsd.tools.hqnls", "run", *server_args(real), *PRODUCT_ARGS,
         "--", sys.executable, "-c", "import os, sys; sys.exit(len(os.environ['HQNLS_HANDLE']))"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
    )
    assert done.returncode > 0, done.stderr
    assert real.holders() == []


@pytest.mark.e2e
def test_sigterm_is_passed_to_the_command_and_the_licence_released(real: RealServer) -> None:
    """SIGTERM to ``hqnls run`` reaches the command; hqnls exits 143 and releases."""
    child = "import time; print('ready', flush=True); time.sleep(60)"
    process = subprocess.Popen(
        [sys.executable, "-m", "hqnlsd.tools.hqnls", "run", *server_args(real), *PRODUCT_ARGS,
         "--", sys.executable, "-c", child],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "the command did not start in time"
        assert process.stdout.readline().strip() == "ready"
        assert len(real.holders()) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        assert real.holders() == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
