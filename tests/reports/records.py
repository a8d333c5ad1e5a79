"""Hand-made usage records, shaped as ``hqnlsd.logging.usage`` writes them."""

from __future__ import annotations

import json
from typing import Any

from hqnlsd.logging.usage import iso_stamp

#: 2026-01-05 00:00:00 UTC: hours and days of the tests start on a boundary.
T0 = 1_767_571_200.0
PUBLISHER = "Test Publisher"


#: The report's own ``ts`` format (what the daemon writes).
_stamp = iso_stamp


def grant(
    at: float,
    handle: str,
    *,
    user: str = "jo",
    host: str = "box",
    product: str = "Widget",
    units: int = 1,
    pid: int = 1,
) -> dict[str, Any]:
    """A ``grant`` record ``at`` seconds after `T0`."""
    return {
        "ts": _stamp(T0 + at),
        "at": T0 + at,
        "event": "grant",
        "publisher": PUBLISHER,
        "product": product,
        "version": "1.0",
        "handle": handle,
        "indices": list(range(1, units + 1)),
        "type": "floating",
        "user": user,
        "uid": None,
        "group": None,
        "host": host,
        "address": "127.0.0.1",
        "pid": pid,
    }


def release(
    at: float,
    handle: str,
    *,
    held: float | None = None,
    user: str = "jo",
    host: str = "box",
    product: str = "Widget",
    units: int = 1,
    event: str = "release",
    reason: str | None = None,
) -> dict[str, Any]:
    """A ``release`` (or, with ``event="revoked"``, a ``revoked``) record."""
    record: dict[str, Any] = {
        "ts": _stamp(T0 + at),
        "at": T0 + at,
        "event": event,
        "publisher": PUBLISHER,
        "product": product,
        "version": "1.0",
        "handle": handle,
        "indices": list(range(1, units + 1)),
    }
    if event == "revoked":
        record["reason"] = reason
    record.update(
        {
            "user": user,
            "uid": None,
            "host": host,
            "address": "127.0.0.1",
            "pid": 1,
            "held_seconds": held,
        }
    )
    return record


def denial(
    at: float,
    *,
    user: str = "amy",
    host: str = "pc",
    product: str = "Widget",
    status: str = "NOLICENCES",
) -> dict[str, Any]:
    """A ``denial`` record."""
    return {
        "ts": _stamp(T0 + at),
        "at": T0 + at,
        "event": "denial",
        "publisher": PUBLISHER,
        "product": product,
        "version": "1.0",
        "status": status,
        "code": "0xc8041003",
        "reason": "all licences in use",
        "user": user,
        "uid": None,
        "host": host,
        "address": "127.0.0.1",
        "pid": 9,
    }


def denials(at: float, *, count: int, product: str | None = "Widget") -> dict[str, Any]:
    """A ``denials`` summary record counting ``count`` NOLICENCES denials."""
    return {
        "ts": _stamp(T0 + at),
        "at": T0 + at,
        "event": "denials",
        "address": "10.0.0.7",
        "sources": 1,
        "count": count,
        "interval": 60.0,
        "since": T0 + at - 30,
        "denials": [
            {
                "publisher": PUBLISHER if product else None,
                "product": product,
                "version": "1.0" if product else None,
                "status": "NOLICENCES",
                "code": "0xc8041003",
                "count": count,
            }
        ],
    }


def lines(*records: dict[str, Any]) -> str:
    """The records as the text of a ``usage.jsonl`` file."""
    return "".join(json.dumps(record) + "\n" for record in records)
