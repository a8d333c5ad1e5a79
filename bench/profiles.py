"""py-spy profiles of a daemon under load, summed by area: what limits a figure.

``py-spy record --format raw --threads --idle`` writes collapsed stacks: one line
per distinct stack, frames root first separated by ``;`` (each ``function
(file:line)``; the first ``thread (TID): NAME``), then the number of samples. With
``--idle`` every thread is sampled at every tick, so a count is a share of time.
`Profile` sums the reactor thread's (``MainThread``) samples two ways:

- by **area** of the daemon (`AREAS`): a sample counts for the innermost frame
  whose file belongs to an area, so standard-library and built-in frames (``json``,
  ``sqlite3``'s ``execute``) count for the code that called them; a sample whose
  innermost frame is the reactor's poll is "idle" (waiting for I/O: the reactor had
  nothing to do);
- by **function**: the samples in which a function is the innermost frame (its own
  time);

and gives every other thread's share of time busy (not waiting on a lock, queue or
condition): the journal's writer thread is one.

`start` runs py-spy on a process for a number of seconds (py-spy is a pip
package: ``pip install py-spy``; it needs permission to read the process, i.e.
the same user and ptrace allowed, or root).
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: Areas in the order a frame's file is tested against them: (area, substrings of
#: the file's path). A frame whose file matches none belongs to no area.
AREA_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("/hqnlsd/logging/", "/twisted/logger/", "/twisted/python/log.py",
                 "/twisted/python/logfile.py")),
    ("journal", ("/hqnlsd/persistence/",)),
    ("licensing engine", ("/hqnlsd/licensing/",)),
    ("domain", ("/hqnlsd/domain/",)),
    ("protocol", ("/hqnlsd/protocols/", "/hqnlsd/server.py", "/hqnlsd/answers.py",
                  "/hqnlsd/commit.py", "/hqnlsd/daemon/", "/hqnlsd/limits.py")),
    ("TLS", ("/OpenSSL/", "/twisted/protocols/tls.py", "/cryptography/",
             "/service_identity/", "/hqnlsd/tls.py")),
    ("reactor and sockets", ("/twisted/internet/", "/twisted/protocols/", "/selectors.py",
                             "/socket.py")),
    ("other hqnlsd", ("/hqnlsd/",)),
)
#: Every area, "idle" for the reactor waiting for I/O, and "other" for a sample in none.
AREAS: tuple[str, ...] = ("idle", *(area for area, _ in AREA_RULES), "other")
#: The reactor's poll: a sample in it (innermost) is the reactor waiting for I/O.
IDLE_FUNCTIONS = frozenset({"doPoll", "doSelect", "doKEvent", "doIteration"})
#: Innermost functions of a thread that waits (for work or a lock).
WAIT_FUNCTIONS = frozenset({"wait", "get", "_wait_for_tstate_lock", "join", "acquire",
                            "_worker", "select", "poll", "sleep"})
#: Innermost frames (py-spy's qualified names) that wait though their name does not
#: say so: hqnlsd's writer thread waits for work in `queue.SimpleQueue.get`, a C call
#: py-spy does not show, so its loop is the innermost frame.
WAIT_QUALNAMES = frozenset({"ThreadWriter._run"})
#: The thread a reactor runs in.
REACTOR_THREAD = "MainThread"

Frame = tuple[str, str]  # (function, file)


def parse_collapsed(text: str) -> list[tuple[str, list[Frame], int]]:
    """The stacks of py-spy's raw (collapsed) output: thread name ("" if py-spy was
    not asked for threads), frames root first, sample count; lines that are not
    ``frames count`` are skipped."""
    stacks: list[tuple[str, list[Frame], int]] = []
    for line in text.splitlines():
        body, _, count = line.rstrip().rpartition(" ")
        if not body or not count.isdigit():
            continue
        parts = body.split(";")
        thread = ""
        if parts[0].startswith("thread (") and "): " in parts[0]:
            thread = parts.pop(0).split("): ", 1)[1]
        frames: list[Frame] = []
        for part in parts:
            name, paren, where = part.partition(" (")
            file = where.rsplit(":", 1)[0] if paren else ""
            frames.append((name, file.rstrip(")")))
        stacks.append((thread, frames, int(count)))
    return stacks


#: Functions that wrap every reactor callback (twistd's log context): never an area.
WRAPPERS = frozenset({"callWithLogger", "callWithContext"})


def area_of(frames: Sequence[Frame]) -> str:
    """The area of a sample: that of its innermost frame in one, else "other".
    (py-spy names files relative to their ``sys.path`` entry, or absolute.)"""
    for name, file in reversed(frames):
        function = name.rsplit(".", 1)[-1]  # py-spy: "EPollReactor.doPoll"
        if file == "<built-in>" or function in WRAPPERS:
            continue
        if function in IDLE_FUNCTIONS and "twisted/internet/" in file:
            return "idle"
        path = file if file.startswith("/") else f"/{file}"
        for area, parts in AREA_RULES:
            if any(part in path for part in parts):
                return area
    return "other"


def short_file(file: str) -> str:
    """A file as a reader knows it: inside hqnlsd or twisted, else its base name."""
    path = file if file.startswith("/") else f"/{file}"
    for root in ("/hqnlsd/", "/twisted/"):
        if root in path:
            tail = path.rsplit(root, 1)[1]
            return tail if root == "/hqnlsd/" else f"twisted/{tail}"
    return file.rsplit("/", 1)[-1]


def waiting(frames: Sequence[Frame]) -> bool:
    """The innermost frame is a wait (for work, a lock or I/O), or there is no Python
    frame at all."""
    if not frames:
        return True
    name = frames[-1][0]
    return name in WAIT_QUALNAMES or name.rsplit(".", 1)[-1] in WAIT_FUNCTIONS


@dataclasses.dataclass
class Profile:
    """The reactor thread's samples by area and by innermost function, and every
    other thread's busy share."""

    areas: collections.Counter[str]
    functions: collections.Counter[str]
    threads: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    @property
    def samples(self) -> int:
        """The reactor thread's samples."""
        return sum(self.areas.values())

    @classmethod
    def from_collapsed(cls, text: str) -> Profile:
        """The profile of py-spy's raw output."""
        areas: collections.Counter[str] = collections.Counter()
        functions: collections.Counter[str] = collections.Counter()
        threads: dict[str, list[int]] = {}
        for thread, frames, count in parse_collapsed(text):
            if thread and thread != REACTOR_THREAD:
                busy_total = threads.setdefault(thread, [0, 0])
                busy_total[0] += 0 if waiting(frames) else count
                busy_total[1] += count
                continue
            areas[area_of(frames)] += count
            if frames:
                name, file = frames[-1]
                functions[f"{name} ({short_file(file)})"] += count
        return cls(areas, functions, {t: (b, n) for t, (b, n) in threads.items()})

    def area_shares(self) -> dict[str, float]:
        """Percent of the reactor thread's samples in each area (every area), largest
        first."""
        total = self.samples or 1
        return dict(sorted(((a, 100.0 * self.areas[a] / total) for a in AREAS),
                           key=lambda item: -item[1]))

    def top_functions(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` functions with the most samples of their own, in percent."""
        total = self.samples or 1
        return [(f, 100.0 * c / total) for f, c in self.functions.most_common(n)]

    def thread_busy(self) -> dict[str, float]:
        """Percent of its samples each other thread was busy, busiest first."""
        return dict(sorted(((t, 100.0 * b / n) for t, (b, n) in self.threads.items() if n),
                           key=lambda item: -item[1]))

    def summary(self, functions: int = 5) -> str:
        """One line: the areas above 0.5%, the top functions, the busy threads."""
        if not self.samples:
            return "no samples"
        areas = ", ".join(f"{a} {s:.0f}%" for a, s in self.area_shares().items() if s >= 0.5)
        top = "; ".join(f"{f} {s:.0f}%" for f, s in self.top_functions(functions))
        busy = ", ".join(f"{t} {s:.0f}%" for t, s in self.thread_busy().items() if s >= 0.5)
        return (f"reactor thread, {self.samples} samples: {areas}. Own time: {top}"
                + (f". Other threads busy: {busy}" if busy else ""))

    def as_dict(self) -> dict[str, object]:
        """The JSON form."""
        return {"samples": self.samples,
                "areas": {a: round(s, 1) for a, s in self.area_shares().items()},
                "top_functions": [[f, round(s, 1)] for f, s in self.top_functions(15)],
                "threads_busy": {t: round(s, 1) for t, s in self.thread_busy().items()}}


class ProfilerMissing(Exception):
    """py-spy is not installed."""


def start(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start py-spy sampling ``pid`` for ``seconds`` into ``out`` (raw format)."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise ProfilerMissing("py-spy not found: pip install py-spy")
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--format", "raw", "--threads", "--idle", "--nonblocking",
         "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def finish(spy: subprocess.Popen[bytes], out: Path, bound: float) -> Profile:
    """Wait (at most ``bound`` seconds) for ``spy`` and read its profile; an empty
    profile if py-spy failed (its error is not the benchmark's)."""
    try:
        spy.wait(bound)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    try:
        return Profile.from_collapsed(out.read_text(errors="replace"))
    except OSError:
        return Profile.from_collapsed("")
