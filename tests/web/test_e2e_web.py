"""End to end: a real daemon started with ``--web``; licences taken and released with
the client library show (and go) on the console's JSON API and pages; a denial shows
on /api/events with its reason; a user name that is markup is shown escaped."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.client.api import Process, Retry
from hqnlsd.client.blocking import BlockingLicenceClient
from hqnlsd.client.errors import LicenceDenied
from hqnlsd.status import Status
from tests.daemons import IO_TIMEOUT, Daemon, DaemonHarness, free_port, make_permit, product_permit

pytestmark = pytest.mark.e2e

#: Seconds the console may take to show a change (it reads live state: at once).
SHOWN_WITHIN = 10.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    """A harness whose daemons are all killed (and their logs shown on failure) at the end."""
    with DaemonHarness(tmp_path) as harness:
        yield harness


def fetch(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET http://127.0.0.1:port/path: code, headers, body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=IO_TIMEOUT) as answer:
            return answer.status, dict(answer.headers.items()), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def api(port: int, name: str) -> Any:
    code, headers, body = fetch(port, f"/api/{name}")
    assert code == 200 and headers["Content-Type"] == "application/json", (code, body)
    return json.loads(body)


def eventually(what: str, check: Callable[[], bool], bound: float = SHOWN_WITHIN) -> None:
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound} s: {what}")
        time.sleep(0.1)


def client_for(daemon: Daemon, user: str, pid: int) -> BlockingLicenceClient:
    return BlockingLicenceClient(
        servers=[f"{daemon.address}:{daemon.port}"],
        hosts_file=daemon.hosts_file,
        timeout=5.0,
        retry=Retry(first_delay=0.05, attempts=2),
        process=Process(user=user, host="desk", pid=pid),
    )


def start_with_web(daemons: DaemonHarness) -> tuple[Daemon, int]:
    daemons.write_permit(
        make_permit([daemons.host(1)], [product_permit("Widget", floating_count=1)])
    )
    web_port = free_port("127.0.0.1")
    daemon = daemons.daemon("web", extra_args=["--web", f"tcp:{web_port}"]).start_and_wait()
    return daemon, web_port


def test_holders_and_denials_on_the_console(daemons: DaemonHarness) -> None:
    """Take a licence: /api/holders shows it; a second user is denied: /api/events has
    the denial and its reason; release: the holder is gone."""
    daemon, port = start_with_web(daemons)
    assert api(port, "holders")["holders"] == []
    overview = api(port, "overview")
    assert overview["served"] == 1 and overview["journal_healthy"] is True

    licence = client_for(daemon, "ann", 4242).request("Test Publisher", "Widget", "1.0")
    try:

        def ann_holds() -> bool:
            rows = api(port, "holders")["holders"]
            return [(r["user"], r["host"], r["pid"], r["product"]) for r in rows] == [
                ("ann", "desk", 4242, "Widget")
            ]

        eventually("ann's licence on /api/holders", ann_holds)
        row = api(port, "holders")["holders"][0]
        assert row["address"] == "127.0.0.1" and row["indices"] and row["since"] > 0
        assert licence.handle not in json.dumps(api(port, "holders"))
        products = api(port, "products")["products"]
        assert [(p["floating_used"], p["floating_count"]) for p in products] == [(1, 1)]

        with pytest.raises(LicenceDenied) as denied:
            client_for(daemon, "bob", 777).request("Test Publisher", "Widget", "1.0")
        assert denied.value.status is Status.NOLICENCES

        def bob_denied() -> bool:
            return any(
                e["kind"] == "denial" and e["user"] == "bob" for e in api(port, "events")["events"]
            )

        eventually("bob's denial on /api/events", bob_denied)
        event = next(e for e in api(port, "events")["events"] if e["user"] == "bob")
        assert event["status"] == "NOLICENCES"
        assert event["reason"] and event["reason"] in denied.value.reply.msg
        assert (event["product"], event["pid"]) == ("Widget", 777)
        _, _, page = fetch(port, "/events")
        assert b"NOLICENCES" in page and b"bob" in page
    finally:
        licence.release()
    eventually("the holder gone after release", lambda: api(port, "holders")["holders"] == [])


def test_a_user_name_that_is_markup_is_escaped(daemons: DaemonHarness) -> None:
    """A holder called <script>...</script> is text on the holders page."""
    daemon, port = start_with_web(daemons)
    name = "<script>alert(1)</script>"
    licence = client_for(daemon, name, 1).request("Test Publisher", "Widget", "1.0")
    try:
        eventually(
            "the holder on /api/holders",
            lambda: [r["user"] for r in api(port, "holders")["holders"]] == [name],
        )
        code, headers, page = fetch(port, "/holders")
        assert code == 200
        assert b"<script>alert(1)" not in page
        assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    finally:
        licence.release()


def test_the_console_is_off_by_default_and_on_loopback(
    daemons: DaemonHarness, tmp_path: Path
) -> None:
    """Configured by the [web] table; bound to 127.0.0.1 only; the log says where."""
    daemons.write_permit(make_permit([daemons.host(1)], [product_permit("Widget")]))
    port = free_port("127.0.0.1")
    config = tmp_path / "web.toml"
    config.write_text(f'[web]\nlisten = "tcp:{port}"\n')
    daemon = daemons.daemon("file", extra_args=["--config", str(config)]).start_and_wait()
    assert api(port, "overview")["served"] == 1
    assert f"web console listener on 127.0.0.1:{port}" in daemon.log_text()
    plain = daemons.daemon("plain", n=2).start_and_wait()
    assert "web console" not in plain.log_text()
