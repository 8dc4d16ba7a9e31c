"""The fast reader of our own encoder's layouts (dht.wire.layouts).

It must take the hot shapes, and whatever it accepts must be exactly what the
general reader makes of the same bytes: every byte of every shape is mutated,
and the encodings are cut short and extended.
"""

from __future__ import annotations

import random

import pytest
from helpers import event_bytes, load_vectors
from hypothesis import given
from test_codec import PROPERTY_SETTINGS, valid_events

from dht import DecodeError
from dht.wire import Event, EventType, FindNode, FindValue, Node, Store, Value, decode, encode
from dht.wire.codec import decode_general
from dht.wire.layouts import HOSTS_MAX, NODES, decode_our_layouts

_rng = random.Random(20261124)


def _id() -> bytes:
    return _rng.randbytes(20)


def _nodes(count: int) -> tuple[Node, ...]:
    return tuple(Node(_id(), (f"127.0.{i // 250}.{i % 250 + 1}", 4000 + i)) for i in range(count))


HOT = {
    "ping": Event(_id(), _id(), EventType.PING),
    "pong": Event(_id(), _id(), EventType.PONG, True),
    "store ack": Event(_id(), _id(), EventType.STORE, True),
    "find-node request": Event(_id(), _id(), EventType.FIND_NODE, False, FindNode(key=_id())),
    "find-node answer of 1": Event(
        _id(), _id(), EventType.FIND_NODE, True, FindNode(nodes=_nodes(1))
    ),
    "find-node answer of 20": Event(
        _id(), _id(), EventType.FIND_NODE, True, FindNode(nodes=_nodes(20))
    ),
    "find-node answer with key": Event(
        _id(), _id(), EventType.FIND_NODE, True, FindNode(key=_id(), nodes=_nodes(3))
    ),
    "empty find-node answer": Event(_id(), _id(), EventType.FIND_NODE, True, FindNode()),
    "find-value request": Event(
        _id(), _id(), EventType.FIND_VALUE, False, FindValue(key=_id(), from_ns=-(1 << 40))
    ),
    "find-value answer of 20": Event(
        _id(), _id(), EventType.FIND_VALUE, True, FindValue(nodes=_nodes(20))
    ),
    "empty find-value answer": Event(_id(), _id(), EventType.FIND_VALUE, True, FindValue()),
    "find-value answer with key": Event(
        _id(), _id(), EventType.FIND_VALUE, True, FindValue(key=_id(), nodes=_nodes(2), found=7)
    ),
    "store request": Event(
        _id(), _id(), EventType.STORE, False, Store((Value(_id(), b"v" * 64, 10, 1),))
    ),
    "store request of 4 values of every padding": Event(
        _id(),
        _id(),
        EventType.STORE,
        False,
        Store(tuple(Value(_id(), _rng.randbytes(n), n - 2, -n) for n in (0, 1, 6, 7))),
    ),
    "find-value answer with values": Event(
        _id(), _id(), EventType.FIND_VALUE, True, FindValue(values=(Value(_id(), b"v", 10, 1),))
    ),
    "find-value answer with key, values and nodes": Event(
        _id(),
        _id(),
        EventType.FIND_VALUE,
        True,
        FindValue(
            key=_id(),
            values=(Value(_id(), b"ab", 10, 1), Value(_id(), b"abc", 1 << 40, 2)),
            nodes=_nodes(2),
            found=2,
        ),
    ),
}


@pytest.mark.parametrize("name", HOT)
def test_our_hot_shapes_are_read_by_the_fast_reader(name: str) -> None:
    event = HOT[name]
    assert decode_our_layouts(encode(event)) == event
    assert decode(encode(event)) == event


OTHER = {
    "store request of 257 values": Event(
        _id(),
        _id(),
        EventType.STORE,
        False,
        Store(tuple(Value(_id(), b"v", 10, 1) for _ in range(257))),
    ),
    "find-node answer of 65": Event(
        _id(), _id(), EventType.FIND_NODE, True, FindNode(nodes=_nodes(65))
    ),
}


@pytest.mark.parametrize("name", OTHER)
def test_other_shapes_are_left_to_the_general_reader(name: str) -> None:
    event = OTHER[name]
    assert decode_our_layouts(encode(event)) is None
    assert decode(encode(event)) == event


def test_go_encodings_are_left_to_the_general_reader() -> None:
    vectors = load_vectors()
    if vectors is None:
        pytest.skip("Go reference vectors not found")
    for vector in vectors:
        assert decode_our_layouts(event_bytes(vector)) is None, vector["name"]


def _agrees_with_the_general_reader(buffer: bytes) -> bool:
    """False if the fast reader accepts ``buffer`` but the general reader
    rejects it or reads another event; True otherwise."""
    fast = decode_our_layouts(buffer)
    if fast is None:
        return True
    try:
        return decode_general(buffer) == fast
    except DecodeError:
        return False


@pytest.mark.parametrize("name", HOT)
def test_every_mutated_byte_is_read_as_the_general_reader_reads_it(name: str) -> None:
    encoded = encode(HOT[name])
    disagreements = []
    for position, original in enumerate(encoded):
        for byte in {0, 1, 2, 4, 8, 20, 0x7F, 0x80, 0xFF, original ^ 1, original ^ 0x10}:
            mutated = bytearray(encoded)
            mutated[position] = byte
            if not _agrees_with_the_general_reader(bytes(mutated)):
                disagreements.append((position, byte))
    assert disagreements == []


@pytest.mark.parametrize("name", HOT)
def test_cut_and_extended_encodings_are_read_as_the_general_reader_reads_them(
    name: str,
) -> None:
    encoded = encode(HOT[name])
    for cut in range(len(encoded)):
        assert decode_our_layouts(encoded[:cut]) is None
    for extra in range(1, 60):
        assert _agrees_with_the_general_reader(encoded + bytes(extra))


@PROPERTY_SETTINGS
@given(valid_events)
def test_any_valid_event_is_read_right_or_left_to_the_general_reader(event: Event) -> None:
    encoded = encode(event)
    assert decode_our_layouts(encoded) in (None, event)
    # Flip one structural-looking byte at random: still never a different event.
    mutated = bytearray(encoded)
    position = _rng.randrange(len(mutated))
    mutated[position] ^= 1 << _rng.randrange(8)
    assert _agrees_with_the_general_reader(bytes(mutated))


def test_decoded_nodes_are_remembered_within_a_bound_and_by_their_address() -> None:
    node_id = _id()
    for port in (4000, 4001):
        answer = Event(
            _id(),
            _id(),
            EventType.FIND_NODE,
            True,
            FindNode(nodes=(Node(node_id, ("127.0.0.1", port)),)),
        )
        assert (
            decode_our_layouts(encode(answer)) == answer
        )  # the same id at another port is not mixed up
    for _ in range(HOSTS_MAX // 20 + 2):
        answer = Event(_id(), _id(), EventType.FIND_NODE, True, FindNode(nodes=_nodes(20)))
        assert decode_our_layouts(encode(answer)) == answer
        assert len(NODES) <= HOSTS_MAX
