"""Property test: fuzzed peer messages at the decode and node level change nothing.

Three members with real engines (`tests.test_domain_adapter.Domain`) serve;
thousands of messages from `tests.peerfuzz.fuzz_case` (seeded) are decoded and
handed to random members as if from random other members, interleaved with
time and client grants. Checked for every message: no exception escapes
``decode`` or ``DomainNode.receive``; a message the generator made invalid is
refused (by ``decode`` or by ``receive``); a refused message leaves the
member's storage (every byte of `MemoryStorage`), its write count, its view and
its engine exactly as they were. At the end: every view is a subset of the
domain with an epoch below 2**53, every member restarts from its storage, the
domain serves, and every confirmed licence is still held.
"""

from __future__ import annotations

import json
import random

import pytest

from hqnlsd.domain.messages import MessageError, decode
from hqnlsd.domain.view import SAFE_INT
from hqnlsd.licensing.results import Grant
from tests.domain.test_domain_adapter import RANKS, Domain
from tests.peerfuzz import fuzz_case

#: Messages per seed (CI); each seed is one independent run.
MESSAGES = 1500


def _stored(domain: Domain, rank: int) -> str:
    return json.dumps(domain.storage[rank]._data, sort_keys=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_messages_never_touch_state(seed: int) -> None:
    """See the module docstring."""
    rng = random.Random(seed)
    domain = Domain()
    primary = domain.primary(limit=12.0)
    held: list[str] = []
    refused_at_decode = refused_at_node = accepted = 0
    for number in range(MESSAGES):
        if number % 50 == 0:
            rank = next(iter(domain.serving()), None)
            if rank is not None:
                grant = domain.grant(rank, 1000 + number)
                if isinstance(grant, Grant):
                    held.append(grant.handle)
        target = rng.choice(sorted(RANKS))
        sender = rng.choice(sorted(RANKS - {target}))
        node = domain.nodes[target]
        wire, valid = fuzz_case(rng, node.view.epoch)
        try:
            message = decode(json.loads(json.dumps(wire)))
        except MessageError:
            assert not valid, wire
            refused_at_decode += 1
            continue
        before = (_stored(domain, target), domain.storage[target].writes, node.view)
        engine = domain.machines[target].engine.snapshot()
        why = node.receive(sender, message)
        if why is None:
            assert valid, f"accepted an invalid message: {wire}"
            accepted += 1
        else:
            refused_at_node += 1
            after = (_stored(domain, target), domain.storage[target].writes, node.view)
            assert after == before, (why, wire)
            assert domain.machines[target].engine.snapshot() == engine, (why, wire)
        if number % 10 == 0:
            domain.clock.advance(0.05)
    print(
        f"seed {seed}: {MESSAGES} messages, {refused_at_decode} refused by decode, "
        f"{refused_at_node} by the node, {accepted} valid ones accepted; {len(held)} grants"
    )
    assert refused_at_node > MESSAGES // 30  # the node-level checks were exercised
    for rank in sorted(RANKS):
        view = domain.nodes[rank].view
        assert view.members <= RANKS and view.epoch < SAFE_INT
    # Every member restarts from its storage; the domain serves with every licence.
    for rank in sorted(RANKS):
        domain.crash(rank)
        domain.start(rank)
    primary = domain.primary(limit=20.0)
    engine = domain.machines[primary].engine
    assert set(held) <= {h.handle for h in engine.holders("Harlequin", "LispWorks")}  # type: ignore[union-attr]
