"""Tests of the sample systemd unit conf/hqnlsd.service and its fit with conf/hqnlsd.toml."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from hqnlsd.configfile import load_config_file

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "conf" / "hqnlsd.service"
EXAMPLE = REPO / "conf" / "hqnlsd.toml"


def directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values of a unit file (comments and blank lines skipped)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        out[section].setdefault(key, []).append(value)
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    """The parsed sample unit."""
    return directives(UNIT)


def test_notify_type_and_commands(unit: dict[str, dict[str, list[str]]]) -> None:
    """Type=notify with twistd in the foreground, no pid file, the config file, SIGHUP reload."""
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    (exec_start,) = service["ExecStart"]
    assert shlex.split(exec_start) == [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        "hqnlsd",
        "--config",
        "/etc/hqnlsd/hqnlsd.toml",
    ]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["on-failure"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_hardening(unit: dict[str, dict[str, list[str]]]) -> None:
    """No privileges, a read-only system, a private /tmp, a private state directory."""
    service = unit["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
        "StateDirectory": "hqnlsd",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }.items():
        assert service.get(key) == [value], key


def test_state_directory_matches_the_example_config(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    """The example config's state-dir is the directory systemd makes writable."""
    state_dir = load_config_file(EXAMPLE)["state-dir"]
    assert state_dir == "/var/lib/" + unit["Service"]["StateDirectory"][0]
