"""The admin command handler on a real engine and journal, driven by `task.Clock`."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from hqnlsd.admin.handler import AdminError, AdminHandler, parse_policy
from hqnlsd.admin.targets import Forward, Target
from hqnlsd.config import DaemonConfig
from hqnlsd.licensing.events import Revoked
from hqnlsd.licensing.results import Grant, LicenceRequest
from hqnlsd.licensing.settings import DEFAULT_TIMEOUT_SECONDS
from hqnlsd.permits.model import HostId
from hqnlsd.permits.policy import Policy
from hqnlsd.service import HqnlsdService
from tests.daemons import Publisher, hosts_file_text, make_permit, product_permit

ME = HostId(ipaddress.IPv4Address("127.0.0.1"), 0x1234ABCD)
#: 2026-06-15 12:00 UTC: inside the test permits' dates.
NOW = 1781524800.0


def write_site(tmp_path: Path, *, policy: int = int(Policy.GRAB)) -> None:
    """Publisher keys, a sealed permit of two products and a hosts file under tmp_path."""
    publisher = Publisher.create(tmp_path / "keys")
    permit = make_permit(
        [ME],
        [
            product_permit("Widget", policy=policy, floating_count=3),
            product_permit("Gadget", node_count=1, floating_count=2),
        ],
    )
    publisher.write_permit(tmp_path / "permits" / "test-hqn.permit", permit)
    (tmp_path / "hosts").write_text(hosts_file_text(["127.0.0.1"]), "utf-8")


def site_config(tmp_path: Path) -> DaemonConfig:
    """A daemon configuration for the site of `write_site` (no signals, no log filter)."""
    config = DaemonConfig.build(
        address="127.0.0.1",
        port="tcp:0:interface=127.0.0.1",
        permit_path=str(tmp_path / "permits"),
        hosts_file=str(tmp_path / "hosts"),
        state_dir=str(tmp_path / "state"),
        publisher_keys=str(tmp_path / "keys"),
        environ={},
    )
    return dataclasses.replace(config, handle_sighup=False, install_log_filter=False)


class Rig:
    """A started root service on a Clock, with its admin handler."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.clock.advance(NOW)
        self.root = HqnlsdService(site_config(tmp_path), self.clock, me=ME)
        self.root.startService()
        self.clock.advance(0)
        self.handler = AdminHandler(self.root)

    def pending(self, command: str, **args: Any) -> list[Any]:
        """Start a command; the list gets its outcome once it is answered."""
        outcome: list[Any] = []
        maybeDeferred(self.handler.handle, command, args, "test admin").addBoth(outcome.append)
        return outcome

    def call(self, command: str, **args: Any) -> Any:
        """Run a command to its answer (committing the journal); raise what it raised."""
        outcome = self.pending(command, **args)
        self.clock.advance(0)
        assert outcome, f"{command} was not answered after the commit"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    def refused(self, command: str, **args: Any) -> AdminError:
        """Run a command that must be refused; its AdminError."""
        with pytest.raises(AdminError) as caught:
            self.call(command, **args)
        return caught.value

    def grant(self, product: str = "Widget", user: str = "jo") -> Grant:
        """Take a licence as a client would (committed)."""
        outcome = self.root.engine.request(
            LicenceRequest(
                publisher="Test Publisher",
                product=product,
                version="1.0",
                user=user,
                host="box",
                pid=42,
                address=ipaddress.IPv4Address("127.0.0.1"),
            )
        )
        assert isinstance(outcome.result, Grant), outcome.result
        assert self.root.journal is not None
        self.root.journal.submit(outcome.events)
        self.clock.advance(0)
        return outcome.result

    def product(self, index: int) -> dict[str, Any]:
        """The listp record of product number ``index``."""
        products: list[dict[str, Any]] = self.call("listp")["products"]
        return products[index - 1]

    def restart(self) -> Rig:
        """Stop this daemon and start a fresh one on the same state directory."""
        self.stop()
        return Rig(self.tmp_path)

    def stop(self) -> None:
        """Stop the root service (closes the journal)."""
        if self.root.running:
            self.root.stopService()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A started daemon core with two products (Widget: 3 floating; Gadget: 1+2)."""
    write_site(tmp_path)
    made = Rig(tmp_path)
    yield made
    made.stop()


WIDGET = {"publisher": "Test Publisher", "product": "Widget"}


def test_listp_numbers_the_products_and_counts_use(rig: Rig) -> None:
    """listp numbers the products in load order and shows used / total per pool."""
    rig.grant()
    products = rig.call("listp")["products"]
    assert [(p["index"], p["product"]) for p in products] == [(1, "Widget"), (2, "Gadget")]
    assert (products[0]["floating_used"], products[0]["floating_count"]) == (1, 3)
    assert (products[1]["node_count"], products[1]["floating_count"]) == (1, 2)


def test_policy_is_answered_only_after_the_commit(rig: Rig) -> None:
    """A change is not answered before its events are durable (same rule as REQUEST)."""
    outcome = rig.pending("policy", product={"index": 1}, value="GRAB UVIS")
    assert outcome == []
    rig.clock.advance(0)
    assert outcome[0]["policy"] == int(Policy.GRAB | Policy.UVIS)


def test_admin_changes_survive_a_restart(rig: Rig) -> None:
    """Policy, timeout, named users, exclusions and access levels persist in the state dir."""
    rig.call("policy", product=WIDGET, value="UVIS+")
    rig.call("timeout", product=WIDGET, seconds=600.0)
    rig.call("adduser", product=WIDGET, user="boss")
    rig.call("exhost", product=WIDGET, host="Evil")
    rig.call("adduacc", product=WIDGET, user="temp", level=2)
    again = rig.restart()
    try:
        widget = again.product(1)
        assert widget["policy"] == int(Policy.GRAB | Policy.UVIS)
        assert widget["timeout"] == 600.0
        assert widget["named_users"] == ["boss"]
        assert widget["excluded"] == ["evil"]
        assert widget["user_access"] == {"temp": 2}
    finally:
        again.stop()


def test_kill_takes_a_licence_back(rig: Rig) -> None:
    """kill by handle revokes the licence: its holder gets LOSTLICENCE at its UPDATE."""
    held = rig.grant()
    answer = rig.call("kill", handle=held.handle)
    assert answer["revoked"] == 1
    update = rig.root.engine.update(held.handle).result
    assert getattr(update, "status", None) is not None
    assert update.status.name == "LOSTLICENCE"  # type: ignore[union-attr]


def test_kill_is_answered_only_after_the_commit(rig: Rig) -> None:
    """kill answers once its revocation is durable: a crash after the answer keeps it.

    (Issue 10: checked, not a finding: the handler already waited for the commit.)
    """
    held = rig.grant()
    outcome = rig.pending("kill", handle=held.handle)
    assert outcome == [], "kill answered before its commit"
    assert rig.root.journal is not None
    _, logged = rig.root.journal.load()
    assert not [e for e in logged if isinstance(e, Revoked) and e.handle == held.handle]
    rig.clock.advance(0)
    assert outcome and outcome[0]["revoked"] == 1, outcome
    _, logged = rig.root.journal.load()
    assert [e for e in logged if isinstance(e, Revoked) and e.handle == held.handle]


def test_kill_by_product_and_licence_number(rig: Rig) -> None:
    """kill PRODUCT N takes back whichever licence holds number N."""
    rig.grant()
    second = rig.grant(user="ann")
    rig.call("kill", product={"index": 1}, index=second.indices[0])
    holders = rig.call("listu", product={"index": 1})["products"][0]["holders"]
    assert [holder["user"] for holder in holders] == ["jo"]


def test_reinit_revokes_everything_and_resets_admin_settings(rig: Rig) -> None:
    """reinit re-reads the permits, revokes all licences and forgets hqn_lsa settings."""
    rig.grant()
    rig.grant("Gadget")
    rig.call("timeout", product=WIDGET, seconds=120.0)
    rig.call("adduser", product=WIDGET, user="boss")
    rig.call("loglevel", text="full")
    answer = rig.call("reinit")
    assert answer["revoked"] == 2
    assert answer["served"] == 2
    widget = rig.product(1)
    assert widget["floating_used"] == 0
    assert widget["timeout"] == DEFAULT_TIMEOUT_SECONDS
    assert widget["named_users"] == []
    assert rig.root.switches.value == rig.root.switches.startup
    assert not (rig.tmp_path / "state" / "logswitches.json").exists()


def test_rmnode_and_ftol_revoke_the_products_licences(rig: Rig) -> None:
    """rmnode / ftol / ltof change the pools and revoke that product's licences only."""
    rig.grant()
    rig.grant("Gadget")
    answer = rig.call("ftol", product={"index": 2}, count=1)
    assert answer["revoked"] == 1
    gadget = rig.product(2)
    assert (gadget["node_count"], gadget["floating_count"]) == (2, 1)
    assert rig.product(1)["floating_used"] == 1
    rig.call("addnode", product={"index": 2}, address="10.0.0.9", unique_id=7)
    assert ["10.0.0.9", 7] in rig.product(2)["locked_nodes"]
    rig.call("rmnode", product={"index": 2}, address="10.0.0.9", unique_id=7)
    assert ["10.0.0.9", 7] not in rig.product(2)["locked_nodes"]


def test_unknown_product_is_refused_and_changes_nothing(rig: Rig) -> None:
    """A product not served here: BADPRODUCT with a message; nothing journalled."""
    before = rig.call("listp")
    error = rig.refused("policy", product={"publisher": "Nope", "product": "X"}, value="GRAB")
    assert error.name == "BADPRODUCT"
    assert "not served here" in error.message
    error = rig.refused("crashout", product={"index": 9}, seconds=60.0)
    assert error.name == "BADPRODUCT" and "listp" in error.message
    assert rig.call("listp") == before


def test_locked_policy_flag_cannot_change(tmp_path: Path) -> None:
    """A flag locked by the publisher cannot be changed: the change is ignored and the
    answer names the flag (the manual; it used to be refused as ILLEGAL)."""
    write_site(tmp_path, policy=int(Policy.GRAB) | int(Policy.GRAB) << 16)
    locked = Rig(tmp_path)
    try:
        answer = locked.call("policy", product={"index": 1}, value="GRAB-")
        assert answer["ignored"] == ["GRAB"] and answer["policy"] == 0x10001
        assert locked.call("policy", product={"index": 1}, value="UVIS+")["policy"] == (0x10041)
    finally:
        locked.stop()


def test_loglevel_changes_and_persists_the_switches(rig: Rig) -> None:
    """loglevel applies switch words to the live switches and keeps them on disk."""
    answer = rig.call("loglevel", text="exterr- domain")
    assert "EXTERR" not in answer["switches"].split()
    assert "DOMAIN" in answer["switches"].split()
    assert (rig.tmp_path / "state" / "logswitches.json").exists()
    error = rig.refused("loglevel", text="nonsense")
    assert error.name == "ILLEGAL" and "nonsense" in error.message


def test_unknown_command_lists_the_commands(rig: Rig) -> None:
    """An unknown command is refused with the list of commands."""
    error = rig.refused("frobnicate")
    assert error.name == "UNKNOWN_COMMAND" and "sinfo" in error.message


def test_sinfo_shows_the_permit_files_and_identity(rig: Rig) -> None:
    """sinfo names this server, the permit files read and what they hold."""
    info = rig.call("sinfo")
    assert info["address"] == "127.0.0.1" and info["unique_id_hex"] == "0x1234abcd"
    assert [Path(f["path"]).name for f in info["files"]] == ["test-hqn.permit"]
    assert info["files"][0]["products"] == [
        "Test Publisher Widget 1.0",
        "Test Publisher Gadget 1.0",
    ]
    assert info["served"] == 2


@pytest.mark.parametrize(
    ("text", "current", "locks", "expected"),
    [
        ("GRAB UVIS", 0x1, 0, 0x41),
        ("uvis+", 0x1, 0, 0x41),
        ("GRAB- ACCL+", 0x41, 0, 0x140),
        ("0x41", 0x1, 0, 0x41),
        ("0x10041", 0x1, 0x1, 0x41),
    ],
)
def test_parse_policy(text: str, current: int, locks: int, expected: int) -> None:
    """Policy text: names set exactly, NAME+/NAME- are relative, numbers are the word."""
    assert parse_policy(text, current, locks) == expected


@pytest.mark.parametrize("text", ["", "FOO", "0x20041", "0x100000000"])
def test_parse_policy_refuses_bad_text(text: str) -> None:
    """Unknown names, foreign lock bits and over-long numbers are ILLEGAL."""
    with pytest.raises(AdminError):
        parse_policy(text, 0x1, 0x1)


class _HandingOver:
    """A domain route whose member hands over to itself: every change is held."""

    domain_id = "the domain"

    def __init__(self) -> None:
        self.waiting: list[Deferred[bool]] = []

    def held(self) -> Deferred[bool]:
        """Hold (as `DomainRoute.held` does during a compaction)."""
        waiter: Deferred[bool] = Deferred()
        self.waiting.append(waiter)
        return waiter


@pytest.mark.parametrize("forwarded", [False, True])
def test_a_change_waits_out_a_hand_over_to_this_member(tmp_path: Path, forwarded: bool) -> None:
    """A change on a domain product while this member hands over to itself (a log
    compaction) waits and runs once it serves again, instead of being refused or
    forwarded; a change another member forwarded keeps its domain check on the rerun."""
    write_site(tmp_path)
    rig = Rig(tmp_path)
    route = _HandingOver()
    target = Target(rig.root.engine, route, "Test Publisher", "Widget")  # type: ignore[arg-type]
    seen: list[str | None] = []

    def change(args: Any, who: str) -> dict[str, Any]:
        seen.append(rig.handler._forwarded_domain)
        if len(seen) == 1:
            raise Forward(target)  # not serving yet
        return {"changed": who}

    rig.handler._commands["timeout"] = change
    outcome: list[Any] = []
    if forwarded:
        body = {"command": "timeout", "args": {}, "who": "admin"}
        rig.handler.handle_forwarded(
            "the domain", ipaddress.IPv4Address("127.0.0.2"), body
        ).addBoth(outcome.append)
    else:
        maybeDeferred(rig.handler.handle, "timeout", {}, "admin").addBoth(outcome.append)
    assert outcome == [] and len(route.waiting) == 1
    route.waiting[0].callback(True)
    assert len(outcome) == 1 and isinstance(outcome[0], dict), outcome
    expected = "the domain" if forwarded else None
    assert seen == [expected, expected]
    assert rig.handler._forwarded_domain is None
