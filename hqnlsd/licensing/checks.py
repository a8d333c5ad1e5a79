"""Checks of the values clients and administrators give the engine."""

from __future__ import annotations

import functools
import ipaddress

from hqnlsd.licensing.results import Denied, LicenceRequest
from hqnlsd.status import Status

#: Most licences one request may ask for.
MAX_UNITS = 65535
#: Longest text field (user, host, group, client token...) the engine accepts.
MAX_TEXT = 256
_TEXT_FIELDS = ("publisher", "product", "version", "user", "host")
_OPTIONAL_TEXT_FIELDS = ("group", "client")


def good_text(text: object) -> bool:
    """Whether ``text`` is 1 to MAX_TEXT printable characters."""
    return isinstance(text, str) and 0 < len(text) <= MAX_TEXT and text.isprintable()


def _whole(value: object, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) in low..high."""
    return type(value) is int and low <= value and (high is None or value <= high)


def _bad_text(request: LicenceRequest) -> str | None:
    # Only for a request `valid_address`'s fast path did not pass: the rare path.
    for name in _TEXT_FIELDS:
        if not good_text(getattr(request, name)):
            return f"{name} must be 1 to {MAX_TEXT} printable characters"
    for name in _OPTIONAL_TEXT_FIELDS:
        text = getattr(request, name)
        if text is not None and not good_text(text):
            return f"{name} must be 1 to {MAX_TEXT} printable characters"
    return None


def _bad_number(request: LicenceRequest) -> str | None:
    if not _whole(request.units, 1, MAX_UNITS):
        return f"units must be a whole number from 1 to {MAX_UNITS}, not {request.units!r}"
    if not _whole(request.pid, 0):
        return f"pid must be a whole number >= 0, not {request.pid!r}"
    if request.uid is not None and not _whole(request.uid, 0):
        return f"uid must be a whole number >= 0, not {request.uid!r}"
    if request.hostid is not None and not _whole(request.hostid, 0, 0xFFFFFFFF):
        return f"hostid must be a 32-bit unique id, not {request.hostid!r}"
    return None


#: Distinct peer addresses whose normal form is remembered (a site's client hosts).
ADDRESS_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE, typed=True)
def normal_address(address: ipaddress.IPv4Address | str) -> str:
    """The dotted-quad text of an IPv4 address; ValueError if it is not one.

    Remembered: every request from a host gives the same string object (one copy
    for all its held licences) without parsing the address again.
    """
    return str(ipaddress.IPv4Address(address))


def valid_address(request: LicenceRequest) -> str | None:
    """The peer address of a request in normal form (`normal_address`) if every value
    of the request is plainly good, else None: then `invalid_request` says what is
    wrong, if anything (a str subclass, say, is not plainly good but passes).

    `invalid_request`'s checks written out in one expression: this runs for every
    REQUEST, and the fields are nearly always good.
    """
    publisher = request.publisher
    product = request.product
    version = request.version
    user = request.user
    host = request.host
    group = request.group
    client = request.client
    units = request.units
    pid = request.pid
    uid = request.uid
    hostid = request.hostid
    if not (
        type(publisher) is str
        and 0 < len(publisher) <= MAX_TEXT
        and publisher.isprintable()
        and type(product) is str
        and 0 < len(product) <= MAX_TEXT
        and product.isprintable()
        and type(version) is str
        and 0 < len(version) <= MAX_TEXT
        and version.isprintable()
        and type(user) is str
        and 0 < len(user) <= MAX_TEXT
        and user.isprintable()
        and type(host) is str
        and 0 < len(host) <= MAX_TEXT
        and host.isprintable()
        and (
            group is None
            or (type(group) is str and 0 < len(group) <= MAX_TEXT and group.isprintable())
        )
        and (
            client is None
            or (type(client) is str and 0 < len(client) <= MAX_TEXT and client.isprintable())
        )
        and type(units) is int
        and 1 <= units <= MAX_UNITS
        and type(pid) is int
        and pid >= 0
        and (uid is None or (type(uid) is int and uid >= 0))
        and (hostid is None or (type(hostid) is int and 0 <= hostid <= 0xFFFFFFFF))
    ):
        return None
    try:
        return normal_address(request.address)
    except (ValueError, TypeError):
        return None


def invalid_request(request: LicenceRequest) -> str | None:
    """What is wrong with a request's values, or None."""
    problem = _bad_text(request) or _bad_number(request)
    if problem is not None:
        return problem
    try:
        normal_address(request.address)
    except (ValueError, TypeError):
        return f"peer address {request.address!r} is not an IPv4 address"
    return None


def locked_node(address: str, unique_id: int) -> tuple[str, int] | Denied:
    """A locked-node listing (normalised address, unique id), or ILLEGAL."""
    try:
        text = str(ipaddress.IPv4Address(address))
    except ValueError:
        return Denied(Status.ILLEGAL, f"{address!r} is not an IPv4 address")
    if not _whole(unique_id, 0, 0xFFFFFFFF):
        return Denied(Status.ILLEGAL, f"unique id {unique_id!r} is not a 32-bit value")
    return text, unique_id
