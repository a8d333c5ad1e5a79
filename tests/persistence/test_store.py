"""The SQLite journal: group commit, restore after reopening or kill -9, failures, compaction."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import selectors
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from hqnlsd.commit import CommitFailed, EventSink, NotRecorded
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Granted
from hqnlsd.licensing.results import Denied, Grant, LicenceRequest, UpdateAck
from hqnlsd.permits.model import ProductPermit
from hqnlsd.permits.policy import Policy
from hqnlsd.persistence import store
from hqnlsd.persistence.store import (
    DATABASE_NAME,
    RETRY_FIRST,
    Journal,
    JournalError,
    open_journal,
)
from hqnlsd.status import Status

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2027, 6, 15, 12, 0, tzinfo=datetime.UTC).timestamp()
PERMIT = ProductPermit(
    "Harlequin", "LispWorks", "8.0", int(Policy.GRAB), 0, 3,
    datetime.date(2026, 1, 1), datetime.date(2030, 12, 31), 5,
)


def utc_day(seconds: float) -> datetime.date:
    """The UTC date (tests must not depend on the machine's time zone)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date()


def new_clock() -> Clock:
    """A task.Clock at NOW."""
    clock = Clock()
    clock.advance(NOW)
    return clock


def new_engine(clock: Clock) -> Engine:
    """An engine with no products (the journal brings them back)."""
    return Engine(clock, today=utc_day)


def request(pid: int, client: str | None = None) -> LicenceRequest:
    """A request from one of many processes."""
    return LicenceRequest(
        "Harlequin", "LispWorks", "8.0", "alice", "alpha", pid, "10.0.0.1", client=client
    )


class Results:
    """Collects what Deferreds fired with."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def watch(self, deferred: Deferred[Any]) -> None:
        """Record the result or failure of ``deferred``."""
        deferred.addBoth(self.values.append)


class TracingConnect:
    """A ``connect`` that records every SQL statement run by the journal."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, path: str) -> sqlite3.Connection:
        """Open ``path`` and trace it."""
        db = sqlite3.connect(path, timeout=0.5)
        db.set_trace_callback(self.statements.append)
        return db

    def commits(self) -> int:
        """How many COMMITs ran."""
        return sum(1 for sql in self.statements if sql.strip().upper() == "COMMIT")


class FlakyConnection(sqlite3.Connection):
    """A connection whose event inserts fail while ``fail`` is set (a full disk)."""

    fail = False

    def executemany(self, sql: str, rows: Any, /) -> sqlite3.Cursor:
        """Fail inserts into the event log on demand."""
        if self.fail and sql.startswith("INSERT INTO events"):
            raise sqlite3.OperationalError("database or disk is full (simulated)")
        return super().executemany(sql, rows)


def open_started(
    state_dir: Path, clock: Clock, **options: Any
) -> tuple[Journal, Engine]:
    """Open the journal, restore a fresh engine from it, and load the permit."""
    journal = open_journal(state_dir, clock, **options)
    engine = new_engine(clock)
    journal.restore(engine)
    loaded = engine.load_products([PERMIT])
    if loaded.events:
        journal.submit(loaded.events)
        clock.advance(0)
    return journal, engine


def grant(engine: Engine, journal: Journal, pid: int, **kw: Any) -> tuple[Grant, Deferred[None]]:
    """Request a licence and submit its events; returns the grant and the durability Deferred."""
    outcome = engine.request(request(pid, **kw))
    assert isinstance(outcome.result, Grant), outcome.result
    return outcome.result, journal.submit(outcome.events)


# -- group commit ---------------------------------------------------------------------------


def test_submissions_of_one_turn_are_one_transaction(tmp_path: Path) -> None:
    """Many submissions in one reactor turn: nothing fires until the next turn, then one COMMIT."""
    clock = new_clock()
    trace = TracingConnect()
    journal, engine = open_started(tmp_path, clock, connect=trace)
    journal.submit(engine.load_products([dataclasses.replace(PERMIT, floating_count=100)]).events)
    clock.advance(0)
    commits_before = trace.commits()
    results = Results()
    for pid in range(50):
        outcome = engine.request(request(pid))
        results.watch(journal.submit(outcome.events))
    assert results.values == []  # not durable yet: no answer may go out
    assert trace.commits() == commits_before
    clock.advance(0)
    assert results.values == [None] * 50
    assert trace.commits() == commits_before + 1
    assert journal.stats.events_written >= 50
    journal.close()


def test_each_turn_is_its_own_commit(tmp_path: Path) -> None:
    """Submissions in different turns are committed separately, in order."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    commits = journal.stats.commits
    grant(engine, journal, 1)
    clock.advance(0)
    grant(engine, journal, 2)
    clock.advance(0)
    assert journal.stats.commits == commits + 2
    journal.close()


def test_empty_submission_waits_for_the_queued_commit(tmp_path: Path) -> None:
    """An answer with no events (e.g. a denial) never overtakes a queued commit."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    idle = Results()
    idle.watch(journal.submit([]))
    assert idle.values == [None]  # nothing queued: answer at once
    grant(engine, journal, 1)
    waiting = Results()
    waiting.watch(journal.submit([]))
    assert waiting.values == []
    clock.advance(0)
    assert waiting.values == [None]
    journal.close()


def test_callbacks_may_submit_again(tmp_path: Path) -> None:
    """Code run when a commit fires may submit more; that goes into the next commit."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    later = Results()

    def again(_: object) -> None:
        later.watch(grant(engine, journal, 2)[1])

    commits = journal.stats.commits
    grant(engine, journal, 1)[1].addCallback(again)
    clock.advance(0)  # task.Clock also runs the flush scheduled from the callback
    assert later.values == [None]
    assert journal.stats.commits == commits + 2
    journal.close()


# -- restore -------------------------------------------------------------------------------------


def test_restore_after_reopening(tmp_path: Path) -> None:
    """Close and reopen: the same state, old handles still valid, count still enforced."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    handles = [grant(engine, journal, pid, client=f"c{pid}")[0].handle for pid in range(3)]
    engine_release = engine.release(handles[0])
    journal.submit(engine_release.events)
    kept = grant(engine, journal, 9)[0].handle
    clock.advance(0)
    snapshot = engine.snapshot()
    journal.close()

    journal2 = open_journal(tmp_path, clock)
    engine2 = new_engine(clock)
    report = journal2.restore(engine2)
    assert report.had_snapshot
    assert engine2.snapshot() == snapshot
    assert engine2.load_products([PERMIT]).events == ()  # same permit: nothing changes
    for handle in (handles[1], handles[2], kept):
        assert isinstance(engine2.update(handle).result, UpdateAck)
    denied = engine2.request(request(50)).result
    assert isinstance(denied, Denied)
    assert denied.status is Status.NOLICENCES
    retry = engine2.request(request(1, client="c1")).result
    assert isinstance(retry, Grant)
    assert (retry.handle, retry.duplicate) == (handles[1], True)
    journal2.close()


def test_restore_replays_the_log_after_the_snapshot(tmp_path: Path) -> None:
    """Events after the last snapshot are replayed; restore then compacts them away."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    for pid in range(3):
        grant(engine, journal, pid)
    clock.advance(0)
    journal.close()
    journal2 = open_journal(tmp_path, clock)
    snapshot, events = journal2.load()
    assert snapshot is not None
    assert len(events) == 4  # ProductsLoaded + 3 grants
    engine2 = new_engine(clock)
    assert journal2.restore(engine2).replayed == 4
    assert engine2.held_count() == 3
    assert journal2.load()[1] == []
    journal2.close()


def test_damaged_log_refuses_to_start(tmp_path: Path) -> None:
    """A damaged event row is a JournalError at start-up, not a silent loss."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    grant(engine, journal, 1)
    clock.advance(0)
    journal.close()
    db = sqlite3.connect(tmp_path / DATABASE_NAME)
    db.execute("INSERT INTO events (body) VALUES ('{\"type\": \"Nonsense\"}')")
    db.commit()
    db.close()
    journal2 = open_journal(tmp_path, clock)
    with pytest.raises(JournalError, match="damaged"):
        journal2.restore(new_engine(clock))
    journal2.close()


def test_second_daemon_on_the_same_state_is_refused(tmp_path: Path) -> None:
    """The database is held exclusively: a second journal on it fails with a clear message."""
    clock = new_clock()
    journal, _ = open_started(tmp_path, clock)
    with pytest.raises(JournalError, match="another hqnlsd"):
        open_journal(tmp_path, clock)
    journal.close()
    open_journal(tmp_path, clock).close()


def test_state_files_are_private(tmp_path: Path) -> None:
    """The state directory is 0700 and the database 0600."""
    state = tmp_path / "state"
    journal = open_journal(state, new_clock())
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / DATABASE_NAME).stat().st_mode) == 0o600
    journal.close()


# -- failures ------------------------------------------------------------------------------------


def flaky_connect(path: str) -> sqlite3.Connection:
    """A connection that can be told to fail."""
    return sqlite3.connect(path, timeout=0.5, factory=FlakyConnection)


def test_failed_commit_errbacks_then_retries_in_order(tmp_path: Path) -> None:
    """A failed commit errbacks its Deferreds; the events are still written, in order, later."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock, connect=flaky_connect)
    db = journal._db
    assert isinstance(db, FlakyConnection)
    db.fail = True
    results = Results()
    first, deferred = grant(engine, journal, 1)
    results.watch(deferred)
    clock.advance(0)
    assert len(results.values) == 1
    failure = results.values[0]
    assert isinstance(failure, Failure)
    assert failure.check(JournalError)
    assert not journal.healthy
    assert journal.stats.failures == 1

    clock.advance(RETRY_FIRST)  # the retry fails too, and backs off
    assert journal.stats.failures == 2
    db.fail = False
    second, deferred = grant(engine, journal, 2)
    results.watch(deferred)
    clock.advance(0)
    assert results.values[1] is None
    assert journal.healthy
    journal.close()

    _, events = open_journal(tmp_path, clock).load()
    granted = [event.handle for event in events if isinstance(event, Granted)]
    assert granted == [first.handle, second.handle]


def test_failed_commit_is_retried_without_new_work(tmp_path: Path) -> None:
    """With no new submissions, the backoff timer writes the unwritten events."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock, connect=flaky_connect)
    db = journal._db
    assert isinstance(db, FlakyConnection)
    db.fail = True
    grant(engine, journal, 1)[1].addErrback(lambda failure: None)
    clock.advance(0)
    db.fail = False
    clock.advance(RETRY_FIRST)
    assert journal.healthy
    assert journal.stats.failures == 1
    journal.close()
    journal2 = open_journal(tmp_path, clock)
    engine2 = new_engine(clock)
    journal2.restore(engine2)
    assert engine2.held_count() == 1
    journal2.close()


def test_submit_after_close_raises(tmp_path: Path) -> None:
    """A closed journal refuses new work loudly."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    journal.close()
    with pytest.raises(JournalError):
        journal.submit(engine.request(request(1)).events)


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    """close() commits queued events before closing (a clean shutdown loses nothing)."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    results = Results()
    results.watch(grant(engine, journal, 1)[1])
    journal.close()
    assert results.values == [None]
    journal2 = open_journal(tmp_path, clock)
    engine2 = new_engine(clock)
    journal2.restore(engine2)
    assert engine2.held_count() == 1
    journal2.close()


# -- compaction ------------------------------------------------------------------------------


def test_compaction_keeps_the_state(tmp_path: Path) -> None:
    """After enough events the log is folded into the snapshot; reopening gives the same state."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock, compact_after=5)
    compactions = journal.stats.compactions
    for pid in range(20):
        result, _ = grant(engine, journal, pid)
        journal.submit(engine.release(result.handle).events)
        clock.advance(0)
    assert journal.stats.compactions > compactions
    _, logged = journal.load()
    assert len(logged) < 5
    snapshot = engine.snapshot()
    journal.close()
    journal2 = open_journal(tmp_path, clock)
    engine2 = new_engine(clock)
    journal2.restore(engine2)
    assert engine2.snapshot() == snapshot
    journal2.close()


def test_no_compaction_while_the_engine_is_ahead_of_the_journal(tmp_path: Path) -> None:
    """If the engine applied events not (yet) given to the journal, no snapshot is taken."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock, compact_after=1)
    compactions = journal.stats.compactions
    engine.request(request(1))  # applied, never submitted
    grant(engine, journal, 2)
    clock.advance(0)
    assert journal.stats.compactions == compactions
    journal.close()


# -- kill -9 ---------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import datetime, json, sys, time
    from pathlib import Path
    from twisted.internet.task import Clock
    from hqnlsd.licensing.engine import Engine
    from hqnlsd.licensing.results import LicenceRequest
    from hqnlsd.persistence.store import open_journal
    from hqnlsd.permits.model import ProductPermit

    clock = Clock()
    clock.advance({now!r})
    today = lambda s: datetime.datetime.fromtimestamp(s, datetime.UTC).date()
    permit = ProductPermit("Harlequin", "LispWorks", "8.0", 1, 0, 3,
                           datetime.date(2026, 1, 1), datetime.date(2030, 12, 31), 5)
    journal = open_journal(Path(sys.argv[1]), clock)
    engine = Engine(clock, today=today)
    journal.restore(engine)
    journal.submit(engine.load_products([permit]).events)
    committed = []
    for pid in range(2):
        outcome = engine.request(LicenceRequest("Harlequin", "LispWorks", "8.0", "u", "h",
                                                pid, "10.0.0.1", client=f"c{{pid}}"))
        journal.submit(outcome.events).addCallback(
            lambda _, handle=outcome.result.handle: committed.append(handle))
    clock.advance(0)
    # One more grant, queued but never committed: its client was never answered.
    pending = engine.request(LicenceRequest("Harlequin", "LispWorks", "8.0", "u", "h",
                                            7, "10.0.0.1"))
    journal.submit(pending.events)
    print(json.dumps({{"committed": committed, "pending": pending.result.handle}}), flush=True)
    time.sleep(60)
    """
)


def read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of the child's stdout, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"child said nothing in {timeout}s: {data!r}")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"child exited: {data!r}")
            data += chunk
    finally:
        selector.close()
    return data


@pytest.mark.e2e
def test_committed_grants_survive_kill_9(tmp_path: Path) -> None:
    """SIGKILL after commit: every committed grant is back, the uncommitted one is not,
    old handles work and the count is still enforced."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(now=NOW), str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        said = json.loads(read_line(process, timeout=30))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert len(said["committed"]) == 2

    clock = new_clock()
    journal = open_journal(tmp_path, clock)
    engine = new_engine(clock)
    journal.restore(engine)
    for handle in said["committed"]:
        assert isinstance(engine.update(handle).result, UpdateAck)
    lost = engine.update(said["pending"]).result
    assert isinstance(lost, Denied)
    assert lost.status is Status.BADHANDLE
    assert engine.held_count() == 2
    third = engine.request(request(20)).result
    assert isinstance(third, Grant)
    fourth = engine.request(request(21)).result
    assert isinstance(fourth, Denied)
    assert fourth.status is Status.NOLICENCES
    journal.close()


def test_unexpected_write_error_errbacks_instead_of_hanging(tmp_path: Path) -> None:
    """Any exception while writing (not only SQLite's) fails the Deferreds; none hangs."""

    class Unencodable:
        """Not JSON."""

    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    outcome = engine.request(request(1))
    event = outcome.events[0]
    assert isinstance(event, Granted)
    bad = dataclasses.replace(
        event, who=dataclasses.replace(event.who, user=Unencodable())  # type: ignore[arg-type]
    )
    results = Results()
    results.watch(journal.submit([bad]))
    clock.advance(0)
    assert len(results.values) == 1
    assert isinstance(results.values[0], Failure)
    assert results.values[0].check(JournalError)
    assert not journal.healthy


# -- the journal as an EventSink (hqnlsd.commit) ----------------------------------------------


def test_commit_fires_once_durable_and_is_a_barrier_without_events(tmp_path: Path) -> None:
    """`Journal.commit` is an `EventSink`: it fires once the events are written, and a
    commit of nothing waits for what is queued before it (at once if nothing is)."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    sink: EventSink = journal
    idle = Results()
    idle.watch(sink.commit([]))
    assert idle.values == [None]
    outcome = engine.request(request(1))
    results = Results()
    results.watch(sink.commit(outcome.events))
    results.watch(sink.commit([]))
    assert results.values == []
    clock.advance(0)
    assert results.values == [None, None]
    journal.close()
    _, events = open_journal(tmp_path, clock).load()
    assert any(isinstance(event, Granted) for event in events)


def test_commit_that_is_not_written_fails_not_recorded(tmp_path: Path) -> None:
    """A failed group commit fails the sink's Deferred with `NotRecorded` only (the
    journal's error chained), and the events are still written by the retry."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock, connect=flaky_connect)
    db = journal._db
    assert isinstance(db, FlakyConnection)
    db.fail = True
    results = Results()
    results.watch(journal.commit(engine.request(request(1)).events))
    results.watch(journal.commit([]))
    clock.advance(0)
    assert len(results.values) == 2
    for failure in results.values:
        assert isinstance(failure, Failure) and failure.check(NotRecorded), failure
        assert isinstance(failure.value, CommitFailed)
        assert isinstance(failure.value.__cause__, JournalError)
        assert "disk is full" in str(failure.value)
    db.fail = False
    clock.advance(RETRY_FIRST)
    assert journal.healthy
    journal.close()


def test_rows_are_the_compact_json_of_the_events_and_snapshot(tmp_path: Path) -> None:
    """The journal's rows and snapshot (one encoder made once) are the text
    ``json.dumps(..., separators=(",", ":"))`` wrote for them before."""
    clock = new_clock()
    journal, engine = open_started(tmp_path, clock)
    submitted = []
    for pid in range(5):
        outcome = engine.request(request(pid, client=f"c-\u00e9\u2603-{pid}"))
        assert isinstance(outcome.result, Grant)
        submitted += outcome.events
        journal.submit(outcome.events)
        released = engine.release(outcome.result.handle)
        submitted += released.events
        journal.submit(released.events)
    clock.advance(0)
    snapshot = engine.snapshot()
    journal.close()
    db = sqlite3.connect(tmp_path / DATABASE_NAME)
    try:
        rows = [body for (body,) in db.execute("SELECT body FROM events ORDER BY rowid")]
    finally:
        db.close()
    expected = [json.dumps(event.to_dict(), separators=(",", ":")) for event in submitted]
    assert rows[-len(expected) :] == expected
    assert store._encode(snapshot) == json.dumps(snapshot, separators=(",", ":"))
