"""The permit policy word: 16 flag bits, and 16 lock bits above them.

A locked flag (``flag << 16`` set in the permit's policy word) is fixed by the
publisher: ``hqn_lsa policy`` may not change it.
"""

from __future__ import annotations

import enum


class Policy(enum.IntFlag):
    """Policy flags, bit for bit as in the original hqn_lsd."""

    GRAB = 1 << 0  # free licences not updated within crashout, at the next request
    ONPN = 1 << 1  # one floating licence per machine; locked nodes: one per listing
    TIML = 1 << 2  # a licence may be held at most `timeout` if others are waiting
    LKNL = 1 << 3  # as TIML, but locked nodes are exempt
    LKNF = 1 << 4  # locked nodes may not take floating licences
    LKPR = 1 << 5  # locked-node users take priority over floating users
    UVIS = 1 << 6  # applications may list the current users
    USRL = 1 << 7  # named users get guaranteed licences
    ACCL = 1 << 8  # per-user / per-group access levels 0..8


#: Every flag this server knows; other bits in the low half are a permit error.
KNOWN_FLAGS: int = sum(int(flag) for flag in Policy)
#: The lock bits that correspond to known flags.
KNOWN_LOCKS: int = KNOWN_FLAGS << 16
#: Bits a valid policy word may have set.
VALID_POLICY_BITS: int = KNOWN_FLAGS | KNOWN_LOCKS


def flags_of(word: int) -> Policy:
    """The policy flags (low 16 bits) of a policy word."""
    return Policy(word & KNOWN_FLAGS)


def locks_of(word: int) -> Policy:
    """The flags that the publisher locked (high 16 bits, shifted down)."""
    return Policy((word >> 16) & KNOWN_FLAGS)


def describe(word: int) -> str:
    """Human form of a policy word, e.g. ``GRAB UVIS locked:GRAB``."""
    flags = [flag.name for flag in Policy if word & flag and flag.name]
    locks = [flag.name for flag in Policy if (word >> 16) & flag and flag.name]
    text = " ".join(flags) or "-"
    if locks:
        text += " locked:" + ",".join(locks)
    return text
