"""Events as plain frozen dataclasses: what the codec decodes to and encodes from.

Field units follow the wire (PROTOCOL.md 4, 5): ids and keys are 20-byte
``bytes``, times and durations are integer nanoseconds (``*_ns``), so that
whatever arrives round-trips exactly. ``Value`` adds seconds/datetime views.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

Address = tuple[str, int]
"""An IPv4 address and UDP port, as Python's socket module spells it."""

NS_PER_SECOND = 1_000_000_000
MAX_VALUE_SIZE = 32768
"""Largest value accepted (PROTOCOL.md 1; exactly 32768 is allowed)."""


class EventType(enum.IntEnum):
    """The ``event`` field (PROTOCOL.md 4.2)."""

    PING = 0
    PONG = 1
    STORE = 2
    FIND_NODE = 3
    FIND_VALUE = 4


@dataclass(frozen=True, slots=True)
class Node:
    """A routing entry: a 20-byte node id and its UDP address."""

    id: bytes
    address: Address


@dataclass(frozen=True, slots=True)
class Value:
    """A stored value: 20-byte key, bytes, lifetime and creation time.

    ``ttl_ns`` is the lifetime in nanoseconds and ``created_ns`` the creation
    time in nanoseconds since the Unix epoch, as on the wire; ``ttl`` (float
    seconds) and ``created`` (an aware UTC ``datetime``) are conveniences.
    A FIND_VALUE answer from a Go node carries ``created_ns == 0`` (D13).
    """

    key: bytes
    value: bytes
    ttl_ns: int
    created_ns: int = 0

    @property
    def ttl(self) -> float:
        """Lifetime in seconds."""
        return self.ttl_ns / NS_PER_SECOND

    @property
    def created(self) -> datetime:
        """Creation time (UTC)."""
        return datetime.fromtimestamp(self.created_ns / NS_PER_SECOND, UTC)


@dataclass(frozen=True, slots=True)
class FindNode:
    """FIND_NODE payload: ``key`` in requests, ``nodes`` in responses."""

    key: bytes | None = None
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class FindValue:
    """FIND_VALUE payload.

    Requests carry ``key`` and ``from_ns`` (only values created at or after it
    are wanted; ``<= 0`` means no filter, D12). Responses carry either
    ``values`` with ``found`` (the total over every event of a split answer)
    or the closest ``nodes``.
    """

    key: bytes | None = None
    values: tuple[Value, ...] = ()
    nodes: tuple[Node, ...] = ()
    from_ns: int = 0
    found: int = 0


@dataclass(frozen=True, slots=True)
class Store:
    """STORE request payload: the values to store."""

    values: tuple[Value, ...] = ()


Payload = FindNode | FindValue | Store

PAYLOAD_CLASS: dict[EventType, type[Payload]] = {
    EventType.STORE: Store,
    EventType.FIND_NODE: FindNode,
    EventType.FIND_VALUE: FindValue,
}
"""The payload table each event type carries (decoders dispatch on this, PROTOCOL.md 4.4)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One protocol event: a request, or a response echoing the request's ``id``."""

    id: bytes
    sender: bytes
    type: EventType
    response: bool = False
    payload: Payload | None = None
