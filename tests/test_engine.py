"""Core tests: engines on an in-memory network with virtual time (tests/simnet.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from simnet import Outcome, SimNetwork, build_network

from dht.core.schedule import Schedule
from dht.core.storage import MemoryStorage
from dht.errors import ClosedError, NotFoundError, StoreError
from dht.keys import K, distance
from dht.wire.codec import encode
from dht.wire.events import Event, EventType, FindValue, Node, Value
from dht.wire.framing import fragment

HOUR_NS = 3600 * 10**9


def store(net: SimNetwork, node, key: bytes, value: bytes) -> Outcome:
    outcome = Outcome()
    node.engine.store(key, value, HOUR_NS, outcome.store_done)
    assert net.run_until(lambda: outcome.ended)
    return outcome


def find(net: SimNetwork, node, key: bytes, from_ns: int = 0) -> Outcome:
    outcome = Outcome()
    node.engine.find(key, from_ns, outcome.value, outcome.find_done)
    assert net.run_until(lambda: outcome.ended)
    return outcome


def test_two_hundred_nodes_join_store_and_find():
    net = build_network(200, seed=7)
    nodes = list(net.nodes.values())
    assert all(len(node.engine.table) > 0 for node in nodes)
    rng = net.rng
    keys = [rng.randbytes(20) for _ in range(30)]
    for i, key in enumerate(keys):
        outcome = store(net, rng.choice(nodes), key, b"value-%d" % i)
        assert outcome.ends == [None]
    for i, key in enumerate(keys):
        outcome = find(net, rng.choice(nodes), key)
        assert outcome.ends == [None], outcome.ends
        assert outcome.values == [b"value-%d" % i]
        assert outcome.final_values == [b"value-%d" % i]


def test_store_reaches_the_k_closest_nodes():
    net = build_network(60, seed=3)
    nodes = list(net.nodes.values())
    key = net.rng.randbytes(20)
    assert store(net, nodes[5], key, b"v").ends == [None]
    net.run_until(lambda: False, limit=2.0)  # let the remaining acks arrive
    closest = sorted(nodes, key=lambda node: distance(node.id, key))[:K]
    holders = [node for node in nodes if node.storage.Get(key)]
    # Every holder is among the K closest and nearly all K closest hold it.
    assert set(map(id, holders)) <= set(map(id, closest))
    assert len(holders) >= K - 2


def test_find_missing_key_ends_once_with_not_found():
    net = build_network(30, seed=4)
    outcome = find(net, list(net.nodes.values())[3], b"\x42" * 20)
    net.run_until(lambda: False, limit=5.0)
    assert len(outcome.ends) == 1
    assert isinstance(outcome.ends[0], NotFoundError)
    assert outcome.values == []


def test_lone_node_find_reports_not_found_and_store_is_local():
    net = SimNetwork()
    node = net.add_node()
    outcome = find(net, node, b"\x01" * 20)
    assert len(outcome.ends) == 1 and isinstance(outcome.ends[0], NotFoundError)  # D27
    assert store(net, node, b"\x01" * 20, b"x").ends == [None]
    assert find(net, node, b"\x01" * 20).values == [b"x"]


def test_split_find_value_answer_is_reassembled():
    """Values larger in total than one event come back over several events (D7, D8)."""
    net = build_network(5, seed=5)
    nodes = list(net.nodes.values())
    key = net.rng.randbytes(20)
    big = [bytes([i]) * 32768 for i in range(4)]
    holder = nodes[1]
    for value in big:
        assert holder.storage.Set(key, value, net.clock.wall_ns(), HOUR_NS)
    outcome = find(net, nodes[4], key)
    assert outcome.ends == [None]
    assert sorted(outcome.values) == sorted(big)
    assert len(outcome.values) == len(set(outcome.values)) == 4


def test_values_survive_when_nodes_crash():
    net = build_network(60, seed=9)
    nodes = list(net.nodes.values())
    keys = [net.rng.randbytes(20) for _ in range(40)]
    for key in keys:
        assert store(net, net.rng.choice(nodes), key, key[:4]).ends == [None]
    for node in net.rng.sample(nodes[1:], 18):  # 30% leave abruptly
        node.crash()
    alive = [node for node in nodes if node.online]
    found = sum(find(net, net.rng.choice(alive), key).values == [key[:4]] for key in keys)
    assert found == len(keys)


def test_later_joiner_receives_the_keys_it_is_closest_to():
    net = build_network(30, seed=11)
    nodes = list(net.nodes.values())
    key = net.rng.randbytes(20)
    assert store(net, nodes[2], key, b"mine").ends == [None]
    newcomer = net.add_node(node_id=bytes(key[:19]) + bytes([key[19] ^ 1]))
    joined = Outcome()
    newcomer.engine.bootstrap([nodes[0].address], joined.store_done)
    assert net.run_until(lambda: joined.ended) and joined.ends == [None]
    assert net.run_until(lambda: bool(newcomer.storage.Get(key)), limit=30.0)
    assert find(net, newcomer, key).values == [b"mine"]


@pytest.mark.parametrize("seed", [1, 2])
def test_lossy_network_stores_and_finds(seed):
    """10% of datagrams lost: retries and stalled-request handling keep it working."""
    net = build_network(30, seed=seed)
    net.loss = 0.10
    nodes = list(net.nodes.values())
    keys = [net.rng.randbytes(20) for _ in range(100)]
    stored = [store(net, net.rng.choice(nodes), key, key[:8]) for key in keys]
    assert all(len(outcome.ends) == 1 for outcome in stored)
    ok_stores = sum(outcome.ends == [None] for outcome in stored)
    finds = [find(net, net.rng.choice(nodes), key) for key in keys]
    net.run_until(lambda: False, limit=10.0)  # late events must not end anything twice
    assert all(len(outcome.ends) == 1 for outcome in stored + finds)
    ok_finds = sum(outcome.values == [key[:8]] for outcome, key in zip(finds, keys, strict=True))
    assert ok_stores >= 99 and ok_finds >= 99, (ok_stores, ok_finds, net.dropped)


def test_close_ends_pending_operations_once():
    net = build_network(10, seed=6)
    nodes = list(net.nodes.values())
    outcomes = []
    for i in range(20):
        outcome = Outcome()
        nodes[1].engine.find(bytes([i]) * 20, 0, outcome.value, outcome.find_done)
        outcomes.append(outcome)
        outcome = Outcome()
        nodes[1].engine.store(bytes([i + 100]) * 20, b"v", HOUR_NS, outcome.store_done)
        outcomes.append(outcome)
    nodes[1].engine.close()
    net.run_until(lambda: False, limit=5.0)
    assert all(len(outcome.ends) == 1 for outcome in outcomes)
    assert all(isinstance(outcome.ends[0], ClosedError) for outcome in outcomes)
    after = Outcome()
    nodes[1].engine.store(b"\x07" * 20, b"v", HOUR_NS, after.store_done)
    assert len(after.ends) == 1 and isinstance(after.ends[0], ClosedError)


def test_store_fails_with_counts_when_targets_are_gone():
    net = build_network(8, seed=8)
    nodes = list(net.nodes.values())
    # Every peer of node 1 goes silent after the lookup phase would need them.
    for node in nodes:
        if node is not nodes[1]:
            node.online = False
    outcome = store(net, nodes[1], b"\x33" * 20, b"v")
    assert len(outcome.ends) == 1
    error = outcome.ends[0]
    assert isinstance(error, StoreError)
    assert error.tried >= 1 and error.acknowledged <= 1 and error.needed > error.acknowledged


def test_a_silent_request_stalls_once_then_times_out_with_one_timer():
    net = SimNetwork(seed=9)
    node = net.add_node(timeout=1.0)
    silent = ("127.0.0.1", 9)  # nothing is attached there: no answer ever comes
    marks: list[tuple[str, float]] = []
    node.engine.request(
        silent,
        None,
        EventType.PING,
        None,
        lambda event, source: True,
        lambda error: marks.append(("failed", net.clock.now)),
        on_stall=lambda: marks.append(("stalled", net.clock.now)),
    )
    start = net.clock.now
    assert net.run_until(lambda: len(marks) == 2, limit=5.0)
    assert [kind for kind, _ in marks] == ["stalled", "failed"]
    assert marks[0][1] - start == pytest.approx(node.engine.stall_after)
    assert marks[1][1] - start == pytest.approx(node.engine.timeout)
    assert node.engine.pending_requests == 0


def test_an_answered_request_never_stalls():
    net = build_network(2, seed=10)
    a, b = net.nodes.values()
    stalls: list[float] = []
    answered: list[bool] = []
    a.engine.request(
        b.address,
        b.id,
        EventType.PING,
        None,
        lambda event, source: answered.append(True) or True,
        lambda error: pytest.fail(f"failed: {error}"),
        on_stall=lambda: stalls.append(net.clock.now),
    )
    net.run_until(lambda: False, limit=5.0)  # past both the stall and the timeout
    assert answered == [True] and stalls == []


def test_first_value_find_delivers_nothing_after_its_end():
    """With alpha queries in flight, the answers that come after the first
    holder's are dropped, not handed to the user after on_done."""
    net = build_network(30, seed=11)
    nodes = list(net.nodes.values())
    key = net.rng.randbytes(20)
    querier = nodes[3]
    for i, node in enumerate(nodes):
        if node is not querier:
            node.storage.Set(key, b"v%d" % i, 0, HOUR_NS)
    querier.engine.smoothed_rtt = None  # no hedge: alpha queries at once
    outcome = Outcome()
    querier.engine.find(key, 0, outcome.value, outcome.find_done, first_only=True)
    net.run_until(lambda: False, limit=5.0)
    assert outcome.ends == [None]
    assert outcome.values and outcome.final_values == outcome.values
    assert outcome.after_end == []


def test_a_find_ended_as_not_found_ignores_a_slow_holder_answering_later():
    net = build_network(40, seed=12)
    nodes = list(net.nodes.values())
    key = net.rng.randbytes(20)
    querier = nodes[0]
    holder = min(nodes[1:], key=lambda node: distance(node.id, key))
    holder.storage.Set(key, b"late", 0, HOUR_NS)
    send = holder.engine._transport
    # The holder answers after stall_after, so the lookup ends without it.
    holder.engine._transport = lambda datagrams, to: net.schedule(0.5, lambda: send(datagrams, to))
    outcome = Outcome()
    querier.engine.find(key, 0, outcome.value, outcome.find_done)
    net.run_until(lambda: False, limit=5.0)
    assert len(outcome.ends) == 1 and isinstance(outcome.ends[0], NotFoundError)
    assert outcome.values == [] and outcome.after_end == []


def scripted_pair(seed: int, replies, **asker_kwargs):
    """An asker and a peer that joined it. The peer answers each FIND_VALUE
    request with the events of ``replies`` (FindValue payloads), in order;
    other requests as usual."""
    net = SimNetwork(seed=seed)
    asker, peer = net.add_node(**asker_kwargs), net.add_node()
    joined = Outcome()
    peer.engine.bootstrap([asker.address], joined.store_done)
    assert net.run_until(lambda: joined.ended and peer.id in asker.engine.table)
    receive = peer.engine.receive

    def scripted_receive(event, source, size=None):
        if event.type is not EventType.FIND_VALUE or event.response:
            return receive(event, source, size)
        for payload in replies:
            reply = Event(event.id, peer.id, EventType.FIND_VALUE, True, payload)
            peer.engine._transport(fragment(reply.id, encode(reply)), source)

    peer.engine.receive = scripted_receive
    return net, asker


def test_a_split_answer_cut_short_by_an_answer_without_values_still_ends_the_find():
    """A hostile node sends the first part of a two-part answer, then a reply
    with no values for the same request: the Find must still end."""
    key = b"\x11" * 20
    first_part = FindValue(values=(Value(key, b"part-1", HOUR_NS, 0),), found=2)
    net, asker = scripted_pair(3, [first_part, FindValue(nodes=())])
    outcome = Outcome()
    asker.engine.find(key, 0, outcome.value, outcome.find_done)
    assert net.run_until(lambda: outcome.ended, limit=30.0)
    assert outcome.ends == [None] and outcome.values == [b"part-1"]
    assert not len(asker.engine.running)


def test_values_under_another_key_are_not_delivered():
    # A Find delivered whatever values an answer carried, whatever their key.
    key, other = b"\x12" * 20, b"\x13" * 20
    mixed = FindValue(values=(Value(other, b"forged", HOUR_NS, 0),), found=1)
    net, asker = scripted_pair(4, [mixed])
    outcome = Outcome()
    asker.engine.find(key, 0, outcome.value, outcome.find_done)
    assert net.run_until(lambda: outcome.ended, limit=30.0)
    assert outcome.values == [] and isinstance(outcome.ends[0], NotFoundError)
    assert asker.engine.stats.snapshot()["drop-wrong-key"] == 1


def test_a_duplicated_part_of_a_split_answer_does_not_end_it_early():
    """The first event of a two-event answer arrives twice (UDP may duplicate
    datagrams): the request still waits for, and delivers, the second."""
    key = b"\x66" * 20
    first, second = (
        FindValue(values=(Value(key, data, HOUR_NS, 0),), found=2) for data in (b"a", b"b")
    )
    net, asker = scripted_pair(21, [first, first, second])
    outcome = Outcome()
    asker.engine.find(key, 0, outcome.value, outcome.find_done)
    assert net.run_until(lambda: outcome.ended, limit=30.0)
    assert outcome.ends == [None] and sorted(outcome.values) == [b"a", b"b"]


def test_a_lookup_takes_at_most_k_nodes_from_one_answer():
    """A hostile node answers with hundreds of made-up nodes close to the key;
    the lookup asks at most K of them, not every one in turn."""
    key = b"\x55" * 20
    made_up = tuple(
        Node(key[:-2] + i.to_bytes(2, "big"), (f"127.0.9.{i % 250 + 1}", 1000 + i))
        for i in range(300)
    )
    net, asker = scripted_pair(20, [FindValue(nodes=made_up)], timeout=1.0)
    asked: set[tuple[str, int]] = set()
    send = asker.engine._transport

    def counting_transport(datagrams, destination):
        asked.add(destination)
        send(datagrams, destination)

    asker.engine._transport = counting_transport
    outcome = Outcome()
    asker.engine.find(key, 0, outcome.value, outcome.find_done)
    assert net.run_until(lambda: outcome.ended, limit=60.0)
    assert isinstance(outcome.ends[0], NotFoundError)
    assert len(asked & {node.address for node in made_up}) <= K


class FailingStorage:
    """A user storage whose Set and Get raise for one key (a full disk, say)."""

    def __init__(self, inner, key: bytes) -> None:
        self.inner, self.key = inner, key

    def Get(self, key: bytes, from_ns: int = 0):
        if key == self.key:
            raise OSError("disk unreadable")
        return self.inner.Get(key, from_ns)

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        if key == self.key:
            raise OSError("disk full")
        return self.inner.Set(key, value, created_ns, ttl_ns)

    def Iterate(self, fn) -> None:
        self.inner.Iterate(fn)


def network_with_a_failing_storage(key: bytes):
    """Ten nodes; the one closest to ``key`` (so one of its K targets) has a
    storage that raises for ``key``."""
    net = build_network(10, seed=19)
    nodes = list(net.nodes.values())
    failing = min(nodes, key=lambda n: distance(n.id, key))
    failing.engine.storage = FailingStorage(failing.storage, key)
    return net, nodes, failing


def test_a_storage_that_raises_neither_hangs_nor_fails_store_and_find():
    key = b"\x44" * 20
    net, _, node = network_with_a_failing_storage(key)
    stored = store(net, node, key, b"v")
    assert stored.ends == [None]  # the other replicas make the quorum
    found = find(net, node, key)  # the local read fails: it asks the network
    assert found.ends == [None] and found.values == [b"v"]
    assert node.engine.stats.snapshot()["storage-error"] == 2


def test_requests_from_the_network_to_a_node_whose_storage_raises_are_still_handled():
    # Its Set and Get were called unguarded when answering a STORE or a
    # FIND_VALUE: the raise was counted as handler-error, and the FIND_VALUE
    # went unanswered, so the asker waited out a timeout.
    key = b"\x44" * 20
    net, nodes, failing = network_with_a_failing_storage(key)
    other = max(nodes, key=lambda n: distance(n.id, key))
    assert store(net, other, key, b"v").ends == [None]
    answers: list[Event] = []
    other.engine.request(
        failing.address,
        failing.id,
        EventType.FIND_VALUE,
        FindValue(key=key),
        lambda event, source: answers.append(event) or True,
        lambda error: answers.append(error),
    )
    started = net.clock.now
    assert net.run_until(lambda: bool(answers))
    [answer] = answers
    assert isinstance(answer, Event) and answer.payload.nodes and not answer.payload.values
    assert net.clock.now - started < other.engine.timeout
    stats = failing.engine.stats.snapshot()
    assert "handler-error" not in stats
    assert stats["storage-error"] == 2  # the STORE's Set, the FIND_VALUE's Get


def test_a_storage_whose_expire_raises_does_not_stop_the_periodic_refresh():
    net = build_network(2, seed=22, schedule=Schedule(maintenance_interval=1.0))
    node = list(net.nodes.values())[1]

    class BrokenSweep(FailingStorage):
        def expire(self) -> int:
            raise OSError("disk unreadable")

    node.engine.storage = BrokenSweep(node.storage, b"")
    net.run_until(lambda: False, limit=5.5)
    assert node.engine.stats.snapshot()["storage-error"] >= 4  # one per refresh


def ping(asker, peer, on_response, on_failure) -> None:
    asker.engine.request(peer.address, peer.id, EventType.PING, None, on_response, on_failure)


def test_a_timeout_while_the_response_is_handled_does_not_end_the_request_again():
    """The timer thread may fire a request's timeout while a listener runs its
    response callback; here the callback fires it itself, deterministically."""
    net = build_network(2, seed=16)
    a, b = net.nodes.values()
    ends: list[str] = []

    def on_response(event, source) -> bool:
        a.engine.requests._expired(request)  # what the timer thread can do meanwhile
        ends.append("response")
        return True

    ping(a, b, on_response, lambda error: ends.append(type(error).__name__))
    request = next(r for r in a.engine.requests._pending.values() if r.on_response is on_response)
    net.run_until(lambda: False, limit=5.0)  # past the timeout
    assert ends == ["response"]
    assert a.engine.pending_requests == 0
    assert "request-timeout" not in a.engine.stats.snapshot()


def test_close_while_a_response_awaits_more_ends_the_request_once():
    net = build_network(2, seed=17)
    a, b = net.nodes.values()
    ends: list[str] = []

    def on_response(event, source) -> bool:
        a.engine.close()  # another thread closes the node meanwhile
        ends.append("response")
        return False  # more events expected

    ping(a, b, on_response, lambda error: ends.append(type(error).__name__))
    net.run_until(lambda: False, limit=5.0)
    assert ends == ["response", "ClosedError"]
    assert a.engine.pending_requests == 0


def test_a_request_awaiting_more_stops_waiting_after_a_stall():
    """A split answer whose promised parts never come (a ``found`` count
    that never arrives) held a Find for the whole timeout: the rest must
    come within ``stall_after`` of the last part."""
    net = build_network(2, seed=18, timeout=1.0)
    a, b = net.nodes.values()
    marks: list[tuple[str, float]] = []
    ping(
        a,
        b,
        lambda event, source: marks.append(("response", net.clock.now)) or False,
        lambda error: marks.append((type(error).__name__, net.clock.now)),
    )
    assert net.run_until(lambda: len(marks) == 2, limit=5.0)
    assert [kind for kind, _ in marks] == ["response", "RequestTimeout"]
    assert marks[1][1] - marks[0][1] == pytest.approx(a.engine.stall_after)
    assert a.engine.stall_after < a.engine.timeout


def test_a_request_awaiting_more_times_out_when_its_first_send_does():
    """A trickle of parts, each within ``stall_after`` of the last, does not
    keep a request alive past its own timeout."""
    net = build_network(2, seed=18, timeout=1.0)
    a, b = net.nodes.values()
    marks: list[tuple[str, float]] = []
    pinged: list[Event] = []
    receive = b.engine.receive

    def trickle(event, source, size=None):  # b answers each PING every 0.2 s, forever
        if event.type is not EventType.PING or event.response:
            return receive(event, source, size)
        pinged.append(event)

        def part() -> None:
            pong = Event(event.id, b.id, EventType.PONG, True, None)
            b.engine._transport(fragment(pong.id, encode(pong)), source)
            net.schedule(0.2, part)

        part()

    b.engine.receive = trickle
    ping(
        a,
        b,
        lambda event, source: marks.append(("response", net.clock.now)) or False,
        lambda error: marks.append((type(error).__name__, net.clock.now)),
    )
    start = net.clock.now
    assert net.run_until(lambda: marks and marks[-1][0] != "response", limit=5.0)
    assert [kind for kind, _ in marks] == ["response"] * (len(marks) - 1) + ["RequestTimeout"]
    assert len(marks) >= 5
    assert marks[-1][1] - start == pytest.approx(a.engine.timeout, abs=0.01)


def test_round_trips_are_measured_only_from_requests_sent_once():
    """Karn's rule: the answer to a resent request may answer either send, so
    it is no round-trip sample; an answer to a request sent once is."""
    net = SimNetwork(seed=15)
    asker, answerer = net.add_node(timeout=1.0), net.add_node(timeout=1.0)
    answered: list[float] = []

    def ping() -> None:
        asker.engine.request(
            answerer.address,
            answerer.id,
            EventType.PING,
            None,
            lambda event, source: answered.append(net.clock.now) or True,
            lambda error: pytest.fail(f"failed: {error}"),
            retries=1,
        )

    answerer.online = False  # the first send is lost
    ping()
    assert net.run_until(lambda: False, limit=0.5) is False
    answerer.online = True
    assert net.run_until(lambda: len(answered) == 1, limit=2.0)
    assert asker.engine.stats.snapshot().get("request-retried") == 1
    assert asker.engine.smoothed_rtt is None
    ping()  # sent once: measured
    assert net.run_until(lambda: len(answered) == 2, limit=2.0)
    assert asker.engine.smoothed_rtt == pytest.approx(2 * net.latency)


def test_a_lookup_moves_on_from_a_silent_node_before_its_timeout():
    net = build_network(30, seed=11, timeout=2.0)
    nodes = list(net.nodes.values())
    key = b"\x5a" * 20
    storer = nodes[4]
    # One of the K closest nodes to the key goes silent: the store's lookup
    # must not wait for that request's 2 s timeout.
    silent = storer.engine.table.closest(key, 1)[0]
    for node in nodes:
        if node.id == silent.id:
            node.online = False
    start = net.clock.now
    assert store(net, storer, key, b"v").ends == [None]
    assert net.clock.now - start < storer.engine.timeout


def test_a_joining_node_is_pinged_by_those_it_asks_and_pings_none_back():
    """Those the joiner asks verify it with a ping; our answers go out before
    our pings, so the joiner already knows who pings it and does not ping back."""
    net = build_network(30, seed=12)
    first = next(iter(net.nodes.values()))
    joiner = net.add_node()
    asked: list[tuple[EventType, bytes | None]] = []
    request = joiner.engine.requests.request

    def recording(address, node_id, kind, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append((kind, node_id))
        return request(address, node_id, kind, *args, **kwargs)

    joiner.engine.requests.request = recording  # type: ignore[method-assign]
    joined = Outcome()
    joiner.engine.bootstrap([first.address], joined.store_done)
    net.run_until(lambda: False, limit=5.0)  # the join, then every ping it causes
    assert joined.ends == [None]
    kinds = [kind for kind, _ in asked]
    assert kinds.count(EventType.FIND_NODE) >= K // 2
    assert EventType.PING not in kinds
    knowing = [node for node in net.nodes.values() if joiner.id in node.engine.table]
    assert len(knowing) >= K // 2


def _first_value(net: SimNetwork, node, key: bytes) -> tuple[Outcome, int, float]:
    """A FirstValue find: its outcome, datagrams sent and virtual seconds taken."""
    outcome = Outcome()
    sent, start = net.sent, net.clock.now
    node.engine.find(key, 0, outcome.value, outcome.find_done, first_only=True)
    assert net.run_until(lambda: outcome.ended)
    return outcome, net.sent - sent, net.clock.now - start


def _non_holders(net: SimNetwork, key: bytes) -> list:
    return [node for node in net.nodes.values() if not node.storage.Get(key)]


def test_first_value_find_asks_one_node_when_the_closest_holds_the_key():
    net = build_network(40, seed=12)
    nodes = list(net.nodes.values())
    keys = [bytes([i]) * 20 for i in range(1, 21)]
    for key in keys:
        assert store(net, nodes[0], key, b"v").ends == [None]
    datagrams = []
    for key in keys:
        asker = _non_holders(net, key)[0]
        assert asker.engine.smoothed_rtt is not None  # it has measured round trips
        outcome, sent, _ = _first_value(net, asker, key)
        assert outcome.ends == [None] and outcome.values == [b"v"]
        datagrams.append(sent)
    # One request and its answer, unless the closest known node missed;
    # asking alpha = 3 nodes at once would cost 6.
    assert datagrams.count(2) >= 15, datagrams
    assert sum(datagrams) / len(datagrams) < 3, datagrams


def test_first_value_find_asks_alpha_nodes_before_any_round_trip_is_measured():
    net = build_network(40, seed=13)
    nodes = list(net.nodes.values())
    key = b"\x42" * 20
    assert store(net, nodes[0], key, b"v").ends == [None]
    asker = _non_holders(net, key)[0]
    asker.engine.smoothed_rtt = None
    outcome, sent, _ = _first_value(net, asker, key)
    assert outcome.ends == [None] and sent >= 6  # three requests went out at once


def test_first_value_find_widens_after_the_hedge_delay_when_the_first_node_is_silent():
    net = build_network(40, seed=14, timeout=2.0)
    nodes = list(net.nodes.values())
    key = b"\x24" * 20
    assert store(net, nodes[0], key, b"v").ends == [None]
    asker = _non_holders(net, key)[0]
    first = asker.engine.table.closest(key, 1)[0]
    for node in nodes:
        if node.id == first.id:
            node.online = False
    hedge = asker.engine.hedge_delay()
    assert hedge is not None and hedge < asker.engine.stall_after
    outcome, _, took = _first_value(net, asker, key)
    assert outcome.ends == [None] and outcome.values == [b"v"]
    # Not the stall (0.5 s) nor the timeout (2 s): the hedge plus a round trip.
    assert took < hedge + 0.05 < asker.engine.stall_after


def test_expiry_sweeps_queue_once_and_none_runs_after_close() -> None:
    # Each refresh queued a sweep on the worker whatever was queued already,
    # so one node's slow scan piled them up; and they ran on a closed
    # node's storage after Close returned.
    net = SimNetwork(seed=44)
    node = net.add_node()
    sweeps = 0

    class CountingStorage(MemoryStorage):
        def expire(self) -> int:
            nonlocal sweeps
            sweeps += 1
            return super().expire()

    node.engine.storage = CountingStorage(clock_ns=net.clock.wall_ns)
    jobs: list[Callable[[], None]] = []
    node.engine.background = jobs.append  # a busy worker, run by hand
    for _ in range(3):
        node.engine.maintenance.run()
    assert len(jobs) == 1
    jobs.pop()()
    assert sweeps == 1
    node.engine.maintenance.run()
    node.engine.close()
    jobs.pop()()
    assert sweeps == 1 and not jobs
