"""Helpers for the integration tests: real nodes on 127.0.0.1, real threads.

Every wait here is bounded by a deadline; nothing sleeps for a fixed time to
synchronise. ``start_cluster`` never leaves a node running when it fails, and
``running_cluster`` closes its nodes whatever the test does.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dht
from dht.wire import Value

DEFAULT_CONFIG: dict[str, Any] = {"timeout": 1.0}
"""Config fields the helpers use unless told otherwise: a short request
timeout keeps failure paths fast."""


def config(**kwargs: Any) -> dht.Config:
    """A ``Config`` with ``DEFAULT_CONFIG`` under ``kwargs`` (port 0 by default)."""
    return dht.Config(**{**DEFAULT_CONFIG, **kwargs})


def add_node(bootstrap: dht.DHT | str | None, **config_kwargs: Any) -> dht.DHT:
    """Start one node, joining through ``bootstrap`` (a node or ``host:port``)."""
    addresses: list[str] = []
    if bootstrap is not None:
        addresses = [bootstrap.address if isinstance(bootstrap, dht.DHT) else bootstrap]
    return dht.New(config(bootstrap_addresses=addresses, **config_kwargs))


def start_cluster(n: int, **config_kwargs: Any) -> list[dht.DHT]:
    """Start ``n`` nodes: node 0 starts a network, the others join through it.

    If any ``New`` fails, the nodes already started are closed and the error
    propagates.
    """
    assert n >= 1
    nodes: list[dht.DHT] = []
    try:
        nodes.append(add_node(None, **config_kwargs))
        for _ in range(n - 1):
            nodes.append(add_node(nodes[0], **config_kwargs))
    except BaseException:
        close_all(nodes)
        raise
    return nodes


def close_all(nodes: list[dht.DHT]) -> None:
    """Close every node, even if closing one of them raises; re-raise the first error."""
    first: BaseException | None = None
    for node in nodes:
        try:
            node.Close()
        except BaseException as error:  # keep closing the others
            if first is None:
                first = error
    if first is not None:
        raise first


@contextmanager
def running_cluster(n: int, **config_kwargs: Any) -> Iterator[list[dht.DHT]]:
    """``start_cluster`` as a context manager: the nodes are closed on exit,
    including nodes the body appends to the list."""
    nodes = start_cluster(n, **config_kwargs)
    try:
        yield nodes
    finally:
        close_all(nodes)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed.
    Returns whether it became true (it is checked once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bool(predicate())
        time.sleep(min(interval, remaining))


def free_udp_address() -> str:
    """A ``127.0.0.1:port`` where nothing listens (bound, then released).

    The probe socket sets no reuse option, so the kernel picks a port that
    no socket has bound, not even one with SO_REUSEADDR/SO_REUSEPORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def stored_values(node: dht.DHT, key: bytes) -> set[bytes]:
    """The values ``node`` holds locally under ``key``."""
    return {value.value for value in node._engine.storage.Get(key)}


class RefusingStorage:
    """A ``dht.Storage`` that keeps nothing: a node using it never answers a
    Find from local storage, so its Finds always go through the network."""

    def __init__(self) -> None:
        self.refused = 0
        self._lock = threading.Lock()

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        return []

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        with self._lock:
            self.refused += 1
        return False

    def Iterate(self, fn: Callable[[Value], bool]) -> None:
        return None


# ---------------------------------------------------------------------------
# Callback recording


@dataclass(frozen=True)
class Call:
    """One callback invocation: ``value`` is None for Store callbacks."""

    value: bytes | None
    error: Exception | None


class Callbacks:
    """Records Store/Find callback invocations per call id, thread-safely.

    ``store(call_id)`` and ``find(call_id)`` return callbacks to pass to
    ``DHT.Store``/``DHT.Find``; ``wait_for(total, timeout)`` waits (bounded)
    until that many invocations were recorded in all.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls: dict[Hashable, list[Call]] = defaultdict(list)
        self._total = 0

    def _record(self, call_id: Hashable, call: Call) -> None:
        with self._cond:
            self._calls[call_id].append(call)
            self._total += 1
            self._cond.notify_all()

    def store(self, call_id: Hashable = None) -> Callable[[Exception | None], None]:
        def callback(error: Exception | None) -> None:
            self._record(call_id, Call(None, error))

        return callback

    def find(self, call_id: Hashable = None) -> Callable[[bytes | None, Exception | None], None]:
        def callback(value: bytes | None, error: Exception | None) -> None:
            self._record(call_id, Call(value, error))

        return callback

    @property
    def total(self) -> int:
        with self._cond:
            return self._total

    def calls(self, call_id: Hashable = None) -> list[Call]:
        with self._cond:
            return list(self._calls.get(call_id, ()))

    def ids(self) -> set[Hashable]:
        with self._cond:
            return set(self._calls)

    def values(self, call_id: Hashable = None) -> list[bytes]:
        return [call.value for call in self.calls(call_id) if call.value is not None]

    def errors(self, call_id: Hashable = None) -> list[Exception]:
        return [call.error for call in self.calls(call_id) if call.error is not None]

    def wait_for(self, total: int, timeout: float) -> bool:
        """Wait until at least ``total`` invocations were recorded in all."""
        with self._cond:
            return self._cond.wait_for(lambda: self._total >= total, timeout)

    def wait_for_call(self, call_id: Hashable, count: int, timeout: float) -> bool:
        """Wait until ``call_id`` has at least ``count`` invocations."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._calls.get(call_id, ())) >= count, timeout)


# ---------------------------------------------------------------------------
# Leak checks


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class ResourceSnapshot:
    """The threads and the number of open file descriptors at one moment."""

    threads: set[threading.Thread]
    fds: int

    @classmethod
    def take(cls) -> ResourceSnapshot:
        return cls(set(threading.enumerate()), open_fds())

    def new_threads(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]

    def assert_no_leaks(self, timeout: float = 5.0) -> None:
        """Assert (after waiting at most ``timeout`` for threads to exit) that
        no thread started since the snapshot is alive and no fd is left open."""
        wait_until(lambda: not self.new_threads() and open_fds() <= self.fds, timeout)
        leaked = self.new_threads()
        assert not leaked, f"threads still running: {[t.name for t in leaked]}"
        fds = open_fds()
        assert fds <= self.fds, f"{fds - self.fds} file descriptors leaked ({self.fds} -> {fds})"
