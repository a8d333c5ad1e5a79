"""Tests of hqnlsd.domain.sqlstore: the SQLite `DomainStorage` of the daemon.

The contract tests run against both `MemoryStorage` (the reference the
simulation uses) and `SqliteDomainStorage`, so the two keep the same
semantics; then what only a file can do (survive a reopen, refuse another
domain's file, refuse a second opener); then one simulated domain whose
members keep their state in SQLite and reopen it at every restart.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hqnlsd.domain.sqlstore import (
    DomainStoreError,
    SqliteDomainStorage,
    domain_file_name,
)
from hqnlsd.domain.storage import Amnesia, DomainStorage, MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Ballot, Value, View
from tests.sim.harness import SimSettings, Simulation

DOMAIN_ID = "127.0.0.1 0x00000001,127.0.0.2 0x00000002,127.0.0.3 0x00000003"

Factory = Callable[[], DomainStorage]


@pytest.fixture(params=["memory", "sqlite"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory of empty storages of one kind (each call: a fresh one)."""
    opened: list[SqliteDomainStorage] = []
    counter = iter(range(1_000_000))

    def memory() -> DomainStorage:
        return MemoryStorage()

    def sqlite_storage() -> DomainStorage:
        storage = SqliteDomainStorage(tmp_path / f"d{next(counter)}.sqlite3", DOMAIN_ID)
        opened.append(storage)
        return storage

    yield memory if request.param == "memory" else sqlite_storage
    for storage in opened:
        storage.close()


# -- the contract (both implementations) -------------------------------------------


def test_round_trip(make_storage: Factory) -> None:
    """Views, acceptor state and entries come back as stored, as copies."""
    storage = make_storage()
    assert storage.load() is None
    state = {"held": ["a"]}
    view = View(1, frozenset({1, 2}), Ballot(1, 1))
    storage.save_view(view, state)
    state["held"].append("mutated")
    storage.save_promise(Ballot(3, 2))
    value = Value(View(2, frozenset({2}), Ballot(3, 2)), {"held": []})
    storage.save_accepted(Ballot(3, 2), value)
    storage.append(0, [("e1",), ("e2",)])
    storage.append(1, [("e3",)])
    durable = storage.load()
    assert durable is not None
    assert durable.view == view
    assert durable.base == {"held": ["a"]}
    assert durable.promised == Ballot(3, 2)
    assert durable.accepted == (Ballot(3, 2), value)
    assert durable.entries == (("e1",), ("e3",))


def test_append_at_the_end_and_with_a_gap(make_storage: Factory) -> None:
    """Appending at the end extends; beyond the end is refused and changes nothing."""
    storage = make_storage()
    storage.save_view(View(1, frozenset({1})), None)
    storage.append(0, [(1,)])
    storage.append(1, [(2,), (3,)])
    with pytest.raises(ValueError):
        storage.append(5, [("gap",)])
    durable = storage.load()
    assert durable is not None
    assert durable.entries == ((1,), (2,), (3,))


def test_the_end_of_the_log_is_known_after_every_kind_of_write(make_storage: Factory) -> None:
    """Where the log ends (what an append may extend) after replacing, refusing and
    a new view: the SQLite store keeps it between appends instead of counting."""
    storage = make_storage()
    storage.save_view(View(1, frozenset({1})), None)
    storage.append(0, [(1,), (2,), (3,)])
    storage.append(1, [(9,)])  # replaces from 1 on: the log is now 2 long
    with pytest.raises(ValueError):
        storage.append(3, [("gap",)])
    storage.append(2, [(4,)])
    durable = storage.load()
    assert durable is not None and durable.entries == ((1,), (9,), (4,))
    storage.save_view(View(2, frozenset({1})), None)
    with pytest.raises(ValueError):
        storage.append(1, [("gap",)])
    storage.append(0, [(5,)])
    durable = storage.load()
    assert durable is not None and durable.entries == ((5,),)


def test_save_view_clears_entries_and_acceptor_state(make_storage: Factory) -> None:
    """A new view starts with an empty log and no promise."""
    storage = make_storage()
    storage.save_view(View(1, frozenset({1, 2})), {"x": 1})
    storage.append(0, [("a",)])
    storage.save_accepted(Ballot(2, 2), Value(View(2, frozenset({2})), {"x": 2}))
    storage.save_view(View(2, frozenset({2})), {"x": 2})
    fresh = storage.load()
    assert fresh is not None
    assert (fresh.view.epoch, fresh.base) == (2, {"x": 2})
    assert (fresh.entries, fresh.promised, fresh.accepted) == ((), None, None)


def test_save_accepted_is_also_a_promise(make_storage: Factory) -> None:
    """Accepting at a ballot records that ballot as promised too."""
    storage = make_storage()
    storage.save_view(View(1, frozenset({1, 2})), None)
    storage.save_promise(Ballot(1, 1))
    storage.save_accepted(Ballot(4, 2), Value(View(2, frozenset({2})), None))
    durable = storage.load()
    assert durable is not None
    assert durable.promised == Ballot(4, 2)


def test_writes_need_a_view_first(make_storage: Factory) -> None:
    """Acceptor state and entries belong to a view: writing them first is a bug."""
    storage = make_storage()
    with pytest.raises(RuntimeError):
        storage.save_promise(Ballot(1, 1))
    with pytest.raises(RuntimeError):
        storage.append(0, [("a",)])
    with pytest.raises(RuntimeError):
        storage.save_accepted(Ballot(1, 1), Value(View(1, frozenset({1})), None))
    assert storage.load() is None


def test_not_json_is_refused(make_storage: Factory) -> None:
    """A state or entry that is not JSON-safe is refused, not stored half-way."""
    storage = make_storage()
    with pytest.raises(TypeError):
        storage.save_view(View(1, frozenset({1})), {"when": object()})
    storage.save_view(View(1, frozenset({1})), {"ok": True})
    with pytest.raises(TypeError):
        storage.append(0, [(object(),)])
    durable = storage.load()
    assert durable is not None
    assert (durable.base, durable.entries) == ({"ok": True}, ())


json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=6)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("view"), st.integers(1, 50), json_values),
        st.tuples(st.just("promise"), st.integers(0, 9), st.integers(1, 5)),
        st.tuples(st.just("accept"), st.integers(0, 9), json_values),
        st.tuples(st.just("append"), st.integers(0, 6), st.lists(json_values, max_size=3)),
    ),
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_same_answers_as_memory_storage(ops: list[tuple[object, ...]], tmp_path: Path) -> None:
    """Any sequence of writes leaves SQLite and memory storage loading the same thing."""
    memory = MemoryStorage()
    path = tmp_path / "same.sqlite3"
    path.unlink(missing_ok=True)
    disk = SqliteDomainStorage(path, DOMAIN_ID)
    try:
        for op in ops:
            outcomes = []
            for storage in (memory, disk):
                try:
                    _play(storage, op)
                    outcomes.append("ok")
                except (RuntimeError, ValueError) as error:
                    outcomes.append(type(error).__name__)
            assert outcomes[0] == outcomes[1], op
            assert memory.load() == disk.load()
    finally:
        disk.close()


def _play(storage: DomainStorage, op: tuple[object, ...]) -> None:
    kind = op[0]
    if kind == "view":
        epoch, state = op[1], op[2]
        assert isinstance(epoch, int)
        storage.save_view(View(epoch, frozenset({1, 2, 3})), state)
    elif kind == "promise":
        round_, rank = op[1], op[2]
        assert isinstance(round_, int) and isinstance(rank, int)
        storage.save_promise(Ballot(round_, rank))
    elif kind == "accept":
        round_, state = op[1], op[2]
        assert isinstance(round_, int)
        storage.save_accepted(Ballot(round_, 2), Value(View(9, frozenset({2})), state))
    else:
        start, batches = op[1], op[2]
        assert isinstance(start, int) and isinstance(batches, list)
        storage.append(start, [(batch,) for batch in batches])


# -- only a file ---------------------------------------------------------------------


def test_survives_reopen(tmp_path: Path) -> None:
    """What was written is there after closing and reopening (a restart)."""
    storage = SqliteDomainStorage.in_state_dir(tmp_path, DOMAIN_ID)
    storage.save_view(View(3, frozenset({1, 3}), Ballot(2, 1)), {"held": ["h"]})
    storage.append(0, [({"type": "Granted"},)])
    storage.save_promise(Ballot(5, 3))
    before = storage.load()
    storage.close()
    again = SqliteDomainStorage.in_state_dir(tmp_path, DOMAIN_ID)
    try:
        assert again.load() == before
        assert again.path.name == domain_file_name(DOMAIN_ID)
        assert stat.S_IMODE(again.path.stat().st_mode) == 0o600
    finally:
        again.close()


def test_each_call_is_committed_on_return(tmp_path: Path) -> None:
    """Another reader sees every write as soon as the call returns (no pending transaction)."""
    path = tmp_path / "c.sqlite3"
    storage = SqliteDomainStorage(path, DOMAIN_ID)
    storage.save_view(View(1, frozenset({1})), None)
    storage.append(0, [("a",)])
    assert not storage._db.in_transaction
    assert storage._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert storage.writes == 2
    storage.close()
    reader = sqlite3.connect(str(path))
    try:
        assert reader.execute("SELECT COUNT(*) FROM entries").fetchone() == (1,)
    finally:
        reader.close()


def test_another_domains_file_is_refused(tmp_path: Path) -> None:
    """A database written for one domain is not used for another."""
    path = tmp_path / "x.sqlite3"
    SqliteDomainStorage(path, DOMAIN_ID).close()
    with pytest.raises(DomainStoreError, match="belongs to domain"):
        SqliteDomainStorage(path, "some other domain")


def test_second_opener_is_refused(tmp_path: Path) -> None:
    """Two daemons on one state directory: the second fails at start-up."""
    first = SqliteDomainStorage.in_state_dir(tmp_path, DOMAIN_ID)
    first.save_view(View(1, frozenset({1})), None)
    try:
        with pytest.raises(DomainStoreError):
            SqliteDomainStorage.in_state_dir(tmp_path, DOMAIN_ID)
    finally:
        first.close()


def test_file_names_differ_per_domain() -> None:
    """Each domain gets its own file in the shared state directory."""
    assert domain_file_name("a") != domain_file_name("b")
    assert domain_file_name("a").startswith("domain-")


# -- the simulation on SQLite --------------------------------------------------------


class SqliteSimulation(Simulation):
    """The seeded simulation with members storing in SQLite, reopened at each restart."""

    def __init__(self, settings: SimSettings, seed: int, directory: Path) -> None:
        """Like `Simulation`, with one database per member in ``directory``."""
        super().__init__(settings, seed)
        self.directory = directory
        self.disks: dict[int, SqliteDomainStorage] = {}
        self.reopened = 0

    def restart(self, rank: int, rate: float | None = None) -> None:
        """Close and reopen the member's database, then start it from what it loads."""
        if rank not in self.nodes:
            old = self.disks.pop(rank, None)
            if old is not None:
                old.close()
                self.reopened += 1
            disk = SqliteDomainStorage(self.directory / f"member{rank}.sqlite3", "sim")
            self.disks[rank] = disk
            self.storage[rank] = disk  # type: ignore[assignment]
        super().restart(rank, rate)

    def close(self) -> None:
        """Close every database."""
        for disk in self.disks.values():
            disk.close()


@pytest.mark.parametrize("disk_delay", [0.0, 0.05])
def test_simulated_domain_on_sqlite(tmp_path: Path, disk_delay: float) -> None:
    """Three members on SQLite through crashes and restarts keep every invariant
    (with ``disk_delay``: each write completes up to 50 ms later, as on the
    daemon's writer thread, and a crash loses the writes in flight)."""
    settings = SimSettings(
        size=3, count=2, duration=30.0, timers=DomainTimers(), disk_delay=disk_delay
    )
    simulation = SqliteSimulation(settings, 5, tmp_path)
    try:
        stats = simulation.run()
    finally:
        simulation.close()
    assert stats.recoveries
    assert stats.grants > 0
    assert simulation.reopened > 0, "members restarted from their files"


# -- recovery: the amnesia record --------------------------------------------------


def test_amnesia_survives_new_views_until_cleared(make_storage: Factory) -> None:
    """The amnesia record is kept by save_view (only save_amnesia(None) ends it)."""
    storage: Any = make_storage()
    storage.save_view(View(1, frozenset({1, 2})), {"x": 1})
    assert storage.load().amnesia is None
    storage.save_amnesia(Amnesia(4, 9))
    storage.save_view(View(2, frozenset({1, 2})), {"x": 2})
    assert storage.load().amnesia == Amnesia(4, 9)
    storage.save_amnesia(None)
    assert storage.load().amnesia is None


def test_reset_amnesiac_replaces_everything(make_storage: Factory) -> None:
    """Recovery writes a view and state with no log and no acceptor state, amnesiac."""
    storage: Any = make_storage()
    storage.save_view(View(3, frozenset({1, 2, 3})), {"x": 1})
    storage.append(0, [("a",)])
    storage.save_accepted(Ballot(7, 2), Value(View(4, frozenset({2, 3})), {"x": 2}))
    storage.reset_amnesiac(View(0, frozenset({1, 2, 3})), {"held": []}, Amnesia(3, 7))
    durable = storage.load()
    assert (durable.view.epoch, durable.base, durable.entries) == (0, {"held": []}, ())
    assert (durable.promised, durable.accepted, durable.amnesia) == (None, None, Amnesia(3, 7))


def damaged_store(tmp_path: Path, view: str, promised: str | None = None) -> SqliteDomainStorage:
    """A store whose member row was overwritten with ``view`` (and ``promised``)."""
    storage = SqliteDomainStorage.in_state_dir(tmp_path, DOMAIN_ID)
    storage.save_view(View(2, frozenset({1, 2, 3})), {"held": []})
    storage._db.execute("UPDATE member SET view = ?, promised = ? WHERE id = 1", (view, promised))
    return storage


@pytest.mark.parametrize(
    ("view", "epoch"),
    [
        ('{"epoch": 6, "members": [1, 3], "origin": [4, 1]}', 6),
        ("{not json", None),
        ('{"epoch": 6, "members": [1, 7]}', None),  # a rank outside the domain
        ('{"epoch": 100000000000000000000, "members": [1]}', None),  # no real epoch
        ('{"epoch": "six", "members": [1]}', None),
    ],
)
def test_salvage_believes_only_plausible_content(
    tmp_path: Path, view: str, epoch: int | None
) -> None:
    """salvage reads the stored epoch only from a valid view of this domain, and
    the highest readable ballot round from anywhere; it never raises."""
    storage = damaged_store(tmp_path, view, promised="[9, 2]")
    try:
        assert storage.salvage(frozenset({1, 2, 3})) == (epoch, 9)
    finally:
        storage.close()


def test_amnesia_survives_reopen_and_is_salvaged(tmp_path: Path) -> None:
    """The amnesia record is in the file (meta table): a restart keeps it, and a
    later salvage of the same file counts its epoch and round."""
    storage = SqliteDomainStorage.in_state_dir(tmp_path, DOMAIN_ID)
    storage.reset_amnesiac(View(0, frozenset({1, 2, 3})), {"held": []}, Amnesia(12, 30))
    storage.close()
    again = SqliteDomainStorage.in_state_dir(tmp_path, DOMAIN_ID)
    try:
        durable = again.load()
        assert durable is not None and durable.amnesia == Amnesia(12, 30)
        again._db.execute("UPDATE member SET view = 'garbage' WHERE id = 1")
        assert again.salvage(frozenset({1, 2, 3})) == (12, 30)
    finally:
        again.close()


def test_a_corrupt_file_is_told_apart_and_set_aside(tmp_path: Path) -> None:
    """A file SQLite cannot read is refused as corrupt (a locked or foreign one is
    not), and set_aside renames it, WAL files included, deleting nothing."""
    path = tmp_path / domain_file_name(DOMAIN_ID)
    path.write_text("not a database at all\n" * 100, "utf-8")
    with pytest.raises(DomainStoreError) as refused:
        SqliteDomainStorage(path, DOMAIN_ID)
    assert refused.value.corrupt
    (tmp_path / (path.name + "-wal")).write_bytes(b"wal")  # as a crash may leave one
    aside = SqliteDomainStorage.set_aside(path, "damaged-1")
    assert aside.read_text("utf-8").startswith("not a database")
    assert (tmp_path / (aside.name + "-wal")).read_bytes() == b"wal"
    assert not path.exists()
    fresh = SqliteDomainStorage(path, DOMAIN_ID)
    try:
        assert fresh.load() is None
        with pytest.raises(DomainStoreError) as locked:
            SqliteDomainStorage(path, DOMAIN_ID)
        assert not locked.value.corrupt
    finally:
        fresh.close()
    with pytest.raises(DomainStoreError) as foreign:
        SqliteDomainStorage(path, "another domain")
    assert not foreign.value.corrupt
