"""End to end: short chaos schedules against real 3- and 5-member domains.

Each schedule (`bench/chaos.py`, where the faults, the clients and the checker
are described) starts fresh ``twistd -n hqnlsd`` daemons on 127.0.0.1..N with
every peer byte through a fault proxy, runs concurrent clients through seeded
faults (SIGKILL and restart, SIGSTOP/SIGCONT, primary kills, restart storms,
partitions of every shape, silent and loud, one-way cuts), heals, and checks
the history and the final state: never more confirmed licences than the count,
no confirmed licence lost, no released licence back, no handle held by two
tokens, and the domain serving again after the heal. Any violation fails the
test with the seed, the trace and the faults just before it.

The schedules are short so that CI runs them in a couple of minutes, and
leave out the calm steps (availability windows) so that every second goes to
faults; ``python bench/chaos.py --schedules K --duration D`` runs many and
longer ones, with calm steps and the availability figure.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, Nemesis, run_schedule

pytestmark = pytest.mark.e2e

#: Seconds of faults per schedule in CI.
DURATION = 15.0


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory under the system's temporary one (the daemons' admin
    sockets live deep inside it, and AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="chaos-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


#: (members, seed). Without calm steps, the first fault steps of these seeds are
#: (as drawn; a step that depends on the live state may differ):
#: 105: SIGSTOP of the primary, primary killed, restart, the primary isolated;
#: 128: the primary isolated, a restart storm, a one-way cut, the primary isolated;
#: 116 (5 members): two primaries killed, SIGSTOP, restarts, the primary isolated.
SCHEDULES = [(3, 105), (3, 128), (5, 116)]


@pytest.mark.parametrize(
    ("members", "seed"),
    SCHEDULES,
    ids=[f"{members}-members-seed-{seed}" for members, seed in SCHEDULES],
)
def test_chaos_schedule_keeps_every_promise(workdir: Path, members: int, seed: int) -> None:
    """One seeded schedule: faults happen, clients get licences, and the checker
    finds no violation (a failure prints the replay command and the trace)."""
    config = ChaosConfig(
        members=members, seed=seed, duration=DURATION, count=members, calm=False
    )
    result = run_schedule(config, workdir / f"s{seed}")
    print(result.summary())
    print("nemesis log:\n" + result.nemesis_text())
    if result.violations:
        print(result.log_tails)
    assert not result.violations, result.summary()
    # Not vacuous: faults were injected and licences were granted and released.
    assert sum(result.faults.values()) >= 3, result.faults
    assert result.operations.get("REQUEST", {}).get("ok", 0) > 0, result.operations
    assert result.operations.get("RELEASE", {}).get("ok", 0) > 0, result.operations
    assert result.final_primary is not None


def kills_only(self: Nemesis) -> None:
    """A nemesis step that only SIGKILLs members (the primary more often than not,
    at whatever moment the pause ends: writes are in flight on its writer thread
    under this load) and restarts them."""
    c = self.cluster
    choices: list[tuple[str, float]] = []
    if c.down:
        choices.append(("restart", 3.0))
    if len(c.down) + len(c.stopped) < c.size - 1:
        choices += [("kill-primary", 3.0), ("kill", 1.5)]
    kinds, weights = zip(*choices, strict=True)
    kind = self.rng.choices(kinds, weights)[0]
    getattr(self, "do_" + kind.replace("-", "_"))()


def test_kills_under_load_keep_every_promise(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of the primary (and of backups) at random moments while many clients
    REQUEST and RELEASE as fast as they are answered: every answered grant is still
    held after the fail-over, no answered release comes back (the checker of
    `bench/chaos.py`), with each member's storage written by its writer thread."""
    monkeypatch.setattr(Nemesis, "step", kills_only)
    config = ChaosConfig(
        members=3, seed=7, duration=DURATION, workers=12, count=6, pause=(0.3, 1.2), calm=False
    )
    result = run_schedule(config, workdir / "kills")
    print(result.summary())
    print("nemesis log:\n" + result.nemesis_text())
    if result.violations:
        print(result.log_tails)
    assert not result.violations, result.summary()
    kills = result.faults.get("sigkill", 0) + result.faults.get("sigkill-primary", 0)
    assert kills >= 3, result.faults
    assert result.faults.get("sigkill-primary", 0) >= 1, result.faults
    assert result.operations.get("REQUEST", {}).get("ok", 0) > 20, result.operations
    assert result.operations.get("RELEASE", {}).get("ok", 0) > 20, result.operations
    assert result.final_primary is not None
