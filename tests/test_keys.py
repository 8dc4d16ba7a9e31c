"""dht.Key and the id helpers in dht.keys (PROTOCOL.md 5.1, 7.1, 7.13)."""

from __future__ import annotations

import threading

import pytest

import dht
from dht import KEY_BITS, KEY_BYTES, K, Key
from dht.keys import EventIds, common_prefix_length, distance, random_id

# PROTOCOL.md 7.13, "Reference outputs" (all seven rows).
REFERENCE_KEYS = [
    ("my-awesome-key", "cd56b58b0b022cf0574f85f16797c82b90c6ff74"),
    ("", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    (b"\x00\x01\x02", "0c7a623fd2bbc05b06423be359e4021d36e721ad"),
    (0, "05fe405753166f125559e7c9ac558654f107c7e9"),
    (1, "3da89ee273be13437e7ecf760f3fbd4dc0e8d1fe"),
    (-1, "be673e8a56eaa9d8c1d35064866701c11ef8e089"),
    (258, "c74c07b05bca294883487076c6ea2717cbc4871e"),
]


@pytest.mark.parametrize(("given", "expected"), REFERENCE_KEYS, ids=repr)
def test_key_matches_reference_outputs(given: str | bytes | int, expected: str) -> None:
    key = Key(given)
    assert type(key) is bytes
    assert len(key) == 20
    assert key.hex() == expected


def test_key_accepts_bytearray_and_memoryview() -> None:
    expected = bytes.fromhex("0c7a623fd2bbc05b06423be359e4021d36e721ad")
    assert Key(bytearray(b"\x00\x01\x02")) == expected
    assert Key(memoryview(b"\x00\x01\x02")) == expected


def test_key_of_int_is_64_bit_little_endian() -> None:
    assert Key(258) == Key(b"\x02\x01" + bytes(6))
    assert Key(-1) == Key(b"\xff" * 8)
    assert Key(2**63 - 1) == Key(b"\xff" * 7 + b"\x7f")
    assert Key(-(2**63)) == Key(bytes(7) + b"\x80")


def test_key_of_str_is_utf8() -> None:
    assert Key("é") == Key("é".encode())
    assert Key("1") != Key(1)


@pytest.mark.parametrize("bad", [True, False, 1.0, None, [1, 2], (1,)], ids=repr)
def test_key_rejects_other_types(bad: object) -> None:
    with pytest.raises(TypeError):
        Key(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, 2**64], ids=repr)
def test_key_rejects_integers_outside_int64(bad: int) -> None:
    with pytest.raises(ValueError):
        Key(bad)


def test_constants() -> None:
    assert K == 20
    assert KEY_BITS == 160
    assert KEY_BYTES == 20
    assert dht.keys.K == dht.K == 20


def test_random_id() -> None:
    first, second = random_id(), random_id()
    assert type(first) is bytes
    assert len(first) == len(second) == 20
    assert first != second


def test_event_ids_are_distinct_across_threads_and_generators() -> None:
    ids = EventIds()
    per_thread: list[list[bytes]] = [[] for _ in range(4)]

    def draw(out: list[bytes]) -> None:
        out.extend(ids() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    drawn = [event_id for out in per_thread for event_id in out]
    assert len(drawn) == 20000
    assert all(type(event_id) is bytes and len(event_id) == 20 for event_id in drawn)
    assert len(set(drawn)) == len(drawn)
    # Keyed per generator: another node's ids are not this one's sequence.
    other = EventIds()
    assert not {other() for _ in range(1000)} & set(drawn)


def test_distance_basics() -> None:
    a = bytes(range(20))
    b = bytes(range(100, 120))
    assert distance(a, a) == 0
    assert distance(b, b) == 0
    assert distance(a, b) == distance(b, a) > 0
    assert distance(bytes(20), b"\x00" * 19 + b"\x01") == 1
    assert distance(bytes(20), b"\x80" + bytes(19)) == 1 << 159
    assert distance(b"\xff" * 20, bytes(20)) == (1 << 160) - 1


def test_common_prefix_length_basics() -> None:
    a = bytes(range(20))
    assert common_prefix_length(a, a) == 160
    assert common_prefix_length(bytes(20), b"\x80" + bytes(19)) == 0
    assert common_prefix_length(b"\x7f" * 20, b"\xff" * 20) == 0
    assert common_prefix_length(bytes(20), b"\x00" * 19 + b"\x01") == 159
    assert common_prefix_length(bytes(20), b"\x00\x40" + bytes(18)) == 9
    assert common_prefix_length(a, bytes(range(100, 120))) == common_prefix_length(
        bytes(range(100, 120)), a
    )
