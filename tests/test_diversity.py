"""Eclipse resistance (dht.core.diversity): at most two nodes of one /24 in
a lookup's window, a bucket and an answer (local addresses exempt while
trusted), and answers that place ids implausibly close to a target are
rejected. The attack itself, from outside, is in test_lying_peers.py."""

from __future__ import annotations

import random

from simnet import Outcome, build_network

from dht.core.diversity import PER_NETWORK, Diversity, implausible
from dht.core.lookup import Lookup
from dht.core.routing import RoutingTable
from dht.keys import K, distance, random_id
from dht.wire import Event, EventType, FindNode, Node, encode, fragment

INTERNET = Diversity(trust_local=False)
TRUSTING = Diversity(trust_local=True)


def near(target: bytes, bits: int, rng: random.Random) -> bytes:
    """An id sharing at least ``bits`` leading bits with ``target``."""
    number = int.from_bytes(target, "big") ^ rng.getrandbits(160 - bits)
    return number.to_bytes(20, "big")


def test_a_network_is_a_slash_24_and_local_addresses_are_exempt_when_trusted() -> None:
    assert INTERNET.group("203.0.113.7") == INTERNET.group("203.0.113.200") == "203.0.113"
    assert INTERNET.group("203.0.114.7") != INTERNET.group("203.0.113.7")
    for local in ("127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.1.1"):
        assert TRUSTING.group(local) is None
        assert INTERNET.group(local) is not None
    assert TRUSTING.group("203.0.113.7") == "203.0.113"


def test_made_up_ids_from_one_network_take_two_places_in_a_lookup_window() -> None:
    rng = random.Random(1)
    target = random_id()
    lookup = Lookup(random_id(), target, group=INTERNET.group)
    honest = [Node(near(target, 4, rng), (f"198.51.{i}.1", 4000)) for i in range(30)]
    fakes = [Node(near(target, 60, rng), ("203.0.113.9", 5000 + i)) for i in range(20)]
    lookup.add(honest + fakes)
    asked = lookup.next() + lookup.next()  # alpha at a time
    lookup.alpha = 100
    asked += lookup.next()
    assert sum(node.address[0] == "203.0.113.9" for node in asked) == PER_NETWORK
    assert len(asked) == K  # the window is filled from other networks
    for node in asked:
        lookup.answered(node.id)
    targets = lookup.closest()
    assert len(targets) == K
    assert sum(node.address[0] == "203.0.113.9" for node in targets) == PER_NETWORK
    assert lookup.done


def test_a_trusted_local_network_fills_a_window_as_before() -> None:
    target = random_id()
    lookup = Lookup(random_id(), target, group=TRUSTING.group, alpha=100)
    nodes = [Node(random_id(), ("127.0.0.1", 5000 + i)) for i in range(30)]
    lookup.add(nodes)
    closest = sorted(nodes, key=lambda node: distance(node.id, target))[:K]
    assert lookup.next() == closest


def test_a_bucket_takes_two_contacts_of_a_network() -> None:
    local = b"\x00" * 20
    table = RoutingTable(local, diversity=INTERNET)
    far = [b"\x80" + random_id()[1:] for _ in range(5)]  # all in the farthest bucket
    assert [table.add_verified(i, ("203.0.113.9", 4000 + n), 0.0) for n, i in enumerate(far)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert table.add_verified(random_id()[:0] + b"\x81" + far[0][1:], ("198.51.100.1", 1), 0.0)
    trusting = RoutingTable(local, diversity=TRUSTING)
    assert all(trusting.add_verified(i, ("127.0.0.1", 4000 + n), 0.0) for n, i in enumerate(far))


def test_answers_list_two_contacts_of_a_network_and_look_further_for_the_rest() -> None:
    rng = random.Random(2)
    table = RoutingTable(random_id(), diversity=INTERNET)
    target = random_id()
    # Verified contacts of one /24 in different buckets, closest to the target.
    for i in range(40):
        table.add_verified(near(target, 10, rng), (f"203.0.113.{i}", 4000), 0.0)
    for i in range(40):
        table.add_verified(random_id(), (f"198.51.{i}.1", 4000), 0.0)
    requester = random_id()
    listed = table.answer(target, K, requester)
    assert len(listed) == K
    assert sum(node.address[0].startswith("203.0.113.") for node in listed) == PER_NETWORK


def test_the_size_estimate_follows_the_network() -> None:
    for size in (12, 60, 200):
        net = build_network(size, seed=size)
        estimates = sorted(node.engine.table.size_estimate() for node in net.nodes.values())
        median = estimates[len(estimates) // 2]
        assert size / 3 <= median <= size * 3, (size, estimates)


def test_honest_answers_are_never_implausible_and_made_up_ones_are() -> None:
    """Honest answers of a 2,000-node network, for 2,000 targets, are never
    rejected, even with the size misjudged 4 times too small; 20 ids next
    to the target are, and so are 3 of them hidden among honest ones."""
    rng = random.Random(3)
    ids = [rng.randbytes(20) for _ in range(2000)]
    for _ in range(2000):
        target = rng.randbytes(20)
        closest = sorted(ids, key=lambda i: distance(i, target))[:K]
        nodes = [Node(i, ("198.51.100.1", 1)) for i in closest]
        assert not implausible(nodes, target, 500)
        assert not implausible([*nodes, Node(target, ("198.51.100.1", 1))], target, 500)
        fakes = [Node(near(target, 64, rng), ("203.0.113.9", 1)) for _ in range(K)]
        assert implausible(fakes, target, 2000)
        assert implausible(nodes[:17] + fakes[:3], target, 2000)
    assert not implausible(fakes, target, 4), "too small a network to judge"


def test_a_lookup_rejects_an_implausible_answer_and_its_sender() -> None:
    net = build_network(30, seed=9)
    nodes = list(net.nodes.values())
    asker, liar = nodes[0], nodes[1]
    rng = random.Random(4)
    receive = liar.engine.receive
    stores_from_asker = []

    def lying(event, source, size=None):  # type: ignore[no-untyped-def]
        if event.type is EventType.STORE and source == asker.address:
            stores_from_asker.append(event)
        if event.type is not EventType.FIND_NODE or event.response:
            return receive(event, source, size)
        key = event.payload.key
        fakes = tuple(Node(near(key, 64, rng), liar.address) for _ in range(K))
        reply = Event(event.id, liar.id, EventType.FIND_NODE, True, FindNode(nodes=fakes))
        liar.engine._transport(fragment(reply.id, encode(reply)), source)

    liar.engine.receive = lying
    key = near(liar.id, 8, rng)  # the liar is asked
    outcome = Outcome()
    asker.engine.store(key, b"v", 3600 * 10**9, outcome.store_done)
    assert net.run_until(lambda: outcome.ended)
    assert outcome.ends == [None]
    assert asker.engine.stats.snapshot()["drop-implausible-answer"] == 1
    net.run_until(lambda: False, limit=2.0)
    assert stores_from_asker == [], "the liar is no target of the Store"
    assert not any(c.id.startswith(key[:4]) for c in asker.engine.table.contacts())
    [contact] = [c for c in asker.engine.table.contacts() if c.id == liar.id]
    assert contact.failures == 1
    holders = [node for node in nodes if node.storage.Get(key)]
    assert len(holders) >= K // 2


def test_failed_contacts_are_not_replaced_by_a_third_of_one_network() -> None:
    """Fresh ids from one network that answer pings waited as replacements
    and took an honest contact's place each time one missed two replies:
    under waves of them a node's Stores found no honest node at all."""
    local = b"\x00" * 20
    table = RoutingTable(local, diversity=INTERNET)
    honest = [b"\x80" + random_id()[1:] for _ in range(K)]
    for i, node_id in enumerate(honest):
        assert table.add_verified(node_id, (f"198.51.{i}.1", 4000), 0.0)
    sybils = [b"\x80" + random_id()[1:] for _ in range(10)]
    for i, node_id in enumerate(sybils):  # the bucket is full: replacements
        assert not table.add_verified(node_id, ("203.0.113.9", 5000 + i), 1.0)
    for node_id, i in zip(honest, range(K), strict=True):
        for _ in range(2):
            table.failed(node_id, (f"198.51.{i}.1", 4000))
    held = [c.address[0] for c in table.contacts()]
    assert held.count("203.0.113.9") == PER_NETWORK
    assert len(held) == K  # the other suspects stay, as before


def test_an_estimate_made_while_joining_is_not_kept() -> None:
    """A node's first estimate comes from its join, when its table is empty
    (too small to judge by). Kept for a second, it let the lookups right
    after the join take made-up ids next to their targets."""
    net = build_network(40, seed=11)
    node = net.add_node()
    assert node.engine.network_size() < 8  # empty: nothing to judge by
    joined = Outcome()
    node.engine.bootstrap([next(iter(net.nodes))], joined.store_done)
    assert net.run_until(lambda: joined.ended)
    assert node.engine.network_size() >= 20  # at once, not a second later
    first = node.engine.network_size()
    node.engine.table.add_verified(random_id(), ("198.51.100.1", 1), net.clock.now)
    assert node.engine.network_size() == first  # a good estimate is kept for a while


def test_a_lookup_no_node_answered_asks_the_contacts_behind_them() -> None:
    """The closest contacts can all be an attacker's ids that answer pings
    and nothing else (a store flood's sources outnumbered the honest nodes
    in every table): the lookup asked those 20, none answered, and the
    Store failed with the honest contacts just behind them never asked."""
    net = build_network(30, seed=12)
    members = list(net.nodes.values())
    asker = net.add_node()
    key = random_id()
    rng = random.Random(5)
    for i in range(K):  # the key's bucket: verified once, silent since
        silent = near(key, 16, rng)
        assert asker.engine.table.add_verified(silent, (f"127.0.9.{i + 1}", 4000), net.clock.now)
    for member in members:  # the honest nodes, all farther from the key
        asker.engine.table.add_verified(member.id, member.address, net.clock.now)
    seeds = asker.engine.table.closest(key, K)
    assert all(node.address[0].startswith("127.0.9.") for node in seeds)
    outcome = Outcome()
    asker.engine.store(key, b"v", 3600 * 10**9, outcome.store_done)
    assert net.run_until(lambda: outcome.ended)
    assert outcome.ends == [None]
    holders = [node for node in members if node.storage.Get(key)]
    assert len(holders) >= K // 2
