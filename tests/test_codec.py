"""Unit tests of the event codec (dht.wire.codec): round trips and rejections."""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import flatbuffers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dht import ArgumentError, DecodeError, ProtocolError
from dht.wire import Event, EventType, FindNode, FindValue, Node, Store, Value, decode, encode
from dht.wire.events import Payload
from dht.wire.fb import Event as fb_event
from dht.wire.fb import FindNode as fb_find_node
from dht.wire.fb import FindValue as fb_find_value
from dht.wire.fb import Node as fb_node
from dht.wire.fb import Store as fb_store
from dht.wire.fb import Value as fb_value

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

EVENT_ID = bytes(range(1, 21))
SENDER = bytes(range(0xA0, 0xB4))
KEY = bytes(range(0x80, 0x94))
NODE_ID = bytes(range(0x10, 0x24))

# ---------------------------------------------------------------------------
# Strategies

ids = st.binary(min_size=20, max_size=20)
int64 = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
addresses = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 0xFFFF))
nodes = st.builds(Node, id=ids, address=addresses)
values = st.builds(Value, key=ids, value=st.binary(max_size=2000), ttl_ns=int64, created_ns=int64)
node_tuples = st.lists(nodes, max_size=8).map(tuple)
value_tuples = st.lists(values, max_size=3).map(tuple)


def _events(
    types: st.SearchStrategy[EventType],
    response: st.SearchStrategy[bool],
    payload: st.SearchStrategy[Payload | None],
) -> st.SearchStrategy[Event]:
    return st.builds(Event, id=ids, sender=ids, type=types, response=response, payload=payload)


valid_events = st.one_of(
    _events(st.sampled_from([EventType.PING, EventType.PONG]), st.booleans(), st.none()),
    _events(st.just(EventType.STORE), st.just(False), st.builds(Store, values=value_tuples)),
    _events(st.just(EventType.STORE), st.just(True), st.none()),
    _events(st.just(EventType.FIND_NODE), st.just(False), st.builds(FindNode, key=ids)),
    _events(
        st.just(EventType.FIND_NODE),
        st.just(True),
        st.builds(FindNode, key=st.none() | ids, nodes=node_tuples),
    ),
    _events(
        st.just(EventType.FIND_VALUE),
        st.just(False),
        st.builds(FindValue, key=ids, from_ns=int64),
    ),
    _events(
        st.just(EventType.FIND_VALUE),
        st.just(True),
        st.builds(FindValue, values=value_tuples, found=int64)
        | st.builds(FindValue, nodes=node_tuples),
    ),
)

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UNION_TAG = {None: 0, FindNode: 1, FindValue: 2, Store: 3}


# ---------------------------------------------------------------------------
# Round trips


@PROPERTY_SETTINGS
@given(valid_events)
def test_round_trip_of_valid_events(event: Event) -> None:
    encoded = encode(event)
    assert isinstance(encoded, bytes)
    decoded = decode(encoded)
    assert decoded == event
    assert decoded.type is event.type
    # The encoder is deterministic and sets the union tag from the payload.
    assert encode(decoded) == encoded
    root = fb_event.Event.GetRootAs(encoded, 0)
    assert root.PayloadType() == UNION_TAG[type(event.payload) if event.payload else None]


@PROPERTY_SETTINGS
@given(valid_events, st.data())
def test_corrupted_encodings_raise_only_decode_error(event: Event, data: st.DataObject) -> None:
    encoded = bytearray(encode(event))
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(encoded) - 1), st.integers(0, 255)),
            min_size=1,
            max_size=4,
        )
    )
    for position, byte in edits:
        encoded[position] = byte
    cut = data.draw(st.integers(0, len(encoded)))
    try:
        decoded = decode(bytes(encoded[:cut]))
    except DecodeError as error:
        assert error.reason
    else:
        assert isinstance(decoded, Event)


def test_round_trip_keeps_empty_and_absent_distinctions() -> None:
    event = Event(
        EVENT_ID,
        SENDER,
        EventType.STORE,
        payload=Store(values=(Value(KEY, b"", 0, 0), Value(KEY, b"x", -1, INT64_MIN))),
    )
    assert decode(encode(event)) == event
    response = Event(EVENT_ID, SENDER, EventType.FIND_NODE, True, FindNode())
    decoded = decode(encode(response))
    assert decoded.payload == FindNode(key=None, nodes=())


# ---------------------------------------------------------------------------
# Building malformed events


PayloadBuilder = Callable[[flatbuffers.Builder], int]


def build_event(
    *,
    event_id: bytes | None = EVENT_ID,
    sender: bytes | None = SENDER,
    event_type: int = 0,
    response: bool = False,
    tag: int | None = None,
    payload: PayloadBuilder | None = None,
) -> bytes:
    """An ``Event`` buffer built field by field with the generated builders."""
    builder = flatbuffers.Builder(256)
    payload_offset = payload(builder) if payload is not None else None
    id_offset = builder.CreateByteVector(event_id) if event_id is not None else None
    sender_offset = builder.CreateByteVector(sender) if sender is not None else None
    fb_event.Start(builder)
    if id_offset is not None:
        fb_event.AddId(builder, id_offset)
    if sender_offset is not None:
        fb_event.AddSender(builder, sender_offset)
    fb_event.AddEvent(builder, event_type)
    fb_event.AddResponse(builder, response)
    if tag is not None:
        fb_event.AddPayloadType(builder, tag)
    if payload_offset is not None:
        fb_event.AddPayload(builder, payload_offset)
    builder.Finish(fb_event.End(builder))
    return bytes(builder.Output())


def _value_offsets(builder: flatbuffers.Builder, key: bytes) -> int:
    key_offset = builder.CreateByteVector(key)
    data_offset = builder.CreateByteVector(b"hello")
    fb_value.Start(builder)
    fb_value.AddKey(builder, key_offset)
    fb_value.AddValue(builder, data_offset)
    fb_value.AddTtl(builder, 3_600_000_000_000)
    fb_value.AddCreated(builder, 1_700_000_000_123_456_789)
    value = fb_value.End(builder)
    fb_store.StartValuesVector(builder, 1)
    builder.PrependUOffsetTRelative(value)
    return int(builder.EndVector())


def store_payload(key: bytes = KEY) -> PayloadBuilder:
    def build(builder: flatbuffers.Builder) -> int:
        values = _value_offsets(builder, key)
        fb_store.Start(builder)
        fb_store.AddValues(builder, values)
        return int(fb_store.End(builder))

    return build


def find_node_payload(
    key: bytes | None = KEY, address: bytes | None = None, node_id: bytes = NODE_ID
) -> PayloadBuilder:
    """A FindNode table with ``key`` and, if ``address`` is given, one node."""

    def build(builder: flatbuffers.Builder) -> int:
        nodes = None
        if address is not None:
            id_offset = builder.CreateByteVector(node_id)
            address_offset = builder.CreateByteVector(address)
            fb_node.Start(builder)
            fb_node.AddId(builder, id_offset)
            fb_node.AddAddress(builder, address_offset)
            node = fb_node.End(builder)
            fb_find_node.StartNodesVector(builder, 1)
            builder.PrependUOffsetTRelative(node)
            nodes = builder.EndVector()
        key_offset = builder.CreateByteVector(key) if key is not None else None
        fb_find_node.Start(builder)
        if key_offset is not None:
            fb_find_node.AddKey(builder, key_offset)
        if nodes is not None:
            fb_find_node.AddNodes(builder, nodes)
        return int(fb_find_node.End(builder))

    return build


ADDRESS = bytes([127, 0, 0, 1]) + (9001).to_bytes(2, "little")


def test_builder_baselines_decode() -> None:
    """The well-formed versions of the malformed cases below decode as expected."""
    assert decode(build_event()) == Event(EVENT_ID, SENDER, EventType.PING)
    store = decode(build_event(event_type=EventType.STORE, tag=3, payload=store_payload()))
    assert store.payload == Store(
        (Value(KEY, b"hello", 3_600_000_000_000, 1_700_000_000_123_456_789),)
    )
    untagged = decode(build_event(event_type=EventType.STORE, payload=store_payload()))
    assert untagged == store
    find = decode(
        build_event(
            event_type=EventType.FIND_NODE,
            response=True,
            payload=find_node_payload(key=None, address=ADDRESS),
        )
    )
    assert find.payload == FindNode(None, (Node(NODE_ID, ("127.0.0.1", 9001)),))
    request = decode(build_event(event_type=EventType.FIND_NODE, payload=find_node_payload()))
    assert request.payload == FindNode(KEY)


def _patched(buf: bytes, position: int, fmt: str, value: int) -> bytes:
    patched = bytearray(buf)
    struct.pack_into(fmt, patched, position, value)
    return bytes(patched)


def _root_position(buf: bytes) -> int:
    return int(struct.unpack_from("<I", buf, 0)[0])


def _field_position(buf: bytes, vtable_offset: int) -> int:
    """Absolute position of a root field, found with the generated reader."""
    root = fb_event.Event.GetRootAs(buf, 0)
    offset = root._tab.Offset(vtable_offset)
    assert offset
    return int(root._tab.Pos + offset)


PING = build_event()


def _id_vector_length_position(buf: bytes) -> int:
    field = _field_position(buf, 4)
    return field + int(struct.unpack_from("<I", buf, field)[0])


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "short-event"),
    "short": (PING[:7], "short-event"),
    "root-offset-past-end": (_patched(PING, 0, "<I", len(PING)), "bad-offset"),
    "root-offset-huge": (_patched(PING, 0, "<I", 0xFFFFFFF0), "bad-offset"),
    "vtable-negative": (
        _patched(PING, _root_position(PING), "<i", _root_position(PING) + 4),
        "bad-offset",
    ),
    "vtable-past-end": (
        _patched(PING, _root_position(PING), "<i", -len(PING)),
        "bad-offset",
    ),
    "id-vector-offset-past-end": (
        _patched(PING, _field_position(PING, 4), "<I", len(PING)),
        "bad-offset",
    ),
    "id-vector-length-past-end": (
        _patched(PING, _id_vector_length_position(PING), "<I", len(PING)),
        "bad-vector",
    ),
    "id-vector-length-huge": (
        _patched(PING, _id_vector_length_position(PING), "<I", 0xFFFFFFFF),
        "bad-vector",
    ),
    "id-19-bytes": (build_event(event_id=EVENT_ID[:19]), "bad-length"),
    "id-21-bytes": (build_event(event_id=EVENT_ID + b"\x00"), "bad-length"),
    "id-missing": (build_event(event_id=None), "missing-field"),
    "sender-missing": (build_event(sender=None), "missing-field"),
    "sender-19-bytes": (build_event(sender=SENDER[:19]), "bad-length"),
    "event-type-9": (build_event(event_type=9), "unknown-event-type"),
    "event-type-minus-1": (build_event(event_type=-1), "unknown-event-type"),
    "store-tagged-find-node": (
        build_event(event_type=EventType.STORE, tag=1, payload=store_payload()),
        "payload-mismatch",
    ),
    "find-node-tagged-store": (
        build_event(event_type=EventType.FIND_NODE, tag=3, payload=find_node_payload()),
        "payload-mismatch",
    ),
    "tag-4": (
        build_event(event_type=EventType.FIND_NODE, tag=4, payload=find_node_payload()),
        "payload-mismatch",
    ),
    "tag-255": (
        build_event(event_type=EventType.STORE, tag=255, payload=store_payload()),
        "payload-mismatch",
    ),
    "ping-with-payload": (build_event(payload=store_payload()), "payload-mismatch"),
    "ping-with-tag": (build_event(tag=3), "payload-mismatch"),
    "pong-with-payload": (
        build_event(event_type=EventType.PONG, response=True, payload=find_node_payload()),
        "payload-mismatch",
    ),
    "store-request-without-payload": (
        build_event(event_type=EventType.STORE),
        "missing-payload",
    ),
    "find-value-request-without-payload": (
        build_event(event_type=EventType.FIND_VALUE),
        "missing-payload",
    ),
    "find-node-request-without-key": (
        build_event(event_type=EventType.FIND_NODE, payload=find_node_payload(key=None)),
        "missing-key",
    ),
    "find-node-key-19-bytes": (
        build_event(event_type=EventType.FIND_NODE, payload=find_node_payload(key=KEY[:19])),
        "bad-length",
    ),
    "node-address-5-bytes": (
        build_event(
            event_type=EventType.FIND_NODE,
            response=True,
            payload=find_node_payload(key=None, address=ADDRESS[:5]),
        ),
        "bad-address",
    ),
    "node-address-7-bytes": (
        build_event(
            event_type=EventType.FIND_NODE,
            response=True,
            payload=find_node_payload(key=None, address=ADDRESS + b"\x00"),
        ),
        "bad-address",
    ),
    "node-id-21-bytes": (
        build_event(
            event_type=EventType.FIND_NODE,
            response=True,
            payload=find_node_payload(key=None, address=ADDRESS, node_id=NODE_ID + b"\x00"),
        ),
        "bad-length",
    ),
    "value-key-19-bytes": (
        build_event(event_type=EventType.STORE, payload=store_payload(key=KEY[:19])),
        "bad-length",
    ),
}


@pytest.mark.parametrize(("buf", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_raises_decode_error(buf: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as raised:
        decode(buf)
    assert raised.value.reason == reason
    assert str(raised.value).startswith(reason)
    assert isinstance(raised.value, ProtocolError)


def test_decode_error_is_a_protocol_error() -> None:
    assert issubclass(DecodeError, ProtocolError)
    assert issubclass(ProtocolError, ValueError)
    assert not issubclass(ArgumentError, ProtocolError)


# ---------------------------------------------------------------------------
# Encoder rejections


def _store(value: Value) -> Event:
    return Event(EVENT_ID, SENDER, EventType.STORE, payload=Store((value,)))


def _find_node_response(address: tuple[str, int]) -> Event:
    return Event(
        EVENT_ID,
        SENDER,
        EventType.FIND_NODE,
        True,
        FindNode(nodes=(Node(NODE_ID, address),)),
    )


INVALID_EVENTS: dict[str, Event] = {
    "type-9": Event(EVENT_ID, SENDER, 9),  # type: ignore[arg-type]
    "type-unhashable": Event(EVENT_ID, SENDER, []),  # type: ignore[arg-type]
    "id-19-bytes": Event(EVENT_ID[:19], SENDER, EventType.PING),
    "id-21-bytes": Event(EVENT_ID + b"\x00", SENDER, EventType.PING),
    "sender-19-bytes": Event(EVENT_ID, SENDER[:19], EventType.PING),
    "key-19-bytes": Event(EVENT_ID, SENDER, EventType.FIND_NODE, payload=FindNode(KEY[:19])),
    "value-key-21-bytes": _store(Value(KEY + b"\x00", b"v", 1)),
    "node-id-19-bytes": Event(
        EVENT_ID,
        SENDER,
        EventType.FIND_NODE,
        True,
        FindNode(nodes=(Node(NODE_ID[:19], ("127.0.0.1", 1)),)),
    ),
    "store-with-find-node": Event(EVENT_ID, SENDER, EventType.STORE, payload=FindNode(KEY)),
    "find-value-with-find-node": Event(
        EVENT_ID, SENDER, EventType.FIND_VALUE, payload=FindNode(KEY)
    ),
    "find-node-with-store": Event(EVENT_ID, SENDER, EventType.FIND_NODE, payload=Store()),
    "ping-with-store": Event(EVENT_ID, SENDER, EventType.PING, payload=Store()),
    "pong-with-find-value": Event(EVENT_ID, SENDER, EventType.PONG, True, FindValue(KEY)),
    "ipv6-address": _find_node_response(("::1", 9000)),
    "hostname-address": _find_node_response(("localhost", 9000)),
    "bad-octet-address": _find_node_response(("256.0.0.1", 9000)),
    "nul-in-address": _find_node_response(("1.2.3.4\x00", 9000)),
    "port-70000": _find_node_response(("127.0.0.1", 70000)),
    "port-minus-1": _find_node_response(("127.0.0.1", -1)),
    "ttl-2**63": _store(Value(KEY, b"v", INT64_MAX + 1)),
    "ttl-below-int64": _store(Value(KEY, b"v", INT64_MIN - 1)),
    "created-2**63": _store(Value(KEY, b"v", 1, INT64_MAX + 1)),
    "from-2**63": Event(
        EVENT_ID, SENDER, EventType.FIND_VALUE, payload=FindValue(KEY, from_ns=INT64_MAX + 1)
    ),
    "found-below-int64": Event(
        EVENT_ID, SENDER, EventType.FIND_VALUE, True, FindValue(found=INT64_MIN - 1)
    ),
}


@pytest.mark.parametrize("event", INVALID_EVENTS.values(), ids=INVALID_EVENTS.keys())
def test_encode_rejects_invalid_events(event: Event) -> None:
    with pytest.raises(ArgumentError):
        encode(event)


def test_encode_accepts_int64_extremes() -> None:
    event = _store(Value(KEY, b"v", INT64_MAX, INT64_MIN))
    assert decode(encode(event)) == event
    edges = _find_node_response(("255.255.255.255", 0xFFFF))
    assert decode(encode(edges)) == edges


# ---------------------------------------------------------------------------
# Buffer types and ownership

RICH_EVENT = Event(
    EVENT_ID,
    SENDER,
    EventType.FIND_VALUE,
    True,
    FindValue(
        key=KEY,
        values=(Value(KEY, b"first value", 60_000_000_000, 1_700_000_000_000_000_000),),
        nodes=(Node(NODE_ID, ("10.1.2.3", 4567)),),
        from_ns=5,
        found=1,
    ),
)


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda data: memoryview(bytearray(data))],
    ids=["bytes", "bytearray", "memoryview", "memoryview-of-bytearray"],
)
def test_decode_accepts_buffer_types(wrap: Callable[[bytes], object]) -> None:
    decoded = decode(wrap(encode(RICH_EVENT)))  # type: ignore[arg-type]
    assert decoded == RICH_EVENT


def test_decoded_bytes_outlive_overwritten_buffer() -> None:
    buffer = bytearray(encode(RICH_EVENT))
    view = memoryview(buffer)
    from_bytearray = decode(buffer)
    from_view = decode(view[:])
    buffer[:] = bytes(len(buffer))
    for decoded in (from_bytearray, from_view):
        assert decoded == RICH_EVENT
        payload = decoded.payload
        assert isinstance(payload, FindValue)
        owned = [
            decoded.id,
            decoded.sender,
            payload.key,
            payload.values[0].key,
            payload.values[0].value,
            payload.nodes[0].id,
        ]
        assert all(type(item) is bytes for item in owned)
    view.release()


# ---------------------------------------------------------------------------
# Value conveniences


def test_value_ttl_is_seconds() -> None:
    assert Value(KEY, b"", 3_600_000_000_000).ttl == 3600.0
    assert isinstance(Value(KEY, b"", 3_600_000_000_000).ttl, float)
    assert Value(KEY, b"", 1_500_000_000).ttl == 1.5
    assert Value(KEY, b"", 0).ttl == 0.0


def test_value_created_is_aware_utc_datetime() -> None:
    created = Value(KEY, b"", 1, 1_700_000_000_123_456_789).created
    assert created.tzinfo is not None
    assert created.utcoffset() == timedelta(0)
    expected = datetime(2023, 11, 14, 22, 13, 20, 123457, tzinfo=UTC)
    assert abs(created - expected) < timedelta(microseconds=2)
    epoch = Value(KEY, b"", 1).created
    assert epoch == datetime(1970, 1, 1, tzinfo=UTC)
    assert epoch.utcoffset() == timedelta(0)


# ---------------------------------------------------------------------------
# Shared tables: a vector may point many slots at one table, so a small event
# could decode to a huge one. What an event decodes to stays near its size.


def _shared_table_event(kind: EventType, slots: int, value_size: int) -> bytes:
    """A STORE request or FIND_VALUE/FIND_NODE answer whose vector points
    ``slots`` times at one Value (of ``value_size`` bytes) or Node table."""
    builder = flatbuffers.Builder(1024)
    if kind is EventType.FIND_NODE:
        node_id = builder.CreateByteVector(NODE_ID)
        address = builder.CreateByteVector(bytes([127, 0, 0, 1, 1, 0]))
        fb_node.Start(builder)
        fb_node.AddId(builder, node_id)
        fb_node.AddAddress(builder, address)
    else:
        key = builder.CreateByteVector(KEY)
        data = builder.CreateByteVector(b"v" * value_size)
        fb_value.Start(builder)
        fb_value.AddKey(builder, key)
        fb_value.AddValue(builder, data)
        fb_value.AddTtl(builder, 10**12)
    table = fb_node.End(builder) if kind is EventType.FIND_NODE else fb_value.End(builder)
    builder.StartVector(4, slots, 4)
    for _ in range(slots):
        builder.PrependUOffsetTRelative(table)
    vector = builder.EndVector()
    if kind is EventType.STORE:
        fb_store.Start(builder)
        fb_store.AddValues(builder, vector)
        payload, tag = fb_store.End(builder), 3
    elif kind is EventType.FIND_NODE:
        fb_find_node.Start(builder)
        fb_find_node.AddNodes(builder, vector)
        payload, tag = fb_find_node.End(builder), 1
    else:
        fb_find_value.Start(builder)
        fb_find_value.AddValues(builder, vector)
        fb_find_value.AddFound(builder, slots)
        payload, tag = fb_find_value.End(builder), 2
    event_id = builder.CreateByteVector(EVENT_ID)
    sender = builder.CreateByteVector(SENDER)
    fb_event.Start(builder)
    fb_event.AddId(builder, event_id)
    fb_event.AddSender(builder, sender)
    fb_event.AddEvent(builder, int(kind))
    fb_event.AddResponse(builder, kind is not EventType.STORE)
    fb_event.AddPayloadType(builder, tag)
    fb_event.AddPayload(builder, payload)
    builder.Finish(fb_event.End(builder))
    return bytes(builder.Output())


@pytest.mark.parametrize(
    ("kind", "slots", "value_size"),
    [
        (EventType.STORE, 8000, 32768),  # 65 KB that decoded to 262 MB
        (EventType.STORE, 2, 32768),  # few slots, one big value read twice
        (EventType.FIND_VALUE, 20, 32768),
        (EventType.FIND_VALUE, 400, 0),  # many slots, each value tiny
        (EventType.FIND_NODE, 1000, 0),
    ],
)
def test_tables_shared_by_many_slots_are_refused(
    kind: EventType, slots: int, value_size: int
) -> None:
    buffer = _shared_table_event(kind, slots, value_size)
    with pytest.raises(DecodeError) as raised:
        decode(buffer)
    assert raised.value.reason == "bad-vector"
    # One slot is an ordinary event.
    decoded = decode(_shared_table_event(kind, 1, value_size))
    assert decoded.payload is not None
