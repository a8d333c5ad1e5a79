"""The admin protocol: JSON lines, versioned, with a bounded line length.

A connection starts with one line from the server, the greeting::

    {"v": 1, "ok": true, "result": {"hello": "hqnlsd-admin", "versions": [1], ...}}

(or, for a refused peer, ``{"v": 1, "ok": false, "error": "NOTADMIN", ...}``
followed by the end of the connection). Then each request is one JSON object on
one line and gets exactly one response line, in order::

    {"v": 1, "id": 7, "cmd": "policy", "args": {"product": {"index": 1}, "value": "GRAB"}}
    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": "ILLEGAL", "message": "..."}

``id`` is optional and echoed. Lines end with LF and are at most `MAX_LINE`
bytes of UTF-8; a longer line gets a ``LINE_TOO_LONG`` answer and the end of the
connection. A request whose ``v`` is not a version this server speaks gets
``VERSION`` (the greeting lists the versions spoken).
"""

from __future__ import annotations

import json
from typing import Any

#: The protocol version this module speaks.
PROTOCOL_VERSION = 1
#: Versions a server accepts.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
#: Longest line either side sends or accepts (bytes, without the LF).
MAX_LINE = 1 << 20
#: The greeting's ``hello`` value.
HELLO = "hqnlsd-admin"

# Error names (besides the licence status names the engine gives, e.g. BADPRODUCT).
BAD_REQUEST = "BAD_REQUEST"
UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
LINE_TOO_LONG = "LINE_TOO_LONG"
VERSION = "VERSION"
NOTADMIN = "NOTADMIN"
INTERNAL = "INTERNAL"
NOT_AVAILABLE = "NOT_AVAILABLE"
#: The admin is known, but its certificate does not allow this command (e.g. a remote down).
NOT_ALLOWED = "NOT_ALLOWED"


class WireError(ValueError):
    """A line that is not a valid admin message; ``name`` is the error to answer."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line (compact JSON + LF); ValueError if it would be too long."""
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(line) > MAX_LINE:
        raise ValueError(f"admin message of {len(line)} bytes exceeds {MAX_LINE}")
    return line + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """A received line as a JSON object; WireError(BAD_REQUEST) if it is not one."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise WireError(BAD_REQUEST, f"not a JSON line: {error}") from None
    except RecursionError:
        # Nesting deeper than the decoder's stack: refused like any other bad line.
        raise WireError(BAD_REQUEST, "not a JSON line: nested too deeply") from None
    if not isinstance(value, dict):
        raise WireError(BAD_REQUEST, "a message must be a JSON object")
    return value


def ok(result: Any, request_id: Any = None) -> dict[str, Any]:
    """A success response."""
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "ok": True, "result": result}
    if request_id is not None:
        message["id"] = request_id
    return message


def error(name: str, text: str, request_id: Any = None) -> dict[str, Any]:
    """A failure response: an error name and a message for the admin."""
    message: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "ok": False,
        "error": name,
        "message": text,
    }
    if request_id is not None:
        message["id"] = request_id
    return message


def request(command: str, args: dict[str, Any], request_id: int | None = None) -> dict[str, Any]:
    """A request message."""
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "cmd": command, "args": args}
    if request_id is not None:
        message["id"] = request_id
    return message
