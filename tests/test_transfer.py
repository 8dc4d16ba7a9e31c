"""Key transfer (D34): which values a newly seen node is sent, when, and
that the scan of a large store never blocks a thread for long: core on
simnet."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from simnet import Outcome, SimNetwork, SimNode

import dht.core.shipping as shipping_module
import dht.core.transfer as transfer_module
from dht.core.callbacks import ignore
from dht.core.limits import Limits
from dht.core.routing import SUSPECT_AFTER_FAILURES
from dht.core.schedule import Schedule
from dht.core.storage import MemoryStorage, Storage
from dht.keys import K, distance, random_id
from dht.wire import EventType, Node, Value


def test_a_node_seen_twice_within_the_refresh_interval_is_sent_keys_once() -> None:
    net = SimNetwork(seed=35)
    holder, newcomer = net.add_node(schedule=Schedule(maintenance_interval=60.0)), net.add_node()
    for i in range(3):
        assert holder.storage.Set(random_id(), b"v%d" % i, net.clock.wall_ns(), 10**12)
    for _ in range(2):
        holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
        net.run_until(lambda: False, limit=1.0)
    assert holder.engine.stats.snapshot()["values-transferred"] == 3
    net.clock.now += 61.0  # a refresh interval later it is served again
    holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    net.run_until(lambda: False, limit=1.0)
    assert holder.engine.stats.snapshot()["values-transferred"] == 6


def test_the_key_transfer_record_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer_module, "TRANSFERRED_NODES", 10)
    net = SimNetwork(seed=36)
    holder = net.add_node()
    for i in range(30):
        holder.engine.transfer.offer(Node(random_id(), (f"127.0.2.{i + 1}", 5000)))
    assert len(holder.engine.transfer.served()) == 10


S = TypeVar("S", bound=Storage)


def _holder_of(
    make_storage: Callable[[Callable[[], int]], S], count: int, *, seed: int
) -> tuple[SimNetwork, SimNode, S]:
    """A node whose storage (made with the network's clock) holds ``count`` values."""
    net = SimNetwork(seed=seed)
    holder = net.add_node()
    storage = make_storage(net.clock.wall_ns)
    holder.engine.storage = storage
    for i in range(count):
        assert storage.Set(random_id(), b"v%d" % i, net.clock.wall_ns(), 10**12)
    return net, holder, storage


class ProtocolOnlyStorage:
    """A user storage with only the protocol's methods, counting the scans
    of the whole store (its ``Iterate`` calls)."""

    def __init__(self, clock_ns: Callable[[], int]) -> None:
        self.inner = MemoryStorage(clock_ns=clock_ns)
        self.scans = 0

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        return self.inner.Get(key, from_ns)

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        return self.inner.Set(key, value, created_ns, ttl_ns)

    def Iterate(self, fn: Callable[[Value], bool]) -> None:
        self.scans += 1
        self.inner.Iterate(fn)


def test_key_transfer_scans_the_store_in_the_background_once_for_all_new_nodes() -> None:
    # The scan ran on the listener thread, for each newly seen node: with
    # 100,000 values a node stopped answering for a second per fresh node id.
    net, holder, storage = _holder_of(ProtocolOnlyStorage, 1000, seed=37)
    newcomers = [net.add_node() for _ in range(3)]
    jobs = []
    holder.engine.background = jobs.append  # the worker, run by hand here
    for newcomer in newcomers:  # seen one after another, as from one datagram burst
        holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    assert storage.scans == 0  # nothing scanned on the caller's thread
    assert net.run_until(lambda: bool(jobs), limit=1.0)
    assert len(jobs) == 1 and holder.engine.transfer.scanning  # one scan for all three
    while jobs:  # the scan, then a check for nodes queued meanwhile
        jobs.pop(0)()
    assert storage.scans == 1 and not holder.engine.transfer.scanning
    net.run_until(lambda: False, limit=5.0)
    # A network smaller than K: each newcomer is sent every value.
    assert holder.engine.stats.snapshot()["values-transferred"] == 3 * 1000
    assert all(len(newcomer.storage) == 1000 for newcomer in newcomers)  # type: ignore[arg-type]


def test_nodes_queued_during_every_scan_neither_recurse_nor_stop_key_transfer() -> None:
    # The end of a scan started the next one by a direct call: with a node
    # newly seen during each scan the stack grew until RecursionError, which
    # left the scan flag set, so no node was ever served again.
    net = SimNetwork(seed=38)
    holder = net.add_node()
    scans = 0

    class QueueingStorage(MemoryStorage):
        def Iterate(self, fn: Callable[[Value], bool]) -> None:
            nonlocal scans
            scans += 1
            if scans < 1500:  # a listener sees a new node meanwhile
                holder.engine.transfer.offer(Node(random_id(), ("127.0.2.2", 1000 + scans)))
            super().Iterate(fn)

    storage = QueueingStorage(clock_ns=net.clock.wall_ns)
    assert storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    holder.engine.storage = storage
    holder.engine.transfer.offer(Node(random_id(), ("127.0.2.2", 999)))
    assert net.run_until(lambda: not holder.engine.transfer.scanning, limit=600.0)
    assert scans == 1500
    assert "transfer-error" not in holder.engine.stats.snapshot()


def test_a_scan_that_raises_is_counted_and_the_next_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug in one scan must not leave the scan flag set: no node would
    # ever be served again.
    net = SimNetwork(seed=42)
    holder = net.add_node()
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    calls = 0
    batch_values = shipping_module.batch_values

    def batch_values_failing_once(values: list[Value], budget: int) -> list[tuple[Value, ...]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the first scan")
        return batch_values(values, budget)

    monkeypatch.setattr(shipping_module, "batch_values", batch_values_failing_once)
    holder.engine.transfer.offer(Node(random_id(), ("127.0.2.3", 1)))  # its scan raises
    assert net.run_until(lambda: not holder.engine.transfer.scanning, limit=5.0)
    newcomer = net.add_node()
    holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    net.run_until(lambda: False, limit=5.0)
    assert holder.engine.stats.snapshot()["transfer-error"] == 1
    assert len(newcomer.storage) == 1  # type: ignore[arg-type]


def test_sybils_on_one_address_cannot_fill_the_key_transfer_queue() -> None:
    net = SimNetwork(seed=39)
    holder = net.add_node()
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    for i in range(100):  # newly seen ids, all on one address
        holder.engine.transfer.offer(Node(random_id(), ("127.0.3.3", 2000 + i)))
    assert len(holder.engine.transfer.queued()) == transfer_module.TRANSFER_QUEUE
    newcomer = net.add_node()
    holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    assert newcomer.id in holder.engine.transfer.queued()
    net.run_until(lambda: False, limit=5.0)
    assert len(newcomer.storage) == 1  # type: ignore[arg-type]


def test_a_newcomer_skipped_by_a_full_transfer_queue_is_served_at_the_next_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Skipped nodes were never served: key transfer starts only when a node
    # is first seen.
    monkeypatch.setattr(transfer_module, "TRANSFER_QUEUE", 1)
    net = SimNetwork(seed=41)
    holder = net.add_node(schedule=Schedule(maintenance_interval=10.0))
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    holder.engine.transfer.offer(Node(random_id(), ("127.0.5.5", 1)))  # fills the queue
    newcomer = net.add_node()
    holder.engine.table.add_verified(newcomer.id, newcomer.address, net.clock.now)
    holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    assert holder.engine.stats.snapshot()["transfer-skipped"] == 1
    net.run_until(lambda: False, limit=5.0)
    assert len(newcomer.storage) == 0  # type: ignore[arg-type]
    assert net.run_until(lambda: len(newcomer.storage) == 1, limit=30.0)  # type: ignore[arg-type]


def test_a_suspect_contact_is_sent_keys_only_once_it_answers_again() -> None:
    # A contact that stopped answering stays in the table (the stall may be
    # ours); sending it keys at every refresh would only time out.
    net = SimNetwork(seed=42)
    holder = net.add_node(schedule=Schedule(maintenance_interval=10.0))
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    gone = net.add_node()
    gone.online = False
    holder.engine.table.add_verified(gone.id, gone.address, net.clock.now)
    for _ in range(SUSPECT_AFTER_FAILURES):
        holder.engine.table.failed(gone.id, gone.address)
    net.run_until(lambda: False, limit=25.0)  # two refreshes
    assert gone.id not in holder.engine.transfer.served()
    assert gone.id in holder.engine.table
    gone.online = True  # the next refresh's ping is answered, the one after serves it
    assert net.run_until(lambda: len(gone.storage) == 1, limit=30.0)  # type: ignore[arg-type]


def test_newcomers_sharing_an_address_all_get_their_keys() -> None:
    # A loopback cluster again: with at most 4 queued newcomers per address,
    # 8 of 12 nodes joining at once got no keys.
    net = SimNetwork(seed=8, one_host=True)
    holder = net.add_node()
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    newcomers = [net.add_node() for _ in range(12)]
    joined = [Outcome() for _ in newcomers]
    for newcomer, outcome in zip(newcomers, joined, strict=True):
        newcomer.engine.bootstrap([holder.address], outcome.store_done)
    assert net.run_until(lambda: all(len(n.storage) == 1 for n in newcomers), limit=10.0)  # type: ignore[arg-type]


def test_a_scan_chooses_after_iterate_returns_what_each_node_should_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The choosing ran inside the storage's Iterate: a user storage that
    # holds its lock while iterating kept its node's listeners from Get and
    # Set for the whole selection. And the per-key cache of K closest nodes
    # grew with the store (70 MB for 30,000 keys); it is bounded now.
    monkeypatch.setattr(transfer_module, "CLOSEST_CACHED", 2)
    net = SimNetwork(seed=43)
    holder = net.add_node()
    for i in range(30):  # a table of K or more: values are chosen per node
        holder.engine.table.add_verified(random_id(), (f"127.0.4.{i + 1}", 4000), net.clock.now)
    newcomer = net.add_node()
    holder.engine.table.add_verified(newcomer.id, newcomer.address, net.clock.now)
    iterating = False
    table_read_while_iterating = []
    closest = holder.engine.table.closest

    def watched_closest(key: bytes, count: int) -> list[Node]:
        table_read_while_iterating.append(iterating)
        return closest(key, count)

    monkeypatch.setattr(holder.engine.table, "closest", watched_closest)

    class WatchedStorage(MemoryStorage):
        def Iterate(self, fn: Callable[[Value], bool]) -> None:
            nonlocal iterating
            iterating = True
            try:
                super().Iterate(fn)
            finally:
                iterating = False

    storage = WatchedStorage(clock_ns=net.clock.wall_ns)
    holder.engine.storage = storage
    keys = [random_id() for _ in range(200)]
    for key in keys:
        assert storage.Set(key, b"v" + key, net.clock.wall_ns(), 10**12)
    local, theirs = holder.id, newcomer.id
    expected = {
        key
        for key in keys
        if distance(theirs, key) < distance(local, key)
        and theirs in {n.id for n in closest(key, K)}
    }
    assert expected  # the test means something
    holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    net.run_until(lambda: False, limit=5.0)
    assert table_read_while_iterating and not any(table_read_while_iterating)
    got = {key for key in keys if newcomer.storage.Get(key)}
    assert got == expected


# ---------------------------------------------------------------------------
# Under a budget: 256 fresh ids a wave drew 863 MiB from a node holding 20 MB


def _holder_with(count: int, size: int, seed: int, **engine_kwargs: object) -> tuple:
    net = SimNetwork(seed=seed)
    holder = net.add_node(**engine_kwargs)
    for i in range(count):
        assert holder.storage.Set(random_id(), bytes([i % 256]) * size, net.clock.wall_ns(), 10**12)
    return net, holder


def _stores_to(net: SimNetwork, address: tuple[str, int]) -> list[int]:
    """Records the bytes of each STORE datagram sent to ``address``."""
    sizes: list[int] = []
    transmit = net.transmit

    def recording(source, datagrams, destination):  # type: ignore[no-untyped-def]
        if destination == address:
            sizes.extend(len(datagram) for datagram in datagrams)
        transmit(source, datagrams, destination)

    net.transmit = recording  # type: ignore[method-assign]
    return sizes


def test_a_node_that_does_not_acknowledge_gets_one_batch() -> None:
    net, holder = _holder_with(200, 1000, seed=41)
    silent = ("127.0.5.5", 5000)  # nobody there
    sent = _stores_to(net, silent)
    holder.engine.transfer.offer(Node(random_id(), silent))
    net.run_until(lambda: False, limit=10.0)
    assert 0 < sum(sent) <= holder.engine.transfer.shipper.batch_bytes + 2000
    stats = holder.engine.stats.snapshot()
    assert stats["transfer-stopped"] == 1 and "values-transferred" not in stats
    assert holder.engine.transfer.sending == 0


def test_a_node_acknowledging_every_batch_gets_everything_one_batch_at_a_time() -> None:
    net, holder = _holder_with(200, 1000, seed=42)
    newcomer = net.add_node()
    in_flight = []
    request = holder.engine.requests.request

    def counting(address, node_id, kind, payload, on_response, on_failure, **kw):  # type: ignore[no-untyped-def]
        if kind is EventType.STORE:
            in_flight.append(
                sum(
                    1
                    for r in holder.engine.requests._pending.values()
                    if r.event.type is EventType.STORE and r.address == address
                )
            )
        return request(address, node_id, kind, payload, on_response, on_failure, **kw)

    holder.engine.requests.request = counting  # type: ignore[method-assign]
    holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    net.run_until(lambda: len(newcomer.storage) == 200, limit=30.0)  # type: ignore[arg-type]
    assert len(newcomer.storage) == 200  # type: ignore[arg-type]
    assert in_flight and max(in_flight) == 0, "a batch went before the last was answered"


def test_a_node_with_no_room_for_us_stops_its_transfer() -> None:
    net, holder = _holder_with(200, 1000, seed=43)
    newcomer = net.add_node(limits=Limits(max_store_bytes=8 * 1024 * 8))  # room for a few
    holder.engine.transfer.offer(Node(newcomer.id, newcomer.address))
    net.run_until(lambda: False, limit=10.0)
    stats = holder.engine.stats.snapshot()
    assert stats["transfer-stopped"] == 1
    assert stats["store-refusals-received"] == 1
    assert 0 < len(newcomer.storage) < 200  # type: ignore[arg-type]


def test_key_transfer_keeps_to_its_rate_and_to_half_the_pending_slots() -> None:
    rate = 50_000
    net, holder = _holder_with(
        300, 1000, seed=44, limits=Limits(transfer_rate=rate, trust_local_networks=False)
    )
    newcomers = [net.add_node() for _ in range(20)]
    sent = [_stores_to(net, node.address) for node in newcomers]
    for node in newcomers:
        holder.engine.transfer.offer(Node(node.id, node.address))
    net.run_until(lambda: False, limit=10.0)
    total = sum(map(sum, sent))
    # 10 s of the rate after a burst of one second of it (datagram headers
    # and value bookkeeping on top of the values' bytes).
    assert total <= 11 * rate * 1.25, total
    assert holder.engine.stats.snapshot()["transfer-paced"] > 0


def test_key_transfer_leaves_half_the_pending_slots_to_the_user() -> None:
    net, holder = _holder_with(30, 1000, seed=45)
    holder.engine.max_pending = 4
    late = net.add_node()
    for _ in range(2):
        holder.engine.request(("127.0.9.9", 9), None, EventType.PING, None, ignore, ignore)
    sent_late = _stores_to(net, late.address)
    holder.engine.transfer.offer(Node(late.id, late.address))
    net.run_until(lambda: False, limit=0.9)
    assert sent_late == []
    net.run_until(lambda: bool(sent_late), limit=30.0)
    assert sent_late


def test_a_joining_node_hands_out_no_keys_until_it_has_joined() -> None:
    """A node that holds values when it joins (a restart on a kept store)
    sends none while its table is still filling: taking the network for a
    small one, it sent every value to every node it met (dht.sim saw values
    spread to hundreds of nodes under churn). Once joined, it sends each
    node only values whose key that node is closer to than it is."""
    from simnet import build_network

    net = build_network(40, seed=47)
    net.latency = 0.04  # a join of several round trips, as on the internet
    first = next(iter(net.nodes.values()))
    joiner = net.add_node()
    for i in range(200):
        assert joiner.storage.Set(random_id(), b"v%d" % i, net.clock.wall_ns(), 10**12)
    sent: list[tuple[bool, bytes, tuple[Value, ...]]] = []  # (joined yet, to, values)
    joined = Outcome()
    request = joiner.engine.requests.request

    def recording(address, node_id, kind, payload, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kind is EventType.STORE:
            sent.append((joined.ended, node_id, payload.values))
        return request(address, node_id, kind, payload, *args, **kwargs)

    joiner.engine.requests.request = recording  # type: ignore[method-assign]
    joiner.engine.bootstrap([first.address], joined.store_done)
    net.run_until(lambda: False, limit=10.0)
    assert joined.ends == [None]
    assert len(joiner.engine.table) >= K
    assert sent, "the joiner handed out no keys at all"
    assert all(after for after, _, _ in sent), "keys went out while the node was joining"
    for _, node_id, values in sent:
        for value in values:
            assert distance(node_id, value.key) < distance(joiner.id, value.key)
