"""Our encoder's fixed event layouts, and reading them in a few struct calls.

``codec.encode`` lays every event out front to back at fixed positions, so
the hot events between two of our nodes (PING, PONG, STORE requests and
acks, FIND_NODE and FIND_VALUE requests, and their answers carrying nodes or
values) have one exact layout each. ``decode_our_layouts`` checks every structural
byte of that layout (root offset, vtables, soffsets, uoffsets, vector
lengths and the total length) and reads the fields with one ``struct`` call
per table. It returns None for anything else, including every shape it does
not know and every Go encoding, and ``codec.decode`` then runs the general
reader. A buffer it accepts is one the general reader decodes to the same
event (tested by mutating every byte of each shape): the general reader
costs about three times as much on these shapes.
"""

from __future__ import annotations

import socket
import struct

from .events import PAYLOAD_CLASS, Event, EventType, FindNode, FindValue, Node, Store, Value

Buffer = bytes | bytearray | memoryview

EVENT_TYPES = {int(event_type): event_type for event_type in EventType}

# An event without a payload (80 bytes): root uoffset, 6-entry vtable, table
# (soffset, id and sender uoffsets, type, response), id and sender vectors.
# ``codec.encode`` writes every such event with it, after ``BARE_SHAPE``.
BARE_EVENT = struct.Struct("<I6HiIIbB2xI20sI20s")
BARE_SHAPE = (16, 12, 16, 4, 8, 12, 13, 12, 12, 32)
# The first 88 bytes of an event with a payload: as above with an 8-entry
# vtable, then the payload uoffset (``codec.encode`` writes 0 and links it
# when it writes the payload), type, response and union tag.
EVENT_HEAD = struct.Struct("<I8HiIIIbBBxI20sI20s")
HEAD_SHAPE = (20, 16, 20, 4, 8, 16, 17, 18, 12, 16, 16, 36)
PAYLOAD_FIELD = 32
"""Where the payload's uoffset is in ``EVENT_HEAD``."""
_BARE = BARE_EVENT.unpack_from
_HEAD = EVENT_HEAD.unpack_from
_HEAD_SIZE = EVENT_HEAD.size
# The payload tables at 88: FindValue after 2 bytes of alignment, FindNode, Store.
_FIND_VALUE = struct.Struct("<2x7HiIqqII").unpack_from
_FIND_VALUE_SHAPE = (14, 32, 8, 16, 14)  # vtable sizes, from/found slots, soffset
_FIND_NODE = struct.Struct("<4HiII").unpack_from
_FIND_NODE_SHAPE = (8, 12, 8)  # vtable size, table size, soffset
# The Store table at 96 after its vtable and 2 bytes of padding: vtable
# size, table size, values slot, soffset, and the values uoffset (to 104).
_STORE = struct.Struct("<3H2xiI").unpack_from
_STORE_SHAPE = (6, 8, 4, 8, 4)
_STORE_TYPE = EventType.STORE
_ID_VECTOR = struct.Struct("<I20s").unpack_from
_u32 = struct.Struct("<I").unpack_from

_FIND_VALUE_TYPE = EventType.FIND_VALUE
_FIND_NODE_TYPE = EventType.FIND_NODE


def decode_our_layouts(buffer: Buffer) -> Event | None:
    """The event in ``buffer`` if it has one of our encoder's hot layouts,
    else None (the caller then uses the general reader)."""
    end = len(buffer)
    if end == 80:
        bare = _BARE(buffer, 0)
        if bare[:10] != BARE_SHAPE or bare[12] != 20 or bare[14] != 20:
            return None
        event_type = EVENT_TYPES.get(bare[10])
        response = bool(bare[11])
        if event_type is None or (not response and event_type in PAYLOAD_CLASS):
            return None  # the general reader names the problem
        return Event(bare[13], bare[15], event_type, response, None)
    if end < _HEAD_SIZE:
        return None
    head = _HEAD(buffer, 0)
    if head[:12] != HEAD_SHAPE or head[16] != 20 or head[18] != 20:
        return None
    event_type = EVENT_TYPES.get(head[13])
    response = bool(head[14])
    payload: FindValue | FindNode | Store | None
    if event_type is _FIND_VALUE_TYPE and head[15] == 2 and head[12] == 72:
        payload = _find_value(buffer, end, response)
    elif event_type is _FIND_NODE_TYPE and head[15] == 1 and head[12] == 64:
        payload = _find_node(buffer, end, response)
    elif event_type is _STORE_TYPE and head[15] == 3 and head[12] == 64:
        payload = _store(buffer, end)
    else:
        return None
    if payload is None:
        return None
    return Event(head[17], head[19], event_type, response, payload)


def _find_value(buffer: Buffer, end: int, response: bool) -> FindValue | None:
    """A FindValue table at 104, then its key, values and nodes."""
    if end < 136:
        return None
    (
        size,
        table_size,
        key_slot,
        values_slot,
        nodes_slot,
        from_slot,
        found_slot,
        soffset,
        key_offset,
        from_ns,
        found,
        values_offset,
        nodes_offset,
    ) = _FIND_VALUE(buffer, _HEAD_SIZE)
    if (size, table_size, from_slot, found_slot, soffset) != _FIND_VALUE_SHAPE:
        return None
    key, after = _key(buffer, end, key_slot, key_offset, response, 104, 136)
    values: tuple[Value, ...] | None = ()
    if values_slot:
        if values_slot != 24 or values_offset != after - 128:
            return None
        values, after = _values(buffer, end, after)
    nodes = _nodes(buffer, end, nodes_slot, 28, nodes_offset, 104, after)
    if after < 0 or values is None or nodes is None:
        return None
    return FindValue(key, values, nodes, from_ns, found)


def _store(buffer: Buffer, end: int) -> Store | None:
    """A Store table at 96, then its values, which end the buffer."""
    if end < 108 or _STORE(buffer, _HEAD_SIZE) != _STORE_SHAPE:
        return None
    values, after = _values(buffer, end, 104)
    return None if values is None or after != end else Store(values)


def _find_node(buffer: Buffer, end: int, response: bool) -> FindNode | None:
    """A FindNode table at 96, then its key and nodes."""
    if end < 108:
        return None
    size, table_size, key_slot, nodes_slot, soffset, key_offset, nodes_offset = _FIND_NODE(
        buffer, _HEAD_SIZE
    )
    if (size, table_size, soffset) != _FIND_NODE_SHAPE:
        return None
    key, after = _key(buffer, end, key_slot, key_offset, response, 96, 108)
    nodes = _nodes(buffer, end, nodes_slot, 8, nodes_offset, 96, after)
    if after < 0 or nodes is None:
        return None
    return FindNode(key, nodes)


def _key(
    buffer: Buffer, end: int, slot: int, offset: int, response: bool, table: int, vector: int
) -> tuple[bytes | None, int]:
    """The key of the payload table at ``table`` (its first field, slot 4),
    whose vector follows the table at ``vector``, and where the next vector
    starts (-1: not our layout). Requests need a key."""
    if not slot:
        return None, vector if response else -1
    if slot != 4 or offset != vector - table - 4 or end < vector + 24:
        return None, -1
    length, key = _ID_VECTOR(buffer, vector)
    return (key, vector + 24) if length == 20 else (None, -1)


def _nodes(
    buffer: Buffer, end: int, slot: int, our_slot: int, offset: int, table: int, vector: int
) -> tuple[Node, ...] | None:
    """The nodes of the payload table at ``table`` (field ``our_slot``), whose
    vector starts at ``vector`` and runs to the end; () when absent and
    nothing follows; None when not our layout."""
    if vector < 0:
        return None
    if not slot:
        return () if end == vector else None
    if slot != our_slot or offset != vector - table - our_slot or end < vector + 4:
        return None
    count = _u32(buffer, vector)[0]
    if not 0 < count <= _NODES_MAX or end != vector + 12 + 52 * count:
        return None
    whole, shape = node_layout(count)
    fields = whole.unpack_from(buffer, vector + 4)
    first = count + 4  # each node's 8 fields follow the slots and the vtable
    structure = (
        fields[:first],
        fields[first::8],
        fields[first + 1 :: 8],
        fields[first + 2 :: 8],
        fields[first + 3 :: 8],
        fields[first + 5 :: 8],
    )
    if structure != shape:
        return None
    known = NODES
    nodes = []
    for wire in zip(
        fields[first + 4 :: 8], fields[first + 6 :: 8], fields[first + 7 :: 8], strict=True
    ):
        node = known.get(wire)
        if node is None:
            node_id, packed, port = wire
            node = known[wire] = Node(node_id, (HOST_NAMES.get(packed) or host_name(packed), port))
        nodes.append(node)
    while len(known) > HOSTS_MAX:
        del known[next(iter(known))]
    return tuple(nodes)


NODES: dict[tuple[bytes, bytes, int], Node] = {}
"""Nodes already decoded, by id, packed IPv4 address and port: answers
repeat the same nodes (a lookup's last answers all come from around its
target), and building one costs more than finding it. Bounded: over
``HOSTS_MAX``, the oldest entries go."""


def _values(buffer: Buffer, end: int, vector: int) -> tuple[tuple[Value, ...] | None, int]:
    """The values of the vector at ``vector`` and where the next vector
    starts; (None, -1) when not our layout. Each Value table is 8-aligned
    after the slots and their shared vtable, and followed by its key and
    value vectors."""
    if vector < 0 or end < vector + 4:
        return None, -1
    count = _u32(buffer, vector)[0]
    slot = vector + 4
    vtable = slot + 4 * count
    vtable += -(vtable + 12) % 8
    if not 0 < count <= _VALUES_MAX or end < vtable + 12:
        return None, -1
    if _VT_VALUE(buffer, vtable) != VALUE_VTABLE:
        return None, -1
    values = []
    pos = vtable + 12
    for _ in range(count):
        table = pos + (-pos % 8)
        if end < table + 56:
            return None, -1
        soffset, key_offset, ttl, created, value_offset, key_length, key, length = _VALUE(
            buffer, table
        )
        pos = table + 56 + length
        if (
            _u32(buffer, slot)[0] != table - slot
            or (soffset, key_offset, value_offset, key_length) != (table - vtable, 24, 28, 20)
            or end < pos
        ):
            return None, -1
        values.append(Value(key, bytes(buffer[table + 56 : pos]), ttl, created))
        pos += -length % 4
        slot += 4
    return tuple(values), pos


_VALUES_MAX = 256
"""Longest value vector read here (a key transfer batch of 16 KB holds
about 200 small values); longer ones go to the general reader."""
VALUE_VTABLE = (12, 28, 4, 24, 8, 16)
"""The vtable ``codec.encode`` gives Value tables: its size, the table's, and
the offsets of key, value, ttl and created."""
_VT_VALUE = struct.Struct("<6H").unpack_from
# A Value table (soffset, key uoffset, ttl, created, value uoffset), then
# its key vector and the value's length.
_VALUE = struct.Struct("<iIqqII20sI").unpack_from


_NODES_MAX = 64
"""Longest node vector read here (answers carry K = 20); longer ones go to
the general reader."""
_Layout = tuple[struct.Struct, tuple[tuple[int, ...], ...]]
_NODE_LAYOUTS: dict[int, _Layout] = {}


def node_layout(count: int) -> _Layout:
    """The layout ``codec.encode`` gives a vector of ``count`` nodes, after
    its length: a struct for the whole vector, and what its structural
    fields read: the slots' uoffsets and the shared vtable, then, across the
    nodes, the soffsets, the id and address uoffsets, and the id and address
    lengths. Cached up to ``_NODES_MAX`` nodes."""
    layout = _NODE_LAYOUTS.get(count)
    if layout is None:
        whole = struct.Struct(f"<{count}I4H" + "iIII20sI4sH2x" * count)
        slots = tuple(8 + 4 * count + 44 * i for i in range(count))
        soffsets = tuple(8 + 48 * i for i in range(count))
        shape = ((*slots, 8, 12, 4, 8), soffsets, *((n,) * count for n in (8, 28, 20, 6)))
        layout = (whole, shape)
        if count <= _NODES_MAX:
            _NODE_LAYOUTS[count] = layout
    return layout


HOSTS_MAX = 65536
"""Entries kept in each address cache; when full, the oldest goes. (A cache
emptied when full missed on every address for a while after: a process
simulating 10,000 nodes emptied it every few lookups.)"""
HOST_NAMES: dict[bytes, str] = {}
"""Dotted strings by packed IPv4 address."""


def host_name(packed: bytes) -> str:
    """``socket.inet_ntoa``, cached in ``HOST_NAMES``."""
    if len(HOST_NAMES) >= HOSTS_MAX:
        del HOST_NAMES[next(iter(HOST_NAMES))]
    host = HOST_NAMES[packed] = socket.inet_ntoa(packed)
    return host
