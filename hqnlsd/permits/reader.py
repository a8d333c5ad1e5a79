"""Reading sealed permits, versioning, and whether this daemon serves them.

- `read_permit_text` reads one sealed permit: the header and its seal first,
  then product by product, each verified before the next is read. The first
  error stops that file; products verified before it stay valid.
- `build_catalogue` takes the files in discovery order and decides, for this
  daemon (its `HostId`) and hosts table, what it serves: one version per
  (publisher, product), the first read wins; products of other domains are kept
  for ``TRY_DOMAIN`` redirects; a permit listing this host's address with another
  unique id is not served (condition 117), nor one of a multi-host domain whose
  members lack ``hqnserverN`` aliases (condition 116).

Everything here works on text and values; `read_permit_file` is the one thin
function that touches the file system.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hqnlsd.identity import HostsTable, format_unique_id
from hqnlsd.permits.errors import Condition, PermitError
from hqnlsd.permits.format import PermitParser
from hqnlsd.permits.model import HostId, Permit, ProductPermit
from hqnlsd.permits.seal import TrustedKeys, header_message, product_message

#: A permit file larger than this is not read (no real permit comes near it).
MAX_PERMIT_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class PermitFile:
    """What one permit file yielded.

    ``permit`` is the verified header with the products verified before the
    first error (None if the header itself could not be read and verified);
    ``error`` is that first error, None if the whole file is valid. ``key_ids``
    are the keys that sealed the header and each valid product, in order.
    """

    path: str
    permit: Permit | None
    error: PermitError | None
    key_ids: tuple[str, ...] = ()

    @property
    def products(self) -> tuple[ProductPermit, ...]:
        """The valid products of this file."""
        return self.permit.products if self.permit is not None else ()

    @property
    def ok(self) -> bool:
        """True if the whole file was read without error."""
        return self.error is None


def read_permit_text(text: str, *, path: str, trusted: TrustedKeys) -> PermitFile:
    """Read and verify one sealed permit given as text (never raises PermitError)."""
    parser = PermitParser(text, path=path, require_locks=True)
    try:
        parsed_header = parser.read_header()
        header = parsed_header.header
        assert parsed_header.lock is not None  # require_locks
        header_key = trusted.verify(
            parsed_header.lock,
            header_message(header),
            wrong=Condition.SERVER_SEAL_WRONG,
            what="the header and server section",
            path=path,
        )
    except PermitError as e:
        return PermitFile(path, None, e)

    products: list[ProductPermit] = []
    key_ids = [header_key]
    error: PermitError | None = None
    try:
        for _ in range(header.count):
            parsed = parser.read_product()
            assert parsed.lock is not None  # require_locks
            key_ids.append(
                trusted.verify(
                    parsed.lock,
                    product_message(header, parsed.product),
                    wrong=Condition.PRODUCT_SEAL_WRONG,
                    what=f"product {parsed.product.publisher} / {parsed.product.product}",
                    path=path,
                )
            )
            products.append(parsed.product)
        parser.read_end()
    except PermitError as e:
        error = e
    permit = Permit(number=header.number, servers=header.servers, products=tuple(products))
    return PermitFile(path, permit, error, tuple(key_ids))


def decode_permit_bytes(data: bytes) -> str:
    """Permit bytes as text: UTF-8 (a leading BOM is dropped).

    Bytes that are not UTF-8 are kept as lone surrogates, so the parser can
    report the line they are on instead of failing the whole file up front.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def read_permit_file(path: str | Path, trusted: TrustedKeys) -> PermitFile:
    """Read and verify one permit file (never raises for a bad or missing file)."""
    name = str(path)
    try:
        with open(path, "rb") as source:
            data = source.read(MAX_PERMIT_BYTES + 1)
    except OSError as e:
        return PermitFile(
            name,
            None,
            PermitError(
                Condition.TRUNCATED,
                f"cannot read the permit file: {e.strerror or e}",
                path=name,
            ),
        )
    if len(data) > MAX_PERMIT_BYTES:
        return PermitFile(
            name,
            None,
            PermitError(
                Condition.TRUNCATED,
                f"the file is larger than {MAX_PERMIT_BYTES} bytes; it is not a permit",
                path=name,
            ),
        )
    return read_permit_text(decode_permit_bytes(data), path=name, trusted=trusted)


def read_permit_files(paths: Iterable[str | Path], trusted: TrustedKeys) -> tuple[PermitFile, ...]:
    """Read every file of ``paths``, in order."""
    return tuple(read_permit_file(path, trusted) for path in paths)


# -- serving decision ----------------------------------------------------------


class Serving(enum.Enum):
    """How this daemon treats a permit's products."""

    HERE = "served here"
    OTHER_DOMAIN = "another domain: requests are redirected (TRY_DOMAIN)"
    NOT_SERVED = "not served"


@dataclasses.dataclass(frozen=True)
class DomainDecision:
    """This daemon's decision for one permit.

    ``condition`` is the serving condition (116 or 117) when ``serving`` is
    NOT_SERVED; ``ranks`` are the members' ``hqnserverN`` ranks when this
    daemon serves a multi-host domain (empty otherwise).
    """

    serving: Serving
    condition: PermitError | None = None
    ranks: Mapping[ipaddress.IPv4Address, int] = dataclasses.field(default_factory=dict)


def domain_decision(
    permit: Permit, me: HostId, hosts: HostsTable, *, path: str | None = None
) -> DomainDecision:
    """Whether this daemon (``me``) serves ``permit``'s domain, and if not why."""
    member = next((s for s in permit.servers if s.address == me.address), None)
    if member is None:
        return DomainDecision(Serving.OTHER_DOMAIN)
    if member.unique_id != me.unique_id:
        return DomainDecision(
            Serving.NOT_SERVED,
            PermitError(
                Condition.UNIQUE_ID_MISMATCH,
                f"permit {permit.number} lists this host's address {me.address} with "
                f"unique id {format_unique_id(member.unique_id)}, but this machine's id is "
                f"{format_unique_id(me.unique_id)}; the permit is for another machine "
                "(ask the publisher for a permit with the id 'hqn_mp hostid' prints)",
                path=path,
            ),
        )
    if len(permit.servers) == 1:
        return DomainDecision(Serving.HERE)
    ranks: dict[ipaddress.IPv4Address, int] = {}
    missing: list[str] = []
    for server in permit.servers:
        rank = hosts.rank_of(server.address)
        if rank is None:
            missing.append(str(server.address))
        else:
            ranks[server.address] = rank
    if missing:
        return DomainDecision(
            Serving.NOT_SERVED,
            PermitError(
                Condition.NO_SERVER_ALIAS,
                f"permit {permit.number}: domain member(s) {', '.join(missing)} have no "
                "hqnserverN alias in the hosts file; give every member of the domain "
                "one (e.g. '127.0.0.2 hqnserver2') on every member host",
                path=path,
            ),
        )
    return DomainDecision(Serving.HERE, ranks=ranks)


# -- catalogue -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Offer:
    """A product this daemon knows: from which permit and file, served here or not."""

    product: ProductPermit
    permit: Permit
    path: str
    here: bool

    @property
    def domain(self) -> tuple[HostId, ...]:
        """The server domain that serves this product."""
        return self.permit.servers


@dataclasses.dataclass(frozen=True)
class NotServed:
    """A product read from a valid seal but not served, and why."""

    path: str
    product: ProductPermit
    reason: str
    condition: Condition | None = None


@dataclasses.dataclass(frozen=True)
class FileReport:
    """One file as ``sinfo`` shows it: what was read, and the serving decision."""

    file: PermitFile
    decision: DomainDecision | None


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Every product this daemon knows, after versioning and the domain check.

    ``served`` are the products served here, ``elsewhere`` those of other domains
    (for ``TRY_DOMAIN``; never a product that is served here), both keyed by
    ``(publisher, product)``.
    """

    files: tuple[FileReport, ...]
    served: Mapping[tuple[str, str], Offer]
    elsewhere: Mapping[tuple[str, str], Offer]
    not_served: tuple[NotServed, ...]

    def find(self, publisher: str, product: str) -> Offer | None:
        """The offer for a product: served here first, else another domain's, else None."""
        key = (publisher, product)
        return self.served.get(key) or self.elsewhere.get(key)

    def served_products(self) -> tuple[ProductPermit, ...]:
        """The products served here (for the licensing engine)."""
        return tuple(offer.product for offer in self.served.values())

    @property
    def errors(self) -> tuple[PermitError, ...]:
        """Every read error and serving condition, in file order."""
        found: list[PermitError] = []
        for report in self.files:
            if report.file.error is not None:
                found.append(report.file.error)
            if report.decision is not None and report.decision.condition is not None:
                found.append(report.decision.condition)
        return tuple(found)


def build_catalogue(
    files: Sequence[PermitFile], me: HostId, hosts: HostsTable
) -> Catalogue:
    """Decide what this daemon serves from ``files`` (in discovery order)."""
    reports: list[FileReport] = []
    served: dict[tuple[str, str], Offer] = {}
    elsewhere: dict[tuple[str, str], Offer] = {}
    not_served: list[NotServed] = []
    for permit_file in files:
        permit = permit_file.permit
        if permit is None:
            reports.append(FileReport(permit_file, None))
            continue
        decision = domain_decision(permit, me, hosts, path=permit_file.path)
        reports.append(FileReport(permit_file, decision))
        for product in permit.products:
            if decision.serving is Serving.NOT_SERVED:
                assert decision.condition is not None
                not_served.append(
                    NotServed(
                        permit_file.path,
                        product,
                        decision.condition.condition.text,
                        decision.condition.condition,
                    )
                )
                continue
            here = decision.serving is Serving.HERE
            table = served if here else elsewhere
            earlier = table.get(product.key)
            if earlier is not None:
                not_served.append(
                    NotServed(
                        permit_file.path,
                        product,
                        f"version {earlier.product.version} from {earlier.path} "
                        f"(permit {earlier.permit.number}) was read first; one version of "
                        "a product is served, the first permit read wins",
                    )
                )
                continue
            table[product.key] = Offer(product, permit, permit_file.path, here)
    elsewhere = {key: offer for key, offer in elsewhere.items() if key not in served}
    return Catalogue(tuple(reports), served, elsewhere, tuple(not_served))


def read_catalogue(
    paths: Iterable[str | Path], trusted: TrustedKeys, me: HostId, hosts: HostsTable
) -> Catalogue:
    """Read the permit files ``paths`` (in order) and build this daemon's catalogue."""
    return build_catalogue(read_permit_files(paths, trusted), me, hosts)
