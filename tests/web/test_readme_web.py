"""The README's "Web console" section, command by command (review of issue 15)."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

from hqnlsd.tools.ca import main as hqn_ca

REPO = Path(__file__).resolve().parents[2]


def _section(title: str) -> str:
    readme = (REPO / "README.md").read_text("utf-8")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_pkcs12_command_names_the_files_hqn_ca_admin_writes(tmp_path: Path) -> None:
    """``hqn_ca admin CA NAME`` then the README's ``openssl pkcs12 -export`` line, with
    CA and NAME put in: its ``-in`` and ``-inkey`` are files hqn_ca wrote (the README
    said NAME.crt and NAME.key; hqn_ca writes CA/admin-NAME.crt and .key)."""
    text = " ".join(_section("Web console").split())
    ca_command = re.search(r"`(hqn_ca admin CA NAME)`", text)
    openssl = re.search(r"`(openssl pkcs12 -export [^`]+)`", text)
    assert ca_command and openssl
    ca = tmp_path / "ca"
    quiet = {"stdout": io.StringIO(), "stderr": io.StringIO()}
    assert hqn_ca(["init", str(ca)], **quiet) == 0
    assert hqn_ca(["admin", str(ca), "alice"], **quiet) == 0
    words = shlex.split(openssl.group(1).replace("CA/", f"{ca}/").replace("NAME", "alice"))
    for option in ("-in", "-inkey"):
        named = Path(words[words.index(option) + 1])
        assert named.is_file(), f"{option} {named}: not written by hqn_ca admin"
