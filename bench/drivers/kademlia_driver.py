"""Driver for the peer ``kademlia`` 2.2.3 (pure Python, asyncio, on rpcudp).

Cluster workload: ``params.nodes`` ``kademlia.Server`` instances in this process,
on one asyncio loop, node ``i`` listening on 127.0.0.1:``base_port + i`` (an
OS-chosen port when ``base_port`` is 0) with the id ``plan(params).node_ids[i]``.
Node 0 only listens; every other node joins through it with ``bootstrap()``
(a PING of node 0, then an iterative lookup of its own id), one after another.
Stores are ``Server.set(key, value)`` and finds ``Server.get(key)``; kademlia
hashes the 20-byte key with SHA-1 itself, the same way for both. A find counts
only if ``get`` returns the stored value (kademlia keeps one value per key).
Known failures of the peer itself: its ``TableTraverser`` stops as soon as it
runs out of buckets on the right even when buckets on the left hold contacts, so
``find_neighbors`` can return nothing when the key's bucket and its left
neighbour are empty; ``set`` then fails ("no known neighbors") and so do the
finds of that key (seen at N=100, C=32: 2 stores, 8 finds).

Micro workload: two servers; A sends B one FIND_VALUE RPC per request with
``KademliaProtocol.call_find_value`` (one UDP request, one reply: B answers with
its closest nodes since the key is absent), not an iterative lookup. A request
succeeds when B's reply arrives (rpcudp gives up after 5 s).

Every phase has a deadline; operations still running when it passes count as
failures. ``python -m bench.drivers.kademlia_driver cluster|micro '<json Params>'``
prints one JSON line on stdout and exits 0, or a JSON line with ``"error"`` and
exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.workload import (
    MICRO_REQUESTS,
    PHASE_DEADLINE_S,
    Op,
    Params,
    PhaseResult,
    cluster_result,
    driver_main,
    idle_cpu,
    micro_plan,
    micro_result,
    plan,
    process_figures,
)

IMPL = "kademlia"
HOST = "127.0.0.1"


def _quiet_libraries() -> None:
    # rpcudp logs every timeout at ERROR and kademlia warns about lost nodes;
    # asyncio reports the futures rpcudp leaves behind when the loop closes.
    for name in ("kademlia", "rpcudp", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


async def _run_phase(
    ops: list[Op],
    concurrency: int,
    issue: Callable[[Op], Awaitable[bool]],
    deadline_s: float = PHASE_DEADLINE_S,
) -> PhaseResult:
    """Run ``ops`` in order with at most ``concurrency`` in flight: that many
    workers take the next operation as soon as their last one ends."""
    result = PhaseResult(ops=len(ops))
    pending = iter(ops)

    async def worker() -> None:
        for op in pending:
            began = time.perf_counter()
            try:
                ok = await issue(op)
            except Exception:  # a failed operation, not a failed run
                ok = False
            result.latencies_ms.append((time.perf_counter() - began) * 1000)
            result.ok += bool(ok)

    cpu0, t0 = time.process_time(), time.perf_counter()
    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(ops))))]
    _, late = await asyncio.wait(workers, timeout=deadline_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - cpu0
    return result


async def _idle_cpu(seconds: float) -> float:
    """``idle_cpu`` with the event loop still running (a plain ``idle_cpu`` call
    would block the loop, so kademlia's timers and sockets could not cost
    anything): the measurement sleeps in a short-lived thread of its own."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()

    def measure() -> None:
        value = idle_cpu(seconds)
        loop.call_soon_threadsafe(done.set_result, value)

    thread = threading.Thread(target=measure, name="idle-cpu")
    thread.start()
    value = await done
    thread.join()
    return value


async def _start(node_id: bytes, port: int) -> tuple[Any, tuple[str, int]]:
    from kademlia.network import Server

    server = Server(node_id=node_id)
    await server.listen(port, interface=HOST)
    host, bound = server.transport.get_extra_info("sockname")[:2]
    return server, (host, bound)


async def _cluster(params: Params) -> dict[str, object]:
    work = plan(params)
    servers: list[Any] = []
    try:
        t0 = time.perf_counter()

        async def join() -> None:
            first, address = await _start(work.node_ids[0], params.port(0))
            servers.append(first)
            for i, node_id in enumerate(work.node_ids[1:], start=1):
                server, _ = await _start(node_id, params.port(i))
                servers.append(server)
                await server.bootstrap([address])

        await asyncio.wait_for(join(), PHASE_DEADLINE_S)
        join_s = time.perf_counter() - t0
        idle = await _idle_cpu(2.0)

        async def store(op: Op) -> bool:
            return bool(await servers[op.node].set(op.key, op.value))

        async def find(op: Op) -> bool:
            return bool(await servers[op.node].get(op.key) == op.value)

        stores = await _run_phase(work.stores, params.concurrency, store)
        finds = await _run_phase(work.finds, params.concurrency, find)
        figures = process_figures()
    finally:
        for server in servers:
            server.stop()
    return cluster_result(
        IMPL,
        params,
        join_s=join_s,
        stores=stores,
        finds=finds,
        idle_cpu_per_s=idle,
        figures=figures,
    )


async def _micro(params: Params, requests: int) -> dict[str, object]:
    from kademlia.node import Node

    work = micro_plan(params, requests)
    ids = work.node_ids
    client = server = None
    try:
        server, (host, port) = await _start(ids[1], params.port(1))
        client, _ = await _start(ids[0], params.port(0))
        await asyncio.wait_for(client.bootstrap([(host, port)]), PHASE_DEADLINE_S)
        target = Node(server.node.id, host, port)

        async def find_value(op: Op) -> bool:
            answered, _ = await client.protocol.call_find_value(target, Node(op.key))
            return bool(answered)

        result = await _run_phase(work.finds, params.concurrency, find_value)
    finally:
        for node in (client, server):
            if node is not None:
                node.stop()
    return micro_result(IMPL, params, requests, result)


def run_cluster(params: Params) -> dict[str, object]:
    _quiet_libraries()
    return asyncio.run(_cluster(params))


def run_micro(params: Params, requests: int = MICRO_REQUESTS) -> dict[str, object]:
    _quiet_libraries()
    return asyncio.run(_micro(params, requests))


if __name__ == "__main__":
    sys.exit(driver_main(IMPL, run_cluster, run_micro, sys.argv))
