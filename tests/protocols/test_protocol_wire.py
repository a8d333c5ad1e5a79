# mypy: allow-untyped-calls
"""Tests of the pure wire layer: parsing requests, formatting replies, quoting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hqnlsd.protocols import client_side, grammar, quoting, tokenizer
from hqnlsd.protocols.replies import _LINE_BREAKS_RE, Err, Listing, Ok, format_reply
from hqnlsd.status import Status

REQUEST_LINE = (
    b"REQUEST publisher=Harlequin product=LispWorks version=8.0 user=jo host=box pid=42"
)


def parse(line: str | bytes) -> grammar.Command | None:
    """parse_line on text or bytes."""
    return grammar.parse_line(line.encode() if isinstance(line, str) else line)


def error_of(line: str | bytes) -> tokenizer.WireError:
    """The WireError that parsing `line` raises."""
    with pytest.raises(tokenizer.WireError) as info:
        parse(line)
    return info.value


# -- every verb, typed ------------------------------------------------------


def test_request_minimal_has_defaults() -> None:
    """A REQUEST with only the required keys gets units=1 and no optional values."""
    assert parse(REQUEST_LINE) == grammar.Request(
        publisher="Harlequin", product="LispWorks", version="8.0", user="jo", host="box",
        pid=42,
    )


def test_request_all_keys_typed() -> None:
    """Every optional REQUEST key is converted to its type."""
    command = parse(
        'request publisher="Harlequin Ltd" product="Lisp Works" version="8.0 beta" '
        "user=jo host=box pid=0 units=3 client=tok-1 challenge=00ff10 uid=1000 group=staff "
        "hostid=0x1A2B3C4D"
    )
    assert command == grammar.Request(
        publisher="Harlequin Ltd", product="Lisp Works", version="8.0 beta", user="jo",
        host="box", pid=0, units=3, client="tok-1", challenge=b"\x00\xff\x10", uid=1000,
        group="staff", hostid=0x1A2B3C4D,
    )


def test_hostid_without_prefix() -> None:
    """hostid= takes hex digits with or without 0x."""
    command = parse(REQUEST_LINE + b" hostid=ff")
    assert isinstance(command, grammar.Request) and command.hostid == 0xFF


def test_update_release_query_users_message() -> None:
    """The other dispatched verbs parse to their typed commands."""
    assert parse("UPDATE handle=H1") == grammar.Update("H1")
    assert parse("update handle=H1 challenge=abcd") == grammar.Update("H1", b"\xab\xcd")
    assert parse("Release handle=7:a.b_c-d") == grammar.Release("7:a.b_c-d")
    assert parse("QUERY handle=H1 what=period") == grammar.Query("H1", grammar.QueryWhat.PERIOD)
    assert parse("QUERY handle=H1 what=Context") == grammar.Query("H1", grammar.QueryWhat.CONTEXT)
    assert parse("USERS publisher=P product=Q version=1") == grammar.Users("P", "Q", "1")
    assert parse('MESSAGE text="hello there"') == grammar.Message("hello there")


def test_protocol_verbs() -> None:
    """PING, HELP [verb] and QUIT parse; the HELP topic is normalised to upper case."""
    assert parse("ping") == grammar.Ping()
    assert parse("HELP") == grammar.Help()
    assert parse("help request") == grammar.Help("REQUEST")
    assert parse("QUIT") == grammar.Quit()


def test_blank_lines_are_none() -> None:
    """Empty and blank lines (and a lone CR) are ignored."""
    for line in (b"", b"   ", b"\t \t", b"\r", b"  \r"):
        assert parse(line) is None


def test_crlf_is_stripped() -> None:
    """A CR before the LF is not part of the last value."""
    assert parse(b"RELEASE handle=H1\r") == grammar.Release("H1")


# -- errors -----------------------------------------------------------------


def test_missing_keys_are_named() -> None:
    """A missing required key gives SYNTAX naming every missing key and the usage."""
    error = error_of("REQUEST publisher=P product=Q version=1 user=u")
    assert error.status is Status.SYNTAX
    assert "missing host=, pid=" in error.message
    assert "usage: REQUEST publisher=TEXT" in error.message


@pytest.mark.parametrize(
    ("suffix", "words"),
    [
        (b" pid=abc", ("pid=", "'abc'")),
        (b" pid=-1", ("pid=", "0..4294967295")),
        (b" pid=4294967296", ("pid=", "4294967296")),
        (b" pid=1_000", ("pid=", "'1_000'")),
        (b" pid=\xd9\xa1", ("pid=",)),  # an Arabic-Indic digit is not a decimal digit here
        (b" units=0", ("units=", "1..65535")),
        (b" uid=x", ("uid=",)),
        (b" challenge=abc", ("challenge=", "even")),
        (b" challenge=zz", ("challenge=",)),
        (b" hostid=0x123456789", ("hostid=", "32-bit")),
        (b" hostid=0x", ("hostid=",)),
        (b" user=", ("user=", "empty")),
        (b' group=""', ("group=", "empty")),
    ],
)
def test_bad_values(suffix: bytes, words: tuple[str, ...]) -> None:
    """A value of the wrong type or range gives SYNTAX naming the key."""
    base = REQUEST_LINE.replace(b" pid=42", b"") if b"pid" in suffix else REQUEST_LINE
    base = base.replace(b" user=jo", b"") if b"user" in suffix else base
    error = error_of(base + suffix)
    assert error.status is Status.SYNTAX
    for word in words:
        assert word in error.message


def test_bad_handle_and_what() -> None:
    """Handles are short tokens; what= is one of the QueryWhat values."""
    assert "handle=" in error_of("RELEASE handle=a/b").message
    assert "handle=" in error_of("RELEASE handle=" + "x" * 65).message
    error = error_of("QUERY handle=H1 what=everything")
    assert "data|period|context|policy|dates" in error.message


def test_query_kinds_match_the_engine() -> None:
    """QUERY accepts exactly the kinds the licensing engine can answer."""
    from hqnlsd.licensing.results import QUERY_KINDS

    assert [item.value for item in grammar.QueryWhat] == list(QUERY_KINDS)


def test_repeated_key() -> None:
    """A key given twice is a SYNTAX error."""
    error = error_of("RELEASE handle=H1 handle=H2")
    assert (error.status, error.message) == (Status.SYNTAX, "handle= given twice")


def test_unknown_key() -> None:
    """A key the verb does not take is named, with the usage."""
    error = error_of("RELEASE handle=H1 colour=red")
    assert error.status is Status.SYNTAX
    assert "does not take colour=" in error.message and "RELEASE handle=HANDLE" in error.message


def test_unknown_verb() -> None:
    """An unknown verb gives UNKNOWN_COMMAND and points at HELP."""
    error = error_of("BORROW handle=1")
    assert error.status is Status.UNKNOWN_COMMAND
    assert "'BORROW'" in error.message and "HELP" in error.message


def test_non_ascii_verb_lookalike_is_unknown() -> None:
    """'qu\\u0131t' upper-cases to QUIT in Python but is not the QUIT command."""
    assert error_of("qu\u0131t").status is Status.UNKNOWN_COMMAND


def test_arguments_where_none_are_taken() -> None:
    """PING and QUIT take no arguments; HELP takes at most one bare verb."""
    assert error_of("PING x=1").message == "PING takes no arguments"
    assert error_of("QUIT now").message == "QUIT takes no arguments"
    assert "at most one" in error_of("HELP REQUEST UPDATE").message
    assert "at most one" in error_of("HELP verb=REQUEST").message
    assert error_of("HELP BORROW").status is Status.UNKNOWN_COMMAND


def test_bare_word_among_arguments() -> None:
    """A word without = after the verb is a SYNTAX error with the usage."""
    error = error_of("RELEASE H1")
    assert "unexpected word 'H1'" in error.message and "key=value" in error.message


def test_line_starting_with_key() -> None:
    """A line must start with a verb."""
    assert "starts with a command" in error_of("handle=H1").message


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('RELEASE handle="H1', "no closing quote"),
        ('RELEASE handle="H1\\"', "no closing quote"),
        ('RELEASE handle="H1"x', "blank after the closing quote"),
        ('RELEASE "H1"', "needs a key"),
        ('RELEASE handle=H"1', "contains a quote"),
        ('RELEASE ha"ndle=H1', "unexpected quote"),
        ("RELEASE Handle=H1", "lowercase"),
        ("RELEASE =H1", "without a key"),
        ("RELEASE 1handle=H1", "lowercase"),
        ('MESSAGE text="a\\qb"', "bad escape"),
        ('MESSAGE text="a\\x4"', "bad escape"),
        ('MESSAGE text="\\ud800"', "not a character"),
        ('MESSAGE text="\\U00110000"', "not a character"),
    ],
)
def test_tokenizer_errors(line: str, fragment: str) -> None:
    """Each malformed word gives a SYNTAX error that says what is wrong."""
    error = error_of(line)
    assert error.status is Status.SYNTAX
    assert fragment in error.message


def test_bad_utf8() -> None:
    """Invalid UTF-8 is a SYNTAX error naming the byte and offset."""
    error = error_of(b"PING \xc3\x28")
    assert error.status is Status.SYNTAX
    assert "UTF-8" in error.message and "0xc3" in error.message and "offset 5" in error.message


def test_error_reply() -> None:
    """A WireError turns into the ERR reply with its status and message."""
    assert tokenizer.WireError(Status.SYNTAX, "x").reply() == Err(Status.SYNTAX, "x")


# -- escapes and quoting ----------------------------------------------------


def test_escapes_inside_quotes() -> None:
    """Backslash escapes inside quotes are decoded; outside quotes text is literal."""
    command = parse(r'MESSAGE text="say \"hi\"\\ \n\r\t\x41\u00e9\U0001F600 done"')
    assert command == grammar.Message('say "hi"\\ \n\r\tA\u00e9\U0001f600 done')
    assert parse(r"MESSAGE text=C:\temp\n") == grammar.Message(r"C:\temp\n")


def test_value_may_contain_equals() -> None:
    """Only the first = separates key and value."""
    assert parse("MESSAGE text=a=b==") == grammar.Message("a=b==")


def test_quote_choices() -> None:
    """quote() leaves plain words bare and quotes everything else."""
    assert quoting.quote("H1") == "H1"
    assert quoting.quote("a=b") == "a=b"
    assert quoting.quote("") == '""'
    assert quoting.quote("a b") == '"a b"'
    assert quoting.quote('a"b') == '"a\\"b"'
    assert quoting.quote("a\\b") == '"a\\\\b"'
    assert quoting.quote("a\nb\x00\u2028\U000e0001") == '"a\\nb\\x00\\u2028\\U000e0001"'
    assert quoting.quote("H1", force=True) == '"H1"'


@given(st.text())
def test_quote_round_trip(value: str) -> None:
    """Any text, quoted, reads back as itself."""
    assert tokenizer.split_words(f"k={quoting.quote(value)}") == [("k", value)]


@given(st.text())
def test_quote_is_one_printable_line(value: str) -> None:
    """A quoted value never holds a line break or an invisible character."""
    quoted = quoting.quote(value)
    assert quoted.isprintable()
    assert len(quoted.splitlines()) == 1


keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@given(st.dictionaries(keys, st.text() | st.integers(min_value=0)))
def test_request_format_parse_round_trip(fields: dict[str, str | int]) -> None:
    """format_request then tokenizing gives back the verb and every field, in order."""
    line = client_side.format_request("VERB", **fields)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    words = tokenizer.split_words(grammar.decode_line(line[:-1]))
    assert words == [(None, "VERB"), *((k, str(v)) for k, v in fields.items())]


texts = st.text(min_size=1)
uint32 = st.integers(min_value=0, max_value=grammar.UINT32_MAX)
requests = st.builds(
    grammar.Request,
    publisher=texts, product=texts, version=texts, user=texts, host=texts, pid=uint32,
    units=st.integers(min_value=1, max_value=grammar.MAX_UNITS),
    client=st.none() | st.text(min_size=1, max_size=grammar.MAX_CLIENT_TOKEN),
    challenge=st.none() | st.binary(min_size=1, max_size=128),
    uid=st.none() | uint32,
    group=st.none() | texts,
    hostid=st.none() | uint32,
)


@given(requests)
def test_typed_request_round_trip(request: grammar.Request) -> None:
    """A Request written as a line (as a client library would) parses back equal."""
    fields: dict[str, str | int] = {}
    for name in ("publisher", "product", "version", "user", "host", "pid", "units",
                 "client", "uid", "group"):
        value = getattr(request, name)
        if value is not None:
            fields[name] = value
    if request.challenge is not None:
        fields["challenge"] = request.challenge.hex()
    if request.hostid is not None:
        fields["hostid"] = f"0x{request.hostid:08x}"
    line = client_side.format_request("REQUEST", **fields)
    assert grammar.parse_line(line[:-1]) == request


# -- replies ----------------------------------------------------------------


def test_ok_forms() -> None:
    """OK lines: bare, with a word, with fields; data= and msg= always quoted."""
    assert format_reply(Ok()) == b"OK\r\n"
    assert format_reply(Ok.of("bye")) == b"OK bye\r\n"
    assert (
        format_reply(Ok.of(handle="H1", period=300, data="1", type="floating"))
        == b'OK handle=H1 period=300 data="1" type=floating\r\n'
    )


def test_err_form() -> None:
    """ERR lines carry the name, the full numeric code, the fields and msg last."""
    reply = Err.of(
        Status.TRY_SERVER, "ask the primary", n=2, addr="127.0.0.2", domain="a1 a2 a3"
    )
    assert format_reply(reply) == (
        b'ERR TRY_SERVER code=0xC80E1006 n=2 addr=127.0.0.2 domain="a1 a2 a3" '
        b'msg="ask the primary"\r\n'
    )
    assert format_reply(Err(Status.NOACCESS, "")) == (
        b'ERR NOACCESS code=0xC8171002 msg=""\r\n'
    )


def test_listing_dot_stuffing() -> None:
    """Listing lines starting with '.', OK or ERR get a '.' first; '.' ends the listing."""
    listing = Listing((".", "..x", "plain", "", "OK", "OK fine", "ERR x", "OKAY", "ERRATA"))
    assert format_reply(listing) == (
        b"..\r\n...x\r\nplain\r\n\r\n.OK\r\n.OK fine\r\n.ERR x\r\nOKAY\r\nERRATA\r\n.\r\n"
    )
    sent = format_reply(listing).decode().split("\r\n")[:-1]
    assert [client_side.unstuff_listing_line(x) for x in sent] == [*listing.lines, None]


def test_listing_of_records() -> None:
    """Listing.of_records writes key=value lines, quoting where needed."""
    listing = Listing.of_records([{"user": "Jo Smith", "pid": 3}, [("user", "al")]])
    assert listing.lines == ('user="Jo Smith" pid=3', "user=al")
    assert client_side.parse_fields(listing.lines[0]) == {"user": "Jo Smith", "pid": "3"}


def test_reply_validation() -> None:
    """Replies refuse keys that are not identifiers, reserved keys, bools, line breaks."""
    with pytest.raises(ValueError, match="lowercase"):
        Ok.of(**{"Bad": "x"})
    with pytest.raises(ValueError, match="given twice"):
        Ok((("a", "1"), ("a", "2")))
    with pytest.raises(ValueError, match="written by the protocol"):
        Err.of(Status.SYNTAX, "x", code=1)
    with pytest.raises(TypeError):
        Ok.of(flag=True)
    with pytest.raises(ValueError, match="line break"):
        Listing(("a\u2028b",))
    with pytest.raises(ValueError, match="lowercase"):
        Ok((), "Pong")


def test_ok_of_checks_what_the_constructor_checks() -> None:
    """`Ok.of` (which checks its fields once, not again in __post_init__) refuses what
    `Ok` refuses, a key found good before included, and builds the same value."""
    assert Ok.of("bye") == Ok((), "bye")
    assert Ok.of(handle="H1", period=300) == Ok((("handle", "H1"), ("period", "300")))
    for _ in range(2):  # the second time, the keys are known good
        with pytest.raises(ValueError, match="lowercase"):
            Ok.of("Pong", handle="H1")
        with pytest.raises(ValueError, match="lowercase"):
            Ok.of(**{"handle": "H1", "Bad": "x"})
        with pytest.raises(TypeError):
            Ok.of(handle=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Ok.of(handle=False)


statuses = st.sampled_from(list(Status))
field_lists = st.dictionaries(
    keys.filter(lambda k: k not in ("code", "msg")), st.text()
).map(lambda d: tuple(d.items()))
replies = st.one_of(
    st.builds(Ok, field_lists, st.sampled_from(["", "bye", "pong"])),
    st.builds(Err, statuses, st.text(), field_lists),
)


@given(replies)
def test_reply_round_trip(reply: Ok | Err) -> None:
    """format_reply then parse_reply_line is the identity, on exactly one line."""
    data = format_reply(reply)
    assert data.endswith(b"\r\n") and b"\n" not in data[:-2] and b"\r" not in data[:-2]
    assert client_side.parse_reply_line(data[:-2].decode()) == reply


listing_lines = st.one_of(
    st.text(), st.sampled_from(["OK", "ERR", "."]), st.text().map(lambda t: "OK " + t)
).filter(lambda t: not _LINE_BREAKS_RE.search(t))


@given(st.lists(listing_lines))
def test_listing_round_trip(lines: list[str]) -> None:
    """A listing reads back line for line, and '.' ends it exactly once."""
    data = format_reply(Listing(tuple(lines))).decode()
    sent = data.split("\r\n")
    assert sent[-1] == "" and sent[-2] == "."
    assert sent[:-2].count(".") == 0
    assert not any(line == "OK" or line.startswith(("OK ", "ERR ")) for line in sent[:-2])
    assert [client_side.unstuff_listing_line(line) for line in sent[:-2]] == lines


def test_parse_reply_line_errors() -> None:
    """Client-side reading refuses lines that are not replies."""
    for line in ("HELLO", "OK a=1 a=2", "ERR NOSUCH code=0x1", "ERR", "OK a=1 b",
                 f"ERR SYNTAX code=0x{Status.INTERNAL.code:08X}", 'OK a="x'):
        with pytest.raises(client_side.ReplyParseError):
            client_side.parse_reply_line(line)


# -- telnet -----------------------------------------------------------------


def test_strip_telnet() -> None:
    """IAC negotiation, subnegotiation, escaped and cut-off IAC bytes are removed."""
    assert grammar.strip_telnet(b"\xff\xfd\x03\xff\xfb\x18PING") == b"PING"
    assert grammar.strip_telnet(b"PI\xff\xfa\x18\x00xterm\xff\xf0NG") == b"PING"
    assert grammar.strip_telnet(b"PING\xff\xff") == b"PING"
    assert grammar.strip_telnet(b"PING\xff\xf4") == b"PING"  # IAC IP (^C)
    assert grammar.strip_telnet(b"PING\xff") == b"PING"
    assert grammar.strip_telnet(b"PING\xff\xfb") == b"PING"
    assert grammar.strip_telnet(b"PING\xff\xfa\x18xterm") == b"PING"
    assert grammar.strip_telnet(b"PING") == b"PING"


def test_telnet_negotiation_then_command() -> None:
    """A telnet client's negotiation bytes before a command are ignored."""
    assert parse(b"\xff\xfd\x03\xff\xfb\x18\xff\xfb\x1fPING\r") == grammar.Ping()
    assert parse(b"\xff\xfd\x03") is None


# -- HELP -------------------------------------------------------------------


def test_help_lists_every_verb() -> None:
    """HELP's listing has one synopsis line per verb, with its required keys."""
    lines = grammar.help_listing().lines
    for spec in grammar.VERBS.values():
        assert spec.usage in lines
    assert any(line.startswith("REQUEST publisher=TEXT") and "[units=N]" in line
               for line in lines)


@pytest.mark.parametrize("verb", sorted(grammar.VERBS))
def test_help_verb_details(verb: str) -> None:
    """HELP VERB shows the synopsis, every argument with its help, and the reply."""
    spec = grammar.VERBS[verb]
    lines = grammar.help_listing(verb).lines
    assert lines[0] == spec.usage
    text = "\n".join(lines)
    for arg in spec.args:
        assert arg.usage in text and arg.help in text
    assert f"reply: {spec.reply}" in text
    assert not any(line.startswith(("OK", "ERR", ".")) for line in lines)
