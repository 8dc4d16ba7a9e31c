"""Faults: packet loss and churn.

* Loss: a 30-node cluster in a network namespace where nftables drops 10% of
  UDP datagrams at random (the cluster runs in a subprocess, see
  ``netns_cluster.py``), and the same workload on the in-process lossy
  network (``simnet.SimNetwork(loss=0.10)``), which runs everywhere.
* Churn: a 60-node cluster holding 1,000 keys loses 30% of its nodes
  abruptly and gains 10 new ones; the keys are still found, and each new node
  receives the keys it is now closest to. On real sockets and on simnet.

Every Store and Find is counted to end exactly once; the real-socket runs end
with no thread or file descriptor left behind.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cluster import Callbacks, ResourceSnapshot, close_all, start_cluster, wait_until
from netns_cluster import (
    find_ended_once,
    join_with_retries,
    pick_non_holder,
    run_concurrently,
    store_ended_once,
    total_stats,
)
from simnet import Outcome, SimNetwork, SimNode

import dht
from dht.errors import BootstrapError
from dht.keys import K, distance

HOUR_NS = 3600 * 10**9
TIMEOUT = 0.5  # Config.timeout: lost replies are given up on (or retried) quickly
CONCURRENCY = 8

LOSS_NODES, LOSS_STORES, LOSS_FINDS, LOSS_EXHAUSTIVE = 30, 500, 2000, 100
CHURN_NODES, CHURN_KEYS, CHURN_LEAVE, CHURN_JOIN = 60, 1000, 18, 10


# ---------------------------------------------------------------------------
# Packet loss in a network namespace (nftables)

SCRIPT = Path(__file__).with_name("netns_cluster.py")


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _namespace_unavailable() -> str | None:
    """Why a namespace with nftables cannot be set up here, or None."""
    if os.geteuid() != 0:
        return "not root: creating a network namespace needs CAP_SYS_ADMIN"
    for binary, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(binary) is None:
            return f"no `{binary}` binary (apt-get install {package})"
    return None


@contextmanager
def lossy_namespace(hook: str) -> Iterator[str]:
    """A new network namespace, loopback up, where an nftables chain on
    ``hook`` counts every UDP datagram and drops one in ten at random.
    Skips the test if any command fails; deletes the namespace on exit."""
    reason = _namespace_unavailable()
    if reason is not None:
        pytest.skip(reason)
    name = f"dhtfault-{os.getpid()}-{secrets.token_hex(3)}"
    created = _run("ip", "netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"`ip netns add {name}` failed: {created.stderr.strip()}")
    try:
        chain = f"'{{ type filter hook {hook} priority 0 ; policy accept ; }}'"
        for command in (
            "ip link set lo up",
            "nft add table inet dhtloss",
            f"nft add chain inet dhtloss faults {chain}",
            "nft add rule inet dhtloss faults meta l4proto udp counter",
            # numgen random mod 10 is 0..9: one datagram in ten matches.
            "nft add rule inet dhtloss faults meta l4proto udp numgen random mod 10 0 counter drop",
        ):
            done = _run("ip", "netns", "exec", name, *shlex.split(command))
            if done.returncode != 0:
                pytest.skip(f"`{command}` failed in a namespace: {done.stderr.strip()}")
        yield name
    finally:
        deleted = _run("ip", "netns", "delete", name)
        assert deleted.returncode == 0, f"cannot delete namespace {name}: {deleted.stderr}"


def udp_counters(namespace: str) -> tuple[int, int]:
    """(UDP datagrams seen, datagrams dropped) by the namespace's chain."""
    listed = _run("ip", "netns", "exec", namespace, "nft", "-j", "list", "table", "inet", "dhtloss")
    assert listed.returncode == 0, listed.stderr
    counts: dict[str, int] = {}
    for item in json.loads(listed.stdout)["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        expressions = rule["expr"]
        packets = next(e["counter"]["packets"] for e in expressions if "counter" in e)
        counts["drop" if any("drop" in e for e in expressions) else "all"] = packets
    return counts["all"], counts["drop"]


def check_loss_report(report: dict[str, Any], stores: int, finds: int, exhaustive: int) -> None:
    """Assertions shared by the namespace and simnet loss tests."""
    assert report["stores"] == stores
    assert report["finds_first"] == finds and report["finds_all"] == exhaustive
    assert report["store_not_once"] == 0, report
    assert report["finds_first_not_once"] == 0, report
    assert report["finds_all_not_once"] == 0, report
    assert report["stores_ok"] >= 0.99 * stores, report
    assert report["finds_first_ok"] >= 0.99 * finds, report
    assert report["finds_all_ok"] >= 0.99 * exhaustive, report


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "hook",
    [
        # Dropped on input: the datagram is lost silently, as on a network.
        "input",
        # Dropped on output: sendto fails with EPERM, so the sender sees a
        # send error at once (requests fail without waiting for a timeout).
        "output",
    ],
)
def test_loss_in_network_namespace(hook: str) -> None:
    """30 nodes in a namespace losing 10% of UDP datagrams: 500 Stores,
    2,000 FirstValue Finds and 100 exhaustive Finds, 8 in flight."""
    params = {
        "nodes": LOSS_NODES,
        "stores": LOSS_STORES,
        "finds": LOSS_FINDS,
        "exhaustive_finds": LOSS_EXHAUSTIVE,
        "concurrency": CONCURRENCY,
        "timeout": TIMEOUT,
        "seed": 7,
        "deadline": 200.0,
    }
    start = time.monotonic()
    with lossy_namespace(hook) as namespace:
        command = ["ip", "netns", "exec", namespace, sys.executable, str(SCRIPT)]
        done = _run(*command, json.dumps(params), timeout=240)
        assert done.returncode == 0, f"cluster script failed:\n{done.stderr[-4000:]}"
        report = json.loads(done.stdout.strip().splitlines()[-1])
        seen, dropped = udp_counters(namespace)
    listed = _run("ip", "netns", "list")
    assert namespace not in listed.stdout, "the namespace was not deleted"
    elapsed = time.monotonic() - start
    print(
        f"\n[{hook}] nft: {dropped} of {seen} UDP datagrams dropped "
        f"({dropped / max(seen, 1):.1%}); "
        f"stores {report['stores_ok']}/{report['stores']} {report['store_errors']}, "
        f"FirstValue finds {report['finds_first_ok']}/{report['finds_first']} "
        f"{report['finds_first_errors']}, "
        f"exhaustive finds {report['finds_all_ok']}/{report['finds_all']} "
        f"{report['finds_all_errors']}; {report['finds_remote']} finds from non-holders; "
        f"join retries {report['join_retries']}; phases join {report['join_seconds']} s, "
        f"store {report['store_seconds']} s, find {report['find_seconds']} s; "
        f"total {elapsed:.1f} s\n[{hook}] node counters: {report['stats']}\n"
        f"[{hook}] routing table sizes: {report['table_sizes']}; failed finds by finding "
        f"node: {report['failed_finds_by_node']}"
    )
    # The rule really dropped datagrams, about one in ten.
    assert seen > 10_000, seen
    assert 0.07 <= dropped / seen <= 0.13, (dropped, seen)
    check_loss_report(report, LOSS_STORES, LOSS_FINDS, LOSS_EXHAUSTIVE)
    assert report["finds_remote"] >= 0.9 * (LOSS_FINDS + LOSS_EXHAUSTIVE), report
    assert report["callback_ids_unexpected"] == 0
    assert report["leaked_threads"] == [] and report["leaked_fds"] == 0, report
    if hook == "input":
        assert report["stats"].get("request-timeout", 0) > 0  # losses were noticed
    else:
        assert report["stats"].get("send-failed", 0) > 0  # EPERM from the dropped sends


# ---------------------------------------------------------------------------
# simnet helpers


def sim_join(net: SimNetwork, node: SimNode, through: SimNode, attempts: int = 10) -> int:
    """Bootstrap ``node`` through ``through``, retrying on BootstrapError
    (under loss the one FIND_NODE may be lost). Returns the retries."""
    for attempt in range(attempts):
        joined = Outcome()
        node.engine.bootstrap([through.address], joined.store_done)
        assert net.run_until(lambda joined=joined: joined.ended, limit=120), "bootstrap hung"
        assert len(joined.ends) == 1, joined.ends
        if joined.ends == [None]:
            return attempt
        assert isinstance(joined.ends[0], BootstrapError), joined.ends
    raise AssertionError(f"no join in {attempts} attempts")


def sim_run(net: SimNetwork, calls: list[Callable[[], Outcome]], concurrency: int) -> list[Outcome]:
    """Start ``calls`` in order with at most ``concurrency`` not ended; run the
    network until all ended (bounded in virtual time for each wait)."""
    outcomes: list[Outcome] = []
    in_flight: list[Outcome] = []
    remaining = iter(calls)
    exhausted = False
    while True:
        while not exhausted and len(in_flight) < concurrency:
            call = next(remaining, None)
            if call is None:
                exhausted = True
                break
            outcome = call()
            outcomes.append(outcome)
            if not outcome.ended:
                in_flight.append(outcome)
        if not in_flight:
            return outcomes
        assert net.run_until(partial(any_ended, list(in_flight)), limit=120), "calls hung"
        in_flight = [o for o in in_flight if not o.ended]


def any_ended(outcomes: list[Outcome]) -> bool:
    return any(outcome.ended for outcome in outcomes)


def sim_store(node: SimNode, key: bytes, value: bytes) -> Outcome:
    outcome = Outcome()
    node.engine.store(key, value, HOUR_NS, outcome.store_done)
    return outcome


def sim_store_keys(
    net: SimNetwork, rng: random.Random, nodes: list[SimNode], count: int
) -> tuple[list[bytes], list[Outcome], list[int]]:
    """Store ``count`` random keys (key i holds b"value-i") from random nodes:
    the keys, every store's outcome, and the indexes of those that succeeded."""
    keys = [rng.randbytes(20) for _ in range(count)]
    stores = sim_run(
        net,
        [partial(sim_store, rng.choice(nodes), key, b"value-%d" % i) for i, key in enumerate(keys)],
        CONCURRENCY,
    )
    return keys, stores, [i for i, outcome in enumerate(stores) if outcome.ends == [None]]


def sim_find(node: SimNode, key: bytes, *, first_only: bool) -> Outcome:
    outcome = Outcome()
    node.engine.find(key, 0, outcome.value, outcome.find_done, first_only=first_only)
    return outcome


def sim_non_holder(rng: random.Random, nodes: list[SimNode], key: bytes) -> tuple[SimNode, bool]:
    others = [node for node in nodes if not node.storage.Get(key)]
    return (rng.choice(others), True) if others else (rng.choice(nodes), False)


def find_ok(outcome: Outcome, value: bytes) -> bool:
    return outcome.ends == [None] and outcome.final_values == [value]


def ended_once(outcome: Outcome) -> bool:
    """One ending; a Find's values each delivered once, and agreeing with its end."""
    if len(outcome.ends) != 1 or len(outcome.values) != len(set(outcome.values)):
        return False
    if outcome.final_values is None:  # a Store
        return not outcome.values
    if outcome.ends[0] is None:
        return bool(outcome.values) and sorted(outcome.values) == sorted(outcome.final_values)
    return not outcome.values


def sim_close_all(net: SimNetwork, outcomes: list[Outcome]) -> None:
    """Let late events arrive (virtual time), then close every engine: nothing
    may end twice, before or after."""
    net.run_until(lambda: False, limit=10.0)
    for node in net.nodes.values():
        node.engine.close()
    net.run_until(lambda: False, limit=10.0)
    not_once = [o.ends for o in outcomes if not ended_once(o)]
    assert not_once == [], f"{len(not_once)} calls did not end exactly once: {not_once[:5]}"


def test_loss_on_simnet() -> None:
    """The namespace scenario on the in-process lossy network: 30 nodes, 10%
    of datagrams lost from the first join on, 500 Stores, 2,000 FirstValue
    Finds and 100 exhaustive Finds, 8 in flight."""
    wall = time.monotonic()
    net = SimNetwork(seed=21, loss=0.10)
    rng = random.Random(21)
    first = net.add_node(timeout=TIMEOUT)
    join_retries = sum(
        sim_join(net, net.add_node(timeout=TIMEOUT), first) for _ in range(LOSS_NODES - 1)
    )
    nodes = list(net.nodes.values())

    keys, stores, stored = sim_store_keys(net, rng, nodes, LOSS_STORES)

    plan = [(True, rng.choice(stored)) for _ in range(LOSS_FINDS)]
    plan += [(False, rng.choice(stored)) for _ in range(LOSS_EXHAUSTIVE)]
    rng.shuffle(plan)
    remote = 0

    def find_call(first_only: bool, i: int) -> Callable[[], Outcome]:
        def call() -> Outcome:
            nonlocal remote
            node, is_remote = sim_non_holder(rng, nodes, keys[i])
            remote += is_remote
            return sim_find(node, keys[i], first_only=first_only)

        return call

    finds = sim_run(net, [find_call(*p) for p in plan], CONCURRENCY)
    sim_close_all(net, stores + finds)

    first_ok = sum(find_ok(o, b"value-%d" % i) for o, (f, i) in zip(finds, plan, strict=True) if f)
    all_ok = sum(
        find_ok(o, b"value-%d" % i) for o, (f, i) in zip(finds, plan, strict=True) if not f
    )
    report = {
        "stores": len(stores),
        "stores_ok": len(stored),
        "finds_first": sum(f for f, _ in plan),
        "finds_first_ok": first_ok,
        "finds_all": sum(not f for f, _ in plan),
        "finds_all_ok": all_ok,
        "store_not_once": 0,  # checked by sim_close_all
        "finds_first_not_once": 0,
        "finds_all_not_once": 0,
    }
    errors = Counter(type(o.ends[0]).__name__ for o in stores + finds if o.ends != [None])
    print(
        f"\nsimnet loss: {net.dropped} of {net.sent} datagrams dropped "
        f"({net.dropped / net.sent:.1%}); stores {len(stored)}/{len(stores)}, FirstValue finds "
        f"{first_ok}/{report['finds_first']}, exhaustive finds {all_ok}/{report['finds_all']}, "
        f"{remote} from non-holders; errors {dict(errors)}; join retries {join_retries}; "
        f"{net.clock.now - 1000:.0f} virtual s in {time.monotonic() - wall:.1f} s"
    )
    assert 0.08 <= net.dropped / net.sent <= 0.12
    check_loss_report(report, LOSS_STORES, LOSS_FINDS, LOSS_EXHAUSTIVE)
    assert remote >= 0.9 * len(plan)


# ---------------------------------------------------------------------------
# Churn


def transfer_coverage(
    new_ids: list[bytes],
    live_ids: list[bytes],
    keys: list[bytes],
    holds: Callable[[int, bytes], bool],
) -> dict[int, tuple[int, int]]:
    """For each new node (by index): (keys it holds, keys it is the closest
    live node to)."""
    owner = {key: min(live_ids, key=lambda node_id: distance(node_id, key)) for key in keys}
    coverage = {}
    for n, node_id in enumerate(new_ids):
        owned = [key for key in keys if owner[key] == node_id]
        coverage[n] = (sum(holds(n, key) for key in owned), len(owned))
    return coverage


def covered(coverage: dict[int, tuple[int, int]], fraction: float = 0.9) -> bool:
    return all(held >= fraction * owned for held, owned in coverage.values())


def describe(coverage: dict[int, tuple[int, int]]) -> str:
    held = sum(h for h, _ in coverage.values())
    owned = sum(o for _, o in coverage.values())
    worst = min((h / o for h, o in coverage.values() if o), default=1.0)
    per_node = " ".join(f"{h}/{o}" for h, o in coverage.values())
    return f"{held}/{owned} ({held / max(owned, 1):.1%}; worst node {worst:.0%}; {per_node})"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_churn_on_real_sockets() -> None:
    """60 nodes on 127.0.0.1 hold 1,000 keys; 18 (30%) close abruptly, 10 new
    ones join through survivors. 99% of FirstValue Finds (from non-holders)
    still succeed, and each new node receives the keys it is closest to."""
    rng = random.Random(60)
    snapshot = ResourceSnapshot.take()
    wall = time.monotonic()
    callbacks = Callbacks()
    nodes = start_cluster(CHURN_NODES, timeout=TIMEOUT)
    everyone = list(nodes)  # closed in finally, including those added later
    try:
        started = time.monotonic() - wall
        keys = [rng.randbytes(20) for _ in range(CHURN_KEYS)]
        phase = time.monotonic()
        store_futures = run_concurrently(
            [
                partial(
                    rng.choice(nodes).Store,
                    key,
                    b"value-%d" % i,
                    3600,
                    callbacks.store(("store", i)),
                )
                for i, key in enumerate(keys)
            ],
            CONCURRENCY,
            timeout=90,
        )
        store_time = time.monotonic() - phase
        stored = [i for i, f in enumerate(store_futures) if f.exception(timeout=0) is None]
        assert len(stored) >= 0.99 * CHURN_KEYS, Counter(
            repr(f.exception(timeout=0)) for f in store_futures
        )

        # 30% leave abruptly: Close sends nothing to the others.
        leaving = set(rng.sample(range(1, CHURN_NODES), CHURN_LEAVE))
        close_all([nodes[i] for i in sorted(leaving)])
        survivors = [node for i, node in enumerate(nodes) if i not in leaving]
        phase = time.monotonic()
        newcomers: list[dht.DHT] = []
        for _ in range(CHURN_JOIN):
            join_with_retries(newcomers, rng.choice(survivors), 1, timeout=TIMEOUT)
            everyone.append(newcomers[-1])
        join_time = time.monotonic() - phase
        live = survivors + newcomers

        phase = time.monotonic()
        plan = [(i, *pick_non_holder(rng, live, keys[i])) for i in stored]
        find_futures = run_concurrently(
            [
                partial(node.Find, keys[i], callbacks.find(("find", i)), dht.FirstValue())
                for i, node, _ in plan
            ],
            CONCURRENCY,
            timeout=90,
        )
        find_time = time.monotonic() - phase
        found = sum(
            f.exception(timeout=0) is None and f.result(timeout=0) == [b"value-%d" % i]
            for f, (i, _, _) in zip(find_futures, plan, strict=True)
        )
        remote = sum(is_remote for _, _, is_remote in plan)

        # Key transfer to the newcomers (paced; wait for it, bounded).
        stored_keys = [keys[i] for i in stored]
        phase = time.monotonic()

        def coverage() -> dict[int, tuple[int, int]]:
            return transfer_coverage(
                [node.id for node in newcomers],
                [node.id for node in live],
                stored_keys,
                lambda n, key: bool(newcomers[n]._engine.storage.Get(key)),
            )

        wait_until(lambda: covered(coverage()), timeout=30, interval=0.1)
        transfer_time = time.monotonic() - phase
        final = coverage()
        stats = total_stats(live)
    finally:
        close_all(everyone)  # joins the node threads: no callback can run after this

    find_errors = Counter(
        type(f.exception(timeout=0)).__name__ for f in find_futures if f.exception(0)
    )
    print(
        f"\nchurn (real sockets): {len(stored)}/{CHURN_KEYS} stored; after {CHURN_LEAVE} left and "
        f"{CHURN_JOIN} joined, FirstValue finds {found}/{len(plan)} ({found / len(plan):.1%}, "
        f"{remote} from non-holders) errors {dict(find_errors)}; newcomers hold "
        f"{describe(final)} of the keys they are closest to (after {transfer_time:.1f} s)\n"
        f"times: start {started:.1f} s, store {store_time:.1f} s, join {join_time:.1f} s, "
        f"find {find_time:.1f} s, total {time.monotonic() - wall:.1f} s\n"
        f"counters of live nodes: {stats}"
    )
    assert all(store_ended_once(("store", i), f, callbacks) for i, f in enumerate(store_futures))
    assert all(
        find_ended_once(("find", i), f, callbacks)
        for f, (i, _, _) in zip(find_futures, plan, strict=True)
    )
    assert found >= 0.99 * len(plan)
    assert remote >= 0.9 * len(plan)
    assert sum(o for _, o in final.values()) > 0, "no key has a newcomer as its closest node"
    assert covered(final), describe(final)
    snapshot.assert_no_leaks(timeout=10)


@pytest.mark.timeout(240)
def test_churn_on_simnet() -> None:
    """The churn scenario on simnet (virtual time): 60 nodes, 1,000 keys,
    18 crash, 10 join through survivors."""
    wall = time.monotonic()
    net = SimNetwork(seed=60)
    rng = random.Random(60)
    first = net.add_node(timeout=TIMEOUT)
    for _ in range(CHURN_NODES - 1):
        sim_join(net, net.add_node(timeout=TIMEOUT), first, attempts=1)
    nodes = list(net.nodes.values())

    keys, stores, stored = sim_store_keys(net, rng, nodes, CHURN_KEYS)
    assert len(stored) >= 0.99 * CHURN_KEYS

    for i in rng.sample(range(1, CHURN_NODES), CHURN_LEAVE):
        nodes[i].crash()
    survivors = [node for node in nodes if node.online]
    newcomers = []
    for _ in range(CHURN_JOIN):
        node = net.add_node(timeout=TIMEOUT)
        sim_join(net, node, rng.choice(survivors), attempts=1)
        newcomers.append(node)
    live = survivors + newcomers

    plan = [(i, *sim_non_holder(rng, live, keys[i])) for i in stored]
    finds = sim_run(
        net,
        [partial(sim_find, node, keys[i], first_only=True) for i, node, _ in plan],
        CONCURRENCY,
    )
    found = sum(find_ok(o, b"value-%d" % i) for o, (i, _, _) in zip(finds, plan, strict=True))
    remote = sum(is_remote for _, _, is_remote in plan)

    stored_keys = [keys[i] for i in stored]

    def coverage() -> dict[int, tuple[int, int]]:
        return transfer_coverage(
            [node.id for node in newcomers],
            [node.id for node in live],
            stored_keys,
            lambda n, key: bool(newcomers[n].storage.Get(key)),
        )

    before = net.clock.now
    net.run_until(lambda: covered(coverage()), limit=30.0)
    final = coverage()
    transfer_time = net.clock.now - before
    sim_close_all(net, stores + finds)

    errors = Counter(type(o.ends[0]).__name__ for o in finds if o.ends != [None])
    print(
        f"\nchurn (simnet): {len(stored)}/{CHURN_KEYS} stored; FirstValue finds "
        f"{found}/{len(plan)} ({found / len(plan):.1%}, {remote} from non-holders) "
        f"errors {dict(errors)}; newcomers hold {describe(final)} of the keys they are "
        f"closest to ({transfer_time:.1f} virtual s after the finds); "
        f"{time.monotonic() - wall:.1f} s"
    )
    assert found >= 0.99 * len(plan)
    assert remote >= 0.9 * len(plan)
    assert sum(o for _, o in final.values()) > 0
    assert covered(final), describe(final)


# ---------------------------------------------------------------------------
# A node cut off for a few timeouts


def test_a_node_cut_off_for_a_while_keeps_its_contacts_and_works_again() -> None:
    """A node that hears nothing for a few timeouts (its thread stalled, or
    its link) sees each of its requests fail, and the others' requests to it
    fail too. It must not void its routing table, nor be dropped from the
    others'. Seen in CI: one node of the namespace loss cluster ended with an
    empty table; its Finds, a tenth of all, ended "not found"."""
    net = SimNetwork(seed=33)
    rng = random.Random(33)
    first = net.add_node(timeout=TIMEOUT)
    for _ in range(29):
        sim_join(net, net.add_node(timeout=TIMEOUT), first, attempts=1)
    nodes = list(net.nodes.values())
    cut = nodes[7]
    others = [node for node in nodes if node is not cut]
    keys, _, stored = sim_store_keys(net, rng, others, 40)
    assert len(stored) == len(keys)
    unheld = [key for key in keys if not cut.storage.Get(key)]
    assert unheld, "the node cut off holds every key: pick another seed"
    contacts = len(cut.engine.table)
    known_by = sum(cut.id in node.engine.table for node in others)

    # Cut off: every request of the node fails twice or more, and so do
    # the others' lookups that ask it. (Dropping the contacts that failed
    # twice left it none, and its Finds below ended "not found".)
    cut.online = False
    during = sim_run(
        net,
        [partial(sim_find, cut, rng.randbytes(20), first_only=False) for _ in range(6)]
        + [partial(sim_find, node, cut.id, first_only=False) for node in others * 2],
        CONCURRENCY,
    )
    assert all(o.ends and o.ends[0] is not None for o in during[:6])
    cut.online = True

    assert len(cut.engine.table) == contacts
    assert sum(cut.id in node.engine.table for node in others) == known_by
    finds = sim_run(
        net, [partial(sim_find, cut, key, first_only=True) for key in unheld], CONCURRENCY
    )
    assert all(find_ok(o, b"value-%d" % keys.index(k)) for o, k in zip(finds, unheld, strict=True))
    key = rng.randbytes(20)
    [store] = sim_run(net, [partial(sim_store, cut, key, b"after")], 1)
    assert store.ends == [None]
    holders = sum(bool(node.storage.Get(key)) for node in nodes)
    assert holders >= K // 2 + 1, holders
    sim_close_all(net, during + finds + [store])
