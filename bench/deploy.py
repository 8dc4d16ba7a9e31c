"""Deployment shapes: nodes in several processes, as they would be deployed.

``python -m bench.deploy single '<json Deploy>'``: one node alone in its own
process (the server) serving load generators in other processes
(``generators``, 2 by default). Each generator runs one client node
bootstrapped from the server and sends it FIND_VALUE requests for absent
keys, the micro workload's request (dht: one request through the client
node's engine; opendht: a ``get`` of an absent key), ``requests`` of them at
each in-flight level of ``levels`` (per generator), all generators at once.
Per level: answered requests per second over the common wall time, p50/p99
latency over every generator's requests, and the server process's CPU. The
headline, ``best_under_5ms``, is the best throughput among the levels whose
p99 is under 5 ms. The server's request limits are raised for the run
(``SERVER_LIMITS``, ``OPENDHT_SERVER_LIMITS``): the defaults would drop a
load generator's requests, which all come from one address.

``python -m bench.deploy network '<json Deploy>'``: ``nodes`` nodes spread
over ``processes`` processes (100 over 4 by default: 25 each), node 0, in
process 0, the bootstrap node. Process 0 starts node 0; then every process
starts its nodes one after another, each joining through node 0 (the
processes at once). Then the cluster workload's plan (``bench.workload.plan``,
the same seed): stores, then finds (as in the cluster workload; then, dht
and opendht, ``find_all``: the first ``finds_all`` keys found again, dht with
a plain K-closest ``Find``, opendht with a ``get`` run to its end; kademlia's
``get`` has no such mode), each operation in the process hosting its
origin node, at most ``concurrency`` in flight per process, all processes
starting each phase together. Per phase: operations per second over the
common wall time (from the first process's start to the last one's end),
p50/p99 latency over all operations, success %, CPU summed over processes
and (dht) the requests the nodes received.

Variants: ``pin`` (dht: in each process every node's threads on one CPU;
the network's process ``i`` on the ``i``-th CPU of this process's set,
round robin; the single shape's server on the last CPU, the generators on
the others) and ``shared`` (dht: ``Config(shared_io=True)``). ``tree``
imports ``dht`` from another checkout (``--baseline``).

Both print one JSON line on stdout, like a driver. They coordinate children
of this module (``server``, ``generator``, ``host``): a child reads one
JSON command a line on stdin and writes one JSON reply a line on stdout; it
ends at ``close`` or at the end of its stdin (so the children of a
coordinator that was killed end too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.workload import (
    PHASE_DEADLINE_S,
    Completion,
    Op,
    Params,
    PhaseResult,
    _percentile,
    plan,
    process_figures,
    run_callback_phase,
    stdout_for_json,
    write_result,
)

HOST = "127.0.0.1"
P99_TARGET_MS = 5.0
SERVER_LIMITS: dict[str, float | int] = {
    "request_rate": 1_000_000_000.0,
    "request_burst": 1_000_000_000,
    "answer_rate": 1_000_000_000_000.0,
    "unproven_answer_rate": 1_000_000_000_000.0,
    "amplification_limit": 1_000_000_000_000,
}
"""dht's server ``Config`` in the single shape (the fields its ``Config``
has), in place of the defaults: 2,000 requests/s per source after a burst
of 10,000, 4 MiB/s of FIND_VALUE answers per source, 256 KiB/s answered to
all unproven sources, 64 KiB to one."""
OPENDHT_SERVER_LIMITS = (-1, -1)
"""opendht's ``DhtConfig.setRateLimit(max_req_per_sec, max_peer_req_per_sec)``
on the server and the generators in the single shape: no limit (the
defaults: 8,192/s, and 1,024/s per IP)."""
START_TIMEOUT_S = 300.0


@dataclass
class Deploy:
    impl: str = "dht"  # dht, opendht or kademlia (network only)
    pin: bool = False  # dht only
    shared: bool = False  # dht only: Config(shared_io=True)
    tree: str | None = None  # dht only: import dht from this checkout
    seed: int = 2026
    # network
    nodes: int = 100
    processes: int = 4
    stores: int = 500
    finds: int = 2000
    finds_all: int | None = None  # dht's K-closest finds (None: as many as finds)
    concurrency: int = 8  # per process
    value_size: int = 64
    # single
    generators: int = 2
    levels: list[int] = field(default_factory=lambda: [1, 8, 32, 64])  # per generator
    requests: int = 5000  # per generator and level
    warmup: int = 500  # per generator, at 8 in flight, not reported
    # which child this is (set by the coordinator)
    index: int = 0

    def params(self) -> Params:
        return Params(
            nodes=self.nodes,
            stores=self.stores,
            finds=self.finds,
            concurrency=self.concurrency,
            value_size=self.value_size,
            seed=self.seed,
            base_port=0,
            pin=self.pin,
            shared=self.shared,
            finds_all=self.finds_all,
        )

    def name(self) -> str:
        return self.impl + ("-shared" if self.shared else "-pinned" if self.pin else "")


# -- the coordinator's side -----------------------------------------------------


class Child:
    """A child process of this module, one JSON command and reply a line."""

    def __init__(self, role: str, settings: Deploy, index: int = 0) -> None:
        self.role = f"{role} {index}"
        params = dataclasses.asdict(dataclasses.replace(settings, index=index))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.deploy", role, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"read {self.role}", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.role}: no answer in {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"{self.role} exited ({self.process.wait()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.role}: {reply['error']}")
        return reply

    def ask(self, command: dict[str, Any], timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def cpu_seconds(self) -> float:
        """User and system CPU of the child so far."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        try:
            self.send({"do": "close"})
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _everyone(children: list[Child], command: dict[str, Any], timeout: float) -> list[Any]:
    """Send ``command`` to every child, then wait for every reply: the
    children start together (the start barrier)."""
    for child in children:
        child.send(command)
    return [child.receive(timeout) for child in children]


def _combine(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase run by several processes: operations over the common wall
    time, latency percentiles over every operation, CPU and requests summed."""
    begin = min(reply["t1"] - reply["seconds"] for reply in replies)
    wall = max(reply["t1"] for reply in replies) - begin
    ops = sum(reply["ops"] for reply in replies)
    ok = sum(reply["ok"] for reply in replies)
    latencies = sorted(lat for reply in replies for lat in reply["latencies_ms"])
    summary: dict[str, Any] = {
        "ops": ops,
        "ops_per_s": ops / wall if wall > 0 else 0.0,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "success_pct": 100.0 * ok / ops if ops else 0.0,
        "cpu_s": sum(reply["cpu_s"] for reply in replies),
        "seconds": wall,
    }
    if all(reply.get("requests") is not None for reply in replies):
        summary["requests"] = sum(reply["requests"] for reply in replies)
    return summary


def run_single(settings: Deploy) -> dict[str, object]:
    if settings.impl not in ("dht", "opendht"):
        raise ValueError(f"the single-node shape runs dht or opendht, not {settings.impl!r}")
    children: list[Child] = []
    try:
        server = Child("server", settings)
        children.append(server)
        generators = [Child("generator", settings, g) for g in range(settings.generators)]
        children += generators
        info = server.ask({"do": "start"})
        _everyone(generators, {"do": "start", **info}, START_TIMEOUT_S)

        def level(concurrency: int, requests: int, tag: str) -> dict[str, Any]:
            received0, cpu0 = server.ask({"do": "requests"})["requests"], server.cpu_seconds()
            command = {"do": "run", "concurrency": concurrency, "requests": requests, "tag": tag}
            replies = _everyone(generators, command, PHASE_DEADLINE_S + 60)
            cpu = server.cpu_seconds() - cpu0
            received = server.ask({"do": "requests"})["requests"]
            summary = _combine(replies)
            answered = sum(reply["ok"] for reply in replies)
            summary["ops_per_s"] = answered / summary["seconds"] if summary["seconds"] else 0.0
            return {
                "concurrency": concurrency,
                "in_flight": concurrency * len(generators),
                **summary,
                "server_cpu_s": cpu,
                "server_requests": None if received is None else received - received0,
                "sent": sum(reply.get("sent") or 0 for reply in replies) or None,
            }

        level(8, settings.warmup, "warmup")
        levels = [level(c, settings.requests, f"level-{c}") for c in settings.levels]
        under = [lv for lv in levels if lv["p99_ms"] < P99_TARGET_MS and lv["success_pct"] >= 99]
        best = max(under, key=lambda lv: lv["ops_per_s"], default=None)
    finally:
        for child in children:
            child.close()
    return {
        "impl": settings.name(),
        "workload": "single",
        "generators": settings.generators,
        "requests_per_level": settings.requests,
        "server_limits": _server_limits_text(settings.impl),
        "levels": levels,
        "best_under_5ms": best["ops_per_s"] if best else 0.0,
        "best_concurrency": best["concurrency"] if best else None,
    }


def _server_limits_text(impl: str) -> str:
    if impl == "opendht":
        return "DhtConfig.setRateLimit(-1, -1) (no limits) on the server and the generators"
    return "Config(" + ", ".join(f"{k}={v:_}" for k, v in SERVER_LIMITS.items()) + ")"


def run_network(settings: Deploy) -> dict[str, object]:
    count, processes = settings.nodes, max(1, min(settings.processes, settings.nodes))
    share = -(-count // processes)  # consecutive indices: node 0 in process 0
    groups = [list(range(p * share, min(count, (p + 1) * share))) for p in range(processes)]
    hosts: list[Child] = []
    try:
        hosts = [Child("host", settings, p) for p in range(processes)]
        _everyone(hosts, {"do": "hello"}, START_TIMEOUT_S)  # imports done
        t0 = time.perf_counter()
        address = hosts[0].ask({"do": "start", "indices": [0], "bootstrap": None})["address"]
        rest = [{"do": "start", "indices": g, "bootstrap": address} for g in groups]
        rest[0]["indices"] = groups[0][1:]
        for host, command in zip(hosts, rest, strict=True):
            host.send(command)
        for host in hosts:
            host.receive(START_TIMEOUT_S)
        join_s = time.perf_counter() - t0
        phases = ["store", "find"] + (["find_all"] if settings.impl != "kademlia" else [])
        results = {
            kind: _combine(_everyone(hosts, {"do": "phase", "kind": kind}, PHASE_DEADLINE_S + 60))
            for kind in phases
        }
        figures = _everyone(hosts, {"do": "figures"}, 60)
    finally:
        for host in hosts:
            host.close()
    return {
        "impl": settings.name(),
        "workload": "network",
        "nodes": count,
        "processes": processes,
        "concurrency": settings.concurrency * processes,
        "concurrency_per_process": settings.concurrency,
        "join_s": join_s,
        **results,
        "peak_rss_mb": sum(f["peak_rss_mb"] for f in figures),
        "threads": sum(f["threads"] for f in figures),
    }


# -- the children's side ----------------------------------------------------------


def _cpu(settings: Deploy, role: str) -> int | None:
    """The CPU this child's nodes are pinned to (``pin``), else None."""
    if not settings.pin:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if role == "server":
        return cpus[-1]
    if role == "generator":
        others = cpus[:-1] or cpus
        return others[settings.index % len(others)]
    return cpus[settings.index % len(cpus)]


def _reply(result: PhaseResult, **extra: object) -> dict[str, Any]:
    """A phase's figures for the coordinator to combine with the others'."""
    return {
        "t1": time.monotonic(),
        "seconds": result.seconds,
        "ops": result.ops,
        "ok": result.ok,
        "cpu_s": result.cpu_seconds,
        "latencies_ms": [round(lat, 4) for lat in result.latencies_ms],
        "requests": result.requests,
        **extra,
    }


def _absent_keys(settings: Deploy, tag: str, count: int) -> list[Op]:
    """A generator's requests at one level: keys nobody stored, the same for
    every implementation."""
    rng = random.Random(f"{settings.seed}/{tag}/{settings.index}")
    return [Op("find", 0, rng.randbytes(20), b"") for _ in range(count)]


class Role:
    """A child: ``do_<command>(**arguments)`` returns the reply."""

    def __init__(self, settings: Deploy, role: str) -> None:
        self.settings = settings
        self.params = settings.params()
        self.cpu = _cpu(settings, role)

    def do_hello(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def do_figures(self) -> dict[str, Any]:
        return dict(process_figures())

    def do_close(self) -> dict[str, Any]:
        return {}


# The single shape.


def _single_ids(settings: Deploy) -> list[bytes]:
    """Node ids: the server's first, then each generator's."""
    return plan(
        Params(nodes=1 + settings.generators, stores=0, finds=0, seed=settings.seed)
    ).node_ids


class DhtServer(Role):
    def do_start(self) -> dict[str, Any]:
        import dht
        from bench.drivers import dht_driver

        fields = {f.name for f in dataclasses.fields(dht.Config)}
        limits = {k: v for k, v in SERVER_LIMITS.items() if k in fields}
        node_id = _single_ids(self.settings)[0]
        self.node = dht.New(dht_driver._config(self.params, self.cpu, local_id=node_id, **limits))
        return {"address": self.node.address, "server_id": self.node.id.hex()}

    def do_requests(self) -> dict[str, Any]:
        return {"requests": self.node.stats()["requests-received"]}

    def do_close(self) -> dict[str, Any]:
        if hasattr(self, "node"):
            self.node.Close()
        return {}


class DhtGenerator(Role):
    def do_start(self, address: str, server_id: str) -> dict[str, Any]:
        import dht
        from bench.drivers import dht_driver

        node_id = _single_ids(self.settings)[1 + self.settings.index]
        config = dht_driver._config(
            self.params, self.cpu, local_id=node_id, bootstrap_addresses=[address]
        )
        self.client = dht.New(config)
        self.send = dht_driver.request_op(self.client, address, bytes.fromhex(server_id))
        return {}

    def do_run(self, concurrency: int, requests: int, tag: str) -> dict[str, Any]:
        ops = _absent_keys(self.settings, tag, requests)
        return _reply(run_callback_phase(ops, concurrency, self.send))

    def do_close(self) -> dict[str, Any]:
        if hasattr(self, "client"):
            self.client.Close()
        return {}


class OpendhtServer(Role):
    def do_start(self) -> dict[str, Any]:
        from bench.drivers import opendht_driver

        node_id = _single_ids(self.settings)[0]
        self.runner = opendht_driver._start(node_id, 0, OPENDHT_SERVER_LIMITS)
        port = self.runner.getBound().getPort()
        return {"address": f"{HOST}:{port}", "server_id": node_id.hex()}

    def do_requests(self) -> dict[str, Any]:
        return {"requests": None}  # opendht counts the requests it sends, not those it gets

    def do_close(self) -> dict[str, Any]:
        if hasattr(self, "runner"):
            from bench.drivers import opendht_driver

            opendht_driver._shutdown([self.runner])
        return {}


class OpendhtGenerator(Role):
    def do_start(self, address: str, server_id: str) -> dict[str, Any]:
        import opendht

        from bench.drivers import opendht_driver

        # Every generator has the same id: with their own ids, the server lists
        # each generator in its answers to the other once it has pinged them (a
        # few seconds in), and every get then also asks the other generator
        # (twice as many GETs sent as gets). With one id, each generator takes
        # the other's entry for itself and leaves it out; ``sent`` shows it.
        node_id = _single_ids(self.settings)[1]
        self.runner = opendht_driver._start(node_id, 0, OPENDHT_SERVER_LIMITS)
        host, port = address.rsplit(":", 1)
        server = opendht.SockAddr.resolve(host, port)[0]
        self.runner.bootstrap(host, port)
        deadline = time.monotonic() + START_TIMEOUT_S
        if not opendht_driver._wait(lambda done: self.runner.ping(server, done), deadline, "ping"):
            raise RuntimeError("the server did not answer a generator's ping")
        self.send = opendht_driver.get_absent_op(self.runner)
        return {}

    def do_run(self, concurrency: int, requests: int, tag: str) -> dict[str, Any]:
        ops = _absent_keys(self.settings, tag, requests)
        sent0 = self.runner.getNodeMessageStats()
        result = run_callback_phase(ops, concurrency, self.send)
        sent = [b - a for a, b in zip(sent0, self.runner.getNodeMessageStats(), strict=True)]
        return _reply(result, sent=sent[2])  # [ping, find, get, listen, put]

    def do_close(self) -> dict[str, Any]:
        if hasattr(self, "runner"):
            from bench.drivers import opendht_driver

            opendht_driver._shutdown([self.runner])
        return {}


# The network shape.


class Host(Role):
    """Some of the network's nodes; ``start`` them, run ``phase``s of the plan."""

    def __init__(self, settings: Deploy, role: str) -> None:
        super().__init__(settings, role)
        self.plan = plan(self.params)
        self.mine: set[int] = set()

    def do_start(self, indices: list[int], bootstrap: str | None) -> dict[str, Any]:
        self.mine.update(indices)
        address = self.start(indices, bootstrap)
        return {"address": address}

    def do_phase(self, kind: str) -> dict[str, Any]:
        every = {
            "store": self.plan.stores,
            "find": self.plan.finds,
            "find_all": self.plan.finds_all,
        }
        ops = [op for op in every[kind] if op.node in self.mine]
        return _reply(self.phase(kind, ops))

    def start(self, indices: list[int], bootstrap: str | None) -> str | None:
        raise NotImplementedError

    def phase(self, kind: str, ops: list[Op]) -> PhaseResult:
        raise NotImplementedError


class DhtHost(Host):
    nodes: dict[int, Any]

    def start(self, indices: list[int], bootstrap: str | None) -> str | None:
        import dht
        from bench.drivers import dht_driver

        self.nodes = getattr(self, "nodes", {})
        boot = [bootstrap] if bootstrap else []
        for i in indices:
            config = dht_driver._config(
                self.params, self.cpu, local_id=self.plan.node_ids[i], bootstrap_addresses=boot
            )
            self.nodes[i] = dht.New(config)
        return self.nodes[indices[0]].address if indices else None

    def phase(self, kind: str, ops: list[Op]) -> PhaseResult:
        from bench.drivers import dht_driver

        nodes = self.nodes
        start: Callable[[Op, Completion], None] = {
            "store": lambda: dht_driver.store_op(nodes),
            "find": lambda: dht_driver.find_op(nodes, first=True),
            "find_all": lambda: dht_driver.find_op(nodes, first=False),
        }[kind]()
        return dht_driver.counted_phase(list(nodes.values()), ops, self.params.concurrency, start)

    def do_close(self) -> dict[str, Any]:
        for node in getattr(self, "nodes", {}).values():
            node.Close()
        return {}


class OpendhtHost(Host):
    runners: dict[int, Any]

    def start(self, indices: list[int], bootstrap: str | None) -> str | None:
        import opendht

        from bench.drivers import opendht_driver as driver

        self.runners = getattr(self, "runners", {})
        deadline = time.monotonic() + PHASE_DEADLINE_S
        contact = None
        if bootstrap:
            host, port = bootstrap.rsplit(":", 1)
            contact = opendht.SockAddr.resolve(host, port)[0]
        for i in indices:
            node_id = self.plan.node_ids[i]
            self.runners[i] = driver._start(node_id, 0, driver.CLUSTER_RATE_LIMIT)
            if contact is not None:
                driver._join(self.runners[i], node_id, contact, deadline)
        if not indices:
            return None
        return f"{HOST}:{self.runners[indices[0]].getBound().getPort()}"

    def phase(self, kind: str, ops: list[Op]) -> PhaseResult:
        from bench.drivers import opendht_driver as driver

        make = {"store": driver.store_op, "find": driver.find_op, "find_all": driver.find_all_op}
        return run_callback_phase(ops, self.params.concurrency, make[kind](self.runners))

    def do_close(self) -> dict[str, Any]:
        from bench.drivers import opendht_driver as driver

        driver._shutdown(list(getattr(self, "runners", {}).values()))
        return {}


class KademliaHost(Host):
    """kademlia's nodes on one asyncio loop in a thread of their own."""

    def __init__(self, settings: Deploy, role: str) -> None:
        from bench.drivers import kademlia_driver as driver

        super().__init__(settings, role)
        driver._quiet_libraries()
        self.servers: dict[int, Any] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kademlia")
        self.thread.start()

    def _call(self, coroutine: Any, timeout: float = PHASE_DEADLINE_S + 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self, indices: list[int], bootstrap: str | None) -> str | None:
        from bench.drivers import kademlia_driver as driver

        async def start() -> str | None:
            first = None
            for i in indices:
                server, (host, port) = await driver._start(self.plan.node_ids[i], 0)
                self.servers[i] = server
                first = first or f"{host}:{port}"
                if bootstrap:
                    contact_host, contact_port = bootstrap.rsplit(":", 1)
                    await server.bootstrap([(contact_host, int(contact_port))])
            return first

        result: str | None = self._call(start())
        return result

    def phase(self, kind: str, ops: list[Op]) -> PhaseResult:
        from bench.drivers import kademlia_driver as driver

        servers = self.servers

        async def store(op: Op) -> bool:
            return bool(await servers[op.node].set(op.key, op.value))

        async def find(op: Op) -> bool:
            return bool(await servers[op.node].get(op.key) == op.value)

        issue = store if kind == "store" else find
        result: PhaseResult = self._call(driver._run_phase(ops, self.params.concurrency, issue))
        return result

    def do_close(self) -> dict[str, Any]:
        async def stop() -> None:
            for server in self.servers.values():
                server.stop()

        try:
            self._call(stop(), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
        return {}


ROLES: dict[tuple[str, str], type[Role]] = {
    ("server", "dht"): DhtServer,
    ("generator", "dht"): DhtGenerator,
    ("server", "opendht"): OpendhtServer,
    ("generator", "opendht"): OpendhtGenerator,
    ("host", "dht"): DhtHost,
    ("host", "opendht"): OpendhtHost,
    ("host", "kademlia"): KademliaHost,
}


def _child(role: str, settings: Deploy, out: int) -> int:
    """Answer the coordinator's commands until ``close`` or the end of stdin."""
    handler = ROLES[(role, settings.impl)](settings, role)
    closed = False
    for line in sys.stdin:
        command = json.loads(line)
        name = command.pop("do")
        try:
            reply = getattr(handler, f"do_{name}")(**command)
        except Exception as error:  # report it, don't hang the coordinator
            traceback.print_exc()
            reply = {"error": repr(error)}
        sys.stdout.flush()
        os.write(out, (json.dumps(reply) + "\n").encode())
        if name == "close":
            closed = True
            break
    if not closed:  # the coordinator is gone
        handler.do_close()
    return 0


def main(argv: list[str]) -> int:
    """``python -m bench.deploy single|network|server|generator|host '<json>'``."""
    out = stdout_for_json()
    what = argv[1] if len(argv) > 1 else ""
    settings = Deploy(**json.loads(argv[2] if len(argv) > 2 else "{}"))
    if settings.tree:  # before anything imports dht
        sys.path.insert(0, os.path.abspath(settings.tree))
    if what in ("server", "generator", "host"):
        return _child(what, settings, out)

    def run() -> dict[str, object]:
        if what == "single":
            return run_single(settings)
        if what == "network":
            return run_network(settings)
        raise ValueError(f"unknown shape {what!r}: single or network")

    return write_result(out, settings.name(), what, run)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
