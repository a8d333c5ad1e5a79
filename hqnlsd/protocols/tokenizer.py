"""Splitting a line of the client protocol into words.

A line is a run of words separated by blanks (spaces and tabs): bare words
(a verb, ``OK``, a status name) and ``key=value`` words. Keys are lowercase
identifiers; a value with spaces or other special characters is double-quoted,
with backslash escapes inside the quotes (``\\"``, ``\\\\``, ``\\n``, ``\\r``,
``\\t``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``). Outside quotes a value is the
run of non-blank characters after ``=``, taken literally.

Both directions read lines with `split_words`: the daemon's request grammar
(`hqnlsd.protocols.grammar`) and the client's reply reader
(`hqnlsd.protocols.client_side`). A line that does not split is a `WireError`
saying precisely what is wrong, which the daemon sends back as an ``ERR`` reply.
"""

from __future__ import annotations

import re
from typing import TypeAlias

from hqnlsd.protocols.quoting import HEX_RE, KEY_RE
from hqnlsd.protocols.replies import Err
from hqnlsd.status import Status

_BLANKS = " \t"
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


class WireError(Exception):
    """A request line that can't be accepted; becomes one ``ERR`` reply."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def reply(self) -> Err:
        """The ``ERR`` reply that tells the client what was wrong."""
        return Err(self.status, self.message)


def syntax_error(message: str) -> WireError:
    """A `WireError` of status SYNTAX: the line is not in the protocol's form."""
    return WireError(Status.SYNTAX, message)


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
            raise syntax_error(f"the quoted value of {key}= ends with a lone backslash")
        kind = body[j + 1]
        simple = _SIMPLE_ESCAPES.get(kind)
        if simple is not None:
            out.append(simple)
            i = j + 2
            continue
        width = _HEX_DIGITS.get(kind)
        digits = body[j + 2 : j + 2 + width] if width else ""
        if width is None or len(digits) != width or not HEX_RE.match(digits):
            raise syntax_error(
                f"bad escape {body[j:j + 2]!r} in the value of {key}= "
                '(inside quotes use \\" \\\\ \\n \\r \\t \\xHH \\uHHHH \\UHHHHHHHH)'
            )
        point = int(digits, 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            raise syntax_error(f"escape {body[j:j + 2 + width]!r} in {key}= is not a character")
        out.append(chr(point))
        i = j + 2 + width
    return "".join(out)


#: One word of a line: (key, value) for ``key=value``, (None, word) for a bare word.
Word: TypeAlias = tuple[str | None, str]

_WORD_RE = re.compile(
    r"""[ \t]*(?:
        (?P<key>[^ \t="]*)=(?:"(?P<quoted>[^"\\]*(?:\\.[^"\\]*)*)"|(?P<bare>[^ \t"]*))
      | (?P<word>[^ \t="]+)
    )(?=[ \t]|\Z)""",
    re.VERBOSE | re.DOTALL,
)


#: Keys known to be good, so that the usual ones are checked once, not on every line
#: (at most `_GOOD_KEYS_KEPT` of them: a client cannot make the set grow without end).
_GOOD_KEYS: set[str] = set()
_GOOD_KEYS_KEPT = 256


def _good_key(key: str) -> bool:
    if key in _GOOD_KEYS:
        return True
    if not KEY_RE.match(key):
        return False
    if len(_GOOD_KEYS) < _GOOD_KEYS_KEPT:
        _GOOD_KEYS.add(key)
    return True


def split_words(text: str) -> list[Word]:
    """Split a line (without its line end) into words; raise WireError(SYNTAX).

    Blanks are spaces and tabs. A bare word may not contain ``=`` or ``"``;
    ``key=value`` needs a lowercase identifier as key.
    """
    if '"' not in text:
        return _split_unquoted(text)
    return _split_matched(text)


def _split_unquoted(text: str) -> list[Word]:
    """`split_words` for a line without quotes (most lines): the same words and errors
    as `_split_quoted` gives it, without a regular expression.

    Without a quote every run of non-blanks is one word: ``key=value`` split at its
    first ``=`` (the value may hold more), or a bare word if it has no ``=``.
    """
    words: list[Word] = []
    for chunk in text.replace("\t", " ").split(" "):
        if not chunk:
            continue
        key, equals, value = chunk.partition("=")
        if not equals:
            words.append((None, chunk))
        elif _good_key(key):
            words.append((key, value))
        else:
            raise _bad_key(key)
    return words


def _split_matched(text: str) -> list[Word]:
    """`split_words` for a line with quotes: the words one after the other as the
    regular expression finds them; a line where it skips something (a word that does
    not split) goes to `_split_quoted`, which says what is wrong."""
    words: list[Word] = []
    pos = 0
    for match in _WORD_RE.finditer(text):
        if match.start() != pos:
            return _split_quoted(text)
        pos = match.end()
        key, quoted, bare, word = match.groups()
        if key is None:
            words.append((None, word))
        elif not _good_key(key):
            raise _bad_key(key)
        elif quoted is not None:
            words.append((key, _unescape(quoted, key)))
        else:
            words.append((key, bare))
    if text[pos:].strip(_BLANKS):
        return _split_quoted(text)
    return words


def _split_quoted(text: str) -> list[Word]:
    """`split_words` for any line: one regular expression match per word, and the
    reason why when one does not match."""
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
        key, quoted, bare, word = match.groups()
        if key is None:
            words.append((None, word))
        elif not _good_key(key):
            raise _bad_key(key)
        elif quoted is not None:
            words.append((key, _unescape(quoted, key)))
        else:
            words.append((key, bare))


def _bad_key(key: str) -> WireError:
    if not key:
        return syntax_error("'=' without a key before it (arguments are key=value)")
    return syntax_error(f"bad key {key!r}: keys are lowercase names like user=")


def _diagnose(text: str, pos: int) -> WireError:
    """Say precisely why the word at `pos` does not tokenize."""
    equals = text.find("=", pos)
    blank = min((i for i in (text.find(" ", pos), text.find("\t", pos)) if i >= 0), default=-1)
    end_of_word = blank if blank >= 0 else len(text)
    if text[pos] == '"':
        return syntax_error('a quoted value needs a key in front: key="..."')
    if equals < 0 or equals > end_of_word or '"' in text[pos:equals]:
        shown = text[pos:end_of_word]
        return syntax_error(f"unexpected quote in {shown!r}")
    key = text[pos:equals]
    if not KEY_RE.match(key):
        return _bad_key(key)
    after = equals + 1
    if after < len(text) and text[after] == '"':
        closing = _closing_quote(text, after + 1)
        if closing < 0:
            return syntax_error(f"the quoted value of {key}= has no closing quote")
        return syntax_error(f"put a blank after the closing quote of {key}=")
    return syntax_error(f'the value of {key}= contains a quote; quote the whole value: {key}="..."')


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

