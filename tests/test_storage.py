"""The in-memory store (dht.core.storage; PROTOCOL.md 7.11, D12, D34-D41).

Every test drives ``MemoryStorage`` with a fake nanosecond clock, so expiry
is exact and nothing sleeps.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable

import pytest

import dht
from dht import Key, Value
from dht.core.storage import (
    CLOCK_SKEW_NS,
    ITERATE_CHUNK,
    MemoryStorage,
    Storage,
    key_cost,
    value_cost,
)
from dht.keys import INT64_MAX

T0 = 1_700_000_000 * 10**9
"""A plausible "now" in nanoseconds since the epoch."""
HOUR = 3600 * 10**9
KEY = Key("key")
OTHER_KEY = Key("other key")


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def make(**limits: int) -> tuple[MemoryStorage, FakeClock]:
    clock = FakeClock()
    return MemoryStorage(clock_ns=clock, **limits), clock


def collect_into(seen: list[Value]) -> Callable[[Value], bool]:
    def fn(value: Value) -> bool:
        seen.append(value)
        return True

    return fn


def datas(values: list[Value]) -> set[bytes]:
    return {value.value for value in values}


# ---------------------------------------------------------------------------
# Set and Get


def test_several_values_per_key_deduplicated_by_bytes() -> None:
    storage, _ = make()
    assert storage.Set(KEY, b"a", T0, HOUR)
    assert storage.Set(KEY, b"b", T0, HOUR)
    assert storage.Set(KEY, b"a", T0, HOUR)
    assert storage.Set(KEY, b"", T0, HOUR)
    assert storage.Set(OTHER_KEY, b"a", T0, HOUR)
    got = storage.Get(KEY)
    assert sorted(v.value for v in got) == [b"", b"a", b"b"]
    assert len(got) == 3
    assert all(v.key == KEY for v in got)
    assert [v.value for v in storage.Get(OTHER_KEY)] == [b"a"]
    assert len(storage) == 4
    assert storage.Get(Key("missing")) == []


def test_get_returns_the_stored_fields() -> None:
    storage, _ = make()
    storage.Set(KEY, b"payload", T0 - 5, HOUR)
    assert storage.Get(KEY) == [Value(KEY, b"payload", HOUR, T0 - 5)]
    storage.Set(OTHER_KEY, b"no created", 0, HOUR)
    assert storage.Get(OTHER_KEY) == [Value(OTHER_KEY, b"no created", HOUR, 0)]


def test_set_copies_its_buffers() -> None:
    storage, _ = make()
    key = bytearray(KEY)
    value = bytearray(b"original")
    assert storage.Set(key, value, T0, HOUR)  # type: ignore[arg-type]
    key[0] ^= 0xFF
    value[:] = b"mutated!"
    [got] = storage.Get(KEY)
    assert got.value == b"original"
    assert type(got.value) is bytes and type(got.key) is bytes


def test_get_from_filters_each_value_by_created() -> None:
    # D38: the values are not stored in created order.
    storage, _ = make()
    for created, data in ((T0 - 100, b"newest"), (T0 - 300, b"oldest"), (T0 - 200, b"middle")):
        assert storage.Set(KEY, data, created, HOUR)
    assert datas(storage.Get(KEY, T0 - 250)) == {b"newest", b"middle"}
    assert datas(storage.Get(KEY, T0 - 200)) == {b"newest", b"middle"}  # at or after
    assert datas(storage.Get(KEY, T0 - 199)) == {b"newest"}
    assert storage.Get(KEY, T0) == []
    # D12: from <= 0 means no filter (the reference's overflowed "zero" too).
    everything = {b"newest", b"oldest", b"middle"}
    assert datas(storage.Get(KEY)) == everything
    assert datas(storage.Get(KEY, 0)) == everything
    assert datas(storage.Get(KEY, -1)) == everything
    assert datas(storage.Get(KEY, -6795364578871345152)) == everything


def test_get_from_non_positive_is_no_filter_even_for_negative_created() -> None:
    # D12: from <= 0 is "no filter", not "created >= from".
    storage, _ = make()
    assert storage.Set(KEY, b"odd created", -5, HOUR)
    assert datas(storage.Get(KEY, -1)) == {b"odd created"}
    assert datas(storage.Get(KEY, 0)) == {b"odd created"}
    assert storage.Get(KEY, 1) == []


def test_get_from_excludes_values_of_unknown_creation() -> None:
    storage, _ = make()
    storage.Set(KEY, b"unknown", 0, HOUR)
    storage.Set(KEY, b"known", T0, HOUR)
    assert datas(storage.Get(KEY, 1)) == {b"known"}
    assert datas(storage.Get(KEY, 0)) == {b"unknown", b"known"}


def test_get_excludes_expired_values_before_any_sweep() -> None:
    # D37: expiry is checked on read, not only by expire().
    storage, clock = make()
    storage.Set(KEY, b"short", 0, 10)
    storage.Set(KEY, b"long", 0, HOUR)
    clock.now += 10
    assert datas(storage.Get(KEY)) == {b"long"}
    assert len(storage) == 2  # not swept yet
    clock.now += HOUR
    assert storage.Get(KEY) == []


def test_get_returns_a_copy() -> None:
    storage, _ = make()
    storage.Set(KEY, b"a", T0, HOUR)
    storage.Set(KEY, b"b", T0, HOUR)
    first = storage.Get(KEY)
    first.clear()
    second = storage.Get(KEY)
    assert datas(second) == {b"a", b"b"}
    second.append(Value(KEY, b"intruder", HOUR, T0))
    assert datas(storage.Get(KEY)) == {b"a", b"b"}


# ---------------------------------------------------------------------------
# Expiry


def test_expiry_is_created_plus_ttl_when_that_is_sooner() -> None:
    # D34: handing a value on does not restart its lifetime.
    storage, clock = make()
    assert storage.Set(KEY, b"v", T0 - 400, 1000)
    assert storage.next_expiry_ns() == T0 + 600
    clock.now = T0 + 599
    assert datas(storage.Get(KEY)) == {b"v"}
    clock.now = T0 + 600
    assert storage.Get(KEY) == []


def test_expiry_is_store_time_plus_ttl_when_that_is_sooner() -> None:
    storage, clock = make()
    assert storage.Set(KEY, b"from the future", T0 + 5000, 1000)
    assert storage.next_expiry_ns() == T0 + 1000
    clock.now = T0 + 999
    assert len(storage.Get(KEY)) == 1
    clock.now = T0 + 1000
    assert storage.Get(KEY) == []


def test_expiry_without_created_is_store_time_plus_ttl() -> None:
    storage, clock = make()
    assert storage.Set(KEY, b"v", 0, 1000)
    assert storage.next_expiry_ns() == T0 + 1000
    clock.now = T0 + 999
    assert len(storage.Get(KEY)) == 1
    clock.now = T0 + 1000
    assert storage.Get(KEY) == []


def test_value_expired_on_arrival_is_refused() -> None:
    storage, _ = make()
    assert storage.Set(KEY, b"just expired", T0 - 1000, 1000) is False
    assert storage.Set(KEY, b"long expired", T0 - 5 * HOUR, HOUR) is False
    assert storage.Get(KEY) == []
    assert len(storage) == 0
    assert storage.bytes == 0
    assert storage.next_expiry_ns() is None
    assert storage.Set(KEY, b"one ns left", T0 - 999, 1000) is True


def test_expire_removes_exactly_the_expired_values() -> None:
    # D36: the reference removes the 1 h value and keeps the 1 ns one.
    storage, clock = make()
    long_key, short_key = Key("1 h"), Key("1 ns")
    assert storage.Set(long_key, b"hour", 0, HOUR)
    assert storage.Set(short_key, b"nanosecond", 0, 1)
    assert storage.bytes == (
        key_cost(long_key) + value_cost(b"hour") + key_cost(short_key) + value_cost(b"nanosecond")
    )
    assert storage.next_expiry_ns() == T0 + 1
    clock.now += 10
    assert storage.expire() == 1
    assert datas(storage.Get(long_key)) == {b"hour"}
    assert storage.Get(short_key) == []
    assert len(storage) == 1
    assert storage.bytes == key_cost(long_key) + value_cost(b"hour")  # the empty key went too
    assert storage.next_expiry_ns() == T0 + HOUR
    seen: list[Value] = []
    storage.Iterate(collect_into(seen))
    assert [v.key for v in seen] == [long_key]
    assert storage.expire() == 0
    clock.now = T0 + HOUR
    assert storage.expire() == 1
    assert len(storage) == 0
    assert storage.bytes == 0
    assert storage.next_expiry_ns() is None


def test_expire_keeps_a_key_while_it_has_values() -> None:
    storage, clock = make()
    storage.Set(KEY, b"short", 0, 100)
    storage.Set(KEY, b"long", 0, 200)
    clock.now += 150
    assert storage.expire() == 1
    assert storage.bytes == key_cost(KEY) + value_cost(b"long")
    assert datas(storage.Get(KEY)) == {b"long"}
    clock.now += 50
    assert storage.expire() == 1
    assert storage.bytes == 0


def test_expire_on_empty_store() -> None:
    storage, _ = make()
    assert storage.expire() == 0
    assert storage.next_expiry_ns() is None
    assert len(storage) == 0


def test_expire_removes_exactly_the_due_values_of_many() -> None:
    # A complexity check by counts: 10,000 values with distinct expiries,
    # 10 of them due. Only those 10 go; every other value is still there.
    storage, clock = make()
    count = 10_000
    for i in range(count):
        assert storage.Set(i.to_bytes(20, "big"), b"v", 0, 1000 + i)
    assert len(storage) == count
    assert storage.next_expiry_ns() == T0 + 1000
    clock.now = T0 + 1009
    assert storage.expire() == 10
    assert len(storage) == count - 10
    assert storage.next_expiry_ns() == T0 + 1010
    assert storage.bytes == (count - 10) * (key_cost(bytes(20)) + value_cost(b"v"))
    assert storage.Get((9).to_bytes(20, "big")) == []
    assert len(storage.Get((10).to_bytes(20, "big"))) == 1
    assert storage.expire() == 0


def test_set_sweeps_expired_values() -> None:
    storage, clock = make()
    storage.Set(KEY, b"old", 0, 10)
    clock.now += 10
    storage.Set(OTHER_KEY, b"new", 0, HOUR)
    assert len(storage) == 1
    assert storage.bytes == key_cost(OTHER_KEY) + value_cost(b"new")


# ---------------------------------------------------------------------------
# Refresh (D41)


def test_re_set_refreshes_expiry_and_keeps_one_copy() -> None:
    storage, clock = make()
    assert storage.Set(KEY, b"v", 0, 100)
    bytes_before = storage.bytes
    clock.now += 60
    assert storage.Set(KEY, b"v", 0, 100)
    assert len(storage) == 1
    assert storage.bytes == bytes_before
    assert storage.next_expiry_ns() == T0 + 160
    clock.now = T0 + 120  # past the first lifetime
    assert storage.expire() == 0
    assert datas(storage.Get(KEY)) == {b"v"}
    clock.now = T0 + 160
    assert storage.Get(KEY) == []


def test_re_set_takes_the_newer_created() -> None:
    storage, _ = make()
    storage.Set(KEY, b"v", T0 - 50, HOUR)
    storage.Set(KEY, b"v", T0 - 10, HOUR)
    [got] = storage.Get(KEY)
    assert got.created_ns == T0 - 10
    assert datas(storage.Get(KEY, T0 - 20)) == {b"v"}


@pytest.mark.parametrize("created", [INT64_MAX, T0 + 2 * CLOCK_SKEW_NS])
def test_a_created_time_far_in_the_future_is_taken_as_now(created: int) -> None:
    # Anyone could re-store someone else's value with created = INT64_MAX and
    # make it look new to every ValuesFrom filter, for good.
    storage, _ = make()
    assert storage.Set(KEY, b"headline", T0 - 50, HOUR)
    assert storage.Set(KEY, b"headline", created, HOUR)
    [got] = storage.Get(KEY)
    assert got.created_ns == T0
    assert storage.Get(KEY, T0 + 1) == []
    # Within the allowed clock skew, a created time is kept as sent.
    assert storage.Set(OTHER_KEY, b"v", T0 + CLOCK_SKEW_NS, HOUR)
    assert storage.Get(OTHER_KEY)[0].created_ns == T0 + CLOCK_SKEW_NS


# ---------------------------------------------------------------------------
# Limits (D40)


def test_max_values_per_key_refuses_the_extra_value() -> None:
    storage, _ = make(max_values_per_key=2)
    assert storage.Set(KEY, b"one", T0, HOUR)
    assert storage.Set(KEY, b"two", T0, HOUR)
    before = storage.Get(KEY)
    bytes_before = storage.bytes
    assert storage.Set(KEY, b"three", T0, HOUR) is False
    assert storage.refused == 1
    assert storage.Get(KEY) == before
    assert storage.bytes == bytes_before
    # Re-storing a value it holds is a refresh, not an extra value.
    assert storage.Set(KEY, b"one", T0, 2 * HOUR) is True
    assert storage.refused == 1
    # Other keys have their own allowance.
    assert storage.Set(OTHER_KEY, b"three", T0, HOUR) is True
    assert storage.refused == 1


def test_max_bytes_refuses_the_value_that_would_exceed_it() -> None:
    full = key_cost(KEY) + 2 * value_cost(b"0123456789")
    storage, clock = make(max_bytes=full)
    assert storage.Set(KEY, b"0123456789", 0, 100)
    assert storage.Set(KEY, b"abcdefghij", 0, HOUR)
    assert storage.bytes == full
    assert storage.Set(KEY, b"x", 0, HOUR) is False
    assert storage.Set(OTHER_KEY, b"", 0, HOUR) is False  # even an empty value has a cost
    assert storage.refused == 2
    assert datas(storage.Get(KEY)) == {b"0123456789", b"abcdefghij"}
    assert storage.bytes == full
    clock.now += 100  # the first value expires and frees its bytes
    assert storage.Set(KEY, b"klmnopqrst", 0, HOUR) is True
    assert storage.bytes == full


def test_max_bytes_bounds_the_memory_of_many_tiny_values() -> None:
    """The limit counts what values cost in memory, not only their lengths:
    a store filled with empty and one-byte values stays near ``max_bytes``."""
    limit = 4_000_000
    storage, _ = make(max_bytes=limit)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(limit):  # far more than fit
            key = (i // 64).to_bytes(20, "big")
            if not storage.Set(key, bytes([i % 64]) if i % 64 else b"", 0, HOUR):
                break
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert storage.refused == 1 and len(storage) > 10_000
    assert storage.bytes <= limit
    assert used <= 1.5 * limit, f"{used:,} bytes of heap for max_bytes={limit:,}"


def test_max_ttl_refuses_a_longer_life() -> None:
    """A ttl over max_ttl was cut silently: the Store was acknowledged and
    the value gone long before the ttl its publisher asked for. Refused,
    the sender hears of it. What counts is the life left here: a value
    handed on late with a long ttl but little of it left is kept."""
    storage, clock = make(max_ttl_ns=100)
    assert storage.Set(KEY, b"v", 0, HOUR) is False
    assert storage.Set(KEY, b"v", T0, 101) is False
    assert storage.Get(KEY) == []
    assert storage.Set(KEY, b"exactly", T0, 100)
    assert storage.Set(KEY, b"old, little left", T0 - HOUR, HOUR + 50)
    assert storage.next_expiry_ns() == T0 + 50
    assert storage.Set(OTHER_KEY, b"short", 0, 50)
    assert storage.Get(OTHER_KEY)[0].ttl_ns == 50
    clock.now += 100
    assert storage.Get(KEY) == []


def test_non_positive_ttl_is_refused() -> None:
    storage, _ = make()
    assert storage.Set(KEY, b"zero", T0, 0) is False
    assert storage.Set(KEY, b"negative", T0, -1) is False
    assert storage.Set(KEY, b"negative, no created", 0, -HOUR) is False
    assert storage.Get(KEY) == []
    assert len(storage) == 0
    assert storage.bytes == 0


# ---------------------------------------------------------------------------
# Iterate (D35)


def test_iterate_visits_every_unexpired_value() -> None:
    storage, clock = make()
    storage.Set(KEY, b"a", 0, HOUR)
    storage.Set(KEY, b"b", 0, HOUR)
    storage.Set(OTHER_KEY, b"c", 0, HOUR)
    storage.Set(OTHER_KEY, b"gone", 0, 5)
    clock.now += 5
    seen: list[Value] = []
    storage.Iterate(collect_into(seen))
    assert sorted((v.key, v.value) for v in seen) == sorted(
        [(KEY, b"a"), (KEY, b"b"), (OTHER_KEY, b"c")]
    )


def test_iterate_visits_every_value_once_across_chunks() -> None:
    storage, _ = make()
    keys = [Key(f"key {i}") for i in range(3 * ITERATE_CHUNK + 5)]
    for key in keys:
        storage.Set(key, b"a", 0, HOUR)
        storage.Set(key, b"b", 0, HOUR)
    seen: list[Value] = []
    storage.Iterate(collect_into(seen))
    assert sorted((v.key, v.value) for v in seen) == sorted(
        (key, data) for key in keys for data in (b"a", b"b")
    )


def test_iterate_copies_a_chunk_at_a_time_so_values_expiring_meanwhile_are_skipped() -> None:
    # Copying the whole store under the lock held up Get and Set on the
    # listener threads for 250 ms at 200,000 values. Chunks are copied as
    # the iteration reaches them: what expired meanwhile is not handed out.
    storage, clock = make()
    for i in range(3 * ITERATE_CHUNK):  # chunks count values, not keys
        storage.Set(Key(f"key {i // 64}"), i.to_bytes(2, "big"), 0, 10)
    seen: list[Value] = []

    def fn(value: Value) -> bool:
        clock.now = T0 + 10  # every value has expired once the first is seen
        seen.append(value)
        return True

    storage.Iterate(fn)
    assert len(seen) == ITERATE_CHUNK


def test_iterate_stops_when_fn_returns_false() -> None:
    storage, _ = make()
    for i in range(5):
        storage.Set(KEY, bytes([i]), 0, HOUR)
    calls: list[Value] = []

    def fn(value: Value) -> bool:
        calls.append(value)
        return len(calls) < 2

    storage.Iterate(fn)
    assert len(calls) == 2
    storage.Iterate(lambda value: False)  # stopping at once is fine too


def test_iterate_callback_may_use_the_store() -> None:
    # The reference leaves a lock held when iteration stops early (D35), and
    # a callback calling Get/Set must not deadlock. Run it on a thread and
    # wait with a timeout, so a deadlock fails the test instead of hanging.
    storage, _ = make()
    storage.Set(KEY, b"a", 0, HOUR)
    storage.Set(KEY, b"b", 0, HOUR)
    results: dict[str, object] = {}
    done = threading.Event()

    def fn(value: Value) -> bool:
        results["get"] = datas(storage.Get(value.key))
        results["set"] = storage.Set(OTHER_KEY, b"written during iterate", 0, HOUR)
        return False  # stop early

    def run() -> None:
        try:
            storage.Iterate(fn)
            results["after"] = storage.Set(KEY, b"c", 0, HOUR)
            results["get after"] = datas(storage.Get(KEY))
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(10.0), "Iterate deadlocked"
    thread.join(10.0)
    assert results == {
        "get": {b"a", b"b"},
        "set": True,
        "after": True,
        "get after": {b"a", b"b", b"c"},
    }
    assert datas(storage.Get(OTHER_KEY)) == {b"written during iterate"}


# ---------------------------------------------------------------------------
# The Storage protocol


def test_memory_storage_is_a_storage() -> None:
    assert isinstance(MemoryStorage(), dht.Storage)
    assert dht.Storage is Storage
    assert dht.MemoryStorage is MemoryStorage
    assert not isinstance(object(), dht.Storage)


def test_default_clock_is_wall_time() -> None:
    storage = MemoryStorage()
    before = time.time_ns()
    assert storage.Set(KEY, b"v", 0, HOUR)
    after = time.time_ns()
    expiry = storage.next_expiry_ns()
    assert expiry is not None
    assert before + HOUR <= expiry <= after + HOUR
    assert datas(storage.Get(KEY)) == {b"v"}
