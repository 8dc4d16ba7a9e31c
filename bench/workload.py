"""The cluster workload shared by every implementation's driver.

A driver gets a ``Params`` and returns a ``dict`` of figures. Everything an
implementation must do the same way comes from here: node ids and the
operation sequence (``plan``, fixed seed), latency statistics, and the
process measurements (CPU seconds, peak RSS, threads).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Params:
    nodes: int = 100
    stores: int = 500
    finds: int = 2000
    concurrency: int = 1
    value_size: int = 64
    seed: int = 2026
    base_port: int = 20000
    pin: bool = False  # dht only: every node's threads on one CPU (Config.cpus)
    shared: bool = False  # dht only: Config(shared_io=True), one I/O thread per process
    finds_all: int | None = None  # find_all phase: the first finds_all finds (None: all)

    def port(self, index: int) -> int:
        """Node ``index``'s UDP port (0: the OS chooses, when base_port is 0)."""
        return self.base_port + index if self.base_port else 0


PHASE_DEADLINE_S = 300.0
"""Operations still running this long after a phase began count as failures."""
MICRO_REQUESTS = 5000


@dataclass(frozen=True)
class Op:
    kind: str  # "store" or "find"
    node: int  # index of the node that issues it
    key: bytes  # 20 bytes
    value: bytes  # the stored value (for a find: the value it must return)


@dataclass
class Plan:
    node_ids: list[bytes]
    stores: list[Op]
    finds: list[Op]
    finds_all: list[Op] = field(default_factory=list)
    """The find_all phase's finds: the first ``Params.finds_all`` of ``finds``."""


def plan(params: Params) -> Plan:
    """Node ids and operations, identical for every implementation."""
    rng = random.Random(params.seed)
    node_ids = [rng.randbytes(20) for _ in range(params.nodes)]
    stores = []
    for i in range(params.stores):
        key = hashlib.sha1(b"bench-key-%d-%d" % (params.seed, i)).digest()
        value = rng.randbytes(params.value_size)
        stores.append(Op("store", rng.randrange(params.nodes), key, value))
    finds = [
        Op("find", rng.randrange(params.nodes), op.key, op.value)
        for op in (rng.choice(stores) for _ in range(params.finds))
    ]
    count = len(finds) if params.finds_all is None else params.finds_all
    return Plan(node_ids, stores, finds, finds[:count])


def micro_plan(params: Params, requests: int = MICRO_REQUESTS) -> Plan:
    """The micro workload: two node ids (0 asks, 1 answers) and ``requests``
    finds of absent keys from node 0, identical for every implementation."""
    node_ids = plan(Params(nodes=2, stores=0, finds=0, seed=params.seed)).node_ids
    rng = random.Random(params.seed)
    finds = [Op("find", 0, rng.randbytes(20), b"") for _ in range(requests)]
    return Plan(node_ids, [], finds)


@dataclass
class PhaseResult:
    ops: int = 0
    ok: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    requests: int | None = None
    """Requests the nodes received during the phase, where the driver counts them."""

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)
        counted = {} if self.requests is None else {"requests": self.requests}
        return {
            "ops": self.ops,
            "ops_per_s": self.ops / self.seconds if self.seconds else 0.0,
            "p50_ms": _percentile(lat, 50),
            "p99_ms": _percentile(lat, 99),
            "success_pct": 100.0 * self.ok / self.ops if self.ops else 0.0,
            "cpu_s": self.cpu_seconds,
            "seconds": self.seconds,
            **counted,
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(pct) - 1]


Completion = Callable[[bool], None]
"""Called once by an operation when it ends: True if it succeeded."""


def run_callback_phase(
    ops: list[Op],
    concurrency: int,
    start: Callable[[Op, Completion], None],
    *,
    deadline_s: float = PHASE_DEADLINE_S,
) -> PhaseResult:
    """Run ``ops`` with at most ``concurrency`` in flight, for implementations
    with a callback API.

    A completion starts the next operation on the thread that completed it
    (as an application chaining callbacks would), so the harness adds no
    thread hop of its own. A completion that happens inside ``start`` (an
    answer from local storage) is counted and the launching loop goes on,
    so the stack never grows with the number of operations.
    """
    result = PhaseResult(ops=len(ops))
    lock = threading.Lock()
    finished = threading.Event()
    local = threading.local()
    cursor = 0
    done = 0
    cpu0, t0 = time.process_time(), time.perf_counter()

    def take() -> Op | None:
        nonlocal cursor
        with lock:
            if cursor == len(ops):
                return None
            cursor += 1
            return ops[cursor - 1]

    def fill(slots: int) -> None:
        """Start up to ``slots`` operations from this thread."""
        while slots > 0:
            op = take()
            if op is None:
                return
            slots -= 1
            local.inside, local.synchronous = True, 0
            try:
                start(op, completion(time.perf_counter()))
            finally:
                local.inside = False
            slots += local.synchronous

    def completion(began: float) -> Completion:
        ended = False

        def complete(ok: bool) -> None:
            nonlocal ended, done
            with lock:
                if ended:
                    return
                ended = True
                result.latencies_ms.append((time.perf_counter() - began) * 1000)
                result.ok += bool(ok)
                done += 1
                if done == len(ops):
                    finished.set()
            if getattr(local, "inside", False):
                local.synchronous += 1  # the loop in fill() starts the next one
            else:
                fill(1)

        return complete

    if ops:
        fill(concurrency)
        finished.wait(deadline_s)
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - cpu0
    return result


def idle_cpu(seconds: float = 2.0) -> float:
    """CPU seconds per second used by this process while the caller does nothing."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)  # measuring idleness is the point: nothing to wait for
    return (time.process_time() - cpu0) / (time.perf_counter() - t0)


def process_figures() -> dict[str, float]:
    """Peak RSS (MB) and the number of OS threads of this process."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    threads = 0
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    return {"peak_rss_mb": peak_kb / 1024, "threads": threads}


def cluster_result(
    impl: str,
    params: Params,
    *,
    join_s: float,
    stores: PhaseResult,
    finds: PhaseResult,
    idle_cpu_per_s: float,
    figures: dict[str, float],
    finds_all: PhaseResult | None = None,
) -> dict[str, object]:
    """The JSON line of a cluster run: the same fields for every driver.
    ``find`` is the finds that end at the first holder (dht's ``FirstValue``,
    kademlia's ``get``, opendht's ``get`` stopped at the value); ``find_all``
    (dht and opendht) the same keys found again, to the lookup's end: dht's
    plain ``Find`` (the K closest asked, every value returned), opendht's
    ``get`` left to run until its search is done."""
    extra = {} if finds_all is None else {"find_all": finds_all.summary()}
    return {
        "impl": impl,
        "workload": "cluster",
        "concurrency": params.concurrency,
        "nodes": params.nodes,
        "join_s": join_s,
        "store": stores.summary(),
        "find": finds.summary(),
        **extra,
        "idle_cpu_per_s": idle_cpu_per_s,
        **figures,
    }


def micro_result(
    impl: str, params: Params, requests: int, result: PhaseResult
) -> dict[str, object]:
    """The JSON line of a micro run: the same fields for every driver."""
    return {
        "impl": impl,
        "workload": "micro",
        "concurrency": params.concurrency,
        "requests": requests,
        **result.summary(),
    }


def stdout_for_json() -> int:
    """Send whatever is printed from now on to stderr; return a descriptor of
    the real stdout, which carries the JSON lines only."""
    out = os.dup(1)
    os.dup2(2, 1)
    return out


def write_result(out: int, impl: str, workload: str, run: Callable[[], dict[str, object]]) -> int:
    """Write what ``run`` returns, or the error it raised (with its traceback
    on stderr), as one JSON line on ``out``; the exit code (0 or 1)."""
    try:
        result = run()
        code = 0
    except Exception as error:  # report it, don't hang the runner
        traceback.print_exc()
        result = {"impl": impl, "workload": workload, "error": repr(error)}
        code = 1
    sys.stdout.flush()
    os.write(out, (json.dumps(result) + "\n").encode())
    return code


def driver_main(
    impl: str,
    run_cluster: Callable[[Params], dict[str, object]],
    run_micro: Callable[[Params], dict[str, object]],
    argv: list[str],
) -> int:
    """Entry point of every driver: ``python -m bench.drivers.X cluster|micro
    '<Params as JSON>'`` prints exactly one JSON line on stdout."""
    out = stdout_for_json()
    workload = argv[1] if len(argv) > 1 else ""

    def run() -> dict[str, object]:
        params = Params(**json.loads(argv[2] if len(argv) > 2 else "{}"))
        if workload == "cluster":
            return run_cluster(params)
        if workload == "micro":
            return run_micro(params)
        raise ValueError(f"unknown workload {workload!r}: cluster or micro")

    return write_result(out, impl, workload, run)
