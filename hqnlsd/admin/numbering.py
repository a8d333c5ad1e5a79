"""Product numbers (``listp``): every product listed here, numbered for the admin.

Numbers are given from 1 in the order first seen (this daemon's own products,
then each domain's by domain id) and kept while the daemon runs, so ``p 1``
names the same product after a re-read; a product that is no longer served
keeps its number for when it comes back, and no other product gets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hqnlsd.licensing.results import ProductStatus

if TYPE_CHECKING:
    from hqnlsd.admin.daemon import AdministeredDaemon
    from hqnlsd.domain.runtime import DomainRoute

    #: A listed product: its number, its status, and its domain's route (None: its own).
    Listed = tuple[int, ProductStatus, DomainRoute | None]


class ProductNumbers:
    """The product numbers of one daemon, kept while it runs (see the module docstring)."""

    def __init__(self, root: AdministeredDaemon) -> None:
        self.root = root
        #: (domain id or "", publisher, product) -> number; never shrinks.
        self._numbers: dict[tuple[str, str, str], int] = {}

    def listed(self) -> list[Listed]:
        """Every product listed here with its number, in number order."""
        listed: list[tuple[ProductStatus, DomainRoute | None]] = [
            (status, None) for status in self.root.engine.status()
        ]
        domains = self.root.domains
        if domains is not None:
            # Imported here, not at the top: hqn_lsa imports this package (for the admin
            # service's names), and should not load the domain runtime to run.
            from hqnlsd.domain.runtime import DomainRoute

            for _key, member in sorted(domains.members.items()):
                route = DomainRoute(member)
                listed.extend((status, route) for status in member.engine.status())
        numbered: list[Listed] = []
        for status, where in listed:
            key = (where.domain_id if where is not None else "", status.publisher, status.product)
            number = self._numbers.get(key)
            if number is None:
                number = self._numbers[key] = len(self._numbers) + 1
            numbered.append((number, status, where))
        return sorted(numbered, key=lambda entry: entry[0])
