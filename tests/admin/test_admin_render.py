"""`hqnlsd.admin.render`: the text ``hqn_lsa`` prints for server-domain results."""

from __future__ import annotations

from typing import Any

from hqnlsd.admin.render import render


def listed(**extra: Any) -> dict[str, Any]:
    """One listp row (this server's own product unless ``extra`` says otherwise)."""
    row = {
        "index": 1,
        "publisher": "P",
        "product": "Q",
        "version": "1.0",
        "locked_used": 0,
        "node_count": 0,
        "floating_used": 1,
        "floating_count": 3,
        "policy": 1,
        "policy_text": "GRAB",
        "expiry": "2099-12-31",
        "domain": None,
        "role": None,
        "primary": None,
        "holders": [],
    }
    row.update(extra)
    return row


def test_listp_says_who_serves_each_product() -> None:
    """Own products: this server; domain products: the domain, the role here, the primary."""
    own = listed()
    backup = listed(index=2, domain="10.0.0.1 10.0.0.2", role="backup", primary="10.0.0.1")
    primary = listed(index=3, domain="10.0.0.1 10.0.0.2", role="primary", primary="10.0.0.1")
    lines = render("listp", {"products": [own, backup, primary]}).splitlines()
    assert "served by" in lines[0]
    assert lines[1].rstrip().endswith("this server")
    assert lines[2].rstrip().endswith("domain 10.0.0.1 10.0.0.2 (backup here; primary 10.0.0.1)")
    assert lines[3].rstrip().endswith("domain 10.0.0.1 10.0.0.2 (primary here)")
    users = render("listu", {"products": [backup]})
    assert users.startswith("2. P Q 1.0: 0 holder(s) [domain 10.0.0.1 10.0.0.2 (backup here")


def test_a_forwarded_change_says_where_it_was_made() -> None:
    """The answer of a change a backup forwarded names the primary that made it."""
    text = render("adduser", {"message": "bob added", "forwarded_to": "10.0.0.1"})
    assert text == "bob added (done on the domain's acting primary 10.0.0.1)"
    assert render("adduser", {"message": "bob added"}) == "bob added"


def test_reinit_lists_each_domain() -> None:
    """reinit shows each domain's outcome, and says plainly when one was not reinitialised."""
    text = render(
        "reinit",
        {
            "message": "reinitialised; 0 licence(s) revoked; 1 product(s) served",
            "errors": [],
            "domains": [
                {"domain": "a b", "revoked": 2, "served": 1, "on": "a"},
                {"domain": "c d", "error": "NOTVERIFIED: no acting primary"},
            ],
        },
    )
    assert "domain a b: 2 licence(s) revoked, 1 product(s) served (on its primary a)" in text
    assert "domain c d: NOT reinitialised: NOTVERIFIED: no acting primary" in text


def test_sinfo_shows_domains_and_peer_links() -> None:
    """sinfo: each domain's role, epoch, view and primary; a table of peer links."""
    info = {
        "version": "1",
        "address": "10.0.0.2",
        "unique_id_hex": "0x1",
        "role": "member of 1 server domain(s): backup",
        "started": 0.0,
        "now": 1.0,
        "state_dir": "/s",
        "journal_healthy": True,
        "served": 0,
        "held": 0,
        "log_switches": "DEFAULT",
        "permit_source": "-p",
        "searched": [],
        "search_problems": [],
        "files": [],
        "domains": [
            {
                "domain": "10.0.0.1 10.0.0.2",
                "rank": 2,
                "role": "backup",
                "epoch": 3,
                "view": ["10.0.0.1", "10.0.0.2"],
                "primary": "10.0.0.1",
                "primary_rank": 1,
                "products": 1,
                "held": 2,
                "takeovers": 0,
            }
        ],
        "peers": [
            {
                "address": "10.0.0.1",
                "up": True,
                "inbound": True,
                "last_seen_ago": 0.25,
                "rtt": 0.0012,
                "connects": 1,
            }
        ],
    }
    text = render("sinfo", info)
    assert (
        "domain 10.0.0.1 10.0.0.2: hqnserver2 here is BACKUP, epoch 3, view 10.0.0.1 10.0.0.2, "
        "primary hqnserver1 10.0.0.1; 1 product(s), 2 licence(s) held"
    ) in text
    peer_line = next(line for line in text.splitlines() if line.strip().startswith("10.0.0.1"))
    assert peer_line.split() == ["10.0.0.1", "up", "yes", "0.2s", "ago", "1.2", "ms", "1"]


def test_sinfo_shows_a_damaged_domain_and_the_command_that_recovers_it() -> None:
    """A damaged domain: its number, the reason and the exact recover command; an
    amnesiac (recovered, not yet readmitted) member says so too."""
    base = {
        "version": "1",
        "address": "10.0.0.3",
        "unique_id_hex": "0x1",
        "role": "member of 2 server domain(s): notverified, notverified",
        "started": 0.0,
        "now": 1.0,
        "state_dir": "/s",
        "journal_healthy": True,
        "served": 1,
        "held": 0,
        "log_switches": "DEFAULT",
        "permit_source": "-p",
        "searched": [],
        "search_problems": [],
        "files": [],
        "peers": [],
    }
    common = {"rank": 3, "epoch": 0, "view": [], "primary": None, "primary_rank": None}
    domains = [
        {
            **common,
            "number": 1,
            "domain": "10.0.0.1 10.0.0.2 10.0.0.3",
            "role": "damaged",
            "damaged": "ValueError: bad view",
            "amnesiac": None,
            "products": 0,
            "held": 0,
        },
        {
            **common,
            "number": 2,
            "domain": "10.0.0.3 10.0.0.4",
            "role": "notverified",
            "damaged": None,
            "amnesiac": 7,
            "products": 1,
            "held": 0,
        },
    ]
    text = render("sinfo", {**base, "domains": domains})
    assert (
        "[1] domain 10.0.0.1 10.0.0.2 10.0.0.3: hqnserver3 here is DAMAGED: its stored state "
        "for this domain cannot be used (ValueError: bad view); it takes no part in the domain "
        "until you run: hqn_lsa -s 10.0.0.3 recover 1"
    ) in text
    assert "[2] domain 10.0.0.3 10.0.0.4: hqnserver3 here is NOTVERIFIED" in text
    assert "AMNESIAC (recovered): votes again once a view after epoch 7 readmits it" in text
    done = render(
        "recover",
        {"domain": "10.0.0.1 10.0.0.2 10.0.0.3", "rank": 3, "epoch_bound": 7, "damaged": None},
    )
    assert done.startswith("domain 10.0.0.1 10.0.0.2 10.0.0.3: hqnserver3 recovered")


def test_recover_command_parses_and_asks_first() -> None:
    """``recover N`` sends the domain number and asks for confirmation unless -y."""
    from hqnlsd.admin.commands import UsageError, find, parse_command

    planned = parse_command(["recover", "2"])
    assert (planned.command.request, planned.args) == ("recover", {"domain": 2})
    command = find("rc")
    assert command is not None and command.name == "recover" and command.asks
    assert not command.revokes
    for words in (["recover"], ["recover", "x"], ["recover", "1", "2"]):
        try:
            parse_command(words)
        except UsageError:
            continue
        raise AssertionError(f"{words} parsed")


def test_sinfo_names_the_members_a_domain_waits_for() -> None:
    """sinfo of a member that reaches no quorum of its view says whom it waits for."""
    domain = {
        "domain": "10.0.0.1 10.0.0.2 10.0.0.3",
        "rank": 3,
        "role": "lostmaster",
        "epoch": 3,
        "view": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "primary": "10.0.0.1",
        "primary_rank": 1,
        "waiting": [{"rank": 1, "address": "10.0.0.1"}, {"rank": 2, "address": "10.0.0.2"}],
        "products": 1,
        "held": 0,
        "takeovers": 0,
    }
    info = {
        "version": "1",
        "address": "10.0.0.3",
        "unique_id_hex": "0x1",
        "role": "member of 1 server domain(s): lostmaster",
        "started": 0.0,
        "now": 1.0,
        "state_dir": "/s",
        "journal_healthy": True,
        "served": 0,
        "held": 0,
        "log_switches": "DEFAULT",
        "permit_source": "-p",
        "searched": [],
        "search_problems": [],
        "files": [],
        "domains": [domain],
        "peers": [],
    }
    lines = render("sinfo", info).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("domain 10.0.0.1"))
    assert "hqnserver3 here is LOSTMASTER" in lines[at]
    assert lines[at + 1] == (
        "  waiting for hqnserver1 at 10.0.0.1, hqnserver2 at 10.0.0.2: this member reaches "
        "no quorum of its view, so the domain cannot elect a primary until they are back"
    )
    quiet = render("sinfo", {**info, "domains": [{**domain, "waiting": []}]})
    assert "waiting for" not in quiet
