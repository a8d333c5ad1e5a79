"""The arrangement of the test suite (issue 13): tests mirror the package, and every
test that starts a real process is marked ``e2e``.

Test files live in a directory named after the part of hqnlsd they test
(``tests/domain/``, ``tests/licensing/``, ...); only this file and the shared
helpers (``conftest.py``, ``daemons.py``, ``sim/``, ...) sit in ``tests/`` itself.

A test "starts a process" when its body, a fixture it takes, or a function or
class it uses (followed through this module and the ``tests.*`` modules it imports
from) calls ``subprocess``, ``spawnProcess``, ``os.fork``/``exec``/``spawn``, names
``sys.executable`` or uses the ``DaemonHarness`` of ``tests/daemons.py``. Such a
test must carry the ``e2e`` mark: on itself, its class, or the module
(``pytestmark = pytest.mark.e2e``), so that ``-m "not e2e"`` starts no process.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: Files that may sit in tests/ itself: this test and the shared helpers.
ROOT_TEST_FILES = {"test_layout.py"}

#: Attributes of ``subprocess`` that start a process.
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "getoutput",
                    "getstatusoutput"}
#: Attributes of ``os`` that start (or become) a process.
OS_CALLS = {"fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp"}


def module_name(path: Path) -> str:
    """``tests/domain/test_node.py`` -> ``tests.domain.test_node``."""
    parts = path.relative_to(TESTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def starts_directly(node: ast.AST) -> bool:
    """Whether ``node``'s own code starts a process (not following names)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            owner, attr = sub.value.id, sub.attr
            if owner == "subprocess" and attr in SUBPROCESS_CALLS:
                return True
            if owner == "os" and (attr in OS_CALLS or attr.startswith(("exec", "spawn"))):
                return True
            if owner == "sys" and attr == "executable":
                return True
        if isinstance(sub, ast.Attribute) and sub.attr in ("spawnProcess",
                                                           "create_subprocess_exec",
                                                           "create_subprocess_shell"):
            return True
    return False


def is_e2e_mark(node: ast.AST) -> bool:
    """Whether the expression ``node`` is (or contains) ``pytest.mark.e2e``."""
    return any(
        isinstance(sub, ast.Attribute) and sub.attr == "e2e"
        and isinstance(sub.value, ast.Attribute) and sub.value.attr == "mark"
        for sub in ast.walk(node)
    )


def names_used(node: ast.AST) -> set[str]:
    """The bare names ``node`` reads, and the parameters of a function (fixtures)."""
    used = {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)}
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        args = node.args
        used |= {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    return used


def self_methods_used(node: ast.AST) -> set[str]:
    """The ``self.X`` attributes ``node`` reads (methods of its own class)."""
    return {
        sub.attr for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
        and sub.value.id == "self"
    }


@dataclass
class Module:
    """One parsed module of tests/: its top-level definitions and imports."""

    path: Path
    tree: ast.Module
    definitions: dict[str, ast.AST] = field(default_factory=dict)
    imported: dict[str, tuple[str, str]] = field(default_factory=dict)
    marked: bool = False

    @classmethod
    def read(cls, path: Path) -> Module:
        tree = ast.parse(path.read_text(), str(path))
        module = cls(path, tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                module.definitions[node.name] = node
            elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "tests" or node.module.startswith("tests.")
            ):
                for alias in node.names:
                    module.imported[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
            ):
                module.marked = module.marked or is_e2e_mark(node.value)
        return module


class ProcessFinder:
    """Follows names through the modules of tests/ to see what starts a process."""

    def __init__(self) -> None:
        self.modules = {module_name(p): Module.read(p) for p in TESTS.rglob("*.py")}
        self.seen: dict[tuple[str, str], bool] = {}

    def resolve(self, module: str, name: str) -> tuple[str, ast.AST] | None:
        """The definition ``name`` stands for in ``module``, if it is in tests/."""
        here = self.modules.get(module)
        if here is None:
            return None
        if name in here.definitions:
            return module, here.definitions[name]
        if name in here.imported:
            source, original = here.imported[name]
            return self.resolve(source, original)
        return None

    def name_starts(self, module: str, name: str) -> bool:
        """Whether the module-level definition ``name`` of ``module`` starts a process."""
        found = self.resolve(module, name)
        if found is None:
            return False
        key = (found[0], name)
        if key not in self.seen:
            self.seen[key] = False  # a cycle adds nothing
            self.seen[key] = self.node_starts(found[0], found[1])
        return self.seen[key]

    def node_starts(self, module: str, node: ast.AST,
                    owner: ast.ClassDef | None = None) -> bool:
        """Whether ``node`` (in ``module``, a method of ``owner``) starts a process."""
        if starts_directly(node):
            return True
        if owner is not None:
            methods = {m.name: m for m in owner.body
                       if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)}
            wanted = self_methods_used(node) & set(methods)
            wanted.discard(getattr(node, "name", ""))
            if any(self.node_starts(module, methods[m]) for m in wanted):
                return True
        return any(self.name_starts(module, name) for name in names_used(node))

    def unmarked(self) -> list[str]:
        """The tests that start a process without the e2e mark."""
        found = []
        for name, module in self.modules.items():
            if not module.path.name.startswith("test_"):
                continue
            for node in module.tree.body:
                for test, owner in collected_tests(node):
                    marked = module.marked or has_mark(test) or (
                        owner is not None and has_mark(owner))
                    if marked:
                        continue
                    starts = self.node_starts(name, test, owner)
                    if not starts and owner is not None:
                        starts = any(
                            self.node_starts(name, m, owner) for m in owner.body
                            if isinstance(m, ast.FunctionDef)
                            and m.name in ("setUp", "setUpClass", "setup_method", "setup_class")
                        )
                    if starts:
                        prefix = f"{owner.name}::" if owner is not None else ""
                        found.append(f"{module.path.relative_to(TESTS.parent)}::{prefix}"
                                     f"{test.name}")
        return found


def has_mark(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    """Whether ``node`` is decorated with ``pytest.mark.e2e``."""
    return any(is_e2e_mark(d) for d in node.decorator_list)


def collected_tests(
    node: ast.stmt,
) -> list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.ClassDef | None]]:
    """The test functions ``node`` is or holds, with their class."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return [(node, None)] if node.name.startswith("test") else []
    if isinstance(node, ast.ClassDef):
        return [
            (m, node) for m in node.body
            if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
            and m.name.startswith("test")
        ]
    return []


def test_no_test_file_directly_in_tests() -> None:
    """Test files sit in the directory of the part they test, not in tests/ itself."""
    stray = sorted(p.name for p in TESTS.glob("test_*.py") if p.name not in ROOT_TEST_FILES)
    assert stray == [], f"move these into tests/<part>/: {stray}"


def test_every_test_directory_is_a_package_and_basenames_are_unique() -> None:
    """Each directory holding tests has an __init__.py (one module name per file), and
    no two test files share a name (``pytest -k``, tracebacks and the docs name files)."""
    files = [p for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts]
    missing = sorted({str(p.parent.relative_to(TESTS)) for p in files
                      if not (p.parent / "__init__.py").exists()})
    assert missing == []
    names = [p.name for p in files]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_the_finder_sees_processes_started() -> None:
    """The check below can fail: it sees processes started directly, through a
    fixture, through a helper class and through a method of the test's class."""
    finder = ProcessFinder()
    fake = ast.parse(
        "import subprocess, sys\n"
        "from tests.daemons import DaemonHarness\n"
        "def helper():\n    subprocess.run(['true'])\n"
        "def test_direct():\n    subprocess.Popen([sys.executable])\n"
        "def test_helper():\n    helper()\n"
        "def test_fixture(daemons):\n    pass\n"
        "def daemons(tmp_path):\n    return DaemonHarness(tmp_path)\n"
        "def test_pure():\n    assert 1\n"
        "class Case:\n"
        "    def run_tool(self):\n        return subprocess.run(['true'])\n"
        "    def test_method(self):\n        self.run_tool()\n"
        "    def test_plain(self):\n        assert 1\n"
    )
    module = Module(TESTS / "test_fake.py", fake)
    for node in fake.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            module.definitions[node.name] = node
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                module.imported[alias.name] = (node.module, alias.name)
    finder.modules["tests.test_fake"] = module
    assert [t.split("::", 1)[1] for t in finder.unmarked() if "test_fake" in t] == [
        "test_direct", "test_helper", "test_fixture", "Case::test_method"]


def test_every_test_starting_a_process_is_marked_e2e() -> None:
    """A test that starts a process carries the e2e mark (itself, its class, its module)."""
    assert ProcessFinder().unmarked() == []
