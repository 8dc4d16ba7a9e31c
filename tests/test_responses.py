"""Which responses complete a request (D14), the 0.0.0.0 repair (D16), the
bootstrap resend, and Close ending raw requests: core on simnet, with
responses injected through ``Engine.receive``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from simnet import Outcome, SimNetwork, SimNode

import dht.core.engine as engine_module
from dht.core.storage import MemoryStorage, Storage
from dht.errors import ClosedError
from dht.keys import K, random_id
from dht.wire import Event, EventType, Node, Value


def _silent_peer_request(seed: int) -> tuple[SimNetwork, SimNode, SimNode, list[object], bytes]:
    """A PING from ``asker`` to a ``peer`` that never answers by itself; the
    list collects what reaches the request's callbacks."""
    net = SimNetwork(seed=seed)
    asker, peer = net.add_node(), net.add_node()
    peer.online = False
    ends: list[object] = []
    asker.engine.request(
        peer.address,
        peer.id,
        EventType.PING,
        None,
        lambda event, source: ends.append(event) or True,
        ends.append,
    )
    [request_id] = asker.engine._pending
    return net, asker, peer, ends, request_id


WRONG = {
    # name: (counter, how the response is wrong)
    "from another address": (
        "drop-spoofed-response",
        lambda asker, peer, rid: (Event(rid, peer.id, EventType.PONG, True), ("127.0.0.1", 1)),
    ),
    "from another node id": (
        "drop-spoofed-response",
        lambda asker, peer, rid: (Event(rid, random_id(), EventType.PONG, True), peer.address),
    ),
    "of another type": (
        "drop-wrong-response-type",
        lambda asker, peer, rid: (Event(rid, peer.id, EventType.STORE, True), peer.address),
    ),
    "claiming our own id": (
        "drop-own-id",
        lambda asker, peer, rid: (Event(rid, asker.id, EventType.PONG, True), peer.address),
    ),
    "with an unknown id": (
        "drop-unsolicited-response",
        lambda asker, peer, rid: (Event(random_id(), peer.id, EventType.PONG, True), peer.address),
    ),
}


@pytest.mark.parametrize("case", WRONG)
def test_a_response_that_cannot_answer_the_request_is_dropped(case: str) -> None:
    counter, make = WRONG[case]
    _, asker, peer, ends, request_id = _silent_peer_request(seed=31)
    event, source = make(asker, peer, request_id)
    asker.engine.receive(event, source)
    assert ends == []
    assert asker.engine.stats.snapshot()[counter] == 1
    assert request_id in asker.engine._pending  # still waiting for the real one
    right = Event(request_id, peer.id, EventType.PONG, True)
    asker.engine.receive(right, peer.address)
    assert ends == [right]
    asker.engine.receive(right, peer.address)  # a duplicate ends nothing again
    assert ends == [right]


def test_close_fails_each_pending_request_once_with_closed_error() -> None:
    net, asker, _, ends, _ = _silent_peer_request(seed=32)
    asker.engine.close()
    assert len(ends) == 1 and isinstance(ends[0], ClosedError)
    net.run_until(lambda: False, limit=5.0)  # past the timeout: nothing more
    assert len(ends) == 1


def test_the_0000_self_entry_is_repaired_and_other_unusable_entries_dropped() -> None:
    # D16: the reference lists itself as 0.0.0.0:port; only the sender's own
    # entry can be repaired (from the datagram's source address).
    sender, other, zero_port, good = (random_id() for _ in range(4))
    nodes = [
        Node(sender, ("0.0.0.0", 5000)),
        Node(other, ("0.0.0.0", 6000)),
        Node(zero_port, ("127.0.0.5", 0)),
        Node(sender, ("0.0.0.0", 0)),
        Node(good, ("127.0.0.6", 7000)),
    ]
    usable = engine_module.usable_nodes(nodes, sender, ("127.0.0.9", 4000))
    assert usable == [Node(sender, ("127.0.0.9", 5000)), Node(good, ("127.0.0.6", 7000))]
    many = [Node(random_id(), ("127.0.0.7", 1000 + i)) for i in range(3 * K)]
    assert engine_module.usable_nodes(many, sender, ("127.0.0.9", 4000)) == many[:K]


def test_bootstrap_resends_its_first_request_when_it_is_lost() -> None:
    net = SimNetwork(seed=33)
    seed_node, joiner = net.add_node(), net.add_node()
    lost: list[bytes] = []
    send = joiner.engine._transport

    def lose_the_first(datagrams: list[bytes], destination: tuple[str, int]) -> None:
        if destination == seed_node.address and not lost:
            lost.extend(datagrams)
            return
        send(datagrams, destination)

    joiner.engine._transport = lose_the_first  # type: ignore[method-assign]
    joined = Outcome()
    joiner.engine.bootstrap([seed_node.address], joined.store_done)
    assert net.run_until(lambda: joined.ended, limit=10.0)
    assert lost and joined.ends == [None]
    assert seed_node.id in joiner.engine.table


def test_verification_pings_are_bounded_under_a_flood_of_unknown_senders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "MAX_VERIFYING", 5)
    net = SimNetwork(seed=34)
    node = net.add_node()
    for i in range(50):  # unknown ids from addresses where nothing answers
        ping = Event(random_id(), random_id(), EventType.PING)
        node.engine.receive(ping, (f"127.0.1.{i + 1}", 4000))
    assert len(node.engine._verifying) == 5
    assert node.engine.pending_requests == 5


def test_new_ids_flooding_from_one_address_leave_verification_to_others() -> None:
    # PINGs with fresh sender ids from one address filled every verification
    # slot; honest newcomers were never pinged, so never entered the table.
    net = SimNetwork(seed=40)
    node = net.add_node()
    for i in range(500):
        ping = Event(random_id(), random_id(), EventType.PING)
        node.engine.receive(ping, ("127.0.4.4", 3000 + i))
    assert len(node.engine._verifying) == engine_module.MAX_VERIFYING // 2
    newcomer = net.add_node()
    node.engine.receive(Event(random_id(), newcomer.id, EventType.PING), newcomer.address)
    assert net.run_until(lambda: newcomer.id in node.engine.table, limit=5.0)


def test_a_node_seen_twice_within_the_refresh_interval_is_sent_keys_once() -> None:
    net = SimNetwork(seed=35)
    holder, newcomer = net.add_node(refresh_interval=60.0), net.add_node()
    for i in range(3):
        assert holder.storage.Set(random_id(), b"v%d" % i, net.clock.wall_ns(), 10**12)
    for _ in range(2):
        holder.engine._transfer_keys(Node(newcomer.id, newcomer.address))
        net.run_until(lambda: False, limit=1.0)
    assert holder.engine.stats.snapshot()["values-transferred"] == 3
    net.clock.now += 61.0  # a refresh interval later it is served again
    holder.engine._transfer_keys(Node(newcomer.id, newcomer.address))
    net.run_until(lambda: False, limit=1.0)
    assert holder.engine.stats.snapshot()["values-transferred"] == 6


def test_the_key_transfer_record_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "TRANSFERRED_NODES", 10)
    net = SimNetwork(seed=36)
    holder = net.add_node()
    for i in range(30):
        holder.engine._transfer_keys(Node(random_id(), (f"127.0.2.{i + 1}", 5000)))
    assert len(holder.engine._transferred) == 10


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


class CountingStorage(MemoryStorage):
    """The default storage, counting the scans of the whole store (listings
    of its keys) and the values read."""

    def __init__(self, clock_ns: Callable[[], int]) -> None:
        super().__init__(clock_ns=clock_ns)
        self.scans = 0
        self.read: list[int] = []

    def Keys(self) -> list[bytes]:
        self.scans += 1
        return super().Keys()

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        values = super().Get(key, from_ns)
        self.read.append(len(values))
        return values


def test_key_transfer_scans_the_store_later_in_slices_once_for_all_new_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The scan ran on the listener thread, for each newly seen node: with
    # 100,000 values a node stopped answering for a second per fresh node id.
    monkeypatch.setattr(engine_module, "TRANSFER_SLICE", 100)
    net, holder, storage = _holder_of(CountingStorage, 1000, seed=37)
    newcomers = [net.add_node() for _ in range(3)]
    callbacks_before = len(net._queue)
    for newcomer in newcomers:  # seen one after another, as from one datagram burst
        holder.engine._transfer_keys(Node(newcomer.id, newcomer.address))
    assert storage.scans == 0  # nothing scanned on the caller's thread
    assert len(net._queue) == callbacks_before + 1  # one scan scheduled for all three
    steps = 0
    while holder.engine._transfer_scanning:
        reads_before = len(storage.read)
        assert net.step()
        assert len(storage.read) - reads_before <= 100  # a slice of keys per callback
        steps += 1
    assert storage.scans == 1
    assert steps >= 1000 // 100  # one callback per slice
    assert len(storage.read) == 1000 and sum(storage.read) == 1000  # each key read once
    net.run_until(lambda: False, limit=5.0)
    # A network smaller than K: each newcomer is sent every value.
    assert holder.engine.stats.snapshot()["values-transferred"] == 3 * 1000
    assert all(len(newcomer.storage) == 1000 for newcomer in newcomers)  # type: ignore[arg-type]


class IterateOnlyStorage:
    """A user storage with only the protocol's methods (no ``Keys``)."""

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


def test_key_transfer_from_a_storage_without_keys_iterates_it() -> None:
    net, holder, storage = _holder_of(IterateOnlyStorage, 300, seed=39)
    newcomer = net.add_node()
    holder.engine._transfer_keys(Node(newcomer.id, newcomer.address))
    assert net.run_until(lambda: not holder.engine._transfer_scanning, limit=5.0)
    net.run_until(lambda: False, limit=5.0)
    assert storage.scans == 1
    assert len(newcomer.storage) == 300  # type: ignore[arg-type]


def test_nodes_queued_during_every_scan_neither_recurse_nor_stop_key_transfer() -> None:
    # The end of a scan started the next one by a direct call: with a node
    # newly seen during each scan the stack grew until RecursionError, which
    # left the scan flag set, so no node was ever served again.
    net = SimNetwork(seed=38)
    holder = net.add_node()
    scans = 0

    class QueueingStorage(MemoryStorage):
        def Keys(self) -> list[bytes]:
            nonlocal scans
            scans += 1
            if scans < 1500:  # a listener sees a new node meanwhile
                holder.engine._transfer_keys(Node(random_id(), ("127.0.2.2", 1000 + scans)))
            return super().Keys()

    storage = QueueingStorage(clock_ns=net.clock.wall_ns)
    assert storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    holder.engine.storage = storage
    holder.engine._transfer_keys(Node(random_id(), ("127.0.2.2", 999)))
    assert net.run_until(lambda: not holder.engine._transfer_scanning, limit=600.0)
    assert scans == 1500
    assert "transfer-error" not in holder.engine.stats.snapshot()


def test_sybils_on_one_address_cannot_fill_the_key_transfer_queue() -> None:
    net = SimNetwork(seed=39)
    holder = net.add_node()
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    for i in range(100):  # newly seen ids, all on one address
        holder.engine._transfer_keys(Node(random_id(), ("127.0.3.3", 2000 + i)))
    assert len(holder.engine._transfer_queue) == engine_module.TRANSFER_QUEUE
    newcomer = net.add_node()
    holder.engine._transfer_keys(Node(newcomer.id, newcomer.address))
    assert newcomer.id in holder.engine._transfer_queue
    net.run_until(lambda: False, limit=5.0)
    assert len(newcomer.storage) == 1  # type: ignore[arg-type]


def test_a_newcomer_skipped_by_a_full_transfer_queue_is_served_at_the_next_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Skipped nodes were never served: key transfer starts only when a node
    # is first seen.
    monkeypatch.setattr(engine_module, "TRANSFER_QUEUE", 1)
    net = SimNetwork(seed=41)
    holder = net.add_node(refresh_interval=10.0)
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    holder.engine._transfer_keys(Node(random_id(), ("127.0.5.5", 1)))  # fills the queue
    newcomer = net.add_node()
    holder.engine.table.add_verified(newcomer.id, newcomer.address, net.clock.now)
    holder.engine._transfer_keys(Node(newcomer.id, newcomer.address))
    assert holder.engine.stats.snapshot()["transfer-skipped"] == 1
    net.run_until(lambda: False, limit=5.0)
    assert len(newcomer.storage) == 0  # type: ignore[arg-type]
    assert net.run_until(lambda: len(newcomer.storage) == 1, limit=30.0)  # type: ignore[arg-type]


def test_many_unproven_requesters_sharing_an_address_are_all_verified_and_answered() -> None:
    # A loopback cluster: every node on 127.0.0.1. With 16 verifications per
    # address always, 24 of 40 requesters were never pinged, and their held
    # answers never sent.
    net = SimNetwork(seed=7)
    holder = net.add_node(amplification_limit=20_000)
    key = random_id()
    for i in range(2):
        assert holder.storage.Set(key, bytes([i]) * 15_000, net.clock.wall_ns(), 10**15)
    found = []
    for _ in range(40):
        requester = net.add_node()
        requester.engine.table.add_verified(holder.id, holder.address, net.clock.now)
        outcome = Outcome()
        requester.engine.find(key, 0, outcome.value, outcome.find_done)
        found.append(outcome)
    assert net.run_until(lambda: all(len(outcome.values) == 2 for outcome in found), limit=0.5)


def test_newcomers_sharing_an_address_all_get_their_keys() -> None:
    # A loopback cluster again: with at most 4 queued newcomers per address,
    # 8 of 12 nodes joining at once got no keys.
    net = SimNetwork(seed=8)
    holder = net.add_node()
    assert holder.storage.Set(random_id(), b"v", net.clock.wall_ns(), 10**12)
    newcomers = [net.add_node() for _ in range(12)]
    joined = [Outcome() for _ in newcomers]
    for newcomer, outcome in zip(newcomers, joined, strict=True):
        newcomer.engine.bootstrap([holder.address], outcome.store_done)
    assert net.run_until(lambda: all(len(n.storage) == 1 for n in newcomers), limit=10.0)  # type: ignore[arg-type]
