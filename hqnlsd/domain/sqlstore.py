"""`DomainStorage` on SQLite in the state directory: one database per domain.

Same semantics as `hqnlsd.domain.storage.MemoryStorage` (and the same JSON
form of everything stored), but on disk: every call is one transaction,
committed with ``synchronous=FULL`` in WAL mode before it returns, so the
node's rule "persist, then answer" survives ``kill -9`` and power loss. The
database is opened in exclusive locking mode, so a second daemon pointed at the
same state directory fails at start-up instead of acting as the same member.

File name: ``domain-<id>.sqlite3`` where ``<id>`` is a short digest of the
domain's identity (`domain_file_name`), so several domains share one state
directory. The domain's identity is also written inside the file and checked
on open: a file of another domain is refused rather than silently used.

Every call is synchronous (one fsync each, durable on return). A daemon's node
makes them on a writer thread of its own (`hqnlsd.persistence.store.ThreadWriter`,
`DomainNode`), so the fsync does not stop the reactor. The node groups its log
writes: one `append` is in flight at a time, and every batch submitted, and every
Append received, while it is in flight is written by the next one, so a member
does one fsync per write under load however many requests it carries, plus one
per view change, never per heartbeat.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from hqnlsd.domain.storage import Amnesia, Durable
from hqnlsd.domain.view import Ballot, Batch, Value, View
from hqnlsd.securefiles import open_private, require_regular_all, sqlite_files

#: Largest epoch or ballot round believed when salvaging a damaged file: real
#: ones grow by one per view change, so anything beyond JSON's safe integers is
#: damage, not history.
_PLAUSIBLE = 2**53

#: Version of the schema below.
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS member ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " view TEXT NOT NULL, base TEXT NOT NULL, promised TEXT, accepted TEXT)",
    "CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, batch TEXT NOT NULL)",
)


class DomainStoreError(Exception):
    """The domain database cannot be opened or used; the message says why.

    ``corrupt``: SQLite says the file is not a database or is malformed (its
    content is damaged, as opposed to locked, unreadable or another domain's).
    """

    def __init__(self, message: str, corrupt: bool = False) -> None:
        """The error, and whether the file's content is what is wrong."""
        super().__init__(message)
        self.corrupt = corrupt


#: SQLite's names for a file whose content is damaged.
_CORRUPT = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


def domain_file_name(domain_id: str) -> str:
    """The database file name for ``domain_id`` (safe on any file system)."""
    digest = hashlib.sha256(domain_id.encode("utf-8")).hexdigest()[:16]
    return f"domain-{digest}.sqlite3"


def _dumps(value: object) -> str:
    """JSON text of ``value``; TypeError/ValueError if it is not JSON-safe."""
    return _encode(value)


#: Made once: `json.dumps` with options builds a new encoder for every call. The
#: same options as ``json.dumps(value, separators=(",", ":"), allow_nan=False)``.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class SqliteDomainStorage:
    """A `DomainStorage` in one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, domain_id: str) -> None:
        """Open (or create) the database at ``path`` for ``domain_id``.

        @raise DomainStoreError: if the file cannot be opened, is locked by
            another process, or belongs to another domain.
        """
        self.path = Path(path)
        self.domain_id = domain_id
        #: durable writes made through this object, for tests and metrics
        self.writes = 0
        #: rows of ``entries`` as of the last write (None: ask the database), and
        #: whether the member row is known to exist: saves two queries per append
        self._count: int | None = None
        self._member_known = False
        try:
            # SQLite follows links: none may stand where our files go; a new file is
            # made 0600 here, never through a link.
            require_regular_all(sqlite_files(self.path))
            if not os.path.lexists(self.path):
                os.close(open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except OSError as error:
            raise DomainStoreError(f"domain database {self.path}: {error}") from None
        try:
            # Used from the node's writer thread (one call at a time, `DomainNode`),
            # and from the reactor thread only when no writer is running.
            self._db = sqlite3.connect(
                str(self.path), timeout=0.5, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise DomainStoreError(f"domain database {self.path}: {error}") from None
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._check_meta()
        except (sqlite3.Error, DomainStoreError) as error:
            self._db.close()
            if isinstance(error, DomainStoreError):
                raise
            corrupt = getattr(error, "sqlite_errorname", "") in _CORRUPT
            raise DomainStoreError(f"domain database {self.path}: {error}", corrupt) from None
        self.writes = 0

    @staticmethod
    def set_aside(path: Path, suffix: str) -> Path:
        """Rename a corrupt database (and its WAL files) to ``NAME.SUFFIX``, never
        deleting anything; the new name of the database."""
        aside = path.with_name(f"{path.name}.{suffix}")
        for extra in ("-wal", "-shm"):
            companion = path.with_name(path.name + extra)
            if os.path.lexists(companion):
                companion.rename(aside.with_name(aside.name + extra))
        path.rename(aside)
        return aside

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, domain_id: str) -> SqliteDomainStorage:
        """The storage of ``domain_id`` inside the state directory."""
        return cls(Path(state_dir) / domain_file_name(domain_id), domain_id)

    # -- DomainStorage ---------------------------------------------------------

    def load(self) -> Durable | None:
        """See `DomainStorage.load`."""
        row = self._db.execute(
            "SELECT view, base, promised, accepted FROM member WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        view, base, promised, accepted = row
        batches = [
            json.loads(text)
            for (text,) in self._db.execute("SELECT batch FROM entries ORDER BY idx")
        ]
        accepted_pair = None
        if accepted is not None:
            ballot, value = json.loads(accepted)
            accepted_pair = (Ballot.from_json(ballot), Value.from_json(value))
        amnesia = self._meta("amnesia")
        return Durable(
            view=View.from_json(json.loads(view)),
            base=json.loads(base),
            entries=tuple(tuple(batch) for batch in batches),
            promised=None if promised is None else Ballot.from_json(json.loads(promised)),
            accepted=accepted_pair,
            amnesia=None if amnesia is None else Amnesia.from_json(json.loads(amnesia)),
        )

    def save_view(self, view: View, base: object) -> None:
        """See `DomainStorage.save_view`."""
        view_text, base_text = _dumps(view.to_json()), _dumps(base)
        self._count = None
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO member (id, view, base, promised, accepted)"
                " VALUES (1, ?, ?, NULL, NULL)",
                (view_text, base_text),
            )
            self._db.execute("DELETE FROM entries")
        self._count, self._member_known = 0, True

    def save_amnesia(self, amnesia: Amnesia | None) -> None:
        """See `DomainStorage.save_amnesia` (kept in the ``meta`` table)."""
        with self._transaction():
            self._require()
            self._set_amnesia(amnesia)

    def reset_amnesiac(self, view: View, base: object, amnesia: Amnesia) -> None:
        """Recovery: replace everything by ``view``/``base``, no log, no acceptor
        state, with the amnesia record, in one transaction."""
        view_text, base_text = _dumps(view.to_json()), _dumps(base)
        self._count = None
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO member (id, view, base, promised, accepted)"
                " VALUES (1, ?, ?, NULL, NULL)",
                (view_text, base_text),
            )
            self._db.execute("DELETE FROM entries")
            self._set_amnesia(amnesia)
        self._count, self._member_known = 0, True

    def salvage(self, domain: frozenset[int]) -> tuple[int | None, int]:
        """What can still be believed of a damaged store: the epoch of the stored
        view (None if it cannot be read, names ranks outside ``domain``, or is
        beyond any real epoch), and the highest ballot round readable anywhere
        in it (0 if none). Never raises for bad content."""
        epochs: list[int] = []
        rounds: list[int] = []
        row = self._db.execute(
            "SELECT view, promised, accepted FROM member WHERE id = 1"
        ).fetchone()
        view_text, promised, accepted = row if row is not None else (None, None, None)
        view = _salvage(lambda: View.from_json(json.loads(str(view_text))))
        epoch = None
        if (
            isinstance(view, View)
            and view.members
            and view.members <= domain
            and 0 <= view.epoch < _PLAUSIBLE
        ):
            epoch = view.epoch
            if view.origin is not None:
                rounds.append(view.origin.round)
        ballot = _salvage(lambda: Ballot.from_json(json.loads(str(promised))))
        if isinstance(ballot, Ballot):
            rounds.append(ballot.round)
        pair = _salvage(lambda: json.loads(str(accepted)))
        if isinstance(pair, list) and pair:
            ballot = _salvage(lambda: Ballot.from_json(pair[0]))
            if isinstance(ballot, Ballot):
                rounds.append(ballot.round)
        amnesia = _salvage(lambda: Amnesia.from_json(json.loads(self._meta("amnesia") or "")))
        if isinstance(amnesia, Amnesia) and amnesia.epoch < _PLAUSIBLE:
            epochs.append(amnesia.epoch)
            rounds.append(amnesia.round)
        if epoch is not None:
            epochs.append(epoch)
        plausible = [r for r in rounds if 0 <= r < _PLAUSIBLE]
        return (max(epochs) if epochs else None), max(plausible, default=0)

    def save_promise(self, promised: Ballot) -> None:
        """See `DomainStorage.save_promise`."""
        text = _dumps(promised.to_json())
        with self._transaction():
            self._require()
            self._db.execute("UPDATE member SET promised = ? WHERE id = 1", (text,))

    def save_accepted(self, ballot: Ballot, value: Value) -> None:
        """See `DomainStorage.save_accepted`."""
        promised = _dumps(ballot.to_json())
        accepted = _dumps([ballot.to_json(), value.to_json()])
        with self._transaction():
            self._require()
            self._db.execute(
                "UPDATE member SET promised = ?, accepted = ? WHERE id = 1", (promised, accepted)
            )

    def append(self, start: int, batches: Sequence[Batch]) -> None:
        """See `DomainStorage.append`."""
        rows = [(start + i, _dumps(list(batch))) for i, batch in enumerate(batches)]
        count, self._count = self._count, None  # known again only once committed
        with self._transaction():
            self._require()
            if count is None:
                (count,) = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()
            if start > count:
                raise ValueError(f"append at {start} leaves a gap after {count} entries")
            if start < count:
                self._db.execute("DELETE FROM entries WHERE idx >= ?", (start,))
            self._db.executemany("INSERT INTO entries (idx, batch) VALUES (?, ?)", rows)
        self._count = start + len(rows)

    # -- housekeeping ------------------------------------------------------------

    def close(self) -> None:
        """Close the database (releases the exclusive lock)."""
        self._db.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_amnesia(self, amnesia: Amnesia | None) -> None:
        if amnesia is None:
            self._db.execute("DELETE FROM meta WHERE key = 'amnesia'")
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('amnesia', ?)",
                (_dumps(amnesia.to_json()),),
            )

    def _require(self) -> None:
        if self._member_known:
            return  # the member row is never deleted
        row = self._db.execute("SELECT 1 FROM member WHERE id = 1").fetchone()
        if row is None:
            raise RuntimeError("save_view must come before any other write")
        self._member_known = True

    def _check_meta(self) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema", str(SCHEMA_VERSION)), ("domain", self.domain_id)],
            )
            return
        if rows.get("schema") != str(SCHEMA_VERSION):
            raise DomainStoreError(
                f"domain database {self.path} has schema {rows.get('schema')!r}, "
                f"this version reads {SCHEMA_VERSION}"
            )
        if rows.get("domain") != self.domain_id:
            raise DomainStoreError(
                f"domain database {self.path} belongs to domain {rows.get('domain')!r}, "
                f"not {self.domain_id!r}"
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


def _salvage(read: Callable[[], object]) -> object:
    """``read()``, or None if the damaged content makes it fail in any way."""
    try:
        return read()
    except Exception:
        return None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); counts durable writes."""

    def __init__(self, storage: SqliteDomainStorage) -> None:
        self._storage = storage

    def __enter__(self) -> None:
        self._storage._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        db = self._storage._db
        if kind is None:
            db.execute("COMMIT")
            self._storage.writes += 1
        else:
            db.execute("ROLLBACK")
