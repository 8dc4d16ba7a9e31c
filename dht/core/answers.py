"""Answers to requests: a request event in, response events out (PROTOCOL.md 6).

PING gets a PONG; STORE gets an empty STORE response when every value was
kept (``keeper``), else a refusal saying why (``dht.wire.refusal``), which
Go nodes do not take for an acknowledgement; FIND_NODE gets the closest
contacts; FIND_VALUE gets the values, or the closest contacts when nothing
matches. Values are cut to ``max_answer_bytes`` (one request must not make
us send megabytes) and split over as many response events as needed to keep
each one within the 65535-byte framing limit by its real size (D8). Every
event carries ``found`` = the number of values the whole answer holds: a
Go requester waits for that many, so it must not count values cut off.
"""

from __future__ import annotations

from collections.abc import Callable

from ..keys import K
from ..wire.events import Event, EventType, FindNode, FindValue, Node, Payload, Store
from ..wire.refusal import refusal
from ..wire.sizes import batch_values, cut
from .keeper import Keeper
from .routing import RoutingTable


def answer(
    event: Event,
    requester: Node,
    table: RoutingTable,
    keeper: Keeper,
    count: Callable[[str], None],
    *,
    network: str,
    max_answer_bytes: int,
) -> list[Event]:
    """The response events for the request ``event`` from ``requester``,
    whose values are charged to ``network`` (``shares``)."""
    reply = _responder(event, table.local_id)
    payload = event.payload
    if event.type is EventType.PING:
        return [reply(EventType.PONG, None)]
    if event.type is EventType.STORE:
        assert isinstance(payload, Store)  # the codec guarantees it for requests
        refused = []
        for value in payload.values:
            reason = keeper.keep(value, network)
            if reason is not None:
                count("store-refused-" + reason)
                refused.append((value.key, reason))
        if refused:
            return [refusal(event, table.local_id, refused)]
        return [reply(EventType.STORE, None)]
    if event.type is EventType.FIND_NODE:
        assert isinstance(payload, FindNode) and payload.key is not None
        nodes = _closest(table, payload.key, requester.id)
        return [reply(EventType.FIND_NODE, FindNode(nodes=nodes))]
    if event.type is EventType.FIND_VALUE:
        assert isinstance(payload, FindValue) and payload.key is not None
        values = keeper.values(payload.key, payload.from_ns, turn=event.id[0])
        if not values:
            nodes = _closest(table, payload.key, requester.id)
            return [reply(EventType.FIND_VALUE, FindValue(nodes=nodes))]
        sent = cut(values, max_answer_bytes)
        if len(sent) < len(values):
            count("answer-cut")
        found = len(sent)
        return [
            reply(EventType.FIND_VALUE, FindValue(values=batch, found=found))
            for batch in batch_values(sent)
        ]
    count("ignored-request")  # PONG requests are ignored, as by the reference
    return []


def _responder(request: Event, local_id: bytes) -> Callable[[EventType, Payload | None], Event]:
    def reply(event_type: EventType, payload: Payload | None) -> Event:
        return Event(request.id, local_id, event_type, True, payload)

    return reply


def _closest(table: RoutingTable, key: bytes, requester: bytes) -> tuple[Node, ...]:
    return tuple(table.answer(key, K, requester))
