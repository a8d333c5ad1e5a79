"""Shared pytest configuration: the repo root on sys.path (for twisted/plugins)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# `--seeds N` / `--seed-start S` for the domain simulation (tests/test_domain_sim.py).
pytest_plugins = ["tests.conftest_domain"]
