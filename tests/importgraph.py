"""Imports among hqnlsd's modules, read with `ast`: for the layering and circle tests.

Every ``import`` and ``from ... import`` at any depth counts (module level, inside
functions, under ``TYPE_CHECKING``: a late import is still a dependency); relative
imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import hqnlsd

PACKAGE = Path(hqnlsd.__file__).parent


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``hqnlsd.a.b`` for ``PACKAGE/a/b.py`` (``hqnlsd.a`` for its ``__init__``)."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) of every import anywhere in ``tree``, relative ones resolved.

    ``from a import b`` yields ``a.b`` as well as ``a``, so that importing a
    submodule by name counts as importing it.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def within(name: str, prefix: str) -> bool:
    """True if module ``name`` is ``prefix`` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of hqnlsd, by name."""
    yield from package_modules(PACKAGE).items()


def imports_of(name: str, path: Path) -> list[tuple[int, str]]:
    """Every import of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return list(imported(tree, name, path.name == "__init__.py"))


def package_modules(package: Path) -> dict[str, Path]:
    """Every module of ``package``, by dotted name (a package by its own name)."""
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` denotes: itself, or the nearest enclosing module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``module`` imports anywhere in its text (not its own
    parent packages: Python imports them first in any case)."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    edges: set[str] = set()
    for _, name in imported(tree, module, path.name == "__init__.py"):
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
