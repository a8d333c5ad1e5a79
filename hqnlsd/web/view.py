"""`ConsoleView`: what each page of the web console shows, as JSON-safe dicts.

It reads the daemon through the admin handler's read-only view of it
(`hqnlsd.admin.daemon.AdministeredDaemon`, the daemon's `AdminView`) and the
admin listings (`hqnlsd.admin.listings.Listings`: ``sinfo``, ``listp``,
``listu``), so the console shows what ``hqn_lsa`` shows and nothing is counted
twice; the recent denials and reclaims come from `hqnlsd.web.recent`. Nothing
here changes the daemon, and nothing here does any I/O: the pages
(`hqnlsd.web.pages`) and the JSON API (`hqnlsd.web.site`) are built from these
dicts.

Licence handles are never shown: whoever knows one can release the licence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hqnlsd.admin.context import Running
from hqnlsd.admin.listings import Listings, holder_record
from hqnlsd.admin.numbering import ProductNumbers
from hqnlsd.admin.targets import Targets
from hqnlsd.licensing.results import Denied
from hqnlsd.web.recent import RecentEvents

if TYPE_CHECKING:
    from hqnlsd.admin.daemon import AdministeredDaemon

#: Holders listed at once unless fewer are asked for, and the most that may be asked
#: for (a site may hold 100,000 licences: a whole listing would hold the reactor
#: thread for seconds, and the page would be tens of megabytes).
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000

#: Who the listings are asked for (their ``who`` argument; they log nothing with it).
_WHO = "web console"
_NO_ARGS: dict[str, Any] = {}


class ConsoleView:
    """The figures of the web console's pages (see the module)."""

    def __init__(self, root: AdministeredDaemon, recent: RecentEvents | None = None) -> None:
        numbers = ProductNumbers(root)
        self._numbers = numbers
        self._root = root
        self._listings = Listings(root, numbers, Targets(root, numbers, Running()))
        self._recent = recent

    def overview(self) -> dict[str, Any]:
        """Version, address, uptime, role in each domain, peers up, journal health,
        products served and licences held, permit files read and how many failed."""
        info = self._listings.sinfo(_NO_ARGS, _WHO)
        peers = info["peers"]
        return {
            "version": info["version"],
            "address": info["address"],
            "unique_id": info["unique_id_hex"],
            "started": info["started"],
            "now": info["now"],
            "uptime": max(0.0, info["now"] - info["started"]),
            "role": info["role"],
            "domains": [
                {
                    "domain": domain["domain"],
                    "role": domain["role"],
                    "epoch": domain["epoch"],
                    "primary": domain["primary"],
                }
                for domain in info["domains"]
            ],
            "peers_up": sum(1 for peer in peers if peer["up"]),
            "peers": len(peers),
            "journal_healthy": bool(info["journal_healthy"]),
            "served": info["served"],
            "held": info["held"],
            "permit_files": len(info["files"]),
            "permit_errors": sum(1 for f in info["files"] if f["error"] is not None),
        }

    def products(self) -> dict[str, Any]:
        """Every product: pools used and total, policy, dates, crashout and timeout."""
        listed = self._listings.listp(_NO_ARGS, _WHO)["products"]
        return {
            "products": [
                {
                    "index": p["index"],
                    "publisher": p["publisher"],
                    "product": p["product"],
                    "version": p["version"],
                    "floating_used": p["floating_used"],
                    "floating_count": p["floating_count"],
                    "locked_used": p["locked_used"],
                    "node_count": p["node_count"],
                    "policy": p["policy"],
                    "policy_text": p["policy_text"],
                    "admin_locked": p["admin_locked"],
                    "start": p["start"],
                    "expiry": p["expiry"],
                    "crashout": p["crashout"],
                    "timeout": p["timeout"],
                    "domain": p["domain"],
                    "role": p["role"],
                }
                for p in listed
            ]
        }

    def holders(self, *, offset: int = 0, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        """The licences held, ``limit`` of them from ``offset`` (in ``listp`` order of
        the products, each product's holders as ``listu`` lists them), and how many
        there are in all: product, licence index(es), user, host, address, pid, since
        when, last update (no handle). Only the slice is built; ValueError for an
        offset below 0 or a limit outside 0..MAX_LIMIT."""
        if offset < 0 or not 0 <= limit <= MAX_LIMIT:
            raise ValueError(f"offset must be 0 or more and limit 0 to {MAX_LIMIT}")
        rows: list[dict[str, Any]] = []
        total = 0
        for index, status, route in self._numbers.listed():
            engine = route.engine if route is not None else self._root.engine
            start = max(0, offset - total)
            end = max(0, offset + limit - total)
            found = engine.holders_page(status.publisher, status.product, start, end - start)
            if isinstance(found, Denied):
                continue
            chosen, count = found
            total += count
            if not chosen:
                continue
            product = {
                "product_index": index,
                "publisher": status.publisher,
                "product": status.product,
                "version": status.version,
                "domain": self._listings.domain_fields(route)["domain"],
            }
            for holder in chosen:
                record = holder_record(status, holder)
                rows.append(
                    {
                        **product,
                        "indices": record["indices"],
                        "type": record["type"],
                        "user": record["user"],
                        "host": record["host"],
                        "address": record["address"],
                        "pid": record["pid"],
                        "since": record["granted"],
                        "last_update": record["last_update"],
                    }
                )
        return {
            "now": self._root.reactor.seconds(),
            "total": total,
            "offset": offset,
            "limit": limit,
            "holders": rows,
        }

    def domains(self) -> dict[str, Any]:
        """Each server domain (view, epoch, primary, role here) and each peer link
        (up, round trip, seconds since heard)."""
        return {
            "domains": [
                {
                    "domain": d["domain"],
                    "role": d["role"],
                    "rank": d["rank"],
                    "epoch": d["epoch"],
                    "view": d["view"],
                    "primary": d["primary"],
                    "waiting": [w["address"] for w in d["waiting"]],
                    "damaged": d["damaged"],
                    "products": d["products"],
                    "held": d["held"],
                    "takeovers": d["takeovers"],
                }
                for d in self._listings.domain_list()
            ],
            "peers": [
                {
                    "address": p["address"],
                    "up": p["up"],
                    "inbound": p["inbound"],
                    "rtt": p["rtt"],
                    "last_seen_ago": p["last_seen_ago"],
                }
                for p in self._listings.peer_list()
            ],
        }

    def events(self) -> dict[str, Any]:
        """The recent denials and reclaims with their reasons, the newest first."""
        kept = self._recent.newest_first() if self._recent is not None else []
        return {"events": [event.as_dict() for event in kept]}

    def permits(self) -> dict[str, Any]:
        """The permit files read (what each serves, or its error) and where they were
        searched for."""
        info = self._listings.sinfo(_NO_ARGS, _WHO)
        return {
            "source": info["permit_source"],
            "searched": info["searched"],
            "problems": info["search_problems"],
            "files": info["files"],
        }
