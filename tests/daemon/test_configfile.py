"""Tests of hqnlsd.configfile: the TOML file, its checks and errors, and the merge rule."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.config import ConfigError, DaemonConfig
from hqnlsd.configfile import (
    FILE_OPTIONS,
    TIMERS_OPTION,
    ConfigFileError,
    load_config_file,
    merge_options,
    parse_config,
)
from hqnlsd.domain.timing import DomainTimers

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "conf" / "hqnlsd.toml"

FULL = """
address = "127.0.0.2"
port = 1237
permit-path = ["permits", "/opt/hqn/permits"]
hosts = "hosts"
state-dir = "/var/lib/hqnlsd"
publisher-keys = "keys"
domain-log = true

[manhole]
listen = "tcp:2222"
authorized-keys = "manhole_keys"

[metrics]
listen = 9236

[domain]
ca = "tls/ca.pem"
cert = "tls/member.pem"
key = "/run/credentials/hqnlsd.service/domain.key"
lease = 3
election-timeout = 1.5
max-entries = 500
"""


def write(directory: Path, text: str, name: str = "hqnlsd.toml") -> Path:
    """Write a config file into directory and return its path."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(text: str, tmp_path: Path) -> str:
    """The message of the ConfigFileError that loading text raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_config_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # every error names the file
    return message


class TestValues:
    """What a valid file becomes."""

    def test_every_key(self, tmp_path: Path) -> None:
        """All keys, as the option values tap.Options uses, relative paths resolved."""
        path = write(tmp_path, FULL)
        assert load_config_file(path) == {
            "address": "127.0.0.2",
            "port": "1237",
            "permit-path": f"{tmp_path}/permits:/opt/hqn/permits",
            "hosts": f"{tmp_path}/hosts",
            "state-dir": "/var/lib/hqnlsd",
            "publisher-keys": f"{tmp_path}/keys",
            "domain-log": True,
            "manhole": "tcp:2222",
            "manhole-keys": f"{tmp_path}/manhole_keys",
            "metrics": "9236",
            "domain-ca": f"{tmp_path}/tls/ca.pem",
            "domain-cert": f"{tmp_path}/tls/member.pem",
            "domain-key": "/run/credentials/hqnlsd.service/domain.key",
            TIMERS_OPTION: {"lease": 3.0, "election_timeout": 1.5, "max_entries": 500},
        }

    def test_timers_are_ready_for_domain_timers(self, tmp_path: Path) -> None:
        """The timers dict builds a DomainTimers with exactly the values given."""
        timers = load_config_file(write(tmp_path, FULL))[TIMERS_OPTION]
        assert isinstance(timers, dict)
        built = DomainTimers(**timers)
        assert (built.lease, built.election_timeout, built.max_entries) == (3.0, 1.5, 500)
        assert isinstance(timers["lease"], float)
        assert isinstance(timers["max_entries"], int)

    def test_relative_paths_follow_the_file_not_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file given by a relative name still resolves against its own directory."""
        (tmp_path / "etc").mkdir()
        write(tmp_path / "etc", 'hosts = "hosts"\npermit-path = "a:../b:/abs"\n')
        monkeypatch.chdir(tmp_path)
        values = load_config_file("etc/hqnlsd.toml")
        assert values["hosts"] == f"{tmp_path}/etc/hosts"
        assert values["permit-path"] == f"{tmp_path}/etc/a:{tmp_path}/etc/../b:/abs"

    def test_port_and_listen_descriptions_pass_through(self, tmp_path: Path) -> None:
        """A strports description is kept as written (trimmed); a number becomes a string."""
        path = write(
            tmp_path,
            'port = " tcp:1236:interface=127.0.0.3 "\n[metrics]\nlisten = "unix:m.sock"\n',
        )
        assert load_config_file(path) == {
            "port": "tcp:1236:interface=127.0.0.3",
            "metrics": "unix:m.sock",
        }

    def test_empty_file_sets_nothing(self, tmp_path: Path) -> None:
        """An empty (or comments-only) file is allowed and changes nothing."""
        assert load_config_file(write(tmp_path, "# nothing yet\n")) == {}

    def test_from_text(self) -> None:
        """parse_config works on text, for tests and tools, with a given base directory."""
        values = parse_config('hosts = "h"', source="<test>", base_dir=Path("/etc/hqnlsd"))
        assert values == {"hosts": "/etc/hqnlsd/h"}
        with pytest.raises(ConfigFileError, match=r"^<test>: unknown key 'bogus'"):
            parse_config("bogus = 1", source="<test>", base_dir=Path("/"))


class TestErrors:
    """Every error names the file, the key and what is allowed."""

    def test_unknown_top_level_key_suggests_the_right_one(self, tmp_path: Path) -> None:
        """permit_path (underscore) is unknown; the message offers permit-path."""
        message = error_of('permit_path = "x"\n', tmp_path)
        assert "unknown key 'permit_path' in the top level" in message
        assert "did you mean 'permit-path'?" in message
        assert (
            "allowed: address, admin, domain, domain-log, hosts, limits, manhole, metrics"
            in message
        )

    def test_unknown_table(self, tmp_path: Path) -> None:
        """An unknown table is an unknown top-level key."""
        message = error_of("[logging]\nlevel = 1\n", tmp_path)
        assert "unknown key 'logging' in the top level" in message

    def test_unknown_key_in_a_table(self, tmp_path: Path) -> None:
        """Keys in a table are checked against that table's keys."""
        message = error_of('[manhole]\nlisten = "2222"\nkeys = "k"\n', tmp_path)
        assert "unknown key 'keys' in [manhole]" in message
        assert "allowed: authorized-keys, listen" in message

    def test_unknown_key_in_domain_lists_tls_and_timers(self, tmp_path: Path) -> None:
        """[domain] allows the TLS files and every DomainTimers field."""
        message = error_of("[domain]\nelection_timeout = 2\n", tmp_path)
        assert "did you mean 'election-timeout'?" in message
        for field in dataclasses.fields(DomainTimers):
            assert field.name.replace("_", "-") in message
        assert "ca, candidacy-timeout, cert" in message

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("port = true", "port must be a port number (0-65535) or a strports"),
            ("port = 70000", "port must be a port number (0-65535)"),
            ('port = ""', "port must be a port number"),
            ("address = 5", "address must be an IPv4 address string"),
            ('domain-log = "yes"', "domain-log must be true or false, not a string ('yes')"),
            ("permit-path = [1, 2]", "permit-path must be a list of directories"),
            ("permit-path = []", "at least one directory"),
            ('permit-path = ":"', "at least one directory"),
            ('permit-path = ["a:b"]', "may not contain ':'"),
            ('permit-path = ["a", " "]', "no empty directory names"),
            ('hosts = ""', "hosts must be a file path"),
            ("state-dir = 1979-05-27", "state-dir must be a directory path"),
            ('manhole = "tcp:2222"', "manhole must be a table ([manhole] with keys listen"),
            ("[metrics]\nlisten = 1.5", "metrics.listen must be a port number or a strports"),
            ("[manhole]\nauthorized-keys = []", "manhole.authorized-keys must be an OpenSSH"),
            ('[domain]\ntick = "fast"', "domain.tick must be a number of seconds, not a string"),
            ("[domain]\nmax-entries = 1.5", "domain.max-entries must be a whole number"),
            ("[domain]\nlease = true", "domain.lease must be a number of seconds, not a bool"),
            ("[domain]\nlease = nan", "domain.lease must be a finite number"),
            ("[domain]\nlease = inf", "domain.lease must be a finite number"),
            ("[domain]\ndrift = -0.1", "domain.drift must be a finite number, zero or more"),
        ],
    )
    def test_wrong_types_and_values(self, tmp_path: Path, text: str, fragment: str) -> None:
        """A value of the wrong type or range is refused with what is allowed."""
        assert fragment in error_of(text + "\n", tmp_path)

    def test_timers_are_checked_together(self, tmp_path: Path) -> None:
        """A lease too short for the tick is refused as DomainTimers refuses it."""
        message = error_of("[domain]\nlease = 0.3\ntick = 0.25\n", tmp_path)
        assert "[domain] timers do not fit together" in message
        assert "not more than one tick" in message

    def test_tls_files_go_together(self, tmp_path: Path) -> None:
        """ca, cert and key: all three or none."""
        message = error_of('[domain]\ncert = "c.pem"\n', tmp_path)
        assert "[domain] ca, cert and key go together; missing: ca, key" in message

    def test_invalid_toml_says_where(self, tmp_path: Path) -> None:
        """A syntax error names the file and the line."""
        message = error_of('address = "127.0.0.1"\nport = = 1\n', tmp_path)
        assert "not valid TOML" in message
        assert "line 2" in message

    def test_duplicate_key_is_a_toml_error(self, tmp_path: Path) -> None:
        """Setting a key twice is refused, not silently resolved."""
        assert "not valid TOML" in error_of("port = 1\nport = 2\n", tmp_path)

    def test_missing_and_binary_files(self, tmp_path: Path) -> None:
        """An unreadable or non-UTF-8 file is a ConfigFileError naming it."""
        missing = tmp_path / "nope.toml"
        with pytest.raises(ConfigFileError, match=rf"^{re.escape(str(missing))}: cannot read"):
            load_config_file(missing)
        binary = tmp_path / "bin.toml"
        binary.write_bytes(b'hosts = "\xff"\n')
        with pytest.raises(ConfigFileError, match="not UTF-8"):
            load_config_file(binary)

    def test_is_a_config_error(self) -> None:
        """tap.Options already turns ConfigError into a usage error: this is one."""
        assert issubclass(ConfigFileError, ConfigError)


class TestExampleFile:
    """conf/hqnlsd.toml stays valid and complete."""

    def test_loads_as_shipped(self) -> None:
        """The example as shipped is valid and sets the basic options."""
        values = load_config_file(EXAMPLE)
        assert values["state-dir"] == "/var/lib/hqnlsd"
        assert values["permit-path"] == "/etc/hqnlsd/permits"
        assert "manhole" not in values and "metrics" not in values

    def test_every_key_is_shown_and_valid(self, tmp_path: Path) -> None:
        """With its commented settings switched on, the example sets every option there
        is, and the timers it shows are the real defaults."""
        text = EXAMPLE.read_text(encoding="utf-8")
        enabled = re.sub(r"(?m)^#(?=\[|[a-z][a-z-]* = )", "", text)
        assert enabled != text
        path = write(tmp_path, enabled)
        values = load_config_file(path)
        assert set(values) == FILE_OPTIONS
        defaults = DomainTimers()
        timers = values[TIMERS_OPTION]
        assert isinstance(timers, dict)
        assert timers == {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}

    def test_every_option_of_the_command_line_can_be_set(self) -> None:
        """Each long option of `twistd hqnlsd` (but --config itself) has a file key."""
        from hqnlsd.tap import Options

        declared: list[Any] = [*Options.optParameters, *Options.optFlags]
        names = {str(option[0]) for option in declared}
        names.discard("config")
        assert names <= FILE_OPTIONS, names - FILE_OPTIONS


class TestMerge:
    """Command line over file over default."""

    DEFAULTS = {"address": "127.0.0.1", "hosts": "/etc/hosts", "domain-log": False}

    def test_explicit_command_line_wins(self) -> None:
        """A value given on the command line beats the file, even if equal to the default."""
        merged = merge_options(
            {"address": "127.0.0.1", "hosts": None, "domain-log": 0},
            {"address": "127.0.0.2", "hosts": "/etc/hqnlsd/hosts"},
            self.DEFAULTS,
        )
        assert merged["address"] == "127.0.0.1"
        assert merged["hosts"] == "/etc/hqnlsd/hosts"
        assert merged["domain-log"] is False

    def test_file_then_default(self) -> None:
        """Not given: the file's value; not in the file either: the default."""
        merged = merge_options(
            {"address": None, "hosts": None, "domain-log": 0, "config": "/etc/x.toml"},
            {"address": "127.0.0.9", TIMERS_OPTION: {"lease": 3.0}},
            self.DEFAULTS,
        )
        assert merged == {
            "address": "127.0.0.9",
            "hosts": "/etc/hosts",
            "domain-log": False,
            "config": "/etc/x.toml",
            TIMERS_OPTION: {"lease": 3.0},
        }

    def test_flags(self) -> None:
        """A flag given turns the setting on; a flag not given leaves the file's choice."""
        on_in_file = {"domain-log": True}
        assert merge_options({"domain-log": 1}, {"domain-log": False}, {})["domain-log"] == 1
        assert merge_options({"domain-log": 0}, on_in_file, {})["domain-log"] is True

    def test_option_nobody_sets_stays_none(self) -> None:
        """An option with no value anywhere stays as the parser had it."""
        assert merge_options({"manhole": None}, {}, {}) == {"manhole": None}

    def test_file_values_build_a_daemon_config(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """End to end: a file with relative paths, merged, is accepted by DaemonConfig
        from another working directory."""
        site = tmp_path / "site"
        (site / "keys").mkdir(parents=True)
        (site / "hosts").write_text("127.0.0.1 localhost hqnserver1\n")
        (site / "authorized_keys").write_text("")
        write(
            site,
            'address = "127.0.0.3"\nport = 1300\nhosts = "hosts"\npublisher-keys = "keys"\n'
            'state-dir = "state"\npermit-path = ["permits"]\n'
            '[manhole]\nlisten = 2222\nauthorized-keys = "authorized_keys"\n',
        )
        monkeypatch.chdir(tmp_path)
        command_line: dict[str, object] = {
            "address": None,
            "port": "1400",
            "permit-path": None,
            "hosts": None,
            "state-dir": None,
            "publisher-keys": None,
            "domain-log": 0,
            "manhole": None,
            "manhole-keys": None,
            "config": "site/hqnlsd.toml",
        }
        defaults = {
            "address": "127.0.0.1",
            "hosts": "/etc/hosts",
            "state-dir": "/var/lib/hqnlsd",
            "publisher-keys": "/etc/hqnlsd/publishers",
        }
        o = merge_options(command_line, load_config_file("site/hqnlsd.toml"), defaults)
        config = DaemonConfig.build(
            address=str(o["address"]),
            port=str(o["port"]),
            permit_path=str(o["permit-path"]),
            hosts_file=str(o["hosts"]),
            state_dir=str(o["state-dir"]),
            publisher_keys=str(o["publisher-keys"]),
            domain_logging=bool(o["domain-log"]),
            manhole=str(o["manhole"]),
            manhole_keys=str(o["manhole-keys"]),
            environ={},
        )
        assert config.client_listen == "tcp:1400:interface=127.0.0.3"
        assert config.hosts_file == site / "hosts"
        assert config.state_dir == site / "state"
        assert config.permit_dirs == (site / "permits",)
        assert config.manhole_listen == "2222"
        assert config.manhole_keys == site / "authorized_keys"
