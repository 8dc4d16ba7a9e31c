"""The iterative lookup state machine (dht.core.lookup; PROTOCOL.md 7.5, D30).

Unit tests look for the all-zero target, so a node's XOR distance is simply
its id read as an integer: node ``n(5)`` is closer than ``n(6)``. The
simulation runs whole lookups over a synthetic 500-node network.
"""

from __future__ import annotations

import random

from dht.core.lookup import MAX_QUERIES, Lookup, State
from dht.keys import ALPHA, KEY_BYTES, K, common_prefix_length, distance
from dht.wire.events import Node

TARGET = bytes(KEY_BYTES)
LOCAL = b"\xff" * KEY_BYTES
ADDRESS = ("10.0.0.1", 4000)


def n(number: int) -> Node:
    """The node at distance ``number`` from ``TARGET``."""
    return Node(number.to_bytes(KEY_BYTES, "big"), ADDRESS)


def numbers(nodes: list[Node]) -> list[int]:
    return [int.from_bytes(node.id, "big") for node in nodes]


def lookup_with(count: int, *, k: int = K, alpha: int = ALPHA, seed: int = 0) -> Lookup:
    lookup = Lookup(LOCAL, TARGET, k=k, alpha=alpha)
    nodes = [n(i) for i in range(1, count + 1)]
    random.Random(seed).shuffle(nodes)
    lookup.add(nodes)
    return lookup


# ---------------------------------------------------------------------------
# next, answered, failed, stalled


def test_next_returns_at_most_alpha_closest_first() -> None:
    lookup = lookup_with(10)
    assert numbers(lookup.next()) == [1, 2, 3]
    assert lookup.next() == []  # alpha requests in flight
    lookup.answered(n(2).id)
    assert numbers(lookup.next()) == [4]
    assert lookup.next() == []


def test_alpha_is_configurable() -> None:
    lookup = lookup_with(10, alpha=5)
    assert numbers(lookup.next()) == [1, 2, 3, 4, 5]
    lookup = lookup_with(10, alpha=1)
    assert numbers(lookup.next()) == [1]
    assert lookup.next() == []


def test_failed_frees_a_slot() -> None:
    lookup = lookup_with(10)
    lookup.next()
    lookup.failed(n(1).id)
    assert numbers(lookup.next()) == [4]
    lookup.failed(n(2).id)
    lookup.failed(n(3).id)
    assert numbers(lookup.next()) == [5, 6]


def test_stalled_nodes_stop_counting_against_alpha() -> None:
    lookup = lookup_with(10)
    assert numbers(lookup.next()) == [1, 2, 3]
    lookup.stalled(n(1).id)
    assert numbers(lookup.next()) == [4]
    lookup.stalled(n(2).id)
    lookup.stalled(n(3).id)
    assert numbers(lookup.next()) == [5, 6]
    assert lookup.next() == []


def test_stalled_only_applies_to_requests_in_flight() -> None:
    lookup = lookup_with(10)
    lookup.stalled(n(1).id)  # not asked yet: nothing happens
    lookup.stalled(n(99).id)  # unknown: nothing happens
    assert numbers(lookup.next()) == [1, 2, 3]
    lookup.answered(n(1).id)
    lookup.stalled(n(1).id)  # already answered: stays answered
    assert numbers(lookup.closest()) == [1]


def test_a_stalled_node_that_answers_late_counts() -> None:
    lookup = lookup_with(5, k=3)
    lookup.next()
    lookup.stalled(n(1).id)
    lookup.answered(n(2).id)
    lookup.answered(n(3).id)
    assert not lookup.done  # the window is now 2, 3, 4
    assert numbers(lookup.next()) == [4]
    lookup.answered(n(1).id)
    assert numbers(lookup.closest()) == [1, 2, 3]
    assert lookup.done


def test_answer_after_failure_counts_but_failure_after_answer_does_not() -> None:
    lookup = lookup_with(5, k=2)
    lookup.next()
    lookup.failed(n(1).id)
    lookup.answered(n(1).id)  # a late answer wins over the timeout
    lookup.answered(n(2).id)
    lookup.failed(n(2).id)  # an answered node stays answered
    assert numbers(lookup.closest()) == [1, 2]
    assert lookup.done


def test_answered_and_failed_for_unknown_ids_are_ignored() -> None:
    lookup = lookup_with(3)
    lookup.answered(n(50).id)
    lookup.failed(n(51).id)
    assert lookup.closest() == []
    assert lookup.queried == 0


# ---------------------------------------------------------------------------
# done


def test_done_when_the_k_closest_have_answered() -> None:
    lookup = lookup_with(8, k=3)
    assert not lookup.done
    assert numbers(lookup.next()) == [1, 2, 3]
    lookup.answered(n(1).id)
    lookup.answered(n(2).id)
    assert not lookup.done
    lookup.answered(n(3).id)
    assert lookup.done
    assert numbers(lookup.closest()) == [1, 2, 3]


def test_failed_and_stalled_nodes_leave_the_window() -> None:
    lookup = lookup_with(8, k=3)
    lookup.next()
    lookup.answered(n(1).id)
    lookup.failed(n(2).id)
    lookup.stalled(n(3).id)
    assert not lookup.done  # the window is now 1, 4, 5
    assert numbers(lookup.next()) == [4, 5]
    lookup.answered(n(4).id)
    assert not lookup.done
    lookup.answered(n(5).id)
    assert lookup.done
    assert numbers(lookup.closest()) == [1, 4, 5]


def test_a_closer_node_learned_late_reopens_the_lookup() -> None:
    lookup = Lookup(LOCAL, TARGET, k=2)
    lookup.add([n(10), n(11)])
    lookup.next()
    lookup.add([n(3)])  # learned from an answer
    lookup.answered(n(10).id)
    lookup.answered(n(11).id)
    assert not lookup.done
    assert numbers(lookup.next()) == [3]
    lookup.answered(n(3).id)
    assert lookup.done
    assert numbers(lookup.closest()) == [3, 10]


def test_done_when_nothing_is_left_to_ask() -> None:
    lookup = lookup_with(4, k=20)
    lookup.next()
    for i in (1, 2, 3):
        lookup.failed(n(i).id)
    assert not lookup.done
    assert numbers(lookup.next()) == [4]
    assert not lookup.done
    lookup.failed(n(4).id)
    assert lookup.done
    assert lookup.closest() == []
    assert lookup.next() == []


def test_done_with_fewer_than_k_nodes_all_answered() -> None:
    lookup = lookup_with(4, k=20)
    lookup.next()
    for i in (1, 2, 3):
        lookup.answered(n(i).id)
    assert not lookup.done
    lookup.next()
    lookup.answered(n(4).id)
    assert lookup.done
    assert numbers(lookup.closest()) == [1, 2, 3, 4]


def test_empty_lookup_is_done() -> None:
    lookup = Lookup(LOCAL, TARGET)
    assert lookup.done
    assert lookup.next() == []
    assert lookup.closest() == []
    assert lookup.queried == 0


# ---------------------------------------------------------------------------
# add, closest, queried


def test_add_ignores_the_local_id_and_duplicates() -> None:
    lookup = Lookup(LOCAL, TARGET, alpha=10)
    lookup.add([Node(LOCAL, ADDRESS), n(2), n(1)])
    lookup.add([n(1), Node(n(2).id, ("10.9.9.9", 1)), Node(LOCAL, ADDRESS)])
    chosen = lookup.next()
    assert numbers(chosen) == [1, 2]
    assert chosen[1].address == ADDRESS  # the first address learned is kept
    assert lookup.next() == []


def test_re_adding_a_queried_node_does_not_reset_it() -> None:
    lookup = Lookup(LOCAL, TARGET, alpha=1)
    lookup.add([n(1), n(2)])
    assert numbers(lookup.next()) == [1]
    lookup.add([n(1)])
    assert lookup.next() == []  # still in flight
    lookup.failed(n(1).id)
    lookup.add([n(1)])
    assert numbers(lookup.next()) == [2]  # a failed node is not asked again


def test_add_answered_marks_nodes_answered() -> None:
    lookup = Lookup(LOCAL, TARGET, k=2)
    lookup.add([n(1), n(2)])
    lookup.add([n(2), n(3)], State.ANSWERED)
    assert numbers(lookup.closest()) == [2, 3]
    assert numbers(lookup.next()) == [1]


def test_closest_returns_answered_nodes_in_distance_order() -> None:
    lookup = lookup_with(30, alpha=30)
    lookup.next()
    for i in (17, 3, 29, 8, 1, 12):
        lookup.answered(n(i).id)
    lookup.failed(n(2).id)
    assert numbers(lookup.closest()) == [1, 3, 8, 12, 17, 29]
    assert numbers(lookup.closest(3)) == [1, 3, 8]
    small = lookup_with(30, k=2, alpha=30)
    small.next()
    for i in (5, 4, 9):
        small.answered(n(i).id)
    assert numbers(small.closest()) == [4, 5]  # k by default


def test_closest_zero_is_empty() -> None:
    lookup = lookup_with(5)
    lookup.next()
    lookup.answered(n(1).id)
    assert lookup.closest(0) == []


def test_queried_counts_every_node_asked() -> None:
    lookup = lookup_with(10)
    assert lookup.queried == 0
    lookup.next()
    assert lookup.queried == 3
    lookup.answered(n(1).id)
    lookup.failed(n(2).id)
    lookup.stalled(n(3).id)
    assert lookup.queried == 3
    lookup.next()
    assert lookup.queried == 6
    lookup.add([n(100)], State.ANSWERED)
    assert lookup.queried == 7


def test_a_lookup_fed_ever_closer_ids_ends_within_its_query_budget() -> None:
    # Sybils answering every query with K fresh ids closer to the target kept
    # the k closest from ever all answering: a Find or Store never ended.
    lookup = Lookup(LOCAL, TARGET)
    distance_now = 1 << 150
    lookup.add([n(distance_now + i) for i in range(K)])
    in_flight: list[Node] = []
    rounds = 0
    while not lookup.done:
        rounds += 1
        assert rounds < 10 * MAX_QUERIES, f"still running after {lookup.queried} queries"
        in_flight += lookup.next()
        if not in_flight:
            break
        asked = in_flight.pop(0)
        lookup.answered(asked.id)
        distance_now -= K  # K fresh ids, all closer than any before
        lookup.add([n(distance_now + i) for i in range(K)])
    assert lookup.done
    assert lookup.queried == MAX_QUERIES
    assert in_flight == []  # it waited for the answers it was owed
    assert len(lookup.closest()) == K


def test_an_honest_lookup_is_not_cut_short_by_the_budget() -> None:
    lookup = lookup_with(10 * MAX_QUERIES)
    while not lookup.done:
        for node in lookup.next():
            lookup.answered(node.id)
    assert numbers(lookup.closest()) == list(range(1, K + 1))
    assert lookup.queried == K


def test_in_flight_never_exceeds_alpha() -> None:
    rng = random.Random(5)
    lookup = lookup_with(200, k=20, alpha=3)
    in_flight: set[bytes] = set()
    for _ in range(2000):
        if lookup.done:
            break
        for node in lookup.next():
            assert node.id not in in_flight
            in_flight.add(node.id)
        assert len(in_flight) <= 3
        if not in_flight:
            break
        node_id = rng.choice(sorted(in_flight))
        in_flight.discard(node_id)
        rng.choice([lookup.answered, lookup.failed, lookup.stalled])(node_id)
    assert lookup.done


class NaiveLookup:
    """The rules of next and done, read off every candidate each time (as
    ``Lookup`` did before it kept counts per state)."""

    def __init__(self, k: int, alpha: int, max_queries: int) -> None:
        self.k, self.alpha, self.max_queries = k, alpha, max_queries
        self.states: dict[int, State] = {}
        self.queried = 0

    def add(self, numbers_: list[int], state: State) -> None:
        for number in numbers_:
            if number in self.states:
                if state is State.ANSWERED:
                    self.queried += self.states[number] is State.UNQUERIED
                    self.states[number] = state
            else:
                self.states[number] = state
                self.queried += state is not State.UNQUERIED

    def window(self) -> list[int]:
        running = (State.UNQUERIED, State.IN_FLIGHT, State.ANSWERED)
        return [i for i in sorted(self.states) if self.states[i] in running][: self.k]

    def next(self) -> list[int]:
        active = list(self.states.values()).count(State.IN_FLIGHT)
        room = min(self.alpha - active, self.max_queries - self.queried)
        chosen = [i for i in self.window() if self.states[i] is State.UNQUERIED][: max(room, 0)]
        for i in chosen:
            self.states[i] = State.IN_FLIGHT
        self.queried += len(chosen)
        return chosen

    def done(self) -> bool:
        window = self.window()
        if window and all(self.states[i] is State.ANSWERED for i in window):
            return True
        states = list(self.states.values())
        if self.queried >= self.max_queries:
            return State.IN_FLIGHT not in states
        return not any(s in (State.UNQUERIED, State.IN_FLIGHT, State.STALLED) for s in states)


def test_next_and_done_follow_the_rules_over_random_histories() -> None:
    rng = random.Random(11)
    for trial in range(300):
        k, alpha, budget = rng.choice([(3, 2, 6), (5, 3, 12), (K, ALPHA, MAX_QUERIES)])
        lookup = Lookup(LOCAL, TARGET, k=k, alpha=alpha, max_queries=budget)
        model = NaiveLookup(k, alpha, budget)
        for _ in range(60):
            action = rng.randrange(6)
            if action == 0:
                batch = sorted(rng.sample(range(1, 40), rng.randrange(1, 5)))
                state = rng.choice([State.UNQUERIED, State.UNQUERIED, State.ANSWERED])
                lookup.add([n(i) for i in batch], state)
                model.add(batch, state)
            elif action == 1:
                assert numbers(lookup.next()) == model.next(), trial
            else:
                number = rng.randrange(1, 40)
                event = rng.choice(["answered", "failed", "stalled"])
                getattr(lookup, event)(n(number).id)
                current = model.states.get(number)
                if event == "stalled" and current is State.IN_FLIGHT:
                    model.states[number] = State.STALLED
                elif event != "stalled" and current not in (None, State.ANSWERED):
                    model.states[number] = State[event.upper()]
            assert lookup.done == model.done(), trial
            assert lookup.queried == model.queried, trial
            if model.done():  # the engine relies on it: it asks next() first
                assert lookup.next() == model.next() == [], trial


# ---------------------------------------------------------------------------
# Simulation: iterative lookups over a synthetic network

NETWORK_SIZE = 500
TARGETS = 50


def build_network(rng: random.Random) -> tuple[list[bytes], dict[bytes, list[bytes]]]:
    """500 random ids; each node knows, as in a consistent Kademlia network,
    its 20 closest peers (brute force) plus up to K nodes of each of its
    buckets (one per common-prefix length)."""
    ids = list({rng.randbytes(KEY_BYTES) for _ in range(NETWORK_SIZE)})
    assert len(ids) == NETWORK_SIZE
    knows: dict[bytes, list[bytes]] = {}
    for node in ids:
        others = [other for other in ids if other != node]
        known = set(sorted(others, key=lambda other, x=node: distance(other, x))[:K])
        buckets: dict[int, list[bytes]] = {}
        for other in others:
            buckets.setdefault(common_prefix_length(node, other), []).append(other)
        for members in buckets.values():
            known.update(rng.sample(members, min(K, len(members))))
        knows[node] = sorted(known)
    return ids, knows


def closest_to(target: bytes, ids: list[bytes], count: int) -> list[bytes]:
    return sorted(ids, key=lambda node: distance(node, target))[:count]


def run_lookup(
    target: bytes, seeds: list[bytes], knows: dict[bytes, list[bytes]], local: bytes
) -> Lookup:
    lookup = Lookup(local, target)
    lookup.add(Node(seed, ADDRESS) for seed in seeds)
    for _ in range(NETWORK_SIZE):
        if lookup.done:
            return lookup
        batch = lookup.next()
        assert batch, "not done, but nothing to ask"
        assert len(batch) <= ALPHA
        for node in batch:
            # The node answers with the 20 ids it knows closest to the target.
            answer = closest_to(target, knows[node.id], K)
            lookup.add(Node(i, ADDRESS) for i in answer)
            lookup.answered(node.id)
    raise AssertionError("lookup did not converge")


def test_lookups_find_the_true_closest_nodes() -> None:
    rng = random.Random(20240601)
    ids, knows = build_network(rng)
    local = rng.randbytes(KEY_BYTES)  # the searcher is not in the network
    exact = 0
    queried = []
    for _ in range(TARGETS):
        target = rng.randbytes(KEY_BYTES)
        seeds = rng.sample(ids, 3)
        lookup = run_lookup(target, seeds, knows, local)
        got = [node.id for node in lookup.closest(K)]
        assert len(got) == K
        assert got == sorted(got, key=lambda i: distance(i, target))
        exact += got == closest_to(target, ids, K)
        queried.append(lookup.queried)
    assert exact >= 0.95 * TARGETS, f"{exact}/{TARGETS} lookups found the true {K} closest"
    assert max(queried) <= NETWORK_SIZE // 5, queried
    assert sum(queried) / len(queried) < NETWORK_SIZE / 10


def test_lookup_with_unresponsive_nodes_still_converges() -> None:
    # A tenth of the network never answers but is still listed in answers
    # (stale entries): the lookup must finish, return live nodes only, and
    # find every live node among the network's K closest. (Live nodes ranked
    # past K overall can be missed: every answer's K slots include dead ones.)
    rng = random.Random(7)
    ids, knows = build_network(rng)
    down = set(rng.sample(ids, NETWORK_SIZE // 10))
    up = [i for i in ids if i not in down]
    for _ in range(20):
        target = rng.randbytes(KEY_BYTES)
        lookup = Lookup(rng.randbytes(KEY_BYTES), target)
        lookup.add(Node(seed, ADDRESS) for seed in rng.sample(up, 3))
        for _ in range(NETWORK_SIZE):
            if lookup.done:
                break
            batch = lookup.next()
            assert batch
            for node in batch:
                if node.id in down:
                    lookup.failed(node.id)
                    continue
                lookup.add(Node(i, ADDRESS) for i in closest_to(target, knows[node.id], K))
                lookup.answered(node.id)
        assert lookup.done
        got = [node.id for node in lookup.closest(K)]
        assert len(got) == K
        assert not set(got) & down
        assert set(closest_to(target, ids, K)) - down <= set(got)
        assert got[: K // 2] == closest_to(target, up, K // 2)
        assert lookup.queried <= NETWORK_SIZE // 5
