"""The optional configuration file (``twistd hqnlsd --config FILE``), in TOML.

The file can say everything the command line can, plus settings that have no
option. It is read once, checked against the known tables and keys, and turned
into the option values `hqnlsd.tap.Options` uses (strings and booleans, named as
the long options are), so the rest of the daemon never knows where a value came
from. A complete, commented example is ``conf/hqnlsd.toml``.

Keys (file -> option: value):

- ``address`` -> ``address``: IPv4 address (string)
- ``port`` -> ``port``: port number or strports description
- ``permit-path`` -> ``permit-path``: list of directories, or "DIR:DIR"
- ``hosts``, ``state-dir``, ``publisher-keys`` -> the same names: paths
- ``domain-log`` -> ``domain-log``: boolean
- ``[manhole] listen`` -> ``manhole``: port number or strports description
- ``[manhole] authorized-keys`` -> ``manhole-keys``: path (OpenSSH authorized_keys)
- ``[metrics] listen`` -> ``metrics``: port number or strports description
- ``[web] listen`` -> ``web``: port number or strports description (the web console)
- ``[web] tls`` -> ``web-tls``: boolean (serve the console over TLS to admin certificates)
- ``[domain] ca``, ``cert``, ``key`` -> ``domain-ca``, ``domain-cert``,
  ``domain-key``: paths (domain CA certificate, this member's certificate and key)
- ``[domain] peer-port`` -> ``peer-port``: port number of the peer listener
- ``[domain] peer-dial-port`` -> ``peer-dial-port``: port the peers are dialled on
- ``[domain] peer-source-check`` -> ``no-peer-source-check``: boolean, negated
  (``false`` in the file is the flag ``--no-peer-source-check``)
- ``[domain] tick``, ``lease``, ... -> ``domain-timers``: a dict of
  `DomainTimers` field values
- ``[limits] client-idle-timeout``, ``client-per-source``, ... -> ``limits``: a
  dict of `hqnlsd.limits.ConnectionLimits` field values (no command-line option)

Rules:

- Unknown tables or keys, and values of the wrong type, are errors that name the
  file, the key and what is allowed (`ConfigFileError`).
- Relative paths are relative to the directory of the file, not to the working
  directory (which is ``/`` under systemd). No ``~`` or ``$VAR`` expansion.
  Listen descriptions are passed on as written (a relative ``unix:`` path in one
  is relative to the daemon's working directory).
- ``[domain]``: ``ca``, ``cert`` and ``key`` go together (all three or none). Its
  timers are the fields of `hqnlsd.domain.timing.DomainTimers` spelt with dashes
  (``election-timeout``); they are checked together as `DomainTimers` checks them,
  and returned as a dict ready for ``DomainTimers(**timers)``.
- An option given on the command line overrides the file, which overrides the
  built-in default (`merge_options`). A flag given on the command line turns its
  setting on whatever the file says; to turn ``domain-log`` off, edit the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hqnlsd.config import (
    DEFAULT_HOSTS_FILE,
    DEFAULT_PUBLISHER_KEYS,
    DEFAULT_STATE_DIR,
    ConfigError,
    DaemonConfig,
)
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.limits import ConnectionLimits


class ConfigFileError(ConfigError):
    """The configuration file cannot be used; the message names the file and the key."""


Checker = Callable[[object, Path], object]
"""Turns a TOML value into an option value (given the file's directory), or raises
`_Wrong` with what is allowed."""


class _Wrong(Exception):
    """A value does not fit its key; the message says what is allowed."""


def _describe(value: object) -> str:
    """What a TOML value is, for error messages."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kind = names.get(type(value))
    if kind is None:
        kind = (
            "a table"
            if isinstance(value, dict)
            else "an array"
            if isinstance(value, list)
            else "a date"
        )
    text = repr(value)
    return f"{kind} ({text if len(text) <= 60 else text[:57] + '...'})"


def _string(allowed: str) -> Checker:
    """A non-empty string, kept as is."""

    def check(value: object, base: Path) -> object:
        if not isinstance(value, str) or not value.strip():
            raise _Wrong(allowed)
        return value.strip()

    return check


def _port_or_description(allowed: str) -> Checker:
    """A port number (0-65535) or a non-empty strports description, as a string."""

    def check(value: object, base: Path) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= 65535:
                raise _Wrong(allowed)
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise _Wrong(allowed)

    return check


def _resolve(text: str, base: Path) -> str:
    """A path of the file, made absolute against the file's directory."""
    return str(base / text)  # an absolute text replaces base


def _path(allowed: str) -> Checker:
    """A non-empty path string, relative to the file's directory."""

    def check(value: object, base: Path) -> object:
        if not isinstance(value, str) or not value.strip():
            raise _Wrong(allowed)
        return _resolve(value.strip(), base)

    return check


def _paths(allowed: str) -> Checker:
    """A list of directories or a colon-separated string, joined with colons."""

    def check(value: object, base: Path) -> object:
        if isinstance(value, str):
            parts = [part for part in value.split(":") if part.strip()]
        elif isinstance(value, list) and all(isinstance(part, str) for part in value):
            parts = [str(part) for part in value]
            if any(":" in part for part in parts):
                raise _Wrong(f"{allowed}; a directory in the list may not contain ':'")
            if any(not part.strip() for part in parts):
                raise _Wrong(f"{allowed}; no empty directory names")
        else:
            raise _Wrong(allowed)
        if not parts:
            raise _Wrong(f"{allowed}; at least one directory")
        return ":".join(_resolve(part.strip(), base) for part in parts)

    return check


def _boolean(allowed: str) -> Checker:
    """true or false."""

    def check(value: object, base: Path) -> object:
        if not isinstance(value, bool):
            raise _Wrong(allowed)
        return value

    return check


def _negated(check: Checker) -> Checker:
    """A boolean key that sets a ``no-...`` flag: ``true`` in the file is the flag off."""

    def negated(value: object, base: Path) -> object:
        return not check(value, base)

    return negated


@dataclasses.dataclass(frozen=True)
class _Key:
    """One key of the file: where it is, the option it sets, and how it is checked."""

    name: str
    option: str
    check: Checker


_LISTEN = 'a port number or a strports description such as "tcp:{port}"'

_TOP_LEVEL: tuple[_Key, ...] = (
    _Key("address", "address", _string('an IPv4 address string such as "127.0.0.1"')),
    _Key(
        "port",
        "port",
        _port_or_description(
            "a port number (0-65535) or a strports description such as "
            '"tcp:1236:interface=127.0.0.1"'
        ),
    ),
    _Key(
        "permit-path",
        "permit-path",
        _paths('a list of directories such as ["/etc/hqnlsd/permits"] or "DIR:DIR"'),
    ),
    _Key("hosts", "hosts", _path('a file path such as "/etc/hosts"')),
    _Key("state-dir", "state-dir", _path('a directory path such as "/var/lib/hqnlsd"')),
    _Key(
        "publisher-keys",
        "publisher-keys",
        _path('a directory path such as "/etc/hqnlsd/publishers"'),
    ),
    _Key("domain-log", "domain-log", _boolean("true or false")),
    _Key(
        "server-keys",
        "server-keys",
        _path('a directory path such as "/etc/hqnlsd/server-keys"'),
    ),
)

_TABLES: dict[str, tuple[_Key, ...]] = {
    "manhole": (
        _Key("listen", "manhole", _port_or_description(_LISTEN.format(port=2222))),
        _Key(
            "authorized-keys",
            "manhole-keys",
            _path('an OpenSSH authorized_keys file path such as "/etc/hqnlsd/manhole_keys"'),
        ),
    ),
    "metrics": (_Key("listen", "metrics", _port_or_description(_LISTEN.format(port=9236))),),
    "web": (
        _Key("listen", "web", _port_or_description(_LISTEN.format(port=8236))),
        _Key("tls", "web-tls", _boolean("true or false")),
    ),
    "admin": (
        _Key("socket", "admin-socket", _path('a socket path such as "/run/hqnlsd/admin.sock"')),
        _Key("socket-mode", "admin-socket-mode", _string('an octal file mode such as "660"')),
        _Key("socket-group", "admin-socket-group", _string('a group name such as "hqnadmin"')),
        _Key(
            "runtime-dir",
            "runtime-dir",
            _string('an absolute directory path such as "/run/hqnlsd", or "off"'),
        ),
        _Key("tls-listen", "admin-tls", _port_or_description(_LISTEN.format(port=1238))),
    ),
    "domain": (
        _Key("ca", "domain-ca", _path("the domain CA certificate file path (PEM)")),
        _Key("cert", "domain-cert", _path("this member's certificate file path (PEM)")),
        _Key("key", "domain-key", _path("this member's private key file path (PEM)")),
        _Key("peer-port", "peer-port", _port_or_description("a port number such as 1237")),
        _Key(
            "peer-dial-port", "peer-dial-port", _port_or_description("a port number such as 1237")
        ),
        _Key("peer-source-check", "no-peer-source-check", _negated(_boolean("true or false"))),
    ),
}

TIMERS_OPTION = "domain-timers"
"""The option name under which the ``[domain]`` timers are returned (a dict)."""

_TLS_OPTIONS = ("domain-ca", "domain-cert", "domain-key")

# name in the file -> (DomainTimers field, is an integer)
_TIMERS: dict[str, tuple[str, bool]] = {
    field.name.replace("_", "-"): (field.name, isinstance(field.default, int))
    for field in dataclasses.fields(DomainTimers)
}

LIMITS_OPTION = "limits"
"""The option name under which the ``[limits]`` table is returned (a dict of
`ConnectionLimits` field values)."""

# name in the file -> ConnectionLimits field
_LIMITS: dict[str, str] = {
    field.name.replace("_", "-"): field.name for field in dataclasses.fields(ConnectionLimits)
}

FILE_OPTIONS: frozenset[str] = frozenset(
    [key.option for key in _TOP_LEVEL]
    + [key.option for keys in _TABLES.values() for key in keys]
    + [TIMERS_OPTION, LIMITS_OPTION]
)
"""Every option name `load_config_file` may return."""


def _unknown(source: str, where: str, name: str, allowed: list[str]) -> ConfigFileError:
    """The error for an unknown key, with the closest known one if any."""
    close = difflib.get_close_matches(name.replace("_", "-"), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigFileError(
        f"{source}: unknown key {name!r} in {where}{hint}; allowed: {', '.join(sorted(allowed))}"
    )


def _table_label(table: str | None) -> str:
    return "the top level" if table is None else f"[{table}]"


def _key_label(table: str | None, name: str) -> str:
    return name if table is None else f"{table}.{name}"


def _check_keys(
    source: str,
    table: str | None,
    values: Mapping[str, object],
    keys: tuple[_Key, ...],
    base: Path,
    out: dict[str, object],
    extra: Sequence[str] = (),
) -> None:
    """Check values against keys, writing option values into out."""
    known = {key.name: key for key in keys}
    for name, value in values.items():
        key = known.get(name)
        if key is None:
            if name in extra:
                continue
            raise _unknown(source, _table_label(table), name, [*known, *extra])
        try:
            out[key.option] = key.check(value, base)
        except _Wrong as wrong:
            raise ConfigFileError(
                f"{source}: {_key_label(table, name)} must be {wrong}, not {_describe(value)}"
            ) from None


def _check_timers(source: str, values: Mapping[str, object]) -> dict[str, float | int]:
    """The ``[domain]`` timers as DomainTimers field values, checked together."""
    timers: dict[str, float | int] = {}
    for name, value in values.items():
        if name not in _TIMERS:
            continue
        field, integer = _TIMERS[name]
        label = f"domain.{name}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            wanted = "a whole number" if integer else "a number of seconds"
            raise ConfigFileError(f"{source}: {label} must be {wanted}, not {_describe(value)}")
        if integer and not isinstance(value, int):
            raise ConfigFileError(
                f"{source}: {label} must be a whole number, not {_describe(value)}"
            )
        if not math.isfinite(value) or value < 0:
            raise ConfigFileError(
                f"{source}: {label} must be a finite number, zero or more, not {value!r}"
            )
        timers[field] = value if integer else float(value)
    if timers:
        try:
            DomainTimers(**timers)  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigFileError(f"{source}: [domain] timers do not fit together: {e}") from None
    return timers


def _check_limits(source: str, values: object) -> dict[str, object]:
    """The ``[limits]`` table as `ConnectionLimits` field values, checked."""
    if not isinstance(values, dict):
        raise ConfigFileError(
            f"{source}: limits must be a table ([limits] with keys "
            f"{', '.join(_LIMITS)}), not {_describe(values)}"
        )
    fields: dict[str, object] = {}
    for name, value in values.items():
        if name not in _LIMITS:
            raise _unknown(source, "[limits]", name, list(_LIMITS))
        fields[_LIMITS[name]] = value
    try:
        ConnectionLimits.from_mapping(fields)
    except ValueError as error:
        text = str(error)
        for dashed, field in _LIMITS.items():
            text = text.replace(field, f"limits.{dashed}")
        raise ConfigFileError(f"{source}: {text}") from None
    return fields


def parse_config(text: str, *, source: str, base_dir: Path) -> dict[str, object]:
    """Check TOML text and return option name -> value (see the module docstring).

    source names the text in error messages (the file's path); relative paths are
    made absolute against base_dir. Raises ConfigFileError.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{source}: not valid TOML: {e}") from None
    out: dict[str, object] = {}
    tables = [*_TABLES, LIMITS_OPTION]
    top = {name: value for name, value in document.items() if name not in tables}
    _check_keys(source, None, top, _TOP_LEVEL, base_dir, out, extra=tables)
    if LIMITS_OPTION in document:
        out[LIMITS_OPTION] = _check_limits(source, document[LIMITS_OPTION])
    for table, keys in _TABLES.items():
        if table not in document:
            continue
        values = document[table]
        if not isinstance(values, dict):
            raise ConfigFileError(
                f"{source}: {table} must be a table ([{table}] with keys "
                f"{', '.join(key.name for key in keys)}), not {_describe(values)}"
            )
        timers = list(_TIMERS) if table == "domain" else []
        _check_keys(source, table, values, keys, base_dir, out, extra=timers)
        if table == "domain":
            found = _check_timers(source, values)
            if found:
                out[TIMERS_OPTION] = found
    tls = [option for option in _TLS_OPTIONS if option in out]
    if tls and len(tls) != len(_TLS_OPTIONS):
        missing = [option.removeprefix("domain-") for option in _TLS_OPTIONS if option not in out]
        raise ConfigFileError(
            f"{source}: [domain] ca, cert and key go together; missing: {', '.join(missing)}"
        )
    return out


def load_config_file(path: str | Path) -> dict[str, object]:
    """Read and check a TOML configuration file; option name -> value.

    Relative paths in it are relative to the file's own directory. Raises
    ConfigFileError naming the file for anything wrong, unreadable included.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ConfigFileError(
            f"{file}: cannot read the configuration file: {e.strerror or e}"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{file}: not UTF-8 text (byte {e.start})") from None
    return parse_config(text, source=str(file), base_dir=file.absolute().parent)


def _given(value: object) -> bool:
    """Whether a command-line value was given (not None, not an unset flag)."""
    if value is None:
        return False
    return not (isinstance(value, bool | int) and not value)


def merge_options(
    command_line: Mapping[str, object],
    from_file: Mapping[str, object],
    defaults: Mapping[str, object],
) -> dict[str, object]:
    """The value of every option: given on the command line, else the file, else default.

    command_line is what the options parser holds, where a parameter *not given*
    is None and a flag not given is false: so the parser's own defaults for the
    options the file may set must be None, and their real defaults are passed in
    defaults. As `config_from` does::

        from_file = load_config_file(self["config"]) if self["config"] else {}
        self.update(merge_options(self, from_file, OPTION_DEFAULTS))
    """
    merged: dict[str, object] = {}
    for name in {*defaults, *from_file, *command_line}:
        given = command_line.get(name)
        if _given(given):
            merged[name] = given
        elif name in from_file:
            merged[name] = from_file[name]
        elif name in defaults:
            merged[name] = defaults[name]
        else:
            merged[name] = given
    return merged


#: Defaults of the options a config file may also set (the parser's own are None,
#: so that "not given on the command line" can be told from "given").
OPTION_DEFAULTS: dict[str, object] = {
    "address": "127.0.0.1",
    "hosts": str(DEFAULT_HOSTS_FILE),
    "state-dir": str(DEFAULT_STATE_DIR),
    "publisher-keys": str(DEFAULT_PUBLISHER_KEYS),
}


def config_from(command_line: Mapping[str, Any]) -> DaemonConfig:
    """The configuration: the command line's values over the config file's over defaults.

    Called once at start-up, and again on SIGHUP with the same command line to
    re-read the config file. Raises ConfigError (ConfigFileError for the file).
    """
    given = {name: value for name, value in command_line.items() if value is not None}
    from_file = load_config_file(given["config"]) if given.get("config") else {}
    merged = merge_options(command_line, from_file, OPTION_DEFAULTS)

    def text(name: str) -> str | None:
        value = merged.get(name)
        return None if value is None else str(value)

    return DaemonConfig.build(
        address=str(merged["address"]),
        port=text("port"),
        permit_path=text("permit-path"),
        hosts_file=str(merged["hosts"]),
        state_dir=str(merged["state-dir"]),
        publisher_keys=str(merged["publisher-keys"]),
        domain_logging=bool(merged.get("domain-log")),
        manhole=text("manhole"),
        manhole_keys=text("manhole-keys"),
        metrics=text("metrics"),
        web=text("web"),
        web_tls=bool(merged.get("web-tls")),
        admin_socket=text("admin-socket"),
        admin_socket_mode=text("admin-socket-mode"),
        admin_socket_group=text("admin-socket-group"),
        runtime_dir=text("runtime-dir"),
        admin_tls=text("admin-tls"),
        domain_tls=(text("domain-ca"), text("domain-cert"), text("domain-key")),
        server_keys=text("server-keys"),
        peer_port=text("peer-port"),
        peer_dial_port=text("peer-dial-port"),
        peer_source_check=not merged.get("no-peer-source-check"),
        domain_timers=_timers(merged.get(TIMERS_OPTION)),
        limits=_limits(merged.get(LIMITS_OPTION)),
        command_line=given,
    )


def _timers(value: object) -> dict[str, float | int] | None:
    """The ``[domain]`` timers of the config file (a dict), or None."""
    if not isinstance(value, Mapping) or not value:
        return None
    return {str(name): number for name, number in value.items()}


def _limits(value: object) -> Mapping[str, object] | None:
    """The ``[limits]`` table of the config file (ConnectionLimits field values), or None."""
    if not isinstance(value, Mapping) or not value:
        return None
    return {str(name): setting for name, setting in value.items()}
