"""Driver for this library (``dht``): the cluster and micro workloads."""

from __future__ import annotations

import os
import sys
import time
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


def _impl(params: Params) -> str:
    return "dht-pinned" if params.pin else "dht"


def _config(params: Params, **kwargs: object) -> dht.Config:
    """Defaults, or with ``pin`` every node's threads on one CPU (the last
    this process may use), as ``Config.cpus`` documents."""
    if params.pin:
        kwargs["cpus"] = {max(os.sched_getaffinity(0))}
    return dht.Config(**kwargs)  # type: ignore[arg-type]


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

        def store(op: Op, complete: Completion) -> None:
            nodes[op.node].Store(op.key, op.value, TTL, lambda error: complete(error is None))

        def find(op: Op, complete: Completion) -> None:
            future = nodes[op.node].Find(op.key, None, dht.FirstValue())
            future.add_done_callback(lambda f: _complete_find(f, op, complete))

        stores = run_callback_phase(work.stores, params.concurrency, store)
        finds = run_callback_phase(work.finds, params.concurrency, find)
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
    )


def _complete_find(future: Future[list[bytes]], op: Op, complete: Completion) -> None:
    try:
        values = future.result()
    except dht.DHTError:
        complete(False)
        return
    complete(op.value in values)


def run_micro(params: Params, requests: int = MICRO_REQUESTS) -> dict[str, object]:
    """Node A sends node B ``requests`` FIND_VALUE requests for absent keys."""
    work = micro_plan(params, requests)
    server = dht.New(_config(params, local_id=work.node_ids[1]))
    client = dht.New(
        _config(params, local_id=work.node_ids[0], bootstrap_addresses=[server.address])
    )
    try:
        engine = client._engine
        host, port = server.address.rsplit(":", 1)
        target = (host, int(port))

        def send(op: Op, complete: Completion) -> None:
            def answered(event: object, source: object) -> bool:
                complete(True)
                return True

            engine.request(
                target,
                server.id,
                EventType.FIND_VALUE,
                FindValue(key=op.key),
                answered,
                lambda error: complete(False),
            )

        result: PhaseResult = run_callback_phase(work.finds, params.concurrency, send)
    finally:
        client.Close()
        server.Close()
    return micro_result(_impl(params), params, requests, result)


if __name__ == "__main__":
    sys.exit(driver_main("dht", run_cluster, run_micro, sys.argv))
