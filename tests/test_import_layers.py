"""No import circle among hqnlsd's modules, function-local imports included.

Every module of the package is parsed with `ast`; every ``import`` and ``from ...
import`` at any depth (module level, inside functions, under ``TYPE_CHECKING``) that
names an hqnlsd module is an edge; relative imports are resolved and ``from pkg import
name`` counts ``pkg.name`` when that is a module. A module's own parent packages are
not edges: Python imports them first in any case. A strongly connected component of
more than one module is a circle, and the test names its modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hqnlsd

PACKAGE = Path(hqnlsd.__file__).parent


def package_modules(package: Path) -> dict[str, Path]:
    """Every module of ``package``, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` denotes: itself, or the nearest enclosing module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``module`` imports anywhere in its text."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    named: list[str] = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            named.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            named.append(source)
            named.extend(f"{source}.{alias.name}" for alias in node.names)
    edges: set[str] = set()
    for name in named:
        target = _resolve(name, modules)
        if target is None or target == module or module.startswith(target + "."):
            continue
        edges.add(target)
    return edges


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules(package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                child = pending.pop()
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, sorted(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


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
