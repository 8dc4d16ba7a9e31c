"""The way out of the core: events to datagrams to a transport.

The shell's transport writes to a socket, the simulator's to its in-memory
network. ``Sender`` encodes and frames an event (PROTOCOL.md 3) and hands
its datagrams over; ``close`` lets go of the transport, which is a method of
the object holding the node, so a closed node is freed by reference
counting rather than left in a cycle for the garbage collector.
"""

from __future__ import annotations

from collections.abc import Callable

from ..wire.codec import encode
from ..wire.events import Address, Event
from ..wire.framing import fragment

Transport = Callable[[list[bytes], Address], None]
"""Sends datagrams to an address; raises OSError on failure."""


class Sender:
    """Sends a node's events through ``transport`` (any thread)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def send(self, event: Event, address: Address) -> None:
        """Encode, frame and send ``event``. Raises ``OSError`` when the
        transport refuses, a ``DHTError`` when the event cannot be framed."""
        self.transport(fragment(event.id, encode(event)), address)

    def close(self) -> None:
        self.transport = _send_nothing


def _send_nothing(datagrams: list[bytes], address: Address) -> None:
    raise OSError("the node is closed")
