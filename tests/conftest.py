"""Shared pytest configuration: the repo root on sys.path (for twisted/plugins)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The daemon refuses a state directory (or a directory above it) that group or
# others may write. Directories the tests make with a plain mkdir must not come
# out group-writable on a machine whose umask is 0002: keep group/other write off.
os.umask(os.umask(0o022) | 0o022)

# `--seeds N` / `--seed-start S` for the domain simulation (tests/domain/test_domain_sim.py).
pytest_plugins = ["tests.conftest_domain"]
