"""The log switches of `hqn_lsa loglevel`: eleven switches, six presets, one live state.

The switches and presets are the original server's (LispWorks Guide to the
License Server, "Logging configuration"):

==========  ===========================================================
WARNING     warnings and errors
INFO        information messages, mainly at start-up
ADMIN       changes made with ``hqn_lsa``
LICENSE     licence transactions (the next six refine what they show)
PRODUCT     the full product name (publisher, product, version)
HOSTNAME    the client's host name
HOSTADDR    the client's IPv4 address
USERNAME    the client's user name
UID         the client's user id
EXTERR      extra information on licence errors (redirected requests...)
DOMAIN      server-domain initialisation and validation
==========  ===========================================================

Presets: DEFAULT, SMALL, FULL, MINIMAL, EXTRA, NONE. The daemon starts with
DEFAULT + EXTERR; ``twistd hqnlsd -f`` adds DOMAIN.

``hqn_lsa loglevel`` text (`parse`): words separated by spaces or commas, applied
left to right, case-insensitive, all or nothing:

* ``NAME`` or ``NAME+`` turns a switch on, ``NAME-`` turns it off;
* a bare preset name (``full``) *replaces* the whole state with the preset,
  ``PRESET+`` adds its switches, ``PRESET-`` removes them;
* a number (``0x7ff``, ``1536``) replaces the state with that bit mask, bit 0
  being WARNING (the original's "bit 1") .. bit 10 DOMAIN;
* empty text changes nothing (it only shows the state).

`LogSwitches` holds the live state that the log filter reads on every event,
and persists it as a small JSON file in the state directory so that an admin
change survives a restart; `LogSwitches.reset` (``hqn_lsa reinit``) returns to
the start-up state and removes the file.
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
from pathlib import Path

from twisted.logger import Logger

from hqnlsd.securefiles import read_private, write_atomically

#: The file in the state directory that holds the switches set by ``hqn_lsa``.
SWITCHES_FILE = "logswitches.json"
#: Version of that file's format.
FILE_VERSION = 1


class LogLevelError(ValueError):
    """A ``loglevel`` argument names no switch or preset; the message lists them."""


class Switch(enum.IntFlag):
    """One log switch; bit ``n`` is the original's "bit n+1"."""

    WARNING = 1 << 0
    INFO = 1 << 1
    ADMIN = 1 << 2
    LICENSE = 1 << 3
    PRODUCT = 1 << 4
    HOSTNAME = 1 << 5
    HOSTADDR = 1 << 6
    USERNAME = 1 << 7
    UID = 1 << 8
    EXTERR = 1 << 9
    DOMAIN = 1 << 10


#: Every switch on.
ALL = Switch(0x7FF)
#: No switch on.
NOTHING = Switch(0)

_DEFAULT = (
    Switch.WARNING
    | Switch.INFO
    | Switch.ADMIN
    | Switch.LICENSE
    | Switch.PRODUCT
    | Switch.HOSTNAME
    | Switch.USERNAME
)
_FULL = _DEFAULT | Switch.HOSTADDR | Switch.UID | Switch.EXTERR

#: The standard settings, each the exact set of switches it turns on.
PRESETS: dict[str, Switch] = {
    "DEFAULT": _DEFAULT,
    "SMALL": Switch.WARNING
    | Switch.INFO
    | Switch.ADMIN
    | Switch.LICENSE
    | Switch.HOSTNAME
    | Switch.USERNAME,
    "FULL": _FULL,
    "MINIMAL": Switch.WARNING | Switch.ADMIN | Switch.LICENSE | Switch.HOSTADDR | Switch.UID,
    "EXTRA": _FULL | Switch.DOMAIN,
    "NONE": NOTHING,
}

#: The state a daemon starts in (without a persisted admin change).
STARTUP = _DEFAULT | Switch.EXTERR

_SWITCH_NAMES: tuple[str, ...] = tuple(member.name or "" for member in Switch)
_WORD = re.compile(r"^([A-Za-z]+)([+-]?)$")
_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")


def startup_switches(*, domain_logging: bool = False) -> Switch:
    """The start-up state: DEFAULT + EXTERR, plus DOMAIN with ``-f``."""
    return STARTUP | Switch.DOMAIN if domain_logging else STARTUP


def describe(switches: Switch) -> str:
    """The switches that are on, in bit order, space separated; ``NONE`` if none."""
    names = [name for name in _SWITCH_NAMES if switches & Switch[name]]
    return " ".join(names) if names else "NONE"


def preset_name(switches: Switch) -> str | None:
    """The preset whose switches are exactly ``switches``, if there is one."""
    for name, value in PRESETS.items():
        if value == switches:
            return name
    return None


def _unknown(word: str) -> LogLevelError:
    return LogLevelError(
        f"loglevel: {word!r} is not a log switch or preset. Switches: "
        f"{' '.join(_SWITCH_NAMES)}; presets: {' '.join(PRESETS)}. "
        "Append - to turn a switch off (exterr-), + or nothing to turn it on; "
        "a bare preset name replaces the whole setting."
    )


def parse(text: str, current: Switch) -> Switch:
    """The state after applying ``loglevel`` text to ``current`` (see the module doc).

    Raises LogLevelError, naming the first bad word, without applying any word.
    """
    state = current
    for word in text.replace(",", " ").split():
        if _NUMBER.match(word):
            mask = int(word, 0)
            if mask & ~int(ALL):
                raise LogLevelError(
                    f"loglevel: {word} has bits beyond the eleven switches "
                    f"(highest allowed value is {int(ALL):#x})"
                )
            state = Switch(mask)
            continue
        match = _WORD.match(word)
        if match is None:
            raise _unknown(word)
        name, sign = match.group(1).upper(), match.group(2)
        if name in PRESETS:
            preset = PRESETS[name]
            if sign == "+":
                state |= preset
            elif sign == "-":
                state &= ~preset
            else:
                state = preset
        elif name in _SWITCH_NAMES:
            switch = Switch[name]
            state = state & ~switch if sign == "-" else state | switch
        else:
            raise _unknown(word)
    return Switch(state & ALL)


class LogSwitches:
    """The live log switches of one daemon, persisted in its state directory.

    ``value`` is read by the log filter on every event (an attribute, no call);
    only `apply`, `set` and `reset` change it.
    """

    log = Logger()

    def __init__(
        self,
        value: Switch = STARTUP,
        *,
        path: Path | None = None,
        startup: Switch = STARTUP,
    ) -> None:
        self.value = value
        #: Where changes are persisted (None: kept in memory only, for tests).
        self.path = path
        #: The state `reset` returns to.
        self.startup = startup

    @classmethod
    def load(cls, state_dir: Path, *, domain_logging: bool = False) -> LogSwitches:
        """The switches of a daemon: the persisted admin setting, or the start-up state.

        ``domain_logging`` (``-f``) adds DOMAIN to whichever of the two applies,
        since the admin asked for domain logging on this start. A file that cannot
        be read is reported and ignored (logging must never stop a daemon).
        """
        startup = startup_switches(domain_logging=domain_logging)
        path = Path(state_dir) / SWITCHES_FILE
        value = startup
        try:
            raw = read_private(path)  # never through a link someone put there
        except FileNotFoundError:
            pass
        except OSError as error:
            cls.log.warn(
                "log switches: cannot read {path} ({error}); using the start-up setting",
                path=str(path),
                error=str(error),
            )
        else:
            try:
                value = _decode(raw.decode("utf-8"))
            except ValueError as error:
                cls.log.warn(
                    "log switches: {path} is not a switches file ({error}); "
                    "using the start-up setting",
                    path=str(path),
                    error=str(error),
                )
            else:
                if domain_logging:
                    value |= Switch.DOMAIN
        return cls(value, path=path, startup=startup)

    def enabled(self, switches: Switch) -> bool:
        """True if every switch of ``switches`` is on."""
        return self.value & switches == switches

    def __str__(self) -> str:
        return describe(self.value)

    def apply(self, text: str) -> str:
        """Apply ``hqn_lsa loglevel`` text; persist; return the new state (`describe`).

        Raises LogLevelError (nothing changed) for a word that names nothing, and
        OSError if the new setting cannot be persisted (it is not applied then
        either, so what the daemon does always matches what a restart would do).
        """
        new = parse(text, self.value)
        if text.split() and new != self.value:
            self.set(new)
        return describe(self.value)

    def set(self, value: Switch) -> None:
        """Make ``value`` the state and persist it."""
        value = Switch(value & ALL)
        if self.path is not None:
            write_atomically(self.path, _encode(value).encode("utf-8"))
        self.value = value

    def reset(self) -> str:
        """Back to the start-up state, forgetting the persisted setting (``reinit``)."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.value = self.startup
        return describe(self.value)


def _encode(value: Switch) -> str:
    names = [name for name in _SWITCH_NAMES if value & Switch[name]]
    return json.dumps({"version": FILE_VERSION, "switches": names}) + "\n"


def _decode(raw: str) -> Switch:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad JSON: {error}") from None
    if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
        raise ValueError(f"expected an object with version {FILE_VERSION}")
    names = data.get("switches")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("'switches' must be a list of switch names")
    value = NOTHING
    for name in names:
        if name not in _SWITCH_NAMES:
            raise ValueError(f"unknown switch {name!r}")
        value |= Switch[name]
    return value
