"""The package's layers depend on each other in one direction only.

Every import statement of every module is read with `ast` (function-local and
``TYPE_CHECKING`` imports included: a late import is still a dependency), and
checked against the rules of ``docs/architecture.md``: the permit model below
the licensing core, both free of Twisted and of the protocols; the domain
returning roles and reasons, never writing client replies; the client library
speaking only the protocol.
"""

from __future__ import annotations

import ast

import pytest

from tests.importgraph import imported, imports_of, modules, within

#: For each layer (a module prefix), the module prefixes it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "hqnlsd.permits": (
        "hqnlsd.licensing",
        "hqnlsd.domain",
        "hqnlsd.server",
        "hqnlsd.service",
        "hqnlsd.protocols",
        "hqnlsd.admin",
        "hqnlsd.client",
        "hqnlsd.config",
        "twisted",
    ),
    "hqnlsd.licensing": (
        "hqnlsd.domain",
        "hqnlsd.server",
        "hqnlsd.service",
        "hqnlsd.protocols",
        "hqnlsd.admin",
        "hqnlsd.client",
        "hqnlsd.config",
        "twisted",
    ),
    "hqnlsd.client": (
        "hqnlsd.config",
        "hqnlsd.service",
        "hqnlsd.server",
        "hqnlsd.licensing",
        "hqnlsd.domain",
        "hqnlsd.admin",
        "hqnlsd.tap",
    ),
    "hqnlsd.domain": (
        "hqnlsd.protocols",
        "hqnlsd.server",
        "hqnlsd.service",
        "hqnlsd.admin",
        "hqnlsd.client",
        "hqnlsd.tap",
    ),
}

#: All the client library may import from hqnlsd besides itself: the protocol,
#: the status codes, and to check a server's signed replies the publisher keys
#: and server certificates (plus the hosts file reader, for the search list).
CLIENT_ALLOWED = (
    "hqnlsd.client",
    "hqnlsd.protocols",
    "hqnlsd.status",
    "hqnlsd.permits.seal",
    "hqnlsd.permits.servercert",
    "hqnlsd.identity",
)


def violations(layer: str) -> list[str]:
    """``module:line imports target`` for each forbidden import of ``layer``."""
    found = []
    for name, path in modules():
        if not within(name, layer):
            continue
        for line, target in imports_of(name, path):
            if any(within(target, banned) for banned in FORBIDDEN[layer]):
                found.append(f"{name}:{line} imports {target}")
    return sorted(set(found))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    """Each layer imports none of the modules it must not depend on."""
    assert any(within(name, layer) for name, _ in modules()), f"no module in {layer}"
    assert violations(layer) == []


def test_client_library_speaks_only_the_protocol() -> None:
    """The client library imports from hqnlsd only the protocol, the status codes
    and what checks a server's signature (no daemon configuration, core or domain)."""
    found = []
    for name, path in modules():
        if not within(name, "hqnlsd.client"):
            continue
        for line, target in imports_of(name, path):
            inside = within(target, "hqnlsd") and target != "hqnlsd"
            if inside and not any(within(target, allowed) for allowed in CLIENT_ALLOWED):
                found.append(f"{name}:{line} imports {target}")
    assert found == []


def test_the_check_sees_function_local_and_relative_imports() -> None:
    """Imports inside functions and under ``if TYPE_CHECKING`` count, and relative
    imports are resolved against the importing module's package."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from hqnlsd.server import LicenceServer\n"
        "def late():\n"
        "    import twisted.internet.reactor\n"
        "    from ..protocols import wire\n"
        "    from . import events\n"
    )
    found = {target for _, target in imported(ast.parse(source), "hqnlsd.licensing.engine")}
    assert "hqnlsd.server" in found
    assert "twisted.internet.reactor" in found
    assert {"hqnlsd.protocols", "hqnlsd.protocols.wire"} <= found
    assert "hqnlsd.licensing.events" in found
    package = {target for _, target in imported(ast.parse("from . import x"), "hqnlsd.a", True)}
    assert package == {"hqnlsd.a", "hqnlsd.a.x"}


def test_client_library_reads_replies_without_the_request_grammar() -> None:
    """The client library writes requests and reads replies through
    ``protocols.client_side`` and ``protocols.replies``: only its fake server
    (``hqnlsd.client.testing``) parses request lines with the daemon's grammar
    or runs the daemon's line protocol."""
    daemon_side = ("hqnlsd.protocols.grammar", "hqnlsd.protocols.client")
    found = []
    for name, path in modules():
        if not within(name, "hqnlsd.client") or name == "hqnlsd.client.testing":
            continue
        for line, target in imports_of(name, path):
            if any(within(target, side) for side in daemon_side):
                found.append(f"{name}:{line} imports {target}")
    assert found == []
