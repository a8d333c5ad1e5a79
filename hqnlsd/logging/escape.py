"""Escaping what a client supplies before it reaches a log line.

A user name, host name, product name or MESSAGE text comes from the network. Written
raw, a newline in it starts a forged log line, and ESC, BEL or a bidi override
(U+202E) act on the terminal or editor of whoever reads the log. `escape_text`
makes any string one line of printable text: every character that
`str.isprintable` refuses except the space (C0 and C1 controls, DEL, line and
paragraph separators, format characters such as the bidi controls, surrogates,
unassigned code points) becomes a Python-style escape (``\\n``, ``\\x1b``,
``\\u202e``, ``\\U000e0001``), and a backslash is doubled so that an escape
cannot be faked. Printable text (accents, other scripts, emoji) is kept as is.

The log filter (`hqnlsd.logging.observer.SwitchedObserver`) applies it to every
string field of every event, so no log call has to remember it.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if ch == " " or ch.isprintable():
        return ch
    point = ord(ch)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def escape_text(text: str) -> str:
    """``text`` as one line of printable characters (see the module doc)."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    return "".join(map(_escape_char, text))
