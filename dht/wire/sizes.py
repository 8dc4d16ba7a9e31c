"""Encoded sizes of values, for packing them into events (PROTOCOL.md 3).

An event is framed in at most 65535 bytes (``framing.MAX_EVENT_SIZE``), so
values are packed into as many events as their encoded size needs (D8),
and an answer is cut to a byte budget. These bounds are checked against
real encodings in the tests (``tests/test_answers.py``).
"""

from __future__ import annotations

from .events import Value
from .framing import MAX_EVENT_SIZE

VALUE_OVERHEAD_BOUND = 96
"""Bytes one value adds to an encoded FindValue or Store event beyond its
value bytes, at most: the Value table and vtable, key and value vectors
with padding, and the vector slot."""
EVENT_OVERHEAD_BOUND = 160
"""Bytes of an encoded FindValue or Store event beyond its values, at most."""


def value_cost(value: Value) -> int:
    """Bytes ``value`` adds to an encoded event, at most."""
    return len(value.value) + VALUE_OVERHEAD_BOUND


def cut(values: list[Value], budget: int) -> list[Value]:
    """The first of ``values`` that fit in ``budget`` bytes (at least one)."""
    size = 0
    for index, value in enumerate(values):
        size += value_cost(value)
        if size > budget and index:
            return values[:index]
    return values


def batch_values(values: list[Value], budget: int = MAX_EVENT_SIZE) -> list[tuple[Value, ...]]:
    """Split values into groups whose encoded event stays within ``budget`` bytes."""
    batches: list[tuple[Value, ...]] = []
    current: list[Value] = []
    size = EVENT_OVERHEAD_BOUND
    for value in values:
        cost = value_cost(value)
        if current and size + cost > budget:
            batches.append(tuple(current))
            current, size = [], EVENT_OVERHEAD_BOUND
        current.append(value)
        size += cost
    if current:
        batches.append(tuple(current))
    return batches
