"""The chaos test's checker (`bench/chaos.py`) on hand-made histories: it must see
every kind of broken promise, and nothing in a clean history.

The end-to-end schedules (`tests/domain/test_e2e_chaos.py`) only mean something if the
checker can fail; these histories are the failures it must catch.
"""

from __future__ import annotations

from bench.chaos import (
    Attempt,
    FinalState,
    History,
    Operation,
    Session,
    Snapshot,
    availability,
    check,
    majority_connected,
    stable_majority,
)

COUNT = 2
END = 100.0


def session(
    history: History,
    n: int,
    *,
    granted: float | None,
    release_sent: float | None = None,
    released: float | None = None,
    handle: str | None = None,
    denied: bool = False,
) -> Session:
    """A session of worker 1 whose REQUEST got ``granted`` (or was denied)."""
    s = Session(worker=1, index=n, token=f"t{n}", user="w1", pid=n)
    request = Operation(1, n, "REQUEST", invoked=(granted or 1.0) - 0.5)
    if denied:
        request.outcome, request.status, s.request_outcome = "failed", "NOLICENCES", "denied"
    elif granted is not None:
        request.outcome, request.completed = "ok", granted
        request.handle = s.handle = handle or f"h{n}"
        s.granted = granted
    s.operations.append(request)
    s.release_sent, s.released = release_sent, released
    history.sessions.append(s)
    history.operations.append(request)
    return s


def final(history: History, *listed: int, updates: dict[str, str] | None = None) -> FinalState:
    """A final state listing the sessions ``listed``; every listed handle UPDATEs OK,
    every other one BADHANDLE, unless ``updates`` says otherwise."""
    by_pid = {s.pid: s for s in history.sessions}
    answers = {s.handle: "BADHANDLE" for s in history.sessions if s.handle}
    answers.update({by_pid[n].handle: "OK" for n in listed if by_pid[n].handle})
    answers.update(updates or {})
    return FinalState(1, listed=[("w1", n) for n in listed], updates=answers)


def kinds(history: History, state: FinalState) -> list[str]:
    """The kinds of violation the checker finds."""
    return sorted(v.kind for v in check(history, COUNT, state, END))


def test_a_clean_history_has_no_violation() -> None:
    """Grants within the count, releases gone, held ones listed and updating."""
    history = History()
    session(history, 1, granted=1.0, release_sent=3.0, released=3.1)
    session(history, 2, granted=2.0)
    session(history, 3, granted=3.0)  # 1 released when 3 was granted: two held
    session(history, 4, granted=None, denied=True)
    assert kinds(history, final(history, 2, 3)) == []


def test_over_count_is_seen() -> None:
    """Three licences confirmed held at one instant with a count of two."""
    history = History()
    session(history, 1, granted=1.0, release_sent=5.0, released=5.1)
    session(history, 2, granted=2.0, release_sent=6.0, released=6.1)
    session(history, 3, granted=4.0, release_sent=7.0, released=7.1)
    assert kinds(history, final(history)) == ["over-count"]


def test_a_licence_released_before_the_next_grant_is_not_counted() -> None:
    """The interval ends at the RELEASE's invocation: no false over-count."""
    history = History()
    session(history, 1, granted=1.0, release_sent=4.0, released=4.5)
    session(history, 2, granted=2.0)
    session(history, 3, granted=4.2)
    assert kinds(history, final(history, 2, 3)) == []


def test_a_lost_licence_is_seen() -> None:
    """A confirmed, never released licence missing from the end, or not updating."""
    history = History()
    session(history, 1, granted=1.0)
    session(history, 2, granted=2.0)
    assert kinds(history, final(history, 2)) == ["lost", "lost"]
    assert kinds(history, final(history, 1, 2, updates={"h1": "BADHANDLE"})) == ["lost"]


def test_a_resurrected_release_is_seen() -> None:
    """A licence whose RELEASE got OK listed again, and answering UPDATE OK."""
    history = History()
    session(history, 1, granted=1.0, release_sent=2.0, released=2.1)
    assert kinds(history, final(history, 1)) == ["resurrected", "resurrected"]


def test_a_handle_granted_to_two_tokens_is_seen() -> None:
    """One handle, two client tokens."""
    history = History()
    session(history, 1, granted=1.0, release_sent=2.0, released=2.1, handle="same")
    session(history, 2, granted=3.0, release_sent=4.0, released=4.1, handle="same")
    assert kinds(history, final(history)) == ["double-handle"]


def test_phantoms_and_an_overfull_listing_are_seen() -> None:
    """A denied session listed, a holder of no session, more listed than the count."""
    history = History()
    session(history, 1, granted=None, denied=True)
    state = final(history, 1)
    state.listed += [("w9", 99), ("w8", 98)]
    assert kinds(history, state) == ["final-count", "phantom", "phantom", "phantom"]


def test_an_unresolved_request_may_be_listed() -> None:
    """A REQUEST whose outcome stayed unknown may or may not hold a licence."""
    history = History()
    s = session(history, 1, granted=None)
    s.request_outcome = "unknown"
    assert kinds(history, final(history, 1)) == []
    assert kinds(history, final(history)) == []


def test_no_primary_at_the_end_is_a_violation() -> None:
    """The domain must serve again after the final heal."""
    history = History()
    assert kinds(history, FinalState(None, problem="nobody")) == ["no-convergence"]


def test_majority_connected_needs_both_directions() -> None:
    """A majority whose members lose what one sends to another is not connected."""
    assert majority_connected(Snapshot(0.0, frozenset({1, 2}), frozenset()), 3)
    assert not majority_connected(Snapshot(0.0, frozenset({1, 2}), frozenset({(1, 2)})), 3)
    assert majority_connected(Snapshot(0.0, frozenset({1, 2, 3}), frozenset({(1, 2)})), 3)
    assert not majority_connected(Snapshot(0.0, frozenset({1, 2}), frozenset()), 5)


def test_availability_counts_only_stable_majorities() -> None:
    """Buckets count once the same majority has been connected for the bound; a
    bucket is served if some attempt got a served answer in it."""
    history = History()
    history.timeline = [
        Snapshot(0.0, frozenset({1, 2, 3}), frozenset()),
        Snapshot(10.0, frozenset({1}), frozenset()),  # two killed: no majority
        Snapshot(20.0, frozenset({1, 2}), frozenset()),
    ]
    assert stable_majority(history.timeline, 3, 8.0, 40.0) == [(8.0, 10.0), (28.0, 40.0)]
    op = Operation(1, 1, "REQUEST", 0.0)
    for t, answer in [(8.5, "OK"), (9.5, "NEW_MASTER"), (29.2, "NOLICENCES"), (31.5, "timeout")]:
        op.attempts.append(Attempt(1, t - 0.1, t, answer))
    history.operations.append(op)
    figures = availability(history, 3, 8.0, 40.0)
    assert figures["eligible_seconds"] == 2 + 12
    assert figures["served_seconds"] == 2
    assert figures["longest_unserved_seconds"] == 10  # 30..39; 9 alone does not join them
    assert figures["unserved_answers"] == {"NEW_MASTER": 1, "timeout": 1}
