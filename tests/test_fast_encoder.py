"""The hand-written encoder against the generated-code Builder encoder (the oracle)."""

from __future__ import annotations

from collections import Counter

import hypothesis
from fb_encoder import builder_encode
from helpers import read_with_generated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_codec import ids, int64, node_tuples, nodes, valid_events, value_tuples, values

from dht import DecodeError
from dht.wire import Event, EventType, FindNode, FindValue, Store, decode, encode
from dht.wire.events import Payload
from dht.wire.fb import Event as fb_event
from dht.wire.fb import FindValue as fb_find_value

# FindValue with every field at once (the codec tests cover the usual shapes).
full_find_values = st.builds(
    Event,
    id=ids,
    sender=ids,
    type=st.just(EventType.FIND_VALUE),
    response=st.booleans(),
    payload=st.builds(
        FindValue, key=ids, values=value_tuples, nodes=node_tuples, from_ns=int64, found=int64
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events | full_find_values)
def test_fast_encoder_agrees_with_the_builder(event: Event) -> None:
    fast = encode(event)
    reference = builder_encode(event)
    assert decode(fast) == decode(reference) == event
    # The generated readers see the same event in both encodings.
    assert read_with_generated(fast) == read_with_generated(reference) == event


@settings(max_examples=200, deadline=None)
@given(full_find_values)
def test_tables_with_int64_fields_are_8_aligned(event: Event) -> None:
    """FlatBuffers verifiers require 8-byte scalars at 8-aligned positions."""
    buf = encode(event)
    root = fb_event.Event.GetRootAs(buf, 0)
    payload = root.Payload()
    assert payload is not None
    find_value = fb_find_value.FindValue()
    find_value.Init(payload.Bytes, payload.Pos)
    assert find_value._tab.Pos % 8 == 0
    for i in range(find_value.ValuesLength()):
        value = find_value.Values(i)
        assert value is not None and value._tab.Pos % 8 == 0
    assert root.PayloadType() == 2


def _events_of(
    event_type: EventType, response: bool, payload: st.SearchStrategy[Payload]
) -> st.SearchStrategy[Event]:
    return st.builds(
        Event,
        id=ids,
        sender=ids,
        type=st.just(event_type),
        response=st.just(response),
        payload=payload,
    )


some_nodes = st.lists(nodes, min_size=1, max_size=20).map(tuple)
some_values = st.lists(values, min_size=1, max_size=5).map(tuple)
# Events whose vectors of tables the decoder reads with one vtable check.
vector_events = st.one_of(
    _events_of(EventType.FIND_NODE, True, st.builds(FindNode, nodes=some_nodes)),
    _events_of(EventType.FIND_VALUE, True, st.builds(FindValue, values=some_values)),
    _events_of(EventType.STORE, False, st.builds(Store, values=some_values)),
)


DAMAGED_EXAMPLES = 500
COMPARED_SHARE = 0.15
"""Share of the examples that must reach the comparison: most damaged
inputs are refused by our decoder or crash the generated code (no verdict);
about 20-30% are read by both (measured over many runs)."""
CHANGED_MIN = 25
"""Compared examples whose damage changed what is read (about 100 of 500)."""


def test_vector_decoding_agrees_with_the_generated_readers_on_damaged_input() -> None:
    """The node and value decoders (one vtable check per vector) must read
    what the generated code reads, whatever was damaged, or refuse.

    An example that our decoder refuses, or that the generated code cannot
    read, gives no verdict; the test counts the examples that reach the
    comparison and fails if too few did, or if too few of those were read
    as another event than the one encoded: it cannot pass vacuously."""
    counts: Counter[str] = Counter()

    @settings(
        max_examples=DAMAGED_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(vector_events, st.booleans(), st.data())
    def compare(event: Event, builder: bool, data: st.DataObject) -> None:
        counts["examples"] += 1
        encoded = bytearray(builder_encode(event) if builder else encode(event))
        for _ in range(data.draw(st.integers(1, 3))):
            encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
        try:
            decoded = decode(bytes(encoded))
        except DecodeError:
            hypothesis.event("refused by our decoder")
            return
        try:
            reference = read_with_generated(bytes(encoded))
        except Exception:  # the generated code does not check bounds: no verdict
            hypothesis.event("no verdict: the generated code failed")
            return
        changed = decoded != event
        hypothesis.event("compared, damage read" if changed else "compared, damage not read")
        counts["compared"] += 1
        counts["changed"] += changed
        assert decoded == reference

    compare()
    print(f"\ndamaged input: {dict(counts)}")
    assert counts["compared"] >= COMPARED_SHARE * counts["examples"], counts
    assert counts["changed"] >= CHANGED_MIN, counts
