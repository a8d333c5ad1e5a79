"""Who asks for a licence, or holds one: the one record of a client process.

A REQUEST names its process (user, host, pid, uid, group, hostid, its client
token) and arrives from an address; the same facts follow the licence through
its ``Granted`` event, the holder in the pools, the usage report and the log.
They are spelled out once, here. Where they are stored (the journal, the
domain's log, snapshots) they stay flat, side by side with the other fields of
their record, as they always were: `requester_dict` and `requester_from` are
that edge.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Requester:
    """A client process as the server knows it.

    ``address`` is the IPv4 address of its connection (never what the client
    claims); ``hostid`` its unique id (matched against locked-node listings);
    ``client`` its idempotency token. Values a source does not know are None.
    """

    user: str
    host: str
    address: str
    pid: int
    uid: int | None = None
    group: str | None = None
    hostid: int | None = None
    client: str | None = None

    def __init__(
        self,
        user: str,
        host: str,
        address: str,
        pid: int,
        uid: int | None = None,
        group: str | None = None,
        hostid: int | None = None,
        client: str | None = None,
    ) -> None:
        # The frozen dataclass's own __init__ sets each field through
        # object.__setattr__; the slots' own setters cost half as much (one is
        # built for every request and every licence released).
        _SET_USER(self, user)
        _SET_HOST(self, host)
        _SET_ADDRESS(self, address)
        _SET_PID(self, pid)
        _SET_UID(self, uid)
        _SET_GROUP(self, group)
        _SET_HOSTID(self, hostid)
        _SET_CLIENT(self, client)

    def same_process(self, other: Requester) -> bool:
        """Whether ``other`` names the same process: everything but the client token.

        The address is compared, never a port: a client that reconnects repeats
        its REQUEST from a new one.
        """
        return (
            self.user == other.user
            and self.host == other.host
            and self.pid == other.pid
            and self.uid == other.uid
            and self.group == other.group
            and self.hostid == other.hostid
            and self.address == other.address
        )


_SET_USER = Requester.__dict__["user"].__set__
_SET_HOST = Requester.__dict__["host"].__set__
_SET_ADDRESS = Requester.__dict__["address"].__set__
_SET_PID = Requester.__dict__["pid"].__set__
_SET_UID = Requester.__dict__["uid"].__set__
_SET_GROUP = Requester.__dict__["group"].__set__
_SET_HOSTID = Requester.__dict__["hostid"].__set__
_SET_CLIENT = Requester.__dict__["client"].__set__


def shared(text: str) -> str:
    """``text``, as the one string object every equal name shares (`sys.intern`).

    Users, hosts, groups and addresses repeat across many held licences, and each
    parsed line or decoded record brings a fresh copy: held licences keep one. An
    interned string is freed with its last holder. A str subclass is kept as it is
    (it cannot be interned).
    """
    return sys.intern(text) if type(text) is str else text


def shared_or_none(text: str | None) -> str | None:
    """`shared`, for an optional name."""
    return None if text is None else shared(text)


#: The record's fields, in the order they are stored and listed.
REQUESTER_FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Requester))


def requester_dict(who: Requester) -> dict[str, Any]:
    """``who`` as flat stored fields (`REQUESTER_FIELDS`, in that order)."""
    return {
        "user": who.user,
        "host": who.host,
        "address": who.address,
        "pid": who.pid,
        "uid": who.uid,
        "group": who.group,
        "hostid": who.hostid,
        "client": who.client,
    }


def requester_from(fields: dict[str, Any]) -> Requester:
    """The requester whose `REQUESTER_FIELDS` are among ``fields``, removing them.

    Every one must be there (KeyError otherwise): a stored record always wrote them all.
    The repeated names (user, host, address, group) are `shared`.
    """
    values = {name: fields.pop(name) for name in REQUESTER_FIELDS}
    for name in _SHARED_FIELDS:
        value = values[name]
        if type(value) is str:
            values[name] = sys.intern(value)
    return Requester(**values)


#: The fields whose values repeat across holders (not the pid, nor the client token).
_SHARED_FIELDS = ("user", "host", "address", "group")
