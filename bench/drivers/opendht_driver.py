"""Driver for the peer ``opendht`` 4.4.2 (C++ core, Cython bindings).

Every node is a threaded ``opendht.DhtRunner`` in this process (each runs its
own DHT thread and socket thread), bound to 127.0.0.1 only, port
``base_port + i`` (OS-chosen when ``base_port`` is 0), with the node id
``plan(params).node_ids[i]`` set through ``DhtConfig.setNodeId``. Keys are the
plan's 20-byte keys used as they are: ``InfoHash(key.hex().encode())`` (the
binding's constructor parses 40 hex digits; raw bytes would give the zero hash).
No identity, so values are plain unsigned ``Value(bytes)``.

Cluster workload: node 0 runs alone; each other node then runs, bootstraps from
node 0 and counts as joined when node 0 has answered its ping and its lookup of
its own id has ended (``bootstrap()`` alone is fire-and-forget; this is what
kademlia's ``bootstrap()`` and dht's join wait for). Stores are ``put`` (done
when the closest nodes acknowledged it), finds are ``get``; a find succeeds on
the first value equal to the stored one, and stops the lookup there. Then
``find_all``: the same keys (the first ``finds_all``) with a ``get`` left to
run until opendht's search is done (its closest nodes answered), a success if
the stored value came: like dht's plain ``Find``.

Rate limits: opendht drops incoming requests over a global limit (8,192/s by
default) and over a per-source-IP limit (global / 8 = 1,024/s by default), and
retries its own unanswered requests after a second. On 127.0.0.1 every peer has
the same IP, so the per-IP limit caps what each node accepts from the whole
rest of the cluster. ``DhtConfig.setRateLimit(max_req_per_sec,
max_peer_req_per_sec)`` sets both; -1 means no limit. The micro workload
always disables them ("opendht without its rate limit"); the cluster workload
uses ``CLUSTER_RATE_LIMIT`` (opendht's defaults: at N=100, S=500, F=2000 the
figures were the same with both limits off, so the defaults cost nothing there).

Micro workload: two runners, A bootstrapped from B. One "request" is a ``get``
of an absent key on A: A's routing table holds only B, so the get sends B
exactly one GET request (opendht's FIND_VALUE: B answers with no values and
its closest nodes, i.e. none) and A's done callback fires on that reply. A's
outgoing message counters (``getNodeMessageStats``) show one get per request
and no find_node. It still runs opendht's search machinery on A for each key
(a new search object per key), so it costs a little more client work than one
bare RPC. A request succeeds when the done callback reports ok.

Every phase has a deadline; operations still running when it passes count as
failures. ``python -m bench.drivers.opendht_driver cluster|micro '<json Params>'``
prints one JSON line on stdout and exits 0, or a JSON line with ``"error"`` and
exits 1.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.workload import (
    MICRO_REQUESTS,
    PHASE_DEADLINE_S,
    Completion,
    Op,
    Params,
    cluster_result,
    driver_main,
    idle_cpu,
    micro_plan,
    micro_result,
    plan,
    process_figures,
    run_callback_phase,
)

IMPL = "opendht"
HOST = "127.0.0.1"
NO_LIMIT = -1
CLUSTER_RATE_LIMIT: tuple[int, int] | None = None
"""(max_req_per_sec, max_peer_req_per_sec) for the cluster, None for opendht's defaults."""


def _infohash(key: bytes) -> Any:
    import opendht

    return opendht.InfoHash(key.hex().encode())


def _check_port(port: int) -> None:
    """The binding does not translate C++ exceptions: a port already in use
    aborts the process (``terminate``) instead of raising. Try it first."""
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, port))  # OSError: address already in use


def _start(node_id: bytes, port: int, rate_limit: tuple[int, int] | None) -> Any:
    import opendht

    _check_port(port)
    config = opendht.DhtConfig()
    config.setNodeId(_infohash(node_id))
    if rate_limit is not None:
        config.setRateLimit(*rate_limit)
    runner = opendht.DhtRunner()
    runner.run(port=port, ipv4=HOST, config=config)
    return runner


def _wait(start: Any, deadline: float, what: str) -> bool:
    """Call ``start(done)`` and wait for ``done(ok)`` until ``deadline``."""
    finished = threading.Event()
    outcome: list[bool] = []

    def done(ok: bool, *_: object) -> None:
        outcome.append(bool(ok))
        finished.set()

    start(done)
    if not finished.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"{what}: no answer before the deadline")
    return outcome[0]


def _join(runner: Any, node_id: bytes, contact: Any, deadline: float) -> None:
    runner.bootstrap(HOST, str(contact.getPort()))
    if not _wait(lambda done: runner.ping(contact, done), deadline, "ping of node 0"):
        raise RuntimeError("node 0 did not answer a joining node's ping")
    _wait(
        lambda done: runner.get(_infohash(node_id), lambda value: True, done),
        deadline,
        "lookup of the joining node's own id",
    )


def _shutdown(runners: list[Any]) -> None:
    """Stop every runner and join its threads. The binding's ``join`` keeps the
    GIL while it waits for a lock that the DHT thread holds while it calls the
    shutdown callback (which needs the GIL), so ``shutdown(); join()`` can
    deadlock: wait for the callbacks first, then join."""
    stopped = [threading.Event() for _ in runners]
    for runner, event in zip(runners, stopped, strict=True):
        runner.shutdown(event.set)
    give_up = time.monotonic() + 30.0
    if not all(event.wait(max(0.0, give_up - time.monotonic())) for event in stopped):
        print("opendht: a runner did not shut down; not joining", file=sys.stderr)
        return
    time.sleep(0.1)  # let the callbacks return and release the GIL
    for runner in runners:
        runner.join()


def store_op(runners: Any) -> Callable[[Op, Completion], None]:
    """A plan's store from its node (``runners[op.node]``): ``put``."""
    import opendht

    def store(op: Op, complete: Completion) -> None:
        value = opendht.Value(op.value)
        runners[op.node].put(_infohash(op.key), value, lambda ok, nodes: complete(ok))

    return store


def find_op(runners: Any) -> Callable[[Op, Completion], None]:
    """A plan's find from its node: ``get``, a success on the stored value,
    which also stops the lookup."""

    def find(op: Op, complete: Completion) -> None:
        def on_value(value: Any) -> bool:
            if value.data == op.value:
                complete(True)
                return False  # found it: stop the lookup
            return True

        runners[op.node].get(_infohash(op.key), on_value, lambda ok, nodes: complete(False))

    return find


def find_all_op(runners: Any) -> Callable[[Op, Completion], None]:
    """A plan's find from its node, left to run to its end: ``get`` with a
    callback that asks for more, done when opendht's search is (its closest
    nodes answered); a success if the stored value came."""

    def find(op: Op, complete: Completion) -> None:
        seen: list[bool] = []

        def on_value(value: Any) -> bool:
            if value.data == op.value:
                seen.append(True)
            return True

        runners[op.node].get(_infohash(op.key), on_value, lambda ok, nodes: complete(bool(seen)))

    return find


def get_absent_op(client: Any) -> Callable[[Op, Completion], None]:
    """The micro workload's request: a ``get`` of an absent key on ``client``
    (one GET to the node it knows), a success when its done callback says ok."""

    def get(op: Op, complete: Completion) -> None:
        client.get(_infohash(op.key), lambda value: True, lambda ok, nodes: complete(ok))

    return get


def run_cluster(params: Params) -> dict[str, object]:
    work = plan(params)
    runners: list[Any] = []
    try:
        t0 = time.perf_counter()
        deadline = time.monotonic() + PHASE_DEADLINE_S
        runners.append(_start(work.node_ids[0], params.port(0), CLUSTER_RATE_LIMIT))
        contact = runners[0].getBound()
        for i, node_id in enumerate(work.node_ids[1:], start=1):
            runners.append(_start(node_id, params.port(i), CLUSTER_RATE_LIMIT))
            _join(runners[-1], node_id, contact, deadline)
        join_s = time.perf_counter() - t0
        idle = idle_cpu(2.0)

        stores = run_callback_phase(work.stores, params.concurrency, store_op(runners))
        finds = run_callback_phase(work.finds, params.concurrency, find_op(runners))
        finds_all = run_callback_phase(work.finds_all, params.concurrency, find_all_op(runners))
        figures = process_figures()
    finally:
        _shutdown(runners)
    return cluster_result(
        IMPL,
        params,
        join_s=join_s,
        stores=stores,
        finds=finds,
        idle_cpu_per_s=idle,
        figures=figures,
        finds_all=finds_all,
    )


def run_micro(params: Params, requests: int = MICRO_REQUESTS) -> dict[str, object]:
    work = micro_plan(params, requests)
    ids = work.node_ids
    unlimited = (NO_LIMIT, NO_LIMIT)
    runners: list[Any] = []
    try:
        runners.append(_start(ids[1], params.port(1), unlimited))
        runners.append(_start(ids[0], params.port(0), unlimited))
        server, client = runners
        deadline = time.monotonic() + PHASE_DEADLINE_S
        client.bootstrap(HOST, str(server.getBound().getPort()))
        if not _wait(lambda done: client.ping(server.getBound(), done), deadline, "ping"):
            raise RuntimeError("node B did not answer node A's ping")

        result = run_callback_phase(work.finds, params.concurrency, get_absent_op(client))
    finally:
        _shutdown(runners)
    return micro_result(IMPL, params, requests, result)


if __name__ == "__main__":
    sys.exit(driver_main(IMPL, run_cluster, run_micro, sys.argv))
