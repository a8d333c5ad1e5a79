"""Tell systemd how the daemon is doing (``Type=notify`` units), and nothing more.

systemd passes the path of a UNIX datagram socket in ``$NOTIFY_SOCKET`` (a leading
``@`` names a socket in the abstract namespace); each datagram is a few
``KEY=value`` lines. Outside systemd the variable is unset and every call here
does nothing, so the daemon never needs to know how it was started. A failed
notification is logged, never raised: it must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from twisted.application.service import Service
from twisted.logger import Logger

_log = Logger(namespace="hqnlsd.sdnotify")


def sd_notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send state (e.g. ``"READY=1"``) to the service manager; True if it was sent.

    A no-op returning False when ``NOTIFY_SOCKET`` is unset or empty; a socket
    that cannot be reached is logged as a warning and also returns False.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    elif address[0] != "/":
        _log.warn(
            "NOTIFY_SOCKET={address!r} is neither a path nor an abstract socket; "
            "not notifying systemd",
            address=address,
        )
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as e:
        _log.warn("cannot notify systemd ({state!r}): {error}", state=state, error=str(e))
        return False
    return True


class SystemdNotifier(Service):
    """Says ``READY=1`` when started and ``STOPPING=1`` when stopped.

    Add it as the **last** child of the root service: `MultiService` starts its
    children in order, so this one starts only after every listener is bound and
    the state is restored, and stops first, before anything is torn down.
    """

    name = "sd_notify"

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        """environ is read at each notification (the daemon's environment by default)."""
        self.environ = environ

    def notify(self, state: str) -> bool:
        """Send any state lines to systemd (see `sd_notify`)."""
        return sd_notify(state, self.environ)

    def startService(self) -> None:
        """The daemon is up: tell systemd so that dependent units may start."""
        super().startService()
        self.notify("READY=1\nSTATUS=serving")

    def stopService(self) -> None:
        """The daemon is going down: tell systemd before the listeners close."""
        self.notify("STOPPING=1\nSTATUS=stopping")
        super().stopService()

    def reloading(self) -> bool:
        """A reload (SIGHUP) begins; call `ready` when it is done.

        Carries ``MONOTONIC_USEC`` as systemd (253 and later) wants for
        ``RELOADING=1``; older versions ignore both.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")

    def ready(self) -> bool:
        """Serving again (after `reloading`)."""
        return self.notify("READY=1\nSTATUS=serving")
