"""The in-memory store (dht.core.storage; PROTOCOL.md 7.11, D12, D34-D41).

What every storage must do is checked for ``MemoryStorage`` by the shared
conformance suite (``dht.conformance``, run in test_storage_conformance.py);
these are the checks of ``MemoryStorage`` alone: its memory bound, its
chunked iteration, its default clock. A fake nanosecond clock makes expiry
exact; nothing sleeps.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

from dht import Key, Value
from dht.core.storage import (
    ITERATE_CHUNK,
    MemoryStorage,
)

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


# ---------------------------------------------------------------------------
# Expiry


# ---------------------------------------------------------------------------
# Refresh (D41)


# ---------------------------------------------------------------------------
# Limits (D40)


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


# ---------------------------------------------------------------------------
# Iterate (D35)


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


# ---------------------------------------------------------------------------
# The Storage protocol


def test_default_clock_is_wall_time() -> None:
    storage = MemoryStorage()
    before = time.time_ns()
    assert storage.Set(KEY, b"v", 0, HOUR)
    after = time.time_ns()
    expiry = storage.next_expiry_ns()
    assert expiry is not None
    assert before + HOUR <= expiry <= after + HOUR
    assert datas(storage.Get(KEY)) == {b"v"}
