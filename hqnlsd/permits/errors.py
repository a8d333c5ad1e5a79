"""The numbered permit conditions (100-118) and the error that carries them.

The numbers follow the original licence server's family of permit errors, so an
administrator can look a condition up by number. Every `PermitError` says where
(file and 1-based line) and what to do about it.
"""

from __future__ import annotations

import enum


class Condition(enum.IntEnum):
    """A numbered permit condition; ``text`` is its one-line description."""

    SERVER_SEAL_WRONG = 100
    UNKNOWN_HOST_ADDRESS = 101
    TEXT_AFTER_LAST_PRODUCT = 102
    PRODUCT_SEAL_WRONG = 103
    UNTRUSTED_KEY = 104
    TRUNCATED = 105
    BAD_ADDRESS = 106
    BAD_UNIQUE_ID = 107
    BAD_DATE = 108
    START_AFTER_EXPIRY = 109
    BAD_POLICY = 110
    BAD_COUNTS = 111
    DATA_MISSING = 112
    BAD_NUMBER = 113
    BAD_FORMAT_VERSION = 114
    BAD_SERVER_COUNT = 115
    NO_SERVER_ALIAS = 116
    UNIQUE_ID_MISMATCH = 117
    BAD_LOCKED_NODE = 118

    @property
    def text(self) -> str:
        """The one-line description of this condition."""
        return _TEXTS[self]


_TEXTS: dict[Condition, str] = {
    Condition.SERVER_SEAL_WRONG: "server (header) seal wrong",
    Condition.UNKNOWN_HOST_ADDRESS: "unknown host address in the server domain",
    Condition.TEXT_AFTER_LAST_PRODUCT: "text after the last product (PERMITS count wrong)",
    Condition.PRODUCT_SEAL_WRONG: "product seal wrong",
    Condition.UNTRUSTED_KEY: "sealed by a key that is not a trusted publisher key",
    Condition.TRUNCATED: "file truncated or keyword missing",
    Condition.BAD_ADDRESS: "bad server address",
    Condition.BAD_UNIQUE_ID: "bad unique id",
    Condition.BAD_DATE: "bad date",
    Condition.START_AFTER_EXPIRY: "start date after expiry date",
    Condition.BAD_POLICY: "policy word has unknown bits",
    Condition.BAD_COUNTS: "bad licence counts",
    Condition.DATA_MISSING: "DATA values missing",
    Condition.BAD_NUMBER: "bad number",
    Condition.BAD_FORMAT_VERSION: "permit format version not accepted",
    Condition.BAD_SERVER_COUNT: "zero or more than 20 servers",
    Condition.NO_SERVER_ALIAS: "a domain member has no hqnserverN alias in the hosts file",
    Condition.UNIQUE_ID_MISMATCH: "unique id mismatch: the permit is for another machine",
    Condition.BAD_LOCKED_NODE: "bad locked-node address or unique id",
}


class PermitError(Exception):
    """A permit problem: its condition, where it is, and what to do about it.

    ``path`` is the permit file (None when the text did not come from a file),
    ``line`` the 1-based line number (None when the problem has no one line).
    """

    def __init__(
        self,
        condition: Condition,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(condition, message, path, line)
        self.condition = condition
        self.message = message
        self.path = path
        self.line = line

    def at(self, path: str | None) -> PermitError:
        """The same error, located in the file ``path``."""
        return PermitError(self.condition, self.message, path=path, line=self.line)

    @property
    def location(self) -> str:
        """``FILE:LINE`` (or what of it is known), for messages."""
        where = self.path if self.path is not None else "<permit>"
        if self.line is not None:
            where += f":{self.line}"
        return where

    def __str__(self) -> str:
        return f"{self.location}: error {int(self.condition)}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"PermitError({self.condition.name}, {self.message!r}, "
            f"path={self.path!r}, line={self.line!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PermitError):
            return NotImplemented
        return (self.condition, self.message, self.path, self.line) == (
            other.condition,
            other.message,
            other.path,
            other.line,
        )

    def __hash__(self) -> int:
        return hash((self.condition, self.message, self.path, self.line))
