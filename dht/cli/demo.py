"""``dht demo``: a network of local nodes on 127.0.0.1 in this process;
stores a batch of keys, finds each through another node, and prints a
summary (nodes, stores, finds, success, operations per second, p50 and p99
latencies). Exit 0 when every operation succeeded."""

from __future__ import annotations

import argparse
import math
import queue
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..keys import Key
from ..node import DHT
from .common import FAILED, CommandError, start_node, warn
from .terminal import Progress

LOOPBACK = "127.0.0.1:0"
"""Where the demo's nodes listen: loopback, ports the kernel picks."""
DEFAULT_NODES = 20
DEFAULT_KEYS = 200
DEFAULT_CONCURRENCY = 8
TTL = 600.0
"""Seconds the demo's values live (the nodes close long before)."""
OPERATION_BOUND = 60.0
"""Longest wait for the next operation to end. Each ends by its own
timeouts, long before; this is a safety net against a bug."""

Start = Callable[[int], tuple["Future[Any]", Callable[[Any], bool]]]
"""Starts operation i: its future, and the check its result must pass."""


@dataclass
class Batch:
    label: str
    total: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.total - sum(self.failures.values())

    def line(self) -> str:
        ordered = sorted(self.latencies)
        return (
            f"{self.label:<8} {self.ok}/{self.total} ok  {self.total / self.seconds:8.1f} ops/s"
            f"  p50 {_ms(ordered, 0.50)}  p99 {_ms(ordered, 0.99)}"
        )


def run(args: argparse.Namespace) -> int:
    n: int = args.nodes
    count: int = args.keys
    nodes: list[DHT] = []
    try:
        began = time.monotonic()
        progress = Progress("nodes", n)
        try:
            for i in range(n):
                bootstrap = [nodes[0].address] if nodes else []
                # Many nodes in one process: one I/O thread for all (README, Tuning).
                cfg = Config(listen_address=LOOPBACK, bootstrap_addresses=bootstrap, shared_io=True)
                nodes.append(start_node(cfg))
                progress.update(i + 1)
        except BaseException:
            progress.abandon()
            raise
        joined = time.monotonic() - began

        run_id = secrets.token_hex(4)  # keys of their own, should a run ever meet another
        keys = [Key(f"dht demo {run_id} {i}") for i in range(count)]
        values = [f"value {i} of demo run {run_id}".encode() for i in range(count)]

        def store(i: int) -> tuple[Future[Any], Callable[[Any], bool]]:
            return nodes[i % n].Store(keys[i], values[i], TTL), lambda _: True

        def find(i: int) -> tuple[Future[Any], Callable[[Any], bool]]:
            future = nodes[(i + n // 2) % n].Find(keys[i])  # another node than stored it
            return future, lambda found: values[i] in found

        batches = [
            _batch("stores", count, args.concurrency, store),
            _batch("finds", count, args.concurrency, find),
        ]
    finally:
        for node in reversed(nodes):
            node.Close()

    ops = sum(batch.total for batch in batches)
    ok = sum(batch.ok for batch in batches)
    print(f"{'nodes':<8} {n} on 127.0.0.1 (joined in {joined:.2f} s)")
    for batch in batches:
        print(batch.line())
    print(f"{'success':<8} {100 * ok / ops:.1f} % ({ok} of {ops} operations)", flush=True)
    if ok == ops:
        return 0
    for batch in batches:
        for reason, times in batch.failures.most_common(3):
            warn(args.prog, f"{batch.label}: {times} x {reason}")
    warn(args.prog, f"{ops - ok} of {ops} operations failed")
    return FAILED


def _batch(label: str, total: int, concurrency: int, start: Start) -> Batch:
    """Run operations 0..total-1, ``concurrency`` at a time."""
    batch = Batch(label, total)
    progress = Progress(label, total)
    ended: queue.SimpleQueue[tuple[float, str | None]] = queue.SimpleQueue()

    def launch(i: int) -> None:
        began = time.monotonic()
        future, check = start(i)

        def done(future: Future[Any]) -> None:  # on a library thread
            seconds = time.monotonic() - began
            error = future.exception()
            if error is not None:
                ended.put((seconds, f"{type(error).__name__}: {error}"))
            else:
                ended.put((seconds, None if check(future.result()) else "wrong values found"))

        future.add_done_callback(done)

    began = time.monotonic()
    launched = min(concurrency, total)
    for i in range(launched):
        launch(i)
    try:
        for finished in range(1, total + 1):
            try:
                seconds, failure = ended.get(timeout=OPERATION_BOUND)
            except queue.Empty:
                raise CommandError(
                    f"{label}: no operation ended in {OPERATION_BOUND:g} s"
                ) from None
            batch.latencies.append(seconds)
            if failure is not None:
                batch.failures[failure] += 1
            progress.update(finished)
            if launched < total:
                launch(launched)
                launched += 1
    except BaseException:
        progress.abandon()
        raise
    batch.seconds = time.monotonic() - began
    return batch


def _ms(ordered: list[float], fraction: float) -> str:
    """The nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return "-"
    rank = max(1, math.ceil(fraction * len(ordered)))
    return f"{1000 * ordered[rank - 1]:.1f} ms"
