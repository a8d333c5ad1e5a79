"""The usage report's analysis is pure, and apart from its rendering.

``records`` and ``analysis`` import only the standard library and each other (no
file reading, no plotting, no Twisted, nothing of the daemon), so their figures
are a function of the records; nothing under ``hqnlsd.reports`` imports Twisted
or the daemon's modules.
"""

from __future__ import annotations

import sys

from tests.importgraph import imports_of, modules, within

PURE = ("hqnlsd.reports.records", "hqnlsd.reports.analysis")
DAEMON = (
    "twisted",
    "hqnlsd.server",
    "hqnlsd.service",
    "hqnlsd.daemon",
    "hqnlsd.domain",
    "hqnlsd.licensing",
    "hqnlsd.protocols",
    "hqnlsd.admin",
    "hqnlsd.persistence",
)


def test_the_analysis_imports_only_the_standard_library() -> None:
    """records and analysis: standard library and each other only."""
    found = []
    for name, path in modules():
        if name not in PURE:
            continue
        for line, target in imports_of(name, path):
            top = target.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if target in ("hqnlsd", "hqnlsd.reports"):
                continue  # the parent packages, imported first in any case
            if not any(within(target, allowed) for allowed in PURE):
                found.append(f"{name}:{line} imports {target}")
    assert found == []
    assert {name for name, _ in modules()} >= set(PURE)


def test_reports_import_nothing_of_the_daemon() -> None:
    """No module of hqnlsd.reports imports Twisted or the daemon."""
    found = [
        f"{name}:{line} imports {target}"
        for name, path in modules()
        if within(name, "hqnlsd.reports")
        for line, target in imports_of(name, path)
        if any(within(target, banned) for banned in DAEMON)
    ]
    assert found == []
