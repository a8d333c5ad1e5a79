"""Where an admin command acts: the product (or handle) it names, and the engine
that holds it (`Target`), found by its ``listp`` number or its names.

A change on a product of a multi-host domain is made on the domain's acting
primary: when this member is not it, finding the target raises `Forward`
before anything changes, and the handler forwards the command (or waits, see
`hqnlsd.admin.forwarding`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hqnlsd.admin import wire
from hqnlsd.admin.context import AdminError, Running
from hqnlsd.admin.numbering import ProductNumbers
from hqnlsd.licensing.results import ProductStatus

if TYPE_CHECKING:
    from hqnlsd.admin.daemon import AdministeredDaemon
    from hqnlsd.domain.runtime import DomainRoute
    from hqnlsd.licensing.engine import Engine


@dataclass(frozen=True)
class Target:
    """Where a command acts: a product (or handle) and the engine that holds it.

    ``route`` is None for this daemon's own products (journal), else the
    route of the multi-host domain that serves it.
    """

    engine: Engine
    route: DomainRoute | None
    publisher: str = ""
    product: str = ""

    @property
    def label(self) -> str:
        """``PUBLISHER PRODUCT`` for logs and answers."""
        return f"{self.publisher} {self.product}"


class Forward(Exception):
    """Raised before any change: this member is not the primary of the target's domain."""

    def __init__(self, target: Target) -> None:
        super().__init__(target.label)
        self.target = target


class Targets:
    """Finds the targets of one daemon's admin commands (see the module docstring)."""

    def __init__(
        self, root: AdministeredDaemon, numbers: ProductNumbers, running: Running
    ) -> None:
        self.root = root
        self.numbers = numbers
        self.running = running

    def target(self, publisher: str, product: str, route: DomainRoute | None) -> Target:
        """The target of a product (or, with empty names, a handle) held as ``route`` says."""
        engine = route.engine if route is not None else self.root.engine
        return Target(engine, route, publisher, product)

    def checked(self, target: Target, change: bool) -> Target:
        """``target``, once it may be acted on here; `Forward` if its primary must act."""
        forwarded = self.running.forwarded_domain
        if forwarded is not None and (target.route is None or target.route.domain_id != forwarded):
            raise AdminError(
                "BADPRODUCT",
                f"{target.label or 'that licence'} is not served by the domain the change "
                "was forwarded for",
            )
        if change and target.route is not None and target.route.serve() is not None:
            raise Forward(target)
        return target

    def product(self, args: Mapping[str, Any], *, change: bool = True) -> Target:
        """The product a command names and where it is held; AdminError if none.

        For a change (``change``) on a domain product when this member is not
        the domain's acting primary, raises `Forward` (nothing has changed).
        """
        return self.checked(self.find_product(args), change)

    def current(self, target: Target) -> ProductStatus:
        """The target product's status now; AdminError if it is not (yet) held here."""
        for status in target.engine.status():
            if (status.publisher, status.product) == (target.publisher, target.product):
                found: ProductStatus = status
                return found
        if target.route is not None:
            raise AdminError(
                "NOTVERIFIED",
                f"{target.label} is not in this member's copy of its domain's state yet "
                "(the domain has not verified this member); try again shortly",
            )
        raise AdminError("BADPRODUCT", f"{target.label} is not served here")

    def find_product(self, args: Mapping[str, Any]) -> Target:
        """The product ``args`` names (``{"index": N}`` or its names), wherever it is held."""
        ref = args.get("product")
        listed = self.numbers.listed()
        if not isinstance(ref, Mapping):
            raise AdminError(
                wire.BAD_REQUEST,
                "name a product: its number in listp, or PUBLISHER PRODUCT",
            )
        if "index" in ref:
            index = ref["index"]
            if isinstance(index, bool) or not isinstance(index, int):
                raise AdminError(wire.BAD_REQUEST, "a product number must be a whole number")
            for number, chosen, where in listed:
                if number == index:
                    return self.target(chosen.publisher, chosen.product, where)
            raise AdminError(
                "BADPRODUCT",
                f"there is no product {index} here: this server serves {len(listed)} "
                "product(s); listp shows their numbers (they stay as they are when the "
                "permits are re-read)",
            )
        publisher, product = ref.get("publisher"), ref.get("product")
        if not isinstance(publisher, str) or not isinstance(product, str):
            raise AdminError(wire.BAD_REQUEST, "name a product: PUBLISHER PRODUCT")
        if self.root.engine.product(publisher, product) is not None:
            return self.target(publisher, product, None)
        for _number, status, where in listed:
            if where is not None and (status.publisher, status.product) == (publisher, product):
                return self.target(publisher, product, where)
        domains = self.root.domains
        route = domains.route(publisher, product) if domains is not None else None
        if route is not None:
            # Read here, not in this member's copy of the domain state yet.
            return self.target(publisher, product, route)
        offer = self.root.server.catalogue.find(publisher, product)
        if offer is not None:
            domain = " ".join(str(host.address) for host in offer.domain)
            if not offer.here:
                raise AdminError(
                    "TRY_DOMAIN",
                    f"{publisher} {product} is served by another server domain "
                    f"({domain}): administer it there",
                )
            if len(offer.domain) > 1:
                raise AdminError(
                    "NOTVERIFIED",
                    f"{publisher} {product} belongs to the multi-host domain {domain}, and "
                    "this daemon runs no server domains (start it with --domain-ca, "
                    "--domain-cert and --domain-key)",
                )
        raise AdminError(
            "BADPRODUCT",
            f"{publisher} {product} is not served here; listp shows what is",
        )

