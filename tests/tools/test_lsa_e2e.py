"""``hqn_lsa`` end to end: a daemon core with its admin listeners in the test reactor,
``hqn_lsa`` run as a real process against it, in each input mode; refusals of
non-admins on the socket and over TLS."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet import threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from hqnlsd.admin import wire
from hqnlsd.admin.client import AdminClient, AdminClientError
from hqnlsd.admin.service import make_admin_services
from hqnlsd.service import HqnlsdService
from hqnlsd.tls import DomainCredentials
from hqnlsd.tools.ca import certificate_pem, create_ca, issue_admin, issue_member, write_issued
from tests.admin.test_admin_handler import ME, site_config, write_site
from tests.daemons import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

#: Bound on every hqn_lsa run (seconds).
RUN_TIMEOUT = 60.0


def connect_as(uid: int, path: Path) -> str:
    """Try the admin socket as user ``uid`` in a forked child; what the client said."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            AdminClient.unix(path, timeout=5).close()
            text = "connected"
        except BaseException as error:
            text = str(error)
        os.write(write_end, text.encode())
        os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            # The child writes once and exits: its answer, or EOF, within the bound.
            ready, _, _ = select.select([pipe], [], [], RUN_TIMEOUT)
            if not ready:
                raise AssertionError(f"the child connecting as uid {uid} said nothing "
                                     f"within {RUN_TIMEOUT} s")
            said = pipe.read().decode()
    finally:
        reap(pid)
    return said


def reap(pid: int) -> None:
    """Wait (bounded) for child ``pid`` to exit; SIGKILL it if it is late."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # SIGKILL cannot be ignored: the exit is immediate
            return
        time.sleep(0.05)


class LsaEndToEnd(unittest.TestCase):
    """A daemon core with the admin socket (and TLS) in the reactor; hqn_lsa as a process."""

    timeout = 120

    def setUp(self) -> None:
        """Write the site, make the CA and certificates, start the daemon core."""
        self.tmp = Path(tempfile.mkdtemp(prefix="hqnlsa-", dir="/tmp"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.tmp)], check=False)
        os.chmod(self.tmp, 0o755)  # reachable by another user: the socket's mode decides
        write_site(self.tmp)
        now = datetime.now(UTC)
        ca = create_ca(now=now)
        self.ca_file = self.tmp / "ca.crt"
        self.ca_file.write_bytes(certificate_pem(ca.certificate))
        member = issue_member(ca, "127.0.0.1", now=now)
        self.admin_key, self.admin_crt = write_issued(
            issue_admin(ca, "alice", now=now), self.tmp / "alice"
        )
        self.member_key, self.member_crt = write_issued(
            issue_member(ca, "127.0.0.2", now=now), self.tmp / "other-member"
        )
        self.socket = self.tmp / "run" / "admin.sock"
        self.tls_port = free_port("127.0.0.1")
        self.root = HqnlsdService(site_config(self.tmp), global_reactor, me=ME)
        for service in make_admin_services(
            self.root,
            socket_path=self.socket,
            tls_listen=f"tcp:{self.tls_port}",
            tls_credentials=DomainCredentials(ca.certificate, member.certificate, member.key),
            reactor=global_reactor,
        ):
            service.setServiceParent(self.root)
        self.root.privilegedStartService()
        self.root.startService()
        os.chmod(self.socket.parent, 0o755)
        self.addCleanup(self.root.stopService)

    def lsa(self, *args: str, stdin: str = "") -> Deferred[Any]:
        """Run hqn_lsa in a process (in a thread, so the reactor keeps serving)."""
        argv = [
            sys.executable,
            "-m",
            "hqnlsd.tools.lsa",
            "--socket",
            str(self.socket),
            "--hosts",
            str(self.tmp / "hosts"),
            *args,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HQN_LSA_HISTORY": "/dev/null"}
        return threads.deferToThread(
            subprocess.run,
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env,
            cwd=str(REPO_ROOT),
        )

    @inlineCallbacks
    def test_option_mode_lists_and_changes(self) -> Any:
        """Options: -sinfo -listp show the server; a policy change shows in listp+."""
        done = yield self.lsa("-sinfo", "-listp")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("0x1234abcd", done.stdout)
        self.assertIn("test-hqn.permit", done.stdout)
        self.assertRegex(done.stdout, r"1\s+Test Publisher Widget 1\.0\s+0/0\s+0/3")
        done = yield self.lsa("-p", "1", "GRAB", "UVIS", "-t", "1", "10m", "-lp+")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("0x41 (GRAB UVIS)", done.stdout)
        self.assertRegex(done.stdout, r"timeout\s+10m")

    @inlineCallbacks
    def test_stdin_mode_refuses_revoking_without_y(self) -> Any:
        """stdin: commands one a line; reinit without -y is refused (no terminal)."""
        done = yield self.lsa("-", stdin="# a comment\nlistp\nreinit\nlg exterr-\n")
        self.assertEqual(done.returncode, 1)
        self.assertIn("add -y", done.stderr)
        self.assertIn("Widget", done.stdout)
        self.assertIn("log switches:", done.stdout)
        done = yield self.lsa("-y", "-", stdin="reinit\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("reinitialised", done.stdout)

    @inlineCallbacks
    def test_file_mode_and_json(self) -> Any:
        """A command file; --json gives one JSON object per answer."""
        script = self.tmp / "commands"
        # pw (policyword) decodes a policy word; lk checks a lock string (the manual's lk).
        script.write_text('adduser "Test Publisher" Widget boss\nlistp+\npw 0x10041\n')
        done = yield self.lsa("--json", str(script))
        self.assertEqual(done.returncode, 0, done.stderr)
        records = [json.loads(line) for line in done.stdout.splitlines()]
        self.assertEqual([r["command"] for r in records], ["adduser", "listp+", "policyword"])
        self.assertEqual(records[1]["result"]["products"][0]["named_users"], ["boss"])
        self.assertEqual(records[2]["result"]["text"], "GRAB UVIS locked:GRAB")

    @inlineCallbacks
    def test_interactive_mode(self) -> Any:
        """No arguments: the prompt reads commands until quit."""
        done = yield self.lsa(stdin="help\nserver\nlistu\nquit\nlistp\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("hqn_lsa> ", done.stdout)
        self.assertIn("listp+|lp+", done.stdout)
        self.assertIn("Widget 1.0: 0 holder(s)", done.stdout)
        self.assertNotIn("Gadget 1.0\n", done.stdout.split("quit")[-1])

    @inlineCallbacks
    def test_error_is_reported_with_status(self) -> Any:
        """A refused change exits 1 and prints the status and message."""
        done = yield self.lsa("-policy", "Nope", "X", "GRAB")
        self.assertEqual(done.returncode, 1)
        self.assertIn("BADPRODUCT", done.stderr)

    @inlineCallbacks
    def test_user_without_socket_access_is_refused(self) -> Any:
        """Someone the socket's permissions keep out is refused and changes nothing."""
        if os.geteuid() == 0:
            # Root passes every permission check: try as nobody, in a forked child.
            message = yield threads.deferToThread(connect_as, 65534, self.socket)
        else:
            os.chmod(self.socket, 0o000)
            done = yield self.lsa("-p", "1", "UVIS+")
            os.chmod(self.socket, 0o660)
            self.assertEqual(done.returncode, 1)
            message = done.stderr
        self.assertIn("permission denied", message)
        self.assertEqual(self.root.engine.status()[0].policy, 0x1)

    def _tls(self, key: Path, crt: Path) -> Deferred[Any]:
        def talk() -> Any:
            client = AdminClient.tls(
                "127.0.0.1", self.tls_port, ca=self.ca_file, cert=crt, key=key, timeout=RUN_TIMEOUT
            )
            try:
                return client.call("policy", {"product": {"index": 1}, "value": "UVIS+"})
            finally:
                client.close()

        return threads.deferToThread(talk)

    @inlineCallbacks
    def test_tls_admin_certificate_is_served(self) -> Any:
        """An admin certificate of the domain CA may change state over TLS."""
        answer = yield self._tls(self.admin_key, self.admin_crt)
        self.assertTrue(answer["ok"], answer)
        self.assertEqual(self.root.engine.status()[0].policy, 0x41)

    @inlineCallbacks
    def test_tls_member_certificate_is_refused(self) -> Any:
        """A member certificate is refused with NOTADMIN and changes nothing."""
        try:
            yield self._tls(self.member_key, self.member_crt)
        except AdminClientError as error:
            self.assertIn(wire.NOTADMIN, str(error))
            self.assertIn("not an admin", str(error))
        else:
            self.fail("a member certificate was served")
        self.assertEqual(self.root.engine.status()[0].policy, 0x1)

    @inlineCallbacks
    def test_protocol_errors_are_clear(self) -> Any:
        """Bad JSON, a wrong version and a missing command each get a named error."""

        def talk() -> list[dict[str, Any]]:
            client = AdminClient.unix(self.socket, timeout=RUN_TIMEOUT)
            try:
                sock = client._sock
                answers = []
                for line in (b"not json\n", b'{"v": 99, "cmd": "sinfo"}\n', b'{"v": 1}\n'):
                    sock.sendall(line)
                    answers.append(client._read())
                return answers
            finally:
                client.close()

        answers = yield threads.deferToThread(talk)
        self.assertEqual(
            [a["error"] for a in answers], [wire.BAD_REQUEST, wire.VERSION, wire.BAD_REQUEST]
        )
