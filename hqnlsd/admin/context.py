"""What every admin command module shares: the refusal (`AdminError`), the
argument readers, the log the commands write to, and the command running now
(`Running`: who asked, and for which domain if it was forwarded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from hqnlsd.admin import wire
from hqnlsd.tls import PeerIdentity

#: The admin commands' log: one namespace, the one these lines have always had
#: (it shows in every log line), whichever module of the package writes them.
ADMIN_LOG = Logger(namespace="hqnlsd.admin.handler.AdminHandler")


class AdminError(Exception):
    """A refused admin command: an error name and a message for the admin."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass
class Running:
    """The command running now, as the handler's parts need to know it.

    One per handler, shared by its parts and set by `AdminHandler.handle` for
    each command (commands run one at a time, in the reactor thread).
    """

    #: The domain a forwarded command came for, while it runs (None: asked here).
    forwarded_domain: str | None = None
    #: Whether it came through the local admin socket (False: remote, over TLS).
    local: bool = True
    #: Who asked it over TLS (None through the local socket): what its certificate allows.
    peer: PeerIdentity | None = None


def text_arg(args: Mapping[str, Any], key: str, what: str) -> str:
    """The non-blank text ``args[key]``, stripped; BAD_REQUEST naming ``what`` if none."""
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise AdminError(wire.BAD_REQUEST, f"give the {what}")
    return value.strip()


def integer_arg(
    args: Mapping[str, Any], key: str, what: str, default: int | None = None
) -> int:
    """The whole number ``args[key]`` (or ``default``); BAD_REQUEST naming ``what`` if not one."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(wire.BAD_REQUEST, f"the {what} must be a whole number")
    return value


def domain_words(domain_key: str) -> str:
    """A domain id (``ADDR 0xID,...``) as its addresses (``ADDR ADDR ...``)."""
    return " ".join(part.split()[0] for part in domain_key.split(",") if part.strip())
