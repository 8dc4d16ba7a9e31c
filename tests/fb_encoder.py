"""The reference encoder for tests: the flatc-generated Builder functions.

dht.wire.codec.encode writes FlatBuffers by hand for speed; this encoder,
built only on the generated code (dht/wire/fb), is what it is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import flatbuffers

from dht.keys import check_id
from dht.wire.codec import _UNION_TAG, _check_int64, encode_address
from dht.wire.events import Event, FindNode, Node, Payload, Store, Value
from dht.wire.fb import Event as fb_event
from dht.wire.fb import FindNode as fb_find_node
from dht.wire.fb import FindValue as fb_find_value
from dht.wire.fb import Node as fb_node
from dht.wire.fb import Store as fb_store
from dht.wire.fb import Value as fb_value


def builder_encode(event: Event) -> bytes:
    """Serialize a valid ``event`` with the generated Builder functions."""
    payload = event.payload
    event_type = event.type
    builder = flatbuffers.Builder(256)
    payload_offset = _build_payload(builder, payload) if payload is not None else 0
    id_offset = builder.CreateByteVector(event.id)
    sender_offset = builder.CreateByteVector(event.sender)
    fb_event.Start(builder)
    fb_event.AddId(builder, id_offset)
    fb_event.AddSender(builder, sender_offset)
    fb_event.AddEvent(builder, int(event_type))
    fb_event.AddResponse(builder, event.response)
    if payload is not None:
        fb_event.AddPayloadType(builder, _UNION_TAG[type(payload)])
        fb_event.AddPayload(builder, payload_offset)
    builder.Finish(fb_event.End(builder))
    return bytes(builder.Output())


def _build_payload(builder: flatbuffers.Builder, payload: Payload) -> int:
    if isinstance(payload, Store):
        values = _build_values(builder, payload.values)
        fb_store.Start(builder)
        fb_store.AddValues(builder, values)
        return int(fb_store.End(builder))
    if isinstance(payload, FindNode):
        nodes = _build_nodes(builder, payload.nodes) if payload.nodes else 0
        key = _build_key(builder, payload.key)
        fb_find_node.Start(builder)
        if key:
            fb_find_node.AddKey(builder, key)
        if nodes:
            fb_find_node.AddNodes(builder, nodes)
        return int(fb_find_node.End(builder))
    values = _build_values(builder, payload.values) if payload.values else 0
    nodes = _build_nodes(builder, payload.nodes) if payload.nodes else 0
    key = _build_key(builder, payload.key)
    fb_find_value.Start(builder)
    if key:
        fb_find_value.AddKey(builder, key)
    if values:
        fb_find_value.AddValues(builder, values)
    if nodes:
        fb_find_value.AddNodes(builder, nodes)
    fb_find_value.AddFrom(builder, _check_int64(payload.from_ns, "from_ns"))
    fb_find_value.AddFound(builder, _check_int64(payload.found, "found"))
    return int(fb_find_value.End(builder))


def _build_key(builder: flatbuffers.Builder, key: bytes | None) -> int:
    if key is None:
        return 0
    return int(builder.CreateByteVector(check_id(key, "key")))


def _build_values(builder: flatbuffers.Builder, values: Sequence[Value]) -> int:
    offsets = []
    for value in values:
        key = builder.CreateByteVector(check_id(value.key, "value key"))
        data = builder.CreateByteVector(bytes(value.value))
        fb_value.Start(builder)
        fb_value.AddKey(builder, key)
        fb_value.AddValue(builder, data)
        fb_value.AddTtl(builder, _check_int64(value.ttl_ns, "ttl_ns"))
        fb_value.AddCreated(builder, _check_int64(value.created_ns, "created_ns"))
        offsets.append(fb_value.End(builder))
    return _build_table_vector(builder, offsets)


def _build_nodes(builder: flatbuffers.Builder, nodes: Sequence[Node]) -> int:
    offsets = []
    for node in nodes:
        node_id = builder.CreateByteVector(check_id(node.id, "node id"))
        address = builder.CreateByteVector(encode_address(node.address))
        fb_node.Start(builder)
        fb_node.AddId(builder, node_id)
        fb_node.AddAddress(builder, address)
        offsets.append(fb_node.End(builder))
    return _build_table_vector(builder, offsets)


def _build_table_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())
