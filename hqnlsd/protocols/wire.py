"""The client text protocol on the wire: parse request lines, format replies.

Pure functions and immutable values, no I/O: `hqnlsd.protocols.client` feeds
lines in and writes the bytes out; client programs use `format_request` and
`parse_reply_line` to speak the same language.

A request is one line: a verb (case-insensitive) and ``key=value`` words. Keys
are lowercase identifiers; a value with spaces or other special characters is
double-quoted, with backslash escapes inside the quotes (``\\"``, ``\\\\``,
``\\n``, ``\\r``, ``\\t``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``). Outside quotes a
value is the run of non-blank characters after ``=``, taken literally.

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
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeAlias

from hqnlsd.status import Status

#: The client protocol's TCP port: where daemons listen and clients ask, unless told.
DEFAULT_CLIENT_PORT = 1236
#: The longest request line accepted, in bytes, not counting the CR LF or LF.
MAX_LINE_BYTES = 1024
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

_KEY_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_BLANKS = " \t"
# The characters that str.splitlines() treats as line ends; none may reach a
# reply unescaped, and a listing line must not contain any.
_LINE_BREAKS_RE = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPE_OF = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_HEX_RE = re.compile(r"[0-9A-Fa-f]+\Z")
_DECIMAL_RE = re.compile(r"[0-9]{1,10}\Z")


# --------------------------------------------------------------------------
# Errors


class WireError(Exception):
    """A request line that can't be accepted; becomes one ``ERR`` reply."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def reply(self) -> Err:
        """The ``ERR`` reply that tells the client what was wrong."""
        return Err(self.status, self.message)


def _syntax(message: str) -> WireError:
    return WireError(Status.SYNTAX, message)


class ReplyParseError(ValueError):
    """A reply line (as read by a client) that is not in the protocol's form."""


# --------------------------------------------------------------------------
# Quoting


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


def _unescape(body: str, key: str) -> str:
    """The text of a quoted value's inside (between the quotes)."""
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        j = body.find("\\", i)
        if j < 0:
            out.append(body[i:])
            break
        out.append(body[i:j])
        if j + 1 >= n:
            raise _syntax(f"the quoted value of {key}= ends with a lone backslash")
        kind = body[j + 1]
        simple = _SIMPLE_ESCAPES.get(kind)
        if simple is not None:
            out.append(simple)
            i = j + 2
            continue
        width = _HEX_DIGITS.get(kind)
        digits = body[j + 2 : j + 2 + width] if width else ""
        if width is None or len(digits) != width or not _HEX_RE.match(digits):
            raise _syntax(
                f"bad escape {body[j:j + 2]!r} in the value of {key}= "
                '(inside quotes use \\" \\\\ \\n \\r \\t \\xHH \\uHHHH \\UHHHHHHHH)'
            )
        point = int(digits, 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            raise _syntax(f"escape {body[j:j + 2 + width]!r} in {key}= is not a character")
        out.append(chr(point))
        i = j + 2 + width
    return "".join(out)


# --------------------------------------------------------------------------
# Tokenizing

#: One word of a line: (key, value) for ``key=value``, (None, word) for a bare word.
Word: TypeAlias = tuple[str | None, str]

_WORD_RE = re.compile(
    r"""[ \t]*(?:
        (?P<key>[^ \t="]*)=(?:"(?P<quoted>[^"\\]*(?:\\.[^"\\]*)*)"|(?P<bare>[^ \t"]*))
      | (?P<word>[^ \t="]+)
    )(?=[ \t]|\Z)""",
    re.VERBOSE | re.DOTALL,
)


def split_words(text: str) -> list[Word]:
    """Split a line (without its line end) into words; raise WireError(SYNTAX).

    Blanks are spaces and tabs. A bare word may not contain ``=`` or ``"``;
    ``key=value`` needs a lowercase identifier as key.
    """
    words: list[Word] = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos] in _BLANKS:
            pos += 1
        if pos >= n:
            return words
        match = _WORD_RE.match(text, pos)
        if match is None:
            raise _diagnose(text, pos)
        pos = match.end()
        key = match.group("key")
        if key is None:
            words.append((None, match.group("word")))
            continue
        if not _KEY_RE.match(key):
            raise _bad_key(key)
        quoted = match.group("quoted")
        if quoted is not None:
            words.append((key, _unescape(quoted, key)))
        else:
            words.append((key, match.group("bare")))


def _bad_key(key: str) -> WireError:
    if not key:
        return _syntax("'=' without a key before it (arguments are key=value)")
    return _syntax(f"bad key {key!r}: keys are lowercase names like user=")


def _diagnose(text: str, pos: int) -> WireError:
    """Say precisely why the word at `pos` does not tokenize."""
    equals = text.find("=", pos)
    blank = min((i for i in (text.find(" ", pos), text.find("\t", pos)) if i >= 0), default=-1)
    end_of_word = blank if blank >= 0 else len(text)
    if text[pos] == '"':
        return _syntax('a quoted value needs a key in front: key="..."')
    if equals < 0 or equals > end_of_word or '"' in text[pos:equals]:
        shown = text[pos:end_of_word]
        return _syntax(f"unexpected quote in {shown!r}")
    key = text[pos:equals]
    if not _KEY_RE.match(key):
        return _bad_key(key)
    after = equals + 1
    if after < len(text) and text[after] == '"':
        closing = _closing_quote(text, after + 1)
        if closing < 0:
            return _syntax(f"the quoted value of {key}= has no closing quote")
        return _syntax(f"put a blank after the closing quote of {key}=")
    return _syntax(f'the value of {key}= contains a quote; quote the whole value: {key}="..."')


def _closing_quote(text: str, start: int) -> int:
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


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
        raise _syntax(f"{name}= must not be empty")
    return raw


def _bounded_text(limit: int) -> _Convert:
    def convert(name: str, raw: str) -> str:
        _text(name, raw)
        if len(raw) > limit:
            raise _syntax(f"{name}= is longer than {limit} characters")
        return raw

    return convert


def _integer(low: int, high: int) -> _Convert:
    def convert(name: str, raw: str) -> int:
        if not _DECIMAL_RE.match(raw) or not low <= int(raw) <= high:
            raise _syntax(
                f"{name}= must be a whole number {low}..{high}, got {raw!r}"
            )
        return int(raw)

    return convert


def _hex_bytes(low: int, high: int) -> _Convert:
    def convert(name: str, raw: str) -> bytes:
        if not _HEX_RE.match(raw) or len(raw) % 2 or not low <= len(raw) // 2 <= high:
            raise _syntax(
                f"{name}= must be {low} to {high} bytes in hex (an even number of "
                f"digits 0-9a-f), got {raw!r}"
            )
        return bytes.fromhex(raw)

    return convert


def _hostid(name: str, raw: str) -> int:
    digits = raw[2:] if raw[:2] in ("0x", "0X") else raw
    if not 1 <= len(digits) <= 8 or not _HEX_RE.match(digits):
        raise _syntax(
            f"{name}= must be a 32-bit unique id in hex like 0x1a2b3c4d, "
            f"got {raw!r}"
        )
    return int(digits, 16)


_HANDLE_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


def _handle(name: str, raw: str) -> str:
    if not _HANDLE_RE.match(raw):
        raise _syntax(
            f"{name}= must be the handle a REQUEST returned (1 to 64 letters, digits "
            f"or ._:-), got {raw!r}"
        )
    return raw


_QUERY_WHAT = {item.value: item for item in QueryWhat}


def _query_what(name: str, raw: str) -> QueryWhat:
    what = _QUERY_WHAT.get(raw.lower())
    if what is None:
        choices = "|".join(item.value for item in QueryWhat)
        raise _syntax(f"{name}= must be one of {choices}, got {raw!r}")
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
                raise _syntax(f"{spec.name} takes no arguments")
            raise _syntax(
                f"unexpected word {_shown(value)}: arguments are key=value; "
                f"usage: {spec.usage}"
            )
        if key in values:
            raise _syntax(f"{key}= given twice")
        values[key] = value
    known = {arg.name for arg in spec.args}
    unknown = [key for key in values if key not in known]
    if unknown:
        if not spec.args:
            raise _syntax(f"{spec.name} takes no arguments")
        raise _syntax(
            f"{spec.name} does not take {', '.join(k + '=' for k in unknown)}; "
            f"usage: {spec.usage}"
        )
    missing = [arg.name for arg in spec.args if arg.required and arg.name not in values]
    if missing:
        raise _syntax(
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
        raise _syntax("HELP takes at most one command name, like HELP REQUEST")
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
        raise _syntax(
            f"the line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


def parse_text(text: str) -> Command | None:
    """The command on a decoded line; None for a blank line; raise WireError."""
    words = split_words(text)
    if not words:
        return None
    key, first = words[0]
    if key is not None:
        raise _syntax("a request starts with a command name, like REQUEST; HELP lists them")
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
# Replies


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ValueError(f"reply key {key!r} is not a lowercase identifier")
    return key


def make_fields(items: Mapping[str, object] | Iterable[tuple[str, object]]) -> Fields:
    """Checked reply fields: identifier keys, each once; integers made decimal text.

    Values must be `FieldValue` (str or int, not bool); anything else is a TypeError.
    """
    pairs = items.items() if isinstance(items, Mapping) else items
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in pairs:
        _check_key(key)
        if key in seen:
            raise ValueError(f"reply key {key!r} given twice")
        seen.add(key)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"reply value of {key!r} must be str or int, not {type(value)}")
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
        return cls(make_fields(fields), word)

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


# --------------------------------------------------------------------------
# The client's side: writing requests, reading replies


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
