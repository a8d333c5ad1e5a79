"""Tests of hqnlsd.manhole: description rules, key files, and real OpenSSH logins.

The end-to-end tests start the manhole on 127.0.0.1 port 0 in the test's (real)
reactor and log in with the system's OpenSSH client (package openssh-client).
Every ssh process has a bounded lifetime and is killed in cleanup.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.internet import defer, error, protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial import unittest

from hqnlsd.manhole import (
    HOST_KEY_NAME,
    AuthorizedKeysFile,
    ManholeError,
    ManholeRealm,
    ManholeShell,
    PlainManholeShell,
    describe_namespace,
    load_or_create_host_key,
    loopback_description,
    make_manhole_service,
    parse_authorized_keys,
    read_authorized_keys,
)

SSH = shutil.which("ssh")
SSH_KEYSCAN = shutil.which("ssh-keyscan")
PROCESS_LIMIT = 30.0  # seconds any ssh process may live


def make_user_key(directory: Path, name: str) -> tuple[Path, bytes]:
    """Write an Ed25519 OpenSSH private key (0600); return its path and public line."""
    private = ed25519.Ed25519PrivateKey.generate()
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return path, public


def write_authorized_keys(path: Path, *lines: bytes) -> None:
    """Write an authorized_keys file with mode 0600."""
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    path.chmod(0o600)


# -- pure rules ------------------------------------------------------------------


class TestLoopbackDescription:
    """Which address the manhole listens on."""

    def test_tcp_without_interface_gets_loopback(self) -> None:
        """A tcp description naming no interface is bound to 127.0.0.1."""
        assert loopback_description("tcp:2222") == "tcp:2222:interface=127.0.0.1"

    def test_bare_port_means_loopback_tcp(self) -> None:
        """A bare port number means TCP on 127.0.0.1."""
        assert loopback_description("2222") == "tcp:2222:interface=127.0.0.1"

    def test_other_options_are_kept(self) -> None:
        """Options other than interface are kept and loopback is still added."""
        assert (
            loopback_description("tcp:port=0:backlog=5")
            == "tcp:port=0:backlog=5:interface=127.0.0.1"
        )

    def test_explicit_interface_is_kept(self) -> None:
        """An explicitly named interface is honoured as written."""
        assert loopback_description("tcp:2222:interface=0.0.0.0") == "tcp:2222:interface=0.0.0.0"

    def test_tcp6_gets_ipv6_loopback(self) -> None:
        """tcp6 without an interface is bound to ::1 (colons escaped for strports)."""
        assert loopback_description("tcp6:2222") == "tcp6:2222:interface=\\:\\:1"

    def test_unix_socket_is_private_by_default(self) -> None:
        """A UNIX socket gets mode 600 unless the description sets a mode."""
        assert loopback_description("unix:/run/m.sock") == "unix:/run/m.sock:mode=600"
        assert loopback_description("unix:/run/m.sock:mode=660") == "unix:/run/m.sock:mode=660"

    @pytest.mark.parametrize(
        "bad", ["", "tcp", "tcp:2222:interface=", "ssl:2222", "systemd:domain=INET:index=0"]
    )
    def test_unsafe_or_incomplete_descriptions_are_refused(self, bad: str) -> None:
        """Endpoint types whose reach cannot be checked, or with no port, are refused."""
        with pytest.raises(ManholeError):
            loopback_description(bad)


class TestAuthorizedKeys:
    """Reading OpenSSH authorized_keys files."""

    def test_parses_keys_and_skips_comments_options_and_junk(self, tmp_path: Path) -> None:
        """Plain key lines count; comments, option lines and junk never do."""
        _, good = make_user_key(tmp_path, "good")
        _, optioned = make_user_key(tmp_path, "optioned")
        data = b"\n".join(
            [
                b"# a comment",
                b"",
                good + b" alice@example",
                b'from="10.0.0.1" ' + optioned,
                b"ssh-ed25519 not-base64!!",
                b"garbage",
            ]
        )
        parsed = parse_authorized_keys(data)
        assert parsed == [keys.Key.fromString(good)]

    def test_group_writable_file_is_refused(self, tmp_path: Path) -> None:
        """A keys file that others may write to authorizes nobody."""
        _, good = make_user_key(tmp_path, "good")
        path = tmp_path / "authorized_keys"
        write_authorized_keys(path, good)
        path.chmod(0o620)
        with pytest.raises(ManholeError, match="writable by group or others"):
            read_authorized_keys(path)
        assert list(AuthorizedKeysFile(path).getAuthorizedKeys(b"anyone")) == []

    def test_missing_file_is_an_error(self, tmp_path: Path) -> None:
        """A missing keys file is a clear error, not an empty list."""
        with pytest.raises(ManholeError, match="cannot read"):
            read_authorized_keys(tmp_path / "absent")

    def test_file_is_read_again_on_every_lookup(self, tmp_path: Path) -> None:
        """Removing a key from the file revokes it without a restart."""
        _, first = make_user_key(tmp_path, "first")
        _, second = make_user_key(tmp_path, "second")
        path = tmp_path / "authorized_keys"
        write_authorized_keys(path, first, second)
        db = AuthorizedKeysFile(path)
        assert len(list(db.getAuthorizedKeys(b"root"))) == 2
        write_authorized_keys(path, second)
        assert list(db.getAuthorizedKeys(b"someone-else")) == [keys.Key.fromString(second)]


def _foreign_owner(path: Path) -> int:
    """Make ``path`` belong to "another user" for the check; the uid the check runs as.

    As root the file is given to uid 54321 and the check runs as root; otherwise the
    check is told it runs as a uid that is neither ours nor root's.
    """
    if os.geteuid() == 0:
        os.chown(path, 54321, -1, follow_symlinks=False)
        return 0
    return os.geteuid() + 1


class TestStrictModes:
    """OpenSSH's StrictModes for the keys file: its owner, its mode, every directory above."""

    def keys_in(self, directory: Path) -> Path:
        """A 0600 authorized_keys file with one good key in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        _, good = make_user_key(directory, "good")
        path = directory / "authorized_keys"
        write_authorized_keys(path, good)
        return path

    def test_world_writable_directory_is_refused(self, tmp_path: Path) -> None:
        """The finding: a directory others may write lets them swap the file: refused."""
        path = self.keys_in(tmp_path / "open")
        os.chmod(path.parent, 0o777)
        with pytest.raises(ManholeError, match=f"{path.parent} is writable by others"):
            read_authorized_keys(path)
        assert list(AuthorizedKeysFile(path).getAuthorizedKeys(b"anyone")) == []

    def test_group_writable_directory_above_is_refused(self, tmp_path: Path) -> None:
        """Any directory on the way up counts, not only the file's own."""
        path = self.keys_in(tmp_path / "top" / "keys")
        os.chmod(tmp_path / "top", 0o770)
        with pytest.raises(ManholeError, match=f"{tmp_path / 'top'} is writable by its group"):
            read_authorized_keys(path)

    def test_sticky_root_owned_directory_is_accepted(self, tmp_path: Path) -> None:
        """/tmp-like (sticky) directories on the way: others cannot replace our entries."""
        path = self.keys_in(tmp_path / "keys")
        assert read_authorized_keys(path)  # tmp_path lies under /tmp (1777, root)

    def test_file_owned_by_another_user_is_refused(self, tmp_path: Path) -> None:
        """A keys file that another user owns (and so may rewrite): refused."""
        path = self.keys_in(tmp_path / "keys")
        uid = _foreign_owner(path)
        with pytest.raises(ManholeError, match="owned by uid"):
            read_authorized_keys(path, uid=uid)

    def test_directory_owned_by_another_user_is_refused(self, tmp_path: Path) -> None:
        """The directory holding the file belongs to another user: refused."""
        path = self.keys_in(tmp_path / "keys")
        uid = _foreign_owner(path.parent)
        if uid == 0:
            os.chown(path, 0, -1)
        else:
            uid_file = os.stat(path).st_uid
            assert uid_file != uid
        with pytest.raises(ManholeError, match="owned by uid"):
            read_authorized_keys(path, uid=uid)

    def test_symlink_into_a_writable_directory_is_refused(self, tmp_path: Path) -> None:
        """A safe-looking link to a file in a writable directory: the real path counts."""
        path = self.keys_in(tmp_path / "open")
        os.chmod(path.parent, 0o777)
        safe = tmp_path / "safe"
        safe.mkdir(mode=0o700)
        (safe / "authorized_keys").symlink_to(path)
        with pytest.raises(ManholeError, match="writable by others"):
            read_authorized_keys(safe / "authorized_keys")


class TestHostKey:
    """The host key: made on first start, private, reused."""

    def test_generated_private_and_reused(self, tmp_path: Path) -> None:
        """The first call writes a 0600 key and its .pub; the second returns the same key."""
        state = tmp_path / "state"
        first = load_or_create_host_key(state)
        path = state / HOST_KEY_NAME
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not first.isPublic()
        pub_line = (state / (HOST_KEY_NAME + ".pub")).read_bytes().split()
        assert keys.Key.fromString(b" ".join(pub_line[:2])) == first.public()
        again = load_or_create_host_key(state)
        assert again == first

    def test_different_state_dirs_get_different_keys(self, tmp_path: Path) -> None:
        """Each install (state directory) gets its own host key."""
        a = load_or_create_host_key(tmp_path / "a")
        b = load_or_create_host_key(tmp_path / "b")
        assert a.public() != b.public()

    def test_readable_key_file_is_refused(self, tmp_path: Path) -> None:
        """A host key readable by others stops the manhole (like sshd's StrictModes)."""
        load_or_create_host_key(tmp_path)
        (tmp_path / HOST_KEY_NAME).chmod(0o644)
        with pytest.raises(ManholeError, match="chmod 600"):
            load_or_create_host_key(tmp_path)

    def test_corrupt_key_file_is_refused(self, tmp_path: Path) -> None:
        """A host key file that is not a key is a clear error, never silently replaced."""
        path = tmp_path / HOST_KEY_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"not a key\n")
        os.close(fd)
        with pytest.raises(ManholeError, match="not a valid key"):
            load_or_create_host_key(tmp_path)
        assert path.read_bytes() == b"not a key\n"


class TestNamespaceAndShell:
    """The namespace is taken per session and described on login."""

    def test_help_lists_names_and_types(self) -> None:
        """The login text names every object with its type and docstring summary."""

        class Pool:
            """Licences of one product."""

        text = "\n".join(describe_namespace({"pool": Pool(), "count": 3}))
        assert "pool" in text
        assert "Pool - Licences of one product." in text
        assert "count" in text
        assert "int" in text

    def test_empty_namespace_is_said(self) -> None:
        """An empty namespace is announced rather than listing nothing."""
        assert "The namespace is empty." in describe_namespace({})

    def test_namespace_is_built_per_session(self) -> None:
        """Each session calls namespace() again, so it sees the current objects."""
        calls: list[int] = []

        def namespace() -> dict[str, object]:
            calls.append(1)
            return {"n": len(calls)}

        realm = ManholeRealm(namespace, MemoryReactor())
        first = realm.open_terminal(pty=True)
        second = realm.open_terminal(pty=False)
        assert len(calls) == 2
        assert first.protocolFactory is ManholeShell
        assert first.protocolArgs[0] == {"n": 1}
        assert second.protocolFactory is PlainManholeShell
        assert second.protocolArgs[0] == {"n": 2}

    def test_failing_namespace_still_opens_a_shell(self) -> None:
        """A namespace callable that raises is reported inside the shell, not fatal."""

        def namespace() -> dict[str, object]:
            raise RuntimeError("domain not ready")

        terminal = ManholeRealm(namespace, MemoryReactor()).open_terminal()
        assert "domain not ready" in str(terminal.protocolArgs[0]["namespace_error"])


class TestServiceConstruction:
    """The service built by make_manhole_service, on a memory reactor."""

    def test_listens_on_loopback_by_default(self, tmp_path: Path) -> None:
        """Without interface= the listener binds 127.0.0.1 only."""
        _, good = make_user_key(tmp_path, "good")
        write_authorized_keys(tmp_path / "ak", good)
        reactor = MemoryReactor()
        svc = make_manhole_service(
            "tcp:2222",
            authorized_keys=tmp_path / "ak",
            state_dir=tmp_path / "state",
            namespace=dict,
            reactor=reactor,
        )
        svc.startService()
        try:
            assert len(reactor.tcpServers) == 1
            port, _factory, _backlog, interface = reactor.tcpServers[0]
            assert (port, interface) == (2222, "127.0.0.1")
            assert (tmp_path / "state" / HOST_KEY_NAME).exists()
        finally:
            svc.stopService()

    def test_missing_authorized_keys_stops_start_up(self, tmp_path: Path) -> None:
        """A manhole whose keys file is missing refuses to start and binds nothing."""
        reactor = MemoryReactor()
        svc = make_manhole_service(
            "tcp:2222",
            authorized_keys=tmp_path / "missing",
            state_dir=tmp_path / "state",
            namespace=dict,
            reactor=reactor,
        )
        with pytest.raises(ManholeError, match="cannot read"):
            svc.privilegedStartService()
        assert reactor.tcpServers == []

    def test_unsafe_description_is_refused_at_build_time(self, tmp_path: Path) -> None:
        """An endpoint type that may reach beyond loopback is refused up front."""
        with pytest.raises(ManholeError, match="use one of tcp, tcp6, unix"):
            make_manhole_service(
                "ssl:2222",
                authorized_keys=tmp_path / "ak",
                state_dir=tmp_path,
                namespace=dict,
                reactor=MemoryReactor(),
            )


# -- real OpenSSH client ---------------------------------------------------------


class _SSHProcess(protocol.ProcessProtocol):
    """Collects an ssh process's output; fires ended with its exit code."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exit_code: int | None = None
        self.running = True
        self._waiters: list[tuple[bytes, defer.Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        """Keep stdout and wake anybody waiting for a piece of it."""
        self.out += data
        for waiter in list(self._waiters):
            if waiter[0] in self.out:
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def errReceived(self, data: bytes) -> None:
        """Keep stderr."""
        self.err += data

    def wait_for(self, needle: bytes) -> defer.Deferred[None]:
        """A Deferred that fires when needle has appeared on stdout."""
        d: defer.Deferred[None] = defer.Deferred()
        if needle in self.out:
            d.callback(None)
        else:
            self._waiters.append((needle, d))
        return d

    def processEnded(self, reason: Failure) -> None:
        """Record the exit code and fire ended."""
        self.running = False
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.ended.callback(self.exit_code)


@pytest.mark.e2e
class TestRealSSHLogin(unittest.TestCase):
    """Logins with the real OpenSSH client against a manhole on 127.0.0.1."""

    timeout = 120

    def setUp(self) -> None:
        """Make user keys, an authorized_keys file, a live object, and start the manhole."""
        from twisted.internet import reactor

        if SSH is None or SSH_KEYSCAN is None:
            self.fail("these tests need the OpenSSH client: apt-get install openssh-client")

        self.reactor: Any = reactor
        # Not trial's mktemp(): under pytest it would write into the working directory.
        self.tmp = Path(tempfile.mkdtemp(prefix="hqnlsd-manhole-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.good_key, good_public = make_user_key(self.tmp, "id_good")
        self.bad_key, _ = make_user_key(self.tmp, "id_bad")
        self.authorized = self.tmp / "authorized_keys"
        write_authorized_keys(self.authorized, good_public + b" admin@test")
        self.state = self.tmp / "state"

        class Probe:
            """A live object the shell reads and changes."""

            value = 0

        self.probe = Probe()
        self.namespace_calls = 0
        self.port = self.start_manhole()
        # Changed after start: a shell that sees it reads the live object.
        self.probe.value = 1234566

    def namespace(self) -> dict[str, object]:
        """The manhole namespace: the live probe."""
        self.namespace_calls += 1
        return {"probe": self.probe}

    def start_manhole(self) -> int:
        """Start a manhole on 127.0.0.1, port 0; stop it in cleanup; return the port."""
        svc = make_manhole_service(
            "tcp:0",
            authorized_keys=self.authorized,
            state_dir=self.state,
            namespace=self.namespace,
            reactor=self.reactor,
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        port = svc.listening_port
        assert port is not None
        address = port.getHost()
        self.assertEqual(address.host, "127.0.0.1")
        return cast(int, address.port)

    def spawn(self, args: list[str], program: str | None = SSH) -> _SSHProcess:
        """Start an OpenSSH program with a clean environment; bounded and cleaned up."""
        assert program is not None
        proc = _SSHProcess()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.tmp)}
        transport = self.reactor.spawnProcess(proc, program, [program, *args], env=env)

        def kill() -> None:
            if proc.running:
                transport.signalProcess("KILL")

        limit = self.reactor.callLater(PROCESS_LIMIT, kill)

        def cleanup() -> defer.Deferred[int | None] | None:
            if limit.active():
                limit.cancel()
            if proc.running:
                kill()
                return proc.ended
            return None

        self.addCleanup(cleanup)
        return proc

    def ssh_args(self, key: Path, *extra: str, port: int | None = None) -> list[str]:
        """Options for a non-interactive, isolated ssh login to the manhole."""
        return [
            "-F",
            "/dev/null",
            "-p",
            str(port or self.port),
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            *extra,
            "admin@127.0.0.1",
        ]

    def bounded(self, d: defer.Deferred[Any], what: str) -> defer.Deferred[Any]:
        """Fail d if it has not fired within the process limit."""
        return d.addTimeout(PROCESS_LIMIT, self.reactor, onTimeoutCancel=lambda *_: what)

    @defer.inlineCallbacks
    def test_interactive_session_reads_and_changes_live_objects(self) -> Any:
        """With a pty: help on login, an expression reads the live probe, an assignment
        changes it in the daemon, Ctrl-D leaves with exit status 0."""
        proc = self.spawn(self.ssh_args(self.good_key, "-tt"))
        yield self.bounded(proc.wait_for(b">>> "), "no prompt")
        self.assertIn(b"hqnlsd manhole", proc.out)
        self.assertIn(b"probe", proc.out)
        self.assertIn(b"A live object the shell reads and changes.", proc.out)
        proc.transport.write(b"probe.value + 1\r")
        yield self.bounded(proc.wait_for(b"1234567"), "no result")
        proc.transport.write(b"probe.value = 77\r")
        proc.transport.write(b"probe.value * 2\r")
        yield self.bounded(proc.wait_for(b"154"), "no second result")
        self.assertEqual(self.probe.value, 77)
        proc.transport.write(b"\x04")
        code = yield self.bounded(proc.ended, "ssh did not exit")
        self.assertEqual(code, 0, proc.err)
        self.assertEqual(self.namespace_calls, 1)

    @defer.inlineCallbacks
    def test_piped_input_without_pty(self) -> Any:
        """`ssh host < script` works: results printed, EOF ends the session, status 0."""
        proc = self.spawn(self.ssh_args(self.good_key, "-T"))
        proc.transport.write(b"probe.value + 1\nprint('done', probe.value - 6)\n")
        proc.transport.closeStdin()
        code = yield self.bounded(proc.ended, "ssh did not exit")
        self.assertEqual(code, 0, proc.err)
        self.assertIn(b"1234567", proc.out)
        self.assertIn(b"done 1234560", proc.out)
        # No syntax colouring without a pty: the echoed input is plain text.
        self.assertNotIn(b"\x1b[1;33m", proc.out)

    @defer.inlineCallbacks
    def test_wrong_key_is_refused(self) -> Any:
        """A key not in authorized_keys cannot log in and gets no shell."""
        proc = self.spawn(self.ssh_args(self.bad_key, "-T"))
        proc.transport.closeStdin()
        code = yield self.bounded(proc.ended, "ssh did not exit")
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied (publickey)", proc.err)
        self.assertNotIn(b"hqnlsd manhole", proc.out)
        self.assertEqual(self.namespace_calls, 0)

    @defer.inlineCallbacks
    def test_only_public_key_login_is_offered(self) -> Any:
        """Without a key the server offers no other method (no password login)."""
        proc = self.spawn(self.ssh_args(self.good_key, "-T", "-o", "PubkeyAuthentication=no"))
        proc.transport.closeStdin()
        code = yield self.bounded(proc.ended, "ssh did not exit")
        self.assertEqual(code, 255)
        # OpenSSH lists the methods the server still allows: publickey only.
        self.assertIn(b"Permission denied (publickey).", proc.err)

    @defer.inlineCallbacks
    def test_removing_a_key_revokes_it_without_restart(self) -> Any:
        """After its line is removed from authorized_keys the key is refused."""
        write_authorized_keys(self.authorized, b"# nobody")
        proc = self.spawn(self.ssh_args(self.good_key, "-T"))
        proc.transport.closeStdin()
        code = yield self.bounded(proc.ended, "ssh did not exit")
        self.assertEqual(code, 255)
        self.assertIn(b"Permission denied", proc.err)

    @defer.inlineCallbacks
    def test_remote_commands_are_refused(self) -> Any:
        """`ssh host command` gets no command execution."""
        marker = self.tmp / "ran"
        args = self.ssh_args(self.good_key, "-T")
        proc = self.spawn([*args, f"__import__('pathlib').Path({str(marker)!r}).touch()"])
        proc.transport.closeStdin()
        code = yield self.bounded(proc.ended, "ssh did not exit")
        self.assertEqual(code, 1)
        self.assertIn(b"remote commands are not run", proc.err)
        self.assertFalse(marker.exists())

    @defer.inlineCallbacks
    def test_served_host_key_is_the_stored_one_and_survives_restart(self) -> Any:
        """ssh-keyscan sees the key stored in state_dir, also from a second service."""
        stored = (self.state / (HOST_KEY_NAME + ".pub")).read_bytes().split()[:2]
        second_port = self.start_manhole()
        for port in (self.port, second_port):
            proc = self.spawn(
                ["-T", "10", "-t", "ed25519", "-p", str(port), "127.0.0.1"], SSH_KEYSCAN
            )
            code = yield self.bounded(proc.ended, "ssh-keyscan did not exit")
            self.assertEqual(code, 0, proc.err)
            served = [line.split()[1:3] for line in proc.out.splitlines() if line.strip()]
            self.assertEqual(served, [stored])

    def test_failed_bind_stops_start_up(self) -> None:
        """A manhole on a port already in use raises at start instead of running deaf."""
        svc = make_manhole_service(
            f"tcp:{self.port}",
            authorized_keys=self.authorized,
            state_dir=self.state,
            namespace=self.namespace,
            reactor=self.reactor,
        )
        self.assertRaises(error.CannotListenError, svc.privilegedStartService)
