"""The wire layer: events, their FlatBuffers codec, and datagram framing.

Importable on its own: no sockets, threads or clocks.
"""

from .codec import decode, encode
from .events import Address, Event, EventType, FindNode, FindValue, Node, Store, Value
from .framing import (
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_DATAGRAM,
    MAX_EVENT_SIZE,
    Header,
    Reassembler,
    fragment,
    parse_header,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_CHUNK",
    "MAX_DATAGRAM",
    "MAX_EVENT_SIZE",
    "Address",
    "Event",
    "EventType",
    "FindNode",
    "FindValue",
    "Header",
    "Node",
    "Reassembler",
    "Store",
    "Value",
    "decode",
    "encode",
    "fragment",
    "parse_header",
]
