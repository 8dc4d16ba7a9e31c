"""An in-memory network of engines on virtual time (no sockets, no threads).

Every datagram goes through the real codec and framing; delivery takes
``latency`` seconds and may be dropped with probability ``loss``. Timers and
deliveries share one event queue, so a whole network runs deterministically in
one thread: ``run_until(predicate)`` advances virtual time event by event.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

from dht.core.engine import Engine
from dht.core.storage import MemoryStorage
from dht.errors import ProtocolError
from dht.wire.codec import decode
from dht.wire.events import Address
from dht.wire.framing import Reassembler, wire_size


class SimClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return int((1_700_000_000 + self.now) * 1e9)


class _Handle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class SimNetwork:
    """Holds the event queue, the clock and the nodes."""

    def __init__(self, *, seed: int = 1, latency: float = 0.001, loss: float = 0.0) -> None:
        self.clock = SimClock()
        self.rng = random.Random(seed)
        self.latency = latency
        self.loss = loss
        self.nodes: dict[Address, SimNode] = {}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.sent = 0
        self.dropped = 0

    # timers, shared by every node (the engine only needs schedule/cancel)
    def schedule(self, delay: float, callback: Callable[[], None]) -> object:
        handle = _Handle()

        def fire() -> None:
            if not handle.cancelled:
                callback()

        heapq.heappush(self._queue, (self.clock.now + delay, next(self._seq), fire))
        return handle

    def cancel(self, handle: object) -> None:
        if isinstance(handle, _Handle):
            handle.cancelled = True

    def new_id(self) -> bytes:
        return self.rng.randbytes(20)

    def add_node(self, node_id: bytes | None = None, **engine_kwargs: object) -> SimNode:
        address = ("127.0.0.1", 10000 + len(self.nodes))
        node = SimNode(self, node_id or self.new_id(), address, **engine_kwargs)
        self.nodes[address] = node
        return node

    def transmit(self, source: Address, datagrams: list[bytes], destination: Address) -> None:
        for datagram in datagrams:
            self.sent += 1
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            target = self.nodes.get(destination)
            if target is None:
                continue

            def deliver(target: SimNode = target, datagram: bytes = datagram) -> None:
                target.datagram(datagram, source)

            heapq.heappush(self._queue, (self.clock.now + self.latency, next(self._seq), deliver))

    def step(self) -> bool:
        if not self._queue:
            return False
        when, _, action = heapq.heappop(self._queue)
        self.clock.now = max(self.clock.now, when)
        action()
        return True

    def run_until(self, done: Callable[[], bool], *, limit: float = 600.0) -> bool:
        """Process events until ``done()`` or ``limit`` virtual seconds pass."""
        deadline = self.clock.now + limit
        while not done():
            if not self._queue or self._queue[0][0] > deadline:
                return done()
            self.step()
        return True


class SimNode:
    def __init__(
        self, net: SimNetwork, node_id: bytes, address: Address, **engine_kwargs: object
    ) -> None:
        self.net = net
        self.address = address
        self.online = True
        self.reassembler = Reassembler()
        self.dropped: dict[str, int] = {}
        self.storage = MemoryStorage(clock_ns=net.clock.wall_ns)
        self.engine = Engine(
            node_id,
            storage=self.storage,
            transport=self._send,
            timers=net,
            clock=net.clock,
            wall_clock_ns=net.clock.wall_ns,
            new_id=net.new_id,
            **{"timeout": 1.0, **engine_kwargs},  # type: ignore[arg-type]
        )
        self.engine.start()

    @property
    def id(self) -> bytes:
        return self.engine.local_id

    def _send(self, datagrams: list[bytes], destination: Address) -> None:
        if self.online:
            self.net.transmit(self.address, datagrams, destination)

    def datagram(self, datagram: bytes, source: Address) -> None:
        if not self.online:
            return
        try:
            data = self.reassembler.feed(datagram, source, self.net.clock.now)
            if data is None:
                return
            event = decode(data)
        except ProtocolError as error:
            self.dropped[error.reason] = self.dropped.get(error.reason, 0) + 1
            return
        self.engine.receive(event, source, wire_size(len(data)))

    def crash(self) -> None:
        """Leave abruptly: stop sending and receiving, say nothing."""
        self.online = False
        self.engine.close()


class Outcome:
    """Collects what a Store or Find reported, to check it ended exactly once."""

    def __init__(self) -> None:
        self.ends: list[Exception | None] = []
        self.values: list[bytes] = []
        self.final_values: list[bytes] | None = None
        self.after_end: list[bytes] = []
        """Values delivered after the end (a defect)."""

    def value(self, data: bytes) -> None:
        (self.after_end if self.ends else self.values).append(data)

    def store_done(self, error: Exception | None) -> None:
        self.ends.append(error)

    def find_done(self, error: Exception | None, values: list[bytes]) -> None:
        self.ends.append(error)
        self.final_values = values

    @property
    def ended(self) -> bool:
        return bool(self.ends)


def build_network(
    count: int, *, seed: int = 1, loss: float = 0.0, **engine_kwargs: object
) -> SimNetwork:
    """``count`` nodes, each bootstrapping through node 0 once the previous joined."""
    net = SimNetwork(seed=seed, loss=loss)
    first = net.add_node(**engine_kwargs)
    for _ in range(count - 1):
        node = net.add_node(**engine_kwargs)
        joined = Outcome()
        node.engine.bootstrap([first.address], joined.store_done)
        assert net.run_until(lambda joined=joined: joined.ended), "bootstrap never ended"
        assert joined.ends == [None], joined.ends
    return net
