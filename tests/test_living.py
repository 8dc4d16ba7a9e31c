"""The living network on virtual time: bucket refresh, republishing,
replication, per-contact timeouts and latency-aware lookups (``dht.core``
``refresh``, ``republish``, ``replication``, ``roundtrip``, ``lookup``)."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import pytest
from simnet import Outcome, SimNetwork, SimNode
from test_faults import sim_find, sim_join

import dht.core.refresh as refresh_module
from dht.core.operations import NodeLookup
from dht.core.roundtrip import MIN_RTO
from dht.core.schedule import Schedule
from dht.errors import NotFoundError
from dht.sim.latency import address_number
from dht.wire.events import NS_PER_SECOND, Address, Event, EventType, Value

pytestmark = pytest.mark.timeout(120)


def network(count: int, seed: int, **schedule: object) -> tuple[SimNetwork, list[SimNode]]:
    """``count`` nodes joined through the first, each with ``schedule``."""
    net = SimNetwork(seed=seed)
    plan = Schedule(**schedule)  # type: ignore[arg-type]
    first = net.add_node(schedule=plan)
    nodes = [first]
    for _ in range(count - 1):
        node = net.add_node(schedule=plan)
        sim_join(net, node, first)
        nodes.append(node)
    return net, nodes


def idle(net: SimNetwork, seconds: float) -> None:
    """Let ``seconds`` of virtual time pass, every timer and datagram with it."""
    passed: list[bool] = []
    net.schedule(seconds, lambda: passed.append(True))
    assert net.run_until(lambda: bool(passed), limit=seconds + 1.0)


def store(net: SimNetwork, node: SimNode, key: bytes, data: bytes, ttl: float) -> None:
    done = Outcome()
    node.engine.store(key, data, int(ttl * NS_PER_SECOND), done.store_done)
    assert net.run_until(lambda: done.ended, limit=60)
    assert done.ends == [None], done.ends


def copies(nodes: list[SimNode], key: bytes) -> list[tuple[SimNode, Value]]:
    """Every live copy of ``key``'s values, with the node keeping it."""
    out: list[tuple[SimNode, Value]] = []
    for node in nodes:
        out += [(node, value) for value in node.storage.Get(key)]
    return out


class RefreshLog:
    """Every refresh lookup of every node: (node id, start, end, bucket)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lookups: list[list[object]] = []
        log = self.lookups

        class Recorded(NodeLookup):
            def start(self) -> None:
                table = self.context.table
                self.record = [table.local_id, self.context.clock(), None, 0]
                self.record[3] = table.bucket_index(self.target)
                log.append(self.record)
                super().start()

            def report(self, error: Exception | None) -> None:
                self.record[2] = self.context.clock()
                super().report(error)

        monkeypatch.setattr(refresh_module, "NodeLookup", Recorded)

    def of(self, node: SimNode) -> list[tuple[float, float | None, int]]:
        return [(s, e, b) for n, s, e, b in self.lookups if n == node.id]  # type: ignore[misc]


# -- bucket refresh ------------------------------------------------------------


def test_a_bucket_is_refreshed_once_per_interval_unless_lookups_pass_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = RefreshLog(monkeypatch)
    net, nodes = network(30, seed=71, maintenance_interval=10.0, refresh_interval=300.0)
    joined = net.clock.now
    node = nodes[5]
    busy = 159  # the farthest half: every node has contacts there
    key = node.engine.table.random_id_in(busy, bytes(20))
    for _ in range(12):  # a lookup through the busy bucket every 100 s
        outcome = sim_find(node, key, first_only=False)
        assert net.run_until(lambda outcome=outcome: outcome.ended, limit=60)
        idle(net, 100.0)
    assert net.clock.now - joined > 3 * 300.0
    assert all(start >= joined - 60.0 + 300.0 for _, start, _, _ in log.lookups)  # type: ignore[operator]
    for peer in nodes:
        starts = defaultdict(list)
        for start, _, bucket in log.of(peer):
            starts[bucket].append(start)
        assert starts, f"{peer} refreshed nothing in three intervals"
        for times in starts.values():  # once per interval at most
            assert all(b - a >= 300.0 for a, b in itertools.pairwise(times)), times
    assert busy not in {bucket for _, _, bucket in log.of(node)}
    assert busy in {bucket for _, _, bucket in log.of(nodes[6])}


def test_a_node_back_from_a_long_pause_refreshes_a_few_buckets_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = RefreshLog(monkeypatch)
    net, nodes = network(40, seed=72, maintenance_interval=10.0, refresh_interval=300.0)
    node = nodes[3]
    idle(net, 20.0)  # a round has seen its buckets
    node.engine.maintenance.stop()  # its timer thread stalls...
    idle(net, 10 * 300.0)
    due = node.engine.table.due_for_refresh(net.clock.now, 300.0)
    assert len(due) > 2 * node.engine.context.schedule.refresh_lookups
    node.engine.maintenance._stopped = False  # ...and wakes
    node.engine.maintenance.start()
    idle(net, 10 * 10.0)
    mine = log.of(node)
    assert len(mine) >= len(due)  # all refreshed within a few rounds
    assert max(Counter(start for start, _, _ in mine).values()) <= 2  # per round
    for start, _, _ in mine:  # never more than two running
        running = [1 for s, e, _ in mine if s <= start and (e is None or e > start)]
        assert len(running) <= 2


# -- republishing ---------------------------------------------------------------


def test_a_stored_value_is_republished_each_interval_and_near_its_end_no_more() -> None:
    net, nodes = network(25, seed=73, maintenance_interval=10.0, republish_interval=200.0)
    node = nodes[4]
    stats = node.engine.stats
    store(net, node, b"k" * 20, b"long", ttl=10_000.0)
    store(net, node, b"s" * 20, b"short", ttl=300.0)
    start = net.clock.now
    # "short": due at half its remaining life (150 s), then at 225 s; then
    # less than a minute would be left at the next, so it is dropped.
    idle(net, 140.0)
    assert stats.snapshot().get("values-republished", 0) == 0
    idle(net, 20.0)  # 160 s: short once
    assert stats.snapshot()["values-republished"] == 1
    idle(net, 50.0)  # 210 s: long once (200 s + a round)
    assert stats.snapshot()["values-republished"] == 2
    idle(net, 30.0)  # 240 s: short again (225 s + a round)
    assert stats.snapshot()["values-republished"] == 3
    idle(net, 200.0)  # 440 s: long again; short expired at 300 s
    assert stats.snapshot()["values-republished"] == 4
    assert len(node.engine.publications) == 1
    assert node.engine.stop_republishing(b"k" * 20) == 1
    idle(net, 400.0)
    assert stats.snapshot()["values-republished"] == 4
    assert net.clock.now - start > 800.0


def test_republished_and_replicated_copies_expire_at_the_first_copys_instant() -> None:
    net, nodes = network(
        30,
        seed=74,
        maintenance_interval=10.0,
        republish_interval=100.0,
        replicate_interval=100.0,
    )
    key = b"e" * 20
    store(net, nodes[2], key, b"value", ttl=1000.0)
    first = copies(nodes, key)[0][1]
    expires = first.created_ns + first.ttl_ns
    holders = {node.id for node, _ in copies(nodes, key)}
    # Newcomers closer to the key than some holders get copies from
    # replication and key transfer; old holders leave.
    for _ in range(10):
        newcomer = net.add_node(schedule=nodes[0].engine.context.schedule)
        sim_join(net, newcomer, nodes[0])
        nodes.append(newcomer)
    for node in nodes[5:15]:
        node.crash()
    live = [node for node in nodes if node.online]
    idle(net, 500.0)
    now_copies = copies(live, key)
    assert {node.id for node, _ in now_copies} - holders, "no copy was made after the store"
    assert sum(n.engine.stats.snapshot().get("values-replicated", 0) for n in live) > 0
    assert sum(n.engine.stats.snapshot().get("values-republished", 0) for n in live) > 0
    for _, value in now_copies:
        assert value.created_ns + value.ttl_ns == expires
    # Just before the instant the value is still found; at it, gone everywhere.
    idle(net, (expires - net.clock.wall_ns()) / NS_PER_SECOND - 5.0)
    found = sim_find(live[-1], key, first_only=True)
    assert net.run_until(lambda: found.ended, limit=60) and found.ends == [None]
    idle(net, (expires - net.clock.wall_ns()) / NS_PER_SECOND + 0.001)
    assert copies(live, key) == []
    gone = sim_find(live[-1], key, first_only=False)
    assert net.run_until(lambda: gone.ended, limit=60)
    assert isinstance(gone.ends[0], NotFoundError)


# -- replication ------------------------------------------------------------------


def test_replication_skips_a_value_received_within_the_interval() -> None:
    net, nodes = network(25, seed=75, maintenance_interval=10.0, replicate_interval=100.0)
    key = b"r" * 20
    store(net, nodes[1], key, b"value", ttl=5000.0)
    holder = next(node for node, _ in copies(nodes[2:], key))
    replication = holder.engine.replication
    assert replication._choose() == {}  # received by STORE just now
    idle(net, 100.0 + 10.0)  # an interval, in which others may have re-sent it
    chosen = replication._choose()
    received = any(
        when >= net.clock.wall_ns() - 100 * NS_PER_SECOND for when in replication._received.values()
    )
    assert bool(chosen) is not received
    # Across the network one holder sends each round, not every holder: the
    # STOREs of the first to send make the others skip it.
    idle(net, 400.0)
    senders = [n for n in nodes if n.engine.stats.snapshot().get("replicate-bytes", 0)]
    holders = [node for node, _ in copies(nodes, key)]
    assert 1 <= len(senders) <= len(holders) // 4, (len(senders), len(holders))


# -- per-contact timeouts and latency-aware lookups ----------------------------------


class SlowPeers:
    """One-way delays: ``slow`` seconds to and from the slow addresses, else ``fast``."""

    def __init__(self, fast: float) -> None:
        self.fast = fast
        self.slow: dict[int, float] = {}

    def one_way(self, a: int, b: int) -> float:
        return max(self.slow.get(a, self.fast), self.slow.get(b, self.fast))

    @property
    def median_rtt(self) -> float:
        return 2 * self.fast

    def describe(self) -> str:
        return "test: some peers slow"


def ping(net: SimNetwork, asker: SimNode, peer: SimNode) -> float | None:
    """Seconds the ping took, or None if it timed out."""
    ends: list[float | None] = []
    sent = net.clock.now
    asker.engine.request(
        peer.address,
        peer.id,
        EventType.PING,
        None,
        lambda event, source: bool(ends.append(net.clock.now - sent)) or True,
        lambda error: ends.append(None),
    )
    assert net.run_until(lambda: bool(ends), limit=30)
    return ends[0]


def test_a_contacts_timeout_follows_its_round_trip_when_a_delay_is_injected() -> None:
    net = SimNetwork(seed=76)
    latency = SlowPeers(0.005)
    net.latency_model = latency
    asker, peer = net.add_node(timeout=2.0), net.add_node(timeout=2.0)
    sim_join(net, peer, asker)
    for _ in range(10):
        assert ping(net, asker, peer) is not None
    assert asker.engine.table.rto(peer.id, peer.address) == pytest.approx(MIN_RTO)

    latency.slow[address_number(peer.address)] = 0.4  # 800 ms round trips now
    outcomes = [ping(net, asker, peer) for _ in range(12)]
    assert outcomes[0] is None  # waited its old RTO, not the 2 s timeout
    assert all(o is not None for o in outcomes[-6:]), outcomes  # adapted: answered
    rto = asker.engine.table.rto(peer.id, peer.address)
    assert rto is not None and 0.8 < rto < 2.0

    latency.slow.clear()
    for _ in range(30):
        assert ping(net, asker, peer) is not None
    back = asker.engine.table.rto(peer.id, peer.address)
    assert back is not None and back < 0.5 * rto


def test_a_request_to_a_dead_contact_fails_after_its_rto_not_the_timeout() -> None:
    net = SimNetwork(seed=77)
    asker, peer = net.add_node(timeout=5.0), net.add_node(timeout=5.0)
    sim_join(net, peer, asker)
    assert ping(net, asker, peer) is not None
    peer.online = False
    started = net.clock.now
    assert ping(net, asker, peer) is None
    assert net.clock.now - started < 2 * MIN_RTO


def first_asked(net: SimNetwork, asker: SimNode, key: bytes, nodes: list[SimNode]) -> SimNode:
    """Which of ``nodes`` the first FIND_VALUE of a FirstValue Find went to."""
    asked: list[SimNode] = []

    class Observer:
        def deliver(self, node: SimNode, event: Event, source: Address, size: int) -> None:
            if event.type is EventType.FIND_VALUE and not event.response:
                asked.append(node)
            node.engine.receive(event, source, size)

    for node in nodes:
        node.observer = Observer()
    found = sim_find(asker, key, first_only=True)
    assert net.run_until(lambda: found.ended, limit=60)
    assert found.ends == [None] and found.final_values == [b"both"]
    for node in nodes:
        node.observer = None
    return asked[0]


@pytest.mark.parametrize("aware", [True, False])
def test_a_lookup_asks_the_faster_of_two_equally_close_nodes_first(aware: bool) -> None:
    net = SimNetwork(seed=78)
    latency = SlowPeers(0.005)
    net.latency_model = latency
    key = bytes(range(20))
    near = int.from_bytes(key, "big")
    schedule = Schedule(latency_aware_routing=aware)
    asker = net.add_node(schedule=schedule)
    # Both share the key's first 150 bits; the slow one is the closer.
    slow = net.add_node((near ^ 0b1000_0000_00).to_bytes(20, "big"), schedule=schedule)
    fast = net.add_node((near ^ 0b1000_0000_01).to_bytes(20, "big"), schedule=schedule)
    for node in (slow, fast):
        sim_join(net, node, asker)
    idle(net, 1.0)  # key transfer done: the asker must not hold the value
    for node in (slow, fast):
        node.storage.Set(key, b"both", net.clock.wall_ns(), 3600 * NS_PER_SECOND)
    latency.slow[address_number(slow.address)] = 0.1  # 20 x the fast round trip
    for node in (slow, fast):  # measured (the slow one times out first, then adapts)
        assert [ping(net, asker, node) for _ in range(6)][-3:].count(None) == 0
    first = first_asked(net, asker, key, [slow, fast])
    assert first is (fast if aware else slow)
