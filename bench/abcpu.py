#!/usr/bin/env python3
"""A/B of the single-host daemon's CPU per pair: two source trees, interleaved runs.

Starts one single-host ``twistd -n hqnlsd`` per source tree (``--tree``, given
twice or more: e.g. a checkout of the old commit and the working tree), each
from that tree (its root first on the daemon's PYTHONPATH), and runs
`bench/sidebyside.py`'s closed-loop churn against them in turn, rotating the
order every round, so that a machine shared with other work loads both alike.
Prints, per tree, the median server CPU per pair, pairs/s and (with
``--rate``) the open-loop p50/p99.

``--switches-off LICENSE`` starts every daemon with those log switches off (the
state file ``hqn_lsa loglevel`` writes, put in place before the start).
``--profile DIR`` runs ``py-spy record`` on every daemon over the whole run and
writes DIR/tN.txt (raw collapsed stacks; ``--gil``: only the thread holding
the GIL is sampled, a proxy for the Python CPU, not the fsync waits).

Example::

    git worktree add /tmp/base main   # or: git archive main | tar -x -C /tmp/base
    python bench/abcpu.py --tree /tmp/base --tree . --workdir /tmp/abcpu --repeats 5 --seconds 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import failover, sidebyside
from hqnlsd.logging.switches import STARTUP, SWITCHES_FILE, Switch, _encode
from tests import daemons as daemons_module


def write_switches(state_dir: Path, switches_off: list[str]) -> Path:
    """The log switches file ``hqn_lsa loglevel`` writes: the start-up switches
    without ``switches_off``, read by the daemon at start."""
    value = STARTUP
    for off in switches_off:
        value &= ~Switch[off]
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / SWITCHES_FILE
    path.write_text(_encode(Switch(value)))
    path.chmod(0o600)
    return path


def start(tree: Path, root: Path, switches_off: list[str]) -> Any:
    """A started single-host daemon whose code comes from ``tree``."""
    harness = failover.DaemonHarness(root)
    daemon = failover.single_host(harness, sidebyside.CHURN_LICENCES)
    if switches_off:
        write_switches(daemon.state_dir, switches_off)
    saved = daemons_module.REPO_ROOT
    daemons_module.REPO_ROOT = tree.resolve()
    try:
        daemon.start_and_wait()
    finally:
        daemons_module.REPO_ROOT = saved
    return harness, daemon


def thread_ticks(pid: int) -> dict[str, tuple[int, int]]:
    """User and system clock ticks of every thread of ``pid``, by thread name."""
    out: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            text = (task / "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            user, system = out.get(name, (0, 0))
            out[name] = (user + int(fields[11]), system + int(fields[12]))
    return out


def split_us(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], pairs: int
) -> dict[str, float]:
    """Per pair, microseconds of user and of system CPU, by thread name (``/proc``
    comm: Python 3.11 threads keep the process's, so usually one name)."""
    tick = 1e6 / os.sysconf("SC_CLK_TCK") / pairs
    out: dict[str, float] = {}
    for name, (user, system) in after.items():
        u0, s0 = before.get(name, (0, 0))
        out[f"{name} user"] = round((user - u0) * tick, 1)
        out[f"{name} sys"] = round((system - s0) * tick, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--load-processes", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="also open loop at this rate")
    parser.add_argument("--switches-off", default="", help="e.g. LICENSE")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    off = [s.strip().upper() for s in args.switches_off.split(",") if s.strip()]
    names = [f"{i}:{t.resolve().name}" for i, t in enumerate(args.tree)]
    results: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    args.workdir.mkdir(parents=True, exist_ok=False)
    with contextlib.ExitStack() as stack:
        runners = []
        spies = []
        for i, (name, tree) in enumerate(zip(names, args.tree, strict=True)):
            harness, daemon = start(tree, args.workdir / f"t{i}", off)
            stack.callback(harness.close)
            target = {"host": daemon.address, "port": daemon.port}
            runners.append((name, target, daemon.pid))
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(daemon.pid),
                        "--format",
                        "raw",
                        "-o",
                        str(args.profile / f"t{i}.txt"),
                        "--rate",
                        "200",
                        "--gil",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                spies.append(spy)
        for turn in range(args.repeats):
            for name, target, pid in sidebyside.rotated(runners, turn):
                ticks = thread_ticks(pid)
                r = sidebyside.churn("hqnlsd", target, [pid], args, 0.0)
                split = split_us(ticks, thread_ticks(pid), r["pairs"])
                for key in ("cpu_us_per_pair", "pairs_per_second"):
                    results[name].setdefault(key, []).append(r[key])
                for key, value in split.items():
                    results[name].setdefault(key, []).append(value)
                print(
                    f"round {turn} {name}: closed {r['pairs_per_second']} pairs/s, "
                    f"{r['cpu_us_per_pair']} us/pair {split}",
                    flush=True,
                )
                if args.rate:
                    r = sidebyside.churn("hqnlsd", target, [pid], args, args.rate)
                    for key in ("p50_ms", "p99_ms"):
                        results[name].setdefault(f"open {key}", []).append(r[key])
                    results[name].setdefault("open cpu_us_per_pair", []).append(
                        r["cpu_us_per_pair"]
                    )
                    print(
                        f"round {turn} {name}: open p50 {r['p50_ms']} p99 {r['p99_ms']} ms, "
                        f"{r['cpu_us_per_pair']} us/pair",
                        flush=True,
                    )
        for spy in spies:
            spy.send_signal(2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(timeout=30)
    summary = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in results.items()}
    for name, figures in summary.items():
        print(name, " ".join(f"{k}={v}" for k, v in figures.items()))
    if args.json:
        print(json.dumps({"medians": summary, "runs": results}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
