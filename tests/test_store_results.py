"""A Store that says "stored" is stored: nodes acknowledge only what they
kept, refuse the rest saying why, and a Store succeeds only when a majority
of its targets kept the value (dht.wire.refusal, dht.core.keeper).

The in-memory network (tests/simnet.py) for the protocol; real sockets for
what a requester sees on the wire, Go's view included.
"""

from __future__ import annotations

import socket

import pytest
from cluster import running_cluster, wait_until
from simnet import Outcome, build_network

import dht
from dht.core.limits import Limits
from dht.core.storage import MemoryStorage
from dht.errors import StoreError, TTLTooLong
from dht.keys import random_id
from dht.wire import Event, EventType, Store, Value, decode, encode, fragment
from dht.wire.refusal import reasons, refusal_id

HOUR_NS = 3600 * 10**9


def store(net, node, key: bytes, value: bytes, ttl_ns: int = HOUR_NS) -> Outcome:
    outcome = Outcome()
    node.engine.store(key, value, ttl_ns, outcome.store_done)
    assert net.run_until(lambda: outcome.ended)
    return outcome


def test_a_store_every_holder_refuses_fails_at_once_saying_why() -> None:
    """The 65th value under a key (here the 2nd, with a cap of 1) was
    acknowledged and kept nowhere: Store succeeded and Find never saw it."""
    net = build_network(12, seed=4, limits=Limits(max_values_per_key=1))
    nodes = list(net.nodes.values())
    key = net.rng.randbytes(20)
    assert store(net, nodes[1], key, b"first").ends == [None]
    started = net.clock.now
    outcome = store(net, nodes[2], key, b"second")
    [error] = outcome.ends
    assert isinstance(error, StoreError)
    # It ends once a majority can no longer keep it (some refusals may come later).
    assert set(error.refused) == {"key-full"}
    assert error.tried - error.refused["key-full"] < error.needed
    assert error.acknowledged <= 1  # at most the node's own copy (its user comes first)
    assert "key-full" in str(error)
    # Refusals end it: no request waited for its timeout (1 s here).
    assert net.clock.now - started < 0.5
    net.run_until(lambda: False, limit=2.0)  # the last refusals arrive
    holders = [node for node in nodes if b"second" in {v.value for v in node.storage.Get(key)}]
    assert len(holders) == error.acknowledged


def test_a_store_refused_by_the_storage_counts_as_not_kept() -> None:
    class Refusing(MemoryStorage):
        def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
            return False

    net = build_network(8, seed=5)
    nodes = list(net.nodes.values())
    for node in nodes[1:]:
        node.engine.storage = Refusing()
    [error] = store(net, nodes[0], net.rng.randbytes(20), b"v").ends
    assert isinstance(error, StoreError)
    assert error.acknowledged == 1  # nodes[0]'s own copy
    assert set(error.refused) == {"refused"} and error.unanswered == 0
    assert error.tried - error.refused["refused"] < error.needed


def test_a_store_kept_by_a_majority_succeeds() -> None:
    net = build_network(8, seed=6)
    nodes = list(net.nodes.values())
    for node in nodes[5:]:
        node.engine.storage = MemoryStorage(max_values_per_key=1, clock_ns=net.clock.wall_ns)
        node.engine.storage.Set(b"k" * 20, b"other", net.clock.wall_ns(), HOUR_NS)
    assert store(net, nodes[0], b"k" * 20, b"v").ends == [None]


def test_store_refuses_a_ttl_no_node_would_keep() -> None:
    with running_cluster(1, max_ttl=60.0) as [node]:
        with pytest.raises(TTLTooLong) as raised:
            node.Store(random_id(), b"v", 61)
        assert isinstance(raised.value, ValueError)
        assert "max_ttl" in str(raised.value)
        assert node.Store(random_id(), b"v", 60).result(timeout=5) is None


def test_a_go_requester_never_gets_an_acknowledgement_for_a_refused_value() -> None:
    """A Go node counts any STORE response with its request's id as a copy
    kept. A refused value gets none: the refusal comes under the id's
    complement, which a Go node matches to no request (it sees its timeout)."""
    with (
        running_cluster(1, max_ttl=60.0) as [node],
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as go,
    ):
        go.bind(("127.0.0.1", 0))
        go.settimeout(5)
        host, port = node.address.split(":")
        key = random_id()

        def send_store(value: Value) -> Event:
            request = Event(random_id(), random_id(), EventType.STORE, False, Store((value,)))
            for datagram in fragment(request.id, encode(request)):
                go.sendto(datagram, (host, int(port)))
            return request

        def next_response() -> Event:
            """The next response, past the node's requests (it pings us)."""
            while True:
                event = decode(go.recv(2048)[24:])
                if event.response:
                    return event

        kept = send_store(Value(key, b"kept", 30 * 10**9))
        answer = next_response()
        assert (answer.id, answer.type, answer.response, answer.payload) == (
            kept.id,
            EventType.STORE,
            True,
            None,
        )
        refused = send_store(Value(key, b"too long", 3600 * 10**9))
        answer = next_response()
        assert answer.id == refusal_id(refused.id) != refused.id
        assert answer.type is EventType.STORE and answer.response
        assert reasons(answer) == ["ttl"]
        assert {v.value for v in node._engine.storage.Get(key)} == {b"kept"}
        assert node.stats()["store-refused-ttl"] == 1


def test_stores_through_the_public_api_report_how_many_kept() -> None:
    """Every value a cluster node refuses is one Store learns about."""
    with running_cluster(3, max_values_per_key=1) as nodes:
        key = random_id()
        assert nodes[0].Store(key, b"first", 600).result(timeout=10) is None
        # The Store ends once a majority kept it; the third copy may still be
        # on its way, and a node without it would take the second value.
        assert wait_until(
            lambda: all(node._engine.storage.Get(key) for node in nodes), timeout=10
        ), "the first value never reached every node"
        with pytest.raises(StoreError) as raised:
            nodes[1].Store(key, b"second", 600).result(timeout=10)
        error = raised.value
        assert error.tried == 3 and error.acknowledged <= 1 and error.needed == 2
        assert error.refused["key-full"] >= 2 - error.acknowledged
        # The publisher kept its own copy (its user comes first), which a
        # Find may see besides the value every holder kept.
        found = nodes[2].Find(key).result(timeout=10)
        assert b"first" in found and set(found) <= {b"first", b"second"}
        assert isinstance(error, dht.DHTError)
