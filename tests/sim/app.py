"""The application a simulated domain replicates: one product with ``count`` licences."""

from __future__ import annotations

from collections.abc import Sequence


class LicencePool:
    """A minimal licence engine: grants and releases of handles, at most ``count`` held.

    ``decide_*`` is the engine's decision (on the primary, against the current
    state); ``apply`` replays decided entries without checking the count, so a
    replication bug shows up as more than ``count`` licences held.
    """

    def __init__(self, count: int) -> None:
        """An empty pool of ``count`` licences."""
        self.count = count
        self.held: set[str] = set()

    def decide_grant(self, handle: str) -> list[object] | None:
        """The entries that grant ``handle``, or None if no licence is free."""
        if handle in self.held:
            return []
        if len(self.held) >= self.count:
            return None
        return [["grant", handle]]

    def decide_release(self, handle: str) -> list[object]:
        """The entries that release ``handle``."""
        return [["release", handle]]

    def apply(self, entries: Sequence[object]) -> None:
        """Apply decided entries (their JSON form: lists)."""
        for entry in entries:
            assert isinstance(entry, list | tuple), entry
            op, handle = entry[0], entry[1]
            assert isinstance(handle, str)
            if op == "grant":
                self.held.add(handle)
            elif op == "release":
                self.held.discard(handle)
            else:
                raise ValueError(f"unknown entry {entry!r}")

    def check_batch(self, batch: Sequence[object]) -> None:
        """Raise ValueError unless every entry is ``[op, handle]`` with a known op."""
        for entry in batch:
            if (
                not isinstance(entry, list | tuple)
                or len(entry) != 2
                or entry[0] not in ("grant", "release")
                or not isinstance(entry[1], str)
            ):
                raise ValueError(f"not an entry: {type(entry).__name__}")

    def check_snapshot(self, snapshot: object) -> None:
        """Raise ValueError unless ``snapshot`` is ``{"held": [handle, ...]}``."""
        if (
            not isinstance(snapshot, dict)
            or set(snapshot) != {"held"}
            or not isinstance(snapshot["held"], list)
            or not all(isinstance(handle, str) for handle in snapshot["held"])
        ):
            raise ValueError(f"not a pool snapshot: {type(snapshot).__name__}")

    def snapshot(self) -> object:
        """The held handles, JSON-safe."""
        return {"held": sorted(self.held)}

    def restore(self, snapshot: object) -> None:
        """Replace the state with a `snapshot`."""
        assert isinstance(snapshot, dict)
        held = snapshot["held"]
        assert isinstance(held, list)
        self.held = {str(h) for h in held}
