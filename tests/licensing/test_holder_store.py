"""Held licences stored by column (issue 14, memory): slots reused, orders kept, every
fact of a holder read back as given, handles of every shape found."""

from __future__ import annotations

import gc
import itertools
import json
import random
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock

from hqnlsd.licensing.engine import Engine, random_handle
from hqnlsd.licensing.events import Granted, Released, Revoked
from hqnlsd.licensing.holdings import HandleIndex, Holder, HolderStore, split_handle
from hqnlsd.licensing.pools import ProductState
from hqnlsd.licensing.requester import Requester
from hqnlsd.licensing.results import Denied, Grant, HolderInfo
from hqnlsd.licensing.settings import ProductSettings
from hqnlsd.permits.policy import Policy
from tests.licensing.test_engine_requests import NOW, make_permit, make_request, utc_day

KEY = ("Harlequin", "LispWorks")


def hex_counter(prefix: str = "") -> Callable[[], str]:
    """Handles ``prefix`` + 16 hex digits, counting up (neighbouring keys: long clusters)."""
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter) * 4096:016x}"


def odd_counter() -> Callable[[], str]:
    """Handles that are not hex: kept as strings."""
    counter = itertools.count(1)
    return lambda: f"h{next(counter)}"


HANDLE_MAKERS: dict[str, Callable[[], Callable[[], str]]] = {
    "random": lambda: random_handle,
    "hex": hex_counter,
    "tagged": lambda: hex_counter("d41d8cd9-"),
    "odd": odd_counter,
    "upper": lambda: (lambda make: lambda: make().upper())(hex_counter()),
}


def engine_with(handles: Callable[[], str], **permit: Any) -> tuple[Engine, Clock]:
    clock = Clock()
    clock.advance(NOW)
    engine = Engine(clock, handles, today=utc_day)
    engine.load_products((make_permit(**permit),))
    return engine, clock


def product_of(engine: Engine) -> ProductState:
    return engine._ledger.state.products[KEY]


def take(engine: Engine, pid: int) -> str:
    """The handle granted to process ``pid``."""
    result = engine.request(make_request(pid=pid)).result
    assert isinstance(result, Grant), result
    return result.handle


def listed(engine: Engine) -> list[HolderInfo]:
    found = engine.holders(*KEY)
    assert isinstance(found, list)
    return found


class Model:
    """What the engine must list: holders in grant order, and the update order."""

    def __init__(self) -> None:
        self.grants: dict[str, dict[str, Any]] = {}
        self.updates: list[str] = []

    def grant(self, handle: str, **facts: Any) -> None:
        assert handle not in self.grants
        self.grants[handle] = facts
        self.updates.append(handle)

    def touch(self, handle: str, at: float) -> None:
        self.grants[handle]["last_update"] = max(self.grants[handle]["last_update"], at)
        self.updates.remove(handle)
        self.updates.append(handle)

    def drop(self, handle: str) -> None:
        del self.grants[handle]
        self.updates.remove(handle)


def check(engine: Engine, model: Model) -> None:
    holders = listed(engine)
    assert [holder.handle for holder in holders] == list(model.grants)
    for holder in holders:
        assert holder.handle is not None
        facts = model.grants[holder.handle]
        assert holder.who.pid == facts["pid"]
        assert holder.who.client == facts["client"]
        assert holder.who.uid == facts["uid"]
        assert holder.who.hostid == facts["hostid"]
        assert holder.indices == facts["indices"]
        assert holder.granted == facts["granted"]
        assert holder.last_update == facts["last_update"]
    product = product_of(engine)
    order = [holder.handle for holder in product.least_recently_updated()]
    assert order == model.updates
    assert engine.held_count() == len(model.grants)
    assert len(product.tokens) == sum(1 for f in model.grants.values() if f["client"])
    for handle in model.grants:
        assert engine.product_of(handle) == (*KEY, "8.0")
        assert handle in product.holders


@pytest.mark.parametrize("maker", sorted(HANDLE_MAKERS))
def test_random_churn_keeps_listing_and_update_order(maker: str) -> None:
    """Grants, updates, releases, repeated tokens and kills in random order: the
    listing (grant order), the update order, every fact and the tokens are what a
    plain model says, released slots being reused all along; a restored twin lists
    the same and writes the same snapshot."""
    engine, clock = engine_with(HANDLE_MAKERS[maker](), floating_count=60)
    model = Model()
    most = 0
    rng = random.Random(f"churn-{maker}")
    pids = itertools.count(1)
    for step in range(1200):
        choice = rng.random()
        held = list(model.grants)
        clock.advance(rng.choice((0, 0, 1, 2.5)))
        now = clock.seconds()
        if choice < 0.4 or not held:
            pid = next(pids)
            units = rng.choice((1, 1, 1, 2, 3))
            client = rng.choice((None, f"token-{pid}"))
            uid = rng.choice((None, 0, 1000, 2**70))
            hostid = rng.choice((None, 0, 0xFFFFFFFF))
            result = engine.request(
                make_request(pid=pid, units=units, client=client, uid=uid, hostid=hostid)
            ).result
            if isinstance(result, Denied):
                continue
            assert isinstance(result, Grant) and not result.duplicate
            model.grant(
                result.handle,
                pid=pid,
                client=client,
                uid=uid,
                hostid=hostid,
                indices=result.indices,
                granted=now,
                last_update=now,
            )
        elif choice < 0.55:
            handle = rng.choice(held)
            facts = model.grants[handle]
            if facts["client"] is None:
                continue
            result = engine.request(
                make_request(
                    pid=facts["pid"],
                    client=facts["client"],
                    uid=facts["uid"],
                    hostid=facts["hostid"],
                )
            ).result
            assert isinstance(result, Grant) and result.duplicate and result.handle == handle
            model.touch(handle, now)
        elif choice < 0.75:
            handle = rng.choice(held)
            engine.update(handle)
            model.touch(handle, now)
        elif choice < 0.95:
            handle = rng.choice(held)
            events = engine.release(handle).events
            assert isinstance(events[0], Released)
            dropped = events[0].dropped
            assert dropped is not None and dropped.who.pid == model.grants[handle]["pid"]
            model.drop(handle)
        else:
            handle = rng.choice(held)
            engine.kill(handle)
            model.drop(handle)
            assert isinstance(engine.update(handle).result, Denied)
        most = max(most, len(model.grants))
        if step % 10 == 0:
            check(engine, model)
    check(engine, model)
    assert most > 20
    data = json.loads(json.dumps(engine.snapshot()))
    twin = Engine(clock, random_handle, today=utc_day)
    twin.restore(data)
    assert listed(twin) == listed(engine)
    assert json.dumps(twin.snapshot()) == json.dumps(engine.snapshot())
    for handle in list(model.grants):
        engine.release(handle)
        model.drop(handle)
    check(engine, model)
    store = product_of(engine).store
    assert store.count == 0 and len(store.flags) == 0  # the columns are freed


def test_a_released_slot_is_reused_and_listed_last() -> None:
    """The newest grant lists last even when it takes the slot of an older one."""
    engine, _ = engine_with(hex_counter(), floating_count=5)
    handles = [take(engine, pid) for pid in (1, 2, 3)]
    store = product_of(engine).store
    slots = len(store.flags)
    engine.release(handles[1])
    new = engine.request(make_request(pid=4)).result
    assert isinstance(new, Grant)
    assert len(store.flags) == slots  # the freed slot, not a new one
    assert [holder.handle for holder in listed(engine)] == [handles[0], handles[2], new.handle]
    assert [holder.who.pid for holder in listed(engine)] == [1, 3, 4]


def test_grab_takes_back_the_least_recently_updated_after_reuse() -> None:
    """GRAB's order follows updates, whatever slots the holders occupy."""
    engine, clock = engine_with(
        hex_counter(), floating_count=3, policy=int(Policy.GRAB) | int(Policy.UVIS)
    )
    first = [take(engine, pid) for pid in (1, 2, 3)]
    engine.release(first[0])
    fourth = take(engine, 4)  # slot of the first
    clock.advance(60)
    engine.update(first[1])
    engine.update(fourth)
    clock.advance(10_000)
    engine.update(fourth)
    outcome = engine.request(make_request(pid=5))
    revoked = [event.handle for event in outcome.events if isinstance(event, Revoked)]
    assert revoked == [first[2], first[1]]  # oldest update first (equal times: grant order)


def test_every_fact_of_a_holder_reads_back() -> None:
    """Values that do not fit a column (huge pid, uid) and several indices are kept."""
    engine, _ = engine_with(hex_counter(), floating_count=8)
    engine.request(make_request(pid=2**70, uid=2**64, hostid=7, units=3, client="c", group="staff"))
    engine.request(make_request(pid=0, uid=0, hostid=0))
    first, second = listed(engine)
    assert first.who == Requester(
        user="alice",
        host="alpha",
        address="10.0.0.1",
        pid=2**70,
        uid=2**64,
        group="staff",
        hostid=7,
        client="c",
    )
    assert first.indices == (1, 2, 3)
    assert second.who.uid == 0 and second.who.hostid == 0 and second.indices == (4,)
    engine.release(first.handle or "")
    assert product_of(engine).store.spill == {}
    assert product_of(engine).store.many == {}


def test_split_handle_takes_only_lowercase_hex_tails() -> None:
    """Only ``prefix + 16 lowercase hex digits`` is kept as bits; nothing else."""
    assert split_handle("0123456789abcdef", new=False)[0] == 0
    for odd in (
        "0123456789ABCDEF",
        "0x23456789abcdef",
        "0123456789abcde",
        "01234567_9abcdef",
        " 123456789abcdef",
        "+123456789abcdef",
        "\u0660123456789abcdef",
    ):
        assert split_handle(odd, new=True)[0] == 0xFFFF, odd
    assert split_handle("never-seen-0123456789abcdef", new=False)[0] == 0xFFFF


def test_handle_index_survives_clusters_and_removals() -> None:
    """Keys sharing their low bits (long probe clusters), added and removed at random:
    every held handle is found, every other one is not."""
    index: HandleIndex[ProductState] = HandleIndex()
    product = ProductState(make_permit(floating_count=60000), ProductSettings())
    rng = random.Random(7)
    held: dict[str, int] = {}
    who = Requester(user="u", host="h", address="10.0.0.1", pid=1)
    # Pairs of keys with the same low 24 bits (the entries' tags), else spread out.
    candidates = [f"{n << 40 | (n // 2) * 2654435761 % 2**24:016x}" for n in range(4000)]
    candidates += [f"t-{n:016x}" for n in range(200)] + [f"odd{n}" for n in range(200)]
    for step in range(8000):
        handle = rng.choice(candidates)
        if handle in held:
            found = index.holder(handle)
            assert found is not None
            product.remove(found[1])
            del held[handle]
        else:
            holder = _add(product, index, handle, who, step)
            held[handle] = holder.slot
        if step % 1000 == 0:
            for candidate in candidates:
                assert (candidate in index) == (candidate in held), candidate
    assert len(index) == len(held)
    for handle, slot in held.items():
        found = index.holder(handle)
        assert found is not None and found[1].slot == slot and found[1].handle == handle


def _add(
    product: ProductState, index: HandleIndex[ProductState], handle: str, who: Requester, step: int
) -> Holder:
    free = product.floating.lowest(1)
    assert free is not None
    return product.add(
        index,
        handle=handle,
        indices=free,
        locked=False,
        on_locked_node=False,
        who=who,
        access=1,
        granted_at=float(step),
        last_update=float(step),
    )


def test_token_table_survives_churn() -> None:
    """Client tokens added and removed at random are found exactly while held."""
    store = HolderStore()
    rng = random.Random(11)
    held: dict[str, int] = {}
    for step in range(6000):
        token = f"tok{rng.randrange(700)}"
        if token in held:
            store.remove(held.pop(token))
        else:
            who = Requester(user="u", host="h", address="a", pid=step, client=token)
            held[token] = store.add(
                0,
                step,
                "",
                (1,),
                0,
                who,
                1,
                0.0,
                0.0,
            )
        if step % 300 == 0:
            for n in range(700):
                token = f"tok{n}"
                assert store.token_slot(token) == held.get(token, -1)
    assert store.token_count == len(held)


def test_a_duplicate_handle_changes_nothing() -> None:
    """A Granted for a handle already held is refused before anything is stored."""
    engine, _ = engine_with(hex_counter(), floating_count=5)
    grant = engine.request(make_request(pid=1)).result
    assert isinstance(grant, Grant)
    store = product_of(engine).store
    before = (len(store.flags), store.count, product_of(engine).floating_used)
    event = Granted(
        publisher=KEY[0],
        product=KEY[1],
        handle=grant.handle,
        indices=(5,),
        locked=False,
        on_locked_node=False,
        who=Requester(user="bob", host="beta", address="10.0.0.2", pid=9),
        access=1,
        at=NOW,
    )
    with pytest.raises(Exception, match="already held"):
        engine._ledger.apply(event)
    assert (len(store.flags), store.count, product_of(engine).floating_used) == before


def test_bytes_per_held_licence() -> None:
    """Issue 14: under 250 bytes of Python allocations per held licence in the
    engine (it was about 550 with one object per holder)."""
    count = 8_000
    engine, _ = engine_with(random_handle, floating_count=count)
    requests = [
        make_request(
            pid=2_000_000 + k,
            client=f"hold-bench-{k}",
            user=f"user{k % 100}",
            host=f"host{k % 50}",
        )
        for k in range(count)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for request in requests:
            engine.request(request)
        gc.collect()
        per_licence = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert engine.held_count() == count
    print(f"{per_licence:.1f} bytes per held licence")
    assert per_licence < 250, per_licence
