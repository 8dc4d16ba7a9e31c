"""The Go reference vectors: reassembly, decoding, framing and re-encoding.

Every test is parametrized by vector name. The vectors are loaded at
collection time (same path logic as the ``vectors`` fixture); when the file is
absent, the tests are collected once and skipped with a reason naming the path.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from helpers import (
    Vector,
    assert_events_equal,
    chunks,
    datagrams,
    event_bytes,
    expected_event,
    load_vectors,
    parse_address,
    read_with_generated,
    vectors_skip_reason,
)

from dht.wire import (
    HEADER_SIZE,
    MAX_CHUNK,
    EventType,
    FindNode,
    FindValue,
    Reassembler,
    Store,
    decode,
    encode,
    fragment,
    parse_header,
)
from dht.wire.codec import decode_address, encode_address
from dht.wire.fb import Event as fb_event
from dht.wire.fb.Operation import Operation

SOURCE = ("127.0.0.1", 9)
NOW = 1000.0

EXPECTED_NAMES = {
    "ping",
    "pong",
    "store_request_1_value",
    "store_request_3_values",
    "store_response",
    "find_node_request",
    "find_node_response_3_nodes",
    "find_value_request_with_from",
    "find_value_request_without_from",
    "find_value_response_2_values",
    "find_value_response_split_part",
    "find_value_response_closest_nodes",
    "store_request_fragmented_5000_byte_value",
    "live_find_node_response_from_running_node",
    "live_find_value_response_fragmented_from_running_node",
}

ORDERS = ("reversed", "shuffled-1", "shuffled-2", "shuffled-3")

UNION_TAG = {None: 0, "FindNode": 1, "FindValue": 2, "Store": 3}

_VECTORS = load_vectors()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    skip = pytest.mark.skip(reason=vectors_skip_reason())
    if "vector" in metafunc.fixturenames:
        if _VECTORS is None:
            params = [pytest.param(None, id="no-vectors", marks=skip)]
        else:
            params = [pytest.param(vector, id=vector["name"]) for vector in _VECTORS]
        metafunc.parametrize("vector", params)
    if "fragmented_vector" in metafunc.fixturenames:
        if _VECTORS is None:
            params = [pytest.param(None, None, id="no-vectors", marks=skip)]
        else:
            params = [
                pytest.param(vector, order, id=f"{vector['name']}-{order}")
                for vector in _VECTORS
                if len(vector["datagrams"]) > 1
                for order in ORDERS
            ]
        metafunc.parametrize(("fragmented_vector", "order"), params)


def permutation(count: int, order: str) -> list[int]:
    """Indices of the datagrams in the named order, never the sending order."""
    identity = list(range(count))
    if order == "reversed":
        return identity[::-1]
    rng = random.Random(f"{order}-{count}")
    shuffled = identity[:]
    while shuffled == identity:
        rng.shuffle(shuffled)
    return shuffled


def reassemble(vector: Vector, indices: list[int]) -> bytes:
    """Feed the vector's datagrams in the given order; return the completed event."""
    reassembler = Reassembler()
    sequence = datagrams(vector)
    results = [reassembler.feed(sequence[index], SOURCE, NOW) for index in indices]
    assert all(result is None for result in results[:-1]), "completed before the last part"
    completed = results[-1]
    assert completed is not None, "no event after the last part"
    assert reassembler.records == 0
    assert reassembler.held_bytes == 0
    return bytes(completed)


def payload_tag_of(buf: bytes) -> int:
    return int(fb_event.Event.GetRootAs(buf, 0).PayloadType())


# ---------------------------------------------------------------------------
# The vector file itself


def test_vector_file_is_complete(vectors: list[Vector]) -> None:
    names = [vector["name"] for vector in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    assert set(names) >= EXPECTED_NAMES
    fragmented = {vector["name"]: len(vector["datagrams"]) for vector in vectors}
    assert fragmented["store_request_fragmented_5000_byte_value"] == 4
    assert fragmented["live_find_value_response_fragmented_from_running_node"] == 4


def test_vector_is_self_consistent(vector: Vector) -> None:
    data = event_bytes(vector)
    assert len(data) == vector["event_size"]
    assert len(vector["framing"]) == len(vector["datagrams"])
    assert vector["event"]["payload_type"] == "NONE"
    assert vector["event"]["payload_table"] in UNION_TAG


# ---------------------------------------------------------------------------
# Receive path: reassembly and decoding


def test_reassemble_in_order_and_decode(vector: Vector) -> None:
    completed = reassemble(vector, list(range(len(vector["datagrams"]))))
    assert completed == event_bytes(vector)
    assert len(completed) == vector["event_size"]
    assert_events_equal(decode(completed), expected_event(vector["event"]))


def test_reassemble_out_of_order_and_decode(fragmented_vector: Vector, order: str) -> None:
    indices = permutation(len(fragmented_vector["datagrams"]), order)
    assert indices != sorted(indices)
    completed = reassemble(fragmented_vector, indices)
    assert completed == event_bytes(fragmented_vector)
    assert_events_equal(decode(completed), expected_event(fragmented_vector["event"]))


def test_reassemble_fragmented_vectors_interleaved(vectors: list[Vector]) -> None:
    fragmented = [vector for vector in vectors if len(vector["datagrams"]) > 1]
    assert len(fragmented) >= 2
    reassembler = Reassembler()
    queues = [list(reversed(datagrams(vector))) for vector in fragmented]
    completed: list[bytes] = []
    while any(queues):
        for queue in queues:
            if queue:
                result = reassembler.feed(queue.pop(), SOURCE, NOW)
                if result is not None:
                    completed.append(bytes(result))
    assert completed == [event_bytes(vector) for vector in fragmented]
    assert reassembler.records == 0
    for data, vector in zip(completed, fragmented, strict=True):
        assert_events_equal(decode(data), expected_event(vector["event"]))


def test_fragmented_values_hold_the_documented_bytes(vectors: list[Vector]) -> None:
    pattern = bytes((7 * index + 3) % 256 for index in range(5000))
    by_name = {vector["name"]: vector for vector in vectors}
    for name in (
        "store_request_fragmented_5000_byte_value",
        "live_find_value_response_fragmented_from_running_node",
    ):
        payload = decode(event_bytes(by_name[name])).payload
        assert isinstance(payload, Store | FindValue)
        assert len(payload.values) == 1
        assert payload.values[0].value == pattern
        assert payload.values[0].ttl_ns == 3_600_000_000_000


def test_find_value_without_from_carries_the_go_sentinel(vectors: list[Vector]) -> None:
    by_name = {vector["name"]: vector for vector in vectors}
    payload = decode(event_bytes(by_name["find_value_request_without_from"])).payload
    assert isinstance(payload, FindValue)
    assert payload.from_ns == -6795364578871345152


def test_live_find_node_advertises_wildcard_self(vectors: list[Vector]) -> None:
    by_name = {vector["name"]: vector for vector in vectors}
    event = decode(event_bytes(by_name["live_find_node_response_from_running_node"]))
    assert isinstance(event.payload, FindNode)
    assert [node.address for node in event.payload.nodes] == [
        ("127.0.0.1", 19001),
        ("0.0.0.0", 19000),
    ]
    assert event.payload.nodes[1].id == event.sender


def test_node_addresses_match_address_bytes(vector: Vector) -> None:
    payload: dict[str, Any] | None = vector["event"]["payload"]
    nodes = (payload or {}).get("nodes") or []
    for node in nodes:
        address = parse_address(node["address"])
        raw = bytes.fromhex(node["address_bytes"])
        assert encode_address(address) == raw
        assert decode_address(raw) == address


# ---------------------------------------------------------------------------
# Framing


def test_headers_match_framing_entries(vector: Vector) -> None:
    event_id = bytes.fromhex(vector["event"]["id"])
    sequence = datagrams(vector)
    for datagram, framing in zip(sequence, vector["framing"], strict=True):
        header = parse_header(datagram)
        assert header.event_id == bytes.fromhex(framing["event_id"]) == event_id
        assert header.part == framing["part"]
        assert header.total == framing["total"] == len(sequence)
        assert header.size == framing["size"] == vector["event_size"]
        assert len(datagram) - HEADER_SIZE == framing["payload_len"]
    assert [parse_header(datagram).part for datagram in sequence] == list(
        range(1, len(sequence) + 1)
    )


def test_fragment_reproduces_datagrams_exactly(vector: Vector) -> None:
    event_id = bytes.fromhex(vector["framing"][0]["event_id"])
    assert fragment(event_id, event_bytes(vector)) == datagrams(vector)


def test_fragmenting_reencoded_event_keeps_header_layout(vector: Vector) -> None:
    event = decode(event_bytes(vector))
    encoded = encode(event)
    parts = fragment(event.id, encoded)
    total = math.ceil(len(encoded) / MAX_CHUNK)
    assert len(parts) == total
    headers = [parse_header(part) for part in parts]
    assert [header.event_id for header in headers] == [event.id] * total
    assert [header.part for header in headers] == list(range(1, total + 1))
    assert {header.total for header in headers} == {total}
    assert {header.size for header in headers} == {len(encoded)}
    lengths = [len(part) - HEADER_SIZE for part in parts]
    assert lengths[:-1] == [MAX_CHUNK] * (total - 1)
    assert lengths[-1] == len(encoded) - (total - 1) * MAX_CHUNK
    assert b"".join(part[HEADER_SIZE:] for part in parts) == encoded
    vector_lengths = [len(chunk) for chunk in chunks(vector)]
    if total == len(vector_lengths):
        assert [header.total for header in headers] == [
            framing["total"] for framing in vector["framing"]
        ]
        # Same split points: every non-final chunk is a full 1448 bytes in both.
        assert lengths[:-1] == vector_lengths[:-1]


# ---------------------------------------------------------------------------
# Encoder


def test_decode_encode_decode_round_trip(vector: Vector) -> None:
    event = decode(event_bytes(vector))
    again = decode(encode(event))
    assert_events_equal(again, event)
    assert_events_equal(again, expected_event(vector["event"]))


def test_encoder_sets_union_tag_reference_does_not(vector: Vector) -> None:
    assert (Operation.NONE, Operation.FindNode, Operation.FindValue, Operation.Store) == (
        0,
        1,
        2,
        3,
    )
    original = event_bytes(vector)
    assert payload_tag_of(original) == Operation.NONE
    event = decode(original)
    expected_tag = UNION_TAG[vector["event"]["payload_table"]]
    assert payload_tag_of(encode(event)) == expected_tag
    if event.payload is None:
        assert expected_tag == 0
    else:
        assert expected_tag == {FindNode: 1, FindValue: 2, Store: 3}[type(event.payload)]


# ---------------------------------------------------------------------------
# Cross-check with the flatc-generated reader


def test_generated_reader_agrees_with_decoder(vector: Vector) -> None:
    original = event_bytes(vector)
    ours = decode(original)
    root = fb_event.Event.GetRootAs(original, 0)
    assert bytes(root.Id(index) for index in range(root.IdLength())) == ours.id
    assert bytes(root.Sender(index) for index in range(root.SenderLength())) == ours.sender
    assert EventType(root.Event()) is ours.type
    assert root.Response() is ours.response
    assert (root.Payload() is None) == (ours.payload is None)
    assert_events_equal(read_with_generated(original), ours)


def test_generated_reader_reads_our_encoding(vector: Vector) -> None:
    ours = decode(event_bytes(vector))
    assert_events_equal(read_with_generated(encode(ours)), ours)
