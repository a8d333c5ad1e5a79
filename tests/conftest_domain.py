"""pytest plugin for the domain simulation: ``--seeds N`` and ``--seed-start S``.

Register it from ``tests/conftest.py`` with
``pytest_plugins = ["tests.conftest_domain"]`` (the repo root is on sys.path
there). Without it the simulation tests still run their default seeds.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the simulation's options."""
    group = parser.getgroup("hqnlsd domain simulation")
    group.addoption(
        "--seeds",
        type=int,
        default=None,
        help="seeds per domain size for tests/domain/test_domain_sim.py (default: a quick CI set)",
    )
    group.addoption(
        "--seed-start",
        type=int,
        default=None,
        help="first seed for tests/domain/test_domain_sim.py (default 1)",
    )
