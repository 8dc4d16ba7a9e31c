"""An in-memory network of engines on virtual time, for the core's tests:
a thin layer over ``dht.sim`` (no sockets, no threads).

Every node has its own address (``dht.sim.addresses``; all on one, with
``SimNetwork(one_host=True)``, for tests of a loopback cluster) and
receives through the library's ``Receiver``, as a listener does. Delivery
takes ``latency`` seconds and each datagram may be lost with probability
``loss``. Timers and deliveries share one event queue, so a whole network
runs deterministically in one thread: ``run_until(predicate)`` advances
virtual time event by event.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dht.core.storage import MemoryStorage
from dht.sim.addresses import AddressPool
from dht.sim.clock import VirtualClock
from dht.sim.events import EventQueue
from dht.sim.latency import ConstantLatency
from dht.sim.network import Network
from dht.sim.node import SimNode, engine_options

__all__ = ["Outcome", "SimNetwork", "SimNode", "build_network"]


class SimNetwork(Network[SimNode]):
    """The event queue, the clock, the nodes (by address) and ``rng``, which
    draws node ids, event ids and losses, and which tests draw keys from."""

    def __init__(
        self,
        *,
        seed: int = 1,
        latency: float = 0.001,
        loss: float = 0.0,
        one_host: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        super().__init__(
            EventQueue(VirtualClock(1000.0)),
            latency=ConstantLatency(latency),
            loss=loss,
            rng=self.rng,
        )
        self.one_host = one_host
        self._addresses = AddressPool(random.Random(f"simnet-addresses-{seed}"))

    @property
    def latency(self) -> float:
        """Seconds every datagram takes."""
        model = self.latency_model
        assert isinstance(model, ConstantLatency)
        return model.seconds

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.latency_model = ConstantLatency(seconds)

    # timers, shared by every node (the engine only needs schedule/cancel)
    def schedule(self, delay: float, callback: Callable[[], None]) -> object:
        return self.queue.schedule(delay, callback)

    def cancel(self, handle: object) -> None:
        self.queue.cancel(handle)

    def new_id(self) -> bytes:
        return self.rng.randbytes(20)

    def add_node(self, node_id: bytes | None = None, **engine_kwargs: object) -> SimNode:
        """A node with a fresh address; ``engine_kwargs`` override the Engine's
        settings (``timeout`` is 1 s unless given)."""
        if self.one_host:
            address = ("127.0.0.1", 10000 + len(self.nodes))
        else:
            address = self._addresses.take()
        node = SimNode(
            self,
            node_id or self.new_id(),
            address,
            new_id=self.new_id,
            options=engine_options(**{"timeout": 1.0, **engine_kwargs}),
            storage=MemoryStorage(clock_ns=self.clock.wall_ns),
        )
        self.attach(node)
        return node

    def step(self) -> bool:
        return self.queue.step()

    def run_until(self, done: Callable[[], bool], *, limit: float = 600.0) -> bool:
        """Process events until ``done()`` or ``limit`` virtual seconds pass."""
        deadline = self.clock.now + limit
        queue = self.queue
        while not done():
            due = queue.next_due()
            if due is None or due > deadline:
                return done()
            queue.step()
        return True


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
