"""Status names and numeric codes shared by the core, the protocols and the tools.

A numeric status is a *standard* code (``0xC8001001`` .. ``0xC800100E``, the
class of failure) ORed with an *extended* code in bits 16-23 (``0x020000``
BADPRODUCT .. ``0x180000`` TOKEN_HELD, the precise reason). Clients written
against the original only test the standard class; new clients use the name.
"""

from __future__ import annotations

import enum


class Standard(enum.IntEnum):
    """The standard status classes (the original's base error codes)."""

    BAD_HANDLE = 0xC8001001
    NO_LICENCE = 0xC8001002
    BAD_PRODUCT = 0xC8001003
    LICENCE_LOST = 0xC8001004
    SERVER_UNAVAILABLE = 0xC8001005
    REDIRECT = 0xC8001006
    ILLEGAL_REQUEST = 0xC8001007
    NOT_PERMITTED = 0xC8001008
    DUPLICATE = 0xC8001009
    SHUTTING_DOWN = 0xC800100A
    TIMEOUT = 0xC800100B
    PROTOCOL = 0xC800100C
    INTERNAL = 0xC800100D
    ADMIN_REFUSED = 0xC800100E


class Status(enum.Enum):
    """Every error status a server can answer, with its extended code and class."""

    BADPRODUCT = (0x02, Standard.BAD_PRODUCT)
    PERMITOUTOFDATE = (0x03, Standard.BAD_PRODUCT)
    NOLICENCES = (0x04, Standard.NO_LICENCE)
    BADHANDLE = (0x05, Standard.BAD_HANDLE)
    PERMITEXPIRED = (0x06, Standard.BAD_PRODUCT)
    DUPREQUEST = (0x07, Standard.DUPLICATE)
    TOOMANYLICENCES = (0x08, Standard.NO_LICENCE)
    LOSTLICENCE = (0x09, Standard.LICENCE_LOST)
    LOCKSNOFLOAT = (0x0A, Standard.NO_LICENCE)
    NOTVERIFIED = (0x0B, Standard.SERVER_UNAVAILABLE)
    NEW_MASTER = (0x0C, Standard.SERVER_UNAVAILABLE)
    LOSTMASTER = (0x0D, Standard.SERVER_UNAVAILABLE)
    TRY_SERVER = (0x0E, Standard.REDIRECT)
    TRY_DOMAIN = (0x0F, Standard.REDIRECT)
    ILLEGAL = (0x10, Standard.ILLEGAL_REQUEST)
    EXCLUDED = (0x11, Standard.NO_LICENCE)
    USERS_OFF = (0x12, Standard.NOT_PERMITTED)
    SYNTAX = (0x13, Standard.PROTOCOL)
    UNKNOWN_COMMAND = (0x14, Standard.PROTOCOL)
    LINE_TOO_LONG = (0x15, Standard.PROTOCOL)
    INTERNAL = (0x16, Standard.INTERNAL)
    NOACCESS = (0x17, Standard.NO_LICENCE)
    #: A REQUEST's ``client=`` token holds a licence for another user, host,
    #: address or process (not in the original: tokens are ours).
    TOKEN_HELD = (0x18, Standard.DUPLICATE)

    @property
    def extended(self) -> int:
        """The extended code, already shifted into bits 16-23."""
        return int(self.value[0]) << 16

    @property
    def standard(self) -> Standard:
        """The standard class of this status."""
        return Standard(self.value[1])

    @property
    def code(self) -> int:
        """The full numeric status: standard class ORed with extended code."""
        return int(self.standard) | self.extended

    @classmethod
    def from_code(cls, code: int) -> Status:
        """The status whose extended code is in bits 16-23 of ``code``."""
        wanted = (code >> 16) & 0xFF
        for status in cls:
            if status.value[0] == wanted:
                return status
        raise ValueError(f"no status has extended code 0x{wanted:02x}")
