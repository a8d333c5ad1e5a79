"""Tests of hqnlsd.sdnotify against real UNIX datagram sockets in a temporary directory."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import MultiService, Service
from twisted.logger import ILogObserver, globalLogPublisher

from hqnlsd.sdnotify import SystemdNotifier, sd_notify

RECEIVE_LIMIT = 5.0  # seconds a test waits for a datagram


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temporary directory (a UNIX socket path must fit in 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sdn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket playing systemd, and its NOTIFY_SOCKET value."""
    path = short_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(RECEIVE_LIMIT)
    yield sock, str(path)
    sock.close()


def pending(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on sock, without waiting."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(RECEIVE_LIMIT)
    return out


def capture_warnings() -> tuple[list[dict[str, Any]], ILogObserver]:
    """An observer (to add to the global publisher) collecting hqnlsd.sdnotify events."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "hqnlsd.sdnotify":
            events.append(event)

    return events, cast(ILogObserver, observe)


class TestSdNotify:
    """The sd_notify function."""

    def test_sends_to_a_socket_path(self, listener: tuple[socket.socket, str]) -> None:
        """The state goes, as UTF-8 bytes, to the socket NOTIFY_SOCKET names."""
        sock, path = listener
        assert sd_notify("READY=1\nSTATUS=é", {"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == "READY=1\nSTATUS=é".encode()

    def test_sends_to_an_abstract_socket(self) -> None:
        """A leading @ names a socket in Linux's abstract namespace."""
        name = f"hqnlsd-test-{os.getpid()}-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(RECEIVE_LIMIT)
            assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
            assert sock.recv(4096) == b"STOPPING=1"

    @pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
    def test_no_op_without_systemd(
        self, environ: dict[str, str], listener: tuple[socket.socket, str]
    ) -> None:
        """Unset or empty NOTIFY_SOCKET: nothing is sent anywhere, no error."""
        sock, _ = listener
        assert sd_notify("READY=1", environ) is False
        assert pending(sock) == []

    def test_unreachable_socket_is_logged_not_raised(self, short_dir: Path) -> None:
        """A socket that is gone costs a warning, not the daemon."""
        events, observer = capture_warnings()
        globalLogPublisher.addObserver(observer)
        try:
            sent = sd_notify("READY=1", {"NOTIFY_SOCKET": str(short_dir / "gone")})
        finally:
            globalLogPublisher.removeObserver(observer)
        assert sent is False
        assert len(events) == 1
        assert "cannot notify systemd" in events[0]["log_format"]

    def test_other_address_kinds_are_refused(self) -> None:
        """A relative path (or vsock:, not supported) is logged and ignored."""
        events, observer = capture_warnings()
        globalLogPublisher.addObserver(observer)
        try:
            sent = sd_notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})
        finally:
            globalLogPublisher.removeObserver(observer)
        assert sent is False
        assert len(events) == 1


class _Recorder(Service):
    """A sibling service recording when it started and stopped."""

    def __init__(self, sock: socket.socket, log: list[str]) -> None:
        self.sock = sock
        self.log = log

    def startService(self) -> None:
        """Record the start, and whether systemd had been told anything yet."""
        super().startService()
        self.log.append(f"started, seen {pending(self.sock)}")

    def stopService(self) -> None:
        """Record the stop, and what systemd had been told by then."""
        super().stopService()
        self.log.append(f"stopped, seen {pending(self.sock)}")


class TestSystemdNotifier:
    """The SystemdNotifier service."""

    def test_ready_after_siblings_start_and_stopping_before_they_stop(
        self, listener: tuple[socket.socket, str]
    ) -> None:
        """Added last: READY=1 only once the others have started, STOPPING=1 before
        they stop."""
        sock, path = listener
        log: list[str] = []
        root = MultiService()
        _Recorder(sock, log).setServiceParent(root)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        notifier.setServiceParent(root)
        root.startService()
        assert log == ["started, seen []"]
        assert pending(sock) == [b"READY=1\nSTATUS=serving"]
        root.stopService()
        assert log[1] == "stopped, seen [b'STOPPING=1\\nSTATUS=stopping']"
        assert not notifier.running

    def test_reload_messages(self, listener: tuple[socket.socket, str]) -> None:
        """reloading() sends RELOADING=1 with the monotonic clock, ready() READY=1."""
        sock, path = listener
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading() is True
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = sock.recv(4096).decode().split("\n")
        assert lines[0] == "RELOADING=1"
        assert lines[1].startswith("MONOTONIC_USEC=")
        assert before <= int(lines[1].partition("=")[2]) <= after
        assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"

    def test_silent_outside_systemd(self) -> None:
        """Without NOTIFY_SOCKET the service starts and stops normally, sending nothing."""
        notifier = SystemdNotifier({})
        notifier.startService()
        assert notifier.running
        notifier.stopService()
        assert not notifier.running
        assert notifier.notify("READY=1") is False
