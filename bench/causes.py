"""Where the CPU of the cluster workload goes, by cause (issue 19).

``python -m bench.causes floor '<json>'`` runs the cluster workload's
operations (``bench.workload.plan``: the same node ids, stores and finds)
with no sockets and no threads: the simulator's machinery (``dht.sim``:
nodes wired as real ones, each datagram encoded by the sender and decoded
by the receiver's ``Receiver``, the door a listener thread feeds) on virtual
time, constant small latency, no loss. Its process CPU per request received
is the Python work of the protocol, codec included: the floor.

``python -m bench.causes cluster '<json>'`` runs the same plan on the real
cluster (sockets, listener threads, the shared timer and worker threads)
and splits each phase's CPU per request (and its answer) into causes:

* the floor (run in a child process of the same invocation),
* system CPU (``os.times``: kernel time of every thread of the process),
* the rest: total - floor - system, the user-space cost of threads, the
  GIL, wake-ups and the I/O loops.

Beside it: user/system CPU, context switches (``getrusage``, and per kind
of thread from ``/proc/self/task``), and with ``"deep": true`` (the
default) two more passes over the first ``deep_ops`` operations of each
phase: ``perf stat`` (system calls by kind, scheduler switches and
wake-ups, counted in the kernel) and ``perf record`` of uprobes on
CPython's ``take_gil`` (GIL acquisitions, and how long each waited).
``py-spy record --native --idle`` was tried for the GIL and left out: it
stops all ~100 threads for every sample (about 16 ms each here), which
slowed the phase 4-fold and made threads pile up behind the stopped GIL
holder, so its GIL-wait share measured mostly itself.

Phases: ``store`` (Store), ``find`` (Find with FirstValue, as in the
cluster workload) and ``find_all`` (plain Find: the K closest nodes).
Each prints one JSON line on stdout; progress and a markdown table go to
stderr. Options beside ``bench.workload.Params``: see ``Options``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dht
from bench.drivers import dht_driver
from bench.workload import (
    Completion,
    Op,
    Params,
    idle_cpu,
    plan,
    run_callback_phase,
    stdout_for_json,
    write_result,
)

TTL = 3600.0
TTL_NS = int(TTL * 1_000_000_000)
PHASES = ("store", "find", "find_all")
PHASE_TITLES = {
    "store": "Store",
    "find": "Find, FirstValue",
    "find_all": "Find, K closest",
}
FLOOR_BASE_PORT = 20000
"""Ports of the floor's simulated addresses when ``base_port`` is 0."""
SYSCALLS = (
    "recvfrom",
    "sendto",
    "epoll_wait",
    "epoll_pwait",
    "select",
    "pselect6",
    "poll",
    "ppoll",
    "futex",
    "read",
    "write",
    "clock_nanosleep",
    "madvise",
    "mmap",
    "munmap",
    "brk",
    "getpid",
)
"""System calls counted one by one by ``perf stat`` (the others only in
``other``, from ``raw_syscalls:sys_enter``)."""
SCHED_EVENTS = ("sched:sched_switch", "sched:sched_wakeup")


@dataclasses.dataclass(frozen=True)
class Options:
    """What the JSON argument may hold beside ``Params``."""

    deep: bool = True
    """Cluster: also the ``perf stat`` and GIL (uprobe) passes of each phase."""
    deep_ops: int = 200
    """Operations of each phase run in each deep pass (the first ones)."""
    shared_io: bool = False
    """Cluster: ``Config(shared_io=True)`` on every node (if dht has it)."""
    floor_latency_ms: float = 0.25
    """Floor: one-way delay of every datagram (virtual time). Not zero: a
    FirstValue Find hedges after four smoothed round trips, and at zero
    delay its hedge timer would fire before the answer comes."""
    floor: bool = True
    """Cluster: run the floor too (in a child process) for the breakdown."""


def _split_arguments(text: str) -> tuple[Params, Options]:
    raw = json.loads(text or "{}")
    if not isinstance(raw, dict):
        raise ValueError("the argument must be a JSON object")
    params_fields = {f.name for f in dataclasses.fields(Params)}
    option_fields = {f.name for f in dataclasses.fields(Options)}
    unknown = set(raw) - params_fields - option_fields
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    params_raw = {k: v for k, v in raw.items() if k in params_fields}
    # Ports the OS picks unless asked: other benchmarks may hold 20000 on.
    params_raw.setdefault("base_port", 0)
    options = Options(**{k: v for k, v in raw.items() if k in option_fields})
    return Params(**params_raw), options


def progress(message: str) -> None:
    print(f"[causes {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the floor: the protocol's Python work, no sockets, no threads -------------


def run_floor(params: Params, options: Options) -> dict[str, Any]:
    """The plan's operations on simulated nodes (``dht.sim``): process CPU
    per phase and requests received by all nodes."""
    from dht.config import Config
    from dht.keys import EventIds
    from dht.sim.clock import VirtualClock
    from dht.sim.events import EventQueue
    from dht.sim.latency import ConstantLatency
    from dht.sim.network import Network
    from dht.sim.node import SimNode, engine_options

    work = plan(params)
    clock = VirtualClock()
    queue = EventQueue(clock)
    network: Network[SimNode] = Network(
        queue,
        latency=ConstantLatency(options.floor_latency_ms / 1000),
        loss=0.0,
        rng=random.Random(0),
    )
    config = Config()
    engine_settings = engine_options(config)
    base = params.base_port or FLOOR_BASE_PORT
    nodes: list[SimNode] = []

    def requests() -> int:
        return sum(node.receiver.requests for node in nodes)

    def run_until(finished: Callable[[], object]) -> None:
        while not finished():
            if not queue.step():
                raise RuntimeError("the simulation ran out of events")

    cpu0 = time.process_time()
    for i, node_id in enumerate(work.node_ids):
        node = SimNode(
            network,
            node_id,
            ("127.0.0.1", base + i),
            new_id=EventIds(),
            options=engine_settings,
            config=config,
        )
        network.attach(node)
        nodes.append(node)
        if i:
            joined: list[Exception | None] = []
            node.engine.bootstrap([nodes[0].address], joined.append)
            run_until(joined.__len__)
            if joined[0] is not None:
                raise RuntimeError(f"node {i} did not join: {joined[0]!r}")
    join_cpu = time.process_time() - cpu0
    progress(f"floor: {len(nodes)} simulated nodes joined ({join_cpu:.2f} s CPU)")

    def store(op: Op, complete: Completion) -> None:
        nodes[op.node].engine.store(op.key, op.value, TTL_NS, lambda e: complete(e is None))

    def finder(first_only: bool) -> Callable[[Op, Completion], None]:
        def find(op: Op, complete: Completion) -> None:
            def done(error: Exception | None, values: list[bytes]) -> None:
                complete(error is None and op.value in values)

            nodes[op.node].engine.find(op.key, 0, _ignore, done, first_only=first_only)

        return find

    starts = {"store": store, "find": finder(True), "find_all": finder(False)}
    ops = {"store": work.stores, "find": work.finds, "find_all": work.finds}
    phases: dict[str, dict[str, float]] = {}
    for name in PHASES:
        before_requests, cpu0 = requests(), time.process_time()
        ok = _simulated_phase(queue, ops[name], params.concurrency, starts[name])
        queue.run(clock.now + 0.1)  # answers still on their way (a Store's minority)
        cpu = time.process_time() - cpu0
        count = requests() - before_requests
        phases[name] = _floor_phase(len(ops[name]), ok, cpu, count)
        progress(
            f"floor {name}: {phases[name]['cpu_ms_per_op']:.2f} ms CPU/op, "
            f"{phases[name]['requests_per_op']:.1f} requests/op, "
            f"{phases[name]['cpu_us_per_request']:.1f} us/request"
        )
    total_cpu = sum(p["cpu_s"] for p in phases.values())
    total_requests = sum(p["requests"] for p in phases.values())
    return {
        "impl": "floor",
        "workload": "floor",
        "nodes": params.nodes,
        "concurrency": params.concurrency,
        "latency_ms": options.floor_latency_ms,
        "store_cpu_ms_per_op": phases["store"]["cpu_ms_per_op"],
        "find_cpu_ms_per_op": phases["find"]["cpu_ms_per_op"],
        "find_all_cpu_ms_per_op": phases["find_all"]["cpu_ms_per_op"],
        "cpu_us_per_request": 1e6 * total_cpu / total_requests if total_requests else 0.0,
        "requests_per_store": phases["store"]["requests_per_op"],
        "requests_per_find": phases["find"]["requests_per_op"],
        "requests_per_find_all": phases["find_all"]["requests_per_op"],
        "join_cpu_s": join_cpu,
        "phases": phases,
    }


def _ignore(value: bytes) -> None:
    pass


def _floor_phase(ops: int, ok: int, cpu: float, requests: int) -> dict[str, float]:
    return {
        "ops": ops,
        "success_pct": 100.0 * ok / ops if ops else 0.0,
        "cpu_s": cpu,
        "requests": requests,
        "cpu_ms_per_op": 1e3 * cpu / ops if ops else 0.0,
        "requests_per_op": requests / ops if ops else 0.0,
        "cpu_us_per_request": 1e6 * cpu / requests if requests else 0.0,
    }


def _simulated_phase(
    queue: Any, ops: list[Op], concurrency: int, start: Callable[[Op, Completion], None]
) -> int:
    """``run_callback_phase`` on virtual time: at most ``concurrency``
    operations in flight, each completion starting the next. Returns how
    many succeeded."""
    cursor = done = ok = 0

    def launch() -> None:
        nonlocal cursor
        if cursor < len(ops):
            cursor += 1
            start(ops[cursor - 1], completion())

    def completion() -> Completion:
        ended = False

        def complete(success: bool) -> None:
            nonlocal ended, done, ok
            if ended:
                return
            ended = True
            done += 1
            ok += bool(success)
            queue.post(queue.clock.now, launch)  # not nested in the caller's stack

        return complete

    for _ in range(min(concurrency, len(ops))):
        launch()
    while done < len(ops):
        if not queue.step():
            raise RuntimeError(f"the simulation ran out of events after {done} operations")
    return ok


# -- the cluster ---------------------------------------------------------------


def _config(params: Params, options: Options, **kwargs: Any) -> dht.Config:
    """The dht driver's config: ``pin`` and ``shared_io`` as it sets them."""
    return dht_driver._config(dataclasses.replace(params, shared=options.shared_io), **kwargs)


def thread_kind(name: str) -> str:
    """``listener``, ``timer``, ``worker``, ``main``, another ``dht-X``
    thread's ``X``, or ``other``."""
    if name == "MainThread":
        return "main"
    match = re.match(r"dht-([a-z]+)", name)
    return match.group(1) if match else "other"


@dataclasses.dataclass
class Snapshot:
    """Counters of this process at one instant."""

    wall: float
    cpu: float
    user: float
    system: float
    nvcsw: int
    nivcsw: int
    requests: int
    datagrams: int
    machine_busy: float
    """CPU seconds the whole machine was busy since boot (``/proc/stat``)."""
    threads: dict[str, dict[str, float]]
    """By kind of thread: ``cpu_s`` (schedstat), ``nvcsw``, ``nivcsw``, ``count``."""

    @staticmethod
    def take(nodes: list[dht.DHT], *, end: bool = False) -> Snapshot:
        """The counters now. What is slow to read (the nodes, /proc) is read
        outside the window: before the clocks at a phase's start, after
        them at its ``end``."""

        def slow() -> tuple[int, int, float, dict[str, dict[str, float]]]:
            requests, datagrams = _received(nodes)
            return requests, datagrams, _machine_busy(), _threads_by_kind()

        if not end:
            requests, datagrams, busy, threads = slow()
        wall, cpu = time.perf_counter(), time.process_time()
        times = os.times()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        if end:
            requests, datagrams, busy, threads = slow()
        return Snapshot(
            wall=wall,
            cpu=cpu,
            user=times.user,
            system=times.system,
            nvcsw=usage.ru_nvcsw,
            nivcsw=usage.ru_nivcsw,
            requests=requests,
            datagrams=datagrams,
            machine_busy=busy,
            threads=threads,
        )


def _received(nodes: list[dht.DHT]) -> tuple[int, int]:
    """Requests and datagrams received by all ``nodes``: their receivers'
    counts (cheaper than ``stats()``, whose ``stored-*`` keys scan storage),
    or ``stats()`` in a revision that keeps receivers elsewhere."""
    requests = datagrams = 0
    for node in nodes:
        receivers = getattr(node, "_receivers", None)
        if receivers is None:
            listeners = getattr(node, "_listeners", None)
            receivers = [listener.receiver for listener in listeners] if listeners else None
        if receivers is None:
            stats = node.stats()
            requests += stats["requests-received"]
            datagrams += stats["datagrams-received"]
            continue
        for receiver in receivers:
            requests += receiver.requests
            datagrams += receiver.datagrams
    return requests, datagrams


def _machine_busy() -> float:
    """CPU seconds all CPUs spent busy (not idle or waiting for I/O)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _threads_by_kind() -> dict[str, dict[str, float]]:
    names = {t.native_id: t.name for t in threading.enumerate()}
    kinds: dict[str, dict[str, float]] = {}
    for task in os.listdir("/proc/self/task"):
        tid = int(task)
        kind = thread_kind(names.get(tid, ""))
        try:
            with open(f"/proc/self/task/{task}/schedstat") as f:
                on_cpu_ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{task}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):  # the thread ended
            continue
        entry = kinds.setdefault(kind, {"cpu_s": 0.0, "nvcsw": 0, "nivcsw": 0, "count": 0})
        entry["cpu_s"] += on_cpu_ns / 1e9
        entry["nvcsw"] += int(status["voluntary_ctxt_switches"])
        entry["nivcsw"] += int(status["nonvoluntary_ctxt_switches"])
        entry["count"] += 1
    return kinds


def _phase_figures(before: Snapshot, after: Snapshot, ops: int, ok: int) -> dict[str, Any]:
    requests = after.requests - before.requests
    per = 1e6 / requests if requests else 0.0  # seconds -> us per request
    count_per = 1 / requests if requests else 0.0
    threads = {}
    for kind, entry in after.threads.items():
        start = before.threads.get(kind, {"cpu_s": 0.0, "nvcsw": 0, "nivcsw": 0})
        threads[kind] = {
            "count": entry["count"],
            "cpu_us_per_request": (entry["cpu_s"] - start["cpu_s"]) * per,
            "vcsw_per_request": (entry["nvcsw"] - start["nvcsw"]) * count_per,
            "ivcsw_per_request": (entry["nivcsw"] - start["nivcsw"]) * count_per,
        }
    cpu = after.cpu - before.cpu
    seconds = after.wall - before.wall
    others = after.machine_busy - before.machine_busy - cpu
    return {
        "ops": ops,
        "success_pct": 100.0 * ok / ops if ops else 0.0,
        "seconds": seconds,
        "cpu_s": cpu,
        "others_cpus": max(0.0, others / seconds) if seconds else 0.0,
        "requests": requests,
        "datagrams": after.datagrams - before.datagrams,
        "requests_per_op": requests / ops if ops else 0.0,
        "cpu_ms_per_op": 1e3 * cpu / ops if ops else 0.0,
        "cpu_us_per_request": cpu * per,
        "user_us_per_request": (after.user - before.user) * per,
        "system_us_per_request": (after.system - before.system) * per,
        "vcsw_per_request": (after.nvcsw - before.nvcsw) * count_per,
        "ivcsw_per_request": (after.nivcsw - before.nivcsw) * count_per,
        "threads": threads,
    }


def _quiet(nodes: list[dht.DHT], *, step: float = 0.05, limit: float = 2.0) -> None:
    """Wait until no datagram has arrived for ``step`` seconds (the answers
    still on their way when a phase's last operation ended)."""
    last, deadline = -1, time.monotonic() + limit
    while time.monotonic() < deadline:
        count = _received(nodes)[1]
        if count == last:
            return
        last = count
        time.sleep(step)


def run_cluster(params: Params, options: Options) -> dict[str, Any]:
    if options.shared_io and not dht_driver.has_shared_io():
        raise RuntimeError("dht.Config has no field shared_io in this tree")
    floor = _floor_in_child(params, options) if options.floor else None
    work = plan(params)
    nodes: list[dht.DHT] = []
    try:
        t0 = time.perf_counter()
        nodes.append(dht.New(_config(params, options, local_id=work.node_ids[0])))
        bootstrap = [nodes[0].address]
        for node_id in work.node_ids[1:]:
            nodes.append(
                dht.New(_config(params, options, local_id=node_id, bootstrap_addresses=bootstrap))
            )
        progress(f"cluster: {len(nodes)} nodes joined in {time.perf_counter() - t0:.1f} s")
        idle = idle_cpu(1.0)

        def store(op: Op, complete: Completion) -> None:
            nodes[op.node].Store(op.key, op.value, TTL, lambda error: complete(error is None))

        def finder(*opts: dht.FirstValue) -> Callable[[Op, Completion], None]:
            def find(op: Op, complete: Completion) -> None:
                future = nodes[op.node].Find(op.key, None, *opts)
                future.add_done_callback(lambda f: dht_driver.complete_find(f, op, complete))

            return find

        starts = {"store": store, "find": finder(dht.FirstValue()), "find_all": finder()}
        ops = {"store": work.stores, "find": work.finds, "find_all": work.finds}
        phases: dict[str, dict[str, Any]] = {}
        for name in PHASES:
            phases[name] = _measured_phase(nodes, ops[name], params.concurrency, starts[name])
            progress(
                f"cluster {name}: {phases[name]['cpu_ms_per_op']:.2f} ms CPU/op, "
                f"{phases[name]['requests_per_op']:.1f} requests/op, "
                f"{phases[name]['cpu_us_per_request']:.1f} us/request"
            )
            if options.deep:
                deep_ops = ops[name][: options.deep_ops]
                phases[name]["perf"] = _perf_pass(nodes, deep_ops, params.concurrency, starts[name])
                phases[name]["gil"] = _gil_pass(nodes, deep_ops, params.concurrency, starts[name])
            if floor is not None:
                phases[name]["breakdown"] = _breakdown(phases[name], floor["phases"][name])
    finally:
        for node in nodes:
            node.Close()
    result: dict[str, Any] = {
        "impl": "dht-pinned" if params.pin else "dht",
        "workload": "causes",
        "nodes": params.nodes,
        "stores": params.stores,
        "finds": params.finds,
        "concurrency": params.concurrency,
        "shared_io": options.shared_io,
        "pin": params.pin,
        "idle_cpu_per_s": idle,
        "floor": floor,
        "phases": phases,
    }
    print(markdown_table(result), file=sys.stderr)
    return result


def _measured_phase(
    nodes: list[dht.DHT], ops: list[Op], concurrency: int, start: Callable[[Op, Completion], None]
) -> dict[str, Any]:
    before = Snapshot.take(nodes)
    result = run_callback_phase(ops, concurrency, start)
    _quiet(nodes)
    after = Snapshot.take(nodes, end=True)
    return _phase_figures(before, after, len(ops), result.ok)


def _breakdown(phase: dict[str, Any], floor: dict[str, float]) -> dict[str, float]:
    total = phase["cpu_us_per_request"]
    protocol = floor["cpu_us_per_request"]
    system = phase["system_us_per_request"]
    rest = total - protocol - system
    share = 100.0 / total if total else 0.0
    return {
        "total_us": total,
        "protocol_us": protocol,
        "system_us": system,
        "rest_us": rest,
        "protocol_pct": protocol * share,
        "system_pct": system * share,
        "rest_pct": rest * share,
    }


def _floor_in_child(params: Params, options: Options) -> dict[str, Any]:
    """The floor of the same plan, in a fresh process (so the cluster's
    process starts clean)."""
    argument = dataclasses.asdict(params) | {"floor_latency_ms": options.floor_latency_ms}
    progress("floor: running in a child process")
    done = subprocess.run(
        [sys.executable, "-m", "bench.causes", "floor", json.dumps(argument)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    sys.stderr.write(done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"the floor failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- deep passes: perf stat, GIL uprobes ------------------------------------------


def _deep_phase(
    nodes: list[dht.DHT],
    ops: list[Op],
    concurrency: int,
    start: Callable[[Op, Completion], None],
    window: PerfWindow,
) -> tuple[Snapshot, Snapshot, int]:
    """Run ``ops`` with perf's events enabled only from the first operation
    to the last answer (the snapshots, which read /proc, stay outside)."""
    before = Snapshot.take(nodes)
    window.enable()
    result = run_callback_phase(ops, concurrency, start)
    _quiet(nodes)
    window.disable()
    return before, Snapshot.take(nodes, end=True), result.ok


def perf_events() -> list[str]:
    """The events of the perf pass that this kernel has."""
    tracing = Path("/sys/kernel/tracing/events")
    events = ["raw_syscalls:sys_enter"]
    events += [
        f"syscalls:sys_enter_{name}"
        for name in SYSCALLS
        if (tracing / "syscalls" / f"sys_enter_{name}").is_dir()
    ]
    events += list(SCHED_EVENTS)
    return events


class PerfError(Exception):
    pass


class PerfWindow:
    """``perf <arguments> -D -1 --control ... -p <this process>``: perf
    attached with its events off, turned on and off by ``enable`` and
    ``disable`` (acknowledged, so the window is exact); ``close`` ends it."""

    def __init__(self, arguments: list[str]) -> None:
        perf = shutil.which("perf")
        if perf is None:
            raise PerfError("perf not found")
        ctl_r, ctl_w = os.pipe()
        ack_r, ack_w = os.pipe()
        command = [perf, *arguments, "-D", "-1", "--control", f"fd:{ctl_r},{ack_w}"]
        command += ["-p", str(os.getpid())]
        self._process = subprocess.Popen(
            command, pass_fds=(ctl_r, ack_w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        os.close(ctl_r)
        os.close(ack_w)
        self._ctl, self._ack = ctl_w, ack_r
        self.stderr = ""
        """What perf said, once closed."""

    def enable(self) -> None:
        self._command("enable")

    def disable(self) -> None:
        self._command("disable")

    def _command(self, command: str) -> None:
        try:
            os.write(self._ctl, command.encode() + b"\n")
            acked = os.read(self._ack, 16).startswith(b"ack")
        except BrokenPipeError:
            acked = False
        if not acked:  # perf went away: say why
            _, err = self._process.communicate(timeout=60)
            raise PerfError(f"perf failed: {err.decode(errors='replace').strip()[-300:]}")

    def close(self) -> None:
        os.close(self._ctl)
        os.close(self._ack)
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        _, err = self._process.communicate(timeout=300)
        self.stderr = err.decode(errors="replace")
        if self._process.returncode not in (0, -signal.SIGINT):
            raise PerfError(f"perf exit {self._process.returncode}: {err.decode()[-300:]}")


@contextlib.contextmanager
def _perf_window(arguments: list[str]) -> Iterator[PerfWindow]:
    window = PerfWindow(arguments)
    try:
        yield window
    finally:
        window.close()


def _perf_pass(
    nodes: list[dht.DHT], ops: list[Op], concurrency: int, start: Callable[[Op, Completion], None]
) -> dict[str, Any]:
    """Run ``ops`` under ``perf stat --per-thread``, counting only while
    they run (``--control``): system calls by kind, scheduler switches
    (``sched_switch``: a thread of ours leaves its CPU) and wake-ups
    (``sched_wakeup``: a thread of ours wakes another thread), per request."""
    events = perf_events()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "perf.csv"
        arguments = ["stat", "-x,", "--per-thread", "-e", ",".join(events), "-o", str(output)]
        try:
            with _perf_window(arguments) as window:
                before, after, ok = _deep_phase(nodes, ops, concurrency, start, window)
        except PerfError as error:
            return {"error": str(error)}
        counts = _read_perf(output.read_text())
    figures = _phase_figures(before, after, len(ops), ok)
    requests = figures["requests"] or 1
    kinds = {t.native_id: thread_kind(t.name) for t in threading.enumerate()}
    total: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    for (tid, event), count in counts.items():
        name = _event_name(event)
        total[name] += count
        by_kind.setdefault(kinds.get(tid, "other"), Counter())[name] += count
    calls = {name: total[name] / requests for name in _syscall_names(events)}
    calls["other"] = (total["total"] - sum(total[n] for n in _syscall_names(events))) / requests
    calls["total"] = total["total"] / requests
    return {
        "ops": len(ops),
        "requests": figures["requests"],
        "cpu_us_per_request": figures["cpu_us_per_request"],
        "system_us_per_request": figures["system_us_per_request"],
        "vcsw_per_request": figures["vcsw_per_request"],
        "ivcsw_per_request": figures["ivcsw_per_request"],
        "syscalls_per_request": calls,
        "switches_per_request": total["sched_switch"] / requests,
        "wakeups_per_request": total["sched_wakeup"] / requests,
        "threads": {
            kind: {name: count / requests for name, count in sorted(c.items()) if count}
            for kind, c in sorted(by_kind.items())
        },
    }


def _read_perf(text: str) -> dict[tuple[int, str], int]:
    """``perf stat -x, --per-thread`` lines: ``comm-tid,count,unit,event,...``."""
    counts: dict[tuple[int, str], int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 4 or line.startswith("#"):
            continue
        thread, count, _, event = fields[:4]
        tid = thread.rsplit("-", 1)[-1]
        if not tid.isdigit() or not count.isdigit():
            continue  # <not counted>: the thread ran nothing in the window
        key = (int(tid), event)
        counts[key] = counts.get(key, 0) + int(count)
    return counts


def _event_name(event: str) -> str:
    if event == "raw_syscalls:sys_enter":
        return "total"
    return event.split(":", 1)[1].removeprefix("sys_enter_")


def _syscall_names(events: list[str]) -> list[str]:
    return [_event_name(e) for e in events if e.startswith("syscalls:")]


GIL_PROBES = "causes19"
"""Group of the uprobes the GIL pass adds (and removes)."""
FUTEX_EVENT = "syscalls:sys_enter_futex"
"""Recorded beside the probes: a ``take_gil`` call that made a futex call
waited for the GIL (it slept on the GIL's condition variable or mutex).
In a loaded run's histogram, calls under 10 us had none and calls over
20 us nearly all had one."""


def python_library() -> str:
    """The file holding this interpreter's ``take_gil``: libpython if it is
    loaded, else the executable."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "libpython" in path and path.startswith("/"):
                return path
    return os.path.realpath(sys.executable)


def _probes(action: str, library: str = "") -> None:
    perf = shutil.which("perf")
    if perf is None:
        raise PerfError("perf not found")
    if action == "add":
        # The return probe's event gets the suffix __return.
        for spec in (f"{GIL_PROBES}:take_gil=take_gil", f"{GIL_PROBES}:take_gil=take_gil%return"):
            done = subprocess.run(
                [perf, "probe", "-q", "-x", library, "--add", spec], capture_output=True, text=True
            )
            if done.returncode:
                raise PerfError(f"perf probe {spec}: {done.stderr.strip()[-300:]}")
    else:
        subprocess.run([perf, "probe", "-q", "-d", f"{GIL_PROBES}:*"], capture_output=True)


def _gil_pass(
    nodes: list[dht.DHT], ops: list[Op], concurrency: int, start: Callable[[Op, Completion], None]
) -> dict[str, Any]:
    """Run ``ops`` with uprobes on the entry and return of CPython's
    ``take_gil`` (``perf probe``, ``perf record``): every GIL acquisition of
    every thread, and how long it waited."""
    library = python_library()
    perf = shutil.which("perf")
    if perf is None:
        return {"error": "perf not found"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "gil.data"
        events = f"{GIL_PROBES}:take_gil,{GIL_PROBES}:take_gil__return,{FUTEX_EVENT}"
        # No --control here: perf 6.1's record with -p and a control fd
        # fails at the end of a quiet spell ("Thread and evlist pollfd index
        # mismatch"). It records from its start; the window is cut by time
        # (perf's clock set to CLOCK_MONOTONIC, which time.monotonic reads).
        command = [perf, "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", events]
        command += ["-o", str(data), "-p", str(os.getpid())]
        try:
            _probes("delete")  # a run that died may have left them
            _probes("add", library)
            try:
                with subprocess.Popen(command, stderr=subprocess.PIPE) as recorder:
                    try:
                        _wait_for_file(data, recorder)
                        before = Snapshot.take(nodes)
                        window = time.monotonic()
                        result = run_callback_phase(ops, concurrency, start)
                        _quiet(nodes)
                        window_end = time.monotonic()
                        after = Snapshot.take(nodes, end=True)
                    finally:
                        recorder.send_signal(signal.SIGINT)
                        _, err = recorder.communicate(timeout=300)
            finally:
                _probes("delete")
            script = subprocess.run(
                [perf, "script", "-i", str(data), "-F", "tid,time,event"],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except PerfError as error:
            return {"error": str(error)}
    if script.returncode:
        message = (err.decode(errors="replace") + script.stderr).strip()[-300:]
        return {"error": f"perf record/script: {message}"}
    ok = result.ok
    figures = _phase_figures(before, after, len(ops), ok)
    kinds = {t.native_id: thread_kind(t.name) for t in threading.enumerate()}
    calls, waits = _gil_waits(script.stdout, window, window_end)
    requests = figures["requests"] or 1
    seconds = figures["seconds"]
    by_kind: dict[str, dict[str, float]] = {}
    for tid, count in calls.items():
        entry = by_kind.setdefault(kinds.get(tid, "other"), {"takes": 0, "waits": 0, "wait_s": 0.0})
        entry["takes"] += count
        entry["waits"] += len(waits.get(tid, ()))
        entry["wait_s"] += sum(waits.get(tid, ()))
    all_waits = sorted(w for ws in waits.values() for w in ws)
    wait_s = sum(all_waits)
    return {
        "ops": len(ops),
        "requests": figures["requests"],
        "cpu_us_per_request": figures["cpu_us_per_request"],
        "vcsw_per_request": figures["vcsw_per_request"],
        "ivcsw_per_request": figures["ivcsw_per_request"],
        "seconds": seconds,
        "takes_per_request": sum(calls.values()) / requests,
        "waits_per_request": len(all_waits) / requests,
        "wait_us_per_request": 1e6 * wait_s / requests,
        "waiting_threads_mean": wait_s / seconds if seconds else 0.0,
        "wait_p50_us": 1e6 * all_waits[len(all_waits) // 2] if all_waits else 0.0,
        "wait_p99_us": 1e6 * all_waits[len(all_waits) * 99 // 100] if all_waits else 0.0,
        "threads": {
            kind: {
                "takes_per_request": e["takes"] / requests,
                "waits_per_request": e["waits"] / requests,
                "wait_us_per_request": 1e6 * e["wait_s"] / requests,
            }
            for kind, e in sorted(by_kind.items())
        },
    }


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], limit: float = 60.0) -> None:
    """Until ``perf record`` has written its header (it has attached to
    every thread by then), and a little more."""
    deadline = time.monotonic() + limit
    while not (path.exists() and path.stat().st_size > 0):
        if process.poll() is not None or time.monotonic() > deadline:
            raise PerfError("perf record did not start")
        time.sleep(0.02)
    time.sleep(0.3)


def _gil_waits(
    script: str, start: float, end: float
) -> tuple[Counter[int], dict[int, list[float]]]:
    """From ``perf script -F tid,time,event`` lines: ``take_gil`` calls by
    thread that returned within [start, end] (monotonic seconds), and each
    thread's waits: the durations (seconds) of the calls that made a futex
    call."""
    entered: dict[int, float] = {}
    futexes: dict[int, int] = {}
    calls: Counter[int] = Counter()
    waits: dict[int, list[float]] = {}
    for line in script.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        tid, stamp, event = int(fields[0]), float(fields[1].rstrip(":")), fields[2]
        if event.endswith(":take_gil:"):
            entered[tid] = stamp
            futexes[tid] = 0
        elif event.startswith(FUTEX_EVENT):
            if tid in entered:
                futexes[tid] += 1
        elif event.endswith(":take_gil__return:") and tid in entered:
            waited = stamp - entered.pop(tid)
            slept = futexes.pop(tid)
            if not start <= stamp <= end:
                continue
            calls[tid] += 1
            if slept:
                waits.setdefault(tid, []).append(waited)
    return calls, waits


# -- report ----------------------------------------------------------------------


def markdown_table(result: dict[str, Any]) -> str:
    """Per phase and cause, us per request and % of the phase's CPU; then,
    from the deep passes, system calls, switches and GIL waits per request."""
    title = f"C={result['concurrency']}, {result['nodes']} nodes"
    title += ", pinned" if result["pin"] else ""
    title += ", shared_io" if result["shared_io"] else ""
    lines = [
        f"CPU per request received (and its answer), {title}:",
        "",
        "| phase | requests/op | CPU us/request | protocol (floor) | system | "
        "rest (threads, GIL, wake-ups) | user | vol. cs/req | invol. cs/req | others' CPUs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    phases = [(name, result["phases"][name]) for name in PHASES if name in result["phases"]]
    for name, phase in phases:
        b = phase.get("breakdown")
        cells = [
            PHASE_TITLES[name],
            f"{phase['requests_per_op']:.1f}",
            f"{phase['cpu_us_per_request']:.0f}",
        ]
        if b is None:
            cells += ["", f"{phase['system_us_per_request']:.0f}", ""]
        else:
            cells += [
                f"{b['protocol_us']:.0f} ({b['protocol_pct']:.0f} %)",
                f"{b['system_us']:.0f} ({b['system_pct']:.0f} %)",
                f"{b['rest_us']:.0f} ({b['rest_pct']:.0f} %)",
            ]
        cells += [
            f"{phase['user_us_per_request']:.0f}",
            f"{phase['vcsw_per_request']:.2f}",
            f"{phase['ivcsw_per_request']:.2f}",
            f"{phase['others_cpus']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    deep = [(name, phase) for name, phase in phases if "perf" in phase or "gil" in phase]
    if deep:
        lines += [
            "",
            "Per request, deep passes (perf stat; uprobes on take_gil):",
            "",
            "| phase | recvfrom | sendto | epoll_wait | futex | other | all syscalls | "
            "switches | wake-ups | GIL takes | GIL waits | GIL wait us | threads waiting |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
            "---: | ---: |",
        ]
        for name, phase in deep:
            perf, gil = phase.get("perf", {}), phase.get("gil", {})
            calls = perf.get("syscalls_per_request", {})
            named = {"recvfrom", "sendto", "epoll_wait", "futex", "total"}
            other = sum(v for k, v in calls.items() if k not in named)
            cells = [PHASE_TITLES[name]]
            cells += [_cell(calls.get(k)) for k in ("recvfrom", "sendto", "epoll_wait", "futex")]
            cells += [_cell(other if calls else None), _cell(calls.get("total"))]
            cells += [
                _cell(perf.get("switches_per_request")),
                _cell(perf.get("wakeups_per_request")),
            ]
            cells += [_cell(gil.get("takes_per_request")), _cell(gil.get("waits_per_request"))]
            cells += [_cell(gil.get("wait_us_per_request"), 0)]
            cells += [_cell(gil.get("waiting_threads_mean"))]
            lines.append("| " + " | ".join(cells) + " |")
            for pass_name, figures in (("perf", perf), ("gil", gil)):
                if "error" in figures:
                    lines.append(f"\n{PHASE_TITLES[name]}, {pass_name} pass: {figures['error']}")
    return "\n".join(lines)


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# -- entry point -------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``python -m bench.causes floor|cluster '<json>'``: one JSON line on stdout."""
    out = stdout_for_json()
    command = argv[1] if len(argv) > 1 else ""

    def run() -> dict[str, Any]:
        params, options = _split_arguments(argv[2] if len(argv) > 2 else "{}")
        if command == "floor":
            return run_floor(params, options)
        if command == "cluster":
            return run_cluster(params, options)
        raise ValueError(f"unknown command {command!r}: floor or cluster")

    return write_result(out, "causes", command, run)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
