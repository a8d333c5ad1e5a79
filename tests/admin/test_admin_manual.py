"""``hqn_lsa`` commands as the original manual describes them (issue 11): parsing in
`hqnlsd.admin.commands` and the handler on a real engine and journal (`task.Clock`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

from hqnlsd.admin import wire
from hqnlsd.admin.commands import UsageError, parse_command, policy_table
from hqnlsd.admin.handler import AdminError, plan_policy
from hqnlsd.admin.render import render
from hqnlsd.permits.policy import Policy
from hqnlsd.tls import PeerIdentity, Role
from tests.admin.test_admin_handler import ME, WIDGET, Rig, write_site
from tests.daemons import Publisher, make_permit, product_permit


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A started daemon core with two products (Widget: GRAB, 3 floating; Gadget: 1+2)."""
    write_site(tmp_path)
    made = Rig(tmp_path)
    yield made
    made.stop()


def policy_of(rig: Rig, index: int = 1) -> int:
    """The low 16 bits (flags) of product ``index``'s policy word."""
    return int(rig.product(index)["policy"]) & 0xFFFF


# -- 1. policy: MNEM turns on, MNEM- off, MNEM! locks; locked changes are ignored --------------


def test_bare_mnemonic_turns_one_flag_on_and_keeps_the_others(rig: Rig) -> None:
    """`policy p TIML` on a GRAB UVIS product gives GRAB TIML UVIS (it used to give TIML)."""
    rig.call("policy", product=WIDGET, value="UVIS")
    rig.call("policy", product=WIDGET, value="TIML")
    assert policy_of(rig) == int(Policy.GRAB | Policy.TIML | Policy.UVIS)
    rig.call("policy", product=WIDGET, value="GRAB-")
    assert policy_of(rig) == int(Policy.TIML | Policy.UVIS)


def test_bang_locks_a_flag_until_the_permit_is_re_read(rig: Rig) -> None:
    """`policy p UVIS!` locks UVIS: `UVIS-` is then ignored (the reply says so) while
    other words still apply; a re-read of the permits (SIGHUP) unlocks it."""
    answer = rig.call("policy", product=WIDGET, value="UVIS UVIS!")
    assert answer["locked"] == ["UVIS"]
    answer = rig.call("policy", product=WIDGET, value="UVIS- TIML")
    assert answer["ignored"] == ["UVIS"]
    assert "ignored" in render("policy", answer) and "UVIS" in render("policy", answer)
    assert policy_of(rig) == int(Policy.GRAB | Policy.TIML | Policy.UVIS)
    assert "UVIS" in rig.product(1)["admin_locked"]
    rig.root.reload()
    rig.clock.advance(0)
    assert rig.product(1)["admin_locked"] == []
    rig.call("policy", product=WIDGET, value="UVIS-")
    assert policy_of(rig) == int(Policy.GRAB | Policy.TIML)


def test_publisher_locked_flag_change_is_ignored_and_said(tmp_path: Path) -> None:
    """A change to a flag the publisher locked is ignored, not refused: the other words
    apply and the reply names the ignored flag."""
    write_site(tmp_path, policy=int(Policy.GRAB) | int(Policy.GRAB) << 16)
    locked = Rig(tmp_path)
    try:
        answer = locked.call("policy", product={"index": 1}, value="GRAB- UVIS")
        assert answer["ignored"] == ["GRAB"]
        assert answer["policy"] == 0x10041
        answer = locked.call("policy", product={"index": 1}, value="0x0")
        assert answer["ignored"] == ["GRAB"] and answer["policy"] == 0x10001
    finally:
        locked.stop()


@pytest.mark.parametrize(
    ("text", "current", "locks", "admin", "flags", "lock", "ignored"),
    [
        ("TIML", 0x41, 0, 0, 0x45, 0, []),
        ("TIML-", 0x45, 0, 0, 0x41, 0, []),
        ("TIML!", 0x45, 0, 0, 0x45, 0x4, []),
        ("GRAB- UVIS", 0x1, 0x1, 0, 0x41, 0, ["GRAB"]),
        ("UVIS-", 0x41, 0, 0x40, 0x41, 0, ["UVIS"]),
        ("UVIS! UVIS-", 0x41, 0, 0, 0x41, 0x40, ["UVIS"]),
        ("0x4", 0x41, 0, 0x40, 0x44, 0, ["UVIS"]),
        ("GRAB", 0x1, 0, 0, 0x1, 0, []),
    ],
)
def test_plan_policy(
    text: str, current: int, locks: int, admin: int, flags: int, lock: int, ignored: list[str]
) -> None:
    """The manual's policy words, relative to the current flags and both kinds of lock."""
    plan = plan_policy(text, current, locks, admin)
    assert (plan.flags, plan.lock, plan.ignored) == (flags, lock, ignored)


@pytest.mark.parametrize("text", ["FOO", "TIML?", "TIML!-", "0x20041"])
def test_plan_policy_refuses_bad_words(text: str) -> None:
    """Unknown names and suffixes, and foreign lock bits, are ILLEGAL."""
    with pytest.raises(AdminError):
        plan_policy(text, 0x1, 0x1, 0)


def test_policy_without_arguments_lists_every_policy_and_mnemonic() -> None:
    """`policy` alone is answered by hqn_lsa itself: every flag, its bit and meaning."""
    planned = parse_command(["policy"])
    assert planned.command.kind == "local" or planned.args == {"list": True}
    text = policy_table()
    for flag in Policy:
        assert flag.name is not None and flag.name in text
    assert "MNEM!" in text


def test_policy_with_a_product_only_shows_it() -> None:
    """`policy 1` asks for the product's flags (no value)."""
    assert parse_command(["policy", "1"]).args == {"product": {"index": 1}, "value": None}


# -- 2. crashout / timeout: a bare number is minutes ---------------------------------------


@pytest.mark.parametrize(
    ("word", "seconds"),
    [("10", 600.0), ("1.5", 90.0), ("10m", 600.0), ("90s", 90.0), ("1h", 3600.0), ("2H", 7200.0)],
)
def test_times_are_minutes_unless_a_unit_is_given(word: str, seconds: float) -> None:
    """`crashout p 10` and `timeout p 10` mean 10 minutes, as in the manual; 90s, 10m, 1h."""
    assert parse_command(["crashout", "1", word]).args == {
        "product": {"index": 1},
        "seconds": seconds,
    }
    assert parse_command(["t", "1", word]).args["seconds"] == seconds


@pytest.mark.parametrize("word", ["ten", "10x", "-5", ""])
def test_bad_times_are_refused(word: str) -> None:
    """Anything but a number with an optional s/m/h unit is a usage error."""
    with pytest.raises(UsageError):
        parse_command(["timeout", "1", word])


def test_timeout_in_minutes_reaches_the_engine_and_listp(rig: Rig) -> None:
    """`timeout 1 10` sets 600 s; listp+ shows it as 10m."""
    rig.call("timeout", **parse_command(["timeout", "1", "10"]).args)
    assert rig.product(1)["timeout"] == 600.0
    assert "10m" in render("listp+", rig.call("listp"))


# -- 3. several items per command -------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "requests"),
    [
        (["kill", "1", "2", "3"], [{"index": 2}, {"index": 3}]),
        (["kill", "abcdef0123"], [{"handle": "abcdef0123"}]),
        (["kill", "1234567890123456"], [{"handle": "1234567890123456"}]),
        (
            ["n+", "2", "10.0.0.9", "0x7", "10.0.0.10", "8"],
            [
                {"address": "10.0.0.9", "unique_id": 7},
                {"address": "10.0.0.10", "unique_id": 8},
            ],
        ),
        (["n-", "2", "10.0.0.9", "10.0.0.10"], [{"address": "10.0.0.9"}, {"address": "10.0.0.10"}]),
        (["e+", "1", "boxa", "boxb"], [{"host": "boxa"}, {"host": "boxb"}]),
        (["e-", "1", "boxa", "boxb"], [{"host": "boxa"}, {"host": "boxb"}]),
        (["ul+", "1", "ann", "bob"], [{"user": "ann"}, {"user": "bob"}]),
        (["ul-", "1", "ann", "bob"], [{"user": "ann"}, {"user": "bob"}]),
        (
            ["ua+", "1", "ann", "3", "bob", "4"],
            [{"user": "ann", "level": 3}, {"user": "bob", "level": 4}],
        ),
        (["ua-", "1", "ann", "bob"], [{"user": "ann"}, {"user": "bob"}]),
        (
            ["ga+", "1", "staff", "2", "ops", "5"],
            [{"group": "staff", "level": 2}, {"group": "ops", "level": 5}],
        ),
        (["ga-", "1", "staff", "ops"], [{"group": "staff"}, {"group": "ops"}]),
    ],
)
def test_commands_take_several_items(words: list[str], requests: list[dict[str, Any]]) -> None:
    """The manual's `k p n [n ...]`, `n+ p host hostid [host hostid ...]`, `n- p host
    [host ...]`, `e+`/`e-`, `ul+`/`ul-`, `ua+ p user lev [user lev ...]` and the others:
    one request per item, each naming the product."""
    planned = parse_command(words)
    product = {"index": int(words[1])} if words[1].isdigit() else None
    expected = [
        {**({"product": product} if product and "handle" not in r else {}), **r} for r in requests
    ]
    if words[0] == "kill" and len(words) > 2:
        expected = [{"product": {"index": 1}, "index": r["index"]} for r in requests]
    assert list(planned.requests) == expected
    assert planned.args == expected[0]


@pytest.mark.parametrize(
    "words",
    [
        ["kill", "1"],
        ["kill", "1", "x"],
        ["n+", "2"],
        ["ua+", "1", "ann"],
        ["ua+", "1", "ann", "3", "bob"],
        ["e+", "1"],
    ],
)
def test_incomplete_item_lists_are_usage_errors(words: list[str]) -> None:
    """A missing host, level or licence number is refused before anything is sent."""
    with pytest.raises(UsageError):
        parse_command(words)


# -- 4. ltof / rmnode: only what ftol / addnode made -----------------------------------------


def test_ltof_and_rmnode_refuse_the_permits_own_and_change_nothing(rig: Rig) -> None:
    """Gadget's permit has 1 node-locked licence: ltof of it is refused, and so is rmnode
    of a host the permit lists; nothing changes and no licence is revoked."""
    held = rig.grant("Gadget")
    before = rig.call("listp")
    error = rig.refused("ltof", product={"index": 2}, count=1)
    assert error.name == "ILLEGAL" and "ftol" in error.message
    error = rig.refused("rmnode", product={"index": 2}, address="10.0.0.77")
    assert error.name == "ILLEGAL" and "addnode" in error.message
    assert rig.call("listp") == before
    assert rig.root.engine.update(held.handle).result.__class__.__name__ == "UpdateAck"
    rig.call("ftol", product={"index": 2}, count=1)
    rig.call("ltof", product={"index": 2}, count=1)
    rig.call("addnode", product={"index": 2}, address="10.0.0.9", unique_id=7)
    rig.call("rmnode", product={"index": 2}, address="10.0.0.9")
    assert rig.product(2)["node_count"] == 1 and rig.product(2)["locked_nodes"] == []


# -- 5. listp PRODUCT; product numbers stable across re-reads --------------------------------


def rewrite_permit(rig: Rig, *products: str) -> None:
    """Replace the site's permit by one of these products and re-read (SIGHUP)."""
    for old in (rig.tmp_path / "keys").iterdir():
        old.unlink()  # a fresh publisher key: the re-read takes the new .pub too
    publisher = Publisher.create(rig.tmp_path / "keys")
    permit = make_permit([ME], [product_permit(name) for name in products])
    publisher.write_permit(rig.tmp_path / "permits" / "test-hqn.permit", permit)
    rig.root.reload()
    rig.clock.advance(0)


def numbers(rig: Rig) -> dict[str, int]:
    """Product name -> number, as listp shows them."""
    return {p["product"]: p["index"] for p in rig.call("listp")["products"]}


def test_product_numbers_stay_stable_across_re_reads(rig: Rig) -> None:
    """Widget is 1 and Gadget 2; with Widget gone, Gadget stays 2 and `p 1` hits nothing;
    a new product gets a new number; Widget back gets 1 again."""
    assert numbers(rig) == {"Widget": 1, "Gadget": 2}
    rewrite_permit(rig, "Gadget")
    assert numbers(rig) == {"Gadget": 2}
    error = rig.refused("policy", product={"index": 1}, value="UVIS")
    assert error.name == "BADPRODUCT"
    assert rig.call("listp", product={"index": 2})["products"][0]["product"] == "Gadget"
    rewrite_permit(rig, "Gizmo", "Gadget")
    assert numbers(rig) == {"Gadget": 2, "Gizmo": 3}
    rewrite_permit(rig, "Gadget", "Widget", "Gizmo")
    assert numbers(rig) == {"Widget": 1, "Gadget": 2, "Gizmo": 3}
    assert [p["index"] for p in rig.call("listp")["products"]] == [1, 2, 3]


def test_listp_of_one_product_gives_its_full_details(rig: Rig) -> None:
    """`listp p`: only that product, with the full details (as listp+ shows them)."""
    planned = parse_command(["listp", "2"])
    assert planned.args == {"product": {"index": 2}}
    answer = rig.call("listp", **planned.args)
    assert [p["product"] for p in answer["products"]] == ["Gadget"]
    text = render("listp+", answer)
    assert "Gadget" in text and "Widget" not in text
    assert "crashout" in text and "timeout" in text and "locked nodes" in text
    assert parse_command(["lp"]).args == {}


# -- 6. lk LOCK checks a typed lock string ----------------------------------------------------

GOOD_LOCK = "0123456789abcdef " + "A" * 85 + "Q"


def test_lk_accepts_a_well_formed_lock_string() -> None:
    """`lk "LOCK: KEYID SIGNATURE"` (or without LOCK:) says the lock is well formed."""
    from hqnlsd.admin.commands import check_lock

    for words in (GOOD_LOCK.split(), ["LOCK:", *GOOD_LOCK.split()], [f"LOCK: {GOOD_LOCK}"]):
        answer = check_lock(words)
        assert answer["problems"] == [] and answer["key_id"] == "0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0123456789abcdeg " + "A" * 85 + "Q", "key id"),
        ("0123456789abcde " + "A" * 85 + "Q", "key id"),
        ("0123456789abcdef " + "A" * 84 + "Q", "86"),
        ("0123456789abcdef " + "A" * 40 + "+" + "A" * 44 + "Q", "'+'"),
        ("0123456789abcdef " + "A" * 85 + "B", "canonical"),
        ("0123456789abcdef", "two"),
    ],
)
def test_lk_names_what_is_wrong_with_a_typed_lock(text: str, says: str) -> None:
    """A mistyped lock is named precisely (which part, which character)."""
    from hqnlsd.admin.commands import check_lock

    problems = check_lock(text.split())["problems"]
    assert problems and any(says in problem for problem in problems), problems


def test_policy_word_decoding_stays_available_as_pw() -> None:
    """The old lk (decoding a policy word) is `policyword` / `pw`."""
    assert parse_command(["pw", "0x10041"]).command.name == "policyword"
    assert parse_command(["lk", "x"]).command.name == "lk"


# -- 7. the smaller ones -----------------------------------------------------------------------


def test_listu_shows_each_holders_access_level(rig: Rig) -> None:
    """listu has an access-level column: the user's level, else the group's, else 8."""
    rig.call("policy", product=WIDGET, value="ACCL")
    rig.call("adduacc", product=WIDGET, user="jo", level=3)
    rig.grant(user="jo")
    rig.grant(user="ann")
    answer = rig.call("listu", product=WIDGET)
    levels = {h["user"]: h["access"] for h in answer["products"][0]["holders"]}
    assert levels == {"jo": 3, "ann": 8}
    text = render("listu", answer)
    assert "access" in text.splitlines()[1]


def test_access_levels_while_accl_is_off_are_kept_with_a_warning(rig: Rig) -> None:
    """ua+ / ga+ while ACCL is off are stored, and the reply warns that they do nothing
    until ACCL is turned on; with ACCL on there is no warning."""
    answer = rig.call("adduacc", product=WIDGET, user="jo", level=3)
    assert "ACCL is off" in answer["message"]
    answer = rig.call("addgacc", product=WIDGET, group="staff", level=2)
    assert "ACCL is off" in answer["message"]
    rig.call("policy", product=WIDGET, value="ACCL")
    assert "ACCL" not in rig.call("adduacc", product=WIDGET, user="jo", level=4)["message"]
    assert "USRL is off" in rig.call("adduser", product=WIDGET, user="jo")["message"]


@pytest.mark.parametrize(
    ("words", "text"),
    [
        (["lg", "5"], "PRODUCT"),
        (["lg", "10-"], "EXTERR-"),
        (["lg", "1", "11+"], "WARNING DOMAIN+"),
        (["lg", "exterr-", "0x3"], "exterr- 0x3"),
    ],
)
def test_loglevel_numbers_are_switch_numbers(words: list[str], text: str) -> None:
    """`lg 5` turns on switch 5 (PRODUCT; the original numbers them from 1), `10-` turns
    EXTERR off; a hex word stays a whole mask."""
    assert parse_command(words).args == {"text": text}


def test_loglevel_number_out_of_range_is_a_usage_error() -> None:
    """There are eleven switches."""
    with pytest.raises(UsageError):
        parse_command(["lg", "12"])


def test_loglevel_without_arguments_lists_every_switch_with_its_state(rig: Rig) -> None:
    """`lg` alone: each switch (number, name) with this server's state, and the presets."""
    answer = rig.call("loglevel")
    text = render("loglevel", answer)
    for name in ("WARNING", "EXTERR", "DOMAIN", "presets"):
        assert name in text
    assert any("EXTERR" in line and "on" in line.split() for line in text.splitlines())
    assert any("DOMAIN" in line and "off" in line.split() for line in text.splitlines())


# -- 8. reread and down (what lmutil / rlmutil users expect) --------------------------------


def test_reread_reads_new_permits_and_keeps_licences(rig: Rig) -> None:
    """`reread`, like SIGHUP: a new product is served, a held licence of an unchanged
    product is kept (reinit would revoke it)."""
    held = rig.grant()
    permits = rig.tmp_path / "permits" / "test-hqn.permit"
    text = permits.read_text("utf-8")
    for old in (rig.tmp_path / "keys").iterdir():
        old.unlink()
    publisher = Publisher.create(rig.tmp_path / "keys")
    permit = make_permit(
        [ME],
        [
            product_permit("Widget", floating_count=3),
            product_permit("Gadget", node_count=1, floating_count=2),
            product_permit("Gizmo"),
        ],
    )
    publisher.write_permit(permits, permit)
    assert permits.read_text("utf-8") != text
    answer = rig.call("reread")
    assert answer["revoked"] == 0 and answer["served"] == 3
    assert "Gizmo" in numbers(rig)
    assert rig.root.engine.update(held.handle).result.__class__.__name__ == "UpdateAck"


def test_down_is_refused_over_tls_and_stops_the_daemon_locally(rig: Rig) -> None:
    """`down` stops the daemon when asked on its own machine (the admin socket); from a
    remote admin (TLS) it is refused and nothing stops."""
    stopped: list[bool] = []
    rig.clock.stop = lambda: stopped.append(True)  # type: ignore[attr-defined]
    outcome: list[Any] = []
    from twisted.internet.defer import maybeDeferred

    maybeDeferred(
        rig.handler.handle, "down", {}, "alice (TLS, sha256 0)", local=False
    ).addBoth(outcome.append)
    rig.clock.advance(1)
    assert isinstance(outcome[0].value, AdminError) and "remote" in outcome[0].value.message
    assert stopped == []
    answer = rig.call("down")
    assert "stopping" in answer["message"]
    rig.clock.advance(1)
    assert stopped == [True]
    planned = parse_command(["down"])
    assert planned.command.asks


def _admin(name: str, *, allow_down: bool) -> PeerIdentity:
    """The identity of a remote admin (as `hqnlsd.tls.classify_certificate` gives it)."""
    return PeerIdentity(Role.ADMIN, None, name, "0" * 64, allow_down=allow_down)


def test_down_over_tls_needs_the_admin_certificates_leave(rig: Rig) -> None:
    """Over TLS `down` is refused, naming the way out, for an admin certificate without
    the down usage (nothing stops); with it, the daemon stops as from the admin socket."""
    from twisted.internet.defer import maybeDeferred

    stopped: list[bool] = []
    rig.clock.stop = lambda: stopped.append(True)  # type: ignore[attr-defined]

    def remote(peer: PeerIdentity) -> Any:
        outcome: list[Any] = []
        maybeDeferred(
            rig.handler.handle, "down", {}, f"{peer} (TLS)", local=False, peer=peer
        ).addBoth(outcome.append)
        rig.clock.advance(1)
        return outcome[0]

    refusal = remote(_admin("alice", allow_down=False))
    assert isinstance(refusal, Failure) and isinstance(refusal.value, AdminError)
    assert refusal.value.name == wire.NOT_ALLOWED
    assert "admin alice" in refusal.value.message
    assert "hqn_ca admin CA NAME --allow-down" in refusal.value.message
    assert stopped == []
    # A member's identity never stops a daemon, whatever it carries.
    member = PeerIdentity(Role.MEMBER, ME.address, None, "0" * 64, allow_down=True)
    assert isinstance(remote(member), Failure)
    assert stopped == []
    answer = remote(_admin("carol", allow_down=True))
    assert "stopping" in answer["message"]
    rig.clock.advance(1)
    assert stopped == [True]
