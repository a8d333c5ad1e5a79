"""End to end: hostile clients against a real daemon, the short CI versions of
bench/hostile.py (issue 12).

The daemon is `tests.hostile.make_target`'s: hqnserver1 on 127.0.0.1 with admin
TLS, metrics, a peer listener and the single-host product ``Probe``. During
every attack a `tests.hostile.Prober` takes and releases a ``Probe`` licence
with the client library from a fresh connection, and asks ``sinfo`` through
the local admin socket with hqn_lsa's client, every second. Every test asserts
the daemon did not exit, and that both were served throughout (every round,
each within the prober's deadline), plus what its attack is about: log bytes
and replies bounded, silent connections closed, memory bounded, no traceback.

Every listener's timeouts are set to LISTENER_TIMEOUT through the ``[limits]``
table of a configuration file; the bounds are constants of `tests.hostile`
(LOG_BOUND, REPLY_AMPLIFICATION, RSS_BOUND, SILENT_GRACE).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemons import DaemonHarness
from tests.hostile import (
    LISTENER_TIMEOUT,
    LOG_BOUND,
    REPLY_AMPLIFICATION,
    RSS_BOUND,
    SILENT_GRACE,
    AttackResult,
    Prober,
    Report,
    Target,
    admin_messages,
    bad_lines,
    idle_flood,
    make_target,
    mutated_permits,
    never_reading,
    peer_messages,
    probing,
    protocol_lines,
    run_attack,
    silent_clients,
    slow_clients,
)

pytestmark = pytest.mark.e2e

#: The prober's pace in CI (bench/hostile.py: every 2 s, 10 s deadline).
PROBE_INTERVAL = 1.0
PROBE_DEADLINE = 10.0
#: The daemon's descriptor limit in the flood test, and the idle connections sent.
FLOOD_NOFILE = 256
FLOOD_CONNECTIONS = 400


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """A fresh daemon under attack (killed, its log shown on failure, at the end)."""
    with DaemonHarness(tmp_path) as harness:
        yield make_target(harness)


@pytest.fixture
def prober(target: Target) -> Iterator[Prober]:
    """The prober of ``target``, probing until the test ends."""
    with probing(target, interval=PROBE_INTERVAL, deadline=PROBE_DEADLINE) as running:
        yield running


def attack(
    target: Target, prober: Prober, name: str, run: Callable[[], AttackResult]
) -> Report:
    """`run_attack`, printing the report (pytest shows it on failure), and checking
    that the daemon stayed up with the fresh client and hqn_lsa served throughout."""
    log_start = target.daemon.log_path.stat().st_size
    report = run_attack(target, prober, name, run)
    print(report)
    assert "attack failed" not in report.figures, report.figures  # the attack itself broke
    assert report.crashes == 0, f"{name}: the daemon exited\n{target.daemon.log_tail()}"
    assert report.served_throughout, (
        f"{name}: {report.client_served}/{report.probes} fresh clients and "
        f"{report.admin_served}/{report.probes} hqn_lsa calls served; {report.failures}"
    )
    with target.daemon.log_path.open("rb") as log:
        log.seek(log_start)
        new = log.read().decode("utf-8", "replace")
    assert "Traceback" not in new and "CRITICAL" not in new, new[new.find("Traceback") - 2000 :]
    return report


def test_fuzzed_protocol_lines(target: Target, prober: Prober) -> None:
    """3,000 fuzzed lines, pipelined in bursts: each burst handled (a PING after it
    is answered), and the log grows by at most LOG_BOUND (bad input summarised)."""
    report = attack(target, prober, "protocol lines", lambda: protocol_lines(target, 3000, 1))
    assert report.inputs == 3000
    assert report.log_bytes <= LOG_BOUND, f"{report.log_bytes} log bytes for 3,000 fuzzed lines"


def test_bad_line_flood_bounded_log_and_replies(target: Target, prober: Prober) -> None:
    """5,000 lines of ``X``: the log grows by at most LOG_BOUND (repeated bad input is
    summarised), and the replies are at most REPLY_AMPLIFICATION times the input."""
    report = attack(target, prober, "bad lines", lambda: bad_lines(target, 5000))
    figures = report.figures
    problems = []
    if report.log_bytes > LOG_BOUND:
        problems.append(f"{report.log_bytes} log bytes (bound {LOG_BOUND})")
    if figures["reply bytes"] > REPLY_AMPLIFICATION * figures["bytes sent"]:
        problems.append(
            f"{figures['reply bytes']} reply bytes for {figures['bytes sent']} sent "
            f"(bound: {REPLY_AMPLIFICATION} times)"
        )
    assert not problems, f"5,000 bad lines: {'; '.join(problems)}"


def test_idle_flood_with_few_descriptors(tmp_path: Path) -> None:
    """With RLIMIT_NOFILE 256, 400 idle connections from one address: the daemon keeps
    serving fresh clients and hqn_lsa (a per-address cap, idle timeout, room kept)."""
    with DaemonHarness(tmp_path) as harness:
        flooded = make_target(harness, nofile=FLOOD_NOFILE)
        with probing(flooded, interval=PROBE_INTERVAL, deadline=PROBE_DEADLINE) as running:
            report = attack(
                flooded,
                running,
                "idle flood",
                lambda: idle_flood(flooded, FLOOD_CONNECTIONS, hold=4.0),
            )
    assert report.fds_max <= FLOOD_NOFILE


def test_silent_connections_are_closed(target: Target, prober: Prober) -> None:
    """10 connections that say nothing to each listener (client, admin TLS, metrics,
    peer): each closed by the daemon within its timeout (plus grace)."""
    wait = LISTENER_TIMEOUT + SILENT_GRACE
    results: dict[str, AttackResult] = {}

    def silent_everywhere() -> AttackResult:
        def one(listener: str) -> None:
            results[listener] = silent_clients(target, listener, 10, wait=wait)

        threads = [threading.Thread(target=one, args=(name,)) for name in target.listeners()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(wait + 30)
        return AttackResult(10 * len(threads), {k: v.figures for k, v in results.items()})

    attack(target, prober, "silent", silent_everywhere)
    still_open = {
        name: result.figures
        for name, result in results.items()
        if result.figures["closed by the daemon"] != result.inputs
    }
    assert set(results) == set(target.listeners())
    assert not still_open, f"silent connections still open after {wait} s: {still_open}"


def test_slow_clients(target: Target, prober: Prober) -> None:
    """20 connections trickling a REQUEST a byte a second, never finishing the line:
    others are served, and the daemon closes every one of them, since only whole
    lines reset the idle timeout (LISTENER_TIMEOUT here)."""
    seconds = LISTENER_TIMEOUT + SILENT_GRACE
    report = attack(
        target, prober, "slow clients", lambda: slow_clients(target, 20, seconds=seconds)
    )
    assert report.figures["closed by the daemon"] == 20, report.figures


def test_never_reading_clients(target: Target, prober: Prober) -> None:
    """4 connections pipelining 20,000 requests with large replies and never reading:
    the daemon stops reading them (flow control), its memory stays bounded."""
    report = attack(target, prober, "never reading", lambda: never_reading(target, 4, 20_000))
    assert report.rss_growth <= RSS_BOUND, report


def test_fuzzed_admin_messages(target: Target, prober: Prober) -> None:
    """1,500 fuzzed admin lines on the local socket: each answered (never a dropped
    connection but after LINE_TOO_LONG), never INTERNAL, no traceback logged."""
    report = attack(target, prober, "admin", lambda: admin_messages(target, 1500, 2))
    answers = report.figures["answers"]
    assert report.figures["dropped"] == 0, answers
    assert "INTERNAL" not in answers, answers
    assert answers.get("ok", 0) > 0 and answers.get("BAD_REQUEST", 0) > 0, answers


def test_mutated_permits(target: Target, prober: Prober, tmp_path: Path) -> None:
    """300 mutated sealed permits read as the daemon reads them, 10 of them re-read by
    the daemon itself: never a product unlike its seal."""
    report = attack(
        target,
        prober,
        "mutated permits",
        lambda: mutated_permits(target, 300, 3, to_daemon=10, workdir=tmp_path / "mutants"),
    )
    figures = report.figures
    assert figures["wrong results"] == 0 and figures["wrong offers by the daemon"] == 0, figures
    assert figures["re-read by the daemon"] == 10, figures
    assert figures["unmutated permit offered by the daemon"], figures


def test_fuzzed_peer_messages(target: Target, prober: Prober) -> None:
    """500 lines of tests/peerfuzz.py from an authenticated member: the daemon keeps
    serving its own product and hqn_lsa, with no traceback."""
    report = attack(target, prober, "peer messages", lambda: peer_messages(target, 500, 4))
    assert report.inputs == 500
