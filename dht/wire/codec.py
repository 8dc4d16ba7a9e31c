"""Encode events to FlatBuffers bytes and decode them back (PROTOCOL.md 4, 5).

Both directions are hand-written with ``struct``, for speed: the schema is
small and fixed. The flatc-generated code in ``dht.wire.fb`` is the oracle the
tests check them against (with the Go vectors). Decoding is a bounds-checked
reader: the FlatBuffers Python runtime does not
verify buffers, and a hostile datagram could otherwise raise arbitrary errors
or make it loop over a forged vector length. ``decode`` raises ``DecodeError``
(a ``ProtocolError``) for every malformed input, and nothing else.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence

from ..errors import ArgumentError, DecodeError
from ..keys import INT64_MAX, INT64_MIN, KEY_BYTES, check_id
from .events import (
    PAYLOAD_CLASS,
    Address,
    Event,
    EventType,
    FindNode,
    FindValue,
    Node,
    Payload,
    Store,
    Value,
)
from .layouts import (
    BARE_EVENT,
    BARE_SHAPE,
    EVENT_HEAD,
    EVENT_TYPES,
    HEAD_SHAPE,
    HOST_NAMES,
    HOSTS_MAX,
    PAYLOAD_FIELD,
    VALUE_VTABLE,
    decode_our_layouts,
    host_name,
    node_layout,
)

ADDRESS_BYTES = 6
"""IPv4 address (4 bytes) then the UDP port, little-endian (PROTOCOL.md 5.3)."""


# Union type codes, in the schema's declaration order (PROTOCOL.md 4.2).
_UNION_TAG: dict[type[Payload], int] = {FindNode: 1, FindValue: 2, Store: 3}
_UNION_TAG_BY_EVENT = {event: _UNION_TAG[cls] for event, cls in PAYLOAD_CLASS.items()}

# ---------------------------------------------------------------------------
# Encoding: a direct FlatBuffers writer.
#
# The flatbuffers Builder spends ~180 us on a 20-node answer; the schema is
# small and fixed, so the layout is written front to back here: each table's
# vtable just before it (one shared vtable per vector of tables), children
# after their parent so every uoffset is positive, 8-byte scalars 8-aligned.
# Every field the reference sets is present; absent optional vectors have a
# zero vtable entry. Tests check the output against the generated readers,
# the flatc Builder encoder and the Go vectors.

_PACK_U32 = struct.Struct("<I").pack_into
_VT_FIND_NODE = struct.Struct("<4H")
_VT_FIND_VALUE = struct.Struct("<7H")
_VT_STORE = struct.Struct("<3H")
_VT_VALUE = struct.Struct("<6H").pack(*VALUE_VTABLE)
_TABLE3 = struct.Struct("<iII")
_STORE_TABLE = struct.Struct("<iI")
_FIND_VALUE_TABLE = struct.Struct("<iIqqII")
_VALUE_TABLE = struct.Struct("<iIqqI")
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")


def encode(event: Event) -> bytes:
    """Serialize ``event`` to a FlatBuffers ``Event`` (union tag set, D11).

    Raises ``ArgumentError`` if the event is not valid for the wire (ids and
    keys not 20 bytes, unknown type, a payload that does not match the type,
    a request missing what decoders require, a non-IPv4 address, an integer
    outside int64). The length limit is applied by the framing
    (``dht.wire.framing.fragment``), not here.
    """
    try:
        event_type = EVENT_TYPES[event.type]  # a dict: EventType(...) costs 10 times more
    except (KeyError, TypeError):
        raise ArgumentError(f"unknown event type {event.type!r}") from None
    payload = event.payload
    if payload is not None and PAYLOAD_CLASS.get(event_type) is not type(payload):
        raise ArgumentError(
            f"a {event_type.name} event cannot carry a {type(payload).__name__} payload"
        )
    if not event.response:
        problem = _request_problem(event_type, payload)
        if problem:
            raise ArgumentError(problem[1])
    event_id = check_id(event.id, "event id")
    sender = check_id(event.sender, "sender")
    if payload is None:
        return BARE_EVENT.pack(*BARE_SHAPE, event_type, event.response, 20, event_id, 20, sender)
    tag = _UNION_TAG[type(payload)]
    head = EVENT_HEAD.pack(
        *HEAD_SHAPE, 0, event_type, event.response, tag, 20, event_id, 20, sender
    )
    buf = bytearray(head)
    _write_payload(buf, PAYLOAD_FIELD, payload)
    return bytes(buf)


def _link(buf: bytearray, field: int) -> None:
    """Point the uoffset at ``field`` to the end of ``buf`` (what comes next)."""
    _PACK_U32(buf, field, len(buf) - field)


def _align(buf: bytearray, alignment: int, ahead: int = 0) -> None:
    """Pad so that ``len(buf) + ahead`` is a multiple of ``alignment``."""
    buf += b"\0" * (-(len(buf) + ahead) % alignment)


def _write_bytes(buf: bytearray, field: int, data: bytes) -> None:
    _link(buf, field)
    buf += _U32_PACK(len(data))
    buf += data
    buf += _PADDING[len(data) & 3]


_U32_PACK = struct.Struct("<I").pack


def _write_payload(buf: bytearray, field: int, payload: Payload) -> None:
    if isinstance(payload, Store):
        buf += _VT_STORE.pack(6, 8, 4)
        buf += b"\0\0"
        table = len(buf)
        _link(buf, field)
        buf += _STORE_TABLE.pack(8, 0)
        _write_values(buf, table + 4, payload.values)
    elif isinstance(payload, FindNode):
        key, nodes = payload.key, payload.nodes
        buf += _VT_FIND_NODE.pack(8, 12, 4 if key is not None else 0, 8 if nodes else 0)
        table = len(buf)
        _link(buf, field)
        buf += _TABLE3.pack(8, 0, 0)
        if key is not None:
            _write_bytes(buf, table + 4, check_id(key, "key"))
        if nodes:
            _write_nodes(buf, table + 8, nodes)
    else:
        key, values, nodes = payload.key, payload.values, payload.nodes
        _align(buf, 8, 14)
        buf += _VT_FIND_VALUE.pack(
            14, 32, 4 if key is not None else 0, 24 if values else 0, 28 if nodes else 0, 8, 16
        )
        table = len(buf)
        _link(buf, field)
        from_ns = _check_int64(payload.from_ns, "from_ns")
        found = _check_int64(payload.found, "found")
        buf += _FIND_VALUE_TABLE.pack(14, 0, from_ns, found, 0, 0)
        if key is not None:
            _write_bytes(buf, table + 4, check_id(key, "key"))
        if values:
            _write_values(buf, table + 24, values)
        if nodes:
            _write_nodes(buf, table + 28, nodes)


def _write_table_vector(buf: bytearray, field: int, count: int) -> int:
    """Write a vector header of ``count`` uoffsets; return the first slot."""
    _link(buf, field)
    buf += _U32_PACK(count)
    first = len(buf)
    buf += bytes(4 * count)
    return first


def _write_values(buf: bytearray, field: int, values: Sequence[Value]) -> None:
    slot = _write_table_vector(buf, field, len(values))
    _align(buf, 8, 12)
    vtable = len(buf)
    buf += _VT_VALUE
    for value in values:
        _align(buf, 8)
        table = len(buf)
        _PACK_U32(buf, slot, table - slot)
        slot += 4
        buf += _VALUE_TABLE.pack(
            table - vtable,
            0,
            _check_int64(value.ttl_ns, "ttl_ns"),
            _check_int64(value.created_ns, "created_ns"),
            0,
        )
        _write_bytes(buf, table + 4, check_id(value.key, "value key"))
        _write_bytes(buf, table + 24, bytes(value.value))


_HOSTS: dict[str, bytes] = {}
"""Packed IPv4 addresses by dotted string (bounded: cleared when full)."""


def _write_nodes(buf: bytearray, field: int, nodes: Sequence[Node]) -> None:
    """The vector of ``nodes``, packed at once: slots, one shared vtable,
    then each Node table (soffset, uoffsets to its id and address) with
    both vectors inline (``layouts.node_layout``)."""
    _link(buf, field)
    count = len(nodes)
    whole, shape = node_layout(count)
    fields: list[object] = [*shape[0]]
    for node, soffset in zip(nodes, shape[1], strict=True):
        node_id = node.id
        if type(node_id) is not bytes or len(node_id) != KEY_BYTES:
            check_id(node_id, "node id")  # raises the precise error
            node_id = bytes(node_id)
        # encode_address inlined: this loop runs for every node of an answer.
        host, port = node.address
        packed = _HOSTS.get(host)
        if packed is None:
            packed = _pack_host(host)
        if type(port) is not int or not 0 <= port <= 0xFFFF:
            raise ArgumentError(f"node port {port!r} is not in 0..65535")
        fields += (soffset, 8, 28, KEY_BYTES, node_id, ADDRESS_BYTES, packed, port)
    buf += _U32_PACK(count)
    buf += whole.pack(*fields)


def _pack_host(host: str) -> bytes:
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError, ValueError):  # ValueError: an embedded NUL
        raise ArgumentError(f"node address {host!r} is not a dotted IPv4 address") from None
    if len(_HOSTS) >= HOSTS_MAX:
        del _HOSTS[next(iter(_HOSTS))]
    _HOSTS[host] = packed
    return packed


def encode_address(address: Address) -> bytes:
    """The 6-byte wire form of an IPv4 ``(host, port)``: 4 address bytes, port LE."""
    host, port = address
    packed = _HOSTS.get(host)
    if packed is None:
        packed = _pack_host(host)
    if type(port) is not int or not 0 <= port <= 0xFFFF:
        raise ArgumentError(f"node port {port!r} is not in 0..65535")
    return packed + port.to_bytes(2, "little")


def decode_address(data: bytes) -> Address:
    """Inverse of ``encode_address`` (``data`` must be 6 bytes)."""
    return _inet_ntoa(data[:4]), data[4] | (data[5] << 8)


_inet_ntoa = socket.inet_ntoa


def _check_int64(value: int, what: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ArgumentError(f"{what} = {value} does not fit in int64")
    return value


# ---------------------------------------------------------------------------
# Decoding

_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_2u16 = struct.Struct("<HH").unpack_from

Buffer = bytes | bytearray | memoryview


_MAX_SLOTS = 8
"""More vtable entries than any table of the schema has (Event has 6)."""
_VTABLE_ENTRIES = [struct.Struct(f"<{n}H").unpack_from for n in range(_MAX_SLOTS + 1)]


class _Table:
    """One bounds-checked table of a buffer: where its fields are."""

    __slots__ = ("buf", "end", "offsets", "pos", "table_size")

    def __init__(self, buf: Buffer, end: int, pos: int) -> None:
        if pos + 4 > end:
            raise DecodeError("bad-offset", f"table at {pos} is past the end ({end})")
        vtable = pos - _i32(buf, pos)[0]
        if vtable < 0 or vtable + 4 > end:
            raise DecodeError("bad-offset", f"vtable at {vtable} is outside the buffer")
        vtable_size, table_size = _2u16(buf, vtable)
        if vtable_size < 4 or vtable_size & 1 or vtable + vtable_size > end:
            raise DecodeError("bad-vtable", f"vtable size {vtable_size} at {vtable}")
        if table_size < 4 or pos + table_size > end:
            raise DecodeError("bad-vtable", f"table size {table_size} at {pos}")
        self.buf = buf
        self.end = end
        self.pos = pos
        self.table_size = table_size
        # The field offsets, read at once (entries past the schema's are unused).
        count = min((vtable_size - 4) >> 1, _MAX_SLOTS)
        self.offsets: tuple[int, ...] = _VTABLE_ENTRIES[count](buf, vtable + 4)

    def offsets_of(self, widths: tuple[int, ...]) -> list[int]:
        """The offsets in the table of the fields ``0..len(widths)-1`` (each
        ``widths[slot]`` bytes wide), 0 for an absent one; all checked."""
        offsets = self.offsets
        size = self.table_size
        out = []
        for slot, width in enumerate(widths):
            offset = offsets[slot] if slot < len(offsets) else 0
            if offset and (offset < 4 or offset + width > size):
                raise DecodeError(
                    "bad-field", f"field {slot} at offset {offset} is outside its table"
                )
            out.append(offset)
        return out

    def positions_of(self, widths: tuple[int, ...]) -> list[int]:
        """Like ``offsets_of``, as positions in the buffer (0: absent)."""
        pos = self.pos
        return [pos + offset if offset else 0 for offset in self.offsets_of(widths)]


def decode(buffer: Buffer) -> Event:
    """Parse one serialized event (the reassembled bytes after the headers).

    Raises ``DecodeError`` for anything malformed (see ``decode_general``).
    The layouts our own encoder gives the hot events are recognised and read
    first (``layouts``), at a third of the cost; everything else, including
    every Go encoding, is read by ``decode_general``. The returned event owns
    its bytes; ``buffer`` may be reused afterwards.
    """
    event = decode_our_layouts(buffer)
    return decode_general(buffer) if event is None else event


def decode_general(buffer: Buffer) -> Event:
    """Parse one serialized event, laid out in any valid way.

    Validates every offset against the buffer, the lengths of ids, keys and
    addresses, the event type, and that the payload fits the type (requests
    of STORE, FIND_NODE and FIND_VALUE must carry theirs; FIND_NODE and
    FIND_VALUE requests must carry a key). The payload table is chosen by the
    event type; a union tag of NONE is accepted (Go nodes never set it), any
    other tag must match. Raises ``DecodeError`` for anything malformed.
    """
    end = len(buffer)
    if end < 8:
        raise DecodeError("short-event", f"{end} bytes")
    root = _Table(buffer, end, _u32(buffer, 0)[0])
    id_at, sender_at, type_at, response_at, tag_at, payload_at = root.positions_of(_EVENT_FIELDS)
    event_id = _required_id(buffer, end, id_at, "event id")
    sender = _required_id(buffer, end, sender_at, "sender")
    raw_type = _i8(buffer, type_at)[0] if type_at else 0
    event_type = EVENT_TYPES.get(raw_type)
    if event_type is None:
        raise DecodeError("unknown-event-type", f"event type {raw_type}")
    response = bool(buffer[response_at]) if response_at else False
    tag = buffer[tag_at] if tag_at else 0

    expected_tag = _UNION_TAG_BY_EVENT.get(event_type, 0)
    if tag not in (0, expected_tag):
        raise DecodeError(
            "payload-mismatch", f"{event_type.name} event with payload type tag {tag}"
        )
    payload: Payload | None = None
    if payload_at:
        if not expected_tag:
            raise DecodeError("payload-mismatch", f"{event_type.name} event with a payload")
        table = _Table(buffer, end, payload_at + _u32(buffer, payload_at)[0])
        payload = _decode_payload(event_type, table)
    if not response:
        problem = _request_problem(event_type, payload)
        if problem:
            raise DecodeError(*problem)
    return Event(event_id, sender, event_type, response, payload)


# Field widths by slot, in schema order (PROTOCOL.md 4).
_EVENT_FIELDS = (4, 4, 1, 1, 1, 4)  # id, sender, event, response, payload_type, payload
_STORE_FIELDS = (4,)  # values
_FIND_NODE_FIELDS = (4, 4)  # key, nodes
_FIND_VALUE_FIELDS = (4, 4, 4, 8, 8)  # key, values, nodes, from, found
_VALUE_FIELDS = (4, 4, 8, 8)  # key, value, ttl, created
_NODE_FIELDS = (4, 4)  # id, address
_i8 = struct.Struct("<b").unpack_from


def _request_problem(event_type: EventType, payload: Payload | None) -> tuple[str, str] | None:
    """What makes a request unusable, as (reason, message), or None if it is fine."""
    if event_type in PAYLOAD_CLASS and payload is None:
        return "missing-payload", f"{event_type.name} request without a payload"
    if isinstance(payload, FindNode | FindValue) and payload.key is None:
        return "missing-key", f"{event_type.name} request without a key"
    return None


def _decode_payload(event_type: EventType, table: _Table) -> Payload:
    buf, end = table.buf, table.end
    if event_type is EventType.STORE:
        (values_at,) = table.positions_of(_STORE_FIELDS)
        return Store(_decode_values(buf, end, values_at))
    if event_type is EventType.FIND_NODE:
        key_at, nodes_at = table.positions_of(_FIND_NODE_FIELDS)
        return FindNode(_optional_id(buf, end, key_at, "key"), _decode_nodes(buf, end, nodes_at))
    key_at, values_at, nodes_at, from_at, found_at = table.positions_of(_FIND_VALUE_FIELDS)
    return FindValue(
        key=_optional_id(buf, end, key_at, "key"),
        values=_decode_values(buf, end, values_at),
        nodes=_decode_nodes(buf, end, nodes_at),
        from_ns=_i64(buf, from_at)[0] if from_at else 0,
        found=_i64(buf, found_at)[0] if found_at else 0,
    )


def _vector_of_tables(
    buf: Buffer, end: int, position: int, widths: tuple[int, ...], element_bytes: int
) -> Iterator[tuple[int, list[int]]]:
    """``(table position, field offsets)`` of each table of the vector whose
    uoffset is at ``position`` (0: an absent vector, no tables), refusing
    more tables than the buffer holds at ``element_bytes`` each. Tables of a
    vector usually share one vtable (Go's builder and ours both share it):
    its offsets (for fields of ``widths``) are checked once, and each further
    table costs one bounds check."""
    if not position:
        return
    vector = position + _u32(buf, position)[0]
    if vector + 4 > end:
        raise DecodeError("bad-offset", f"vector at {vector} is past the end")
    length = _u32(buf, vector)[0]
    start = vector + 4
    if start + length * 4 > end:
        raise DecodeError("bad-vector", f"vector of {length} elements runs past the end")
    if length * element_bytes > end:
        raise DecodeError("bad-vector", f"{length} tables cannot fit in the event's {end} bytes")
    offsets: list[int] = []
    table_size = 0
    known_vtable = -1
    for element in range(start, start + 4 * length, 4):
        pos = element + _u32(buf, element)[0]
        if pos + 4 > end:
            raise DecodeError("bad-offset", f"table at {pos} is past the end ({end})")
        vtable = pos - _i32(buf, pos)[0]
        if vtable != known_vtable:
            layout = _Table(buf, end, pos)
            offsets, table_size = layout.offsets_of(widths), layout.table_size
            known_vtable = vtable
        elif pos + table_size > end:
            raise DecodeError("bad-vtable", f"table size {table_size} at {pos}")
        yield pos, offsets


# The fewest bytes any encoding spends on one value beyond its bytes (vector
# slot, table of soffset and two uoffsets, key vector, value length) and on
# one node (the same with a 6-byte address). A hostile event can point many
# tables at one vector; charging these per element keeps what an event
# decodes to within a small multiple of its size.
_VALUE_MIN_BYTES = 44
_NODE_MIN_BYTES = 48


def _decode_values(buf: Buffer, end: int, position: int) -> tuple[Value, ...]:
    if not position:
        return ()
    values = []
    spent = 0
    for pos, (key_field, value_field, ttl_field, created_field) in _vector_of_tables(
        buf, end, position, _VALUE_FIELDS, _VALUE_MIN_BYTES
    ):
        key = _required_id(buf, end, pos + key_field if key_field else 0, "value key")
        start, stop = _vector_span(buf, end, pos + value_field) if value_field else (0, 0)
        spent += stop - start + _VALUE_MIN_BYTES
        if spent > end:
            raise DecodeError("bad-vector", f"values refer to more than the event's {end} bytes")
        values.append(
            Value(
                key,
                bytes(buf[start:stop]),
                _i64(buf, pos + ttl_field)[0] if ttl_field else 0,
                _i64(buf, pos + created_field)[0] if created_field else 0,
            )
        )
    return tuple(values)


_i64 = struct.Struct("<q").unpack_from


def _decode_nodes(buf: Buffer, end: int, position: int) -> tuple[Node, ...]:
    """The Node tables of a vector: an answer carries 20, so each is read
    with one struct call for its id and one for its address."""
    if not position:
        return ()
    nodes = []
    for pos, (id_field, address_field) in _vector_of_tables(
        buf, end, position, _NODE_FIELDS, _NODE_MIN_BYTES
    ):
        if not id_field:
            raise DecodeError("missing-field", "node id is absent")
        # Fast path: both vectors in bounds with the expected lengths.
        id_vector = pos + id_field + _u32(buf, pos + id_field)[0]
        if address_field and id_vector + 24 <= end:
            size, node_id = _ID_VECTOR(buf, id_vector)
            address_vector = pos + address_field + _u32(buf, pos + address_field)[0]
            if size == KEY_BYTES and address_vector + 10 <= end:
                size, packed, port = _ADDRESS_VECTOR(buf, address_vector)
                if size == ADDRESS_BYTES:
                    host = HOST_NAMES.get(packed) or host_name(packed)
                    nodes.append(Node(node_id, (host, port)))
                    continue
        nodes.append(_decode_node_slowly(buf, end, pos, id_field, address_field))
    return tuple(nodes)


_ID_VECTOR = struct.Struct("<I20s").unpack_from
_ADDRESS_VECTOR = struct.Struct("<I4sH").unpack_from


def _decode_node_slowly(buf: Buffer, end: int, pos: int, id_field: int, address_field: int) -> Node:
    """A node the fast path refused: find exactly what is wrong, or decode it."""
    node_id = _required_id(buf, end, pos + id_field, "node id")
    address = _vector_bytes(buf, end, pos + address_field) if address_field else None
    if address is None or len(address) != ADDRESS_BYTES:
        shown = "absent" if address is None else f"{len(address)} bytes"
        raise DecodeError("bad-address", f"node address is {shown}, expected 6 bytes")
    return Node(node_id, decode_address(address))


def _vector_bytes(buf: Buffer, end: int, position: int) -> bytes:
    """The byte vector whose uoffset is at ``position`` (inside its table)."""
    start, stop = _vector_span(buf, end, position)
    return bytes(buf[start:stop])


def _vector_span(buf: Buffer, end: int, position: int) -> tuple[int, int]:
    """Where the bytes of the vector whose uoffset is at ``position`` are."""
    vector = position + _u32(buf, position)[0]
    if vector + 4 > end:
        raise DecodeError("bad-offset", f"vector at {vector} is past the end")
    start = vector + 4
    stop = start + _u32(buf, vector)[0]
    if stop > end:
        raise DecodeError("bad-vector", f"vector of {stop - start} elements runs past the end")
    return start, stop


def _optional_id(buf: Buffer, end: int, position: int, what: str) -> bytes | None:
    """The 20-byte id whose uoffset is at ``position`` (0: absent, None)."""
    if not position:
        return None
    value = _vector_bytes(buf, end, position)
    if len(value) != KEY_BYTES:
        raise DecodeError("bad-length", f"{what} is {len(value)} bytes, expected {KEY_BYTES}")
    return value


def _required_id(buf: Buffer, end: int, position: int, what: str) -> bytes:
    value = _optional_id(buf, end, position, what)
    if value is None:
        raise DecodeError("missing-field", f"{what} is absent")
    return value
