"""A living network on real sockets: recovery from a crash of a quarter of
the nodes, and a value outliving every node that first held it.

Latency itself is measured in ``bench/recovery.py`` (timing targets live in
``bench/``); here the cause of slowness after a crash is asserted: requests
to the dead, which a lookup waits for. Each dead node's address gets a plain
UDP socket once the node is gone, counting what still arrives there.
"""

from __future__ import annotations

import random
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cluster import add_node, close_all, start_cluster, stored_values, wait_until

import dht
from dht.config import parse_address

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


class Sinks:
    """UDP sockets on the addresses of closed nodes, noting when each
    datagram arrived (seconds on the monotonic clock)."""

    def __init__(self, addresses: list[str]) -> None:
        self.arrivals: list[float] = []
        self._selector = selectors.DefaultSelector()
        self._sockets = []
        for address in addresses:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(parse_address(address, "address"))
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
            self._sockets.append(sock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        sock.recv(65536)
                    except BlockingIOError:
                        break
                    self.arrivals.append(time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        self._selector.close()


@contextmanager
def sinks_on(addresses: list[str]) -> Iterator[Sinks]:
    sinks = Sinks(addresses)
    try:
        yield sinks
    finally:
        sinks.close()


def operate(origins: list[dht.DHT], seconds: float, rng: random.Random) -> list[float]:
    """Each origin stores a fresh value and another finds it, over and over,
    for ``seconds``, all origins at once; every operation must succeed.
    Returns when each one started (monotonic seconds)."""
    started: list[float] = []
    errors: list[BaseException] = []
    seeds = [rng.random() for _ in origins]

    def work(origin: dht.DHT, seed: float) -> None:
        mine = random.Random(seed)
        end = time.monotonic() + seconds
        while time.monotonic() < end and not errors:
            key, value = mine.randbytes(20), mine.randbytes(16)
            started.append(time.monotonic())
            try:
                origin.Store(key, value, 600).result(timeout=30)
                found = mine.choice(origins).Find(key).result(timeout=30)
                assert found == [value], found
            except BaseException as error:
                errors.append(error)

    threads = [
        threading.Thread(target=work, args=pair) for pair in zip(origins, seeds, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    assert not errors, errors[:3]
    return started


def test_fifteen_of_sixty_nodes_crash_and_after_ten_seconds_no_lookup_waits_on_them() -> None:
    rng = random.Random(17)
    # No maintenance round in the test's minute: only operations send.
    nodes = start_cluster(60, timeout=2.0, maintenance_interval=3600.0)
    victims = rng.sample(nodes[5:], 15)
    origins = nodes[1:5]
    try:
        assert len(operate(origins, 2.0, rng)) > 20
        addresses = [victim.address for victim in victims]
        close_all(victims)  # abruptly, as far as the others know
        crash = time.monotonic()
        with sinks_on(addresses) as sinks:
            started = operate(origins, 13.0, rng)
        late = [when for when in started if when - crash >= 10.0]
        assert late, "no operation started after the first ten seconds"
        early = [when for when in sinks.arrivals if when - crash < 5.0]
        assert early, "nothing was sent to the dead: the test tells nothing"
        after = [round(when - crash, 2) for when in sinks.arrivals if when - crash >= 10.0]
        assert after == [], f"{len(after)} datagrams to the dead after 10 s: {after[:10]}"
    finally:
        close_all([node for node in nodes if node not in victims])


def test_replication_keeps_a_value_findable_while_its_holders_leave_one_by_one() -> None:
    ttl = 30.0
    schedule = {
        "maintenance_interval": 0.25,
        "replicate_interval": 1.0,
        "republish_interval": 3600.0,  # the publisher leaves first anyway
        "timeout": 1.0,
    }
    nodes = start_cluster(6, **schedule)
    try:
        key, value = dht.Key("outlives its holders"), b"kept"
        publisher = nodes[1]
        publisher.Store(key, value, ttl).result(timeout=10)
        expires = time.monotonic() + ttl
        # A network smaller than K: all hold it (Store returns at a majority).
        assert wait_until(lambda: all(value in stored_values(n, key) for n in nodes), 5.0)
        first_holders = list(nodes)
        replicated = 0  # values a node re-sent as a holder, counted as it leaves

        def leave(node: dht.DHT) -> None:
            nonlocal replicated
            replicated += node.stats().get("values-replicated", 0)
            close_all([node])
            nodes.remove(node)

        def replicated_now() -> int:
            return replicated + sum(n.stats().get("values-replicated", 0) for n in nodes)

        leave(publisher)
        # Newcomers join and the old holders leave, one at a time, until no
        # node that held the value at first is left.
        for leaving in [n for n in first_holders if n is not publisher]:
            newcomer = add_node(nodes[-1], **schedule)
            nodes.append(newcomer)
            assert wait_until(lambda n=newcomer: value in stored_values(n, key), 10.0)
            before = replicated_now()
            assert wait_until(lambda before=before: replicated_now() > before, 10.0)
            leave(leaving)
            assert nodes[-1].Find(key).result(timeout=10) == [value]
        assert not set(nodes) & set(first_holders)
        # Found until its ttl, by nobody after it (no copy extended it).
        assert time.monotonic() < expires - 2.0, "too slow to show the value alive"
        assert nodes[0].Find(key).result(timeout=10) == [value]
        assert wait_until(lambda: time.monotonic() > expires + 0.5, ttl + 5.0)
        with pytest.raises(dht.NotFoundError):
            nodes[0].Find(key).result(timeout=10)
        assert all(value not in stored_values(node, key) for node in nodes)
    finally:
        close_all(nodes)
