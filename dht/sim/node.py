"""A simulated node: the library's own core, fed through its one door.

Each node is an ``Engine`` with a ``MemoryStorage``, wired as ``dht.node``
wires a real one, except for what the simulator supplies: the transport is
the in-memory ``Network``, the timers are the ``EventQueue``, the clocks are
virtual. Every datagram it receives goes through a ``Receiver`` (reassembly,
decoding, the per-source rate limit, drop counts), as a listener thread's
do. Settings come from ``dht.Config``'s defaults unless overridden.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..core.engine import Engine
from ..core.storage import MemoryStorage
from ..node import default_storage, receiver_for
from ..node import engine_options as node_engine_options
from ..wire.events import Address, Event

if TYPE_CHECKING:
    from .network import Network

DEFAULT_CONFIG = Config()


class Observer:
    """Sees every event a node's ``Receiver`` decodes, and hands it to the
    engine (``deliver`` must call ``node.engine.receive``). The base class
    only hands it on; ``trace.Tracer`` counts and follows lookups."""

    def deliver(self, node: SimNode, event: Event, source: Address, size: int) -> None:
        node.engine.receive(event, source, size)


def engine_options(config: Config = DEFAULT_CONFIG, **overrides: Any) -> dict[str, Any]:
    """The ``Engine`` settings a real node takes from ``config``
    (``dht.node.engine_options``), then ``overrides``."""
    return {**node_engine_options(config), **overrides}


class SimNode:
    """One node on the simulated ``network`` at ``address``."""

    def __init__(
        self,
        network: Network[SimNode],
        node_id: bytes,
        address: Address,
        *,
        new_id: Callable[[], bytes],
        options: Mapping[str, Any],
        config: Config = DEFAULT_CONFIG,
        storage: MemoryStorage | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.network = network
        self.address = address
        self.observer = observer
        """Sees every decoded event before the engine does (None: nobody)."""
        self.online = True
        """False once it left (``crash``), or while a test silences it: it
        then neither sends nor receives."""
        clock = self._clock = network.clock
        if storage is None:
            storage = default_storage(config, clock.wall_ns)
        self.storage = storage
        self.engine = Engine(
            node_id,
            storage=storage,
            transport=self._send,
            timers=network.queue,
            clock=clock,
            wall_clock_ns=clock.wall_ns,
            new_id=new_id,
            **options,
        )
        self.receiver = receiver_for(config, self._deliver, self.engine)
        self.engine.start()

    @property
    def id(self) -> bytes:
        return self.engine.local_id

    def _send(self, datagrams: list[bytes], destination: Address) -> None:
        if self.online:
            self.network.transmit(self.address, datagrams, destination)

    def datagram(self, data: bytes, source: Address) -> None:
        """A datagram arrives from ``source`` (the network calls this)."""
        if self.online:
            self.receiver.receive_datagram(data, source, self._clock.now)

    def _deliver(self, event: Event, source: Address, size: int) -> None:
        # Looked up at each call: tests replace engine.receive on the instance.
        observer = self.observer
        if observer is None:
            self.engine.receive(event, source, size)
        else:
            observer.deliver(self, event, source, size)

    def crash(self) -> None:
        """Leave abruptly: stop sending and receiving, say nothing; every
        operation and request still pending ends with ``ClosedError``."""
        self.online = False
        self.engine.close()

    def __repr__(self) -> str:
        state = "online" if self.online else "offline"
        return f"<SimNode {self.id.hex()[:8]} at {self.address[0]}:{self.address[1]} ({state})>"
