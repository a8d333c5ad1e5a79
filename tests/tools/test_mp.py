"""End-to-end tests of hqn_mp (hqnlsd.tools.mp) on temporary directories."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hqnlsd.identity import format_unique_id, local_unique_id
from hqnlsd.permits.errors import Condition
from hqnlsd.permits.reader import read_permit_file
from hqnlsd.permits.seal import PublisherKey, TrustedKeys
from hqnlsd.tools.mp import main

REPO = Path(__file__).resolve().parents[2]

FORM = """\
# My publisher's form: comments are kept when sealing
THE HQNLSD LICENSE SERVER VERSION 3.0
NUMBER: 17
SERVERS: 2
127.0.0.1     0x00000001
127.0.0.2     0x00000002
PERMITS: 2
Harlequin
LispWorks
8.0
0x41      0     5         01/01/2026   31/12/2030   5
DATA: 4
1 2 3 4
LOCKED-NODES: 0
# second product
Harlequin
KnowledgeWorks
2.1
0x1       1     0         01/01/2026   31/12/2030   10
DATA: 0
LOCKED-NODES: 1
10.0.0.1 0xabc
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run hqn_mp's main; return status, stdout, stderr."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


@pytest.fixture
def publisher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A key pair made by 'hqn_mp keygen' in tmp_path/keys/pub.{key,pub}."""
    (tmp_path / "keys").mkdir()
    status, _, _ = run(capsys, "keygen", str(tmp_path / "keys" / "pub"))
    assert status == 0
    return tmp_path / "keys" / "pub"


class TestKeygen:
    """hqn_mp keygen PREFIX."""

    def test_writes_both_files(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """PREFIX.key (0600) and PREFIX.pub are written; the key id is printed."""
        status, out, _ = run(capsys, "keygen", str(tmp_path / "acme"))
        assert status == 0
        key = PublisherKey.load(tmp_path / "acme.key")
        assert stat.S_IMODE((tmp_path / "acme.key").stat().st_mode) == 0o600
        assert f"key id {key.key_id}" in out
        assert list(TrustedKeys.load(tmp_path).keys) == [key.key_id]

    def test_refuses_to_overwrite(
        self, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A second keygen with the same prefix fails and leaves the key alone."""
        before = publisher.with_suffix(".key").read_bytes()
        status, out, err = run(capsys, "keygen", str(publisher))
        assert status == 1 and "already exists" in err and out == ""
        assert publisher.with_suffix(".key").read_bytes() == before


class TestSignAndCheck:
    """hqn_mp sign and hqn_mp check."""

    def test_sign_to_stdout_keeps_comments_then_check(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The sealed permit goes to stdout, keeps the form's text, and checks valid."""
        form = tmp_path / "my.form"
        form.write_text(FORM)
        status, out, _ = run(capsys, "sign", "--key", f"{publisher}.key", str(form))
        assert status == 0
        assert [line for line in out.splitlines() if not line.startswith("LOCK: ")] == (
            FORM.splitlines()
        )
        assert sum(line.startswith("LOCK: ") for line in out.splitlines()) == 3
        permit = tmp_path / "hqn.permit"
        permit.write_text(out)
        status, out, _ = run(capsys, "check", "--keys", str(publisher.parent), str(permit))
        assert status == 0
        assert "permit 17" in out
        assert "127.0.0.1 0x00000001, 127.0.0.2 0x00000002" in out
        assert "Harlequin / LispWorks / 8.0" in out
        assert "Harlequin / KnowledgeWorks / 2.1" in out
        assert "10.0.0.1 0x00000abc" in out
        assert f"{permit}: valid, 2 product(s)" in out

    def test_sign_to_file_and_resign(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """-o writes the file; signing a sealed permit again replaces its locks."""
        form = tmp_path / "my.form"
        form.write_text(FORM)
        out_path = tmp_path / "a-hqn.permit"
        status, out, _ = run(capsys, "sign", "--key", f"{publisher}.key", str(form),
                             "-o", str(out_path))
        assert status == 0 and out == ""
        first = out_path.read_text()
        status, _, _ = run(capsys, "sign", "--key", f"{publisher}.key", str(out_path),
                           "-o", str(out_path))
        assert status == 0
        again = out_path.read_text()
        assert again.count("LOCK: ") == first.count("LOCK: ") == 3
        result = read_permit_file(out_path, TrustedKeys.load(publisher.parent))
        assert result.ok and len(result.products) == 2

    def test_check_reports_file_line_and_number(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A tampered permit: FILE:LINE: error 103, what was valid before, exit 1."""
        form = tmp_path / "my.form"
        form.write_text(FORM)
        permit = tmp_path / "hqn.permit"
        key = f"{publisher}.key"
        status, _, _ = run(capsys, "sign", "--key", key, str(form), "-o", str(permit))
        assert status == 0
        sealed = permit.read_text()
        permit.write_text(sealed.replace("10.0.0.1 0xabc", "10.0.0.1 0xabd"))
        lock_line = [i for i, t in enumerate(sealed.splitlines(), 1) if t.startswith("LOCK:")][-1]
        status, out, _ = run(capsys, "check", "--keys", str(publisher.parent), str(permit))
        assert status == 1
        assert f"{permit}:{lock_line}: error 103: " in out
        assert "Harlequin / LispWorks / 8.0" in out  # the valid first product
        assert "INVALID after 1 valid product(s)" in out

    def test_check_with_the_wrong_keys(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A permit sealed by a key not in --keys is error 104."""
        form = tmp_path / "my.form"
        form.write_text(FORM)
        permit = tmp_path / "hqn.permit"
        run(capsys, "sign", "--key", f"{publisher}.key", str(form), "-o", str(permit))
        other = tmp_path / "other"
        other.mkdir()
        run(capsys, "keygen", str(other / "x"))
        status, out, _ = run(capsys, "check", "--keys", str(other), str(permit))
        assert status == 1 and f"error {int(Condition.UNTRUSTED_KEY)}: " in out

    def test_sign_bad_form(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An invalid form is refused with FILE:LINE: error NNN on stderr."""
        form = tmp_path / "bad.form"
        form.write_text(FORM.replace("31/12/2030   10", "31/13/2030   10"))
        status, out, err = run(capsys, "sign", "--key", f"{publisher}.key", str(form))
        assert status == 1 and out == ""
        assert f"{form}:19: error 108: " in err

    @pytest.mark.parametrize(
        ("key_content", "message"),
        [(None, "cannot read the key"), (b"junk", "not an unencrypted PEM private key")],
    )
    def test_sign_bad_key(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        key_content: bytes | None,
        message: str,
    ) -> None:
        """A missing or malformed key file is a clear error, exit 1."""
        form = tmp_path / "my.form"
        form.write_text(FORM)
        key = tmp_path / "k.key"
        if key_content is not None:
            key.write_bytes(key_content)
        status, _, err = run(capsys, "sign", "--key", str(key), str(form))
        assert status == 1 and message in err

    def test_sign_missing_or_binary_form(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing form, or one that is not UTF-8, is a clear error."""
        status, _, err = run(capsys, "sign", "--key", f"{publisher}.key", str(tmp_path / "no"))
        assert status == 1 and "cannot read the permit form" in err
        binary = tmp_path / "bin.form"
        binary.write_bytes(FORM.encode().replace(b"LispWorks", b"Lisp\xffWorks"))
        status, _, err = run(capsys, "sign", "--key", f"{publisher}.key", str(binary))
        assert status == 1 and f"{binary}:9: " in err and "not UTF-8" in err

    def test_sign_output_in_missing_directory(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """-o into a directory that does not exist is a clear error."""
        form = tmp_path / "my.form"
        form.write_text(FORM)
        status, _, err = run(capsys, "sign", "--key", f"{publisher}.key", str(form),
                             "-o", str(tmp_path / "no" / "hqn.permit"))
        assert status == 1 and "cannot write" in err

    def test_check_missing_inputs(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Missing keys directory or permit file: exit 1 with a message."""
        status, _, err = run(capsys, "check", "--keys", str(tmp_path / "no"), "x")
        assert status == 1 and "no such directory" in err
        status, _, err = run(capsys, "check", "--keys", str(publisher.parent),
                             str(tmp_path / "none.permit"))
        assert status == 1 and "no such permit file" in err

    def test_check_warns_about_bad_pub_files(
        self, tmp_path: Path, publisher: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad .pub in --keys is a warning; the permit is still checked."""
        form = tmp_path / "my.form"
        form.write_text(FORM)
        permit = tmp_path / "hqn.permit"
        run(capsys, "sign", "--key", f"{publisher}.key", str(form), "-o", str(permit))
        (publisher.parent / "broken.pub").write_text("nope")
        status, _, err = run(capsys, "check", "--keys", str(publisher.parent), str(permit))
        assert status == 0 and "warning" in err and "broken.pub" in err


class TestOthers:
    """hostid, demo, usage errors and python -m."""

    def test_hostid(self, capsys: pytest.CaptureFixture[str]) -> None:
        """hostid prints this machine's unique id as 0x%08x."""
        status, out, _ = run(capsys, "hostid")
        assert status == 0 and out == format_unique_id(local_unique_id()) + "\n"
        assert len(out.strip()) == 10 and out.startswith("0x")

    def test_demo_on_a_copy_of_conf(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """demo seals conf/demo.form for this machine; the result checks valid."""
        conf = tmp_path / "conf"
        conf.mkdir()
        for name in ("demo.form", "demo-publisher.key", "demo-publisher.pub"):
            shutil.copy(REPO / "conf" / name, conf / name)
        status, out, _ = run(capsys, "demo", str(conf))
        assert status == 0 and "demo-hqn.permit" in out
        result = read_permit_file(conf / "demo-hqn.permit", TrustedKeys.load(conf))
        assert result.ok and result.permit is not None
        me = local_unique_id()
        assert [s.unique_id for s in result.permit.servers] == [me]
        assert str(result.permit.servers[0].address) == "127.0.0.1"
        spec = result.permit.products[0]
        assert (spec.publisher, spec.product, spec.version, spec.policy) == (
            "Harlequin", "LispWorks", "8.0", 0x41,
        )
        locked = [n for p in result.permit.products for n in p.locked_nodes]
        assert locked and all(n.unique_id == me for n in locked)
        status, out, _ = run(capsys, "check", "--keys", str(conf), str(conf / "demo-hqn.permit"))
        assert status == 0

    def test_demo_without_key(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """demo in a directory without the demo key is a clear error."""
        status, _, err = run(capsys, "demo", str(tmp_path))
        assert status == 1 and "demo-publisher.key" in err

    def test_usage_errors(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No command, an unknown one, or sign without --key: exit 2 with usage."""
        for argv in ([], ["frobnicate"], ["sign", "form"]):
            status, _, err = run(capsys, *argv)
            assert status == 2 and "usage:" in err

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--help lists the commands and exits 0."""
        status, out, _ = run(capsys, "--help")
        assert status == 0
        for command in ("keygen", "sign", "check", "hostid", "demo"):
            assert command in out

    @pytest.mark.e2e
    def test_python_dash_m(self, tmp_path: Path) -> None:
        """python -m hqnlsd.tools.mp works as a program (hostid, and a failing check)."""
        done = subprocess.run(
            [sys.executable, "-m", "hqnlsd.tools.mp", "hostid"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0
        assert done.stdout.strip() == format_unique_id(local_unique_id())
        done = subprocess.run(
            [sys.executable, "-m", "hqnlsd.tools.mp", "check", "--keys", str(tmp_path),
             str(tmp_path / "missing.permit")],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 1
        assert "no such permit file" in done.stderr and "Traceback" not in done.stderr
