"""Driver for this library (``dht``): the cluster and micro workloads.

Variants: ``dht`` (defaults), ``dht-pinned`` (``pin``: every node's threads
on one CPU) and ``dht-shared`` (``shared``: ``Config(shared_io=True)``, one
process-wide thread serving every node's sockets and timers; only where
``dht.Config`` has that field).

Cluster: stores, then finds with ``FirstValue`` (``find``: ends at the first
holder), then the same keys found with a plain ``Find`` (``find_all``: the K
closest asked, every value returned). Each phase also reports ``requests``:
the requests the nodes received during it (``requests-received``, summed).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future

import dht
from bench.workload import (
    MICRO_REQUESTS,
    Completion,
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
    run_callback_phase,
)
from dht.wire.events import EventType, FindValue

TTL = 3600.0


def has_shared_io() -> bool:
    """Whether this tree's ``dht.Config`` has ``shared_io`` (added in issue 19)."""
    return "shared_io" in {f.name for f in dataclasses.fields(dht.Config)}


def _impl(params: Params) -> str:
    return "dht-shared" if params.shared else "dht-pinned" if params.pin else "dht"


def _config(params: Params, cpu: int | None = None, **kwargs: object) -> dht.Config:
    """Defaults; with ``pin`` every node's threads on one CPU (``cpu``, else
    the last this process may use), as ``Config.cpus`` documents; with
    ``shared`` ``shared_io=True``."""
    if params.pin:
        kwargs["cpus"] = {max(os.sched_getaffinity(0)) if cpu is None else cpu}
    if params.shared:
        if not has_shared_io():
            raise RuntimeError("this dht has no Config.shared_io")
        kwargs["shared_io"] = True
    return dht.Config(**kwargs)  # type: ignore[arg-type]


def requests_received(nodes: list[dht.DHT]) -> int:
    """Requests received so far by ``nodes``, together."""
    return sum(node.stats()["requests-received"] for node in nodes)


def counted_phase(
    nodes: list[dht.DHT],
    ops: list[Op],
    concurrency: int,
    start: Callable[[Op, Completion], None],
) -> PhaseResult:
    """``run_callback_phase``, with the requests ``nodes`` received meanwhile."""
    before = requests_received(nodes)
    result = run_callback_phase(ops, concurrency, start)
    result.requests = requests_received(nodes) - before
    return result


def store_op(nodes: list[dht.DHT]) -> Callable[[Op, Completion], None]:
    """A plan's store from its node: ``Store``, a success when no error."""

    def store(op: Op, complete: Completion) -> None:
        nodes[op.node].Store(op.key, op.value, TTL, lambda error: complete(error is None))

    return store


def find_op(nodes: list[dht.DHT], *, first: bool) -> Callable[[Op, Completion], None]:
    """A plan's find from its node: with ``first`` ``Find(key, None,
    FirstValue())``, else a plain ``Find(key)``; a success when the values
    include the stored one."""
    opts = (dht.FirstValue(),) if first else ()

    def find(op: Op, complete: Completion) -> None:
        future = nodes[op.node].Find(op.key, None, *opts)
        future.add_done_callback(lambda f: complete_find(f, op, complete))

    return find


def run_cluster(params: Params) -> dict[str, object]:
    work = plan(params)
    nodes: list[dht.DHT] = []
    try:
        t0 = time.perf_counter()
        nodes.append(dht.New(_config(params, local_id=work.node_ids[0])))
        bootstrap = [nodes[0].address]
        for node_id in work.node_ids[1:]:
            nodes.append(dht.New(_config(params, local_id=node_id, bootstrap_addresses=bootstrap)))
        join_s = time.perf_counter() - t0
        idle = idle_cpu(2.0)
        c = params.concurrency
        stores = counted_phase(nodes, work.stores, c, store_op(nodes))
        finds = counted_phase(nodes, work.finds, c, find_op(nodes, first=True))
        finds_all = counted_phase(nodes, work.finds_all, c, find_op(nodes, first=False))
        figures = process_figures()
    finally:
        for node in nodes:
            node.Close()
    return cluster_result(
        _impl(params),
        params,
        join_s=join_s,
        stores=stores,
        finds=finds,
        idle_cpu_per_s=idle,
        figures=figures,
        finds_all=finds_all,
    )


def complete_find(future: Future[list[bytes]], op: Op, complete: Completion) -> None:
    try:
        values = future.result()
    except dht.DHTError:
        complete(False)
        return
    complete(op.value in values)


def request_op(
    client: dht.DHT, server_address: str, server_id: bytes
) -> Callable[[Op, Completion], None]:
    """One FIND_VALUE request of ``op.key`` from ``client`` to the server,
    sent through the client's engine (one datagram, one answer, no lookup);
    a success when it is answered."""
    engine = client._engine
    host, port = server_address.rsplit(":", 1)
    target = (host, int(port))

    def send(op: Op, complete: Completion) -> None:
        def answered(event: object, source: object) -> bool:
            complete(True)
            return True

        engine.request(
            target,
            server_id,
            EventType.FIND_VALUE,
            FindValue(key=op.key),
            answered,
            lambda error: complete(False),
        )

    return send


def run_micro(params: Params, requests: int = MICRO_REQUESTS) -> dict[str, object]:
    """Node A sends node B ``requests`` FIND_VALUE requests for absent keys."""
    work = micro_plan(params, requests)
    server = dht.New(_config(params, local_id=work.node_ids[1]))
    client = dht.New(
        _config(params, local_id=work.node_ids[0], bootstrap_addresses=[server.address])
    )
    try:
        send = request_op(client, server.address, server.id)
        result: PhaseResult = run_callback_phase(work.finds, params.concurrency, send)
    finally:
        client.Close()
        server.Close()
    return micro_result(_impl(params), params, requests, result)


if __name__ == "__main__":
    sys.exit(driver_main("dht", run_cluster, run_micro, sys.argv))
