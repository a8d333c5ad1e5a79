"""Permit text: the parser (forms and sealed permits) and the writer.

The format (SPEC 2.2), line by line, with ``#`` comment lines and blank lines
allowed anywhere::

    THE HQNLSD LICENSE SERVER VERSION 3.0
    NUMBER: n
    SERVERS: n            then n lines  ADDRESS UNIQUE-ID
    PERMITS: n
    LOCK: KEYID SIGNATURE (sealed permits only: seals the header)
    and per product:
      PUBLISHER           (own line, may contain spaces)
      PRODUCT             (own line, may contain spaces)
      VERSION             (own line, may contain spaces)
      POLICY NODE FLOAT START EXPIRY UPDATE
      DATA: n             then n signed integers, on as many lines as wanted
      LOCKED-NODES: n     then n lines  ADDRESS UNIQUE-ID
      LOCK: KEYID SIGNATURE (sealed permits only: seals this product)

`PermitParser` reads one section at a time, so that the reader can verify each
seal before it reads on (an error stops the file, but what was verified before
it stays valid). This module knows nothing about keys: a lock line is kept as
text and checked by `hqnlsd.permits.seal`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re

from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.model import FORMAT_LINE, MAX_SERVERS, HostId, Permit, ProductPermit
from hqnlsd.permits.policy import VALID_POLICY_BITS

#: Keywords that start a ``KEYWORD: value`` line; such a line is never taken
#: for a publisher, product or version name.
KEYWORDS = frozenset({"NUMBER", "SERVERS", "PERMITS", "DATA", "LOCKED-NODES", "LOCK"})
#: Largest node-locked or floating count (and total) of one product.
MAX_LICENCES = 65535
#: Update periods, in minutes, that a product may have.
MIN_UPDATE_MINUTES = 1
MAX_UPDATE_MINUTES = 65535
#: DATA values are the original's C ints: signed 32 bits.
DATA_MIN = -(2**31)
DATA_MAX = 2**31 - 1

_KEYWORD_LINE = re.compile(r"([A-Z][A-Z-]*)\s*:(.*)\Z", re.DOTALL)
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}\Z")
_UNIQUE_ID = re.compile(r"0[xX]([0-9a-fA-F]{1,8})\Z")
_POLICY = re.compile(r"(?:0[xX])?([0-9a-fA-F]{1,16})\Z")
_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclasses.dataclass(frozen=True)
class PermitHeader:
    """The header of a permit: number, server domain and product count."""

    number: int
    servers: tuple[HostId, ...]
    count: int


@dataclasses.dataclass(frozen=True)
class LockLine:
    """A ``LOCK:`` line as found: its value (key id and signature) and line."""

    value: str
    line: int


@dataclasses.dataclass(frozen=True)
class ParsedHeader:
    """The header as parsed, with its lock line and the line it ends on."""

    header: PermitHeader
    lock: LockLine | None
    end_line: int


@dataclasses.dataclass(frozen=True)
class ParsedProduct:
    """One product as parsed: where it starts and ends, and its lock line."""

    product: ProductPermit
    line: int
    end_line: int
    lock: LockLine | None


@dataclasses.dataclass(frozen=True)
class ParsedPermit:
    """A whole permit as parsed, with the position of every lock slot."""

    permit: Permit
    header: ParsedHeader
    products: tuple[ParsedProduct, ...]


@dataclasses.dataclass(frozen=True)
class Seals:
    """The values of a permit's lock lines: one for the header, one per product."""

    header: str
    products: tuple[str, ...]


def is_usable_host_address(address: ipaddress.IPv4Address) -> bool:
    """True for an address a host can have: not 0.0.0.0, broadcast or multicast."""
    return not (address.is_unspecified or address == _BROADCAST or address.is_multicast)


def keyword_of(text: str) -> str | None:
    """The keyword of a ``KEYWORD: value`` line, or None for any other line."""
    match = _KEYWORD_LINE.match(text)
    if match and match.group(1) in KEYWORDS:
        return match.group(1)
    return None


class PermitParser:
    """Reads permit text one section at a time, raising PermitError at the first problem.

    Call `read_header`, then `read_product` ``header.count`` times, then
    `read_end`. With ``require_locks`` a missing lock line is an error (a sealed
    permit); without it lock lines are optional (a form, or a permit to re-seal).
    """

    def __init__(self, text: str, *, path: str | None = None, require_locks: bool) -> None:
        self._lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        if len(self._lines) > 1 and self._lines[-1] == "":
            self._lines.pop()  # the final newline does not start a line
        self._path = path
        self._require_locks = require_locks
        self._index = 0  # index of the next line to look at
        self._last = 0  # 1-based number of the last significant line read

    # -- low level ---------------------------------------------------------

    def _error(self, condition: Condition, message: str, line: int | None) -> PermitError:
        return PermitError(condition, message, path=self._path, line=line)

    @property
    def _eof_line(self) -> int:
        return max(1, len(self._lines))

    def _peek(self) -> tuple[int, str] | None:
        """The next significant line (number, stripped text) without consuming it."""
        index = self._index
        while index < len(self._lines):
            text = self._lines[index].strip()
            if text and not text.startswith("#"):
                if _SURROGATE.search(text):
                    raise self._error(
                        Condition.TRUNCATED,
                        "this line is not UTF-8 text; the file is damaged, get a fresh copy",
                        index + 1,
                    )
                return index + 1, text
            index += 1
        return None

    def _take(self) -> tuple[int, str] | None:
        """The next significant line, consumed."""
        found = self._peek()
        if found is None:
            self._index = len(self._lines)
            return None
        self._index = found[0]
        self._last = found[0]
        return found

    def _take_required(self, expected: str) -> tuple[int, str]:
        found = self._take()
        if found is None:
            raise self._error(
                Condition.TRUNCATED,
                f"the file ends where {expected} was expected; it is truncated, "
                "get a complete copy from the publisher",
                self._eof_line,
            )
        return found

    def _keyword(self, keyword: str) -> tuple[int, str]:
        """Read a ``KEYWORD: value`` line; return its number and the value."""
        expected = f"'{keyword}: n'"
        line, text = self._take_required(expected)
        match = _KEYWORD_LINE.match(text)
        if not match or match.group(1) != keyword:
            raise self._error(
                Condition.TRUNCATED,
                f"expected {expected}, found {_show(text)}",
                line,
            )
        return line, match.group(2).strip()

    def _integer(self, text: str, line: int, what: str) -> int:
        if not _INTEGER.match(text):
            raise self._error(
                Condition.BAD_NUMBER,
                f"{what}: {_show(text)} is not a decimal integer",
                line,
            )
        return int(text)

    def _count(self, text: str, line: int, keyword: str) -> int:
        value = self._integer(text, line, keyword)
        if value < 0:
            raise self._error(Condition.BAD_NUMBER, f"{keyword}: {value} is negative", line)
        return value

    def _host(
        self,
        text: str,
        line: int,
        *,
        address_condition: Condition,
        id_condition: Condition,
        unusable_condition: Condition,
        what: str,
    ) -> HostId:
        fields = text.split()
        if len(fields) != 2:
            raise self._error(
                address_condition,
                f"a {what} line is 'ADDRESS UNIQUE-ID' (e.g. 127.0.0.1 0x1a2b3c4d), "
                f"found {_show(text)}",
                line,
            )
        try:
            address = ipaddress.IPv4Address(fields[0])
        except ipaddress.AddressValueError:
            raise self._error(
                address_condition,
                f"{what} address {_show(fields[0])} is not an IPv4 dotted quad",
                line,
            ) from None
        match = _UNIQUE_ID.match(fields[1])
        if not match:
            raise self._error(
                id_condition,
                f"{what} unique id {_show(fields[1])} is not a 32-bit hex value 0x...; "
                "'hqn_mp hostid' on that host prints it",
                line,
            )
        if not is_usable_host_address(address):
            raise self._error(
                unusable_condition,
                f"{what} address {address} is not a unicast host address",
                line,
            )
        return HostId(address, int(match.group(1), 16))

    def _lock(self, required: bool, what: str) -> LockLine | None:
        found = self._peek()
        if found is not None and keyword_of(found[1]) == "LOCK":
            self._take()
            match = _KEYWORD_LINE.match(found[1])
            assert match is not None
            return LockLine(match.group(2).strip(), found[0])
        if required:
            line = found[0] if found is not None else self._eof_line
            raise self._error(
                Condition.TRUNCATED,
                f"the LOCK line sealing {what} is missing (a permit form must be "
                "sealed with 'hqn_mp sign' before a server accepts it)",
                line,
            )
        return None

    def _name(self, what: str) -> tuple[int, str]:
        line, text = self._take_required(f"the {what}")
        if keyword_of(text) is not None:
            raise self._error(
                Condition.TRUNCATED,
                f"expected the {what} line, found {_show(text)}; a line is missing",
                line,
            )
        return line, text

    # -- sections ----------------------------------------------------------

    def read_header(self) -> ParsedHeader:
        """Read the format line, NUMBER, SERVERS, PERMITS and the header's lock line."""
        found = self._take()
        if found is None:
            raise self._error(
                Condition.TRUNCATED,
                f"the file is empty; a permit starts with '{FORMAT_LINE}'",
                1,
            )
        line, text = found
        if " ".join(text.split()) != FORMAT_LINE:
            raise self._error(
                Condition.BAD_FORMAT_VERSION,
                f"format line {_show(text)} is not accepted; this server reads "
                f"'{FORMAT_LINE}' (ask the publisher for a permit in that format)",
                line,
            )
        line, value = self._keyword("NUMBER")
        number = self._count(value, line, "NUMBER")

        line, value = self._keyword("SERVERS")
        server_count = self._integer(value, line, "SERVERS")
        if not 1 <= server_count <= MAX_SERVERS:
            raise self._error(
                Condition.BAD_SERVER_COUNT,
                f"SERVERS: {server_count}; a server domain has 1 to {MAX_SERVERS} hosts",
                line,
            )
        servers: list[HostId] = []
        for _ in range(server_count):
            line, text = self._take_required(
                f"server {len(servers) + 1} of {server_count} (ADDRESS UNIQUE-ID)"
            )
            if keyword_of(text) is not None:
                raise self._error(
                    Condition.TRUNCATED,
                    f"SERVERS says {server_count} but the list ends after "
                    f"{len(servers)} at {_show(text)}",
                    line,
                )
            server = self._host(
                text,
                line,
                address_condition=Condition.BAD_ADDRESS,
                id_condition=Condition.BAD_UNIQUE_ID,
                unusable_condition=Condition.UNKNOWN_HOST_ADDRESS,
                what="server",
            )
            if any(other.address == server.address for other in servers):
                raise self._error(
                    Condition.UNKNOWN_HOST_ADDRESS,
                    f"server address {server.address} is listed twice in the domain",
                    line,
                )
            servers.append(server)

        line, value = self._keyword("PERMITS")
        count = self._count(value, line, "PERMITS")
        if count < 1:
            raise self._error(
                Condition.BAD_NUMBER, "PERMITS: 0; a permit has at least one product", line
            )
        end_line = line
        lock = self._lock(self._require_locks, "the header and server section")
        return ParsedHeader(PermitHeader(number, tuple(servers), count), lock, end_line)

    def read_product(self) -> ParsedProduct:
        """Read one product, up to and including its lock line."""
        first, publisher = self._name("publisher")
        _, product = self._name("product name")
        _, version = self._name("version")

        line, text = self._take_required("the policy line")
        if keyword_of(text) is not None:
            raise self._error(
                Condition.TRUNCATED,
                f"expected the policy line, found {_show(text)}; a line is missing",
                line,
            )
        fields = text.split()
        if len(fields) != 6:
            raise self._error(
                Condition.BAD_NUMBER,
                "the policy line is 'POLICY NODE FLOATING START EXPIRY UPDATE' "
                f"(6 fields), found {len(fields)}",
                line,
            )
        policy_match = _POLICY.match(fields[0])
        if not policy_match:
            raise self._error(
                Condition.BAD_NUMBER,
                f"policy {_show(fields[0])} is not a hex number (e.g. 0x41)",
                line,
            )
        policy = int(policy_match.group(1), 16)
        if policy & ~VALID_POLICY_BITS:
            raise self._error(
                Condition.BAD_POLICY,
                f"policy 0x{policy:x} has bits this server does not know "
                f"(0x{policy & ~VALID_POLICY_BITS:x}); valid bits are 0x{VALID_POLICY_BITS:x}",
                line,
            )
        node = self._integer(fields[1], line, "node-locked count")
        floating = self._integer(fields[2], line, "floating count")
        if (
            node < 0
            or floating < 0
            or node + floating == 0
            or node > MAX_LICENCES
            or floating > MAX_LICENCES
            or node + floating > MAX_LICENCES
        ):
            raise self._error(
                Condition.BAD_COUNTS,
                f"licence counts node={node} floating={floating}: each must be 0 or more, "
                f"not both 0, and together at most {MAX_LICENCES}",
                line,
            )
        start = self._date(fields[3], line, "start")
        expiry = self._date(fields[4], line, "expiry")
        if start > expiry:
            raise self._error(
                Condition.START_AFTER_EXPIRY,
                f"start date {fields[3]} is after expiry date {fields[4]}",
                line,
            )
        update = self._integer(fields[5], line, "update period")
        if not MIN_UPDATE_MINUTES <= update <= MAX_UPDATE_MINUTES:
            raise self._error(
                Condition.BAD_NUMBER,
                f"update period {update} minutes: must be {MIN_UPDATE_MINUTES} to "
                f"{MAX_UPDATE_MINUTES}",
                line,
            )

        data_line, value = self._keyword("DATA")
        data_count = self._count(value, data_line, "DATA")
        data = self._data(data_count, data_line)

        line, value = self._keyword("LOCKED-NODES")
        node_count = self._count(value, line, "LOCKED-NODES")
        nodes: list[HostId] = []
        for _ in range(node_count):
            line, text = self._take_required(
                f"locked node {len(nodes) + 1} of {node_count} (ADDRESS UNIQUE-ID)"
            )
            if keyword_of(text) is not None:
                raise self._error(
                    Condition.TRUNCATED,
                    f"LOCKED-NODES says {node_count} but the list ends after "
                    f"{len(nodes)} at {_show(text)}",
                    line,
                )
            nodes.append(
                self._host(
                    text,
                    line,
                    address_condition=Condition.BAD_LOCKED_NODE,
                    id_condition=Condition.BAD_LOCKED_NODE,
                    unusable_condition=Condition.BAD_LOCKED_NODE,
                    what="locked node",
                )
            )
        end_line = self._last
        parsed = ProductPermit(
            publisher=publisher,
            product=product,
            version=version,
            policy=policy,
            node_count=node,
            floating_count=floating,
            start=start,
            expiry=expiry,
            update_minutes=update,
            data=data,
            locked_nodes=tuple(nodes),
        )
        lock = self._lock(self._require_locks, f"product {publisher} / {product}")
        return ParsedProduct(parsed, first, end_line, lock)

    def read_end(self) -> None:
        """Check that nothing but comments follows the last product (condition 102)."""
        found = self._take()
        if found is not None:
            raise self._error(
                Condition.TEXT_AFTER_LAST_PRODUCT,
                f"text after the last product: {_show(found[1])}; the PERMITS count is "
                "smaller than the number of products in the file",
                found[0],
            )

    def _date(self, text: str, line: int, what: str) -> datetime.date:
        match = _DATE.match(text)
        if match:
            day, month, year = (int(part) for part in match.groups())
            try:
                return datetime.date(year, month, day)
            except ValueError:
                pass
        raise self._error(
            Condition.BAD_DATE,
            f"{what} date {_show(text)} is not a date dd/mm/yyyy",
            line,
        )

    def _data(self, count: int, data_line: int) -> tuple[int, ...]:
        values: list[int] = []
        while len(values) < count:
            found = self._peek()
            if found is None or keyword_of(found[1]) is not None:
                where = _show(found[1]) if found is not None else "the end of the file"
                raise self._error(
                    Condition.DATA_MISSING,
                    f"DATA: {count} (line {data_line}) but only {len(values)} values "
                    f"before {where}",
                    found[0] if found is not None else self._eof_line,
                )
            line, text = found
            self._take()
            for token in text.split():
                value = self._integer(token, line, "DATA value")
                if not DATA_MIN <= value <= DATA_MAX:
                    raise self._error(
                        Condition.BAD_NUMBER,
                        f"DATA value {value} is outside the signed 32-bit range",
                        line,
                    )
                values.append(value)
            if len(values) > count:
                raise self._error(
                    Condition.BAD_NUMBER,
                    f"more DATA values than the {count} that DATA announces (line {data_line})",
                    line,
                )
        return tuple(values)


def _show(text: str, limit: int = 60) -> str:
    """A quoted, shortened form of untrusted text for messages."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def parse_permit(
    text: str, *, path: str | None = None, require_locks: bool = False
) -> ParsedPermit:
    """Parse a whole permit (form or sealed) without checking seals.

    Raises PermitError at the first problem. Lock lines are optional unless
    ``require_locks``; they are returned as found, not verified.
    """
    parser = PermitParser(text, path=path, require_locks=require_locks)
    header = parser.read_header()
    products = tuple(parser.read_product() for _ in range(header.header.count))
    parser.read_end()
    permit = Permit(
        number=header.header.number,
        servers=header.header.servers,
        products=tuple(parsed.product for parsed in products),
    )
    return ParsedPermit(permit, header, products)


def parse_form(text: str, *, path: str | None = None) -> Permit:
    """Parse a permit form (lock lines, if any, are ignored) into a `Permit`."""
    return parse_permit(text, path=path).permit


# -- writing -----------------------------------------------------------------


def format_date(day: datetime.date) -> str:
    """A date as the permit format writes it: ``dd/mm/yyyy``."""
    return f"{day.day:02d}/{day.month:02d}/{day.year:04d}"


def _host_line(host: HostId) -> str:
    return f"{host.address!s:<13} 0x{host.unique_id:08x}"


def format_permit(permit: Permit, seals: Seals | None = None, *, title: str | None = None) -> str:
    """The text of ``permit``: a form, or a sealed permit when ``seals`` are given.

    The text has the explanatory comments of the SPEC example. Raises
    ValueError when the permit cannot be written so that `parse_permit` reads it
    back equal (a name with a line break, a count out of range, ...).
    """
    if seals is not None and len(seals.products) != len(permit.products):
        raise ValueError(
            f"{len(seals.products)} product seals for {len(permit.products)} products"
        )
    if title is None:
        title = (
            "hqnlsd permit, sealed: each LOCK line seals the fields above it"
            if seals is not None
            else "hqnlsd permit form: seal it with 'hqn_mp sign --key PREFIX.key FORM'"
        )
    out: list[str] = [f"# {line}".rstrip() for line in title.split("\n")]
    out += [
        FORMAT_LINE,
        f"NUMBER: {permit.number}",
        f"SERVERS: {len(permit.servers)}",
        "# address     unique-id",
    ]
    out += [_host_line(server) for server in permit.servers]
    out.append(f"PERMITS: {len(permit.products)}")
    if seals is not None:
        out.append(f"LOCK: {seals.header}")
    for index, product in enumerate(permit.products):
        out += [
            "",
            f"# product {index + 1} of {len(permit.products)}: publisher, product, version",
            product.publisher,
            product.product,
            product.version,
            "# policy  node  floating  start(dmy)   expiry(dmy)  update(min)",
            f"0x{product.policy:<7x} {product.node_count:<5} {product.floating_count:<9} "
            f"{format_date(product.start):<12} {format_date(product.expiry):<12} "
            f"{product.update_minutes}",
            f"DATA: {len(product.data)}",
        ]
        out += [
            " ".join(str(value) for value in product.data[i : i + 8])
            for i in range(0, len(product.data), 8)
        ]
        out.append(f"LOCKED-NODES: {len(product.locked_nodes)}")
        if product.locked_nodes:
            out.append("# address     unique-id")
            out += [_host_line(node) for node in product.locked_nodes]
        if seals is not None:
            out.append(f"LOCK: {seals.products[index]}")
    text = "\n".join(out) + "\n"
    _check_round_trip(text, permit, seals)
    return text


def _check_round_trip(text: str, permit: Permit, seals: Seals | None) -> None:
    """Raise ValueError unless ``text`` reads back as ``permit`` (and ``seals``)."""
    try:
        parsed = parse_permit(text, require_locks=seals is not None)
    except PermitError as e:
        raise ValueError(f"permit cannot be written: {e.condition.text}: {e.message}") from None
    if parsed.permit != permit:
        raise ValueError(
            "permit cannot be written faithfully (a name with surrounding spaces, a "
            "line break, a leading '#' or a keyword?)"
        )
    if seals is not None:
        found = Seals(
            header=parsed.header.lock.value if parsed.header.lock else "",
            products=tuple(p.lock.value if p.lock else "" for p in parsed.products),
        )
        if found != seals:
            raise ValueError("seal values cannot be written on one line each")


def insert_seals(text: str, parsed: ParsedPermit, seals: Seals) -> str:
    """``text`` (parsed as ``parsed``) with its lock lines set to ``seals``.

    Existing lock lines are replaced, missing ones inserted after the PERMITS
    line and after each product's locked-node list; everything else, comments
    included, stays as the publisher wrote it.
    """
    if len(seals.products) != len(parsed.products):
        raise ValueError(f"{len(seals.products)} seals for {len(parsed.products)} products")
    lines = text.split("\n")
    trailing_newline = len(lines) > 1 and lines[-1] == ""
    if trailing_newline:
        lines.pop()
    replace: dict[int, str] = {}  # 0-based line index -> new lock line
    insert_after: dict[int, str] = {}
    slots = [(parsed.header.lock, parsed.header.end_line, seals.header)]
    slots += [
        (p.lock, p.end_line, seal)
        for p, seal in zip(parsed.products, seals.products, strict=True)
    ]
    for lock, end_line, seal in slots:
        if lock is not None:
            replace[lock.line - 1] = seal
        else:
            insert_after[end_line - 1] = seal
    out: list[str] = []
    for index, line in enumerate(lines):
        crlf = "\r" if line.endswith("\r") else ""
        if index in replace:
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}LOCK: {replace[index]}{crlf}")
        else:
            out.append(line)
        if index in insert_after:
            out.append(f"LOCK: {insert_after[index]}{crlf}")
    return "\n".join(out) + ("\n" if trailing_newline or not out else "")
