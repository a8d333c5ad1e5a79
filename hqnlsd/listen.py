"""Listen descriptions for the daemon's private listeners: loopback unless asked.

The manhole and the metrics endpoint must not be reachable from the network by
accident: a TCP description that names no interface is bound to loopback, and an
empty ``interface=`` (which would mean every interface) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Interface a TCP-like description is bound to when it names none.
LOOPBACK_INTERFACES: Mapping[str, str] = {"tcp": "127.0.0.1", "tcp6": "::1", "ssl": "127.0.0.1"}


def split_description(description: str) -> list[str]:
    """Split a strports description on its unescaped colons, keeping escapes."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current.append(ch)
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def loopback_unless_named(
    description: str,
    *,
    what: str,
    kinds: frozenset[str],
    unix_mode: str | None = None,
) -> str:
    """The description a listener really uses; ValueError (message for the admin) if refused.

    A bare port number means TCP. A ``tcp``/``tcp6``/``ssl`` description (those of
    them in ``kinds``) without ``interface=`` is bound to loopback; one naming an
    interface is kept. A ``unix`` one (if in ``kinds``) gets ``mode=unix_mode``
    unless it sets a mode. ``what`` names the listener in messages.
    """
    description = description.strip()
    if not description:
        raise ValueError(f"the {what} listen description is empty")
    if description.isdigit():
        description = f"tcp:{description}"
    parts = split_description(description)
    kind = parts[0].lower()
    options = parts[1:]
    given = {key.lower(): value for key, sep, value in (o.partition("=") for o in options) if sep}
    if kind in kinds and kind in LOOPBACK_INTERFACES:
        if not options or not options[0]:
            raise ValueError(f"{what} description {description!r} names no port")
        if "interface" in given:
            if not given["interface"]:
                raise ValueError(
                    f"{what} description {description!r}: an empty interface would listen "
                    "everywhere; name the interface (e.g. interface=0.0.0.0) to mean that"
                )
            return description
        interface = LOOPBACK_INTERFACES[kind].replace(":", "\\:")
        return f"{description}:interface={interface}"
    if kind == "unix" and "unix" in kinds:
        if unix_mode is None or "mode" in given:
            return description
        return f"{description}:mode={unix_mode}"
    raise ValueError(
        f"{what} description {description!r}: use one of {', '.join(sorted(kinds))} "
        "(TCP listens on loopback unless interface= is given)"
    )
