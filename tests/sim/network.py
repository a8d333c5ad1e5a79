"""Simulated clocks and network for domain members, on one shared `task.Clock`."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.task import Clock

from hqnlsd.domain.messages import Message, decode, encode


class SkewedClock:
    """A member's monotonic clock: ``offset + rate * shared time``.

    ``rate`` models drift (within the documented bound); ``offset`` models a
    clock that starts anywhere (a restarted member's clock has nothing to do
    with its previous one). Every call it runs is followed by ``after``, so the
    simulation can check its invariants after every single event.
    """

    def __init__(self, base: Clock, rate: float, offset: float, after: Callable[[], None]) -> None:
        """A clock running at ``rate`` on ``base``, reading ``offset`` at time 0."""
        self.base = base
        self.rate = rate
        self.offset = offset
        self.after = after

    def seconds(self) -> float:
        """This member's now."""
        return self.offset + self.rate * self.base.seconds()

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> Any:
        """Run ``callable`` after ``delay`` seconds of this clock."""

        def run() -> None:
            callable(*args, **kw)
            self.after()

        return self.base.callLater(max(0.0, delay) / self.rate, run)


class Endpoint(Protocol):
    """What the network needs from a member: its inputs."""

    def receive(self, sender: int, message: Message) -> None:
        """A message arrived."""

    def connected(self, rank: int) -> None:
        """The link to ``rank`` came up."""

    def disconnected(self, rank: int) -> None:
        """The link to ``rank`` went down."""


class SimNetwork:
    """Links between members with delays, loss, reordering and partitions.

    Every message goes through its JSON wire form (proving the codec) and is
    delivered after a random delay, so messages overtake each other. A message
    is dropped if the link is cut when it arrives or the receiver restarted
    since it was sent (its connection would have been reset); a message whose
    sender crashed after sending it still arrives.
    """

    def __init__(
        self, clock: Clock, ranks: frozenset[int], rng: random.Random, after: Callable[[], None]
    ) -> None:
        """A network of ``ranks``, all links up, nobody attached."""
        self.clock = clock
        self.ranks = ranks
        self.rng = rng
        self.after = after
        self.endpoints: dict[int, Endpoint] = {}
        self.incarnation: dict[int, int] = dict.fromkeys(ranks, 0)
        self.cut: set[frozenset[int]] = set()
        self.loss = 0.0
        self.min_delay = 0.001
        self.max_delay = 0.02
        self.sent = 0
        self.delivered = 0
        self._links: set[frozenset[int]] = set()

    def attach(self, rank: int, endpoint: Endpoint) -> None:
        """Member ``rank`` (re)started as ``endpoint``."""
        self.incarnation[rank] += 1
        self.endpoints[rank] = endpoint
        self._links = {link for link in self._links if rank not in link}
        self.update_links()

    def detach(self, rank: int) -> None:
        """Member ``rank`` crashed."""
        self.endpoints.pop(rank, None)
        self.update_links()

    def link_up(self, a: int, b: int) -> bool:
        """True if ``a`` and ``b`` are both up and not cut apart."""
        return a in self.endpoints and b in self.endpoints and frozenset((a, b)) not in self.cut

    def update_links(self) -> None:
        """Tell members about links that came up or went down."""
        now_up = {
            frozenset((a, b))
            for a in self.ranks
            for b in self.ranks
            if a < b and self.link_up(a, b)
        }
        for link in sorted(self._links - now_up, key=sorted):
            a, b = sorted(link)
            for x, y in ((a, b), (b, a)):
                if x in self.endpoints:
                    self.endpoints[x].disconnected(y)
        for link in sorted(now_up - self._links, key=sorted):
            a, b = sorted(link)
            self.endpoints[a].connected(b)
            self.endpoints[b].connected(a)
        self._links = now_up

    def partition(self, groups: list[set[int]]) -> None:
        """Cut every link between different groups (and heal those inside one)."""
        group_of = {rank: i for i, group in enumerate(groups) for rank in group}
        self.cut = {
            frozenset((a, b))
            for a in self.ranks
            for b in self.ranks
            if a < b and group_of.get(a, -1) != group_of.get(b, -2)
        }
        self.update_links()

    def heal(self) -> None:
        """Mend every link."""
        self.cut = set()
        self.update_links()

    def send(self, sender: int, to: int, message: Message) -> None:
        """Send ``message``; it arrives later, or never."""
        self.sent += 1
        if not self.link_up(sender, to) or self.rng.random() < self.loss:
            return
        wire = json.dumps(encode(message), allow_nan=False)  # as the peer links encode
        delay = self.rng.uniform(self.min_delay, self.max_delay)
        self.clock.callLater(delay, self._deliver, sender, to, self.incarnation[to], wire)

    def _deliver(self, sender: int, to: int, incarnation: int, wire: str) -> None:
        # A crashed sender's messages already in flight still arrive, as the
        # kernel sends what a killed process wrote; a cut link or a restarted
        # receiver drops them.
        if (
            self.incarnation[to] != incarnation
            or to not in self.endpoints
            or frozenset((sender, to)) in self.cut
        ):
            return
        self.delivered += 1
        self.endpoints[to].receive(sender, decode(json.loads(wire)))
        self.after()
