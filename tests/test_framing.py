"""Unit tests of datagram framing: fragment, parse_header and Reassembler (PROTOCOL.md 3).

Covers the receiver-side defects of the reference that the port must not copy
(PROTOCOL.md 10, D1-D7 and D10). Time is a fake ``now``: nothing sleeps.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dht
from dht.wire.framing import (
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_DATAGRAM,
    MAX_EVENT_SIZE,
    Reassembler,
    fragment,
    parse_header,
)

HEADER = struct.Struct("<20sBBH")
ID_A = bytes(range(1, 21))
ID_B = bytes(range(0x21, 0x35))
SRC_A = ("10.0.0.1", 4000)
SRC_B = ("10.0.0.2", 4000)
SRC_C = ("10.0.0.3", 4000)


def event_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def datagram(event_id: bytes, part: int, total: int, size: int, chunk_len: int) -> bytes:
    """A datagram with an arbitrary (possibly inconsistent) header."""
    return HEADER.pack(event_id, part, total, size) + bytes([0xAB]) * chunk_len


def expected_parts(size: int) -> int:
    return -(-size // 1448)


def feed_all(r: Reassembler, datagrams: list[bytes], source=SRC_A, now: float = 0.0):
    """Feed datagrams in order; return the list of non-None results (as bytes)."""
    out = []
    for d in datagrams:
        result = r.feed(d, source, now)
        if result is not None:
            out.append(bytes(result))
    return out


# ---------------------------------------------------------------------------
# Constants


def test_constants_match_the_spec():
    assert HEADER_SIZE == 24
    assert MAX_DATAGRAM == 1472
    assert MAX_CHUNK == 1448
    assert MAX_EVENT_SIZE == 65535


# ---------------------------------------------------------------------------
# fragment


@pytest.mark.parametrize(
    ("size", "parts", "last"),
    [
        (1, 1, 1),
        (1448, 1, 1448),
        (1449, 2, 1),
        (2896, 2, 1448),
        (5184, 4, 5184 - 3 * 1448),
        (65535, 46, 65535 - 45 * 1448),
    ],
)
def test_fragment_sizes_and_headers(size, parts, last):
    event = event_bytes(size, seed=size)
    datagrams = fragment(ID_A, event)
    assert len(datagrams) == parts == expected_parts(size)
    for index, d in enumerate(datagrams, start=1):
        assert isinstance(d, bytes)
        event_id, part, total, size_field = HEADER.unpack_from(d)
        assert event_id == ID_A
        assert part == index
        assert total == parts
        assert size_field == size
        # The size is little-endian at offset 22.
        assert d[22:24] == size.to_bytes(2, "little")
        assert d[20] == index and d[21] == parts
        if index < parts:
            assert len(d) == MAX_DATAGRAM
        else:
            assert len(d) == HEADER_SIZE + last
        start = (index - 1) * MAX_CHUNK
        assert d[HEADER_SIZE:] == event[start : start + MAX_CHUNK]
    assert b"".join(d[HEADER_SIZE:] for d in datagrams) == event


def test_fragment_5184_byte_example_from_spec():
    # PROTOCOL.md 3.2: 1472, 1472, 1472 and 864 bytes, size field "40 14".
    datagrams = fragment(ID_A, event_bytes(5184))
    assert [len(d) for d in datagrams] == [1472, 1472, 1472, 864]
    assert all(d[22:24] == b"\x40\x14" for d in datagrams)


def test_fragment_refuses_65536_bytes():
    with pytest.raises(dht.EventTooLarge) as info:
        fragment(ID_A, bytes(65536))
    error = info.value
    assert isinstance(error, dht.ArgumentError)
    assert isinstance(error, ValueError)
    assert error.size == 65536
    assert error.limit == 65535
    assert "65536" in str(error)


def test_fragment_refuses_empty_event_and_bad_ids():
    with pytest.raises(ValueError):
        fragment(ID_A, b"")
    for bad_id in (b"", ID_A[:19], ID_A + b"\x00"):
        with pytest.raises(ValueError):
            fragment(bad_id, b"x")


def test_fragment_output_parses_back():
    for size in (1, 100, 1448, 1449, 3000, 65535):
        for d in fragment(ID_B, event_bytes(size)):
            header = parse_header(d)
            assert header.event_id == ID_B
            assert header.size == size
            assert header.total == expected_parts(size)


# ---------------------------------------------------------------------------
# parse_header


def reason_of(d: bytes) -> str:
    with pytest.raises(dht.FramingError) as info:
        parse_header(d)
    assert isinstance(info.value, dht.ProtocolError)
    return info.value.reason


@pytest.mark.parametrize("length", [0, 1, 5, 10, 23, 24])
def test_parse_header_rejects_short_datagrams(length):
    # D1: the reference panics on these. 24 bytes is a header with no chunk.
    d = HEADER.pack(ID_A, 1, 1, 1)[:length] if length <= 24 else b""
    assert len(d) == length
    assert reason_of(d) == "short-datagram"


def test_parse_header_accepts_minimal_datagram():
    header = parse_header(HEADER.pack(ID_A, 1, 1, 1) + b"x")
    assert (header.event_id, header.part, header.total, header.size) == (ID_A, 1, 1, 1)


def test_parse_header_rejects_long_datagram():
    # D10: 1473 bytes cannot come from a conforming sender.
    d = datagram(ID_A, 1, 2, 1449 + 1448, MAX_CHUNK + 1)
    assert len(d) == 1473
    assert reason_of(d) == "long-datagram"
    assert reason_of(bytes(1600)) == "long-datagram"


def test_parse_header_accepts_the_full_1472_bytes():
    header = parse_header(datagram(ID_A, 1, 2, 2000, MAX_CHUNK))
    assert (header.part, header.total, header.size) == (1, 2, 2000)


@pytest.mark.parametrize(
    ("part", "total", "size", "chunk_len", "reason"),
    [
        (0, 1, 10, 10, "bad-part"),  # D2: part 0
        (0, 2, 2000, MAX_CHUNK, "bad-part"),
        (3, 2, 2000, 552, "bad-part"),  # part > total
        (255, 1, 10, 10, "bad-part"),
        (200, 200, 100, 100, "bad-size"),  # D2: 200 of 200, size far too small
        (1, 0, 10, 10, "bad-part"),  # total 0 leaves no valid part
        (1, 3, 2000, MAX_CHUNK, "bad-size"),  # total != ceil(size / 1448)
        (1, 1, 1449, MAX_CHUNK, "bad-size"),
        (1, 47, 65535, MAX_CHUNK, "bad-size"),  # more parts than 65535 bytes need
        (1, 2, 1448, MAX_CHUNK, "bad-size"),
        (1, 1, 0, 10, "bad-size"),  # size 0
        (1, 2, 2000, 1000, "bad-chunk-length"),  # non-final part must carry 1448
        (1, 2, 2000, 552, "bad-chunk-length"),
        (2, 2, 2000, 551, "bad-chunk-length"),  # final part must carry the rest
        (2, 2, 2000, 553, "bad-chunk-length"),
        (2, 2, 2000, MAX_CHUNK, "bad-chunk-length"),
        (1, 1, 100, 50, "bad-chunk-length"),  # total 1: size must be the chunk length
        (1, 1, 50, 100, "bad-chunk-length"),
        (1, 1, 1448, 1447, "bad-chunk-length"),
    ],
)
def test_parse_header_rejects_inconsistent_headers(part, total, size, chunk_len, reason):
    assert reason_of(datagram(ID_A, part, total, size, chunk_len)) == reason


def test_parse_header_error_message_says_what_was_wrong():
    with pytest.raises(dht.FramingError, match="3 of 2"):
        parse_header(datagram(ID_A, 3, 2, 2000, 552))
    with pytest.raises(dht.FramingError, match="10 bytes"):
        parse_header(bytes(10))


def test_parse_header_accepts_memoryview_and_bytearray():
    d = fragment(ID_A, event_bytes(3000))[2]
    for form in (bytearray(d), memoryview(d)):
        header = parse_header(form)
        assert (header.part, header.total, header.size) == (3, 3, 3000)


# ---------------------------------------------------------------------------
# Reassembler: assembly


def test_single_part_event_is_returned_without_a_record():
    r = Reassembler()
    event = event_bytes(1000)
    result = r.feed(fragment(ID_A, event)[0], SRC_A, 0.0)
    assert result is not None
    assert bytes(result) == event
    assert r.records == 0
    assert r.held_bytes == 0
    assert r.next_deadline() is None


@pytest.mark.parametrize("seed", range(8))
def test_parts_in_any_order_complete(seed):
    rng = random.Random(seed)
    event = event_bytes(rng.randint(1449, 20000), seed)
    datagrams = fragment(ID_A, event)
    rng.shuffle(datagrams)
    r = Reassembler()
    for d in datagrams[:-1]:
        assert r.feed(d, SRC_A, 0.0) is None
        assert r.records == 1
    result = r.feed(datagrams[-1], SRC_A, 0.0)
    assert result is not None and bytes(result) == event
    assert r.records == 0
    assert r.held_bytes == 0


def test_held_bytes_counts_the_buffered_chunks():
    r = Reassembler()
    datagrams = fragment(ID_A, event_bytes(3000))
    r.feed(datagrams[2], SRC_A, 0.0)
    assert r.held_bytes == 3000 - 2 * MAX_CHUNK
    r.feed(datagrams[0], SRC_A, 0.0)
    assert r.held_bytes == 3000 - MAX_CHUNK
    assert r.feed(datagrams[1], SRC_A, 0.0) is not None
    assert r.held_bytes == 0


def test_duplicate_part_is_refused_and_does_not_corrupt():
    event = event_bytes(5000, 1)
    other = event_bytes(4000, 2)
    datagrams = fragment(ID_A, event)
    others = fragment(ID_B, other)
    r = Reassembler()
    assert r.feed(datagrams[0], SRC_A, 0.0) is None
    assert r.feed(others[1], SRC_A, 0.0) is None
    held = r.held_bytes
    # Same part again, once unchanged and once with different bytes (D4: the
    # reference would count it twice and complete with a hole).
    forged = datagrams[0][:HEADER_SIZE] + bytes(len(datagrams[0]) - HEADER_SIZE)
    for duplicate in (datagrams[0], forged):
        with pytest.raises(dht.FramingError) as info:
            r.feed(duplicate, SRC_A, 0.0)
        assert info.value.reason == "duplicate-part"
        assert r.held_bytes == held
        assert r.records == 2
    assert r.feed(datagrams[1], SRC_A, 0.0) is None
    assert r.feed(others[0], SRC_A, 0.0) is None
    assert r.feed(datagrams[2], SRC_A, 0.0) is None
    with pytest.raises(dht.FramingError, match="duplicate-part"):
        r.feed(datagrams[2], SRC_A, 0.0)
    assert bytes(r.feed(datagrams[3], SRC_A, 0.0)) == event
    assert bytes(r.feed(others[2], SRC_A, 0.0)) == other
    assert r.records == 0
    assert r.held_bytes == 0


def test_same_event_id_from_two_sources_is_kept_apart():
    # D4: the reference merges fragments of the same id from different sources.
    event_a = event_bytes(3000, 1)
    event_b = event_bytes(3000, 2)
    parts_a = fragment(ID_A, event_a)
    parts_b = fragment(ID_A, event_b)
    r = Reassembler()
    assert r.feed(parts_a[0], SRC_A, 0.0) is None
    assert r.feed(parts_b[1], SRC_B, 0.0) is None
    assert r.feed(parts_b[2], SRC_B, 0.0) is None
    # Parts 2 and 3 of A from B must not complete A's record.
    assert r.feed(parts_a[1], SRC_A, 0.0) is None
    assert r.records == 2
    assert bytes(r.feed(parts_b[0], SRC_B, 0.0)) == event_b
    assert bytes(r.feed(parts_a[2], SRC_A, 0.0)) == event_a
    assert r.records == 0 and r.held_bytes == 0


def test_same_source_and_port_but_other_host_is_another_source():
    parts = fragment(ID_A, event_bytes(2000))
    r = Reassembler()
    r.feed(parts[0], ("10.0.0.1", 4000), 0.0)
    assert r.feed(parts[1], ("10.0.0.1", 4001), 0.0) is None
    assert r.feed(parts[1], ("10.0.0.9", 4000), 0.0) is None
    assert r.records == 3


def test_same_event_id_with_other_total_or_size_is_another_record():
    # D7: interleaved events of a split answer share the id; total/size tell them apart.
    event_3 = event_bytes(3000, 1)  # 3 parts
    event_2 = event_bytes(2000, 2)  # 2 parts
    event_3b = event_bytes(3500, 3)  # 3 parts, other size
    parts_3 = fragment(ID_A, event_3)
    parts_2 = fragment(ID_A, event_2)
    parts_3b = fragment(ID_A, event_3b)
    r = Reassembler()
    results = []
    for d in (
        parts_3[0],
        parts_2[0],
        parts_3b[2],
        parts_3[1],
        parts_3b[0],
        parts_2[1],
        parts_3[2],
        parts_3b[1],
    ):
        result = r.feed(d, SRC_A, 0.0)
        if result is not None:
            results.append(bytes(result))
    assert results == [event_2, event_3, event_3b]
    assert r.records == 0 and r.held_bytes == 0


def test_event_id_can_be_reused_after_completion():
    # D7: a split FIND_VALUE answer sends several events with the request's id.
    r = Reassembler()
    events = [event_bytes(4000, seed) for seed in range(3)]
    for now, event in enumerate(events):
        assert feed_all(r, fragment(ID_A, event), SRC_A, float(now)) == [event]
        assert r.records == 0
    # Single-part events with the same id are fine as well.
    small = [event_bytes(300, seed) for seed in range(3)]
    for event in small:
        assert feed_all(r, fragment(ID_A, event), SRC_A, 5.0) == [event]


def test_reassembled_event_is_independent_of_the_input_buffers():
    event = event_bytes(3000)
    buffers = [bytearray(d) for d in fragment(ID_A, event)]
    r = Reassembler()
    r.feed(buffers[0], SRC_A, 0.0)
    r.feed(buffers[1], SRC_A, 0.0)
    # The receive loop may reuse its buffer for the next datagram.
    buffers[0][HEADER_SIZE:] = bytes(MAX_CHUNK)
    buffers[1][HEADER_SIZE:] = bytes(MAX_CHUNK)
    assert bytes(r.feed(buffers[2], SRC_A, 0.0)) == event


# ---------------------------------------------------------------------------
# Reassembler: timeout


def test_record_expires_exactly_at_first_fragment_time_plus_timeout():
    r = Reassembler(timeout=5.0)
    parts = fragment(ID_A, event_bytes(3000))
    assert r.next_deadline() is None
    r.feed(parts[0], SRC_A, 100.0)
    assert r.next_deadline() == 105.0
    # Later fragments do not push the deadline back.
    r.feed(parts[1], SRC_A, 103.0)
    assert r.next_deadline() == 105.0
    assert r.expire(104.999) == 0
    assert r.records == 1 and r.expired == 0
    assert r.expire(105.0) == 1
    assert r.records == 0
    assert r.held_bytes == 0
    assert r.expired == 1
    assert r.next_deadline() is None
    # The last part now opens a new record instead of completing a stale one.
    assert r.feed(parts[2], SRC_A, 105.0) is None
    assert r.records == 1


def test_feed_expires_stale_records_first():
    r = Reassembler(timeout=2.0)
    parts = fragment(ID_A, event_bytes(3000))
    other = fragment(ID_B, event_bytes(2000))
    r.feed(parts[0], SRC_A, 10.0)
    r.feed(other[0], SRC_B, 11.0)
    assert r.next_deadline() == 12.0
    r.feed(parts[1], SRC_A, 11.999)  # still in time
    assert r.records == 2 and r.expired == 0
    assert r.feed(parts[2], SRC_A, 12.0) is None  # too late: reopened
    assert r.expired == 1
    assert r.records == 2
    assert r.next_deadline() == 13.0
    assert r.held_bytes == len(other[0]) - HEADER_SIZE + len(parts[2]) - HEADER_SIZE
    r.expire(1000.0)
    assert r.expired == 3
    assert r.records == 0 and r.held_bytes == 0
    assert r.next_deadline() is None


def test_next_deadline_is_the_oldest_record():
    r = Reassembler(timeout=5.0)
    for i in range(5):
        r.feed(fragment(bytes([i]) * 20, event_bytes(2000))[0], SRC_A, 10.0 + i)
    assert r.next_deadline() == 15.0
    assert r.expire(16.5) == 2
    assert r.next_deadline() == 17.0
    assert r.expired == 2


def test_bad_datagram_still_expires_records():
    r = Reassembler(timeout=1.0)
    r.feed(fragment(ID_A, event_bytes(2000))[0], SRC_A, 0.0)
    with pytest.raises(dht.FramingError):
        r.feed(b"\x00" * 5, SRC_A, 1.0)
    assert r.records == 0 and r.expired == 1


# ---------------------------------------------------------------------------
# Reassembler: caps


def first_fragment(i: int, size: int = 3000) -> bytes:
    """Part 1 of a distinct ``size``-byte event (its id derived from ``i``)."""
    event_id = i.to_bytes(4, "big") * 5
    return fragment(event_id, bytes(size))[0]


def last_fragment(i: int, size: int = 1449) -> bytes:
    """The last part of a distinct event: a small chunk (1 byte for 1449)."""
    event_id = i.to_bytes(4, "big") * 5
    return fragment(event_id, bytes(size))[-1]


CAP_CONFIGS = [
    dict(max_records=10, max_bytes=100_000, max_records_per_source=4, max_bytes_per_source=100_000),
    dict(
        max_records=100, max_bytes=10 * 1448, max_records_per_source=100, max_bytes_per_source=5000
    ),
    dict(max_records=7, max_bytes=6000, max_records_per_source=3, max_bytes_per_source=3000),
    dict(max_records=1, max_bytes=1448, max_records_per_source=1, max_bytes_per_source=1448),
]


@pytest.mark.parametrize("config", CAP_CONFIGS)
def test_flood_from_one_source_stays_within_caps(config):
    r = Reassembler(**config)
    rng = random.Random(1)
    for i in range(500):
        d = first_fragment(i) if rng.random() < 0.7 else last_fragment(i, rng.randint(1449, 2896))
        assert r.feed(d, SRC_A, i * 0.001) is None
        assert r.records <= min(config["max_records"], config["max_records_per_source"])
        assert r.held_bytes <= min(config["max_bytes"], config["max_bytes_per_source"])
    assert r.evicted > 0


@pytest.mark.parametrize("config", CAP_CONFIGS)
def test_flood_from_many_sources_stays_within_caps(config):
    r = Reassembler(**config)
    rng = random.Random(2)
    for i in range(1000):
        source = (f"10.1.{rng.randrange(4)}.{rng.randrange(50)}", 5000 + rng.randrange(3))
        d = first_fragment(i) if rng.random() < 0.7 else last_fragment(i, rng.randint(1449, 2896))
        assert r.feed(d, source, i * 0.001) is None
        assert r.records <= config["max_records"]
        assert r.held_bytes <= config["max_bytes"]
    assert r.evicted > 0


def test_flood_evicts_the_flooding_sources_oldest_records_first():
    r = Reassembler(max_records=100, max_records_per_source=4)
    for i in range(10):
        r.feed(first_fragment(i), SRC_A, 0.0)
    assert r.records == 4
    assert r.evicted == 6
    # Records 6..9 survive, 0..5 were dropped: a last part of 0 opens a new record.
    for i in range(6, 10):
        r.feed(fragment(i.to_bytes(4, "big") * 5, bytes(3000))[1], SRC_A, 0.0)
    assert r.records == 4
    assert r.held_bytes == 4 * 2 * MAX_CHUNK


def test_per_source_byte_cap_evicts_own_oldest():
    r = Reassembler(max_bytes_per_source=3 * MAX_CHUNK)
    for i in range(3):
        r.feed(first_fragment(i), SRC_A, 0.0)
    assert r.records == 3 and r.evicted == 0
    r.feed(first_fragment(3), SRC_A, 0.0)
    assert r.records == 3 and r.evicted == 1
    assert r.held_bytes == 3 * MAX_CHUNK
    # Record 0 is gone: its part 2 starts a new record.
    r.feed(fragment((0).to_bytes(4, "big") * 5, bytes(3000))[1], SRC_A, 0.0)
    assert r.evicted == 2  # record 1 made room for it


@pytest.mark.parametrize(
    "config",
    [
        dict(max_records=10, max_records_per_source=4),
        dict(max_records=6, max_records_per_source=5),
        dict(max_bytes=8 * MAX_CHUNK, max_bytes_per_source=4 * MAX_CHUNK),
        dict(max_bytes=6 * MAX_CHUNK, max_bytes_per_source=5 * MAX_CHUNK),
    ],
)
def test_flood_from_one_source_does_not_evict_another_source(config):
    r = Reassembler(**config)
    victim_event = event_bytes(3000, 7)
    victim = fragment(ID_B, victim_event)
    assert r.feed(victim[0], SRC_B, 0.0) is None
    for i in range(300):
        r.feed(first_fragment(i), SRC_A, 0.0)
        assert r.records <= r.max_records
        assert r.held_bytes <= r.max_bytes
    assert r.feed(victim[1], SRC_B, 0.0) is None
    for i in range(300, 600):
        r.feed(first_fragment(i), SRC_A, 0.0)
    assert bytes(r.feed(victim[2], SRC_B, 0.0)) == victim_event


def test_many_sources_each_within_their_own_cap():
    r = Reassembler(max_records=1000, max_records_per_source=2)
    sources = [(f"10.2.0.{i}", 6000) for i in range(20)]
    for i in range(200):
        r.feed(first_fragment(i), sources[i % 20], 0.0)
    assert r.records == 40
    # The newest two of each source survive: completing them works.
    completed = 0
    for i in range(160, 200):
        event_id = i.to_bytes(4, "big") * 5
        parts = fragment(event_id, bytes(3000))
        r.feed(parts[1], sources[i % 20], 0.0)
        completed += r.feed(parts[2], sources[i % 20], 0.0) is not None
    assert completed == 40
    assert r.records == 0 and r.held_bytes == 0


@pytest.mark.parametrize(
    "config",
    [
        dict(max_bytes=4000, max_bytes_per_source=4000),
        dict(max_bytes=100_000, max_bytes_per_source=4000),
        dict(max_bytes=4000, max_bytes_per_source=100_000),
    ],
)
def test_byte_caps_hold_while_records_grow(config):
    """Later parts of a record count against the byte caps too, not only the first."""
    r = Reassembler(**config)
    cap = min(config["max_bytes"], config["max_bytes_per_source"])
    rng = random.Random(3)
    pending = {}
    for i in range(40):
        pending[i] = fragment(i.to_bytes(4, "big") * 5, event_bytes(6000, i))
    for step in range(400):
        i = rng.choice(list(pending))
        parts = pending[i]
        d = parts[rng.randrange(len(parts) - 1)]  # never the last: nothing completes
        try:
            r.feed(d, SRC_A, step * 0.001)
        except dht.ProtocolError as error:
            assert error.reason in ("duplicate-part", "reassembly-full")
        assert r.held_bytes <= cap, f"step {step}: {r.held_bytes} bytes held, cap {cap}"
        assert r.records <= r.max_records


def test_chunk_larger_than_the_caps_is_refused():
    r = Reassembler(max_bytes_per_source=1000)
    with pytest.raises(dht.ReassemblyFull) as info:
        r.feed(first_fragment(0), SRC_A, 0.0)
    assert isinstance(info.value, dht.ProtocolError)
    assert info.value.reason == "reassembly-full"
    assert r.records == 0 and r.held_bytes == 0
    # A small chunk still fits.
    assert r.feed(last_fragment(1, 1449), SRC_A, 0.0) is None
    assert r.records == 1 and r.held_bytes == 1


def test_max_event_size_refuses_larger_events():
    r = Reassembler(max_event_size=3000)
    for size in (3001, 5000, 65535):
        with pytest.raises(dht.FramingError) as info:
            r.feed(fragment(ID_A, bytes(size))[0], SRC_A, 0.0)
        assert info.value.reason == "event-too-large"
    assert r.records == 0 and r.held_bytes == 0
    event = event_bytes(3000)
    assert feed_all(r, fragment(ID_A, event)) == [event]
    small = Reassembler(max_event_size=100)
    with pytest.raises(dht.FramingError, match="event-too-large"):
        small.feed(fragment(ID_A, bytes(101))[0], SRC_A, 0.0)
    assert bytes(small.feed(fragment(ID_A, b"y" * 100)[0], SRC_A, 0.0)) == b"y" * 100


def test_max_event_size_is_clamped_to_the_protocol_limit():
    r = Reassembler(max_event_size=10**9)
    assert r.max_event_size == MAX_EVENT_SIZE


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_records=0),
        dict(max_bytes=0),
        dict(max_records_per_source=0),
        dict(max_bytes_per_source=-1),
        dict(max_event_size=0),
        dict(timeout=0),
        dict(timeout=-1.0),
    ],
)
def test_invalid_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        Reassembler(**kwargs)


def test_held_bytes_returns_to_zero_after_completion_and_expiry():
    r = Reassembler(timeout=5.0)
    rng = random.Random(4)
    events = {}
    for i in range(30):
        event = event_bytes(rng.randint(1449, 10000), i)
        events[i] = (event, fragment(i.to_bytes(4, "big") * 5, event))
    # Half complete, half stay incomplete and expire.
    completed = []
    for i, (_event, parts) in events.items():
        todo = parts if i % 2 == 0 else parts[:-1]
        completed.extend(feed_all(r, todo, (f"10.3.0.{i % 5}", 1), 1.0))
    assert sorted(completed) == sorted(events[i][0] for i in range(0, 30, 2))
    assert r.records == 15
    assert r.held_bytes > 0
    r.expire(5.999)
    assert r.records == 15
    r.expire(6.0)
    assert r.records == 0
    assert r.held_bytes == 0
    assert r.expired == 15


# ---------------------------------------------------------------------------
# Property: any order, any duplicates


@st.composite
def delivery(draw):
    length = draw(st.integers(1, MAX_EVENT_SIZE))
    seed = draw(st.integers(0, 2**32 - 1))
    event = random.Random(seed).randbytes(length)
    total = expected_parts(length)
    order = draw(st.permutations(range(total)))
    # Duplicates of parts already or not yet sent, but all before the part
    # that completes the event (a straggler after completion would start a
    # new record; that is covered by the timeout tests).
    head = list(order[:-1])
    if head:
        extra = draw(st.lists(st.sampled_from(head), max_size=10))
        for part in extra:
            head.insert(draw(st.integers(0, len(head))), part)
    return event, [*head, order[-1]], len(head) - (total - 1)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(delivery(), st.sampled_from([SRC_A, SRC_B]))
def test_property_any_order_and_duplicates_give_the_event_once(case, source):
    event, sequence, duplicates = case
    datagrams = fragment(ID_A, event)
    r = Reassembler()
    results = []
    refused = 0
    for index in sequence:
        try:
            result = r.feed(datagrams[index], source, 0.0)
        except dht.FramingError as error:
            assert error.reason == "duplicate-part"
            refused += 1
            continue
        if result is not None:
            results.append(bytes(result))
    assert results == [event]
    assert refused == duplicates
    assert r.held_bytes == 0
    assert r.records == 0


def _survives_flood(
    seed: int, ports: int, flood_datagrams: Callable[[random.Random], list[bytes]]
) -> None:
    """A 21-part event from one address, each part followed by four flood
    rounds (``flood_datagrams(rng)`` each) from ``ports`` ports of
    127.0.0.1, within caps of 64 records: the event must come out whole."""
    rng = random.Random(seed)
    reassembler = Reassembler(max_records=64, max_bytes=64 * MAX_CHUNK)
    event = rng.randbytes(21 * MAX_CHUNK - 100)
    done = None
    flood = 0
    for part in fragment(rng.randbytes(20), event):
        result = reassembler.feed(part, ("127.0.0.200", 9), 0.0)
        done = bytes(result) if result is not None else done
        for _ in range(4):
            for datagram in flood_datagrams(rng):
                reassembler.feed(datagram, ("127.0.0.1", 1000 + flood % ports), 0.0)
            flood += 1
        assert reassembler.records <= 64 and reassembler.held_bytes <= 64 * MAX_CHUNK
    assert done == event
    assert reassembler.evicted > 0


@pytest.mark.parametrize("sources", [10, 60, 100, 500])
def test_a_legitimate_event_survives_a_flood_spread_over_many_sources(sources: int) -> None:
    """When the overall caps bind, first fragments from many sources are
    evicted before an event that is receiving its parts (it holds more bytes
    than any one flood source, which once made it the victim)."""

    def first_fragments(rng: random.Random) -> list[bytes]:
        return [fragment(rng.randbytes(20), rng.randbytes(2000))[0] for _ in range(2)]

    _survives_flood(sources, sources, first_fragments)


@pytest.mark.parametrize("awaited", [False, True])
def test_an_awaited_answer_survives_more_first_fragments_between_its_parts_than_the_cap(
    awaited: bool,
) -> None:
    """Between two parts of an answer, more bare first fragments from many
    addresses than the record cap: as a bare first fragment itself, the
    answer's record went, and the Find waiting for it failed (seen under a
    flood on a loaded machine). The answer to a request of ours, told by
    its id, is kept."""
    rng = random.Random(11)
    answer_id = rng.randbytes(20)
    reassembler = Reassembler(max_records=64, awaited=answer_id.__eq__ if awaited else None)
    event = rng.randbytes(3 * MAX_CHUNK)
    first, *rest = fragment(answer_id, event)
    assert reassembler.feed(first, ("127.0.0.200", 9), 0.0) is None
    for i in range(3 * 64):
        flood = fragment(rng.randbytes(20), rng.randbytes(2000))[0]
        reassembler.feed(flood, (f"127.0.1.{i % 200 + 1}", 1000), 0.0)
    results = [reassembler.feed(part, ("127.0.0.200", 9), 0.0) for part in rest]
    assert (results[-1] == event) is awaited
    assert reassembler.records <= 64


def test_a_straggler_after_completion_does_not_corrupt_the_next_event_with_its_id():
    # D6/D7: events of a split answer share the id, and two of them can have
    # the same total and size. A late duplicate of the first event's part
    # opened a record that the second event then completed with that stale
    # part: a mixed event, decoded without error.
    first, second = event_bytes(3000, 1), event_bytes(3000, 2)
    parts_1, parts_2 = fragment(ID_A, first), fragment(ID_A, second)
    r = Reassembler()
    listen = bytearray(MAX_DATAGRAM)  # the receive loop's reused buffer

    def feed(datagram: bytes, now: float) -> bytes | None:
        listen[: len(datagram)] = datagram
        result = r.feed(memoryview(listen)[: len(datagram)], SRC_A, now)
        return None if result is None else bytes(result)

    assert [feed(d, 0.0) for d in parts_1][-1] == first
    assert feed(parts_1[0], 0.1) is None  # the straggler
    assert [feed(d, 0.2) for d in parts_2][-1] == second
    # (A straggler of the part the next event sends last still completes
    # that event with its bytes: nothing tells it from the event's own part
    # until that arrives. See the Reassembler's docstring.)
    # After the timeout it is forgotten (and a straggler then starts a
    # record that expires like any other).
    r.expire(0.2 + r.timeout)
    assert r._completed == {}
    assert feed(parts_1[0], 6.0) is None and r.records == 1


def test_events_with_the_same_id_and_an_identical_part_both_complete() -> None:
    # D7 again: two events of a split answer, same total and size, whose
    # middle parts are byte for byte the same (values sharing a block). The
    # second one's middle part is not a straggler and must not be dropped.
    shared = event_bytes(MAX_CHUNK, 9)
    first = event_bytes(MAX_CHUNK, 1) + shared + event_bytes(500, 2)
    second = event_bytes(MAX_CHUNK, 3) + shared + event_bytes(500, 4)
    r = Reassembler()
    assert feed_all(r, fragment(ID_A, first), SRC_A, 0.0) == [first]
    assert feed_all(r, fragment(ID_A, second), SRC_A, 0.1) == [second]
    assert r.records == 0


def test_a_legitimate_event_survives_a_flood_of_two_part_records_from_many_ports() -> None:
    """Records past their first fragment are not bare first fragments; when
    the overall caps bind, the victim is chosen by IP address. Chosen by
    (address, port), the legitimate event, heavier than any one flood port,
    was the one evicted."""

    def two_parts(rng: random.Random) -> list[bytes]:
        return fragment(rng.randbytes(20), rng.randbytes(5 * MAX_CHUNK))[:2]

    _survives_flood(5, 1000, two_parts)


def test_a_paced_event_survives_a_steady_flood_of_two_part_records_from_one_address() -> None:
    """The caps already bind when a legitimate event starts, and its parts
    come one at a time between flood records: taken first as a bare first
    fragment, it was evicted at each part and never completed."""
    rng = random.Random(6)
    reassembler = Reassembler(max_records=64, max_bytes=64 * MAX_CHUNK)
    flood = 0

    def flood_records(count: int) -> None:
        nonlocal flood
        for _ in range(count):
            for datagram in fragment(rng.randbytes(20), rng.randbytes(5 * MAX_CHUNK))[:2]:
                reassembler.feed(datagram, ("127.0.0.2", 1000 + flood % 1000), 0.0)
            flood += 1

    flood_records(200)  # at the caps from now on
    event = rng.randbytes(21 * MAX_CHUNK - 100)
    done = None
    for part in fragment(rng.randbytes(20), event):
        result = reassembler.feed(part, ("127.0.0.200", 9), 0.0)
        done = bytes(result) if result is not None else done
        flood_records(4)
    assert done == event


@pytest.mark.parametrize("senders", [3, 5])  # 5 x 10 parts: within the 64-chunk cap
def test_events_from_ports_of_one_address_survive_a_flood_of_first_fragments(
    senders: int,
) -> None:
    """Honest nodes sharing an address (one host, a loopback cluster) send
    interleaved events while first fragments flood in from many addresses:
    an address with several events in progress is not a flood."""
    rng = random.Random(senders)
    reassembler = Reassembler(max_records=64, max_bytes=64 * MAX_CHUNK)
    flooded = 0

    def flood(count: int) -> None:
        nonlocal flooded
        for _ in range(count):
            flooded += 1
            address = (f"127.{flooded >> 16 & 255}.{flooded >> 8 & 255}.{flooded & 255 or 1}", 2000)
            reassembler.feed(
                fragment(rng.randbytes(20), rng.randbytes(3 * MAX_CHUNK))[0], address, 0.0
            )

    flood(200)
    events = [rng.randbytes(10 * MAX_CHUNK - 50) for _ in range(senders)]
    parts = [fragment(rng.randbytes(20), event) for event in events]
    done = []
    for part in range(len(parts[0])):
        for sender, event_parts in enumerate(parts):
            result = reassembler.feed(event_parts[part], ("127.0.0.1", 10000 + sender), 0.0)
            if result is not None:
                done.append(bytes(result))
            flood(2)
    assert sorted(done) == sorted(events)
