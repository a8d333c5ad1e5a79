"""The licence engine as a domain member's replicated `StateMachine`.

The mismatch this solves: an engine command (``request``, ``release``...)
decides *and applies* its events in one step, while `DomainNode.submit` applies
the submitted entries to its state machine too. Applying a grant twice would
corrupt the state, and deciding on a scratch copy would cost a copy of the
whole state per request. So `EngineMachine` lets the engine decide on the real
state, then hands the events to the node through `replicate_applied`, which
marks that one batch as *already applied*: when the node calls `apply` for it
(synchronously, inside ``DomainNode.submit``) the machine only records it. (The
domain member's `commit`, `hqnlsd.domain.runtime.DomainMember.commit`, is what
the daemon calls; it uses `replicate_applied`.)

If the node refuses the submission (``NotServing``: the lease ran out between
the caller's check and the submit) or its storage fails, the engine holds
events that are in no log. The machine then rebuilds the engine from what the
node has told it: the state of the last ``restore`` plus every batch applied
since. That mirror is exactly the node's own ``base`` + ``entries``, so after
the rebuild the engine equals the node's view of it again. The rebuild is rare
(a race of microseconds) and costs one restore and replay of the current view's
log (bounded by compaction).

Entries are the events' JSON dicts, normalised through JSON once (lists, never
tuples), so the local log holds exactly what storage and the network carry.

On becoming primary (`take_over`): holders could not UPDATE while nobody
served, so ``engine.resume()`` counts them all as updated now (otherwise GRAB
would crash them all out at the first request), and the products this host
read from its permits are loaded (``load_products``; only events when they
differ from the replicated ones). Both go through the node like any decision.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from hqnlsd.licensing.engine import Engine
from hqnlsd.licensing.events import Event, EventError, event_from_dict
from hqnlsd.licensing.results import Denied, Outcome
from hqnlsd.licensing.validate import check_event_dict, check_snapshot
from hqnlsd.permits.model import ProductPermit
from hqnlsd.status import Status

R = TypeVar("R")


class _NoClock:
    """The clock of a scratch engine that only restores (it never decides)."""

    def seconds(self) -> float:
        """Never read by a restore."""
        return 0.0


_NO_CLOCK = _NoClock()


class ReplicatedLog(Protocol):
    """The part of `DomainNode` the machine hands its batches to."""

    def submit(self, entries: Sequence[object]) -> Deferred[None]:
        """Apply ``entries`` locally and replicate them (see `DomainNode.submit`)."""


def entry_of(event: Event) -> dict[str, object]:
    """The JSON form of ``event`` as a log entry: plain dicts, lists, numbers, text."""
    normalised: dict[str, object] = json.loads(json.dumps(event.to_dict()))
    return normalised


def event_of(entry: object) -> Event:
    """The event of a log entry (its JSON form, after any trip through JSON).

    @raise EventError: if ``entry`` is not an event's dict form.
    """
    if not isinstance(entry, Mapping):
        raise EventError(f"a log entry is an event dict, not {entry!r}")
    return event_from_dict(entry)


class EngineMachine:
    """`StateMachine` over an `Engine`; decisions go through `replicate_applied`."""

    log = Logger()

    def __init__(self, engine: Engine) -> None:
        """Wrap ``engine``, whose current state is the base of the mirror."""
        self.engine = engine
        self._base: object = engine.snapshot()
        self._since: list[Sequence[object]] = []
        self._local_batches = 0
        #: engine rebuilds after a refused submission (for tests and logs)
        self.rebuilds = 0

    # -- StateMachine (called by the node) ----------------------------------------

    def apply(self, entries: Sequence[object]) -> None:
        """Apply one batch, unless it is the one `replicate_applied` already applied.

        All or nothing: if an entry does not fit the state (`EventError`), the
        engine is rebuilt as it was before the batch and the error is raised.
        """
        if self._local_batches:
            self._since.append(entries)
            self._local_batches -= 1
            return
        applied = 0
        try:
            for entry in entries:
                self.engine.apply(event_of(entry))
                applied += 1
        except EventError:
            if applied:
                self._replay()
            raise
        self._since.append(entries)

    def snapshot(self) -> object:
        """The engine's whole state, JSON-safe."""
        return self.engine.snapshot()

    def check_snapshot(self, snapshot: object) -> None:
        """Raise `EventError` unless ``snapshot`` is an engine snapshot that restores.

        The form of every field is checked first (`hqnlsd.licensing.validate`),
        then the snapshot is restored into a scratch engine (handles held twice,
        indices outside or twice in a pool). Nothing here changes.
        """
        check_snapshot(snapshot)
        assert isinstance(snapshot, Mapping)
        Engine(_NO_CLOCK).restore(snapshot)

    def check_batch(self, batch: Sequence[object]) -> None:
        """Raise `EventError` unless every entry of ``batch`` is an event's dict form."""
        if not isinstance(batch, Sequence) or isinstance(batch, str | bytes):
            raise EventError(f"a batch is a list of events, not {type(batch).__name__}")
        for number, entry in enumerate(batch):
            check_event_dict(entry, f"entry {number}")

    def restore(self, snapshot: object) -> None:
        """Replace the engine's state with ``snapshot``.

        @raise EventError: if ``snapshot`` is not an engine snapshot.
        """
        if not isinstance(snapshot, Mapping):
            raise EventError(f"an engine snapshot is a dict, not {type(snapshot).__name__}")
        self.engine.restore(snapshot)
        self._base = snapshot
        self._since = []
        self._local_batches = 0

    # -- decisions ---------------------------------------------------------------

    def replicate_applied(self, node: ReplicatedLog, events: Sequence[Event]) -> Deferred[None]:
        """Replicate ``events``, which the engine has already applied.

        Call it in the same reactor turn as the engine command that produced
        the events, after checking the node serves. The Deferred fires when a
        quorum holds them (answer the client then), or fails with the node's
        error: `NotServing` (nothing happened: the engine was rebuilt without
        them), an `OutcomeUnknown`, or what the node raised. The member's
        `commit` turns these into the typed outcomes of `hqnlsd.commit`.
        """
        if not events:
            return succeed(None)
        entries = [entry_of(event) for event in events]
        self._local_batches += 1
        try:
            done = node.submit(entries)
        except Exception:
            self._refused()
            return fail()
        if self._local_batches:
            # The node did not take the batch (it failed at once): undo it here.
            self._refused()
        return done

    def decide(
        self, node: ReplicatedLog, can_serve: bool, command: Callable[[Engine], Outcome[R]]
    ) -> Deferred[R] | None:
        """Run an engine command and replicate its events; None if not serving.

        The result is delivered once its events are held by a quorum (a result
        without events at once).
        """
        if not can_serve:
            return None
        outcome = command(self.engine)
        return self.replicate_applied(node, outcome.events).addCallback(lambda _: outcome.result)

    def take_over_events(self, products: Iterable[ProductPermit]) -> tuple[Event, ...]:
        """What a member decides on becoming primary: resume holders, load its products.

        The engine has applied the events; replicate them (`replicate_applied`, or
        the member's `commit`) in the same turn.
        """
        return self.engine.resume().events + self.engine.load_products(products).events

    def take_over(self, node: ReplicatedLog, products: Iterable[ProductPermit]) -> Deferred[None]:
        """`take_over_events`, replicated through ``node``."""
        return self.replicate_applied(node, self.take_over_events(products))

    def knows_handle(self, handle: str) -> bool:
        """True if ``handle`` is (or was, as a tombstone) a licence of this engine."""
        answer = self.engine.query(handle, "period")
        return not (isinstance(answer, Denied) and answer.status is Status.BADHANDLE)

    # -- internals ---------------------------------------------------------------

    def _refused(self) -> None:
        self._local_batches = 0
        self.rebuild()

    def rebuild(self) -> None:
        """Make the engine what the node believes it is: base + batches since."""
        self.rebuilds += 1
        self._replay()
        self.log.info(
            "domain state rebuilt after a refused submission ({count} batch(es) replayed)",
            count=len(self._since),
        )

    def _replay(self) -> None:
        assert isinstance(self._base, Mapping)
        self.engine.restore(self._base)
        for batch in self._since:
            for entry in batch:
                self.engine.apply(event_of(entry))
