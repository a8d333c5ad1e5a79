"""Shared helpers for the peer-link and runtime tests: a domain CA on disk, bounded waits."""

from __future__ import annotations

import ipaddress
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from hqnlsd.tls import DomainCredentials
from hqnlsd.tools.ca import Issued, certificate_pem, create_ca, issue_member, write_issued

NOW = datetime.now(UTC)


class DomainCA:
    """A domain CA in a directory, issuing member credentials loaded from files."""

    def __init__(self, directory: Path) -> None:
        """Create the CA (in memory) and write its certificate to ``directory``."""
        self.directory = directory
        self.issued: dict[str, DomainCredentials] = {}
        self.ca: Issued = create_ca(now=NOW, days=30)
        self.ca_path = directory / "ca.crt"
        self.ca_path.write_bytes(certificate_pem(self.ca.certificate))

    def member(self, address: str) -> DomainCredentials:
        """Issue, write and load the credentials of the member on ``address`` (once)."""
        if address not in self.issued:
            key_path, cert_path = write_issued(
                issue_member(self.ca, address, now=NOW), self.directory / f"member-{address}"
            )
            self.issued[address] = DomainCredentials.load(self.ca_path, cert_path, key_path)
        return self.issued[address]


def temporary_directory(case: Any) -> Path:
    """A fresh directory under the system's temp dir, removed when ``case`` ends."""
    directory = Path(tempfile.mkdtemp(prefix="hqnlsd-domain-"))
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def addr(text: str) -> ipaddress.IPv4Address:
    """An IPv4 address."""
    return ipaddress.IPv4Address(text)


@defer.inlineCallbacks
def wait_until(
    reactor: Any, condition: Callable[[], bool], timeout: float, step: float = 0.02
) -> Any:
    """Poll ``condition`` on the reactor until true; fail after ``timeout`` real seconds.

    Returns how long it took.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        yield task.deferLater(reactor, step, lambda: None)
    return time.monotonic() - started


def pause(reactor: Any, seconds: float) -> defer.Deferred[None]:
    """Let the reactor run for ``seconds``."""
    return task.deferLater(reactor, seconds, lambda: None)
