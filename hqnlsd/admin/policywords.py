"""The words of ``hqn_lsa policy``: what a change of a product's policy flags does
(`plan_policy`), relative to the flags in force and their locks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hqnlsd.admin.context import AdminError
from hqnlsd.permits.policy import KNOWN_FLAGS, Policy

_POLICY_WORD = re.compile(r"^([A-Za-z]+)([+!-]?)$")
_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")


@dataclass(frozen=True)
class PolicyPlan:
    """What ``policy`` words do: the flags after them, the flags they lock
    (``MNEM!``), and the flags whose change was ignored because they are locked."""

    flags: int
    lock: int
    ignored: list[str]


def plan_policy(text: str, current: int, locks: int, admin_locks: int = 0) -> PolicyPlan:
    """The manual's ``policy p [val | mnemonic[-|!] ...]``, relative to ``current`` flags.

    A number (``0x41``, ``65``) replaces the whole word except the locked flags; its
    high 16 bits, if any, must be the publisher's locks as they are. ``MNEM`` turns a
    flag on (``MNEM+`` too), ``MNEM-`` off, ``MNEM!`` locks it as it is until the
    permit is re-read. Changes to a flag locked by the publisher (``locks``) or the
    administrator (``admin_locks``, or an earlier ``!`` in the same words) are
    ignored and named in ``ignored``. Raises AdminError for a bad word.
    """
    words = text.replace(",", " ").split()
    if not words:
        raise AdminError("ILLEGAL", "policy: give a number or flag names")
    frozen = locks | admin_locks
    ignored: list[str] = []

    def note(bits: int) -> None:
        for flag in Policy:
            if bits & int(flag) and flag.name and flag.name not in ignored:
                ignored.append(flag.name)

    if len(words) == 1 and _NUMBER.match(words[0]):
        number = int(words[0], 0)
        if number >> 32:
            raise AdminError("ILLEGAL", f"policy {words[0]} is more than 32 bits")
        high = number >> 16
        if high and high != locks:
            raise AdminError(
                "ILLEGAL",
                f"policy {words[0]}: the high 16 bits are the publisher's locks "
                f"(0x{locks:04x} for this product) and cannot be changed",
            )
        wanted = number & 0xFFFF & KNOWN_FLAGS
        note((wanted ^ current) & frozen)
        return PolicyPlan((wanted & ~frozen) | (current & frozen), 0, ignored)
    flags, lock = current, 0
    known = {flag.name: int(flag) for flag in Policy if flag.name}
    for word in words:
        match = _POLICY_WORD.match(word)
        name = match.group(1).upper() if match else ""
        if match is None or name not in known:
            raise AdminError(
                "ILLEGAL",
                f"policy: {word!r} is not a policy word; flags: {' '.join(known)} "
                "(NAME turns one on, NAME- off, NAME! locks it until the permit is re-read)",
            )
        bit, sign = known[name], match.group(2)
        if sign == "!":
            lock |= bit & ~locks
            continue
        wanted = flags & ~bit if sign == "-" else flags | bit
        if (wanted ^ flags) & (frozen | lock):
            note(bit)
            continue
        flags = wanted
    return PolicyPlan(flags & KNOWN_FLAGS, lock & ~admin_locks, ignored)


def parse_policy(text: str, current: int, locks: int) -> int:
    """The policy flags after ``policy`` text (see `plan_policy`), relative to ``current``."""
    return plan_policy(text, current, locks).flags




def flag_names(flags: int) -> list[str]:
    """The names of the policy flags set in ``flags``."""
    return [flag.name for flag in Policy if flags & int(flag) and flag.name]
