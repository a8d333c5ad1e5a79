"""The client protocol's request grammar: request lines in, typed commands out.

A request is one line: a verb (case-insensitive) and ``key=value`` words (see
`hqnlsd.protocols.tokenizer` for the words and their quoting). One table,
`VERBS`, says what each verb takes: it builds the typed command (`Request`,
`Update`, ...) from a line and writes the HELP text, so the two never disagree.

Pure functions and immutable values, no I/O: `hqnlsd.protocols.client` feeds
raw lines to `parse_line` and hands the commands to the daemon's dispatcher;
anything that is not a valid request is a `WireError`, answered with one
``ERR`` line.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias

from hqnlsd.protocols.quoting import HEX_RE
from hqnlsd.protocols.replies import Listing
from hqnlsd.protocols.tokenizer import WireError, Word, split_words, syntax_error
from hqnlsd.status import Status

#: The longest request line accepted, in bytes, not counting the CR LF or LF.
MAX_LINE_BYTES = 1024

_DECIMAL_RE = re.compile(r"[0-9]{1,10}\Z")


# --------------------------------------------------------------------------
# Telnet


_IAC = 0xFF
_SB = 0xFA
_SE = 0xF0
_WILL_WONT_DO_DONT = range(0xFB, 0xFF)


def strip_telnet(raw: bytes) -> bytes:
    """`raw` without telnet IAC command sequences (``telnet host 1236`` sends them).

    IAC IAC (an escaped 0xFF data byte) is dropped too: 0xFF is never valid in
    UTF-8, so it could only earn the line a SYNTAX reply. A sequence cut short
    by the end of the line is dropped as far as it goes.
    """
    if _IAC not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte != _IAC:
            out.append(byte)
            i += 1
            continue
        command = raw[i + 1] if i + 1 < n else None
        if command is None:
            i += 1
        elif command in _WILL_WONT_DO_DONT:
            i += 3
        elif command == _SB:
            end = raw.find(bytes((_IAC, _SE)), i + 2)
            i = n if end < 0 else end + 2
        else:
            i += 2
    return bytes(out)


# --------------------------------------------------------------------------
# Commands


class QueryWhat(enum.Enum):
    """What ``QUERY handle=H what=..`` asks about (the engine's QUERY_KINDS)."""

    DATA = "data"  # the permit's application data
    PERIOD = "period"  # the update period, in seconds
    CONTEXT = "context"  # the licence: access level, locked or floating, on a locked node
    POLICY = "policy"  # the product's policy word and its flags
    DATES = "dates"  # the permit's start and expiry dates


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """``REQUEST``: take a licence of a product for a process."""

    verb: ClassVar[str] = "REQUEST"
    publisher: str
    product: str
    version: str
    user: str
    host: str
    pid: int
    units: int = 1
    client: str | None = None
    challenge: bytes | None = None
    uid: int | None = None
    group: str | None = None
    hostid: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    """``UPDATE``: confirm that a licence is still in use."""

    verb: ClassVar[str] = "UPDATE"
    handle: str
    challenge: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    """``RELEASE``: give a licence back."""

    verb: ClassVar[str] = "RELEASE"
    handle: str


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """``QUERY``: ask about a held licence."""

    verb: ClassVar[str] = "QUERY"
    handle: str
    what: QueryWhat


@dataclasses.dataclass(frozen=True, slots=True)
class Users:
    """``USERS``: list the current holders of a product (policy UVIS)."""

    verb: ClassVar[str] = "USERS"
    publisher: str
    product: str
    version: str


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """``MESSAGE``: a line of text from the application for the server's log."""

    verb: ClassVar[str] = "MESSAGE"
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """``PING``: is the server there? Answered by the protocol itself."""

    verb: ClassVar[str] = "PING"


@dataclasses.dataclass(frozen=True, slots=True)
class Help:
    """``HELP [VERB]``: the verbs, or one verb in detail. Answered by the protocol."""

    verb: ClassVar[str] = "HELP"
    topic: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Quit:
    """``QUIT``: end the connection. Answered by the protocol."""

    verb: ClassVar[str] = "QUIT"


#: The commands the protocol hands to the dispatcher.
DispatchedCommand: TypeAlias = Request | Update | Release | Query | Users | Message
#: Every command a request line can be.
Command: TypeAlias = DispatchedCommand | Ping | Help | Quit


# --------------------------------------------------------------------------
# Argument checking, one table for parsing and for HELP

_Convert = Callable[[str, str], Any]


@dataclasses.dataclass(frozen=True)
class Arg:
    """One ``key=value`` argument of a verb: its type check and its help."""

    name: str
    kind: str
    convert: _Convert
    help: str
    required: bool = True

    @property
    def usage(self) -> str:
        """``name=KIND``, bracketed when optional."""
        text = f"{self.name}={self.kind}"
        return text if self.required else f"[{text}]"


def _text(name: str, raw: str) -> str:
    if not raw:
        raise syntax_error(f"{name}= must not be empty")
    return raw


def _bounded_text(limit: int) -> _Convert:
    def convert(name: str, raw: str) -> str:
        _text(name, raw)
        if len(raw) > limit:
            raise syntax_error(f"{name}= is longer than {limit} characters")
        return raw

    return convert


def _integer(low: int, high: int) -> _Convert:
    def convert(name: str, raw: str) -> int:
        if not _DECIMAL_RE.match(raw) or not low <= int(raw) <= high:
            raise syntax_error(
                f"{name}= must be a whole number {low}..{high}, got {raw!r}"
            )
        return int(raw)

    return convert


def _hex_bytes(low: int, high: int) -> _Convert:
    def convert(name: str, raw: str) -> bytes:
        if not HEX_RE.match(raw) or len(raw) % 2 or not low <= len(raw) // 2 <= high:
            raise syntax_error(
                f"{name}= must be {low} to {high} bytes in hex (an even number of "
                f"digits 0-9a-f), got {raw!r}"
            )
        return bytes.fromhex(raw)

    return convert


def _hostid(name: str, raw: str) -> int:
    digits = raw[2:] if raw[:2] in ("0x", "0X") else raw
    if not 1 <= len(digits) <= 8 or not HEX_RE.match(digits):
        raise syntax_error(
            f"{name}= must be a 32-bit unique id in hex like 0x1a2b3c4d, "
            f"got {raw!r}"
        )
    return int(digits, 16)


_HANDLE_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


def _handle(name: str, raw: str) -> str:
    if not _HANDLE_RE.match(raw):
        raise syntax_error(
            f"{name}= must be the handle a REQUEST returned (1 to 64 letters, digits "
            f"or ._:-), got {raw!r}"
        )
    return raw


_QUERY_WHAT = {item.value: item for item in QueryWhat}


def _query_what(name: str, raw: str) -> QueryWhat:
    what = _QUERY_WHAT.get(raw.lower())
    if what is None:
        choices = "|".join(item.value for item in QueryWhat)
        raise syntax_error(f"{name}= must be one of {choices}, got {raw!r}")
    return what


UINT32_MAX = 0xFFFFFFFF
#: The most units one REQUEST may ask for.
MAX_UNITS = 65535
#: Challenge sizes accepted, in bytes.
CHALLENGE_BYTES = (1, 128)
#: The longest client token accepted, in characters.
MAX_CLIENT_TOKEN = 128

_PRODUCT_ARGS = (
    Arg("publisher", "TEXT", _text, "the publisher, as written in the permit"),
    Arg("product", "TEXT", _text, "the product, as written in the permit"),
    Arg("version", "TEXT", _text, "the product version, as written in the permit"),
)
_CHALLENGE = Arg(
    "challenge", "HEX", _hex_bytes(*CHALLENGE_BYTES),
    "random bytes the server signs, to prove it is a genuine server of the domain",
    required=False,
)
_HANDLE = Arg("handle", "HANDLE", _handle, "the handle a REQUEST returned")


@dataclasses.dataclass(frozen=True)
class VerbSpec:
    """What a verb takes, what it answers, and how it is built from words."""

    name: str
    command: type[Any]
    args: tuple[Arg, ...]
    summary: str
    reply: str
    topic_word: bool = False

    @functools.cached_property
    def arg_names(self) -> frozenset[str]:
        """The keys this verb takes (computed once, not for every line)."""
        return frozenset(arg.name for arg in self.args)

    @functools.cached_property
    def required_names(self) -> frozenset[str]:
        """The keys this verb requires."""
        return frozenset(arg.name for arg in self.args if arg.required)

    @property
    def usage(self) -> str:
        """The one-line synopsis, as HELP shows it."""
        parts = [self.name, *(arg.usage for arg in self.args)]
        if self.topic_word:
            parts.append("[VERB]")
        return " ".join(parts)


VERBS: dict[str, VerbSpec] = {
    spec.name: spec
    for spec in (
        VerbSpec(
            "REQUEST",
            Request,
            (
                *_PRODUCT_ARGS,
                Arg("user", "TEXT", _text, "the user name of the process"),
                Arg("host", "TEXT", _text, "the host name of the process"),
                Arg("pid", "N", _integer(0, UINT32_MAX), "the process id"),
                Arg("units", "N", _integer(1, MAX_UNITS), "licences wanted (default 1)",
                    required=False),
                Arg("client", "TOKEN", _bounded_text(MAX_CLIENT_TOKEN),
                    "a token naming this request: repeating the REQUEST with the same "
                    "token returns the same handle", required=False),
                _CHALLENGE,
                Arg("uid", "N", _integer(0, UINT32_MAX), "the numeric user id",
                    required=False),
                Arg("group", "TEXT", _text, "the user's group (access levels)",
                    required=False),
                Arg("hostid", "HEX", _hostid, "the host's unique id, 0x1a2b3c4d",
                    required=False),
            ),
            "Take a licence of a product.",
            'OK handle=H period=SECONDS type=floating|locked access=N data="..." '
            "start=DATE expiry=DATE [signature=HEX]",
        ),
        VerbSpec(
            "UPDATE",
            Update,
            (_HANDLE, _CHALLENGE),
            "Confirm that the licence is still in use; send it at least every period.",
            "OK handle=H period=SECONDS [signature=HEX], or ERR LOSTLICENCE: request again",
        ),
        VerbSpec(
            "RELEASE", Release, (_HANDLE,), "Give the licence back.", "OK handle=H",
        ),
        VerbSpec(
            "QUERY",
            Query,
            (_HANDLE, Arg("what", "|".join(item.value for item in QueryWhat), _query_what,
                          "what to tell about the licence")),
            "Ask about a held licence: its permit data, update period, context "
            "(access level, locked or floating), the product's policy, or its dates.",
            "OK key=value ...",
        ),
        VerbSpec(
            "USERS",
            Users,
            _PRODUCT_ARGS,
            "List who holds licences of a product (if the permit's policy allows it).",
            "a listing, one holder a line: user=.. host=.. pid=.. ..., then a line '.'",
        ),
        VerbSpec(
            "MESSAGE",
            Message,
            (Arg("text", "TEXT", _text, "the message, quoted if it has blanks"),),
            "Write a message into the server's log.",
            "OK",
        ),
        VerbSpec("PING", Ping, (), "Check that the server answers.", "OK pong"),
        VerbSpec(
            "HELP", Help, (), "List the commands, or explain one.",
            "a listing, then a line '.'", topic_word=True,
        ),
        VerbSpec("QUIT", Quit, (), "End the connection.", "OK bye"),
    )
}


def _lookup_verb(word: str) -> VerbSpec | None:
    # ASCII only: "qu\u0131t".upper() is "QUIT" (dotless i), and must not be a command.
    return VERBS.get(word.upper()) if word.isascii() else None


#: Characters of an unknown word quoted back in an ERR reply.
SHOWN_WORD = 24


def _shown(word: str) -> str:
    """``word`` quoted for an ERR message, at most `SHOWN_WORD` characters of it."""
    return repr(word) if len(word) <= SHOWN_WORD else repr(word[:SHOWN_WORD]) + "..."


def _unknown_command(word: str) -> WireError:
    return WireError(
        Status.UNKNOWN_COMMAND,
        f"unknown command {_shown(word)}; HELP lists the commands",
    )


def _build(spec: VerbSpec, words: list[Word]) -> Command:
    if spec.topic_word:
        return _build_help(words)
    values: dict[str, str] = {}
    for key, value in words:
        if key is None:
            if not spec.args:
                raise syntax_error(f"{spec.name} takes no arguments")
            raise syntax_error(
                f"unexpected word {_shown(value)}: arguments are key=value; "
                f"usage: {spec.usage}"
            )
        if key in values:
            raise syntax_error(f"{key}= given twice")
        values[key] = value
    # The usual line is well formed: test with the sets made once per verb, and build
    # the lists of what is wrong only when something is.
    known = spec.arg_names
    if not known.issuperset(values):
        unknown = [key for key in values if key not in known]
        if not spec.args:
            raise syntax_error(f"{spec.name} takes no arguments")
        raise syntax_error(
            f"{spec.name} does not take {', '.join(k + '=' for k in unknown)}; "
            f"usage: {spec.usage}"
        )
    if not spec.required_names.issubset(values):
        missing = [arg.name for arg in spec.args if arg.required and arg.name not in values]
        raise syntax_error(
            f"{spec.name} is missing {', '.join(k + '=' for k in missing)}; usage: {spec.usage}"
        )
    kwargs = {arg.name: arg.convert(arg.name, values[arg.name])
              for arg in spec.args if arg.name in values}
    command: Command = spec.command(**kwargs)
    return command


def _build_help(words: list[Word]) -> Help:
    if not words:
        return Help()
    key, value = words[0]
    if len(words) > 1 or key is not None:
        raise syntax_error("HELP takes at most one command name, like HELP REQUEST")
    spec = _lookup_verb(value)
    if spec is None:
        raise _unknown_command(value)
    return Help(spec.name)


# --------------------------------------------------------------------------
# Parsing a request line


def decode_line(raw: bytes) -> str:
    """The text of one raw line (no LF): CR and telnet commands removed, UTF-8 decoded."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    raw = strip_telnet(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise syntax_error(
            f"the line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


def parse_text(text: str) -> Command | None:
    """The command on a decoded line; None for a blank line; raise WireError."""
    words = split_words(text)
    if not words:
        return None
    key, first = words[0]
    if key is not None:
        raise syntax_error("a request starts with a command name, like REQUEST; HELP lists them")
    spec = _lookup_verb(first)
    if spec is None:
        raise _unknown_command(first)
    return _build(spec, words[1:])


def parse_line(raw: bytes) -> Command | None:
    """The command on a raw request line (without its LF); None if blank.

    Raises WireError for anything that is not a valid request. The caller
    checks the length (`MAX_LINE_BYTES`) before, since it decides what an
    over-long line does to the connection.
    """
    return parse_text(decode_line(raw))



# --------------------------------------------------------------------------
# HELP


def help_listing(topic: str | None = None) -> Listing:
    """The HELP reply: every verb's synopsis, or one verb explained."""
    if topic is None:
        return Listing(
            (
                "Commands (HELP VERB explains one; quote values with blanks: "
                'user="Jo Smith"):',
                *(spec.usage for spec in VERBS.values()),
            )
        )
    spec = VERBS[topic]
    lines = [spec.usage, f"  {spec.summary}"]
    lines.extend(f"  {arg.usage:<24} {arg.help}" for arg in spec.args)
    if spec.topic_word:
        lines.append(f"  {'VERB':<24} a command name, to explain it")
    lines.append(f"  reply: {spec.reply}")
    lines.append("  errors: ERR NAME code=0x... msg=\"...\" (one line)")
    return Listing(tuple(lines))
