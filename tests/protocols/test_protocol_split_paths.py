"""The tokenizer's quick paths split every line as its word-by-word path does.

`hqnlsd.protocols.tokenizer.split_words` takes a line without quotes apart with
string methods, and a line with quotes with one scan of the word pattern; the
word-by-word loop (`_split_quoted`) is the reference. Same words, or the same
error (status and message), for any line.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from hqnlsd.protocols import tokenizer
from hqnlsd.protocols.tokenizer import WireError, Word

#: Pieces that matter to the grammar of words, and a few that do not.
_PIECES = st.sampled_from(
    ["a", "z", "_", "1", "A", "=", " ", "\t", '"', "\\", "x", "n", "u", "é", "\r",
     "\x0b", "user", "REQUEST", '"x y"', "\\x4", "\\u00e9"]
)
_LINES = st.lists(_PIECES, max_size=16).map("".join)


def _outcome(split: Callable[[str], list[Word]], text: str) -> tuple[str, object]:
    try:
        words = split(text)
    except WireError as error:
        return ("error", (error.status, error.message))
    return ("words", words)


@settings(max_examples=3000, deadline=None)
@given(_LINES)
def test_quick_paths_agree_with_the_word_by_word_split(text: str) -> None:
    """split_words (whichever path it takes) answers what the reference loop answers."""
    assert _outcome(tokenizer.split_words, text) == _outcome(tokenizer._split_quoted, text)


@settings(max_examples=1000, deadline=None)
@given(_LINES)
def test_the_matched_path_agrees_on_lines_with_or_without_quotes(text: str) -> None:
    """The one-scan path is right for any line, not only those with quotes."""
    assert _outcome(tokenizer._split_matched, text) == _outcome(tokenizer._split_quoted, text)


def test_a_request_line_splits_the_same_both_ways() -> None:
    """A usual REQUEST, with and without quoted values."""
    plain = "REQUEST publisher=P product=W version=1.0 user=jo host=h pid=12 client=t-1"
    quoted = 'REQUEST publisher="Bench P" product="W 1" version=1.0 user=jo\thost=h  pid=12'
    for text in (plain, quoted, "  " + plain + " \t"):
        assert tokenizer.split_words(text) == tokenizer._split_quoted(text)
    assert tokenizer.split_words(quoted)[1] == ("publisher", "Bench P")
