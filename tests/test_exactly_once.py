"""Exactly-once endings under concurrency, on real sockets and threads.

Many user threads call Store and Find at once (and, in one test, Close while
they run); every call must end exactly once, its callbacks and its future
agreeing. A request to a silent address must time out within its bounds.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import pytest
from cluster import (
    Callbacks,
    RefusingStorage,
    add_node,
    close_all,
    free_udp_address,
    start_cluster,
    stored_values,
    wait_until,
)

import dht
from dht.keys import random_id
from dht.wire import Event, EventType

pytestmark = pytest.mark.both_io  # with a thread per socket, and with the shared loop

TTL = 600
THREADS = 8
REMOTE_FOUND_SHARE = 0.9
"""Finds of stored keys through the network that must return every value
of the key, despite the load (timeouts) of the concurrency test."""


@dataclass
class Op:
    """One Store or Find call: what it does and what it must end with."""

    call_id: int
    kind: str  # "store" | "find"
    node: int
    key: bytes
    value: bytes = b""
    expected: frozenset[bytes] = frozenset()  # Find: the values; empty means missing
    future: Future | None = field(default=None, repr=False)  # type: ignore[type-arg]


def issue(nodes: list[dht.DHT], op: Op, callbacks: Callbacks) -> None:
    node = nodes[op.node]
    if op.kind == "store":
        op.future = node.Store(op.key, op.value, TTL, callbacks.store(op.call_id))
    else:
        op.future = node.Find(op.key, callbacks.find(op.call_id))


def run_threads(
    work: list[list[Op]], issue_one: Callable[[Op], None], timeout: float
) -> list[BaseException]:
    """Run each list of ops on its own thread, all starting together.
    Returns the exceptions the threads raised."""
    barrier = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def worker(ops: list[Op]) -> None:
        try:
            barrier.wait(timeout=timeout)
            for op in ops:
                issue_one(op)
        except BaseException as error:  # reported by the test
            errors.append(error)

    threads = [
        threading.Thread(target=worker, args=(ops,), name=f"user-{i}", daemon=True)
        for i, ops in enumerate(work)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [thread.name for thread in threads if thread.is_alive()]
    assert not alive, f"user threads still issuing calls after {timeout} s: {alive}"
    return errors


def wait_futures(ops: list[Op], timeout: float, nodes: list[dht.DHT]) -> None:
    futures = [op.future for op in ops]
    assert all(future is not None for future in futures), "some calls were not issued"
    _, pending = concurrent.futures.wait(futures, timeout=timeout)  # type: ignore[arg-type]
    assert not pending, (
        f"{len(pending)} of {len(futures)} futures did not end in {timeout} s:\n"
        + describe_pending(ops, nodes)
    )


def describe_pending(ops: list[Op], nodes: list[dht.DHT]) -> str:
    """What the calls that did not end were, and the state of their nodes'
    operations (for the failure message)."""
    lines = []
    for op in ops:
        if op.future is not None and not op.future.done():
            lines.append(f"  call {op.call_id}: {op.kind} on node {op.node}, expects {op.expected}")
    for index in sorted({op.node for op in ops if op.future and not op.future.done()}):
        engine = nodes[index]._engine
        lines.append(
            f"  node {index}: closed={engine.closed} pending={engine.pending_requests} "
            f"stats={nodes[index].stats()}"
        )
        for operation in list(engine.running._operations):
            lookup = getattr(operation, "lookup", None)
            states = Counter(c.state.name for c in lookup._ordered) if lookup else None
            fields = {
                name: value
                for name, value in vars(operation).items()
                if isinstance(value, int | bool) and not name.startswith("__")
            }
            lines.append(
                f"    {type(operation).__name__} {fields} lookup-done="
                f"{lookup.done if lookup else None} states={states}"
            )
    return "\n".join(lines[:200])


def outcome(future: Future) -> BaseException | None:  # type: ignore[type-arg]
    assert future.done()
    return future.exception(timeout=0)


def check_store(op: Op, callbacks: Callbacks, allowed: tuple[type[Exception], ...]) -> None:
    calls = callbacks.calls(op.call_id)
    assert len(calls) == 1, f"store {op.call_id}: {len(calls)} callbacks: {calls}"
    assert op.future is not None
    error = outcome(op.future)
    assert calls[0].value is None
    assert calls[0].error is error, f"store {op.call_id}: future {error!r}, callback {calls[0]}"
    assert error is None or isinstance(error, allowed), f"store {op.call_id}: {error!r}"


def check_find(op: Op, callbacks: Callbacks, allowed: tuple[type[Exception], ...]) -> None:
    """One error callback iff the future failed; each value at most once and,
    on success, exactly the future's values."""
    calls = callbacks.calls(op.call_id)
    values = [call.value for call in calls if call.error is None]
    errors = [call.error for call in calls if call.error is not None]
    assert all(call.value is None for call in calls if call.error is not None)
    assert None not in values, f"find {op.call_id}: callback with neither value nor error"
    assert len(values) == len(set(values)), f"find {op.call_id}: duplicate values {values}"
    assert op.future is not None
    error = outcome(op.future)
    if error is None:
        assert errors == [], f"find {op.call_id}: succeeded but got error callbacks {errors}"
        result = op.future.result(timeout=0)
        assert sorted(result) == sorted(values)  # type: ignore[type-var]
        assert values, f"find {op.call_id}: succeeded with no value"
    else:
        assert errors == [error], f"find {op.call_id}: future {error!r}, callbacks {errors}"
        assert isinstance(error, allowed), f"find {op.call_id}: {error!r}"


# ---------------------------------------------------------------------------


def settle(nodes: list[dht.DHT], timeout: float) -> None:
    """Wait (bounded) until no node has a request in flight."""
    assert wait_until(lambda: all(n.stats()["pending-requests"] == 0 for n in nodes), timeout), [
        n.stats()["pending-requests"] for n in nodes
    ]


@pytest.mark.timeout(240)  # within it: calls 120 s, futures 60 s, checks
def test_concurrent_stores_and_finds_end_exactly_once() -> None:
    """20 nodes (18 ordinary, 2 that keep nothing so their Finds use the
    network); 8 threads issue 1,000 Stores and 1,000 Finds at once."""
    rng = random.Random(20_000)
    nodes = start_cluster(18)
    try:
        for _ in range(2):
            nodes.append(add_node(nodes[0], storage=RefusingStorage()))
        observers = {18, 19}

        # Keys stored beforehand: some with one value, some with two.
        stored: dict[bytes, frozenset[bytes]] = {}
        setup = []
        for i in range(40):
            key = random_id()
            values = frozenset({b"pre-%d-a" % i} | ({b"pre-%d-b" % i} if i % 3 == 0 else set()))
            stored[key] = values
            for j, value in enumerate(sorted(values)):
                setup.append(nodes[(i + 7 * j) % 18].Store(key, value, TTL))
        for future in setup:
            assert future.result(timeout=30) is None
        settle(nodes, 30)
        # A Store reaches a majority of the K closest, not necessarily every
        # node; a Find answered locally gives what the node holds. So local
        # Finds of stored keys are issued from nodes holding every value.
        complete = {
            key: [i for i in range(18) if stored_values(nodes[i], key) == values]
            for key, values in stored.items()
        }
        complete = {key: holders for key, holders in complete.items() if holders}
        assert len(complete) >= 30, "most stored keys should be complete on some node"

        ops: list[Op] = []
        for call_id in range(2000):
            if call_id % 2 == 0:
                key, value = random_id(), b"concurrent-%d" % call_id
                ops.append(Op(call_id, "store", rng.randrange(20), key, value))
            elif call_id % 5 == 1:
                ops.append(Op(call_id, "find", rng.randrange(20), random_id()))  # missing
            elif call_id % 5 == 3:  # a stored key, through the network
                key = rng.choice(list(stored))
                ops.append(
                    Op(call_id, "find", rng.choice(sorted(observers)), key, expected=stored[key])
                )
            else:  # a stored key, answered locally
                key = rng.choice(list(complete))
                ops.append(
                    Op(call_id, "find", rng.choice(complete[key]), key, expected=stored[key])
                )
        rng.shuffle(ops)
        assert sum(op.kind == "store" for op in ops) == 1000
        work = [ops[i::THREADS] for i in range(THREADS)]

        callbacks = Callbacks()
        start = time.monotonic()
        errors = run_threads(work, lambda op: issue(nodes, op, callbacks), timeout=120)
        assert errors == []
        wait_futures(ops, timeout=60, nodes=nodes)
        elapsed = time.monotonic() - start
        # Each Find of a stored key gets at least one value callback.
        assert callbacks.wait_for(len(ops), 30), f"{callbacks.total} callbacks ran"
        stats = [node.stats() for node in nodes]
    finally:
        close_all(nodes)  # joins the node threads: no callback can run after this

    remote = {op.call_id for op in ops if op.expected and op.node in observers}

    def label(op: Op) -> str:
        if op.kind == "store":
            return "store"
        if not op.expected:
            return "find-missing"
        return "find-remote" if op.call_id in remote else "find-local"

    outcomes = Counter(
        f"{label(op)}: {type(outcome(op.future)).__name__}"  # type: ignore[arg-type]
        for op in ops
    )
    totals: Counter[str] = Counter()
    for counts in stats:
        totals.update(counts)
    print(
        f"\n2000 concurrent calls on 20 nodes ended in {elapsed:.2f} s\n"
        f"outcomes: {dict(sorted(outcomes.items()))}\n"
        f"node counters: {dict(sorted(totals.items()))}"
    )
    assert callbacks.ids() == {op.call_id for op in ops}
    remote_found = 0
    for op in ops:
        if op.kind == "store":
            check_store(op, callbacks, (dht.StoreError,))
        elif not op.expected:
            check_find(op, callbacks, (dht.NotFoundError,))
            assert outcome(op.future) is not None  # type: ignore[arg-type]
        elif op.call_id in remote:
            # Under this load a request may time out, so one Find may miss a
            # value or all of them (NotFoundError); what is found is stored
            # values, each once.
            check_find(op, callbacks, (dht.NotFoundError,))
            if outcome(op.future) is None:  # type: ignore[arg-type]
                found = set(op.future.result(timeout=0))  # type: ignore[union-attr]
                assert found <= op.expected
                remote_found += found == op.expected
        else:
            check_find(op, callbacks, ())
            assert sorted(op.future.result(timeout=0)) == sorted(op.expected)  # type: ignore[union-attr]
    # But the Finds through the network do find: every key has 18 holders,
    # and all 200 of them found every value in every run seen.
    assert len(remote) >= 150
    assert remote_found >= REMOTE_FOUND_SHARE * len(remote), (
        f"only {remote_found} of {len(remote)} Finds through the network found every value stored"
    )


@pytest.mark.timeout(200)  # within it: calls 60 s, Close 30 + 60 s, futures 30 s
def test_close_while_calls_are_in_flight() -> None:
    """Four threads issue 600 calls; once 150 are out, every node is closed
    (all at once, one closing thread per node) while the rest are issued."""
    rng = random.Random(4242)
    # Three members leave abruptly first: lookups that ask them wait for
    # their stall time (timeout / 4), so calls stay in flight longer.
    nodes = start_cluster(13, timeout=2.0)
    try:
        stored: dict[bytes, frozenset[bytes]] = {}
        for i in range(10):
            key = random_id()
            stored[key] = frozenset({b"before-close-%d" % i})
            assert nodes[i].Store(key, b"before-close-%d" % i, TTL).result(timeout=30) is None
        settle(nodes, 30)
        close_all(nodes[10:])
        nodes = nodes[:10]

        ops: list[Op] = []
        for call_id in range(600):
            node = rng.randrange(10)
            if call_id % 2 == 0:
                ops.append(Op(call_id, "store", node, random_id(), b"in-flight-%d" % call_id))
            elif call_id % 4 == 1:
                ops.append(Op(call_id, "find", node, random_id()))
            else:
                key = rng.choice(list(stored))
                ops.append(Op(call_id, "find", node, key, expected=stored[key]))
        rng.shuffle(ops)
        work = [ops[i::4] for i in range(4)]

        callbacks = Callbacks()
        issued = threading.Semaphore(0)
        after_close: set[int] = set()  # calls issued once their node's engine was closed
        synchronous: set[int] = set()  # ... whose callback ran before the call returned
        lock = threading.Lock()

        def issue_and_count(op: Op) -> None:
            was_closed = nodes[op.node]._engine.closed
            issue(nodes, op, callbacks)
            if was_closed:
                with lock:
                    after_close.add(op.call_id)
                    if callbacks.calls(op.call_id):
                        synchronous.add(op.call_id)
            issued.release()

        close_errors: list[BaseException] = []
        close_started = threading.Event()

        def close_one(node: dht.DHT) -> None:
            try:
                node.Close()
            except BaseException as error:
                close_errors.append(error)

        closers = [
            threading.Thread(target=close_one, args=(node,), name=f"closer-{i}", daemon=True)
            for i, node in enumerate(nodes)
        ]

        def close_soon() -> None:
            for _ in range(150):
                if not issued.acquire(timeout=30):
                    break
            close_started.set()
            for closer in closers:
                closer.start()

        trigger = threading.Thread(target=close_soon, name="close-trigger", daemon=True)
        trigger.start()
        errors = run_threads(work, issue_and_count, timeout=60)
        assert errors == []
        assert close_started.wait(30)
        trigger.join(30)
        assert not trigger.is_alive()
        start = time.monotonic()
        for closer in closers:
            closer.join(max(0.0, start + 60 - time.monotonic()))
        assert not any(closer.is_alive() for closer in closers), "Close did not return"
        assert close_errors == []
        assert all(node.closed for node in nodes)
        wait_futures(ops, timeout=30, nodes=nodes)
    finally:
        close_all(nodes)  # idempotent: a no-op for the nodes closed above

    allowed = (dht.ClosedError, dht.StoreError, dht.NotFoundError)
    for op in ops:
        if op.kind == "store":
            check_store(op, callbacks, allowed)
        else:
            check_find(op, callbacks, allowed)
            if outcome(op.future) is None:  # type: ignore[arg-type]
                assert set(op.future.result(timeout=0)) == op.expected  # type: ignore[union-attr]
    # A call on a closed node ends at once, on the calling thread, with ClosedError.
    assert synchronous == after_close
    for op in ops:
        if op.call_id in after_close:
            assert isinstance(outcome(op.future), dht.ClosedError)  # type: ignore[arg-type]
    outcomes = Counter(type(outcome(op.future)).__name__ for op in ops)  # type: ignore[arg-type]
    print(
        f"\noutcomes with Close in flight: {dict(sorted(outcomes.items()))}; "
        f"{len(after_close)} calls were issued on an already closed node"
    )
    assert callbacks.ids() == {op.call_id for op in ops}
    # Close did cut calls short (how many depends on scheduling).
    assert outcomes["ClosedError"] > 0, outcomes


@pytest.mark.timeout(60)
def test_request_to_a_silent_address_times_out_on_time() -> None:
    # slack: how late a timeout may fire on a loaded machine and still be
    # correct; far below the 60 s the reference waited (D21), far above the
    # scheduling noise of a shared machine.
    timeout, tick, slack = 0.3, 0.01, 2.0
    node = add_node(None, timeout=timeout, timer_tick=tick)
    try:
        silent = [free_udp_address() for _ in range(3)]
        before = node.stats().get("request-timeout", 0)
        done = threading.Event()
        lock = threading.Lock()
        failures: list[tuple[float, Exception]] = []
        responses: list[Event] = []

        def on_response(event: Event, source: tuple[str, int]) -> bool:
            with lock:
                responses.append(event)
            return True

        def on_failure(error: Exception) -> None:
            with lock:
                failures.append((time.monotonic(), error))
                if len(failures) == len(silent):
                    done.set()

        starts: dict[tuple[str, int], float] = {}
        for text in silent:
            host, _, port = text.rpartition(":")
            address = (host, int(port))
            starts[address] = time.monotonic()
            node._engine.request(address, None, EventType.PING, None, on_response, on_failure)
        assert done.wait(timeout + 5.0), f"{len(failures)} of {len(silent)} requests ended"

        assert responses == []
        with lock:
            ended = list(failures)
        for end, error in ended:
            assert isinstance(error, dht.RequestTimeout), error
            assert error.timeout == timeout
            elapsed = end - starts.pop(error.address)
            assert timeout <= elapsed <= timeout + tick + slack, f"timed out after {elapsed:.3f} s"
        assert starts == {}, f"no timeout for {starts}"
        stats = node.stats()
        assert stats.get("request-timeout", 0) == before + len(silent)
        assert stats["pending-requests"] == 0
        print(f"\nreceive-error (ICMP port unreachable) counted {stats.get('receive-error', 0)}")
    finally:
        node.Close()
    # Late callbacks would show here: Close ends pending requests, and there are none.
    assert len(failures) == len(silent) and responses == []
