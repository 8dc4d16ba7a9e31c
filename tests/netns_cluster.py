"""A Store/Find workload on a cluster of real nodes; run inside a network
namespace by ``test_faults.py``, which drops datagrams there with nftables.

    ip netns exec NS python tests/netns_cluster.py '{"nodes": 30, ...}'

starts the nodes on 127.0.0.1 (inside the namespace), runs the workload and
prints one JSON line of counts on stdout; the test asserts on them. The
helpers here (bounded concurrency, exactly-once checks) are also imported by
``test_faults.py`` for its in-process real-socket tests.

Parameters (all optional): ``nodes``, ``stores``, ``finds`` (with
``dht.FirstValue()``), ``exhaustive_finds`` (default Finds), ``concurrency``
(calls in flight), ``timeout`` (``Config.timeout``), ``seed``,
``join_attempts`` (``New`` is retried on ``BootstrapError``: under loss the
one FIND_NODE to the bootstrap node may be lost), ``deadline`` (seconds for
the whole run).
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from functools import partial
from typing import Any

from cluster import Callbacks, ResourceSnapshot, add_node, close_all, open_fds, wait_until

import dht

TTL = 3600
DEFAULTS: dict[str, Any] = {
    "nodes": 30,
    "stores": 500,
    "finds": 2000,
    "exhaustive_finds": 100,
    "concurrency": 8,
    "timeout": 0.5,
    "seed": 1,
    "join_attempts": 10,
    "deadline": 400.0,
}


def run_concurrently(
    calls: list[Callable[[], Future[Any]]], concurrency: int, timeout: float
) -> list[Future[Any]]:
    """Issue ``calls`` in order with at most ``concurrency`` futures pending;
    wait (bounded by ``timeout`` in all) until every future is done."""
    deadline = time.monotonic() + timeout
    slots = threading.BoundedSemaphore(concurrency)
    futures: list[Future[Any]] = []
    for call in calls:
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"{len(futures)} of {len(calls)} calls issued in {timeout} s")
        future = call()
        futures.append(future)
        future.add_done_callback(lambda _: slots.release())
    remaining = max(0.0, deadline - time.monotonic())
    _, pending = concurrent.futures.wait(futures, timeout=remaining)
    if pending:
        raise TimeoutError(f"{len(pending)} of {len(futures)} calls did not end in {timeout} s")
    return futures


def store_ended_once(call_id: Hashable, future: Future[Any], callbacks: Callbacks) -> bool:
    """One callback, with the future's outcome."""
    calls = callbacks.calls(call_id)
    return (
        future.done()
        and len(calls) == 1
        and calls[0].value is None
        and calls[0].error is future.exception(timeout=0)
    )


def find_ended_once(call_id: Hashable, future: Future[Any], callbacks: Callbacks) -> bool:
    """Success: each value once, no error callback, the future holding exactly
    those values. Failure: one error callback (the future's error), no value."""
    if not future.done():
        return False
    calls = callbacks.calls(call_id)
    values = [call.value for call in calls if call.error is None]
    errors = [call.error for call in calls if call.error is not None]
    if None in values or any(call.value is not None for call in calls if call.error):
        return False
    error = future.exception(timeout=0)
    if error is None:
        result = future.result(timeout=0)
        return (
            not errors
            and bool(values)
            and len(values) == len(set(values))
            and sorted(values) == sorted(result)
        )
    return not values and errors == [error]


def join_with_retries(
    nodes: list[dht.DHT], bootstrap: dht.DHT, attempts: int, **config: Any
) -> int:
    """Start one node joining through ``bootstrap`` and append it to ``nodes``;
    retry ``New`` on ``BootstrapError`` (at most ``attempts`` in all).
    Returns the number of retries."""
    for attempt in range(attempts):
        try:
            nodes.append(add_node(bootstrap, **config))
            return attempt
        except dht.BootstrapError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def holders(nodes: list[dht.DHT], key: bytes) -> list[dht.DHT]:
    return [node for node in nodes if node._engine.storage.Get(key)]


def pick_non_holder(rng: random.Random, nodes: list[dht.DHT], key: bytes) -> tuple[dht.DHT, bool]:
    """A random node that does not hold ``key`` (so the Find goes through the
    network), or any node if all hold it. Returns (node, remote)."""
    others = [node for node in nodes if not node._engine.storage.Get(key)]
    if others:
        return rng.choice(others), True
    return rng.choice(nodes), False


def total_stats(nodes: list[dht.DHT]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for node in nodes:
        totals.update(node.stats())
    return dict(sorted(totals.items()))


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    rng = random.Random(p["seed"])
    start = time.monotonic()
    deadline = start + p["deadline"]
    snapshot = ResourceSnapshot.take()
    report: dict[str, Any] = {"params": p}
    nodes: list[dht.DHT] = []
    callbacks = Callbacks()
    try:
        retries = 0
        nodes.append(add_node(None, timeout=p["timeout"]))
        for _ in range(p["nodes"] - 1):
            retries += join_with_retries(nodes, nodes[0], p["join_attempts"], timeout=p["timeout"])
        report["join_retries"] = retries
        report["join_seconds"] = round(time.monotonic() - start, 2)

        # Stores, from random nodes, of one value per key.
        keys = [rng.randbytes(20) for _ in range(p["stores"])]
        phase = time.monotonic()
        store_calls = [
            partial(
                rng.choice(nodes).Store, key, b"value-%d" % i, TTL, callbacks.store(("store", i))
            )
            for i, key in enumerate(keys)
        ]
        store_futures = run_concurrently(store_calls, p["concurrency"], deadline - time.monotonic())
        report["store_seconds"] = round(time.monotonic() - phase, 2)
        stored = [i for i, f in enumerate(store_futures) if f.exception(timeout=0) is None]
        store_errors = Counter(
            type(f.exception(timeout=0)).__name__ for f in store_futures if f.exception(timeout=0)
        )

        # Finds of stored keys, each from a node that does not hold the key.
        remote = 0
        finders: dict[tuple[str, int], int] = {}  # (kind, call number) -> node index
        finds: list[tuple[str, int, int]] = []  # (kind, call number, key index)
        for n in range(p["finds"]):
            finds.append(("first", n, rng.choice(stored)))
        for n in range(p["exhaustive_finds"]):
            finds.append(("all", n, rng.choice(stored)))
        rng.shuffle(finds)

        def find_call(kind: str, n: int, i: int) -> Callable[[], Future[Any]]:
            def call() -> Future[Any]:
                nonlocal remote
                node, is_remote = pick_non_holder(rng, nodes, keys[i])
                remote += is_remote
                finders[kind, n] = nodes.index(node)
                opts = (dht.FirstValue(),) if kind == "first" else ()
                return node.Find(keys[i], callbacks.find((kind, n)), *opts)

            return call

        phase = time.monotonic()
        find_futures = run_concurrently(
            [find_call(*f) for f in finds], p["concurrency"], deadline - time.monotonic()
        )
        report["find_seconds"] = round(time.monotonic() - phase, 2)
        report["stats"] = total_stats(nodes)
        # For a diagnosis: a node with a voided table fails every Find it makes.
        report["table_sizes"] = [len(node._engine.table) for node in nodes]
    finally:
        close_all(nodes)  # joins every node thread: no callback runs after this

    # Exactly once, checked after Close: a late second ending would show.
    report["stores"] = len(keys)
    report["stores_ok"] = len(stored)
    report["store_errors"] = dict(store_errors)
    report["store_not_once"] = sum(
        not store_ended_once(("store", i), f, callbacks) for i, f in enumerate(store_futures)
    )
    for kind in ("first", "all"):
        mine = [(f, n, i) for (k, n, i), f in zip(finds, find_futures, strict=True) if k == kind]
        report[f"finds_{kind}"] = len(mine)
        report[f"finds_{kind}_ok"] = sum(
            f.exception(timeout=0) is None and f.result(timeout=0) == [b"value-%d" % i]
            for f, _, i in mine
        )
        report[f"finds_{kind}_errors"] = dict(
            Counter(type(f.exception(timeout=0)).__name__ for f, _, _ in mine if f.exception(0))
        )
        report[f"finds_{kind}_not_once"] = sum(
            not find_ended_once((kind, n), f, callbacks) for f, n, _ in mine
        )
    report["finds_remote"] = remote
    report["failed_finds_by_node"] = dict(
        Counter(
            finders[k, n]
            for (k, n, _), f in zip(finds, find_futures, strict=True)
            if f.exception(timeout=0)
        ).most_common()
    )
    expected_ids = {("store", i) for i in range(len(keys))} | {(k, n) for k, n, _ in finds}
    report["callback_ids_unexpected"] = len(callbacks.ids() - expected_ids)

    wait_until(lambda: not snapshot.new_threads() and open_fds() <= snapshot.fds, 10)
    report["leaked_threads"] = [t.name for t in snapshot.new_threads()]
    report["leaked_fds"] = max(0, open_fds() - snapshot.fds)
    report["seconds"] = round(time.monotonic() - start, 2)
    return report


def main(argv: list[str]) -> int:
    params = json.loads(argv[1]) if len(argv) > 1 else {}
    print(json.dumps(run(params)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
