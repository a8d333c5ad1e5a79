"""`twistd hqnlsd`: command-line options and the service tree they build."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from hqnlsd.config import (
    DEFAULT_HOSTS_FILE,
    DEFAULT_PUBLISHER_KEYS,
    DEFAULT_STATE_DIR,
    ConfigError,
    DaemonConfig,
)


class Options(usage.Options):
    """Options of `twistd hqnlsd`."""

    synopsis = "[options]"
    longdesc = (
        "Serve licences for the products of the sealed permits found in the permit "
        "path, to applications speaking the hqnlsd text protocol."
    )
    optFlags = [
        ["domain-log", "f", "Also log server-domain events (adds the DOMAIN log switch)."],
    ]
    optParameters = [
        ["permit-path", "p", None, "Colon-separated directories to search for permits."],
        ["address", "a", "127.0.0.1", "IPv4 address of this daemon (domain check, binding)."],
        [
            "port",
            None,
            None,
            "Client listener: a port number or strports description "
            "(default tcp:1236 on --address).",
        ],
        ["hosts", None, str(DEFAULT_HOSTS_FILE), "Hosts file with the hqnserverN aliases."],
        ["state-dir", None, str(DEFAULT_STATE_DIR), "Directory for durable state."],
        [
            "publisher-keys",
            None,
            str(DEFAULT_PUBLISHER_KEYS),
            "Directory of trusted publisher public keys (*.pub).",
        ],
        [
            "manhole",
            None,
            None,
            "SSH manhole listener (strports, e.g. tcp:2222; loopback unless "
            "interface= is given). Off by default.",
        ],
        ["manhole-keys", None, None, "OpenSSH authorized_keys file for the manhole."],
    ]

    config: DaemonConfig

    def postOptions(self) -> None:
        """Validate everything once, into an immutable DaemonConfig."""
        try:
            self.config = DaemonConfig.build(
                address=self["address"],
                port=self["port"],
                permit_path=self["permit-path"],
                hosts_file=self["hosts"],
                state_dir=self["state-dir"],
                publisher_keys=self["publisher-keys"],
                domain_logging=bool(self["domain-log"]),
                manhole=self["manhole"],
                manhole_keys=self["manhole-keys"],
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Any) -> IService:
    """Build the daemon's service tree from validated options."""
    from twisted.internet import reactor

    from hqnlsd.service import build_service

    return build_service(options.config, reactor)
