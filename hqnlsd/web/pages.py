"""The web console's pages: `hqnlsd.web.view` figures as HTML (pure functions).

Every value is escaped (`e`: controls and bidi overrides as ``\\x1b``, ``\\u202e``,
then `html.escape`, quotes too): user, host and product names come from the
network and the permits. A page works without JavaScript (a
``<noscript>`` meta refresh reloads it every `REFRESH_SECONDS`); with it,
``/console.js`` fetches the page again at the same pace and swaps its ``<main>``
in place. The style sheet is ``/console.css`` (the Content-Security-Policy
allows no inline style or script).
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hqnlsd.logging.escape import escape_text

#: Seconds between refreshes of a page.
REFRESH_SECONDS = 3

#: Holders shown on the holders page at most (the JSON API lists the rest).
PAGE_ROWS = 500

#: The pages: path, title (in the navigation bar).
PAGES: tuple[tuple[str, str], ...] = (
    ("", "Overview"),
    ("products", "Products"),
    ("holders", "Holders"),
    ("domains", "Domains"),
    ("events", "Denials and reclaims"),
    ("permits", "Permit files"),
)


def e(value: object) -> str:
    """``value`` as escaped HTML text (None as an empty string): one line of printable
    text first (controls, line breaks and bidi overrides from the network shown as
    ``\\x1b``, ``\\n``, ``\\u202e``, a backslash doubled, as in the log and the
    usage report's page), then HTML's own characters."""
    return "" if value is None else html.escape(escape_text(str(value)), quote=True)


def when(seconds: float | None) -> str:
    """A time (seconds since the epoch) as UTC ``YYYY-MM-DD HH:MM:SS``."""
    if seconds is None:
        return ""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """A duration as ``1d 2h 3m 4s`` (the leading zero units left out)."""
    if seconds is None:
        return ""
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size or parts:
            parts.append(f"{left // size}{unit}")
            left %= size
    parts.append(f"{left}s")
    return " ".join(parts)


def table(
    headings: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str, css: str = ""
) -> str:
    """A table of escaped cells (a cell given as `Raw` is put in as it is)."""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td data-label="{e(h)}">{_cell(c)}</td>' for h, c in zip(headings, row, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    if not body:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headings)
    return f'<table class="{e(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Raw(str):
    """HTML already escaped (made only here, from escaped parts)."""


def _cell(value: object) -> str:
    return value if isinstance(value, Raw) else e(value)


def _used(used: int, total: int) -> Raw:
    """``used / total`` with a bar (a ``<meter>``)."""
    return Raw(
        f'{e(used)} / {e(total)} <meter min="0" max="{e(max(total, 1))}" value="{e(used)}"></meter>'
    )


def page(path: str, title: str, body: str, *, refresh: bool = True) -> str:
    """A whole page: head, navigation, ``body`` in ``<main>``."""
    current = ' aria-current="page"'
    nav = "".join(
        f'<a href="/{e(href)}"{current if href == path else ""}>{e(name)}</a>'
        for href, name in PAGES
    )
    meta = (
        f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>'
        if refresh
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{e(title)} - hqnlsd</title>"
        '<link rel="stylesheet" href="/console.css">'
        f'<script src="/console.js" defer></script></head>'
        f'<body data-refresh="{REFRESH_SECONDS}"><header><h1>hqnlsd</h1><nav>{nav}</nav></header>'
        f'<main id="main"><h2>{e(title)}</h2>{body}</main></body></html>\n'
    )


def overview(data: dict[str, Any]) -> str:
    """The overview page's body."""
    health = "healthy" if data["journal_healthy"] else "UNHEALTHY"
    rows = [
        ("Version", data["version"]),
        ("Address", f"{data['address']} (unique id {data['unique_id']})"),
        ("Up since", f"{when(data['started'])} UTC ({duration(data['uptime'])})"),
        ("Role", data["role"]),
        ("Peers up", f"{data['peers_up']} of {data['peers']}"),
        ("Journal", Raw(f'<span class="{e(health.lower())}">{e(health)}</span>')),
        ("Products served", data["served"]),
        ("Licences held", data["held"]),
        ("Permit files", f"{data['permit_files']} read, {data['permit_errors']} with an error"),
    ]
    facts = "".join(f"<dt>{e(name)}</dt><dd>{_cell(value)}</dd>" for name, value in rows)
    domains = table(
        ("Domain", "Role here", "Epoch", "Primary"),
        ((d["domain"], d["role"], d["epoch"], d["primary"] or "none") for d in data["domains"]),
        empty="No server domain.",
    )
    return f'<dl class="facts">{facts}</dl><h3>Server domains</h3>{domains}'


def products(data: dict[str, Any]) -> str:
    """The products page's body."""
    return table(
        (
            "#",
            "Product",
            "Version",
            "Floating",
            "Node-locked",
            "Policy",
            "Locked by admin",
            "Start",
            "Expiry",
            "Crashout (s)",
            "Timeout (s)",
            "Domain",
        ),
        (
            (
                p["index"],
                f"{p['publisher']} {p['product']}",
                p["version"],
                _used(p["floating_used"], p["floating_count"]),
                _used(p["locked_used"], p["node_count"]),
                p["policy_text"],
                ", ".join(p["admin_locked"]) if p["admin_locked"] else "",
                p["start"],
                p["expiry"],
                p["crashout"],
                p["timeout"],
                "" if p["domain"] is None else f"{p['domain']} ({p['role']})",
            )
            for p in data["products"]
        ),
        empty="No product is served.",
    )


def holders(data: dict[str, Any]) -> str:
    """The holders page's body (at most `PAGE_ROWS` of them; it says so when there are more)."""
    listed = table(
        (
            "Product",
            "Licence",
            "Type",
            "User",
            "Host",
            "Address",
            "PID",
            "Since (UTC)",
            "Last update (UTC)",
        ),
        (
            (
                f"{h['publisher']} {h['product']} {h['version']}",
                ",".join(str(i) for i in h["indices"]),
                h["type"],
                h["user"],
                h["host"],
                h["address"],
                h["pid"],
                when(h["since"]),
                when(h["last_update"]),
            )
            for h in data["holders"]
        ),
        empty="No licence is held.",
        css="holders",
    )
    shown, total = len(data["holders"]), data["total"]
    if shown >= total:
        return listed
    rest = f"/api/holders?offset={data['offset'] + shown}"
    return (
        f'<p class="more">Showing {e(shown)} of the {e(total)} licences held; the rest '
        f'as JSON: <a href="{e(rest)}">{e(rest)}</a></p>{listed}'
    )


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value * 1000:.1f} ms"


def domains(data: dict[str, Any]) -> str:
    """The server domains page's body."""
    listed = table(
        (
            "Domain",
            "Role here",
            "Rank",
            "Epoch",
            "View",
            "Primary",
            "Waiting for",
            "Held",
            "Takeovers",
        ),
        (
            (
                d["domain"],
                d["role"] if d["damaged"] is None else f"damaged: {d['damaged']}",
                d["rank"],
                d["epoch"],
                " ".join(d["view"]),
                d["primary"] or "none",
                " ".join(d["waiting"]),
                d["held"],
                d["takeovers"],
            )
            for d in data["domains"]
        ),
        empty="No server domain (a single-host server, or no permit names a domain with it).",
    )
    peers = table(
        ("Peer", "Link", "Round trip", "Last heard"),
        (
            (
                p["address"],
                "up" if p["up"] else ("inbound only" if p["inbound"] else "down"),
                _seconds(p["rtt"]),
                "" if p["last_seen_ago"] is None else f"{p['last_seen_ago']:.1f} s ago",
            )
            for p in data["peers"]
        ),
        empty="No peer.",
    )
    return f"{listed}<h3>Peers</h3>{peers}"


def events(data: dict[str, Any]) -> str:
    """The recent denials and reclaims page's body."""
    return table(
        ("Time (UTC)", "What", "Product", "Status", "Reason", "User", "Host", "Address", "PID"),
        (
            (
                when(ev["at"]),
                {"denial": "denied", "denials": "denied (counted)", "reclaim": "reclaimed"}.get(
                    ev["kind"], ev["kind"]
                ),
                " ".join(
                    str(part) for part in (ev["publisher"], ev["product"], ev["version"]) if part
                ),
                ev["status"],
                ev["reason"],
                ev["user"],
                ev["host"],
                ev["address"],
                ev["pid"],
            )
            for ev in data["events"]
        ),
        empty="No denial or reclaim since the daemon started.",
        css="events",
    )


def permits(data: dict[str, Any]) -> str:
    """The permit files page's body."""
    files = table(
        ("File", "Permit", "Servers", "Products", "Serving", "Error"),
        (
            (
                f["path"],
                f["number"],
                " ".join(f["servers"]),
                "; ".join(f["products"]),
                f["serving"],
                f["error"] if f["condition"] is None else f"{f['error']} ({f['condition']})",
            )
            for f in data["files"]
        ),
        empty="No permit file was read.",
    )
    searched = "".join(f"<li>{e(path)}</li>" for path in data["searched"])
    problems = "".join(f"<li>{e(problem)}</li>" for problem in data["problems"])
    extra = f"<h3>Searched</h3><ul>{searched}</ul>" if searched else ""
    if problems:
        extra += f"<h3>Search problems</h3><ul>{problems}</ul>"
    return files + extra


#: Page path -> (title, view method name, body builder).
BODIES: dict[str, tuple[str, str, Callable[[dict[str, Any]], str]]] = {
    "": ("Overview", "overview", overview),
    "products": ("Products", "products", products),
    "holders": ("Holders", "holders", holders),
    "domains": ("Server domains", "domains", domains),
    "events": ("Recent denials and reclaims", "events", events),
    "permits": ("Permit files", "permits", permits),
}

STYLE = """\
:root{color-scheme:light dark;--line:#8884}
body{font:15px/1.4 system-ui,sans-serif;margin:0}
header{padding:.5em 1em;border-bottom:1px solid var(--line)}
header h1{font-size:1.1em;margin:0 0 .3em}
nav{display:flex;flex-wrap:wrap;gap:.3em 1em}
nav a[aria-current=page]{font-weight:bold;text-decoration:none}
main{padding:0 1em 2em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid var(--line);vertical-align:top}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}
dl.facts dt{font-weight:bold}
dl.facts dd{margin:0}
.unhealthy{color:#c00;font-weight:bold}
meter{width:5em}
.empty{font-style:italic}
@media (max-width:700px){
 thead{display:none}
 table,tbody,tr,td{display:block;width:auto}
 tr{border:1px solid var(--line);margin:.5em 0;padding:.3em}
 td{border:0;padding:.1em .3em}
 td::before{content:attr(data-label) ": ";font-weight:bold}
 dl.facts{grid-template-columns:1fr}
}
"""

SCRIPT = """\
"use strict";
(function () {
  var seconds = Number(document.body.dataset.refresh) || 3;
  function refresh() {
    fetch(window.location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (text) {
        if (text === null) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) { main.replaceChildren.apply(main, Array.from(fresh.childNodes)); }
      })
      .catch(function () {})
      .then(function () { window.setTimeout(refresh, seconds * 1000); });
  }
  window.setTimeout(refresh, seconds * 1000);
})();
"""
