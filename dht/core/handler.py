"""Answers to incoming requests: event in, response events out (PROTOCOL.md 6).

PING gets a PONG; STORE stores each valid value and gets an empty STORE
response (even when values were refused, which the counters record);
FIND_NODE gets the closest contacts; FIND_VALUE gets the values, split over
as many response events as needed to keep each one within the 65535-byte
framing limit by its real size (D8), every one carrying ``found`` = total,
or the closest contacts when nothing matches.
"""

from __future__ import annotations

from collections.abc import Callable

from ..keys import K
from ..wire.events import Event, EventType, FindNode, FindValue, Node, Payload, Store, Value
from ..wire.framing import MAX_EVENT_SIZE
from .routing import RoutingTable
from .storage import Storage

MAX_VALUE_SIZE = 32768
"""Largest value accepted (PROTOCOL.md 1; exactly 32768 is allowed)."""

# Upper bound of what one value adds to an encoded FindValue/Store event beyond
# its bytes: the Value table and vtable, key and value vectors with padding,
# and the vector slot. Checked against real encodings in the tests.
VALUE_OVERHEAD = 96
EVENT_OVERHEAD = 160


def answer(
    event: Event,
    requester: Node,
    table: RoutingTable,
    storage: Storage,
    count: Callable[[str], None],
) -> list[Event]:
    """The response events for the request ``event`` from ``requester``."""
    reply = _responder(event, table.local_id)
    payload = event.payload
    if event.type is EventType.PING:
        return [reply(EventType.PONG, None)]
    if event.type is EventType.STORE:
        assert isinstance(payload, Store)  # the codec guarantees it for requests
        for value in payload.values:
            if len(value.value) > MAX_VALUE_SIZE or value.ttl_ns <= 0:
                count("store-invalid-value")
            elif not storage.Set(value.key, value.value, value.created_ns, value.ttl_ns):
                count("store-refused")
        return [reply(EventType.STORE, None)]
    if event.type is EventType.FIND_NODE:
        assert isinstance(payload, FindNode) and payload.key is not None
        nodes = _closest(table, payload.key, requester.id)
        return [reply(EventType.FIND_NODE, FindNode(nodes=nodes))]
    if event.type is EventType.FIND_VALUE:
        assert isinstance(payload, FindValue) and payload.key is not None
        values = storage.Get(payload.key, payload.from_ns)
        if not values:
            nodes = _closest(table, payload.key, requester.id)
            return [reply(EventType.FIND_VALUE, FindValue(nodes=nodes))]
        found = len(values)
        return [
            reply(EventType.FIND_VALUE, FindValue(values=batch, found=found))
            for batch in batch_values(values)
        ]
    count("ignored-request")  # PONG requests are ignored, as by the reference
    return []


def _responder(request: Event, local_id: bytes) -> Callable[[EventType, Payload | None], Event]:
    def reply(event_type: EventType, payload: Payload | None) -> Event:
        return Event(request.id, local_id, event_type, True, payload)

    return reply


def _closest(table: RoutingTable, key: bytes, requester: bytes) -> tuple[Node, ...]:
    nodes = table.closest(key, K + 1)
    return tuple(node for node in nodes if node.id != requester)[:K]


def batch_values(values: list[Value], budget: int = MAX_EVENT_SIZE) -> list[tuple[Value, ...]]:
    """Split values into groups whose encoded event stays within ``budget`` bytes."""
    batches: list[tuple[Value, ...]] = []
    current: list[Value] = []
    size = EVENT_OVERHEAD
    for value in values:
        cost = len(value.value) + VALUE_OVERHEAD
        if current and size + cost > budget:
            batches.append(tuple(current))
            current, size = [], EVENT_OVERHEAD
        current.append(value)
        size += cost
    if current:
        batches.append(tuple(current))
    return batches
