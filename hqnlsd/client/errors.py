"""What can go wrong when a client asks for a licence, as exceptions."""

from __future__ import annotations

from collections.abc import Sequence

from hqnlsd.protocols.replies import Err
from hqnlsd.status import Status


class ClientError(Exception):
    """Base of every error the client library raises."""


class LicenceDenied(ClientError):
    """A server answered with a final ``ERR`` (no licence free, bad product, ...)."""

    def __init__(self, reply: Err, server: str) -> None:
        super().__init__(f"{server}: {reply.status.name}: {reply.msg}")
        self.reply = reply
        self.server = server

    @property
    def status(self) -> Status:
        """The server's status name."""
        return self.reply.status


class NoServer(ClientError):
    """No server of the search list answered usefully; ``reasons`` says why, one per try."""

    def __init__(self, reasons: Sequence[str]) -> None:
        text = "; ".join(reasons) if reasons else "no server to ask"
        super().__init__(f"no licence server could answer: {text}")
        self.reasons = tuple(reasons)


class NotGenuineServer(NoServer):
    """Every server that answered failed the challenge/response check.

    A subclass of `NoServer`: to the application it is no server at all; the
    message says what was wrong with each.
    """


class ProtocolError(ClientError):
    """A server answered something that is not the text protocol."""
