"""The one record of a client process, and its flat form in ``Granted``."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hqnlsd.licensing.events import EventError, Granted, event_from_dict
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.validate import check_event_dict

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
    return Granted(
        publisher="P",
        product="Q",
        handle="h1",
        indices=(1, 2),
        locked=False,
        on_locked_node=False,
        who=who,
        access=8,
        at=1000.0,
    )


#: The dict form of ``granted(WHO)`` as journals, snapshots and domain logs have
#: always stored it: flat, the requester's fields side by side with the others.
STORED = {
    "type": "Granted",
    "publisher": "P",
    "product": "Q",
    "handle": "h1",
    "indices": [1, 2],
    "locked": False,
    "on_locked_node": False,
    "user": "alice",
    "host": "alpha",
    "address": "10.0.0.1",
    "pid": 42,
    "uid": 1000,
    "group": "staff",
    "hostid": 0x1234,
    "client": "job-1",
    "access": 8,
    "at": 1000.0,
}


def test_granted_stores_the_requester_flat_and_gives_it_back() -> None:
    """``Granted`` carries one `Requester`; its dict form is the flat form stored
    before it did, byte for byte (same keys, same order, same values)."""
    event = granted(WHO)
    assert event.who == WHO
    assert event.to_dict() == STORED
    assert json.dumps(event.to_dict()) == json.dumps(STORED)
    again = event_from_dict(STORED)
    assert again == event
    assert isinstance(again, Granted) and again.who == WHO
    check_event_dict(STORED)


def test_a_stored_grant_without_optional_fields_restores() -> None:
    """Unknown values were stored as nulls; they come back as None in the record."""
    stored = {**STORED, "uid": None, "group": None, "hostid": None, "client": None}
    again = event_from_dict(stored)
    assert isinstance(again, Granted)
    assert again.who == Requester(user="alice", host="alpha", address="10.0.0.1", pid=42)
    assert again.to_dict() == stored


def test_a_stored_grant_must_spell_out_every_requester_field() -> None:
    """A requester field missing, or a nested ``who``, is not a stored grant."""
    missing = {key: value for key, value in STORED.items() if key != "uid"}
    nested = {**STORED, "who": {"user": "alice"}}
    for bad in (missing, nested):
        with pytest.raises(EventError):
            event_from_dict(bad)
        with pytest.raises(EventError):
            check_event_dict(bad)


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
