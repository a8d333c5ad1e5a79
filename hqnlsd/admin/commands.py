"""The ``hqn_lsa`` commands: names (long and short, as in the original), usage,
help, and how their words become an admin request.

A product is named by its number in ``listp`` or by ``PUBLISHER PRODUCT``
(quote names with spaces: ``"Test Publisher" Widget``). `parse_command` turns a
command's words into a `Planned` request; `UsageError` says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from hqnlsd.logging.switches import Switch
from hqnlsd.permits.policy import Policy, describe


class UsageError(ValueError):
    """The words do not make a valid command; the message shows the usage."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``hqn_lsa`` command."""

    name: str
    short: str
    usage: str
    help: str
    #: "server" (sent to each server), "local" (answered here), "setting" (of hqn_lsa).
    kind: str = "server"
    #: Takes licences back: asks for confirmation unless -y.
    revokes: bool = False
    #: What else makes it ask for confirmation unless -y (e.g. "rewrites ..."): "" for nothing.
    asks: str = ""
    #: The admin protocol command it sends (server commands; ``id`` asks the servers it
    #: names): always one of `hqnlsd.admin.table.NAMES`.
    request: str = ""
    #: Words to request arguments: one dict, or one per item (several items).
    build: Callable[[Sequence[str]], dict[str, Any] | list[dict[str, Any]]] | None = None


@dataclasses.dataclass(frozen=True)
class Planned:
    """A parsed command line: the command and its request arguments (or words)."""

    command: Command
    args: dict[str, Any]
    words: tuple[str, ...]
    #: One request per item for the commands that take several (``kill p n [n ...]``):
    #: sent in order; ``args`` is the first.
    requests: tuple[dict[str, Any], ...] = ()


def _product(words: Sequence[str], usage: str) -> tuple[dict[str, Any], list[str]]:
    if not words:
        raise UsageError(f"name a product (its number in listp, or PUBLISHER PRODUCT): {usage}")
    if words[0].isdigit():
        return {"index": int(words[0])}, list(words[1:])
    if len(words) < 2:
        raise UsageError(f"name a product as PUBLISHER PRODUCT or by its number: {usage}")
    return {"publisher": words[0], "product": words[1]}, list(words[2:])


def _no_more(rest: Sequence[str], usage: str) -> None:
    if rest:
        raise UsageError(f"unexpected {' '.join(rest)!r}: {usage}")


def _int(word: str, what: str, usage: str) -> int:
    try:
        return int(word, 0)
    except ValueError:
        raise UsageError(f"{what} {word!r} is not a number: {usage}") from None


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smh]?)$", re.IGNORECASE)
#: A bare number is minutes, as the manual's ``crashout p t`` and ``timeout p t``.
_UNIT = {"": 60.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(word: str) -> float:
    """Seconds of ``10`` (minutes, as in the manual), ``10m``, ``90s`` or ``2h``;
    UsageError otherwise."""
    match = _DURATION.match(word.strip())
    if match is None:
        raise UsageError(
            f"{word!r} is not a time: give minutes (10 or 10m), seconds (90s) or hours (2h)"
        )
    return float(match.group(1)) * _UNIT[match.group(2).lower()]


def _none(usage: str) -> Callable[[Sequence[str]], dict[str, Any]]:
    def build(words: Sequence[str]) -> dict[str, Any]:
        _no_more(words, usage)
        return {}

    return build


def _product_only(
    usage: str, *, optional: bool = False
) -> Callable[[Sequence[str]], dict[str, Any]]:
    def build(words: Sequence[str]) -> dict[str, Any]:
        if optional and not words:
            return {}
        product, rest = _product(words, usage)
        _no_more(rest, usage)
        return {"product": product}

    return build


#: What each policy flag does, for ``policy`` without arguments.
POLICY_MEANINGS: dict[str, str] = {
    "GRAB": "free a licence not updated within the crashout time, at the next request",
    "ONPN": "one floating licence per machine; locked nodes: one per listing",
    "TIML": "a licence may be held at most the timeout while others are waiting",
    "LKNL": "as TIML, but locked nodes are exempt",
    "LKNF": "locked nodes may not take floating licences",
    "LKPR": "locked-node users take priority over floating users",
    "UVIS": "applications may list the current users",
    "USRL": "named users (adduser) get guaranteed licences",
    "ACCL": "per-user / per-group access levels 0..8 (adduacc, addgacc)",
}


def policy_table() -> str:
    """``policy`` without arguments: every policy, its mnemonic and bit, and the words."""
    lines = ["policies (mnemonic, bit, meaning):"]
    for index, flag in enumerate(Policy):
        name = flag.name or "?"
        meaning = POLICY_MEANINGS.get(name, "")
        lines.append(f"  {name:<5} 0x{int(flag):03x}  bit {index:<2} {meaning}")
    lines.append(
        "policy PRODUCT MNEM turns a policy on, MNEM- turns it off, MNEM! locks it as it "
        "is until the permit is re-read; policy PRODUCT VALUE sets the whole word. Changes "
        "to locked policies (by the publisher or with !) are ignored, and the reply says so."
    )
    return "\n".join(lines)


_POLICY_USAGE = "policy [PRODUCT [VALUE | MNEM | MNEM- | MNEM! ...]]"


def _policy(words: Sequence[str]) -> dict[str, Any]:
    if not words:
        return {"list": True}
    product, rest = _product(words, _POLICY_USAGE)
    return {"product": product, "value": " ".join(rest) or None}


def _seconds(what: str) -> Callable[[Sequence[str]], dict[str, Any]]:
    usage = f"{what} PRODUCT [MINUTES | 10m | 90s | 1h | default]"

    def build(words: Sequence[str]) -> dict[str, Any]:
        product, rest = _product(words, usage)
        if not rest:
            return {"product": product}
        if len(rest) > 1:
            raise UsageError(usage)
        if rest[0].lower() == "default":
            return {"product": product, "default": True}
        return {"product": product, "seconds": parse_duration(rest[0])}

    return build


def _is_number(word: str) -> bool:
    try:
        int(word, 0)
    except ValueError:
        return False
    return True


_HANDLE = re.compile(r"^[0-9a-f]{16}$")


def _kill(words: Sequence[str]) -> list[dict[str, Any]]:
    usage = "kill PRODUCT LICENCE-NUMBER [LICENCE-NUMBER ...] | kill HANDLE [HANDLE ...]"
    if words and all(
        not _is_number(word) or _HANDLE.match(word) is not None for word in words
    ):
        # No licence number anywhere: handles (16 hex digits, even if all are digits).
        return [{"handle": word} for word in words]
    product, rest = _product(words, usage)
    if not rest:
        raise UsageError(f"give the licence number(s) from listu: {usage}")
    return [
        {"product": product, "index": _int(word, "licence number", usage)} for word in rest
    ]


def _node(name: str) -> Callable[[Sequence[str]], list[dict[str, Any]]]:
    usage = f"{name} PRODUCT HOST [HOSTID] [HOST [HOSTID] ...]"

    def build(words: Sequence[str]) -> list[dict[str, Any]]:
        product, rest = _product(words, usage)
        if not rest:
            raise UsageError(f"name the host(s): {usage}")
        items: list[dict[str, Any]] = []
        for word in rest:
            if items and "unique_id" not in items[-1] and _is_number(word):
                items[-1]["unique_id"] = _int(word, "unique id", usage)
                continue
            if _is_number(word):
                raise UsageError(f"{word!r} is a unique id without a host: {usage}")
            items.append({"product": product, "address": word})
        return items

    return build


def _items(name: str, key: str) -> Callable[[Sequence[str]], list[dict[str, Any]]]:
    usage = f"{name} PRODUCT {key.upper()} [{key.upper()} ...]"

    def build(words: Sequence[str]) -> list[dict[str, Any]]:
        product, rest = _product(words, usage)
        if not rest:
            raise UsageError(f"name the {key}(s): {usage}")
        return [{"product": product, key: word} for word in rest]

    return build


def _count(name: str) -> Callable[[Sequence[str]], dict[str, Any]]:
    usage = f"{name} PRODUCT [COUNT]"

    def build(words: Sequence[str]) -> dict[str, Any]:
        product, rest = _product(words, usage)
        if len(rest) > 1:
            raise UsageError(usage)
        count = _int(rest[0], "count", usage) if rest else 1
        return {"product": product, "count": count}

    return build


def _access(name: str, who: str) -> Callable[[Sequence[str]], list[dict[str, Any]]]:
    usage = f"{name} PRODUCT {who.upper()} LEVEL(0..8) [{who.upper()} LEVEL ...]"

    def build(words: Sequence[str]) -> list[dict[str, Any]]:
        product, rest = _product(words, usage)
        if not rest or len(rest) % 2:
            raise UsageError(usage)
        return [
            {"product": product, who: rest[i], "level": _int(rest[i + 1], "level", usage)}
            for i in range(0, len(rest), 2)
        ]

    return build


def _recover(words: Sequence[str]) -> dict[str, Any]:
    usage = "recover DOMAIN-NUMBER (the domain's number in sinfo)"
    if len(words) != 1:
        raise UsageError(usage)
    return {"domain": _int(words[0], "domain number", usage)}


#: The original's log switches by number (1 = WARNING ... 11 = DOMAIN): bit n - 1.
SWITCH_NUMBERS: tuple[str, ...] = tuple(str(switch.name) for switch in Switch)
_SWITCH_NUMBER = re.compile(r"^([0-9]+)([+-]?)$")


def _loglevel(words: Sequence[str]) -> dict[str, Any]:
    """Switch numbers (``lg 5``, ``lg 10-``) are the original's switch numbers, not a
    mask; names, presets and hex masks (``0x3``) go to the daemon as they are."""
    out = []
    for word in words:
        match = _SWITCH_NUMBER.match(word)
        if match is None:
            out.append(word)
            continue
        number = int(match.group(1))
        if not 1 <= number <= len(SWITCH_NUMBERS):
            raise UsageError(
                f"loglevel {word}: switches are numbered 1 to {len(SWITCH_NUMBERS)} "
                "(lg alone lists them); a whole mask is written in hex (0x3)"
            )
        out.append(SWITCH_NUMBERS[number - 1] + match.group(2))
    return {"text": " ".join(out)}


COMMANDS: tuple[Command, ...] = (
    Command(
        "server",
        "s",
        "server [NAME ...]",
        "connect: the next commands go to each of these servers (N = hqnserverN, "
        "hqnserverN, host, address, HOST:PORT); none: the default server",
        kind="setting",
    ),
    Command(
        "listhqn",
        "hq",
        "listhqn",
        "list the hqnserverN aliases the server knows",
        request="listhqn",
        build=_none("listhqn"),
    ),
    Command(
        "sinfo",
        "i",
        "sinfo",
        "server information: identity, permit files read "
        "(in order, with their errors), log switches",
        request="sinfo",
        build=_none("sinfo"),
    ),
    Command(
        "listp",
        "lp",
        "listp [PRODUCT]",
        "list the products served, with licences used / total; with PRODUCT: its "
        "full details (as listp+) on every connected server",
        request="listp",
        build=_product_only("listp [PRODUCT]", optional=True),
    ),
    Command(
        "listp+",
        "lp+",
        "listp+",
        "list the products with every setting (policy, "
        "times, locked nodes, excluded hosts, named users, access levels)",
        request="listp",
        build=_none("listp+"),
    ),
    Command(
        "listu",
        "u",
        "listu [PRODUCT]",
        "list the licence holders (of one product)",
        request="listu",
        build=_product_only("listu [PRODUCT]", optional=True),
    ),
    Command("help", "h", "help [COMMAND]", "list the commands, or explain one", kind="local"),
    Command(
        "policy",
        "p",
        _POLICY_USAGE,
        "no arguments: list the policies and mnemonics; PRODUCT: show its policies; "
        "MNEM turns one on, MNEM- off, MNEM! locks it until the permit is re-read "
        "(changes to locked policies are ignored); VALUE sets the whole word",
        request="policy",
        build=_policy,
    ),
    Command(
        "loglevel",
        "lg",
        "loglevel [SWITCH | SWITCH- | N | N- | PRESET ...]",
        "no arguments: list the switches and each server's state; otherwise turn each "
        'named (or numbered) switch on, or off with -; a preset replaces the setting '
        '(e.g. exterr-, 10-, full, "license product-")',
        request="loglevel",
        build=_loglevel,
    ),
    Command(
        "crashout",
        "c",
        "crashout PRODUCT [MINUTES | 10m | 90s | 1h | default]",
        "show or set the GRAB crashout time (a bare number is minutes)",
        request="crashout",
        build=_seconds("crashout"),
    ),
    Command(
        "timeout",
        "t",
        "timeout PRODUCT [MINUTES | 10m | 90s | 1h | default]",
        "show or set the TIML / LKNL timeout (a bare number is minutes)",
        request="timeout",
        build=_seconds("timeout"),
    ),
    Command(
        "kill",
        "k",
        "kill PRODUCT N [N ...] | kill HANDLE [HANDLE ...]",
        "take licences back by their numbers in listu (holders get LOSTLICENCE)",
        revokes=True,
        request="kill",
        build=_kill,
    ),
    Command(
        "addnode",
        "n+",
        "addnode PRODUCT HOST HOSTID [HOST HOSTID ...]",
        "add hosts (IPv4 address and unique id, see id; 0 or none: any id) to the "
        "locked-node list",
        request="addnode",
        build=_node("addnode"),
    ),
    Command(
        "rmnode",
        "n-",
        "rmnode PRODUCT HOST [HOSTID] [HOST ...]",
        "remove hosts added with addnode from the locked-node list (revokes the "
        "product's licences)",
        revokes=True,
        request="rmnode",
        build=_node("rmnode"),
    ),
    Command(
        "ftol",
        "f",
        "ftol PRODUCT [COUNT]",
        "make floating licences node-locked (revokes the product's licences)",
        revokes=True,
        request="ftol",
        build=_count("ftol"),
    ),
    Command(
        "ltof",
        "l",
        "ltof PRODUCT [COUNT]",
        "make licences that ftol converted floating again, never the permit's own "
        "node-locked ones (revokes the product's licences)",
        revokes=True,
        request="ltof",
        build=_count("ltof"),
    ),
    Command(
        "exhost",
        "e+",
        "exhost PRODUCT HOST [HOST ...]",
        "refuse the product to hosts (names or addresses)",
        request="exhost",
        build=_items("exhost", "host"),
    ),
    Command(
        "unexhost",
        "e-",
        "unexhost PRODUCT HOST [HOST ...]",
        "readmit excluded hosts",
        request="unexhost",
        build=_items("unexhost", "host"),
    ),
    Command(
        "adduser",
        "ul+",
        "adduser PRODUCT USER [USER ...]",
        "give users a guaranteed licence (policy USRL)",
        request="adduser",
        build=_items("adduser", "user"),
    ),
    Command(
        "remuser",
        "ul-",
        "remuser PRODUCT USER [USER ...]",
        "take users off the USRL list",
        request="remuser",
        build=_items("remuser", "user"),
    ),
    Command(
        "adduacc",
        "ua+",
        "adduacc PRODUCT USER LEVEL [USER LEVEL ...]",
        "give users an access level 0..8 (policy ACCL)",
        request="adduacc",
        build=_access("adduacc", "user"),
    ),
    Command(
        "remuacc",
        "ua-",
        "remuacc PRODUCT USER [USER ...]",
        "remove users' access levels",
        request="remuacc",
        build=_items("remuacc", "user"),
    ),
    Command(
        "addgacc",
        "ga+",
        "addgacc PRODUCT GROUP LEVEL [GROUP LEVEL ...]",
        "give groups an access level 0..8 (policy ACCL)",
        request="addgacc",
        build=_access("addgacc", "group"),
    ),
    Command(
        "remgacc",
        "ga-",
        "remgacc PRODUCT GROUP [GROUP ...]",
        "remove groups' access levels",
        request="remgacc",
        build=_items("remgacc", "group"),
    ),
    Command(
        "reinit",
        "ri",
        "reinit",
        "re-read the permits; revokes ALL licences and resets every hqn_lsa setting",
        revokes=True,
        request="reinit",
        build=_none("reinit"),
    ),
    Command(
        "reread",
        "rr",
        "reread",
        "re-read the configuration file and the permits as SIGHUP does: products whose "
        "permits did not change keep their licences (unlike reinit)",
        request="reread",
        build=_none("reread"),
    ),
    Command(
        "down",
        "down",
        "down",
        "stop the daemon (over TLS only with an admin certificate made with "
        "hqn_ca admin --allow-down)",
        asks="stops the daemon",
        request="down",
        build=_none("down"),
    ),
    Command(
        "recover",
        "rc",
        "recover DOMAIN-NUMBER",
        "recover this server's damaged state for a server domain (sinfo numbers the "
        "domains and shows the damage): it restarts empty and rejoins safely",
        asks="rewrites this server's stored state for that domain",
        request="recover",
        build=_recover,
    ),
    Command(
        "id",
        "id",
        "id [HOST ...]",
        "this machine's address and unique id, or each named server's",
        kind="local",
        request="id",
    ),
    Command(
        "lk",
        "lk",
        'lk "LOCK: KEYID SIGNATURE"',
        "check that a permit lock string was typed correctly (quote it for the shell)",
        kind="local",
    ),
    Command(
        "policyword",
        "pw",
        "policyword WORD ...",
        "what a policy word means: pw 0x10041 -> GRAB UVIS locked:GRAB; pw GRAB UVIS -> 0x41",
        kind="local",
    ),
    Command(
        "w",
        "w",
        "w SECONDS",
        "wait at most SECONDS (2 or more, default 10) for each answer",
        kind="setting",
    ),
    Command("y", "y", "y", "do not ask before commands that revoke licences", kind="setting"),
)

_BY_NAME: dict[str, Command] = {}
for _command in COMMANDS:
    _BY_NAME[_command.name] = _command
    _BY_NAME[_command.short] = _command


def find(name: str) -> Command | None:
    """The command with this long or short name (case-insensitive), or None."""
    return _BY_NAME.get(name.lower())


def parse_command(words: Sequence[str]) -> Planned:
    """A command's words (name first, no leading dash) as a `Planned` request."""
    if not words:
        raise UsageError("no command")
    command = find(words[0])
    if command is None:
        raise UsageError(f"unknown command {words[0]!r}; 'help' lists the commands")
    rest = tuple(words[1:])
    built: dict[str, Any] | list[dict[str, Any]] = {}
    if command.build is not None:
        built = command.build(rest)
    requests = tuple(built) if isinstance(built, list) else (built,)
    return Planned(command, requests[0], rest, requests)


_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
#: An Ed25519 signature (64 bytes) in base64url without padding.
SIGNATURE_CHARS = 86


def check_lock(words: Sequence[str]) -> dict[str, Any]:
    """``lk``: whether a typed permit lock string (``LOCK: KEYID SIGNATURE``) is well
    formed: a 16-hex-digit key id and an 86-character base64url Ed25519 signature in
    its one canonical spelling. ``problems`` names each fault (empty: well formed).
    Only the form is checked; the permit's own check (hqn_mp check) verifies it."""
    fields = " ".join(words).split()
    if fields and fields[0].upper() in ("LOCK:", "LOCK"):
        fields = fields[1:]
    problems: list[str] = []
    if len(fields) != 2:
        problems.append(
            f"a lock is two fields, KEYID and SIGNATURE, not {len(fields)} "
            '(quote it for the shell: lk "LOCK: ...")'
        )
        return {"key_id": None, "problems": problems}
    key_id, signature = fields
    if not _KEY_ID.match(key_id):
        bad = [c for c in key_id if c not in "0123456789abcdef"]
        why = f"has {bad[0]!r}" if bad else f"has {len(key_id)} characters"
        problems.append(f"the key id {key_id!r} must be 16 lower-case hex digits; it {why}")
    if not _B64URL.match(signature):
        position = next(i for i, c in enumerate(signature) if not _B64URL.match(c))
        problems.append(
            f"the signature has {signature[position]!r} at character {position + 1}: only "
            "A-Z a-z 0-9 - _ occur in it"
        )
    elif len(signature) != SIGNATURE_CHARS:
        problems.append(
            f"the signature has {len(signature)} characters; it has {SIGNATURE_CHARS}"
        )
    else:
        try:
            raw = base64.urlsafe_b64decode(signature + "==")
        except (binascii.Error, ValueError):  # pragma: no cover - the checks above rule it out
            raw = b""
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != signature:
            problems.append(
                "the signature's last character is not its canonical spelling "
                "(a typing error in the last character)"
            )
    return {"key_id": key_id if not problems else None, "problems": problems}


def lock_meaning(words: Sequence[str]) -> dict[str, Any]:
    """``policyword``: a policy word's flags and locks, or the word of flag names."""
    if not words:
        raise UsageError(
            "policyword WORD ...: give a policy word (0x10041) or flag names (GRAB UVIS)"
        )
    known = {flag.name: int(flag) for flag in Policy if flag.name}
    if len(words) == 1 and re.match(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$", words[0]):
        word = int(words[0], 0)
        if word >> 32:
            raise UsageError(f"{words[0]} is more than 32 bits")
    else:
        word = 0
        for name in words:
            flag = name.upper().rstrip("+")
            locked = flag.startswith("LOCKED:") or flag.startswith("LOCK:")
            flag = flag.split(":", 1)[-1]
            for part in flag.split(","):
                if part not in known:
                    raise UsageError(
                        f"{name!r} is not a policy flag; flags: {' '.join(known)} "
                        "(locked:NAME for a lock bit)"
                    )
                word |= known[part] << 16 if locked else known[part]
    flags = [
        {
            "bit": index,
            "name": flag.name,
            "on": bool(word & int(flag)),
            "locked": bool((word >> 16) & int(flag)),
        }
        for index, flag in enumerate(Policy)
    ]
    unknown = word & ~(sum(known.values()) | sum(known.values()) << 16)
    return {"word": word, "text": describe(word), "flags": flags, "unknown_bits": unknown}
