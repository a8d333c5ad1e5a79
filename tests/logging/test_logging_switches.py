"""Log switches: names, presets, `hqn_lsa loglevel` parsing, persistence and reset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hqnlsd.logging.switches import (
    ALL,
    NOTHING,
    PRESETS,
    STARTUP,
    SWITCHES_FILE,
    LogLevelError,
    LogSwitches,
    Switch,
    describe,
    parse,
    preset_name,
    startup_switches,
)

S = Switch


def names(text: str) -> Switch:
    """The switches named in ``text`` (test helper, independent of `parse`)."""
    value = Switch(0)
    for word in text.split():
        value |= Switch[word]
    return value


def test_eleven_switches_in_the_original_bit_order() -> None:
    """The switches are the original's, bit n+1 of the guide being bit n here."""
    order = [
        "WARNING",
        "INFO",
        "ADMIN",
        "LICENSE",
        "PRODUCT",
        "HOSTNAME",
        "HOSTADDR",
        "USERNAME",
        "UID",
        "EXTERR",
        "DOMAIN",
    ]
    assert [member.name for member in Switch] == order
    assert [int(member) for member in Switch] == [1 << bit for bit in range(11)]
    assert int(ALL) == 0x7FF


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("DEFAULT", "WARNING INFO ADMIN LICENSE PRODUCT HOSTNAME USERNAME"),
        ("SMALL", "WARNING INFO ADMIN LICENSE HOSTNAME USERNAME"),
        (
            "FULL",
            "WARNING INFO ADMIN LICENSE PRODUCT HOSTNAME USERNAME HOSTADDR UID EXTERR",
        ),
        ("MINIMAL", "WARNING ADMIN LICENSE HOSTADDR UID"),
        (
            "EXTRA",
            "WARNING INFO ADMIN LICENSE PRODUCT HOSTNAME USERNAME HOSTADDR UID EXTERR DOMAIN",
        ),
    ],
)
def test_presets_match_the_guide(preset: str, expected: str) -> None:
    """Each preset turns on exactly the switches the original's table lists."""
    assert PRESETS[preset] == names(expected)


def test_none_preset_is_empty_and_there_are_six() -> None:
    """NONE turns everything off; there are exactly six presets."""
    assert PRESETS["NONE"] == NOTHING
    assert sorted(PRESETS) == sorted(["DEFAULT", "SMALL", "FULL", "MINIMAL", "EXTRA", "NONE"])


def test_startup_state_is_default_plus_exterr_and_f_adds_domain() -> None:
    """The daemon starts with DEFAULT + EXTERR; -f adds DOMAIN."""
    assert PRESETS["DEFAULT"] | S.EXTERR == STARTUP
    assert startup_switches() == STARTUP
    assert startup_switches(domain_logging=True) == STARTUP | S.DOMAIN
    assert not STARTUP & S.DOMAIN


@pytest.mark.parametrize(
    ("text", "before", "after"),
    [
        ("exterr-", "WARNING EXTERR", "WARNING"),
        ("EXTERR-", "WARNING EXTERR", "WARNING"),
        ("uid", "WARNING", "WARNING UID"),
        ("uid+", "WARNING", "WARNING UID"),
        ("license+ product-", "PRODUCT", "LICENSE"),
        ("license+,product-", "PRODUCT", "LICENSE"),
        ("product- product+", "WARNING", "WARNING PRODUCT"),
        ("domain-", "WARNING", "WARNING"),
        ("small+", "DOMAIN", "DOMAIN WARNING INFO ADMIN LICENSE HOSTNAME USERNAME"),
        ("full-", "DOMAIN WARNING UID", "DOMAIN"),
        ("0x3", "DOMAIN", "WARNING INFO"),
        ("1536", "WARNING", "EXTERR DOMAIN"),
    ],
)
def test_switch_words(text: str, before: str, after: str) -> None:
    """Words turn switches on (bare or +) and off (-), left to right, any case."""
    assert parse(text, names(before)) == names(after)


@pytest.mark.parametrize("preset", ["DEFAULT", "SMALL", "FULL", "MINIMAL", "EXTRA", "NONE"])
def test_bare_preset_replaces_the_whole_state(preset: str) -> None:
    """A bare preset name sets exactly its switches, whatever was on before."""
    assert parse(preset.lower(), ALL) == PRESETS[preset]
    assert parse(preset, NOTHING) == PRESETS[preset]


def test_preset_then_switches_apply_in_order() -> None:
    """`full license+ product-`: FULL, then LICENSE on, then PRODUCT off."""
    assert parse("full license+ product-", NOTHING) == PRESETS["FULL"] & ~S.PRODUCT
    # A later preset undoes earlier words.
    assert parse("uid+ minimal", NOTHING) == PRESETS["MINIMAL"]


def test_empty_text_changes_nothing() -> None:
    """No words (or only separators) leave the state as it was."""
    assert parse("", STARTUP) == STARTUP
    assert parse(" , ", S.UID) == S.UID


@pytest.mark.parametrize("text", ["bogus", "exterr-- ", "license+ nosuch-", "+", "0x800", "é"])
def test_bad_words_raise_and_name_the_word(text: str) -> None:
    """A word naming nothing raises LogLevelError that names it and lists valid names."""
    with pytest.raises(LogLevelError) as caught:
        parse(text, STARTUP)
    message = str(caught.value)
    assert "loglevel" in message
    if text.strip() not in ("0x800",):
        assert "EXTERR" in message and "MINIMAL" in message


def test_describe_and_preset_name() -> None:
    """`describe` lists the switches on in bit order; `preset_name` finds exact presets."""
    assert describe(NOTHING) == "NONE"
    assert describe(S.UID | S.WARNING) == "WARNING UID"
    assert describe(STARTUP) == "WARNING INFO ADMIN LICENSE PRODUCT HOSTNAME USERNAME EXTERR"
    assert preset_name(PRESETS["FULL"]) == "FULL"
    assert preset_name(STARTUP) is None


# -- LogSwitches: the live, persisted state ----------------------------------------------


def test_load_without_file_is_startup(tmp_path: Path) -> None:
    """A fresh state directory gives the start-up state (with DOMAIN under -f)."""
    assert LogSwitches.load(tmp_path).value == STARTUP
    assert LogSwitches.load(tmp_path, domain_logging=True).value == STARTUP | S.DOMAIN
    assert not (tmp_path / SWITCHES_FILE).exists()


def test_apply_returns_new_state_and_persists_it(tmp_path: Path) -> None:
    """`apply` answers the new state and a daemon restarted on the directory has it."""
    switches = LogSwitches.load(tmp_path)
    answer = switches.apply("exterr- uid+")
    assert answer == "WARNING INFO ADMIN LICENSE PRODUCT HOSTNAME USERNAME UID"
    assert switches.value == (STARTUP & ~S.EXTERR) | S.UID
    stored = json.loads((tmp_path / SWITCHES_FILE).read_text())
    assert stored["switches"] == answer.split()
    assert LogSwitches.load(tmp_path).value == switches.value


def test_f_adds_domain_to_a_persisted_setting(tmp_path: Path) -> None:
    """-f asks for domain logging on this start, on top of the admin's setting."""
    LogSwitches.load(tmp_path).apply("minimal")
    assert LogSwitches.load(tmp_path, domain_logging=True).value == PRESETS["MINIMAL"] | S.DOMAIN


def test_bad_text_changes_nothing_in_memory_or_on_disk(tmp_path: Path) -> None:
    """A rejected `apply` leaves the live state and the file untouched."""
    switches = LogSwitches.load(tmp_path)
    switches.apply("full")
    before = (tmp_path / SWITCHES_FILE).read_bytes()
    with pytest.raises(LogLevelError):
        switches.apply("uid- nosuch")
    assert switches.value == PRESETS["FULL"]
    assert (tmp_path / SWITCHES_FILE).read_bytes() == before


def test_empty_apply_is_a_query(tmp_path: Path) -> None:
    """`apply("")` only reports the state and writes no file."""
    switches = LogSwitches.load(tmp_path)
    assert switches.apply("") == describe(STARTUP)
    assert not (tmp_path / SWITCHES_FILE).exists()


def test_reset_returns_to_startup_and_forgets_the_file(tmp_path: Path) -> None:
    """`reset` (reinit) goes back to the start-up state; a restart agrees."""
    switches = LogSwitches.load(tmp_path, domain_logging=True)
    switches.apply("none")
    assert switches.value == NOTHING
    assert switches.reset() == describe(STARTUP | S.DOMAIN)
    assert switches.value == STARTUP | S.DOMAIN
    assert not (tmp_path / SWITCHES_FILE).exists()
    assert LogSwitches.load(tmp_path).value == STARTUP


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 99, "switches": []}',
        '{"version": 1, "switches": ["NOSUCH"]}',
        '{"version": 1, "switches": "WARNING"}',
    ],
)
def test_unreadable_file_falls_back_to_startup(tmp_path: Path, content: str) -> None:
    """A damaged switches file never stops the daemon: start-up state is used."""
    (tmp_path / SWITCHES_FILE).write_text(content)
    assert LogSwitches.load(tmp_path).value == STARTUP


def test_failed_persist_does_not_apply(tmp_path: Path) -> None:
    """If the state directory cannot be written the change is refused, not half-made."""
    switches = LogSwitches.load(tmp_path / "missing-dir")
    with pytest.raises(OSError):
        switches.apply("none")
    assert switches.value == STARTUP


def test_file_is_private(tmp_path: Path) -> None:
    """The switches file is created mode 0600 and leaves no temporary file behind."""
    LogSwitches.load(tmp_path).apply("small")
    assert (tmp_path / SWITCHES_FILE).stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [SWITCHES_FILE]


def test_enabled_requires_every_switch() -> None:
    """`enabled` is true only when all the given switches are on."""
    switches = LogSwitches(S.LICENSE | S.UID)
    assert switches.enabled(S.LICENSE)
    assert switches.enabled(S.LICENSE | S.UID)
    assert not switches.enabled(S.LICENSE | S.EXTERR)
    assert str(switches) == "LICENSE UID"
