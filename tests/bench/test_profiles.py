"""`bench/profiles.py`: py-spy's collapsed stacks summed by area and by function.

Fixed samples (what ``py-spy record --format raw`` writes: frames root first,
separated by ``;``, then the sample count); no process is profiled here.
"""

from __future__ import annotations

import pytest

from bench.profiles import AREAS, Profile, area_of, parse_collapsed

TWISTED = "/usr/lib/python3/site-packages/twisted"
REPO = "hqnlsd"  # py-spy names files relative to their sys.path entry

T, R = TWISTED, REPO
JSON = "/usr/lib/python3.11/json"
SAMPLE = "\n".join([
    f"run (twistd:1);doIteration ({T}/internet/epollreactor.py:10);poll (<built-in>:0) 40",
    f"run (twistd:1);doRead ({T}/internet/tcp.py:5);dataReceived ({R}/protocols/line.py:3);"
    f"parse ({R}/protocols/grammar.py:9) 20",
    f"run (twistd:1);doRead ({T}/internet/tcp.py:5);dataReceived ({R}/server.py:3);"
    f"request ({R}/licensing/allocation.py:40);dumps ({JSON}/__init__.py:231);"
    f"encode ({JSON}/encoder.py:199) 15",
    f"run (twistd:1);_commit ({R}/persistence/store.py:300);execute (<built-in>:0) 10",
    f"run (twistd:1);emit ({T}/logger/_logger.py:120);formatTime ({T}/python/log.py:300) 9",
    f"run (twistd:1);licence_logged ({R}/logging/observer.py:20) 4",
    f"run (twistd:1);handle ({R}/domain/node.py:70) 2",
    f"run (twistd:1);callWithLogger ({T}/python/log.py:98);"
    f"callWithContext ({T}/python/context.py:81);_doReadOrWrite ({T}/internet/posix.py:9) 3",
    f"run (twistd:1);callWithLogger ({T}/python/log.py:98);"
    f"callWithContext ({T}/python/context.py:81) 1",
]) + "\n"


def test_collapsed_lines_are_parsed_into_frames_and_counts() -> None:
    """Each line: the frames root first and the count; blank and broken lines are skipped."""
    stacks = parse_collapsed(SAMPLE + "\n\nnot a stack line\n")
    assert len(stacks) == 9
    thread, frames, count = stacks[0]
    assert (thread, count) == ("", 40)
    assert frames[-1] == ("poll", "<built-in>")
    assert frames[1] == ("doIteration", f"{TWISTED}/internet/epollreactor.py")


def test_a_sample_goes_to_the_innermost_frame_of_a_known_area() -> None:
    """Standard-library frames (json, sqlite3 calls) count for the area that called
    them: json encoding inside the engine is the engine's."""
    stacks = {frames[-1][0]: frames for _, frames, _ in parse_collapsed(SAMPLE)}
    assert area_of(stacks["poll"]) == "idle"  # the reactor's poll: waiting for I/O
    assert area_of(stacks["parse"]) == "protocol"
    assert area_of(stacks["encode"]) == "licensing engine"
    assert area_of(stacks["execute"]) == "journal"
    assert area_of(stacks["formatTime"]) == "logging"
    assert area_of(stacks["licence_logged"]) == "logging"
    assert area_of(stacks["handle"]) == "domain"
    assert area_of([("main", "/somewhere/else.py")]) == "other"
    wrapped = parse_collapsed(SAMPLE)
    assert area_of(wrapped[7][1]) == "reactor and sockets"
    assert area_of(wrapped[8][1]) == "other"  # twistd's log context is no area


def test_the_profile_sums_areas_and_functions_in_percent() -> None:
    """Shares of all samples by area (every area listed, largest first) and the
    functions with the most samples of their own."""
    profile = Profile.from_collapsed(SAMPLE)
    assert profile.samples == 104
    shares = profile.area_shares()
    assert next(iter(shares)) == "idle"
    assert shares == pytest.approx({
        "idle": 4000 / 104, "reactor and sockets": 300 / 104, "protocol": 2000 / 104,
        "licensing engine": 1500 / 104, "journal": 1000 / 104, "logging": 1300 / 104,
        "domain": 200 / 104, "other": 100 / 104,
        **{a: 0.0 for a in AREAS if a not in (
            "idle", "reactor and sockets", "protocol", "licensing engine", "journal",
            "logging", "domain", "other")},
    })
    top = profile.top_functions(2)
    assert top[0] == ("poll (<built-in>)", pytest.approx(4000 / 104))
    assert top[1][0] == "parse (protocols/grammar.py)"
    assert "idle 38%" in profile.summary()


def test_other_threads_are_counted_apart_as_busy_or_waiting() -> None:
    """With py-spy's thread names only the reactor thread's samples are split by area;
    another thread (the journal's writer) is busy unless its innermost frame waits."""
    text = "\n".join([
        f"thread (1): MainThread;run (twistd:1);parse ({R}/protocols/grammar.py:9) 6",
        f"thread (1): MainThread;run (twistd:1);"
        f"EPollReactor.doPoll ({T}/internet/epollreactor.py:244) 4",
        f"thread (2): ThreadPoolExecutor-0_0;_worker (concurrent/futures/thread.py:83);"
        f"Journal._write ({R}/persistence/store.py:547) 3",
        "thread (2): ThreadPoolExecutor-0_0;_worker (concurrent/futures/thread.py:83);"
        "get (queue.py:171);wait (threading.py:320) 7",
        "thread (3): Dummy-1 5",
        f"thread (4): hqnlsd-domain;ThreadWriter._run ({R}/persistence/store.py:221) 9",
        f"thread (4): hqnlsd-domain;ThreadWriter._run ({R}/persistence/store.py:221);"
        f"Journal._write ({R}/persistence/store.py:602) 1",
        "thread (1): MainThread 0",
    ])
    profile = Profile.from_collapsed(text)
    assert profile.samples == 10
    assert profile.area_shares()["protocol"] == pytest.approx(60.0)
    assert profile.area_shares()["idle"] == pytest.approx(40.0)
    assert profile.thread_busy() == {
        "ThreadPoolExecutor-0_0": pytest.approx(30.0),
        "hqnlsd-domain": pytest.approx(10.0),  # waiting for work in its loop
        "Dummy-1": 0.0,
    }
    assert "Other threads busy: ThreadPoolExecutor-0_0 30%" in profile.summary()


def test_an_empty_profile_says_so() -> None:
    """No samples (py-spy saw nothing): no division by zero, a plain statement."""
    profile = Profile.from_collapsed("")
    assert profile.samples == 0
    assert profile.summary() == "no samples"
