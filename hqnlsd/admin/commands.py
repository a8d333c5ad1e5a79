"""The ``hqn_lsa`` commands: names (long and short, as in the original), usage,
help, and how their words become an admin request.

A product is named by its number in ``listp`` or by ``PUBLISHER PRODUCT``
(quote names with spaces: ``"Test Publisher" Widget``). `parse_command` turns a
command's words into a `Planned` request; `UsageError` says what is wrong.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from hqnlsd.licensing.policy import Policy, describe


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
    #: The admin protocol command it sends (server commands).
    request: str = ""
    build: Callable[[Sequence[str]], dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Planned:
    """A parsed command line: the command and its request arguments (or words)."""

    command: Command
    args: dict[str, Any]
    words: tuple[str, ...]


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
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(word: str) -> float:
    """Seconds of ``90``, ``90s``, ``5m`` or ``2h``; UsageError otherwise."""
    match = _DURATION.match(word.strip())
    if match is None:
        raise UsageError(f"{word!r} is not a time: give seconds (90), minutes (5m) or hours (2h)")
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


def _product_and(
    usage: str, *names: str, optional: Sequence[str] = ()
) -> Callable[[Sequence[str]], dict[str, Any]]:
    def build(words: Sequence[str]) -> dict[str, Any]:
        product, rest = _product(words, usage)
        args: dict[str, Any] = {"product": product}
        for name in names:
            if not rest:
                raise UsageError(f"missing {name.upper()}: {usage}")
            args[name] = rest.pop(0)
        for name in optional:
            if rest:
                args[name] = rest.pop(0)
        _no_more(rest, usage)
        return args

    return build


def _policy(words: Sequence[str]) -> dict[str, Any]:
    product, rest = _product(words, "policy PRODUCT [VALUE | FLAG ... | FLAG+ FLAG- ...]")
    return {"product": product, "value": " ".join(rest) or None}


def _seconds(what: str) -> Callable[[Sequence[str]], dict[str, Any]]:
    usage = f"{what} PRODUCT [SECONDS | 5m | 1h | default]"

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


def _kill(words: Sequence[str]) -> dict[str, Any]:
    usage = "kill HANDLE | kill PRODUCT LICENCE-NUMBER"
    if len(words) == 1:
        return {"handle": words[0]}
    product, rest = _product(words, usage)
    if len(rest) != 1:
        raise UsageError(usage)
    return {"product": product, "index": _int(rest[0], "licence number", usage)}


def _node(name: str) -> Callable[[Sequence[str]], dict[str, Any]]:
    usage = f"{name} PRODUCT ADDRESS [UNIQUE-ID]"

    def build(words: Sequence[str]) -> dict[str, Any]:
        product, rest = _product(words, usage)
        if not 1 <= len(rest) <= 2:
            raise UsageError(usage)
        args: dict[str, Any] = {"product": product, "address": rest[0]}
        if len(rest) == 2:
            args["unique_id"] = _int(rest[1], "unique id", usage)
        return args

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


def _access(name: str, who: str) -> Callable[[Sequence[str]], dict[str, Any]]:
    usage = f"{name} PRODUCT {who.upper()} LEVEL(0..8)"

    def build(words: Sequence[str]) -> dict[str, Any]:
        product, rest = _product(words, usage)
        if len(rest) != 2:
            raise UsageError(usage)
        return {"product": product, who: rest[0], "level": _int(rest[1], "level", usage)}

    return build


def _recover(words: Sequence[str]) -> dict[str, Any]:
    usage = "recover DOMAIN-NUMBER (the domain's number in sinfo)"
    if len(words) != 1:
        raise UsageError(usage)
    return {"domain": _int(words[0], "domain number", usage)}


def _loglevel(words: Sequence[str]) -> dict[str, Any]:
    return {"text": " ".join(words)}


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
        "listp",
        "list the products served, with licences used / total",
        request="listp",
        build=_none("listp"),
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
        "policy PRODUCT [VALUE | FLAG ... | FLAG+ FLAG- ...]",
        "show or set the policy flags (flags locked by the publisher cannot change)",
        request="policy",
        build=_policy,
    ),
    Command(
        "loglevel",
        "lg",
        "loglevel [SWITCH+ SWITCH- PRESET ...]",
        'show or change the log switches (e.g. exterr-, full, "license+ product-")',
        request="loglevel",
        build=_loglevel,
    ),
    Command(
        "crashout",
        "c",
        "crashout PRODUCT [SECONDS | 5m | 1h | default]",
        "show or set the GRAB crashout time",
        request="crashout",
        build=_seconds("crashout"),
    ),
    Command(
        "timeout",
        "t",
        "timeout PRODUCT [SECONDS | 5m | 1h | default]",
        "show or set the TIML / LKNL timeout",
        request="timeout",
        build=_seconds("timeout"),
    ),
    Command(
        "kill",
        "k",
        "kill HANDLE | kill PRODUCT LICENCE-NUMBER",
        "take a licence back (its holder gets LOSTLICENCE)",
        revokes=True,
        request="kill",
        build=_kill,
    ),
    Command(
        "addnode",
        "n+",
        "addnode PRODUCT ADDRESS [UNIQUE-ID]",
        "list a locked node",
        request="addnode",
        build=_node("addnode"),
    ),
    Command(
        "rmnode",
        "n-",
        "rmnode PRODUCT ADDRESS [UNIQUE-ID]",
        "remove a locked node (revokes the product's licences)",
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
        "make node-locked licences floating (revokes the product's licences)",
        revokes=True,
        request="ltof",
        build=_count("ltof"),
    ),
    Command(
        "exhost",
        "e+",
        "exhost PRODUCT HOST",
        "refuse the product to a host (name or address)",
        request="exhost",
        build=_product_and("exhost PRODUCT HOST", "host"),
    ),
    Command(
        "unexhost",
        "e-",
        "unexhost PRODUCT HOST",
        "readmit an excluded host",
        request="unexhost",
        build=_product_and("unexhost PRODUCT HOST", "host"),
    ),
    Command(
        "adduser",
        "ul+",
        "adduser PRODUCT USER",
        "name a user (policy USRL)",
        request="adduser",
        build=_product_and("adduser PRODUCT USER", "user"),
    ),
    Command(
        "remuser",
        "ul-",
        "remuser PRODUCT USER",
        "stop naming a user",
        request="remuser",
        build=_product_and("remuser PRODUCT USER", "user"),
    ),
    Command(
        "adduacc",
        "ua+",
        "adduacc PRODUCT USER LEVEL",
        "give a user an access level 0..8 (policy ACCL)",
        request="adduacc",
        build=_access("adduacc", "user"),
    ),
    Command(
        "remuacc",
        "ua-",
        "remuacc PRODUCT USER",
        "remove a user's access level",
        request="remuacc",
        build=_product_and("remuacc PRODUCT USER", "user"),
    ),
    Command(
        "addgacc",
        "ga+",
        "addgacc PRODUCT GROUP LEVEL",
        "give a group an access level 0..8",
        request="addgacc",
        build=_access("addgacc", "group"),
    ),
    Command(
        "remgacc",
        "ga-",
        "remgacc PRODUCT GROUP",
        "remove a group's access level",
        request="remgacc",
        build=_product_and("remgacc PRODUCT GROUP", "group"),
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
    ),
    Command(
        "lk",
        "lk",
        "lk WORD ...",
        "what a policy word means: lk 0x10041 -> GRAB UVIS locked:GRAB; lk GRAB UVIS -> 0x41",
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
    args: dict[str, Any] = {}
    if command.build is not None:
        args = command.build(rest)
    return Planned(command, args, rest)


def lock_meaning(words: Sequence[str]) -> dict[str, Any]:
    """``lk``: a policy word's flags and locks, or the word of flag names."""
    if not words:
        raise UsageError("lk WORD ...: give a policy word (0x10041) or flag names (GRAB UVIS)")
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
