"""Licensing events: the only way the engine's state changes.

Every mutating engine call decides, then produces a list of these events and
applies them (``Engine.apply``). A backup server replays the same events, the
journal persists them, so each event carries every value the decision made
(handles, indices, times): applying an event never consults a clock, a random
source or a policy.

Events are small frozen dataclasses; ``to_dict`` gives a JSON-safe dict with a
``"type"`` key and ``event_from_dict`` turns it back into the same event. A
`Requester` field is stored flat, its fields side by side with the event's
others (``Granted`` has always been stored so: journals and domain logs written
before it carried one record restore unchanged).

`Released` and `Revoked` also have a field that is not in the dict form:
``dropped``, the `Dropped` holding they ended, set when the event is applied
(``hqnlsd.licensing.appliers``). It is for whoever hears of the event in this
process (the licence feed names the holder in its line and record) and is gone
once the event is stored or sent: the journal, snapshots and domain logs keep
exactly what they kept before, and an event read back from them says None.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import ipaddress
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from hqnlsd.licensing.requester import Requester, requester_dict, requester_from
from hqnlsd.permits.model import HostId, ProductPermit

#: JSON-safe value (what ``json.dumps`` accepts without help).
JSON = Any


class Reason(enum.StrEnum):
    """Why a licence was taken from its holder (its handle becomes a tombstone)."""

    CRASHOUT = "crashout"  # GRAB: not updated within the crashout time
    TIMEOUT = "timeout"  # TIML / LKNL: held longer than the timeout, someone waiting
    LOCKED_PRIORITY = "locked-priority"  # LKPR: a locked node needed it
    NAMED_USER = "named-user"  # USRL: a named user needed it
    KILLED = "killed"  # hqn_lsa kill
    NODES_CHANGED = "nodes-changed"  # hqn_lsa rmnode
    POOLS_CHANGED = "pools-changed"  # hqn_lsa ftol / ltof
    PERMIT_CHANGED = "permit-changed"  # the permit now says something incompatible
    PRODUCT_REMOVED = "product-removed"  # the permit is no longer served
    REINIT = "reinit"  # hqn_lsa reinit


class EventError(ValueError):
    """An event cannot be decoded or does not fit the state it is applied to."""


class Event:
    """Base of all licensing events (see the module docstring)."""

    __slots__ = ()
    #: The ``"type"`` value of the dict form.
    type_name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, JSON]:
        """The JSON-safe form: ``{"type": ..., field: value, ...}`` (a `Requester` flat;
        an `IN_MEMORY` field left out)."""
        out: dict[str, JSON] = {"type": self.type_name}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if isinstance(value, Requester):
                out.update(requester_dict(value))
            else:
                out[name] = _to_json(value)
        return out

    @classmethod
    def dict_fields(cls) -> tuple[tuple[str, str], ...]:
        """The fields of the dict form (``"type"`` aside), in order, each with its
        annotation: a `Requester` field is spelled out as the requester's own."""
        out: list[tuple[str, str]] = []
        for field in _stored_fields(cls):
            if field.type == Requester.__name__:
                out.extend((item.name, str(item.type)) for item in dataclasses.fields(Requester))
            else:
                out.append((field.name, str(field.type)))
        return tuple(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, JSON]) -> Event:
        """The event whose ``to_dict()`` is ``data`` (of this class, if called on one)."""
        event = event_from_dict(data)
        if not isinstance(event, cls):
            raise EventError(f"{data.get('type')!r} is not a {cls.__name__} event")
        return event

    @classmethod
    def _from_fields(cls, fields: Mapping[str, JSON]) -> Event:
        """Build the event from the field values of its dict form."""
        values = {name: _from_json(value) for name, value in fields.items()}
        for field in _stored_fields(cls):
            if field.type == Requester.__name__:
                if field.name in values:  # only ever stored flat
                    raise TypeError(f"unexpected field {field.name!r}")
                values[field.name] = requester_from(values)
        return cls(**values)


#: Marks a dataclass field of an event that is not part of its dict form (see the
#: module doc): ``dataclasses.field(metadata=IN_MEMORY, ...)``.
IN_MEMORY: Mapping[str, bool] = {"in_memory": True}


def _stored_fields(cls: type[Event]) -> tuple[dataclasses.Field[Any], ...]:
    """The dataclass fields of ``cls`` that its dict form has, in order."""
    return tuple(
        field
        for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        if not field.metadata.get("in_memory")
    )


#: The stored field names of each event class, in order (`dataclasses.fields` is
#: slow for a call per event written).
_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(field.name for field in _stored_fields(cls))
        _FIELD_NAMES[cls] = names
    return names


_E = TypeVar("_E", bound=type[Event])
EVENT_TYPES: dict[str, type[Event]] = {}


def _register(cls: _E) -> _E:
    cls.type_name = cls.__name__
    EVENT_TYPES[cls.__name__] = cls
    return cls


def _to_json(value: Any) -> JSON:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, ProductPermit):
        return product_to_dict(value)
    return value


#: Types `_to_json` gives back as they are, tested first (the usual field values).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _from_json(value: JSON) -> Any:
    if isinstance(value, list):
        return tuple(_from_json(item) for item in value)
    return value


def event_from_dict(data: Mapping[str, JSON]) -> Event:
    """The event whose ``to_dict()`` is ``data``; EventError if it is not one."""
    fields = dict(data)
    type_name = fields.pop("type", None)
    cls = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise EventError(f"unknown event type {type_name!r}")
    try:
        return cls._from_fields(fields)
    except (TypeError, ValueError, KeyError) as error:
        raise EventError(f"bad {type_name} event {dict(data)!r}: {error}") from None


# -- the product permit in JSON form -------------------------------------------------


def product_to_dict(permit: ProductPermit) -> dict[str, JSON]:
    """A JSON-safe dict of a product permit (dates ISO, locked nodes as pairs)."""
    return {
        "publisher": permit.publisher,
        "product": permit.product,
        "version": permit.version,
        "policy": permit.policy,
        "node_count": permit.node_count,
        "floating_count": permit.floating_count,
        "start": permit.start.isoformat(),
        "expiry": permit.expiry.isoformat(),
        "update_minutes": permit.update_minutes,
        "data": list(permit.data),
        "locked_nodes": [[str(node.address), node.unique_id] for node in permit.locked_nodes],
    }


def product_from_dict(data: Mapping[str, JSON]) -> ProductPermit:
    """The product permit of ``product_to_dict``."""
    return ProductPermit(
        publisher=str(data["publisher"]),
        product=str(data["product"]),
        version=str(data["version"]),
        policy=int(data["policy"]),
        node_count=int(data["node_count"]),
        floating_count=int(data["floating_count"]),
        start=datetime.date.fromisoformat(data["start"]),
        expiry=datetime.date.fromisoformat(data["expiry"]),
        update_minutes=int(data["update_minutes"]),
        data=tuple(int(value) for value in data["data"]),
        locked_nodes=tuple(
            HostId(ipaddress.IPv4Address(address), int(unique_id))
            for address, unique_id in data["locked_nodes"]
        ),
    )


# -- licence events ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Dropped:
    """The holding a `Released` or `Revoked` event ended, as its holder had it.

    Never stored (see the module doc): the applier sets it on the event it applies,
    so that whoever hears of the event can name the holder it is gone from.
    """

    publisher: str
    product: str
    indices: tuple[int, ...]
    locked: bool  # from the node-locked pool (else floating)
    who: Requester
    granted_at: float

    def __init__(
        self,
        publisher: str,
        product: str,
        indices: tuple[int, ...],
        locked: bool,
        who: Requester,
        granted_at: float,
    ) -> None:
        # The slots' own setters (one per licence released): see `Granted`.
        _SET_DROPPED_PUBLISHER(self, publisher)
        _SET_DROPPED_PRODUCT(self, product)
        _SET_DROPPED_INDICES(self, indices)
        _SET_DROPPED_LOCKED(self, locked)
        _SET_DROPPED_WHO(self, who)
        _SET_DROPPED_GRANTED_AT(self, granted_at)


_SET_DROPPED_PUBLISHER = Dropped.__dict__["publisher"].__set__
_SET_DROPPED_PRODUCT = Dropped.__dict__["product"].__set__
_SET_DROPPED_INDICES = Dropped.__dict__["indices"].__set__
_SET_DROPPED_LOCKED = Dropped.__dict__["locked"].__set__
_SET_DROPPED_WHO = Dropped.__dict__["who"].__set__
_SET_DROPPED_GRANTED_AT = Dropped.__dict__["granted_at"].__set__


def set_dropped(event: Released | Revoked, dropped: Dropped) -> None:
    """Record on ``event`` the holding it ended (by the applier, as it applies it).

    The event is frozen for everything it stores; this field is filled in after
    the decision because only applying the event finds the holder.
    """
    if type(event) is Released:
        _SET_RELEASED_DROPPED(event, dropped)  # the slot's setter: one per RELEASE
    else:
        object.__setattr__(event, "dropped", dropped)


@_register
@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Granted(Event):
    """A licence (``indices``, all of one pool) was given to a process."""

    publisher: str
    product: str
    handle: str
    indices: tuple[int, ...]
    locked: bool  # from the node-locked pool (else floating)
    on_locked_node: bool  # the holder's host is one of the product's locked nodes
    who: Requester  # stored flat: its fields side by side with the others
    access: int
    at: float

    def __init__(
        self,
        publisher: str,
        product: str,
        handle: str,
        indices: tuple[int, ...],
        locked: bool,
        on_locked_node: bool,
        who: Requester,
        access: int,
        at: float,
    ) -> None:
        # Through the slots' own setters: the frozen dataclass's __init__ goes through
        # object.__setattr__ for each field, twice the cost (one per REQUEST granted).
        _GRANTED_SETTERS[0](self, publisher)
        _GRANTED_SETTERS[1](self, product)
        _GRANTED_SETTERS[2](self, handle)
        _GRANTED_SETTERS[3](self, indices)
        _GRANTED_SETTERS[4](self, locked)
        _GRANTED_SETTERS[5](self, on_locked_node)
        _GRANTED_SETTERS[6](self, who)
        _GRANTED_SETTERS[7](self, access)
        _GRANTED_SETTERS[8](self, at)


_GRANTED_SETTERS = tuple(
    Granted.__dict__[field.name].__set__ for field in dataclasses.fields(Granted)
)


@_register
@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Updated(Event):
    """The holder of ``handle`` confirmed it is alive (UPDATE, or a repeated REQUEST)."""

    handle: str
    at: float

    def __init__(self, handle: str, at: float) -> None:
        _SET_UPDATED_HANDLE(self, handle)  # the slots' setters (one per UPDATE)
        _SET_UPDATED_AT(self, at)


_SET_UPDATED_HANDLE = Updated.__dict__["handle"].__set__
_SET_UPDATED_AT = Updated.__dict__["at"].__set__


@_register
@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Released(Event):
    """The holder gave its licence back."""

    handle: str
    at: float
    #: In memory only: the holding ended, once applied (None if nothing was held). Not
    #: an argument, not compared, not shown: repr, equality and hash are as before.
    dropped: Dropped | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False, metadata=IN_MEMORY
    )

    def __init__(self, handle: str, at: float) -> None:
        _SET_RELEASED_HANDLE(self, handle)  # the slots' setters (one per RELEASE)
        _SET_RELEASED_AT(self, at)
        _SET_RELEASED_DROPPED(self, None)


_SET_RELEASED_HANDLE = Released.__dict__["handle"].__set__
_SET_RELEASED_AT = Released.__dict__["at"].__set__
_SET_RELEASED_DROPPED = Released.__dict__["dropped"].__set__


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class Revoked(Event):
    """The licence was taken from its holder; the handle becomes a tombstone."""

    handle: str
    reason: str  # a Reason value
    at: float
    #: In memory only: the holding ended, once applied (None if nothing was held). Not
    #: an argument, not compared, not shown: repr, equality and hash are as before.
    dropped: Dropped | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False, metadata=IN_MEMORY
    )


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class TombstonesPurged(Event):
    """Tombstones made before ``before`` are forgotten (their handles become unknown)."""

    before: float


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class HoldersRefreshed(Event):
    """Every holder counts as updated at ``at`` (after a restart or a take-over).

    Holders could not reach the server while it was down; without this they would
    all be crashed out at the first request.
    """

    at: float


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class ProductsLoaded(Event):
    """The served products are now exactly ``products`` (keyed by publisher, product).

    The decision revokes, before this event, every licence that does not fit the
    new permits; applying it keeps the holders of unchanged products.
    """

    products: tuple[ProductPermit, ...]

    @classmethod
    def _from_fields(cls, fields: Mapping[str, JSON]) -> Event:
        return cls(products=tuple(product_from_dict(item) for item in fields["products"]))


# -- administration events (hqn_lsa) -----------------------------------------------------


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class PolicyChanged(Event):
    """The policy flags (low 16 bits) of a product are now ``flags``."""

    publisher: str
    product: str
    flags: int


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class PolicyLocked(Event):
    """The administrator locked these policy flags (``policy p MNEM!``) until the
    product's permit is re-read: ``locks`` is every admin-locked flag now."""

    publisher: str
    product: str
    locks: int


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class CrashoutChanged(Event):
    """The product's crashout time, in seconds (None: the default, 3 update periods)."""

    publisher: str
    product: str
    seconds: float | None


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class TimeoutChanged(Event):
    """The product's TIML/LKNL timeout, in seconds (None: the default, 60 minutes)."""

    publisher: str
    product: str
    seconds: float | None


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class LockedNodeAdded(Event):
    """A host is listed once more among the product's locked nodes."""

    publisher: str
    product: str
    address: str
    unique_id: int


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class LockedNodeRemoved(Event):
    """One listing of a host is removed from the product's locked nodes."""

    publisher: str
    product: str
    address: str
    unique_id: int


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class PoolsResized(Event):
    """The product's pools are now ``node_count`` locked + ``floating_count`` floating."""

    publisher: str
    product: str
    node_count: int
    floating_count: int


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class HostExcluded(Event):
    """A host (name or address) may no longer take the product's licences."""

    publisher: str
    product: str
    host: str


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class HostUnexcluded(Event):
    """A host is no longer excluded from the product."""

    publisher: str
    product: str
    host: str


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class NamedUserAdded(Event):
    """A user is named for the product (USRL: guaranteed licences)."""

    publisher: str
    product: str
    user: str


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class NamedUserRemoved(Event):
    """A user is no longer named for the product."""

    publisher: str
    product: str
    user: str


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class UserAccessSet(Event):
    """A user's ACCL access level for the product (None: entry removed)."""

    publisher: str
    product: str
    user: str
    level: int | None


@_register
@dataclasses.dataclass(frozen=True, slots=True)
class GroupAccessSet(Event):
    """A group's ACCL access level for the product (None: entry removed)."""

    publisher: str
    product: str
    group: str
    level: int | None


#: Events that change a product's administrative settings, by type.
ADMIN_EVENTS: tuple[type[Event], ...] = (
    PolicyChanged,
    PolicyLocked,
    CrashoutChanged,
    TimeoutChanged,
    LockedNodeAdded,
    LockedNodeRemoved,
    PoolsResized,
    HostExcluded,
    HostUnexcluded,
    NamedUserAdded,
    NamedUserRemoved,
    UserAccessSet,
    GroupAccessSet,
)
