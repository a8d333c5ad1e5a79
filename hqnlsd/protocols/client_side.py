"""The client's side of the client protocol: writing requests, reading replies.

What a client program needs and the daemon does not: `format_request` writes a
request line, `parse_reply_line` reads an ``OK``/``ERR`` line back into the
`Ok`/`Err` values of `hqnlsd.protocols.replies`, `unstuff_listing_line` reads a
listing, and `parse_fields` the ``key=value`` words of a listing line. None of
it depends on the daemon's request grammar.
"""

from __future__ import annotations

from hqnlsd.protocols.replies import (
    LISTING_END,
    Err,
    Fields,
    FieldValue,
    Ok,
    format_fields,
    make_fields,
)
from hqnlsd.protocols.tokenizer import WireError, Word, split_words
from hqnlsd.status import Status


class ReplyParseError(ValueError):
    """A reply line (as read by a client) that is not in the protocol's form."""


def format_request(verb: str, /, **fields: FieldValue) -> bytes:
    """A request line, with its LF: ``format_request("RELEASE", handle="H1")``."""
    text = verb if not fields else f"{verb} {format_fields(make_fields(fields))}"
    return text.encode("utf-8") + b"\n"


def parse_fields(text: str) -> dict[str, str]:
    """The ``key=value`` words of a reply or listing line; raise ReplyParseError."""
    try:
        words = split_words(text)
    except WireError as e:
        raise ReplyParseError(e.message) from None
    out: dict[str, str] = {}
    for key, value in words:
        if key is None:
            raise ReplyParseError(f"expected key=value, got {value!r}")
        if key in out:
            raise ReplyParseError(f"{key}= given twice")
        out[key] = value
    return out


def parse_reply_line(text: str) -> Ok | Err:
    """An ``OK`` or ``ERR`` reply line (line end removed); raise ReplyParseError."""
    try:
        words = split_words(text)
    except WireError as e:
        raise ReplyParseError(e.message) from None
    if not words or words[0][0] is not None or words[0][1] not in ("OK", "ERR"):
        raise ReplyParseError(f"not a reply line: {text!r}")
    rest = words[1:]
    if words[0][1] == "OK":
        word = ""
        if rest and rest[0][0] is None:
            word = rest[0][1]
            rest = rest[1:]
        try:
            return Ok(_reply_fields(rest), word)
        except ValueError as e:
            raise ReplyParseError(str(e)) from None
    if not rest or rest[0][0] is not None or rest[0][1] not in Status.__members__:
        raise ReplyParseError(f"ERR without a known status name: {text!r}")
    status = Status[rest[0][1]]
    fields = dict(_reply_fields(rest[1:]))
    code = fields.pop("code", None)
    if code is not None and code != f"0x{status.code:08X}":
        raise ReplyParseError(f"code={code} does not belong to {status.name}")
    msg = fields.pop("msg", "")
    return Err(status, msg, tuple(fields.items()))


def _reply_fields(words: list[Word]) -> Fields:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in words:
        if key is None:
            raise ReplyParseError(f"expected key=value, got {value!r}")
        if key in seen:
            raise ReplyParseError(f"{key}= given twice")
        seen.add(key)
        out.append((key, value))
    return tuple(out)


def unstuff_listing_line(line: str) -> str | None:
    """A listing line as sent (line end removed) back to its text; None at the end."""
    if line == LISTING_END:
        return None
    return line[1:] if line.startswith(".") else line
