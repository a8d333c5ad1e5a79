"""The log filter: which events each switch lets through, and licence-line trimming."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
)
from zope.interface import implementer

from hqnlsd.logging.observer import (
    LOG_ERR,
    LOG_INFO,
    LOG_WARNING,
    LogFilterService,
    SwitchedObserver,
    SwitchPredicate,
    admits,
    denial_switch,
    install_switch_filter,
    licence_format,
    log_licence,
    switch_of,
)
from hqnlsd.logging.switches import ALL, NOTHING, PRESETS, STARTUP, LogSwitches, Switch

S = Switch


@implementer(ILogObserver)
class Collect:
    """An observer that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    @property
    def texts(self) -> list[str]:
        """The formatted text of each event kept."""
        return [formatEvent(event) for event in self.events]


def pipeline(value: Switch) -> tuple[Logger, Collect, LogSwitches]:
    """A logger whose events go through a SwitchedObserver into a collector."""
    switches = LogSwitches(value)
    sink = Collect()
    log = Logger(namespace="test", observer=SwitchedObserver(sink, switches))
    return log, sink, switches


GRANT: dict[str, Any] = dict(
    publisher="Harlequin",
    product="LispWorks",
    version="8.0",
    indices="3",
    licence_type="floating",
    user="alice",
    uid=1000,
    host="alpha",
    address="10.0.0.1",
    pid=42,
    handle="h1",
)


# -- which events pass ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "needed"),
    [
        (LogLevel.debug, S.INFO),
        (LogLevel.info, S.INFO),
        (LogLevel.warn, S.WARNING),
        (LogLevel.error, S.WARNING),
    ],
)
def test_untagged_events_follow_info_and_warning(level: LogLevel, needed: Switch) -> None:
    """Untagged info/debug need INFO; untagged warnings and errors need WARNING."""
    event = {"log_level": level}
    assert admits(event, needed)
    assert not admits(event, ALL & ~needed)


def test_critical_always_passes() -> None:
    """A critical event (a failure, a traceback) passes even under NONE."""
    assert admits({"log_level": LogLevel.critical}, NOTHING)
    assert admits({"log_level": LogLevel.critical, "log_switch": "DOMAIN"}, NOTHING)


@pytest.mark.parametrize("switch", list(Switch))
def test_tagged_event_needs_its_switch_whatever_its_level(switch: Switch) -> None:
    """A tagged event passes iff its switch is on, at info as at warn level."""
    for level in (LogLevel.info, LogLevel.warn):
        event = {"log_level": level, "log_switch": switch.name}
        assert admits(event, switch)
        assert not admits(event, ALL & ~switch)


def test_combined_tags_need_all_their_switches() -> None:
    """`LICENSE|EXTERR` (or a Switch value) needs both switches."""
    for tag in ("LICENSE|EXTERR", "license+exterr", S.LICENSE | S.EXTERR):
        event = {"log_level": LogLevel.info, "log_switch": tag}
        assert admits(event, S.LICENSE | S.EXTERR)
        assert not admits(event, S.LICENSE)
        assert not admits(event, S.EXTERR)


def test_misspelt_tag_does_not_hide_the_event() -> None:
    """An unknown tag names no switch: the event is kept rather than lost."""
    assert switch_of("LICENCE") is None
    assert switch_of(["unhashable"]) is None
    assert admits({"log_level": LogLevel.info, "log_switch": "LICENCE"}, NOTHING)


def test_redirect_denials_need_exterr() -> None:
    """Redirects are logged under LICENSE|EXTERR, other denials under LICENSE."""
    assert denial_switch("TRY_SERVER") == "LICENSE|EXTERR"
    assert denial_switch("NOTVERIFIED") == "LICENSE|EXTERR"
    assert denial_switch("NOLICENCES") == "LICENSE"


def test_switch_changes_take_effect_on_the_next_event() -> None:
    """The observer reads the live state: `apply` changes what the next event does."""
    log, sink, switches = pipeline(STARTUP)
    log.info("one", log_switch="UID")
    switches.apply("uid+")
    log.info("two", log_switch="UID")
    switches.apply("none")
    log.info("three")
    log.warn("four")
    assert sink.texts == ["two"]


def test_syslog_priority_follows_level() -> None:
    """Kept events get LOG_WARNING / LOG_ERR / LOG_INFO unless they set their own."""
    log, sink, _ = pipeline(ALL)
    log.warn("w")
    log.error("e")
    log.info("i")
    log.info("own", syslogPriority=1)
    assert [event["syslogPriority"] for event in sink.events] == [
        LOG_WARNING,
        LOG_ERR,
        LOG_INFO,
        1,
    ]


def test_predicate_works_with_filtering_log_observer() -> None:
    """SwitchPredicate plugs into twisted's FilteringLogObserver."""
    switches = LogSwitches(S.LICENSE)
    sink = Collect()
    log = Logger(observer=FilteringLogObserver(sink, [SwitchPredicate(switches)]))
    log.info("dropped")
    log.info("kept", log_switch="LICENSE")
    assert sink.texts == ["kept"]


# -- licence lines ----------------------------------------------------------------------


def test_licence_line_without_filter_shows_everything() -> None:
    """Unfiltered (tests, tools) a licence line shows every field given."""
    sink = Collect()
    log_licence(Logger(observer=sink), "granted", **GRANT)
    assert sink.texts == [
        "granted Harlequin LispWorks 8.0 licence 3 (floating) to user alice uid 1000 "
        "on alpha [10.0.0.1] pid 42, handle h1"
    ]
    assert sink.events[0]["log_switch"] == "LICENSE"
    assert sink.events[0]["licence_action"] == "granted"


@pytest.mark.parametrize(
    ("off", "absent_text", "absent_keys"),
    [
        (S.PRODUCT, ["Harlequin", "8.0"], ["publisher", "version"]),
        (S.USERNAME, ["alice"], ["user"]),
        (S.UID, ["1000"], ["uid"]),
        (S.HOSTNAME, ["alpha"], ["host"]),
        (S.HOSTADDR, ["10.0.0.1"], ["address"]),
    ],
)
def test_each_field_switch_removes_its_field(
    off: Switch, absent_text: list[str], absent_keys: list[str]
) -> None:
    """With a field's switch off, neither the text nor the event has that field."""
    log, sink, _ = pipeline(ALL & ~off)
    log_licence(log, "granted", **GRANT)
    (event,) = sink.events
    text = formatEvent(event)
    for word in absent_text:
        assert word not in text
    for key in absent_keys:
        assert key not in event
    # Everything else is still there.
    assert "LispWorks" in text and "pid 42" in text and "handle h1" in text


def test_default_preset_line() -> None:
    """Under the start-up state: product, host name and user, no address nor uid."""
    log, sink, _ = pipeline(STARTUP)
    log_licence(log, "granted", **GRANT)
    assert sink.texts == [
        "granted Harlequin LispWorks 8.0 licence 3 (floating) to user alice on alpha "
        "pid 42, handle h1"
    ]


def test_minimal_preset_line() -> None:
    """MINIMAL: short product name, address and uid, no user nor host name."""
    log, sink, _ = pipeline(PRESETS["MINIMAL"])
    log_licence(log, "granted", **GRANT)
    assert sink.texts == [
        "granted LispWorks licence 3 (floating) to uid 1000 [10.0.0.1] pid 42, handle h1"
    ]


def test_licence_off_drops_licence_lines() -> None:
    """LICENSE off: no licence line at all, other messages unaffected."""
    log, sink, _ = pipeline(ALL & ~S.LICENSE)
    log_licence(log, "granted", **GRANT)
    log.info("still here")
    assert sink.texts == ["still here"]


def test_denial_reason_is_extra_error_information() -> None:
    """A denial shows its status always and its reason text only with EXTERR."""
    fields: dict[str, Any] = dict(
        publisher="Harlequin",
        product="LispWorks",
        version="8.0",
        user="bob",
        host="beta",
        pid=7,
        status="NOLICENCES",
        reason="all 3 licences are in use",
    )
    log, sink, switches = pipeline(STARTUP)
    log_licence(log, "denied", **fields)
    switches.apply("exterr-")
    log_licence(log, "denied", **fields)
    assert sink.texts == [
        "denied Harlequin LispWorks 8.0 to user bob on beta pid 7: NOLICENCES "
        "(all 3 licences are in use)",
        "denied Harlequin LispWorks 8.0 to user bob on beta pid 7: NOLICENCES",
    ]
    assert "reason" not in sink.events[1]


def test_revocation_reason_is_always_shown() -> None:
    """A revocation's reason is the transaction itself, shown without EXTERR."""
    log, sink, _ = pipeline(PRESETS["SMALL"])
    log_licence(
        log, "revoked", product="LispWorks", indices="2", user="carol", handle="h9",
        reason="crashout",
    )  # fmt: skip
    assert sink.texts == ["revoked LispWorks licence 2 from user carol, handle h9: crashout"]


def test_values_with_braces_are_not_format_directives() -> None:
    """Field values are referenced, never pasted into the format string."""
    log, sink, _ = pipeline(ALL)
    log_licence(log, "granted", **{**GRANT, "user": "{evil}", "host": "h{0}"})
    assert "user {evil} uid 1000 on h{0}" in sink.texts[0]


def test_fast_path_skips_emission_when_switch_is_off() -> None:
    """Given the switches, `log_licence` emits nothing at all when LICENSE is off."""
    sink = Collect()
    switches = LogSwitches(ALL & ~S.LICENSE)
    log_licence(Logger(observer=sink), "granted", switches=switches, **GRANT)
    assert sink.events == []
    switches.apply("license+")
    log_licence(Logger(observer=sink), "granted", switches=switches, **GRANT)
    assert len(sink.events) == 1


# -- installation into a publisher --------------------------------------------------------


def test_install_wraps_existing_observers_and_uninstall_restores() -> None:
    """install filters every registered observer; uninstall puts the originals back."""
    first, second = Collect(), Collect()
    publisher = LogPublisher(first, second)
    log = Logger(observer=publisher)
    switches = LogSwitches(S.WARNING)
    installed = install_switch_filter(switches, publisher)
    log.info("hidden")
    log.warn("shown")
    installed.uninstall()
    installed.uninstall()  # idempotent
    log.info("after")
    assert first.texts == second.texts == ["shown", "after"]


def test_install_twice_does_not_double_wrap() -> None:
    """A second install leaves already-filtered observers alone."""
    sink = Collect()
    publisher = LogPublisher(sink)
    switches = LogSwitches(ALL)
    install_switch_filter(switches, publisher)
    again = install_switch_filter(switches, publisher)
    assert again.pairs == []
    Logger(observer=publisher).info("once")
    assert sink.texts == ["once"]


def test_filter_service_installs_while_running() -> None:
    """LogFilterService filters between startService and stopService."""
    sink = Collect()
    publisher = LogPublisher(sink)
    log = Logger(observer=publisher)
    service = LogFilterService(LogSwitches(NOTHING), publisher)
    service.startService()
    log.info("while running")
    service.stopService()
    log.info("stopped")
    assert sink.texts == ["stopped"]
    assert service.running == 0


def test_filter_service_survives_a_publisher_it_cannot_wrap() -> None:
    """A publisher without an observer list is reported, not fatal."""

    class Opaque(LogPublisher):
        """A publisher that hides its observers."""

        def __init__(self) -> None:
            self.log = Logger(observer=self)

        def __call__(self, event: LogEvent) -> None:
            pass

    service = LogFilterService(LogSwitches(ALL), Opaque())
    service.startService()
    assert service.installation is None
    service.stopService()


def test_licence_text_is_rendered_once_and_keeps_the_structured_keys() -> None:
    """The filter renders a licence line's text itself (one field for every observer
    to format), identical to what Twisted would make of the field format; values
    with braces are text, not format; the structured keys stay."""
    log, sink, _ = pipeline(ALL)
    log_licence(log, "granted", **{**GRANT, "user": "{evil} {0}"})
    (event,) = sink.events
    assert event["log_format"] == "{licence_text}"
    assert event["user"] == "{evil} {0}" and event["pid"] == 42
    fields_format = licence_format("granted", event, ALL)
    assert formatEvent(event) == formatEvent({**event, "log_format": fields_format})
    assert "user {evil} {0}" in formatEvent(event)
