"""The one record of a client process, and its flat form in ``Granted``."""

from __future__ import annotations

import dataclasses

from hqnlsd.licensing.events import Granted, event_from_dict
from hqnlsd.licensing.requester import Requester

WHO = Requester(
    user="alice",
    host="alpha",
    address="10.0.0.1",
    pid=42,
    uid=1000,
    group="staff",
    hostid=0x1234,
    client="job-1",
)


def granted(who: Requester) -> Granted:
    """A grant to ``who``."""
    return Granted.to(
        who,
        publisher="P",
        product="Q",
        handle="h1",
        indices=(1, 2),
        locked=False,
        on_locked_node=False,
        access=8,
        at=1000.0,
    )


def test_granted_stores_the_requester_flat_and_gives_it_back() -> None:
    """``Granted.to`` spreads the record into the event's own fields; ``requester``
    reads it back; the dict form has the same flat keys, in the same order, as before."""
    event = granted(WHO)
    assert event.requester == WHO
    assert (event.user, event.host, event.address, event.pid) == ("alice", "alpha", "10.0.0.1", 42)
    assert list(event.to_dict()) == [
        "type",
        "publisher",
        "product",
        "handle",
        "indices",
        "locked",
        "on_locked_node",
        "user",
        "host",
        "address",
        "pid",
        "uid",
        "group",
        "hostid",
        "client",
        "access",
        "at",
    ]
    again = event_from_dict(event.to_dict())
    assert isinstance(again, Granted) and again.requester == WHO


def test_same_process_ignores_only_the_client_token() -> None:
    """A repeated REQUEST may come with any token; every other field must match."""
    assert WHO.same_process(dataclasses.replace(WHO, client="other"))
    for change in (
        {"user": "bob"},
        {"host": "beta"},
        {"address": "10.0.0.2"},
        {"pid": 43},
        {"uid": None},
        {"group": None},
        {"hostid": 0},
    ):
        assert not WHO.same_process(dataclasses.replace(WHO, **change)), change
