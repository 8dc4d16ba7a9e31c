"""Answers to requests (dht.core.answers, dht.wire.sizes; PROTOCOL.md 6, D8, D12, D40).

``answer`` runs against a real ``RoutingTable`` and a ``MemoryStorage`` with
a fake clock. Split FIND_VALUE answers are checked by their real encoded size
(``dht.wire.codec.encode``), which must stay within the 65535-byte framing
limit.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dht.core.answers import answer
from dht.core.keeper import Keeper
from dht.core.routing import RoutingTable
from dht.core.storage import GuardedStorage, MemoryStorage
from dht.keys import KEY_BYTES, K, Key, distance
from dht.wire.codec import encode
from dht.wire.events import (
    MAX_VALUE_SIZE,
    Event,
    EventType,
    FindNode,
    FindValue,
    Node,
    Store,
    Value,
)
from dht.wire.framing import MAX_EVENT_SIZE, fragment
from dht.wire.refusal import reasons, refusal_id
from dht.wire.sizes import batch_values

T0 = 1_700_000_000 * 10**9
HOUR = 3600 * 10**9
LOCAL = Key("local node")
EVENT_ID = Key("event id")
KEY = Key("stored key")
REQUESTER = Node(Key("requester"), ("10.0.0.9", 4000))


class Harness:
    def __init__(self, max_answer_bytes: int = 256 * 1024, **limits: int) -> None:
        self.table = RoutingTable(LOCAL)
        self.storage = MemoryStorage(clock_ns=lambda: T0, **limits)
        self.keeper = Keeper(
            GuardedStorage(self.storage, lambda: None),
            capacity=2**30,
            values_per_key=1000,
            max_ttl_ns=30 * 24 * HOUR,
            clock_ns=lambda: T0,
        )
        self.max_answer_bytes = max_answer_bytes
        self.counts: list[str] = []

    def answer(
        self, event_type: EventType, payload: object = None, event_id: bytes = EVENT_ID
    ) -> list[Event]:
        request = Event(event_id, REQUESTER.id, event_type, False, payload)  # type: ignore[arg-type]
        return answer(
            request,
            REQUESTER,
            self.table,
            self.keeper,
            self.counts.append,
            network="10.0.0",
            max_answer_bytes=self.max_answer_bytes,
        )

    def add_contacts(self, count: int, seed: int = 0) -> list[bytes]:
        rng = random.Random(seed)
        ids = [rng.randbytes(KEY_BYTES) for _ in range(count)]
        for i, node_id in enumerate(ids):
            self.table.add_verified(node_id, ("10.1.0.1", 5000 + i), float(i))
        return ids

    def held(self) -> list[bytes]:
        return [contact.id for contact in self.table.contacts()]


def is_refusal(event: Event, why: list[str]) -> bool:
    """``event`` is a refusal of the harness's request listing ``why``."""
    return (
        event.id == refusal_id(EVENT_ID)
        and event.sender == LOCAL
        and event.type is EventType.STORE
        and event.response is True
        and reasons(event) == why
    )


def is_response(event: Event, event_type: EventType) -> bool:
    return (
        event.id == EVENT_ID
        and event.sender == LOCAL
        and event.type is event_type
        and event.response is True
    )


# ---------------------------------------------------------------------------
# PING


def test_ping_gets_one_pong() -> None:
    harness = Harness()
    assert harness.answer(EventType.PING) == [Event(EVENT_ID, LOCAL, EventType.PONG, True, None)]
    assert harness.counts == []


def test_pong_request_is_ignored() -> None:
    harness = Harness()
    assert harness.answer(EventType.PONG) == []
    assert harness.counts == ["ignored-request"]


# ---------------------------------------------------------------------------
# STORE


def test_store_stores_each_valid_value() -> None:
    harness = Harness()
    values = (
        Value(KEY, b"first", HOUR, T0),
        Value(KEY, b"", HOUR, T0),
        Value(KEY, b"x" * MAX_VALUE_SIZE, HOUR, T0),  # exactly the limit is fine
        Value(Key("another key"), b"second key", HOUR, 0),
    )
    responses = harness.answer(EventType.STORE, Store(values))
    assert responses == [Event(EVENT_ID, LOCAL, EventType.STORE, True, None)]
    assert harness.counts == []
    stored = {v.value for v in harness.storage.Get(KEY)}
    assert stored == {b"first", b"", b"x" * MAX_VALUE_SIZE}
    assert [v.value for v in harness.storage.Get(Key("another key"))] == [b"second key"]


@pytest.mark.parametrize(
    "bad",
    [
        Value(KEY, b"y" * (MAX_VALUE_SIZE + 1), HOUR, T0),
        Value(KEY, b"zero ttl", 0, T0),
        Value(KEY, b"negative ttl", -HOUR, T0),
    ],
    ids=["too-large", "zero-ttl", "negative-ttl"],
)
def test_store_keeps_the_valid_values_and_refuses_the_others(bad: Value) -> None:
    """A STORE with a value not kept is not acknowledged: the answer is a
    refusal (under the complement of the request's id, which a Go requester
    does not match) saying why; the valid values are kept all the same."""
    harness = Harness()
    good = Value(KEY, b"good", HOUR, T0)
    responses = harness.answer(EventType.STORE, Store((bad, good)))
    assert len(responses) == 1
    assert is_refusal(responses[0], ["invalid"])
    assert harness.counts == ["store-refused-invalid"]
    assert [v.value for v in harness.storage.Get(KEY)] == [b"good"]


def test_store_with_only_invalid_values_gets_one_refusal_listing_each() -> None:
    harness = Harness()
    values = (
        Value(KEY, b"a" * (MAX_VALUE_SIZE + 1), HOUR, T0),
        Value(KEY, b"b", 0, T0),
    )
    responses = harness.answer(EventType.STORE, Store(values))
    assert len(responses) == 1
    assert is_refusal(responses[0], ["invalid", "invalid"])
    assert harness.counts == ["store-refused-invalid", "store-refused-invalid"]
    assert harness.storage.Get(KEY) == []
    assert len(harness.storage) == 0


def test_store_refused_by_the_storage_is_counted_and_refused() -> None:
    harness = Harness(max_values_per_key=1)
    values = (Value(KEY, b"kept", HOUR, T0), Value(KEY, b"refused", HOUR, T0))
    responses = harness.answer(EventType.STORE, Store(values))
    assert len(responses) == 1
    assert is_refusal(responses[0], ["refused"])
    assert harness.counts == ["store-refused-refused"]
    assert [v.value for v in harness.storage.Get(KEY)] == [b"kept"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (Value(KEY, b"too long", 31 * 24 * HOUR, T0), "ttl"),
        (Value(KEY, b"expired", HOUR, T0 - 2 * HOUR), "expired"),
    ],
    ids=["ttl-over-max", "expired"],
)
def test_store_refuses_what_it_would_not_keep_as_asked(value: Value, why: str) -> None:
    """A ttl over max_ttl was cut silently (acknowledged, then gone early);
    a value whose life is over was acknowledged and never kept."""
    harness = Harness()
    [response] = harness.answer(EventType.STORE, Store((value,)))
    assert is_refusal(response, [why])
    assert harness.storage.Get(KEY) == []


def test_empty_store_gets_a_response() -> None:
    harness = Harness()
    assert harness.answer(EventType.STORE, Store(())) == [
        Event(EVENT_ID, LOCAL, EventType.STORE, True, None)
    ]


# ---------------------------------------------------------------------------
# FIND_NODE


def test_find_node_returns_the_closest_contacts_without_the_requester() -> None:
    harness = Harness()
    harness.add_contacts(40)
    harness.table.add_verified(REQUESTER.id, REQUESTER.address, 100.0)
    assert REQUESTER.id in harness.table
    for target in (REQUESTER.id, KEY, LOCAL):
        [response] = harness.answer(EventType.FIND_NODE, FindNode(key=target))
        assert is_response(response, EventType.FIND_NODE)
        assert isinstance(response.payload, FindNode)
        assert response.payload.key is None
        got = [node.id for node in response.payload.nodes]
        others = [i for i in harness.held() if i != REQUESTER.id]
        assert got == sorted(others, key=lambda i, t=target: distance(i, t))[:K]
        assert len(got) == K
        assert REQUESTER.id not in got and LOCAL not in got
        by_id = {c.id: c.address for c in harness.table.contacts()}
        assert all(node.address == by_id[node.id] for node in response.payload.nodes)
        assert len(encode(response)) <= MAX_EVENT_SIZE


def test_find_node_with_few_contacts() -> None:
    harness = Harness()
    assert harness.answer(EventType.FIND_NODE, FindNode(key=KEY)) == [
        Event(EVENT_ID, LOCAL, EventType.FIND_NODE, True, FindNode(nodes=()))
    ]
    ids = harness.add_contacts(4)
    harness.table.add_verified(REQUESTER.id, REQUESTER.address, 100.0)
    [response] = harness.answer(EventType.FIND_NODE, FindNode(key=KEY))
    assert isinstance(response.payload, FindNode)
    assert [n.id for n in response.payload.nodes] == sorted(ids, key=lambda i: distance(i, KEY))


# ---------------------------------------------------------------------------
# FIND_VALUE


def test_find_value_without_a_match_returns_nodes_only() -> None:
    harness = Harness()
    harness.add_contacts(30)
    harness.table.add_verified(REQUESTER.id, REQUESTER.address, 100.0)
    [response] = harness.answer(EventType.FIND_VALUE, FindValue(key=KEY))
    assert is_response(response, EventType.FIND_VALUE)
    payload = response.payload
    assert isinstance(payload, FindValue)
    assert payload.values == () and payload.found == 0
    assert payload.key is None
    others = [i for i in harness.held() if i != REQUESTER.id]
    assert [n.id for n in payload.nodes] == sorted(others, key=lambda i: distance(i, KEY))[:K]


def test_find_value_with_values() -> None:
    harness = Harness()
    harness.add_contacts(10)
    for data in (b"one", b"two", b"three"):
        harness.storage.Set(KEY, data, T0 - 1, HOUR)
    [response] = harness.answer(EventType.FIND_VALUE, FindValue(key=KEY))
    assert is_response(response, EventType.FIND_VALUE)
    payload = response.payload
    assert isinstance(payload, FindValue)
    assert payload.nodes == ()
    assert payload.found == 3
    assert sorted(v.value for v in payload.values) == [b"one", b"three", b"two"]
    assert all(v.key == KEY and v.ttl_ns == HOUR for v in payload.values)


@pytest.mark.parametrize(
    ("count", "size"),
    [(2, 32768), (3, 30000), (100, 5000), (14, 32768)],
    ids=["2x32768", "3x30000", "100x5000", "14x32768"],
)
def test_find_value_answer_is_split_within_the_framing_limit(count: int, size: int) -> None:
    # D8: the reference's batches exceed 65535 bytes and can never be read.
    harness = Harness(max_answer_bytes=2**30, max_values_per_key=count)
    stored = set()
    for i in range(count):
        data = i.to_bytes(4, "big") * (size // 4)
        assert len(data) == size
        assert harness.storage.Set(KEY, data, T0 - i, HOUR)
        stored.add(data)
    responses = harness.answer(EventType.FIND_VALUE, FindValue(key=KEY))
    assert len(responses) > 1
    received: list[bytes] = []
    for response in responses:
        assert is_response(response, EventType.FIND_VALUE)
        payload = response.payload
        assert isinstance(payload, FindValue)
        assert payload.found == count
        assert payload.nodes == ()
        assert payload.values
        encoded = encode(response)
        assert len(encoded) <= MAX_EVENT_SIZE
        assert fragment(response.id, encoded)  # the framing accepts it
        received.extend(v.value for v in payload.values)
    assert len(received) == count  # no value twice
    assert set(received) == stored
    # Not split far more than needed: events are nearly full.
    if 2 * (size + 1024) <= MAX_EVENT_SIZE:
        assert len(responses) <= -(-count * size // (MAX_EVENT_SIZE - 4096)) + 1


def answer_to(harness: Harness, event_id: bytes, key: bytes = KEY) -> list[Value]:
    """The values of the answer to a FIND_VALUE of ``key`` under ``event_id``."""
    responses = harness.answer(EventType.FIND_VALUE, FindValue(key=key), event_id)
    values = [v for r in responses for v in r.payload.values]  # type: ignore[union-attr]
    for response in responses:
        assert response.payload.found == len(values)  # type: ignore[union-attr]
    return values


def test_find_value_answer_is_cut_to_max_answer_bytes() -> None:
    """A key of 64 values of 32 KiB made one request cost 2 MiB of answer.
    Cut, the answer says ``found`` = what it carries (a Go requester waits
    for ``found`` values), and different requests get different parts."""
    harness = Harness(max_values_per_key=64)
    for i in range(64):
        assert harness.storage.Set(KEY, bytes([i]) * MAX_VALUE_SIZE, T0, HOUR)
    seen: set[bytes] = set()
    for i in range(64):
        values = answer_to(harness, i.to_bytes(1, "big") + EVENT_ID[1:])
        assert 1 <= len(values) <= harness.max_answer_bytes // MAX_VALUE_SIZE
        assert sum(len(v.value) for v in values) <= harness.max_answer_bytes
        seen.update(v.value for v in values)
    assert len(seen) == 64, "every value is in some request's part"
    assert harness.counts.count("answer-cut") == 64


def test_find_value_answer_leads_with_the_network_holding_fewest() -> None:
    """A key squatted by a few networks still shows its owner's value first:
    the networks are interleaved, the one holding fewest first."""
    harness = Harness(max_answer_bytes=3 * (1000 + 96))
    for network in ("198.51.100", "203.0.113"):
        for i in range(20):
            junk = Value(KEY, network.encode() + bytes([i]) * 1000, HOUR, T0)
            assert harness.keeper.keep(junk, network) is None
    owner = Value(KEY, b"the owner's value", HOUR, T0)
    assert harness.keeper.keep(owner, "192.0.2") is None
    for i in range(10):
        values = answer_to(harness, bytes([i]) + EVENT_ID[1:])
        assert values[0].value == owner.value
        assert [v.value.startswith(b"198.51.100") for v in values[1:]] == [True, False]
        assert values[2].value.startswith(b"203.0.113")


def test_find_value_from_filter_is_applied() -> None:
    harness = Harness()
    harness.add_contacts(5)
    # Inserted out of created order (D38).
    for created, data in ((T0 - 100, b"new"), (T0 - 300, b"old"), (T0 - 200, b"mid")):
        harness.storage.Set(KEY, data, created, HOUR)
    [response] = harness.answer(EventType.FIND_VALUE, FindValue(key=KEY, from_ns=T0 - 200))
    assert isinstance(response.payload, FindValue)
    assert sorted(v.value for v in response.payload.values) == [b"mid", b"new"]
    assert response.payload.found == 2
    # D12: from <= 0 means every value.
    for no_filter in (0, -1, -6795364578871345152):
        [response] = harness.answer(EventType.FIND_VALUE, FindValue(key=KEY, from_ns=no_filter))
        assert isinstance(response.payload, FindValue)
        assert response.payload.found == 3
    # Everything filtered out: the closest nodes instead.
    [response] = harness.answer(EventType.FIND_VALUE, FindValue(key=KEY, from_ns=T0))
    assert isinstance(response.payload, FindValue)
    assert response.payload.values == () and response.payload.found == 0
    assert len(response.payload.nodes) == 5


# ---------------------------------------------------------------------------
# batch_values


def find_value_response(values: tuple[Value, ...], found: int) -> Event:
    return Event(EVENT_ID, LOCAL, EventType.FIND_VALUE, True, FindValue(values=values, found=found))


value_specs = st.lists(
    st.tuples(
        st.integers(0, MAX_VALUE_SIZE),
        st.integers(1, 2**63 - 1),  # ttl
        st.one_of(st.just(0), st.integers(1, 2**63 - 1)),  # created
    ),
    max_size=12,
)
small_value_specs = st.lists(
    st.tuples(st.integers(0, 64), st.integers(1, 2**63 - 1), st.integers(0, 2**63 - 1)),
    max_size=1500,
)


def build_values(specs: list[tuple[int, int, int]]) -> list[Value]:
    return [
        Value(KEY, bytes([i % 256]) * size, ttl, created)
        for i, (size, ttl, created) in enumerate(specs)
    ]


def check_batches(values: list[Value]) -> None:
    batches = batch_values(values)
    assert [v for batch in batches for v in batch] == values
    assert all(batches)
    for batch in batches:
        size = len(encode(find_value_response(batch, 2**63 - 1)))
        assert size <= MAX_EVENT_SIZE, (size, [len(v.value) for v in batch])


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(value_specs)
def test_batch_values_fit_the_budget(specs: list[tuple[int, int, int]]) -> None:
    check_batches(build_values(specs))


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(small_value_specs)
def test_batch_values_fit_the_budget_with_many_small_values(
    specs: list[tuple[int, int, int]],
) -> None:
    check_batches(build_values(specs))


@pytest.mark.parametrize(("first", "count"), [(0, 2), (0, 3), (0, 4), (MAX_VALUE_SIZE, 1)])
def test_batch_values_at_the_budget_boundary(first: int, count: int) -> None:
    # Value bytes summing to just under and just over the framing limit,
    # where an underestimated overhead would produce an oversized event.
    # ``first`` bytes go to a leading value, the rest is split ``count`` ways.
    for total in range(MAX_EVENT_SIZE - 700, MAX_EVENT_SIZE + 20, 3):
        rest = total - first
        sizes = [rest // count] * count
        sizes[0] += rest - sum(sizes)
        if first:
            sizes.insert(0, first)
        if max(sizes) > MAX_VALUE_SIZE:
            continue  # only near the top of the range with few values
        check_batches(build_values([(size, HOUR, T0) for size in sizes]))


def test_batch_values_examples() -> None:
    assert batch_values([]) == []
    one = Value(KEY, b"v", HOUR, T0)
    assert batch_values([one]) == [(one,)]
    big = [Value(KEY, bytes([i]) * MAX_VALUE_SIZE, HOUR, T0) for i in range(5)]
    batches = batch_values(big)
    assert [len(b) for b in batches] == [1] * 5  # two 32768-byte values never fit
    many_small = [Value(KEY, bytes([i % 256]), HOUR, T0) for i in range(3000)]
    batches = batch_values(many_small)
    assert 1 < len(batches) < len(many_small)
    check_batches(many_small)
