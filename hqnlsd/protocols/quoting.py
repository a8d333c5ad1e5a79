"""Quoting values on the client protocol's lines: what may go bare, and how a
quoted value is written.

The bottom of the protocol's text layer, shared by both directions: replies
(`hqnlsd.protocols.replies`) quote their values with `quote`, and the tokenizer
(`hqnlsd.protocols.tokenizer`) reads them back. Outside quotes a value is the
run of non-blank characters after ``=``, taken literally; inside double quotes
``\\"`` and ``\\\\`` are escaped and every character that is not printable is
written as ``\\n``, ``\\r``, ``\\t``, ``\\xHH``, ``\\uHHHH`` or ``\\UHHHHHHHH``.
"""

from __future__ import annotations

import re

#: What a key looks like: a lowercase identifier (``user``, ``hostid``).
KEY_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
#: One or more hex digits, either case (escapes, challenges, host ids).
HEX_RE = re.compile(r"[0-9A-Fa-f]+\Z")

_ESCAPE_OF = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def needs_quotes(value: str) -> bool:
    """True if `value` can't be written bare (empty, blanks, quotes, controls)."""
    return (
        not value
        or not value.isprintable()
        or " " in value
        or '"' in value
        or "\\" in value
    )


def quote(value: str, *, force: bool = False) -> str:
    """`value` as it goes on the wire: bare if it can be, else double-quoted.

    Inside quotes, ``"`` and ``\\`` are backslash-escaped and every character
    that is not printable (controls, line and paragraph separators, format
    characters, lone surrogates...) is written as an escape, so the result is
    always one line of printable text.
    """
    if not force and not needs_quotes(value):
        return value
    if value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    out = ['"']
    for ch in value:
        escaped = _ESCAPE_OF.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            point = ord(ch)
            if point < 0x100:
                out.append(f"\\x{point:02x}")
            elif point < 0x10000:
                out.append(f"\\u{point:04x}")
            else:
                out.append(f"\\U{point:08x}")
    out.append('"')
    return "".join(out)
