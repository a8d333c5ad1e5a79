"""The journal's writer (issue 14): one batch in flight at a time, off the reactor thread.

A `ManualWriter` holds each batch until the test lets it run, so what happens while a
commit is in flight (more submissions, barriers, failures, close) is deterministic;
the `ThreadWriter` is then checked with a real thread and a fake reactor.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from hqnlsd.commit import NotRecorded
from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Granted
from hqnlsd.persistence.store import (
    RETRY_FIRST,
    InlineWriter,
    Journal,
    JournalError,
    ThreadWriter,
    open_journal,
    writer_for,
)
from tests.persistence.test_store import (
    PERMIT,
    FlakyConnection,
    Results,
    TracingConnect,
    flaky_connect,
    grant,
    new_clock,
    new_engine,
    open_started,
)

_T = TypeVar("_T")
#: The test permit with room for every test's holders.
ROOMY = dataclasses.replace(PERMIT, floating_count=100)


class ManualWriter:
    """A writer whose batches wait until the test runs them (`run_one`); `call` runs at
    once, after the batches held (as a one-thread writer would), their deliveries left
    for `run_one` (as the reactor would run them later)."""

    def __init__(self) -> None:
        self.held: collections.deque[list[Callable[[], None]]] = collections.deque()

    def submit(self, work: Callable[[], None], done: Callable[[], None]) -> None:
        """Hold the batch."""
        self.held.append([work, done])

    def call(self, work: Callable[[], _T]) -> _T:
        """Write every batch held (delivering nothing), then run ``work``."""
        for entry in self.held:
            entry[0]()
            entry[0] = _nothing
        return work()

    def run_one(self) -> None:
        """Write the oldest held batch (unless written already) and deliver its outcome."""
        work, done = self.held.popleft()
        work()
        done()

    def stop(self) -> None:
        """Nothing to join."""


def _nothing() -> None:
    """Work already done."""


def started(tmp_path: Path, clock: Clock, **options: Any) -> tuple[Journal, Engine, ManualWriter]:
    """A journal on a `ManualWriter`, restored, with room for many holders, all written."""
    writer = ManualWriter()
    journal, engine = open_started(tmp_path, clock, writer=writer, **options)
    journal.submit(engine.load_products([ROOMY]).events)
    clock.advance(0)
    while writer.held:
        writer.run_one()
        clock.advance(0)
    return journal, engine, writer


def durable_handles(tmp_path: Path) -> list[str]:
    """The handles granted in the log on disk, in order."""
    clock = new_clock()
    again = open_journal(tmp_path, clock)
    try:
        _, events = again.load()
    finally:
        again.close()
    return [event.handle for event in events if isinstance(event, Granted)]


def test_submissions_while_a_batch_is_written_go_together_in_the_next(tmp_path: Path) -> None:
    """While one batch is in flight, new submissions wait, then go in ONE next batch."""
    clock = new_clock()
    trace = TracingConnect()
    journal, engine, writer = started(tmp_path, clock, connect=trace)
    first = Results()
    first.watch(grant(engine, journal, 1)[1])
    clock.advance(0)
    assert len(writer.held) == 1  # batch 1 in flight
    later = Results()
    for pid in (2, 3):
        later.watch(grant(engine, journal, pid)[1])
        clock.advance(0)  # later turns: nothing new starts while batch 1 is written
    assert len(writer.held) == 1
    commits = trace.commits()
    writer.run_one()
    assert first.values == [None]
    assert later.values == []  # not durable yet
    assert trace.commits() == commits + 1
    clock.advance(0)
    assert len(writer.held) == 1  # batch 2: both submissions
    writer.run_one()
    assert later.values == [None, None]
    assert trace.commits() == commits + 2
    assert journal.stats.commits >= 2
    journal.close()
    assert len(durable_handles(tmp_path)) == 3


def test_deferreds_fire_in_submission_order_once_durable(tmp_path: Path) -> None:
    """Across batches the Deferreds fire in the order of their submissions."""
    clock = new_clock()
    journal, engine, writer = started(tmp_path, clock)
    fired: list[int] = []
    handles = []
    for pid in range(1, 7):
        result, done = grant(engine, journal, pid)
        handles.append(result.handle)
        done.addCallback(lambda _, pid=pid: fired.append(pid))
        if pid % 2 == 0:
            clock.advance(0)
    assert fired == []  # batch 1 is still being written: nobody is answered
    while writer.held:
        writer.run_one()
        clock.advance(0)
    assert fired == [1, 2, 3, 4, 5, 6]
    journal.close()
    assert durable_handles(tmp_path) == handles


def test_a_failed_batch_fails_exactly_its_submissions(tmp_path: Path) -> None:
    """Batch 1 fails: its Deferreds errback; batch 2 (submitted meanwhile) succeeds and
    writes batch 1's events first, so the disk never skips an event."""
    clock = new_clock()
    journal, engine, writer = started(tmp_path, clock, connect=flaky_connect)
    db = journal._db
    assert isinstance(db, FlakyConnection)
    first, second = Results(), Results()
    one, done = grant(engine, journal, 1)
    first.watch(done)
    first.watch(journal.commit([]))  # a barrier in batch 1 shares its fate
    clock.advance(0)
    two, done = grant(engine, journal, 2)
    second.watch(done)
    db.fail = True
    writer.run_one()
    assert len(first.values) == 2
    assert isinstance(first.values[0], Failure) and first.values[0].check(JournalError)
    assert isinstance(first.values[1], Failure) and first.values[1].check(NotRecorded)
    assert second.values == []
    assert not journal.healthy
    db.fail = False
    clock.advance(0)  # the next batch: batch 1's events, then batch 2's
    writer.run_one()
    assert second.values == [None]
    assert journal.healthy
    clock.advance(RETRY_FIRST * 10)  # the retry timer was cancelled: nothing more
    assert not writer.held
    journal.close()
    assert durable_handles(tmp_path) == [one.handle, two.handle]


def test_failed_batch_is_retried_with_backoff_when_nothing_new_comes(tmp_path: Path) -> None:
    """A failed batch with no new work: the backoff timer hands its events to the writer."""
    clock = new_clock()
    journal, engine, writer = started(tmp_path, clock, connect=flaky_connect)
    db = journal._db
    assert isinstance(db, FlakyConnection)
    one, done = grant(engine, journal, 1)
    done.addErrback(lambda failure: None)
    clock.advance(0)
    db.fail = True
    writer.run_one()
    db.fail = False
    clock.advance(0)
    assert not writer.held  # no new work: wait for the backoff
    clock.advance(RETRY_FIRST)
    assert len(writer.held) == 1
    assert not journal.healthy  # still failing until the retry is written
    writer.run_one()
    assert journal.healthy
    journal.close()
    assert durable_handles(tmp_path) == [one.handle]


def test_barrier_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    """`commit([])` while a batch is written fires when that batch is durable, not before;
    with nothing submitted at all it fires at once."""
    clock = new_clock()
    journal, engine, writer = started(tmp_path, clock)
    at_once = Results()
    at_once.watch(journal.commit([]))
    assert at_once.values == [None]
    order: list[str] = []
    grant(engine, journal, 1)[1].addCallback(lambda _: order.append("grant 1"))
    clock.advance(0)
    journal.commit([]).addCallback(lambda _: order.append("barrier 1"))
    assert order == []
    grant(engine, journal, 2)[1].addCallback(lambda _: order.append("grant 2"))
    journal.commit([]).addCallback(lambda _: order.append("barrier 2"))
    writer.run_one()
    assert order == ["grant 1", "barrier 1"]
    clock.advance(0)
    writer.run_one()
    assert order == ["grant 1", "barrier 1", "grant 2", "barrier 2"]
    journal.close()


def test_listeners_see_events_as_they_are_submitted(tmp_path: Path) -> None:
    """Listeners are told at submission, even while a batch is in flight."""
    clock = new_clock()
    journal, engine, writer = started(tmp_path, clock)
    seen: list[int] = []
    journal.listeners.append(lambda events: seen.append(len(events)))
    grant(engine, journal, 1)
    clock.advance(0)
    grant(engine, journal, 2)
    assert len(seen) == 2
    while writer.held:
        writer.run_one()
        clock.advance(0)
    journal.close()


def test_close_writes_the_batch_in_flight_and_what_waits(tmp_path: Path) -> None:
    """close() waits for the batch in flight, writes what was queued behind it, fires
    every Deferred in order, and leaves nothing for the writer."""
    clock = new_clock()
    journal, engine, writer = started(tmp_path, clock)
    fired: list[int] = []
    handles = []
    for pid in (1, 2):
        result, done = grant(engine, journal, pid)
        handles.append(result.handle)
        done.addCallback(lambda _, pid=pid: fired.append(pid))
        clock.advance(0)
    assert len(writer.held) == 1
    journal.close()
    assert fired == [1, 2]
    # The writer's late delivery of batch 1 changes nothing.
    while writer.held:
        writer.run_one()
    assert fired == [1, 2]
    assert durable_handles(tmp_path) == handles


def test_compaction_is_taken_with_the_batch(tmp_path: Path) -> None:
    """With batches in flight, compaction still stores exactly the log's state."""
    clock = new_clock()
    journal, engine, writer = started(tmp_path, clock, compact_after=3)
    compactions = journal.stats.compactions
    for pid in range(12):
        result, _ = grant(engine, journal, pid)
        journal.submit(engine.release(result.handle).events)
        clock.advance(0)
        if pid % 3 == 0:
            while writer.held:
                writer.run_one()
                clock.advance(0)
    while writer.held:
        writer.run_one()
        clock.advance(0)
    assert journal.stats.compactions > compactions
    snapshot = engine.snapshot()
    journal.close()
    again = open_journal(tmp_path, clock)
    fresh = new_engine(clock)
    again.restore(fresh)
    assert fresh.snapshot() == snapshot
    again.close()


# -- the thread -----------------------------------------------------------------------------


class ThreadedReactor:
    """The part of a reactor the `ThreadWriter` uses: calls from threads, queued for the test."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Callable[[], None]] = queue.Queue()

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Queue the call (run by `run_calls`, on the test's thread)."""
        self.calls.put(lambda: callable(*args, **kw))

    def run_calls(self, wait: float) -> int:
        """Run the calls queued, waiting up to ``wait`` seconds for the first."""
        ran = 0
        try:
            call = self.calls.get(timeout=wait)
        except queue.Empty:
            return 0
        while True:
            call()
            ran += 1
            try:
                call = self.calls.get_nowait()
            except queue.Empty:
                return ran


class ThreadNoting(TracingConnect):
    """A connect that notes which threads ran SQL."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def __call__(self, path: str) -> sqlite3.Connection:
        """Open ``path``, noting the thread of each statement."""
        db = sqlite3.connect(path, timeout=0.5)
        db.set_trace_callback(self._note)
        return db

    def _note(self, sql: str) -> None:
        self.statements.append(sql)
        self.threads.add(threading.get_ident())


def test_thread_writer_commits_off_the_calling_thread(tmp_path: Path) -> None:
    """Every SQL statement runs on the writer's thread; the Deferreds fire on the
    reactor thread (through callFromThread), in order; close joins the thread."""
    clock = new_clock()
    reactor = ThreadedReactor()
    writer = ThreadWriter(reactor)  # type: ignore[arg-type]
    noting = ThreadNoting()
    journal = open_journal(tmp_path, clock, connect=noting, writer=writer)
    engine = new_engine(clock)
    journal.restore(engine)
    loaded = Results()
    loaded.watch(journal.submit(engine.load_products([ROOMY]).events))
    clock.advance(0)
    reactor.run_calls(wait=10)
    assert loaded.values == [None]
    fired: list[int] = []
    for pid in range(1, 5):
        grant(engine, journal, pid)[1].addCallback(lambda _, pid=pid: fired.append(pid))
        clock.advance(0)
    deadline = 50
    while len(fired) < 4 and deadline:
        reactor.run_calls(wait=0.2)
        clock.advance(0)
        deadline -= 1
    assert fired == [1, 2, 3, 4]
    assert threading.get_ident() not in noting.threads
    assert len(noting.threads) == 1
    threads_before = {thread.ident for thread in threading.enumerate()}
    assert noting.threads <= threads_before
    journal.close()
    assert not noting.threads & {thread.ident for thread in threading.enumerate()}
    assert len(durable_handles(tmp_path)) == 4


def test_writer_for_a_fake_reactor_is_inline() -> None:
    """Fake reactors cannot take calls from threads: their journals write inline."""
    assert isinstance(writer_for(Clock()), InlineWriter)
    assert isinstance(writer_for(MemoryReactorClock()), InlineWriter)


def test_writer_for_a_real_reactor_is_a_thread() -> None:
    """A reactor that takes calls from threads gets a `ThreadWriter` (no thread yet)."""
    @implementer(IReactorFromThreads)
    class Real(ThreadedReactor):
        """Provides IReactorFromThreads."""

    before = threading.active_count()
    writer = writer_for(Real())
    assert isinstance(writer, ThreadWriter)
    assert threading.active_count() == before
    writer.stop()


def test_inline_writer_runs_now() -> None:
    """The inline writer runs work and its delivery at once."""
    ran: list[str] = []
    InlineWriter().submit(lambda: ran.append("work"), lambda: ran.append("done"))
    assert ran == ["work", "done"]
    assert InlineWriter().call(lambda: 7) == 7


def test_thread_writer_runs_work_in_order_on_one_named_thread() -> None:
    """Work runs in submission order on one thread of the writer's name (not the
    caller's); each ``done`` comes back through callFromThread, in the same order;
    `call` waits for what was submitted before and returns its work's result."""
    reactor = ThreadedReactor()
    writer = ThreadWriter(reactor, name="hqnlsd-test")  # type: ignore[arg-type]
    ran: list[tuple[int, str]] = []
    done: list[int] = []
    for k in range(50):
        writer.submit(lambda k=k: ran.append((k, threading.current_thread().name)),
                      lambda k=k: done.append(k))
    assert writer.call(lambda: len(ran)) == 50
    assert [k for k, _ in ran] == list(range(50))
    names = {name for _, name in ran}
    assert len(names) == 1 and next(iter(names)).startswith("hqnlsd-test")
    assert next(iter(names)) != threading.current_thread().name
    deadline = time.monotonic() + 20
    while len(done) < 50 and time.monotonic() < deadline:
        reactor.run_calls(wait=0.2)
    assert done == list(range(50))
    writer.stop()


def test_thread_writer_call_raises_the_works_exception_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`call` raises what its work raised; work that raises in `submit` (which it must
    not: a bug) is reported on the reactor thread, still gets its ``done``, and the
    writer goes on with the next."""
    reactor = ThreadedReactor()
    writer = ThreadWriter(reactor)  # type: ignore[arg-type]
    reported: list[Failure] = []
    monkeypatch.setattr(writer, "_report", reported.append)
    with pytest.raises(ZeroDivisionError):
        writer.call(lambda: 1 // 0)
    done: list[str] = []
    writer.submit(lambda: [][1], lambda: done.append("bad"))
    writer.submit(lambda: None, lambda: done.append("next"))
    assert writer.call(lambda: "after") == "after"
    deadline = time.monotonic() + 20
    while len(done) < 2 and time.monotonic() < deadline:
        reactor.run_calls(wait=0.2)
    assert done == ["bad", "next"]
    writer.stop()
    assert len(reported) == 1 and reported[0].check(IndexError)


def test_thread_writer_stop_joins_its_thread_and_a_new_submit_starts_another() -> None:
    """`stop` waits for the work queued and ends the thread; stopping twice is
    harmless; work after a stop gets a fresh thread."""
    reactor = ThreadedReactor()
    writer = ThreadWriter(reactor, name="hqnlsd-stoptest")  # type: ignore[arg-type]
    slow: list[int] = []
    writer.submit(lambda: (time.sleep(0.2), slow.append(1)), lambda: None)
    writer.stop()
    assert slow == [1]
    assert not [t for t in threading.enumerate() if t.name.startswith("hqnlsd-stoptest")]
    writer.stop()
    assert writer.call(lambda: 7) == 7
    writer.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("hqnlsd-stoptest")]
