"""End to end: a member whose stored domain state is damaged, and its recovery.

Issue 10: a daemon whose stored state for one domain cannot be restored used to
die during start-up (``DomainNode.start`` raised), taking its single-host
products down with it (a crash loop under systemd); the only way out was to
delete the domain's state file by hand. Now it starts, serves everything else,
reports the damaged domain (log, ``sinfo``, metrics), takes no part in the
domain's votes, and ``hqn_lsa recover N`` brings the member back safely: it
returns as an *amnesiac* that votes again only once a view decided after the
recovery readmits it (docs/domains.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.admin.client import AdminClient
from hqnlsd.domain.runtime import domain_id
from hqnlsd.domain.sqlstore import domain_file_name
from hqnlsd.protocols.replies import Err, Ok
from hqnlsd.status import Status
from tests.daemons import (
    REPO_ROOT,
    Daemon,
    DaemonHarness,
    is_grant,
    make_permit,
    product_permit,
    request_licence,
    wait_for,
)
from tests.domain.test_e2e_domain import (
    ELECTION_BOUND,
    FAILOVER_BOUND,
    PUBLISHER,
    VERSION,
    call,
    daemons,  # noqa: F401 (the fixture)
    make_domain,
    request,
)

pytestmark = pytest.mark.e2e

SOLO = "Solo Widget"

#: Stored states the engine cannot restore (what the issue saw, and its cousins).
DAMAGE: dict[str, dict[str, str]] = {
    # a view of epoch 10^20 naming a rank that does not exist, with a null state
    "absurd view": {
        "view": json.dumps({"epoch": 10**20, "members": [1, 2, 3, 7], "origin": [1, 1]}),
        "base": "null",
    },
    "garbage json": {"view": "{this is not json", "base": "[1, 2"},
    # more digits than Python's json module will read (int max str digits)
    "huge integer": {"base": "[" + "9" * 5000 + "]"},
    # the whole file overwritten: SQLite cannot even open it
    "not a database": {"file": "this was a domain database once\n" * 200},
}


def add_solo_permit(daemons: DaemonHarness, n: int) -> None:  # noqa: F811
    """A single-host permit served by daemon ``n`` alone (product `SOLO`)."""
    solo = product_permit(SOLO, publisher=PUBLISHER, version=VERSION, floating_count=2)
    daemons.write_permit(make_permit([daemons.host(n)], [solo], number=2), "solo-hqn.permit")


def solo_request(daemon: Daemon, token: str) -> Ok | Err:
    """REQUEST the single-host product from ``daemon``."""
    return request_licence(daemon, token, publisher=PUBLISHER, product=SOLO, version=VERSION)


def domain_db(daemons: DaemonHarness, daemon: Daemon) -> Path:  # noqa: F811
    """The domain storage file of the three-member domain in ``daemon``'s state dir."""
    key = domain_id([daemons.host(n) for n in (1, 2, 3)])
    return daemon.state_dir / domain_file_name(key)


def damage(path: Path, columns: dict[str, str]) -> None:
    """Overwrite columns of the stored member row, or the whole file (the daemon
    is stopped)."""
    if "file" in columns:
        path.write_text(columns["file"], "utf-8")
        return
    db = sqlite3.connect(str(path))
    try:
        for column, text in columns.items():
            assert column in ("view", "base")
            db.execute(f"UPDATE member SET {column} = ? WHERE id = 1", (text,))
        db.commit()
    finally:
        db.close()


def admin(daemon: Daemon, command: str, **args: Any) -> dict[str, Any]:
    """One admin command on ``daemon``'s local socket; the whole answer."""
    client = AdminClient.unix(daemon.state_dir / "admin.sock", timeout=20.0)
    try:
        return client.call(command, args)
    finally:
        client.close()


def hqn_lsa(daemon: Daemon, *args: str) -> tuple[int, str]:
    """hqn_lsa (a real process) on ``daemon``'s admin socket: exit code and output."""
    argv = [
        sys.executable,
        "-m",
        "hqnlsd.tools.lsa",
        "--socket",
        str(daemon.state_dir / "admin.sock"),
        "--hosts",
        str(daemon.hosts_file),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HQN_LSA_HISTORY": "/dev/null"}
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout + done.stderr


def sinfo_domain(daemon: Daemon) -> dict[str, Any]:
    """The one domain of ``sinfo`` on ``daemon``."""
    answer = admin(daemon, "sinfo")
    assert answer.get("ok"), answer
    (domain,) = answer["result"]["domains"]
    return dict(domain)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_domain_state_does_not_stop_the_daemon(
    daemons: DaemonHarness,  # noqa: F811
    kind: str,
) -> None:
    """A member whose domain storage cannot be restored starts, serves its
    single-host product, answers NOTVERIFIED naming the recovery command for the
    domain's product, and reports the damage in the log and sinfo (the metric:
    tests/domain/test_domain_config.py)."""
    _first, _second, third = make_domain(daemons)
    add_solo_permit(daemons, 3)
    third.start_and_wait()  # creates its domain storage (epoch 0)
    third.terminate()
    damage(domain_db(daemons, third), DAMAGE[kind])

    third.start_and_wait()
    assert is_grant(solo_request(third, "solo")), third.log_tail()
    refused = request(third, "domain")
    assert isinstance(refused, Err) and refused.status is Status.NOTVERIFIED, refused
    assert "damaged" in (refused.msg or "") and "recover" in (refused.msg or ""), refused
    domain = sinfo_domain(third)
    assert domain["damaged"], domain
    assert domain["role"] == "damaged", domain
    code, text = hqn_lsa(third, "-sinfo")
    assert code == 0 and "here is DAMAGED" in text and "recover 1" in text, text
    log = third.log_text()
    assert log.count("state for this domain is damaged and was not used") == 1, third.log_tail()


@pytest.mark.parametrize("kind", ["absurd view", "not a database"])
def test_recover_a_damaged_member_loses_no_licence(
    daemons: DaemonHarness,  # noqa: F811
    kind: str,
) -> None:
    """Three members grant licences; member 3's storage is damaged while it is
    stopped; it starts (serving its single-host product) with the domain reported
    damaged; ``recover`` readmits it; a SIGKILL of the primary afterwards loses
    no licence."""
    first, second, third = make_domain(daemons)
    add_solo_permit(daemons, 3)
    daemons.start_all(first, second, third)
    handles = []
    for token in ("one", "two"):
        granted, _ = wait_for(
            f"grant {token}", lambda t=token: request(first, t), is_grant, ELECTION_BOUND
        )
        handles.append(granted.get("handle") or "")
    wait_for(
        "hqnserver3 is in the view",
        lambda: Ok.of(view=",".join(sinfo_domain(third)["view"])),
        lambda reply: reply.get("view") == "127.0.0.1,127.0.0.2,127.0.0.3",
        ELECTION_BOUND,
    )
    third.terminate()
    damage(domain_db(daemons, third), DAMAGE[kind])
    third.start_and_wait()
    assert is_grant(solo_request(third, "solo")), third.log_tail()
    assert sinfo_domain(third)["damaged"]

    # Recovery with the real hqn_lsa: without -y and no terminal it asks, so refuses.
    code, text = hqn_lsa(third, "-recover", "1")
    assert code != 0 and "-y" in text, text
    assert sinfo_domain(third)["damaged"]

    # The stored epoch is unreadable, so it is refused until a peer has shown
    # how far the domain has got (its bound on what this member voted in).
    def recover() -> Ok | Err:
        code, text = hqn_lsa(third, "-y", "-recover", "1")
        if code == 0:
            return Ok.of(text=text)
        assert "no peer" in text, text
        return Err.of(Status.NOTVERIFIED, text)

    recovered, _ = wait_for("recover", recover, lambda r: isinstance(r, Ok), ELECTION_BOUND)
    assert "hqnserver3 recovered" in (recovered.get("text") or ""), recovered
    again = admin(third, "recover", domain=1)
    assert not again.get("ok") and "not damaged" in again["message"], again
    _, took = wait_for(
        "hqnserver3 is readmitted to the view",
        lambda: Ok.of(
            view=",".join(sinfo_domain(third)["view"]),
            amnesiac=str(sinfo_domain(third).get("amnesiac")),
        ),
        lambda reply: (
            reply.get("view") == "127.0.0.1,127.0.0.2,127.0.0.3"
            and reply.get("amnesiac") in ("None", "False")
        ),
        ELECTION_BOUND * 2,
    )
    print(f"readmitted {took:.1f} s after the recover command")
    assert not sinfo_domain(third)["damaged"]
    if kind == "not a database":  # set aside, never deleted
        assert list(third.state_dir.glob(domain_db(daemons, third).name + ".damaged-*"))
    assert "no longer amnesiac" in third.log_text(), third.log_tail()

    # A failover now keeps every licence: hqnserver2 takes over with 3's help.
    first.kill()
    wait_for("a backup takes over", lambda: request(second, "three"), is_grant, FAILOVER_BOUND)
    for handle in handles:
        update = call(second, "UPDATE", handle)
        assert isinstance(update, Ok) and update.get("handle") == handle, update
    full = request(second, "four")
    assert isinstance(full, Err) and full.status is Status.NOLICENCES, full
