"""``hqn_lsa`` listings as an admin reads them: aligned columns, local times.

Every cell of a table is escaped (`hqnlsd.logging.escape.escape_text`): user
and host names come from clients, and must neither add a line to a listing nor
send ESC or BEL to the admin's terminal.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from hqnlsd.logging.escape import escape_text


def local_time(seconds: float | None) -> str:
    """Seconds since the epoch as local time (``YYYY-MM-DD HH:MM:SS``); ``-`` for None."""
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    """``90s``, ``5m``, ``1h30m``: a setting as an admin would type it."""
    whole = round(seconds)
    if whole != seconds or whole % 60 or whole < 60:
        return f"{seconds:g}s"
    hours, minutes = divmod(whole // 60, 60)
    if not hours:
        return f"{minutes}m"
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[escape_text(str(value)) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _product_name(product: dict[str, Any]) -> str:
    return f"{product['publisher']} {product['product']} {product['version']}"


def render(command: str, result: Any) -> str:
    """The text of a command's result (``command`` is the hqn_lsa command name)."""
    renderer = _RENDERERS.get(command)
    if renderer is not None:
        return str(renderer(result))
    if isinstance(result, dict) and "message" in result:
        text = str(result["message"])
        if result.get("forwarded_to"):
            text += f" (done on the domain's acting primary {result['forwarded_to']})"
        return text
    return str(result)


def _sinfo(result: dict[str, Any]) -> str:
    lines = [
        f"hqnlsd {result['version']} on {result['address']} "
        f"(unique id {result['unique_id_hex']}): {result['role']}",
        f"up since {local_time(result['started'])}; now {local_time(result['now'])}",
        f"state directory {result['state_dir']}"
        + ("" if result["journal_healthy"] else "  (JOURNAL COMMITS FAILING: see the log)"),
        f"{result['served']} product(s) served, {result['held']} licence(s) held",
        f"log switches: {result['log_switches']}",
        f"permit search ({result['permit_source'] or 'nothing found'}): "
        + (", ".join(result["searched"]) or "-"),
    ]
    lines.extend(f"  problem: {problem}" for problem in result["search_problems"])
    lines.extend(_domains_and_peers(result))
    lines.append("permit files, in the order read:")
    if not result["files"]:
        lines.append("  (none)")
    for n, info in enumerate(result["files"], start=1):
        number = "-" if info["number"] is None else info["number"]
        lines.append(
            f"  {n}. {info['path']}: permit {number}, servers "
            f"{' '.join(info['servers']) or '-'}; {info['serving'] or 'not read'}"
        )
        lines.extend(f"       {product}" for product in info["products"])
        if info["error"]:
            lines.append(f"       ERROR {info['error']}")
        if info["condition"]:
            lines.append(f"       ERROR {info['condition']}")
    return "\n".join(lines)


def _domains_and_peers(result: dict[str, Any]) -> list[str]:
    """sinfo's server-domain part: each domain's role and view, each peer link."""
    lines = []
    for d in result.get("domains", []):
        primary = (
            f"primary hqnserver{d['primary_rank']} {d['primary']}" if d["primary"] else "no primary"
        )
        number = f"[{d['number']}] " if d.get("number") else ""
        if d.get("damaged"):
            lines.append(
                f"{number}domain {d['domain']}: hqnserver{d['rank']} here is DAMAGED: its "
                f"stored state for this domain cannot be used ({d['damaged']}); it takes no "
                f"part in the domain until you run: hqn_lsa -s {result.get('address')} "
                f"recover {d.get('number', '?')}"
            )
            continue
        amnesiac = (
            f"; AMNESIAC (recovered): votes again once a view after epoch {d['amnesiac']} "
            "readmits it"
            if d.get("amnesiac") is not None
            else ""
        )
        lines.append(
            f"{number}domain {d['domain']}: hqnserver{d['rank']} here is {d['role'].upper()}, "
            f"epoch {d['epoch']}, view {' '.join(d['view']) or '-'}, {primary}; "
            f"{d['products']} product(s), {d['held']} licence(s) held{amnesiac}"
        )
        waiting = [f"hqnserver{w['rank']} at {w['address']}" for w in d.get("waiting") or []]
        if waiting:
            lines.append(
                f"  waiting for {', '.join(waiting)}: this member reaches no quorum of its "
                "view, so the domain cannot elect a primary until they are back"
            )
    peers = result.get("peers", [])
    if peers:
        rows = [
            [
                p["address"],
                "up" if p["up"] else "DOWN",
                "yes" if p["inbound"] else "no",
                "never" if p["last_seen_ago"] is None else f"{p['last_seen_ago']:.1f}s ago",
                "-" if p["rtt"] is None else f"{p['rtt'] * 1000:.1f} ms",
                p["connects"],
            ]
            for p in peers
        ]
        table_text = table(["peer", "link", "inbound", "heard", "rtt", "connects"], rows)
        lines.append("peer links:")
        lines.extend("  " + line for line in table_text.splitlines())
    return lines


def _listhqn(result: dict[str, Any]) -> str:
    rows = [
        [entry["alias"], entry["address"], "this server" if entry["this"] else ""]
        for entry in result["servers"]
    ]
    if not rows:
        return f"no hqnserverN aliases in {result['hosts_file']}"
    return f"from {result['hosts_file']}:\n" + table(["alias", "address", ""], rows)


def _listp(result: dict[str, Any]) -> str:
    products = result["products"]
    if not products:
        return "no products served"
    rows = [
        [
            p["index"],
            _product_name(p),
            f"{p['locked_used']}/{p['node_count']}",
            f"{p['floating_used']}/{p['floating_count']}",
            f"0x{p['policy']:x}",
            p["policy_text"],
            p["expiry"],
            _where(p),
        ]
        for p in products
    ]
    headers = ["#", "product", "locked", "floating", "policy", "flags", "expiry", "served by"]
    return table(headers, rows)


def _where(product: dict[str, Any]) -> str:
    """Who serves a listed product: this server, or a domain with this member's role."""
    if not product.get("domain"):
        return "this server"
    role = str(product.get("role") or "?")
    if role == "primary":
        return f"domain {product['domain']} (primary here)"
    primary = product.get("primary") or "unknown"
    return f"domain {product['domain']} ({role} here; primary {primary})"


def _listp_plus(result: dict[str, Any]) -> str:
    products = result["products"]
    if not products:
        return "no products served"
    blocks = []
    for p in products:
        nodes = ", ".join(f"{address} 0x{uid:08x}" for address, uid in p["locked_nodes"])
        users = ", ".join(f"{name}={level}" for name, level in p["user_access"].items())
        groups = ", ".join(f"{name}={level}" for name, level in p["group_access"].items())
        admin_locked = p.get("admin_locked") or []
        policy = f"0x{p['policy']:x} ({p['policy_text']})"
        if admin_locked:
            policy += f" admin-locked until the permit is re-read: {' '.join(admin_locked)}"
        fields = [
            ("policy", policy),
            (
                "licences",
                f"node-locked {p['node_count'] - p['locked_used']} left of {p['node_count']}, "
                f"floating {p['floating_count'] - p['floating_used']} left of "
                f"{p['floating_count']}",
            ),
            ("served by", _where(p)),
            ("dates", f"{p['start']} .. {p['expiry']}"),
            ("update period", duration(p["period"])),
            ("crashout", duration(p["crashout"])),
            ("timeout", duration(p["timeout"])),
            ("locked nodes", nodes or "-"),
            ("excluded hosts", ", ".join(p["excluded"]) or "-"),
            ("named users", ", ".join(p["named_users"]) or "-"),
            ("user access", users or "-"),
            ("group access", groups or "-"),
        ]
        width = max(len(name) for name, _ in fields)
        body = "\n".join(f"    {name.ljust(width)}  {value}" for name, value in fields)
        blocks.append(f"{p['index']}. {_product_name(p)}\n{body}")
    return "\n".join(blocks)


def _listu(result: dict[str, Any]) -> str:
    out = []
    for p in result["products"]:
        where = f" [{_where(p)}]" if p.get("domain") else ""
        out.append(f"{p['index']}. {_product_name(p)}: {len(p['holders'])} holder(s){where}")
        if p["holders"]:
            rows = [
                [
                    ",".join(map(str, h["indices"])),
                    h["type"],
                    h["user"],
                    "-" if h["uid"] is None else h["uid"],
                    h["host"],
                    h["address"],
                    h["pid"],
                    h.get("access", "-"),
                    local_time(h["granted"]),
                    local_time(h["last_update"]),
                    h["handle"],
                ]
                for h in p["holders"]
            ]
            headers = [
                "licence",
                "type",
                "user",
                "uid",
                "host",
                "address",
                "pid",
                "access",
                "since",
                "last update",
                "handle",
            ]
            out.append("\n".join("    " + line for line in table(headers, rows).splitlines()))
    return "\n".join(out) if out else "no products served"


def _policy(result: dict[str, Any]) -> str:
    text = f"policy 0x{result['policy']:x}: {result['policy_text']}"
    if result.get("admin_locked"):
        text += f" admin-locked:{','.join(result['admin_locked'])}"
    if "message" in result:
        text = f"{result['message']}; {text}"
    if result.get("ignored"):
        text += f"\nignored (locked): {' '.join(result['ignored'])}"
    return text


def _setting(name: str) -> Any:
    def show(result: dict[str, Any]) -> str:
        text = f"{name} {duration(result[name])}"
        return f"{result['message']}; {text}" if "message" in result else text

    return show


def _loglevel(result: dict[str, Any]) -> str:
    preset = f" (preset {result['preset']})" if result.get("preset") else ""
    text = f"log switches: {result['switches']}{preset}"
    if "list" not in result or not result.get("listing"):
        return text
    rows = [[s["number"], s["name"], "on" if s["on"] else "off"] for s in result["list"]]
    lines = [text, *("  " + line for line in table(["#", "switch", "state"], rows).splitlines())]
    lines.append("presets:")
    lines.extend(f"  {name:<8} {switches}" for name, switches in result["presets"].items())
    return "\n".join(lines)


def _id(result: dict[str, Any]) -> str:
    text = f"{result['address']}  {result['unique_id_hex']}"
    return f"{result['who']}: {text}" if result.get("who") else text


def _lk(result: dict[str, Any]) -> str:
    rows = [
        [
            flag["bit"],
            flag["name"],
            "on" if flag["on"] else "off",
            "locked" if flag["locked"] else "",
        ]
        for flag in result["flags"]
    ]
    head = f"0x{result['word']:x}: {result['text']}"
    if result["unknown_bits"]:
        head += f" (unknown bits 0x{result['unknown_bits']:x})"
    return head + "\n" + table(["bit", "flag", "", ""], rows)


def _reinit(result: dict[str, Any]) -> str:
    lines = [str(result["message"])]
    lines.extend(f"  permit error: {error}" for error in result.get("errors", []))
    for d in result.get("domains", []):
        if "error" in d:
            lines.append(f"  domain {d['domain']}: NOT reinitialised: {d['error']}")
        else:
            lines.append(
                f"  domain {d['domain']}: {d['revoked']} licence(s) revoked, "
                f"{d['served']} product(s) served (on its primary {d['on']})"
            )
    return "\n".join(lines)


def _recover(result: dict[str, Any]) -> str:
    text = (
        f"domain {result['domain']}: hqnserver{result['rank']} recovered; it starts empty and "
        f"takes part again once a view after epoch {result['epoch_bound']} readmits it "
        "(sinfo shows when)"
    )
    if result.get("damaged"):
        text += f"; but its state is still damaged: {result['damaged']}"
    return text


_RENDERERS: dict[str, Any] = {
    "policies": lambda result: str(result["text"]),
    "sinfo": _sinfo,
    "listhqn": _listhqn,
    "listp": _listp,
    "listp+": _listp_plus,
    "listu": _listu,
    "policy": _policy,
    "crashout": _setting("crashout"),
    "timeout": _setting("timeout"),
    "loglevel": _loglevel,
    "id": _id,
    "policyword": _lk,
    "lk": lambda result: f"lock well formed (key id {result['key_id']})",
    "reinit": _reinit,
    "reread": _reinit,
    "recover": _recover,
}
