"""Fuzz acceptance tests of the receive path: framing, reassembly and decoding.

Hostile datagrams must only ever raise ``ProtocolError`` (PROTOCOL.md 10,
D1-D7 and D10: the reference panics or corrupts state on most of these), and
reassembly must stay within its memory caps. Everything is driven by a fixed
``random.Random`` seed and a fake clock, so a failure reproduces exactly.
"""

from __future__ import annotations

import collections
import json
import os
import random
from pathlib import Path

import pytest

import dht
from dht.wire import (
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_DATAGRAM,
    Event,
    EventType,
    FindNode,
    FindValue,
    Node,
    Reassembler,
    Store,
    Value,
    decode,
    encode,
    fragment,
)

SEED = 20240601
DATAGRAMS = 100_000
DECODE_MUTATIONS = 20_000

MAX_BYTES = 256 * 1024
MAX_RECORDS = 256
SOURCES = [(f"192.0.2.{i}", 7000 + i) for i in range(1, 7)]


def vectors_path() -> Path:
    env = os.environ.get("DHT_VECTORS")
    if env:
        return Path(env)
    return (
        Path(__file__).resolve().parent
        / ".."
        / ".."
        / "shared"
        / "vectors"
        / ("go-reference-vectors.json")
    )


@pytest.fixture(scope="module")
def vectors() -> list[dict]:
    path = vectors_path()
    if not path.is_file():
        pytest.skip(f"Go reference vectors not found at {path} (set DHT_VECTORS to the file)")
    entries = json.loads(path.read_text())
    assert entries, f"{path} holds no vectors"
    return entries


def vector_datagrams(vectors: list[dict]) -> list[list[bytes]]:
    return [[bytes.fromhex(d) for d in entry["datagrams"]] for entry in vectors]


def vector_events(vectors: list[dict]) -> list[bytes]:
    events = []
    for datagrams in vector_datagrams(vectors):
        events.append(b"".join(d[HEADER_SIZE:] for d in datagrams))
    return events


def built_events() -> list[bytes]:
    """Encoded events of every type, small and fragmented."""
    rng = random.Random(SEED + 1)

    def ident() -> bytes:
        return rng.randbytes(20)

    def node(i: int) -> Node:
        return Node(ident(), (f"10.{i}.{rng.randrange(256)}.{rng.randrange(1, 255)}", 1000 + i))

    def value(size: int) -> Value:
        return Value(ident(), rng.randbytes(size), rng.randrange(1, 10**13), rng.randrange(10**18))

    events = [
        Event(ident(), ident(), EventType.PING),
        Event(ident(), ident(), EventType.PONG, response=True),
        Event(ident(), ident(), EventType.STORE, payload=Store((value(10),))),
        Event(
            ident(), ident(), EventType.STORE, payload=Store(tuple(value(300) for _ in range(4)))
        ),
        Event(ident(), ident(), EventType.STORE, payload=Store((value(5000),))),
        Event(ident(), ident(), EventType.STORE, payload=Store((value(20000), value(9000)))),
        Event(ident(), ident(), EventType.STORE, response=True),
        Event(ident(), ident(), EventType.FIND_NODE, payload=FindNode(key=ident())),
        Event(
            ident(),
            ident(),
            EventType.FIND_NODE,
            response=True,
            payload=FindNode(nodes=tuple(node(i) for i in range(20))),
        ),
        Event(ident(), ident(), EventType.FIND_VALUE, payload=FindValue(key=ident(), from_ns=-5)),
        Event(
            ident(),
            ident(),
            EventType.FIND_VALUE,
            response=True,
            payload=FindValue(values=(value(40), value(0)), found=7),
        ),
        Event(
            ident(),
            ident(),
            EventType.FIND_VALUE,
            response=True,
            payload=FindValue(values=(value(3000), value(3000)), found=2),
        ),
        Event(
            ident(),
            ident(),
            EventType.FIND_VALUE,
            response=True,
            payload=FindValue(key=ident(), nodes=tuple(node(i) for i in range(3))),
        ),
    ]
    return [encode(event) for event in events]


# ---------------------------------------------------------------------------
# Mutators of event bytes (FlatBuffers), shared by both tests

INTERESTING_U32 = [0, 1, 2, 3, 4, 8, 20, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
INTERESTING_U16 = [0, 1, 2, 3, 4, 5, 6, 8, 0xFF, 0x7FFF, 0x8000, 0xFFFF]


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        bit = rng.randrange(len(out) * 8)
        out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


def overwrite_u32(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 4:
        return flip_bits(rng, data)
    out = bytearray(data)
    pos = rng.randrange(0, len(out) - 3, 4 if rng.random() < 0.7 else 1)
    choice = rng.random()
    if choice < 0.5:
        value = rng.choice([*INTERESTING_U32, len(data), len(data) - 4, len(data) + 4])
    elif choice < 0.8:
        value = int.from_bytes(out[pos : pos + 4], "little") + rng.randint(-64, 64)
    else:
        value = rng.getrandbits(32)
    out[pos : pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


def overwrite_u16(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 2:
        return flip_bits(rng, data)
    out = bytearray(data)
    pos = rng.randrange(0, len(out) - 1, 2 if rng.random() < 0.7 else 1)
    if rng.random() < 0.6:
        value = rng.choice(INTERESTING_U16)
    else:
        value = int.from_bytes(out[pos : pos + 2], "little") + rng.randint(-8, 8)
    out[pos : pos + 2] = (value & 0xFFFF).to_bytes(2, "little")
    return bytes(out)


def overwrite_byte(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.choice([0, 1, 2, 3, 4, 5, 0x7F, 0x80, 0xFF])
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def extend(rng: random.Random, data: bytes) -> bytes:
    return data + rng.randbytes(rng.randint(1, 64))


def delete_span(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 16) :]


def insert_span(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data) + 1)
    return data[:start] + rng.randbytes(rng.randint(1, 16)) + data[start:]


def duplicate_span(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    span = data[start : start + rng.randint(4, 64)]
    at = rng.randrange(len(data) + 1)
    return data[:at] + span + data[at:]


MUTATORS = [
    flip_bits,
    overwrite_u32,
    overwrite_u32,
    overwrite_u16,
    overwrite_byte,
    truncate,
    extend,
    delete_span,
    insert_span,
    duplicate_span,
]


def mutate_event(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = rng.choice(corpus)
    if rng.random() < 0.05:
        other = rng.choice(corpus)
        cut = rng.randrange(min(len(data), len(other)) + 1)
        data = data[:cut] + other[cut:]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(MUTATORS)(rng, data) if data else rng.randbytes(rng.randint(1, 32))
    return data


# ---------------------------------------------------------------------------
# Datagram-level fuzz


class DatagramFuzzer:
    """Produces (datagram, source) pairs: interleaved streams of many kinds."""

    def __init__(self, rng: random.Random, vectors: list[dict]) -> None:
        self.rng = rng
        self.datagrams = vector_datagrams(vectors)
        self.flat = [(i, d) for i, ds in enumerate(self.datagrams) for d in ds]
        self.events = vector_events(vectors) + built_events()
        # A few ids and sources shared by all streams so that records collide.
        self.ids = [rng.randbytes(20) for _ in range(6)]
        self.active: list[collections.deque] = []
        self.kinds = collections.Counter()
        ops = [
            (self.valid_event, 8),
            (self.mutated_event, 10),
            (self.bit_flip, 10),
            (self.truncation, 5),
            (self.extension, 5),
            (self.swapped_header, 5),
            (self.random_header, 10),
            (self.rewritten_header_field, 5),
            (self.random_payload, 5),
            (self.random_bytes, 5),
        ]
        self.ops = [op for op, _ in ops]
        self.weights = [weight for _, weight in ops]

    def next(self) -> tuple[bytes, tuple[str, int]]:
        rng = self.rng
        if self.active and rng.random() < 0.6:
            index = rng.randrange(len(self.active))
            queue = self.active[index]
            item = queue.popleft()
            if not queue:
                self.active[index] = self.active[-1]
                self.active.pop()
            return item
        op = rng.choices(self.ops, self.weights)[0]
        self.kinds[op.__name__] += 1
        source = rng.choice(SOURCES)
        datagrams = op()
        first, rest = datagrams[0], datagrams[1:]
        if rest:
            self.active.append(collections.deque((d, source) for d in rest))
        return first, source

    # Streams of whole events --------------------------------------------

    def deliver(self, datagrams: list[bytes]) -> list[bytes]:
        """Some reordering, a duplicate now and then, a lost part now and then."""
        rng = self.rng
        datagrams = list(datagrams)
        if len(datagrams) > 1 and rng.random() < 0.5:
            rng.shuffle(datagrams)
        if rng.random() < 0.1:
            datagrams.insert(rng.randrange(len(datagrams) + 1), rng.choice(datagrams))
        if len(datagrams) > 1 and rng.random() < 0.1:
            del datagrams[rng.randrange(len(datagrams))]
        return datagrams

    def valid_event(self) -> list[bytes]:
        rng = self.rng
        if rng.random() < 0.5:
            return self.deliver(rng.choice(self.datagrams))
        event = rng.choice(self.events)
        event_id = rng.choice(self.ids) if rng.random() < 0.5 else rng.randbytes(20)
        return self.deliver(fragment(event_id, event))

    def mutated_event(self) -> list[bytes]:
        rng = self.rng
        event = mutate_event(rng, self.events)
        if not 1 <= len(event) <= 0xFFFF:
            event = rng.randbytes(rng.randint(1, 100))
        return self.deliver(fragment(rng.choice(self.ids), event))

    # Single datagrams --------------------------------------------------------

    def any_datagram(self) -> bytes:
        return self.rng.choice(self.flat)[1]

    def bit_flip(self) -> list[bytes]:
        return [flip_bits(self.rng, self.any_datagram())]

    def truncation(self) -> list[bytes]:
        return [truncate(self.rng, self.any_datagram())]

    def extension(self) -> list[bytes]:
        rng = self.rng
        return [self.any_datagram() + rng.randbytes(rng.choice([1, 2, rng.randint(1, 400)]))]

    def swapped_header(self) -> list[bytes]:
        rng = self.rng
        a, first = rng.choice(self.flat)
        b, second = rng.choice(self.flat)
        while b == a:
            b, second = rng.choice(self.flat)
        return [first[:HEADER_SIZE] + second[HEADER_SIZE:]]

    def random_header(self) -> list[bytes]:
        """Random part/total/size with the chunk length they require: passes framing."""
        rng = self.rng
        size = rng.randint(1, MAX_CHUNK) if rng.random() < 0.6 else rng.randint(1, 0xFFFF)
        total = -(-size // MAX_CHUNK)
        part = rng.randint(1, total)
        length = MAX_CHUNK if part < total else size - (total - 1) * MAX_CHUNK
        source = rng.choice(self.events)
        start = (part - 1) * MAX_CHUNK
        chunk = source[start : start + length]
        chunk += rng.randbytes(length - len(chunk))
        if rng.random() < 0.5:
            chunk = flip_bits(rng, chunk)
        event_id = rng.choice(self.ids) if rng.random() < 0.7 else rng.randbytes(20)
        header = event_id + bytes([part, total]) + size.to_bytes(2, "little")
        return [header + chunk]

    def rewritten_header_field(self) -> list[bytes]:
        rng = self.rng
        out = bytearray(self.any_datagram())
        field = rng.randrange(3)
        if field == 0:
            out[20] = rng.choice([0, 1, 2, 3, 4, 5, 46, 47, 200, 255, rng.randrange(256)])
        elif field == 1:
            out[21] = rng.choice([0, 1, 2, 3, 4, 5, 46, 47, 200, 255, rng.randrange(256)])
        else:
            out[22:24] = rng.randint(0, 0xFFFF).to_bytes(2, "little")
        return [bytes(out)]

    def random_payload(self) -> list[bytes]:
        d = self.any_datagram()
        return [d[:HEADER_SIZE] + self.rng.randbytes(len(d) - HEADER_SIZE)]

    def random_bytes(self) -> list[bytes]:
        rng = self.rng
        return [rng.randbytes(rng.choice([rng.randint(0, 30), rng.randint(0, 1600)]))]


def describe(step: int, datagram: bytes, source: tuple[str, int], now: float) -> str:
    return f"step {step}, datagram {datagram.hex()} from {source} at t={now!r}"


@pytest.mark.timeout(300)
def test_fuzz_reassembly_and_decode(vectors):
    rng = random.Random(SEED)
    fuzzer = DatagramFuzzer(rng, vectors)
    reassembler = Reassembler(
        max_records=MAX_RECORDS,
        max_bytes=MAX_BYTES,
        max_records_per_source=96,
        max_bytes_per_source=96 * 1024,
        max_event_size=60_000,
        timeout=5.0,
    )
    errors: collections.Counter = collections.Counter()
    decoded = collections.Counter()
    completed = 0
    now = 1000.0
    for step in range(DATAGRAMS):
        now += rng.uniform(3.0, 12.0) if rng.random() < 0.0005 else rng.random() * 0.004
        datagram, source = fuzzer.next()
        try:
            event = reassembler.feed(datagram, source, now)
        except dht.ProtocolError as error:
            errors[type(error).__name__, error.reason] += 1
            event = None
        except Exception as error:
            where = describe(step, datagram, source, now)
            pytest.fail(f"feed raised {type(error).__name__}: {error}; {where}")
        held, records = reassembler.held_bytes, reassembler.records
        if not (0 <= held <= MAX_BYTES and records <= MAX_RECORDS):
            pytest.fail(
                f"caps exceeded: {held} bytes held (cap {MAX_BYTES}), "
                f"{records} records (cap {MAX_RECORDS}); {describe(step, datagram, source, now)}"
            )
        if event is None:
            continue
        completed += 1
        try:
            result = decode(event)
        except dht.ProtocolError as error:
            errors[type(error).__name__, error.reason] += 1
        except Exception as error:
            pytest.fail(
                f"decode raised {type(error).__name__}: {error}; event {bytes(event).hex()}; "
                f"{describe(step, datagram, source, now)}"
            )
        else:
            assert isinstance(result, Event)
            decoded[result.type] += 1

    reasons = {reason for (_name, reason) in errors}
    families = {name for (name, _reason) in errors}
    summary = f"errors {dict(errors)}, decoded {dict(decoded)}, completed {completed}"
    # Not vacuous: whole events got through, of several types, and every
    # class of bad input was seen.
    assert sum(decoded.values()) >= 1000, summary
    assert len(decoded) == len(EventType), summary
    assert {"FramingError", "DecodeError"} <= families, summary
    assert {
        "short-datagram",
        "long-datagram",
        "bad-part",
        "bad-size",
        "bad-chunk-length",
        "duplicate-part",
        "event-too-large",
    } <= reasons, summary
    decode_reasons = {reason for (name, reason) in errors if name == "DecodeError"}
    assert len(decode_reasons) >= 6, summary
    assert reassembler.evicted > 0, summary
    assert reassembler.expired > 0, summary
    # Everything left over expires, and then nothing is held.
    reassembler.expire(now + 5.0)
    assert reassembler.records == 0
    assert reassembler.held_bytes == 0


def test_fuzzer_produces_oversize_and_undersize_datagrams(vectors):
    """The datagram fuzzer covers lengths on both sides of the framing limits."""
    rng = random.Random(SEED)
    fuzzer = DatagramFuzzer(rng, vectors)
    lengths = [len(fuzzer.next()[0]) for _ in range(5000)]
    assert min(lengths) == 0
    assert any(length <= HEADER_SIZE for length in lengths)
    assert any(length > MAX_DATAGRAM for length in lengths)
    assert any(length == MAX_DATAGRAM for length in lengths)


# ---------------------------------------------------------------------------
# Decode-level fuzz


@pytest.mark.timeout(300)
def test_fuzz_decode_of_mutated_events(vectors):
    rng = random.Random(SEED + 2)
    corpus = vector_events(vectors) + built_events()
    for event in corpus:
        decode(event)  # the unmutated corpus is valid
    accepted = 0
    errors: collections.Counter = collections.Counter()
    for step in range(DECODE_MUTATIONS):
        data = mutate_event(rng, corpus)
        try:
            event = decode(data)
        except dht.DecodeError as error:
            errors[error.reason] += 1
            continue
        except Exception as error:
            pytest.fail(f"step {step}: decode raised {type(error).__name__}: {error}; {data.hex()}")
        accepted += 1
        # Whatever decode accepts is a valid event: it encodes and decodes back.
        try:
            again = decode(encode(event))
        except Exception as error:
            pytest.fail(
                f"step {step}: decoded {event!r} does not round-trip "
                f"({type(error).__name__}: {error}); {data.hex()}"
            )
        assert again == event, f"step {step}: {data.hex()}"
    summary = f"accepted {accepted}, errors {dict(errors)}"
    assert accepted >= 1000, summary
    assert sum(errors.values()) >= 5000, summary
    assert len(errors) >= 6, summary


@pytest.mark.parametrize("length", range(0, 12))
def test_decode_of_tiny_buffers(length):
    rng = random.Random(length)
    for _ in range(200):
        data = rng.randbytes(length)
        try:
            decode(data)
        except dht.DecodeError as error:
            if length < 8:
                assert error.reason == "short-event"
        else:
            assert length >= 8, data.hex()
