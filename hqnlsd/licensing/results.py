"""What goes into the engine (a licence request) and what comes out of it.

Every mutating engine call returns an ``Outcome``: the result (a success value
or a ``Denied``) and the events the call produced, already applied to the
engine. The caller persists / replicates the events before it answers.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from typing import Generic, Literal, TypeVar

from hqnlsd.licensing.events import Event
from hqnlsd.licensing.requester import Requester
from hqnlsd.status import Status

R = TypeVar("R", covariant=True)

#: The kind of a licence, as the protocol shows it.
LicenceType = Literal["floating", "locked"]
#: What QUERY can ask about a licence.
QUERY_KINDS: tuple[str, ...] = ("data", "period", "context", "policy", "dates")


@dataclasses.dataclass(frozen=True, slots=True)
class LicenceRequest:
    """A REQUEST as the engine sees it (already parsed and typed by the protocol).

    ``address`` is the IPv4 address of the connection (never what the client
    claims); ``hostid`` is the client's unique id, used to match locked nodes
    listed with a non-zero id; ``client`` is the idempotency token.
    """

    publisher: str
    product: str
    version: str
    user: str
    host: str
    pid: int
    address: ipaddress.IPv4Address | str
    uid: int | None = None
    group: str | None = None
    units: int = 1
    client: str | None = None
    hostid: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Denied:
    """The request is refused: a status (name + numeric code) and a clear message."""

    status: Status
    message: str

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Grant:
    """A licence given (or, with ``duplicate``, given before to the same client token)."""

    handle: str
    publisher: str
    product: str
    version: str
    indices: tuple[int, ...]
    period: int  # seconds between UPDATEs
    type: LicenceType
    access: int
    data: tuple[int, ...]
    start: datetime.date
    expiry: datetime.date
    duplicate: bool = False

    def __init__(
        self,
        handle: str,
        publisher: str,
        product: str,
        version: str,
        indices: tuple[int, ...],
        period: int,
        type: LicenceType,
        access: int,
        data: tuple[int, ...],
        start: datetime.date,
        expiry: datetime.date,
        duplicate: bool = False,
    ) -> None:
        # Through the slots' own setters, as `hqnlsd.licensing.events.Granted`: the
        # frozen dataclass's __init__ costs twice as much (one per REQUEST granted).
        _GRANT_SETTERS[0](self, handle)
        _GRANT_SETTERS[1](self, publisher)
        _GRANT_SETTERS[2](self, product)
        _GRANT_SETTERS[3](self, version)
        _GRANT_SETTERS[4](self, indices)
        _GRANT_SETTERS[5](self, period)
        _GRANT_SETTERS[6](self, type)
        _GRANT_SETTERS[7](self, access)
        _GRANT_SETTERS[8](self, data)
        _GRANT_SETTERS[9](self, start)
        _GRANT_SETTERS[10](self, expiry)
        _GRANT_SETTERS[11](self, duplicate)


_GRANT_SETTERS = tuple(Grant.__dict__[field.name].__set__ for field in dataclasses.fields(Grant))


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class UpdateAck:
    """An UPDATE was accepted: keep updating every ``period`` seconds."""

    handle: str
    period: int

    def __init__(self, handle: str, period: int) -> None:
        _SET_UPDATE_HANDLE(self, handle)  # the slots' setters (one per UPDATE)
        _SET_UPDATE_PERIOD(self, period)


_SET_UPDATE_HANDLE = UpdateAck.__dict__["handle"].__set__
_SET_UPDATE_PERIOD = UpdateAck.__dict__["period"].__set__


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class ReleaseAck:
    """A RELEASE was accepted: the licence is free again."""

    handle: str

    def __init__(self, handle: str) -> None:
        _SET_RELEASE_HANDLE(self, handle)  # the slot's setter (one per RELEASE)


_SET_RELEASE_HANDLE = ReleaseAck.__dict__["handle"].__set__


@dataclasses.dataclass(frozen=True, slots=True)
class QueryAnswer:
    """The answer to ``QUERY handle what``: named values (ints, strings, dates, tuples)."""

    what: str
    values: dict[str, object]


@dataclasses.dataclass(frozen=True, slots=True)
class AdminDone:
    """An administrative change was made; ``revoked`` licences were taken back."""

    message: str
    revoked: int = 0


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Outcome(Generic[R]):
    """A decision: its result and the events it produced (already applied)."""

    result: R
    events: tuple[Event, ...] = ()

    def __init__(self, result: R, events: tuple[Event, ...] = ()) -> None:
        _SET_RESULT(self, result)  # the slots' setters (one per command)
        _SET_EVENTS(self, events)


_SET_RESULT = Outcome.__dict__["result"].__set__
_SET_EVENTS = Outcome.__dict__["events"].__set__


@dataclasses.dataclass(frozen=True, slots=True)
class HolderInfo:
    """One held licence, for listings (``handle`` is None in application USERS lists).

    ``who`` is the whole record; each listing picks the fields it shows (USERS
    shows no group, host id or client token).
    """

    handle: str | None
    indices: tuple[int, ...]
    type: LicenceType
    who: Requester
    granted: float
    last_update: float


@dataclasses.dataclass(frozen=True, slots=True)
class ProductStatus:
    """A served product with its settings and usage, for ``hqn_lsa`` listings."""

    publisher: str
    product: str
    version: str
    policy: int  # full word in force: flags | publisher locks << 16
    node_count: int
    floating_count: int
    locked_used: int
    floating_used: int
    start: datetime.date
    expiry: datetime.date
    period: int
    crashout: float
    timeout: float
    locked_nodes: tuple[tuple[str, int], ...]
    excluded: tuple[str, ...]
    named_users: tuple[str, ...]
    user_access: tuple[tuple[str, int], ...]
    group_access: tuple[tuple[str, int], ...]
    #: Flags the administrator locked until the permit is re-read (``policy p MNEM!``).
    admin_locks: int = 0

    @property
    def total(self) -> int:
        """All licences of the product."""
        return self.node_count + self.floating_count

    @property
    def used(self) -> int:
        """All licences held."""
        return self.locked_used + self.floating_used
