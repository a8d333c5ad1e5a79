"""The client protocol's replies: the reply model and how it is written on the wire.

A reply is one line, ``OK [word] key=value ...`` or
``ERR NAME code=0x%08X key=value ... msg="..."``, or a *listing*: zero or more
lines and then a line holding a single ``.``. A listing line that starts with
``.``, or with the word ``OK`` or ``ERR``, is sent with a ``.`` in front, which
the reader removes (as in SMTP). So a client reading a listing verb's answer
knows from the first line alone: ``OK``/``ERR`` is a one-line reply, anything
else starts a listing. Replies end in CR LF, so that a terminal shows them
properly. Whatever a value holds, the formatter escapes every control or
otherwise invisible character, so a reply is exactly one line under any
line-splitting convention.

Pure values and functions, no I/O: the daemon's dispatcher answers `Ok`, `Err`
or `Listing`, `hqnlsd.protocols.client` writes `format_reply`'s bytes, and the
client side (`hqnlsd.protocols.client_side`) reads them back into the same values.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import TypeAlias

from hqnlsd.protocols.quoting import KEY_RE, quote
from hqnlsd.status import Status

#: What ends every reply line.
REPLY_EOL = b"\r\n"
#: The line that ends a listing reply.
LISTING_END = "."

#: A reply value as the dispatcher may give it; integers are written in decimal.
FieldValue: TypeAlias = str | int
#: Reply fields in wire order, values already converted to text.
Fields: TypeAlias = tuple[tuple[str, str], ...]

# Keys whose values are always quoted, so that clients can rely on the form.
ALWAYS_QUOTED = frozenset({"msg", "data"})

# The characters that str.splitlines() treats as line ends; none may reach a
# reply unescaped, and a listing line must not contain any.
_LINE_BREAKS_RE = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


#: Keys already found good by `_check_key` (the daemon's replies use a few dozen).
_GOOD_KEYS: set[str] = set()


def _check_key(key: str) -> str:
    if key in _GOOD_KEYS:
        return key
    if not KEY_RE.match(key):
        raise ValueError(f"reply key {key!r} is not a lowercase identifier")
    if type(key) is str and len(_GOOD_KEYS) < 1024:
        _GOOD_KEYS.add(key)
    return key


def make_fields(items: Mapping[str, object] | Iterable[tuple[str, object]]) -> Fields:
    """Checked reply fields: identifier keys, each once; integers made decimal text.

    Values must be `FieldValue` (str or int, not bool); anything else is a TypeError.
    """
    pairs = items.items() if type(items) is dict or isinstance(items, Mapping) else items
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in pairs:
        _check_key(key)
        if key in seen:
            raise ValueError(f"reply key {key!r} given twice")
        seen.add(key)
        if type(value) is str:
            out.append((key, value))
        elif isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"reply value of {key!r} must be str or int, not {type(value)}")
        else:
            out.append((key, value if isinstance(value, str) else str(value)))
    return tuple(out)


def format_fields(fields: Fields) -> str:
    """``key=value key="quoted value" ...`` (msg and data always quoted)."""
    return " ".join(f"{key}={quote(value, force=key in ALWAYS_QUOTED)}" for key, value in fields)


@dataclasses.dataclass(frozen=True)
class Ok:
    """A success reply: ``OK [word] key=value ...``."""

    fields: Fields = ()
    word: str = ""

    def __post_init__(self) -> None:
        make_fields(self.fields)
        if self.word:
            _check_key(self.word)

    @classmethod
    def of(cls, word: str = "", /, **fields: FieldValue) -> Ok:
        """``Ok.of(handle="H1", period=300)``, ``Ok.of("bye")``."""
        checked = make_fields(fields)
        if word:
            _check_key(word)
        # Checked once, here: `__post_init__` would only check them again.
        reply = object.__new__(cls)
        object.__setattr__(reply, "fields", checked)
        object.__setattr__(reply, "word", word)
        return reply

    def get(self, key: str) -> str | None:
        """The value of `key`, or None."""
        return dict(self.fields).get(key)


@dataclasses.dataclass(frozen=True)
class Err:
    """An error reply: ``ERR NAME code=0x... key=value ... msg="..."``."""

    status: Status
    msg: str
    fields: Fields = ()

    def __post_init__(self) -> None:
        make_fields(self.fields)
        for key, _ in self.fields:
            if key in ("code", "msg"):
                raise ValueError(f"{key}= is written by the protocol, not given as a field")

    @classmethod
    def of(cls, status: Status, msg: str, /, **fields: FieldValue) -> Err:
        """``Err.of(Status.TRY_SERVER, "ask the primary", n=2, addr="127.0.0.2")``."""
        return cls(status, msg, make_fields(fields))

    def get(self, key: str) -> str | None:
        """The value of `key`, or None."""
        return dict(self.fields).get(key)


@dataclasses.dataclass(frozen=True)
class Listing:
    """A listing reply: its lines (without the final ``.``), free text each."""

    lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for line in self.lines:
            if _LINE_BREAKS_RE.search(line):
                raise ValueError(f"a listing line holds a line break: {line!r}")

    @classmethod
    def of_records(
        cls, records: Iterable[Mapping[str, object] | Iterable[tuple[str, object]]]
    ) -> Listing:
        """A listing of ``key=value ...`` lines, one per record (e.g. USERS)."""
        return cls(tuple(format_fields(make_fields(record)) for record in records))


#: What a dispatcher answers.
Reply: TypeAlias = Ok | Err | Listing


def format_reply_text(reply: Reply) -> list[str]:
    """The reply's lines, without line ends (a listing's include the final ``.``)."""
    if isinstance(reply, Ok):
        head = f"OK {reply.word}" if reply.word else "OK"
        return [f"{head} {format_fields(reply.fields)}" if reply.fields else head]
    if isinstance(reply, Err):
        parts = [f"ERR {reply.status.name} code=0x{reply.status.code:08X}"]
        if reply.fields:
            parts.append(format_fields(reply.fields))
        parts.append(f"msg={quote(reply.msg, force=True)}")
        return [" ".join(parts)]
    lines = ["." + line if _needs_stuffing(line) else line for line in reply.lines]
    lines.append(LISTING_END)
    return lines


def _needs_stuffing(line: str) -> bool:
    # A leading "." would be read as (or like) the end line; a leading OK/ERR
    # word would make the first line of a listing look like a one-line reply.
    return line.startswith((".", "OK ", "ERR ")) or line in ("OK", "ERR")


def format_reply(reply: Reply) -> bytes:
    """The reply as bytes on the wire, every line ending in CR LF."""
    # backslashreplace: a lone surrogate in a listing line must not raise here.
    eol = REPLY_EOL.decode()
    text = eol.join(format_reply_text(reply)) + eol
    return text.encode("utf-8", "backslashreplace")
