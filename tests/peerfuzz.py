"""A seeded generator of bad peer messages, and a client that speaks as a domain member.

`fuzz_message` draws a domain message's wire form (a JSON value) that is
well-formed but wrong, or malformed: every message type, boundary values,
wrong types, huge numbers, nulls, unknown ranks, views that are not a subset of
the domain, bad states and log entries, nested garbage; now and then a valid
but stale message, so the receiver also sees ones it must accept. `fuzz_line`
wraps one in a peer line, or draws a line that is itself wrong (not JSON,
NaN, numbers beyond a double, deep nesting, unknown line types, bad pings,
calls and replies).

`PeerClient` is a blocking TLS connection to a daemon's peer port that
presents a member certificate of the test domain CA (`tests.daemons.domain_daemons`),
binds its source to that member's loopback address (the listener checks it),
and sends the hello of that member, so that the daemon takes its lines as
that member's (`hqnlsd.domain.peers`). Every read has a timeout.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Values that are wrong for almost any field.
BAD_VALUES: tuple[object, ...] = (
    None,
    True,
    False,
    "",
    "x",
    "1",
    -1,
    -(2**63),
    2**53,
    2**63,
    10**20,
    10**300,
    0.5,
    -0.0,
    1e308,
    [],
    {},
    [None],
    {"a": [1, {"b": None}]},
    [[[[[]]]]],
)

DOMAIN = (1, 2, 3)


def _bad(rng: random.Random, *more: object) -> object:
    """One of `BAD_VALUES` (or ``more``), a fresh copy: mutations never share or
    alter the originals."""
    return copy.deepcopy(rng.choice((*BAD_VALUES, *more)))


def _ballot(rng: random.Random) -> list[object]:
    return [rng.randrange(0, 50), rng.choice(DOMAIN)]


def _view(rng: random.Random, epoch: int) -> dict[str, object]:
    return {
        "epoch": epoch,
        "members": sorted(rng.sample(DOMAIN, rng.randrange(1, 4))),
        "origin": _ballot(rng),
    }


def _snapshot() -> dict[str, object]:
    """An engine snapshot of no product: valid, and restorable."""
    return {"format": 1, "latest": 0.0, "products": [], "tombstones": []}


def _permit() -> dict[str, object]:
    return {
        "publisher": "P",
        "product": "Q",
        "version": "1",
        "policy": 1,
        "node_count": 0,
        "floating_count": 2,
        "start": "2020-01-01",
        "expiry": "2099-12-31",
        "update_minutes": 5,
        "data": [],
        "locked_nodes": [],
    }


def _holder(handle: str, index: int) -> dict[str, object]:
    return {
        "handle": handle,
        "indices": [index],
        "locked": False,
        "on_locked_node": False,
        "user": "u",
        "host": "h",
        "address": "10.0.0.1",
        "pid": 1,
        "uid": None,
        "group": None,
        "hostid": None,
        "client": None,
        "access": 8,
        "granted_at": 1.0,
        "last_update": 1.0,
    }


def bad_state(rng: random.Random) -> object:
    """A state snapshot that the engine cannot restore (or not a snapshot at all)."""
    product = {"permit": _permit(), "settings": {}, "holders": [_holder("h1", 1)]}
    choices: list[Callable[[], object]] = [
        lambda: None,
        lambda: _bad(rng),
        lambda: {"format": 2, "latest": 0, "products": [], "tombstones": []},
        lambda: {"format": 1, "latest": "now", "products": [], "tombstones": []},
        lambda: {"format": 1, "latest": 0, "products": "x", "tombstones": []},
        lambda: {"format": 1, "latest": 0, "products": [{"permit": {}}], "tombstones": []},
        # the same handle twice, an index outside the pool, a count beyond a permit's
        lambda: {
            "format": 1,
            "latest": 0,
            "products": [{**product, "holders": [_holder("h1", 1), _holder("h1", 2)]}],
            "tombstones": [],
        },
        lambda: {
            "format": 1,
            "latest": 0,
            "products": [{**product, "holders": [_holder("h1", 99)]}],
            "tombstones": [],
        },
        lambda: {
            "format": 1,
            "latest": 0,
            "products": [{**product, "permit": {**_permit(), "floating_count": 10**9}}],
            "tombstones": [],
        },
        lambda: {
            "format": 1,
            "latest": 0,
            "products": [],
            "tombstones": [["h", "P", "Q", "crashout", "yesterday"]],
        },
        lambda: {**_snapshot(), "extra": _bad(rng)},
    ]
    return rng.choice(choices)()


def bad_batch(rng: random.Random) -> list[object]:
    """A log batch with an entry no engine applies."""
    granted = {
        "type": "Granted",
        "publisher": "P",
        "product": "Q",
        "handle": "h",
        "indices": [1],
        "locked": False,
        "on_locked_node": False,
        "user": "u",
        "host": "h",
        "address": "10.0.0.1",
        "pid": 1,
        "uid": None,
        "group": None,
        "hostid": None,
        "client": None,
        "access": 8,
        "at": 1.0,
    }
    field = rng.choice(sorted(granted))
    choices: list[Callable[[], object]] = [
        lambda: _bad(rng),
        lambda: {"type": "NoSuchEvent"},
        lambda: {**granted, field: _bad(rng)},
        lambda: {k: v for k, v in granted.items() if k != field},
        lambda: {**granted, "address": "not-an-address"},
        lambda: {**granted, "indices": [0]},
        lambda: {"type": "Released", "handle": "h", "at": float("1e300") * 10**8},
    ]
    return [rng.choice(choices)()]


def _template(rng: random.Random, kind: str, epoch: int) -> dict[str, Any]:
    """A well-formed message of ``kind`` about ``epoch``."""
    value = {"view": _view(rng, epoch), "state": _snapshot()}
    templates: dict[str, dict[str, Any]] = {
        "prepare": {"epoch": epoch, "ballot": _ballot(rng), "have": 0},
        "promise": {
            "epoch": epoch,
            "ballot": _ballot(rng),
            "accepted_ballot": None,
            "accepted_value": None,
            "entries": [],
            "start": 0,
        },
        "refuse": {
            "epoch": epoch,
            "ballot": _ballot(rng),
            "reason": rng.choice(["ballot", "lease", "quarantine", "behind"]),
            "promised": None,
            "wait": 0.5,
            "known_epoch": max(0, epoch - 1),
        },
        "accept": {"epoch": epoch, "ballot": _ballot(rng), "value": value},
        "accepted": {"epoch": epoch, "ballot": _ballot(rng)},
        "decided": {"value": value},
        "append": {"epoch": epoch, "sent_at": 1.0, "start": 0, "batches": [], "commit": 0},
        "ack": {"epoch": epoch, "sent_at": 1.0, "match": 0, "granted": True},
    }
    return {"type": kind, **templates[kind]}


KINDS = ("prepare", "promise", "refuse", "accept", "accepted", "decided", "append", "ack")


def _paths(data: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path to a value inside ``data`` (dict keys, list indices)."""
    found: list[tuple[object, ...]] = []
    items: list[tuple[object, object]] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    for key, value in items:
        path = (*prefix, key)
        found.append(path)
        found.extend(_paths(value, path))
    return found


def _set(data: Any, path: tuple[object, ...], value: object) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _delete(data: Any, path: tuple[object, ...]) -> None:
    for key in path[:-1]:
        data = data[key]
    if isinstance(data, dict):
        del data[path[-1]]


def fuzz_message(rng: random.Random, epoch: int = 1) -> object:
    """The wire form of `fuzz_case`'s message."""
    return fuzz_case(rng, epoch)[0]


def fuzz_case(rng: random.Random, epoch: int = 1) -> tuple[object, bool]:
    """A domain message's wire form, and whether it is a valid one (see below).

    The wire form is for a member at ``epoch`` of the 3-member domain
    {1, 2, 3}: about 1 in 20 is a valid but stale one (epoch 0, which the receiver
    answers or ignores); every other one is invalid whatever the receiver's state.

    Random mutations (any field to a wrong value, a field deleted, a bad state or
    log entry) come first; then one *definite* invalidity of the kind (an epoch or
    round beyond 2**53, a rank outside the domain, a malformed view, a negative
    count, a wait beyond the bound...), so that no fuzzed message can be a valid
    one that an honest member might have sent (which would be obeyed: a domain
    trusts its authenticated members' valid messages).
    """
    kind = rng.choice(KINDS)
    if rng.random() < 0.05:
        stale = rng.choice(("prepare", "accepted", "promise"))
        return _template(rng, stale, 0), True
    message = _template(rng, kind, rng.choice([epoch + 1, epoch + 1, max(epoch, 1)]))
    mutations: list[Callable[[], None]] = [
        lambda: _set(message, rng.choice(_paths(message)), _bad(rng)),
        lambda: _delete(message, rng.choice(_paths(message))),
        lambda: _set_state(message, rng),
        lambda: (
            message.update(batches=[bad_batch(rng)])
            if kind == "append"
            else message.update(entries=[bad_batch(rng)])
            if kind == "promise"
            else None
        ),
    ]
    for _ in range(rng.choice((0, 1, 1, 2))):
        rng.choice(mutations)()
    definite: list[Callable[[], None]] = [
        lambda: message.update(type=_bad(rng, "nonsense", "Decided")),
    ]
    if kind != "decided":
        definite.append(lambda: message.update(epoch=rng.choice((*HUGE, -1, None, "1", 1.5))))
    if kind in ("prepare", "promise", "refuse", "accept", "accepted"):
        definite.append(
            lambda: message.update(
                ballot=rng.choice(
                    ([1, rng.choice((0, 4, 9, 21))], [2**53, 1], [1], None, [1.0, 1], "1,1")
                )
            )
        )
    if kind in ("accept", "decided"):
        definite += [
            lambda: _set_view(message, rng, "members", rng.choice(BAD_MEMBERS)),
            lambda: _set_view(message, rng, "epoch", rng.choice((*HUGE, -1, None, 0))),
            lambda: _set_view(message, rng, "origin", [rng.randrange(0, 9), rng.choice((0, 7))]),
        ]
    if kind == "append":
        definite += [
            lambda: message.update(start=-1),
            lambda: message.update(commit=2**60),
            lambda: message.update(sent_at=rng.choice(("x", None, 2.0**60))),
            lambda: message.update(batches=[[_bad(rng)]]),
        ]
    if kind == "ack":
        definite += [
            lambda: message.update(match=rng.choice((-1, 2**53, None))),
            lambda: message.update(granted=rng.choice((None, 1, "yes"))),
        ]
    if kind == "refuse":
        definite += [
            lambda: message.update(wait=rng.choice((1e12, -1.0, 61.0, None))),
            lambda: message.update(reason=rng.choice(("bored", None, 1))),
        ]
    if kind == "promise":
        definite.append(lambda: message.update(start=-1))
    if kind == "prepare":
        definite.append(lambda: message.update(have=rng.choice((-5, 2**53, "x"))))
    rng.choice(definite)()
    if rng.random() < 0.02:
        return _bad(rng), False
    return message, False


#: Members of a view that are not a non-empty subset of the domain {1, 2, 3}.
BAD_MEMBERS: tuple[object, ...] = ([], [1, 2, 7], [0], [21], [1, 1], ["1"], [4], [1] * 30, None)
#: Epochs and rounds beyond what a member may plausibly see.
HUGE: tuple[int, ...] = (2**53, 2**53 + 1, 10**20, 2**40, 2**63)


def _value_holder(message: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("value", "accepted_value"):
        value = message.get(key)
        if isinstance(value, dict):
            return value
    if message.get("type") == "promise":
        message["accepted_ballot"] = [1, 2]
        holder: dict[str, Any] = {"view": {"epoch": message.get("epoch")}, "state": None}
        message["accepted_value"] = holder
        return holder
    return None


def _set_view(message: dict[str, Any], rng: random.Random, key: str, value: object) -> None:
    holder = _value_holder(message)
    if holder is not None and isinstance(holder.get("view"), dict):
        holder["view"][key] = value


def _set_state(message: dict[str, Any], rng: random.Random) -> None:
    holder = _value_holder(message)
    if holder is not None:
        holder["state"] = bad_state(rng)


def fuzz_line(rng: random.Random, domain_id: str, epoch: int = 1) -> bytes:
    """One peer line (ending in a newline), almost always invalid."""
    roll = rng.random()
    if roll < 0.8:
        return _json_line({"t": "m", "d": domain_id, "m": fuzz_message(rng, epoch)})
    raw: list[Callable[[], bytes]] = [
        lambda: b"this is not json",
        lambda: b'{"t": "m", "d": "' + domain_id.encode() + b'", "m": NaN}',
        lambda: b'{"t": "ping", "n": Infinity}',
        lambda: (
            b'{"t": "m", "d": "'
            + domain_id.encode()
            + b'", "m": {"type": "ack", "epoch": 1, "sent_at": 1e400, "match": 0, "granted": true}}'
        ),
        lambda: b"[" * rng.choice((50, 5000, 100_000)) + b"]" * 3,
        lambda: b'{"t": "m", "d": "' + domain_id.encode() + b'", "m": ' + b"[" * 3000 + b"]",
        lambda: _json_line({"t": _bad(rng, "nonsense")}),
        lambda: _json_line({"t": "ping", "n": rng.choice(([1], {"a": 1}, "x", None))}),
        lambda: _json_line({"t": "pong", "n": rng.choice(([1], {"a": 1}, "x"))}),
        lambda: _json_line({"t": "m", "d": _bad(rng), "m": {}}),
        lambda: _json_line({"t": "m", "d": domain_id, "m": _bad(rng)}),
        lambda: _json_line({"t": "reply", "id": _bad(rng), "ok": True}),
        lambda: _json_line({"t": "call", "id": _bad(rng), "d": domain_id}),
        lambda: b"\xff\xfe\x00garbage",
        lambda: b"1e400",
        lambda: b'"a string"',
        lambda: str(10**4000).encode(),
    ]
    line = rng.choice(raw)()
    return line if line.endswith(b"\n") else line + b"\n"


def _json_line(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


class PeerLinkClosed(Exception):
    """The daemon closed the link (or it broke)."""


class PeerClient:
    """A TLS link to a daemon's peer listener, as domain member ``rank`` (see module doc)."""

    def __init__(
        self,
        target: str,
        port: int,
        *,
        source: str,
        tls_dir: Path,
        member: int,
        domain_id: str,
        rank: int,
        timeout: float = 20.0,
    ) -> None:
        """Connect from ``source`` with ``tls_dir/member-N`` credentials; exchange hellos."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # the daemon's certificate names an IP address
        context.load_verify_locations(str(tls_dir / "ca.pem"))
        context.load_cert_chain(
            str(tls_dir / f"member-{member}.crt"), str(tls_dir / f"member-{member}.key")
        )
        raw = socket.create_connection((target, port), timeout, source_address=(source, 0))
        # No Nagle: a ping after a few small lines must not wait for a delayed ACK.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=target)
        except BaseException:
            raw.close()
            raise
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self._buffer = b""
        self._ping = 0
        self.closed = False
        self.send_raw(
            _json_line({"t": "hello", "v": 1, "addr": source, "domains": {domain_id: rank}})
        )
        # Bounded as a whole, not only per read: the daemon's own pings keep coming.
        deadline = time.monotonic() + timeout
        while json.loads(self._read_line(deadline)).get("t") != "hello":
            pass

    def send_raw(self, line: bytes) -> None:
        """Send one line (it must end with a newline)."""
        try:
            self.sock.sendall(line)
        except OSError as error:
            self.closed = True
            raise PeerLinkClosed(str(error)) from None

    def send_message(self, domain_id: str, message: object) -> None:
        """Send a domain message's wire form."""
        self.send_raw(_json_line({"t": "m", "d": domain_id, "m": message}))

    def sync(self) -> None:
        """Ping and wait for the pong: every line sent before has been handled.

        @raise PeerLinkClosed: if the daemon closed the link.
        """
        self._ping += 1
        self.send_raw(_json_line({"t": "ping", "n": self._ping}))
        deadline = time.monotonic() + self.timeout
        while True:
            payload = json.loads(self._read_line(deadline))
            if payload.get("t") == "pong" and payload.get("n") == self._ping:
                return

    def _read_line(self, deadline: float) -> bytes:
        """The next line; PeerLinkClosed if the link breaks or is silent past ``deadline``
        (as a read timeout is; other lines, such as the daemon's pings, do not make
        the wait longer)."""
        while b"\n" not in self._buffer:
            if time.monotonic() > deadline:
                self.closed = True
                raise PeerLinkClosed(f"the awaited line did not come within {self.timeout} s")
            try:
                data = self.sock.recv(65536)
            except (OSError, ssl.SSLError) as error:
                self.closed = True
                raise PeerLinkClosed(str(error)) from None
            if not data:
                self.closed = True
                raise PeerLinkClosed("the daemon closed the link")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def close(self) -> None:
        """Drop the connection."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclasses.dataclass
class FuzzStats:
    """What a fuzz run against a live daemon did."""

    sent: int = 0
    #: links the daemon closed under us (it counts its own closes too)
    closed: int = 0
    connects: int = 0


def fuzz_daemon(
    connect: Callable[[], PeerClient],
    domain_id: str,
    count: int,
    seed: int,
    *,
    sync_every: int = 5,
    epoch: Callable[[], int] = lambda: 1,
    progress: Callable[[FuzzStats], None] | None = None,
) -> FuzzStats:
    """Send ``count`` fuzz lines through links made by ``connect``; reconnect whenever
    the daemon closes one. Every ``sync_every`` lines a ping waits until the daemon
    has handled them (a bounded wait: the client's timeout)."""
    rng = random.Random(seed)
    stats = FuzzStats()
    client: PeerClient | None = None
    current = epoch()
    try:
        while stats.sent < count:
            if client is None:
                client = _connect_retrying(connect)
                stats.connects += 1
            try:
                lines = [
                    fuzz_line(rng, domain_id, current)
                    for _ in range(min(sync_every, count - stats.sent))
                ]
                stats.sent += len(lines)
                client.send_raw(b"".join(lines))
                client.sync()
            except PeerLinkClosed:
                stats.closed += 1
                client.close()
                client = None
            if progress is not None and stats.sent % 10_000 < sync_every:
                progress(stats)
    finally:
        if client is not None:
            client.close()
    return stats


def _connect_retrying(connect: Callable[[], PeerClient], attempts: int = 50) -> PeerClient:
    """``connect()``, retried (bounded) while the daemon refuses or resets."""
    for attempt in range(attempts):
        try:
            return connect()
        except (OSError, PeerLinkClosed, ValueError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")
