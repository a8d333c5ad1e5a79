"""No import circle among hqnlsd's modules, function-local imports included.

Every module of the package is parsed with `ast`; every ``import`` and ``from ...
import`` at any depth (module level, inside functions, under ``TYPE_CHECKING``) that
names an hqnlsd module is an edge; relative imports are resolved and ``from pkg import
name`` counts ``pkg.name`` when that is a module. A module's own parent packages are
not edges: Python imports them first in any case. A strongly connected component of
more than one module is a circle, and the test names its modules.
"""

from __future__ import annotations

from pathlib import Path

from tests.importgraph import PACKAGE, circles, import_graph


def test_the_finder_sees_a_circle_through_a_function_local_import(tmp_path: Path) -> None:
    """The checker itself: a circle closed only by a function-local, relative
    ``from . import module`` is found; the same package without it has none."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub.b import thing\n")
    (package / "sub" / "b.py").write_text("import pkg.c\nthing = 1\n")
    (package / "c.py").write_text("def late():\n    from .sub import b\n")
    assert circles(import_graph(package)) == [["pkg.c", "pkg.sub.b"]]
    (package / "c.py").write_text("def late():\n    return 1\n")
    assert circles(import_graph(package)) == []


def test_no_import_circle_among_hqnlsd_modules() -> None:
    """hqnlsd's modules import each other in layers: no circle, however deep the import."""
    graph = import_graph(PACKAGE)
    assert len(graph) > 50, f"only {len(graph)} modules found under {PACKAGE}"
    found = circles(graph)
    assert not found, "import circle(s) among hqnlsd's modules: " + "; ".join(
        " <-> ".join(component) for component in found
    )
