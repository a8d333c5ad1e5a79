"""Packaging guards: what `pip install .` ships must match the source tree."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _listed_packages() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return {line.strip() for line in parser["options"]["packages"].splitlines() if line.strip()}


def test_every_hqnlsd_package_is_installed() -> None:
    """Each package under hqnlsd/ is listed in setup.cfg (else an installed daemon breaks)."""
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "hqnlsd").rglob("__init__.py")
    }
    missing = found - _listed_packages()
    assert not missing, f"add to setup.cfg [options] packages: {sorted(missing)}"


def test_plugin_directory_is_shipped_without_init() -> None:
    """twisted/plugins is shipped and has no __init__.py (twistd would ignore it)."""
    assert "twisted.plugins" in _listed_packages()
    assert (REPO / "twisted" / "plugins" / "hqnlsd_plugin.py").is_file()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()
