"""The in-memory network: datagrams between simulated nodes, with latency
and loss, on virtual time. No sockets.

``transmit`` is what a node's engine sends through (its ``transport``): each
datagram is lost with probability ``loss``, else delivered to the node at
the destination address after the pair's one-way delay (``latency``),
to that node (``node.SimNode`` hands it to its ``Receiver``). A datagram to an address where
no node is attached, or whose node has left by the time it arrives, is
dropped as a real network would drop it.
"""

from __future__ import annotations

import random
from typing import Generic, Protocol, TypeVar

from ..wire.events import Address
from .events import EventQueue
from .latency import Latency, address_number


class Host(Protocol):
    """What the network needs of a node (``node.SimNode``)."""

    @property
    def address(self) -> Address: ...

    def datagram(self, data: bytes, source: Address) -> None:
        """A datagram from ``source`` arrives."""
        ...


H = TypeVar("H", bound=Host)


class Network(Generic[H]):
    """Addresses to nodes, and the datagrams in flight between them."""

    def __init__(
        self,
        queue: EventQueue,
        *,
        latency: Latency,
        loss: float = 0.0,
        rng: random.Random,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        self.queue = queue
        self.clock = queue.clock
        self.latency_model = latency
        self.loss = loss
        """Probability that a datagram is lost, each independently."""
        self.rng = rng
        """Draws the losses."""
        self.nodes: dict[Address, H] = {}
        self._numbers: dict[Address, int] = {}
        self.sent = 0
        """Datagrams sent, lost ones included."""
        self.bytes_sent = 0
        """Bytes of those datagrams (the 24-byte framing header included)."""
        self.dropped = 0
        """Datagrams lost (``loss``)."""
        self.undeliverable = 0
        """Datagrams not lost but sent where no node is attached."""

    def attach(self, node: H) -> None:
        """Make ``node`` reachable at its address."""
        self.nodes[node.address] = node

    def detach(self, address: Address) -> None:
        """Nothing is reachable at ``address`` any more."""
        self.nodes.pop(address, None)

    def number(self, address: Address) -> int:
        """``latency.address_number(address)``, remembered."""
        number = self._numbers.get(address)
        if number is None:
            number = self._numbers[address] = address_number(address)
        return number

    def transmit(self, source: Address, datagrams: list[bytes], destination: Address) -> None:
        """Send ``datagrams`` from ``source`` to ``destination``."""
        target = self.nodes.get(destination)
        due = 0.0
        if target is not None:
            numbers = self._numbers
            a = numbers.get(source)
            b = numbers.get(destination)
            due = self.clock.now + self.latency_model.one_way(
                self.number(source) if a is None else a,
                self.number(destination) if b is None else b,
            )
        loss = self.loss
        for datagram in datagrams:
            self.sent += 1
            self.bytes_sent += len(datagram)
            if loss and self.rng.random() < loss:
                self.dropped += 1
            elif target is None:
                self.undeliverable += 1
            else:
                self.queue.post(due, target.datagram, datagram, source)
