"""Integration tests of the public API on real UDP sockets (127.0.0.1) and real
threads: the reference test suite's scenarios, plus Close, errors and Config.

Every wait is bounded (``future.result(timeout=...)``, ``wait_until``); every
callback count is asserted; every node is closed by a fixture or a ``with``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import math
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cluster import (
    Call,
    Callbacks,
    RefusingStorage,
    ResourceSnapshot,
    add_node,
    close_all,
    config,
    free_udp_address,
    open_fds,
    running_cluster,
    start_cluster,
    stored_values,
    wait_until,
)

import dht
import dht.core.operations as operations
import dht.listener as dht_listener
import dht.node as dht_node
import dht.timer as dht_timer
from dht.core.engine import Engine
from dht.core.storage import MemoryStorage
from dht.keys import random_id
from dht.shared import SharedThread
from dht.wire import Event, EventType, Value, encode, fragment

RESULT = 10.0
"""Longest wait for one Store/Find to end (generous: the machine may be loaded)."""

TTL = 600


def new_key() -> bytes:
    return random_id()


def store(node: dht.DHT, key: bytes, value: bytes, ttl: float = TTL) -> None:
    """Store and assert that it succeeded with exactly one callback."""
    callbacks = Callbacks()
    future = node.Store(key, value, ttl, callbacks.store())
    assert future.result(timeout=RESULT) is None
    assert callbacks.wait_for(1, RESULT)
    assert callbacks.calls() == [Call(None, None)]


def find_all(node: dht.DHT, key: bytes, *opts: dht.ValuesFrom) -> list[bytes]:
    """Find that must succeed: returns the values; asserts the callback got
    each value exactly once and no error."""
    callbacks = Callbacks()
    future = node.Find(key, callbacks.find(), *opts)
    values = future.result(timeout=RESULT)
    assert len(values) == len(set(values)), f"duplicate values in the result: {values}"
    assert callbacks.wait_for(len(values), RESULT)
    assert sorted(callbacks.values()) == sorted(values)
    assert callbacks.errors() == []
    assert callbacks.total == len(values)
    return values


def assert_not_found(node: dht.DHT, key: bytes, *opts: dht.ValuesFrom) -> None:
    callbacks = Callbacks()
    future = node.Find(key, callbacks.find(), *opts)
    with pytest.raises(dht.NotFoundError) as raised:
        future.result(timeout=RESULT)
    assert raised.value.key == key
    assert callbacks.wait_for(1, RESULT)
    calls = callbacks.calls()
    assert len(calls) == 1, calls
    assert calls[0].value is None
    assert isinstance(calls[0].error, dht.NotFoundError)


def mark_time() -> float:
    """Epoch seconds strictly after every value stored so far and strictly
    before every value stored after this returns (a bounded 5 ms margin)."""
    now = time.time()
    assert wait_until(lambda: time.time() > now + 0.01, 1.0)
    return now + 0.005


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def lone() -> Iterator[dht.DHT]:
    """A node without bootstrap: a network of one."""
    node = add_node(None)
    try:
        yield node
    finally:
        node.Close()


@dataclass
class Net:
    nodes: list[dht.DHT]
    observer: dht.DHT
    """A member that keeps nothing locally, so its Finds use the network."""


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    """Eight nodes plus an observer; tests use distinct keys and close nothing."""
    nodes = start_cluster(8)
    try:
        observer = add_node(nodes[0], storage=RefusingStorage())
        nodes.append(observer)
        yield Net(nodes[:8], observer)
    finally:
        close_all(nodes)


# ---------------------------------------------------------------------------
# Bootstrap


@pytest.mark.timeout(120)
def test_bootstrap_100_nodes() -> None:
    start = time.monotonic()
    with running_cluster(100) as nodes:
        joined = time.monotonic() - start
        print(f"\n100 nodes joined in {joined:.2f} s")
        sizes = [node.stats()["routing-table-size"] for node in nodes]
        assert min(sizes) > 0, f"empty routing tables: {[i for i, s in enumerate(sizes) if not s]}"

        key = new_key()
        store(nodes[1], key, b"hundred")
        # Wait for the STOREs beyond the majority to be answered too.
        assert wait_until(lambda: nodes[1].stats()["pending-requests"] == 0, RESULT)
        holders = [node for node in nodes if stored_values(node, key)]
        others = [node for node in nodes[2:] if node not in holders]
        assert others, "every node stores the key: the test no longer finds remotely"
        finders = others[:5] + [node for node in holders if node is not nodes[1]][:2]
        for node in finders:
            assert find_all(node, key) == [b"hundred"]


# ---------------------------------------------------------------------------
# A lone node


def test_lone_store_and_find(lone: dht.DHT) -> None:
    key = new_key()
    store(lone, key, b"alone")
    callbacks = Callbacks()
    assert lone.Find(key, callbacks.find()).result(timeout=RESULT) == [b"alone"]
    assert callbacks.wait_for(1, RESULT)
    assert [(c.value, c.error) for c in callbacks.calls()] == [(b"alone", None)]


def test_lone_several_values_under_one_key(lone: dht.DHT) -> None:
    key = new_key()
    values = [b"one", b"two", b"three"]
    for value in values:
        store(lone, key, value)
    callbacks = Callbacks()
    found = lone.Find(key, callbacks.find()).result(timeout=RESULT)
    assert sorted(found) == sorted(values)
    assert callbacks.wait_for(3, RESULT)
    assert sorted(callbacks.values()) == sorted(values)
    assert callbacks.errors() == []
    assert callbacks.total == 3


def test_lone_values_from(lone: dht.DHT) -> None:
    key = new_key()
    store(lone, key, b"old")
    t = mark_time()
    store(lone, key, b"new")
    assert find_all(lone, key, dht.ValuesFrom(datetime.fromtimestamp(t, UTC))) == [b"new"]
    assert find_all(lone, key, dht.ValuesFrom(t)) == [b"new"]
    assert sorted(find_all(lone, key)) == [b"new", b"old"]
    assert_not_found(lone, key, dht.ValuesFrom(time.time() + 3600))
    # The first ValuesFrom counts, as in Go.
    assert find_all(lone, key, dht.ValuesFrom(t), dht.ValuesFrom(time.time() + 3600)) == [b"new"]
    assert_not_found(lone, key, dht.ValuesFrom(time.time() + 3600), dht.ValuesFrom(t))


def test_lone_missing_key(lone: dht.DHT) -> None:
    assert_not_found(lone, new_key())


# ---------------------------------------------------------------------------
# A cluster


@pytest.mark.both_io
def test_store_on_one_node_find_from_others(net: Net) -> None:
    key = new_key()
    store(net.nodes[1], key, b"cluster-value")
    assert find_all(net.nodes[5], key) == [b"cluster-value"]
    assert net.observer._engine.storage.Get(key) == []
    assert find_all(net.observer, key) == [b"cluster-value"]
    assert net.observer.stats()["routing-table-size"] > 0


def test_multiple_values_across_cluster(net: Net) -> None:
    key = new_key()
    values = {b"from-1", b"from-3", b"from-6"}
    futures = [
        net.nodes[i].Store(key, value, TTL)
        for i, value in zip((1, 3, 6), sorted(values), strict=True)
    ]
    for future in futures:
        assert future.result(timeout=RESULT) is None
    found = find_all(net.observer, key)
    assert set(found) == values and len(found) == 3
    # A member that holds them all locally answers the same.
    assert wait_until(lambda: stored_values(net.nodes[7], key) == values, RESULT)
    assert set(find_all(net.nodes[7], key)) == values


def test_values_from_remote(net: Net) -> None:
    key = new_key()
    store(net.nodes[2], key, b"v1")
    t = mark_time()
    store(net.nodes[2], key, b"v2")
    assert net.observer._engine.storage.Get(key) == []
    assert find_all(net.observer, key, dht.ValuesFrom(t)) == [b"v2"]
    assert sorted(find_all(net.observer, key)) == [b"v1", b"v2"]
    assert find_all(net.nodes[4], key, dht.ValuesFrom(t)) == [b"v2"]


def test_missing_key_in_cluster(net: Net) -> None:
    assert_not_found(net.observer, new_key())
    assert_not_found(net.nodes[3], new_key())


def test_late_joiner_receives_and_serves_closest_values() -> None:
    with running_cluster(6, timeout=0.5) as nodes:
        keys = [new_key() for _ in range(4)]
        for i, key in enumerate(keys):
            store(nodes[i % 6], key, b"late-%d" % i)
        target = keys[0]
        newcomer = add_node(nodes[2], local_id=target, timeout=0.5)
        nodes.append(newcomer)
        # The existing nodes hand it the values when they first verify it.
        assert wait_until(lambda: stored_values(newcomer, target) == {b"late-0"}, RESULT)
        assert find_all(newcomer, target) == [b"late-0"]

        # With every original holder gone, the newcomer serves the value.
        close_all(nodes[:6])
        observer = add_node(newcomer, storage=RefusingStorage(), timeout=0.5)
        nodes.append(observer)
        assert find_all(observer, target) == [b"late-0"]


def test_leaving_node_does_not_lose_values() -> None:
    with running_cluster(10, timeout=0.5) as nodes:
        observer = add_node(nodes[0], storage=RefusingStorage(), timeout=0.5)
        nodes.append(observer)
        key = new_key()
        store(nodes[3], key, b"survivor")
        holders = [node for node in nodes[:10] if stored_values(node, key)]
        assert nodes[3] in holders
        leaving = [nodes[3], *[node for node in holders if node is not nodes[3]][:2]]
        close_all(leaving)
        assert find_all(observer, key) == [b"survivor"]
        remaining = [node for node in nodes[:10] if node not in leaving]
        assert find_all(remaining[-1], key) == [b"survivor"]


# ---------------------------------------------------------------------------
# Close, leaks


@pytest.mark.both_io
def test_close_is_idempotent_and_ends_calls_with_closed_error() -> None:
    with add_node(None) as node:
        assert not node.closed
        store(node, new_key(), b"before close")
    assert node.closed
    node.Close()
    node.Close()

    callbacks = Callbacks()
    stored = node.Store(new_key(), b"after close", TTL, callbacks.store("store"))
    found = node.Find(new_key(), callbacks.find("find"))
    with pytest.raises(dht.ClosedError):
        stored.result(timeout=RESULT)
    with pytest.raises(dht.ClosedError):
        found.result(timeout=RESULT)
    assert callbacks.wait_for(2, RESULT)
    for call_id in ("store", "find"):
        calls = callbacks.calls(call_id)
        assert len(calls) == 1, (call_id, calls)
        assert calls[0].value is None
        assert isinstance(calls[0].error, dht.ClosedError)


@pytest.mark.both_io
def test_a_second_close_returns_only_once_the_node_is_closed() -> None:
    """While one thread is closing the node (here held up in a ClosedError
    callback), a Close from another thread waits for it to finish."""
    a, b = start_cluster(2)
    b.Close()
    in_callback, second_returned = threading.Event(), threading.Event()
    main = threading.get_ident()

    def second_close_waits() -> bool:
        """Whether the main thread is blocked waiting inside its Close."""
        frame, names = sys._current_frames().get(main), set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        return {"Close", "wait"} <= names

    def on_find(value: bytes | None, error: Exception | None) -> None:
        in_callback.set()
        # Hold the first Close until the second has returned (the bug) or
        # is waiting for the first (as it should).
        assert wait_until(lambda: second_returned.is_set() or second_close_waits(), RESULT)

    a.Find(new_key(), on_find)  # pending: its only peer is gone
    first = threading.Thread(target=a.Close, name="first-close")
    first.start()
    try:
        assert in_callback.wait(RESULT)
        a.Close()
        sockets_closed = all(sock.fileno() == -1 for sock in a._sockets)
        second_returned.set()
        assert sockets_closed, "the second Close returned before the node was closed"
    finally:
        second_returned.set()
        first.join(RESULT)


@pytest.mark.both_io
def test_nodes_closing_each_other_from_callbacks_do_not_deadlock() -> None:
    """Thread 1 closes A, whose ClosedError callback closes B; thread 2 is
    closing B and waits for B's listener, which (in a Find callback) closes A.
    No Close may wait for another here."""
    holder = add_node(None)
    key = new_key()
    holder.Store(key, b"v", TTL).result(RESULT)
    b = add_node(holder, storage=RefusingStorage())  # its Find answer comes on its listener
    gone = add_node(None)
    a = add_node(gone, timeout=30.0)
    gone.Close()
    in_b_listener, release_b_listener, a_closing = (threading.Event() for _ in range(3))

    def on_b_find(value: bytes | None, error: Exception | None) -> None:  # B's listener
        if value is not None and not in_b_listener.is_set():
            in_b_listener.set()
            release_b_listener.wait(RESULT)
            a.Close()

    def on_a_find(value: bytes | None, error: Exception | None) -> None:  # thread 1
        if isinstance(error, dht.ClosedError):
            a_closing.set()
            b.Close()

    a.Find(new_key(), on_a_find)  # pending: its only peer is gone
    b.Find(key, on_b_find)
    second = threading.Thread(target=b.Close, name="close-b", daemon=True)
    first = threading.Thread(target=a.Close, name="close-a", daemon=True)
    try:
        assert in_b_listener.wait(RESULT)
        second.start()
        assert wait_until(lambda: b.closed, RESULT)
        first.start()
        assert a_closing.wait(RESULT)
        release_b_listener.set()
        first.join(RESULT)
        second.join(RESULT)
        assert not first.is_alive() and not second.is_alive(), "deadlocked"
    finally:
        release_b_listener.set()
        holder.Close()


@pytest.mark.both_io
def test_a_close_from_a_listener_callback_does_not_wait_for_the_close_joining_it() -> None:
    """Thread T closes A and joins A's listener, which is in a Find callback
    that closes A too: that second Close, on a library thread, must not wait
    for T (the guard this needs, and only this)."""
    holder = add_node(None)
    key = new_key()
    holder.Store(key, b"v", TTL).result(RESULT)
    a = add_node(holder, storage=RefusingStorage())  # its Find answer comes on its listener
    in_listener, release = threading.Event(), threading.Event()

    def on_find(value: bytes | None, error: Exception | None) -> None:  # A's listener
        if value is not None and not in_listener.is_set():
            in_listener.set()
            release.wait(RESULT)
            a.Close()

    a.Find(key, on_find)
    closer = threading.Thread(target=a.Close, name="close-a", daemon=True)
    try:
        assert in_listener.wait(RESULT)
        closer.start()
        assert wait_until(lambda: a.closed, RESULT)
        release.set()
        closer.join(RESULT)
        assert not closer.is_alive(), "deadlocked"
    finally:
        release.set()
        holder.Close()


@pytest.mark.both_io
def test_closes_nested_in_each_others_callbacks_do_not_wait_for_each_other() -> None:
    """Threads 1 and 2 close A and B; each one's ClosedError callback closes
    the other node: a Close inside a Close must not wait (the guard this
    needs, and only this: no library thread is involved)."""
    gone = add_node(None)
    a = add_node(gone, timeout=30.0)
    b = add_node(gone, timeout=30.0)
    gone.Close()
    a_closing, b_closing = threading.Event(), threading.Event()

    def on_a_find(value: bytes | None, error: Exception | None) -> None:  # thread 1
        if isinstance(error, dht.ClosedError):
            a_closing.set()
            b_closing.wait(RESULT)
            b.Close()

    def on_b_find(value: bytes | None, error: Exception | None) -> None:  # thread 2
        if isinstance(error, dht.ClosedError):
            b_closing.set()
            a_closing.wait(RESULT)
            a.Close()

    a.Find(new_key(), on_a_find)  # pending: their only peer is gone
    b.Find(new_key(), on_b_find)
    first = threading.Thread(target=a.Close, name="close-a", daemon=True)
    second = threading.Thread(target=b.Close, name="close-b", daemon=True)
    first.start()
    second.start()
    first.join(RESULT)
    second.join(RESULT)
    assert not first.is_alive() and not second.is_alive(), "deadlocked"


@pytest.mark.both_io
def test_close_from_a_callback(io_mode: str) -> None:
    snapshot = ResourceSnapshot.take()
    with running_cluster(2) as nodes:
        node = nodes[1]
        closed = Callbacks()

        def close_then_record(error: Exception | None) -> None:
            node.Close()
            closed.store()(error)

        future = node.Store(new_key(), b"close me", TTL, close_then_record)
        assert future.result(timeout=RESULT) is None
        assert closed.wait_for(1, RESULT)
        assert closed.total == 1 and closed.errors() == []
        # Its listeners stop now; the timer thread or the loop, shared with
        # nodes[0], when the cluster closes (the snapshot checks that).
        listeners = [t for t in node.threads() if t.name.startswith("dht-listener")]
        assert len(listeners) == (io_mode == "threads")
        assert wait_until(lambda: not any(t.is_alive() for t in listeners), RESULT)
        assert node.closed
    snapshot.assert_no_leaks()


@pytest.mark.both_io
def test_no_thread_or_fd_leaks_after_closing_a_cluster(io_mode: str) -> None:
    snapshot = ResourceSnapshot.take()
    with running_cluster(5, listeners=2) as nodes:
        new = snapshot.new_threads()
        listeners = [t for t in new if t.name.startswith("dht-listener")]
        # two each, or none: the loop reads every socket
        assert len(listeners) == (5 * 2 if io_mode == "threads" else 0)
        # and the timer thread or the loop the process's nodes share, unless
        # it already ran
        shared = "dht-timer" if io_mode == "threads" else "dht-loop"
        assert [t.name for t in new if t not in listeners] in ([shared], [])
        key = new_key()
        store(nodes[0], key, b"leak check")
        assert find_all(nodes[4], key) == [b"leak check"]
    assert all(node.closed for node in nodes)
    snapshot.assert_no_leaks()


def test_shared_io_serves_every_node_of_the_process_from_one_thread() -> None:
    snapshot = ResourceSnapshot.take()
    with running_cluster(5, shared_io=True, listeners=2) as nodes:
        new = snapshot.new_threads()
        assert [t.name for t in new if t.name.startswith("dht-listener")] == []
        loops = {node.threads()[0] for node in nodes}
        assert len(loops) == 1 and loops.pop().name == "dht-loop"
        ran_on: list[str] = []
        key = new_key()
        nodes[1].Store(key, b"one thread", TTL, lambda error: ran_on.append(current_name()))
        assert wait_until(lambda: ran_on, RESULT)
        assert ran_on == ["dht-loop"]
        assert find_all(nodes[4], key) == [b"one thread"]
    snapshot.assert_no_leaks()


def current_name() -> str:
    return threading.current_thread().name


FLOOD = r"""
import socket, sys, time
port, ping, seconds = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind(("127.0.0.1", 0))
    while time.monotonic() < end:
        for _ in range(50):
            for data in (ping, b"x"):
                try:
                    sock.sendto(data, ("127.0.0.1", port))
                except OSError:
                    pass
"""


@pytest.mark.both_io
def test_close_is_prompt_under_incoming_traffic() -> None:
    """A node flooded with PINGs (and junk) by another process still closes at
    once: the listener must not drain the socket forever before it looks at
    the stop request."""
    flood_seconds = 3.0
    node = add_node(None)
    flood = None
    try:
        ping = Event(random_id(), random_id(), EventType.PING, False, None)
        [datagram] = fragment(ping.id, encode(ping))
        port = node.address.rpartition(":")[2]
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, port, datagram.hex(), str(flood_seconds)]
        )
        assert wait_until(lambda: node.stats().get("drop-short-datagram", 0) > 200, 5.0)
        start = time.monotonic()
        node.Close()
        elapsed = time.monotonic() - start
        # Close returned while the flood still ran: it did not drain it first.
        assert flood.poll() is None, f"the flood ended before Close returned ({elapsed:.2f} s)"
    finally:
        node.Close()
        if flood is not None:
            flood.kill()
            flood.wait(10)


def test_close_wakes_a_listener_waiting_in_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a datagram the listener waits for the next one in a blocking
    read, not in select. Close must wake it at once (it shuts the socket's
    receive side), not when the read's quiet period ends."""
    monkeypatch.setattr(dht_listener, "QUIET_S", 60.0)
    node = add_node(None)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x", ("127.0.0.1", int(node.address.rpartition(":")[2])))
        assert wait_until(lambda: node.stats().get("drop-short-datagram", 0) == 1, 5.0)
        start = time.monotonic()
        node.Close()
        elapsed = time.monotonic() - start
        assert elapsed < 5.0, f"Close waited {elapsed:.2f} s for a listener's read"
    finally:
        node.Close()


@pytest.mark.both_io
def test_finished_operations_leave_no_reference_cycles() -> None:
    """Stores and finds that have ended leave nothing of ours for the garbage
    collector: requests, timers and lookups are freed by reference counting.
    (Cycles through each request's timer once made full collections of a
    100-node process take 14% of a find run.)"""
    with running_cluster(5) as nodes:
        gc.collect()
        with no_cycles_of_ours():
            for i in range(10):
                key, value = new_key(), b"value-%d" % i
                store(nodes[i % 5], key, value)
                found = nodes[(i + 2) % 5].Find(key, None, dht.FirstValue())
                assert found.result(timeout=RESULT) == [value]


@pytest.mark.both_io
def test_closed_nodes_leave_no_reference_cycles() -> None:
    """A closed node's parts, timers it left scheduled and its key transfer
    included, are freed by reference counting: a process that opens and
    closes nodes does not wait for the garbage collector to free them."""
    gc.collect()
    with no_cycles_of_ours():
        with running_cluster(3) as nodes:
            store(nodes[1], new_key(), b"transferred to the newcomer")
            nodes.append(add_node(nodes[0]))  # key transfer ships to it
        del nodes


@contextlib.contextmanager
def no_cycles_of_ours() -> Iterator[None]:
    """Fails if the block leaves objects of ``dht`` in reference cycles (the
    garbage collector is off within it; what it would free is checked)."""
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # unreachable cycles go to gc.garbage
    try:
        yield
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith("dht")]
        assert not ours, f"{len(ours)} objects in cycles, e.g. {ours[:5]}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


@pytest.mark.both_io
def test_a_slow_storage_scan_holds_up_no_timeout() -> None:
    # Key transfer iterated the user's storage on the timer thread that all
    # nodes of a process share: while a slow Iterate ran (a database, say),
    # no request of any node timed out.
    scanning, release = threading.Event(), threading.Event()

    class SlowStorage(MemoryStorage):
        def Iterate(self, fn: Callable[[Value], bool]) -> None:
            scanning.set()
            release.wait(60.0)
            super().Iterate(fn)

    key = new_key()
    storage = SlowStorage()
    assert storage.Set(key, b"v", time.time_ns(), 10**12)
    nodes = [add_node(None, storage=storage), add_node(None, timeout=0.5)]
    holder, other = nodes
    try:
        nodes.append(add_node(holder))  # newly seen by the holder: a scan starts
        assert scanning.wait(RESULT)
        failed = threading.Event()
        host, port = free_udp_address().rsplit(":", 1)
        other._engine.request(
            (host, int(port)), None, EventType.PING, None, lambda *_: True, lambda _: failed.set()
        )
        assert failed.wait(RESULT), "the request's timeout waited for the storage scan"
        release.set()
        assert wait_until(lambda: stored_values(nodes[2], key) == {b"v"}, RESULT)
    finally:
        release.set()
        close_all(nodes)


@pytest.mark.both_io
def test_a_closed_node_is_freed_without_the_garbage_collector() -> None:
    # The node held its engine and the engine the node's send method: every
    # closed node waited for a full collection. (So did its engine, held by
    # its own key transfer, after the two were split.)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        node = add_node(None)
        freed = weakref.ref(node)
        engine_freed = weakref.ref(node._engine)
        node.Close()
        del node
        # Timers let go of them.
        assert wait_until(lambda: freed() is None and engine_freed() is None, RESULT)
    finally:
        if was_enabled:
            gc.enable()


def test_bootstrap_where_nothing_listens() -> None:
    address = free_udp_address()
    snapshot = ResourceSnapshot.take()
    timeout = 0.5
    start = time.monotonic()
    with pytest.raises(dht.BootstrapError):
        dht.New(dht.Config(bootstrap_addresses=[address], timeout=timeout))
    elapsed = time.monotonic() - start
    # It gives up after its resends time out, not at the 60 s safety net.
    tries = operations.BOOTSTRAP_RETRIES + 1
    assert elapsed < tries * timeout + 10.0, f"BootstrapError after {elapsed:.2f} s"
    snapshot.assert_no_leaks()


def test_new_out_of_file_descriptors_fails_cleanly_at_every_step() -> None:
    """With the process a few file descriptors short of its limit, New
    either works or raises OSError, and then leaves no thread or fd behind
    and no listener thread silently dead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    outcomes: list[str] = []
    for free in range(1, 10):  # two listeners need 2 sockets + 2 x (epoll + pipe)
        snapshot = ResourceSnapshot.take()
        fillers: list[int] = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (snapshot.fds + 64, hard))
        try:
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            for _ in range(free):
                os.close(fillers.pop())
            try:
                node = dht.New(dht.Config(listeners=2))
            except OSError:
                outcomes.append("raised")
            else:
                outcomes.append("started")
                assert all(listener.thread.is_alive() for listener in node._listeners)
                node.Close()
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        snapshot.assert_no_leaks()
    assert "raised" in outcomes and outcomes[-1] == "started", outcomes


def test_new_failing_after_a_listener_started_closes_its_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The engine was left open: what the started listener had received
    # could still queue key-transfer scans on the shared worker and timer.
    engines: list[Engine] = []

    class RecordedEngine(Engine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            engines.append(self)

    starts = 0
    start = dht_listener.Listener.start

    def second_start_fails(listener: dht_listener.Listener) -> None:
        nonlocal starts
        starts += 1
        if starts == 2:
            raise OSError("out of threads")
        start(listener)

    monkeypatch.setattr(dht_node, "Engine", RecordedEngine)
    monkeypatch.setattr(dht_listener.Listener, "start", second_start_fails)
    snapshot = ResourceSnapshot.take()
    with pytest.raises(OSError, match="out of threads"):
        dht.New(dht.Config(listeners=2))
    assert len(engines) == 1 and engines[0].closed
    snapshot.assert_no_leaks()


def test_port_zero_is_never_shared() -> None:
    """Nodes listening on port 0 get ports of their own. (Binding as ``New``
    does; 1,000 real nodes would cost 2,000 threads.)"""
    sockets: list[socket.socket] = []
    try:
        for _ in range(1000):
            sockets.extend(dht_node._bind(dht.Config(listen_address="127.0.0.1:0")))
        ports = Counter(sock.getsockname()[1] for sock in sockets)
        shared = sorted(port for port, count in ports.items() if count > 1)
        assert not shared, f"{len(shared)} ports were given to two nodes, e.g. {shared[:5]}"
    finally:
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------------
# Several listeners


def test_three_listeners_share_one_port() -> None:
    with running_cluster(4, listeners=3) as nodes:
        for node in nodes:
            assert len(node._sockets) == 3
            ports = {sock.getsockname()[1] for sock in node._sockets}
            assert ports == {int(node.address.rpartition(":")[2])}
            assert len(node.threads()) == 3 + 2  # and the shared timer and worker
        key = new_key()
        store(nodes[1], key, b"three listeners")
        for node in nodes:
            assert find_all(node, key) == [b"three listeners"]
        assert_not_found(nodes[3], new_key())


# ---------------------------------------------------------------------------
# A port in use


def hold_port_elsewhere() -> tuple[subprocess.Popen[str], str]:
    """Another process holding a UDP port with SO_REUSEADDR and SO_REUSEPORT
    (as a Go node does): returns it and the ``127.0.0.1:port`` it holds; it
    exits when its stdin closes."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
            "s.bind(('127.0.0.1', 0))\n"
            "print(s.getsockname()[1], flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    return holder, f"127.0.0.1:{holder.stdout.readline().strip()}"


def assert_address_in_use(address: str, listeners: int) -> None:
    snapshot = ResourceSnapshot.take()
    with pytest.raises(dht.AddressInUse) as raised:
        dht.New(config(listen_address=address, listeners=listeners))
    assert raised.value.address == address and address in str(raised.value)
    assert raised.value.errno == errno.EADDRINUSE and isinstance(raised.value, OSError)
    snapshot.assert_no_leaks()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("first", "second"), [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_a_port_held_by_another_node_is_refused(first: int, second: int) -> None:
    """SO_REUSEPORT must not let a second node onto a node's port, whatever
    ``listeners`` each has; the first node keeps working."""
    with running_cluster(2, listeners=first) as nodes:
        assert_address_in_use(nodes[0].address, second)
        assert len(nodes[0]._sockets) == first
        key = new_key()
        store(nodes[1], key, b"still here")
        assert find_all(nodes[0], key) == [b"still here"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("listeners", [1, 3])
def test_a_port_held_by_another_process_is_refused(listeners: int) -> None:
    holder, address = hold_port_elsewhere()
    try:
        assert_address_in_use(address, listeners)
    finally:
        holder.communicate(timeout=10)
    with dht.New(config(listen_address=address, listeners=listeners)) as node:
        assert node.address == address  # free again once the holder is gone


@pytest.mark.timeout(60)
def test_a_port_held_by_a_plain_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        for listeners in (1, 3):
            assert_address_in_use(address, listeners)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["missing", "refused", "not-linux"])
def test_without_so_reuseport_several_listeners_are_one_socket_and_one_warning(
    how: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Windows has no SO_REUSEPORT, a kernel built without it refuses it, and
    macOS's does not spread datagrams: ``listeners > 1`` binds one socket."""
    if how == "missing":
        monkeypatch.delattr(socket, "SO_REUSEPORT")
    elif how == "refused":
        monkeypatch.setattr(socket, "SO_REUSEPORT", 0x7FFF, raising=False)  # ENOPROTOOPT
    else:
        monkeypatch.setattr(dht_node.sys, "platform", "darwin")
    with running_cluster(1) as nodes, caplog.at_level(logging.WARNING, "dht"):
        with add_node(nodes[0], listeners=3) as node:
            assert len(node._sockets) == 1 and len(node._listeners) == 1
            key = new_key()
            store(node, key, b"one socket")
            assert find_all(nodes[0], key) == [b"one socket"]
        assert_address_in_use(nodes[0].address, 3)  # still refused
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "SO_REUSEPORT" in w]) == 2, warnings  # one per New
    assert "listeners=3" in warnings[0] and "one socket" in warnings[0]


# ---------------------------------------------------------------------------
# Caller errors


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda n, cb, fcb: n.Store(b"k" * 19, b"v", TTL, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(b"k" * 21, b"v", TTL, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store("k" * 20, b"v", TTL, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(new_key(), b"v" * 32769, TTL, cb), dht.ValueTooLarge),
        (lambda n, cb, fcb: n.Store(new_key(), "text", TTL, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(new_key(), b"v", 0, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(new_key(), b"v", -1, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(new_key(), b"v", math.nan, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(new_key(), b"v", timedelta(0), cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Find(b"k" * 19, fcb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Find(new_key(), fcb, "bogus"), dht.ArgumentError),
        (lambda n, cb, fcb: n.Find(new_key(), fcb, time.time()), dht.ArgumentError),
        (lambda n, cb, fcb: dht.ValuesFrom("yesterday"), dht.ArgumentError),
        (lambda n, cb, fcb: dht.ValuesFrom(math.inf), dht.ArgumentError),
        (lambda n, cb, fcb: dht.ValuesFrom(math.nan), dht.ArgumentError),
        (lambda n, cb, fcb: dht.ValuesFrom(1e12), dht.ArgumentError),
        (lambda n, cb, fcb: dht.ValuesFrom(10**400), dht.ArgumentError),
        (lambda n, cb, fcb: dht.ValuesFrom(datetime.min), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(new_key(), b"v", math.inf, cb), dht.ArgumentError),
        (lambda n, cb, fcb: n.Store(new_key(), b"v", 1e10, cb), dht.ArgumentError),
    ],
    ids=[
        "key-19-bytes",
        "key-21-bytes",
        "key-str",
        "value-32769-bytes",
        "value-str",
        "ttl-0",
        "ttl-negative",
        "ttl-nan",
        "ttl-timedelta-0",
        "find-key-19-bytes",
        "find-bad-option",
        "find-float-option",
        "values-from-str",
        "values-from-inf",
        "values-from-nan",
        "values-from-beyond-int64",
        "values-from-beyond-float",
        "values-from-datetime-min",
        "ttl-inf",
        "ttl-beyond-int64",
    ],
)
def test_invalid_arguments(lone: dht.DHT, call: Any, error: type[Exception]) -> None:
    callbacks = Callbacks()
    with pytest.raises(error):
        call(lone, callbacks.store(), callbacks.find())
    assert callbacks.total == 0


def test_largest_value_is_accepted(lone: dht.DHT, net: Net) -> None:
    value = bytes(range(256)) * 128
    assert len(value) == 32768
    key = new_key()
    store(lone, key, value)
    assert find_all(lone, key) == [value]
    # Across the network: the answer is split over several datagrams.
    key = new_key()
    store(net.nodes[0], key, value)
    assert find_all(net.observer, key) == [value]


def test_raising_callback_does_not_kill_the_node(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    node = net.nodes[6]
    raised = Callbacks()

    def bad_store(error: Exception | None) -> None:
        raised.store("store")(error)
        raise RuntimeError("user store callback failed")

    def bad_find(value: bytes | None, error: Exception | None) -> None:
        raised.find("find")(value, error)
        raise RuntimeError("user find callback failed")

    key = new_key()
    with caplog.at_level(logging.ERROR, logger="dht"):
        assert node.Store(key, b"raise", TTL, bad_store).result(timeout=RESULT) is None
        assert raised.wait_for_call("store", 1, RESULT)
        assert net.observer.Find(key, bad_find).result(timeout=RESULT) == [b"raise"]
        assert raised.wait_for_call("find", 1, RESULT)
        assert node.Find(new_key(), bad_find).exception(timeout=RESULT) is not None
        assert raised.wait_for_call("find", 2, RESULT)
        assert wait_until(
            lambda: sum("raised" in r.getMessage() for r in caplog.records) >= 3, RESULT
        )
    assert [(c.value, c.error) for c in raised.calls("store")] == [(None, None)]
    find_calls = raised.calls("find")
    assert len(find_calls) == 2
    assert find_calls[0] == Call(b"raise", None)
    assert isinstance(find_calls[1].error, dht.NotFoundError)

    # The threads survived: both nodes still store and find.
    for thread in node.threads() + net.observer.threads():
        assert thread.is_alive(), thread.name
    other = new_key()
    store(node, other, b"still alive")
    assert find_all(net.observer, other) == [b"still alive"]
    assert find_all(node, key) == [b"raise"]


# ---------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"local_id": b"x" * 19}, "local_id"),
        ({"local_id": b"x" * 21}, "local_id"),
        ({"local_id": "x" * 20}, "local_id"),
        ({"listeners": 0}, "listeners"),
        ({"listeners": -1}, "listeners"),
        ({"listeners": 1.5}, "listeners"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": 1e307}, "timeout"),
        ({"refresh_interval": 2e9}, "refresh_interval"),
        ({"max_ttl": 1e12}, "max_ttl"),
        ({"listen_address": "127.0.0.1"}, "listen_address"),
        ({"listen_address": "127.0.0.1:65536"}, "listen_address"),
        ({"listen_address": "127.0.0.1:port"}, "listen_address"),
        ({"bootstrap_addresses": "127.0.0.1:9000"}, "bootstrap_addresses"),
        ({"bootstrap_addresses": ["127.0.0.1"]}, "bootstrap_addresses"),
        ({"timer_tick": 0}, "timer_tick"),
        ({"timeout": 0.1, "timer_tick": 0.2}, "timer_tick"),
        ({"refresh_interval": -5}, "refresh_interval"),
        ({"socket_buffer_size": 0}, "socket_buffer_size"),
        ({"storage": object()}, "storage"),
        ({"cpus": set()}, "cpus"),
        ({"cpus": [-1]}, "cpus"),
        ({"cpus": [10_000]}, "cpus"),
        ({"cpus": "0"}, "cpus"),
        ({"cpus": [True]}, "cpus"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(dht.ConfigError) as raised:
        dht.Config(**kwargs)
    assert raised.value.field == field
    assert field in str(raised.value)
    assert isinstance(raised.value, dht.ArgumentError)


@pytest.mark.parametrize(("field", "value"), [("timeout", -1.0), ("timeout", 0), ("listeners", 0)])
def test_a_config_changed_after_it_was_built_is_checked_again_by_new(
    field: str, value: object
) -> None:
    # D24: a timeout set to -1 after construction reached the engine, and
    # every request timed out at once.
    cfg = dht.Config(listen_address="127.0.0.1:0")
    setattr(cfg, field, value)
    with pytest.raises(dht.ConfigError) as raised:
        dht.New(cfg)
    assert raised.value.field == field


def test_the_node_keeps_its_own_copy_of_the_config() -> None:
    cfg = dht.Config(listen_address="127.0.0.1:0", timeout=3.0)
    with dht.New(cfg) as node:
        cfg.timeout = -1.0
        cfg.bootstrap_addresses.append("not an address")
        assert node.config.timeout == 3.0
        assert list(node.config.bootstrap_addresses) == []
        assert node.config is not cfg


def test_cpus_pins_the_node_threads_and_only_them() -> None:
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    with (
        dht.New(config(cpus=[cpu])) as pinned,
        dht.New(config(bootstrap_addresses=[pinned.address])) as free,
    ):
        assert pinned.config.cpus == frozenset([cpu])
        for thread in pinned.threads():
            assert thread.native_id is not None
            assert os.sched_getaffinity(thread.native_id) == {cpu}, thread.name
        for thread in free.threads():
            assert thread.native_id is not None
            assert os.sched_getaffinity(thread.native_id) == allowed, thread.name
        assert os.sched_getaffinity(0) == allowed  # the calling thread is untouched
        key = dht.Key("pinned")
        free.Store(key, b"v", 60).result(timeout=10)
        assert pinned.Find(key).result(timeout=10) == [b"v"]


def test_config_defaults_are_valid() -> None:
    cfg = config()
    assert cfg.listeners == 1 and cfg.timeout == 1.0
    assert dht.Config().timeout == 2.0


def test_a_shared_loop_that_failed_to_start_leaves_no_descriptor_and_is_not_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cannot_start(self: SharedThread) -> None:
        raise RuntimeError("can't start new thread")

    tick = 0.0124  # a loop of its own, not one other tests' nodes share
    snapshot = ResourceSnapshot.take()
    with monkeypatch.context() as patch:
        patch.setattr(SharedThread, "start", cannot_start)
        with pytest.raises(RuntimeError):
            dht.New(dht.Config(listen_address="127.0.0.1:0", timer_tick=tick, shared_io=True))
    assert open_fds() == snapshot.fds  # sockets, selector and wake pipe closed at once
    with dht.New(dht.Config(listen_address="127.0.0.1:0", timer_tick=tick, shared_io=True)) as node:
        assert node._timers.thread.is_alive()
        assert node.threads()[0].name == "dht-loop"


def test_a_timer_thread_that_failed_to_start_is_not_shared_with_later_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # D31: the shared timer was registered before it started; after one
    # "can't start new thread", every later node got the dead timer and no
    # request of theirs ever timed out. The failed New also held its sockets.
    def cannot_start(self: dht_timer.TimerThread) -> None:
        raise RuntimeError("can't start new thread")

    tick = 0.0123  # a timer of its own, not one other tests' nodes share
    snapshot = ResourceSnapshot.take()
    with monkeypatch.context() as patch:
        patch.setattr(dht_timer.TimerThread, "start", cannot_start)
        with pytest.raises(RuntimeError):
            dht.New(dht.Config(listen_address="127.0.0.1:0", timer_tick=tick, listeners=2))
    assert open_fds() == snapshot.fds  # the sockets were closed at once
    with dht.New(dht.Config(listen_address="127.0.0.1:0", timer_tick=tick)) as node:
        assert node._timers.thread.is_alive()
