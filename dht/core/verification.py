"""Sender verification: an address is believed only once it answered.

A node that sends us a request is pinged back before it may enter the
routing table (its source address could be forged) and before it may make
us send more than the amplification allowance. A known node that answers
from a new address is moved there only once its old address fails a ping
(D15): anyone can list a node's id at their own address and answer as it.
The pings at once are capped, overall and per IP address, so a flood of
new ids costs a bounded amount of work.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from ..errors import ClosedError
from ..wire.events import Address, EventType
from .requests import PendingRequests
from .routing import RoutingTable
from .stats import Stats

MAX_VERIFYING = 256
"""Unsolicited senders being pinged at once (bounds work under a flood)."""
MAX_VERIFYING_PER_HOST = 16
"""Of those, at one IP address once half are taken: a flood of new ids from
one address took every slot, and honest newcomers were never verified (nor
joined). Below half, nodes sharing an address (a host, a loopback
cluster) are verified freely."""


class Verifier:
    """Pings senders to prove their addresses (any thread)."""

    def __init__(
        self,
        requests: PendingRequests,
        table: RoutingTable,
        stats: Stats,
        clock: Callable[[], float],
    ) -> None:
        self._requests = requests
        self._table = table
        self._stats = stats
        self._clock = clock
        self._lock = threading.Lock()  # guards the three records below
        self.verifying: set[bytes] = set()
        """Ids being pinged now."""
        self._verifying_hosts: Counter[str] = Counter()  # of verifying, per IP address
        self._moving: set[tuple[bytes, Address]] = set()  # contacts whose old address we ping

    def prove(self, node_id: bytes, address: Address) -> None:
        """Ping ``address`` expecting ``node_id``. An answer proves the address
        is real: it lifts the amplification cap, and offers the node to the
        routing table (how unsolicited senders get verified)."""
        host = address[0]
        with self._lock:
            busy = len(self.verifying)
            if (
                node_id in self.verifying
                or busy >= MAX_VERIFYING
                or (
                    busy >= MAX_VERIFYING // 2
                    and self._verifying_hosts[host] >= MAX_VERIFYING_PER_HOST
                )
            ):
                return
            self.verifying.add(node_id)
            self._verifying_hosts[host] += 1

        def done(*_: object) -> bool:
            with self._lock:
                self.verifying.discard(node_id)
                self._verifying_hosts[host] -= 1
                if not self._verifying_hosts[host]:
                    del self._verifying_hosts[host]
            return True

        try:
            self._requests.request(address, node_id, EventType.PING, None, done, done)
        except ClosedError:
            done()

    def confirm_move(self, node_id: bytes, new: Address) -> None:
        """``node_id`` answered from ``new``, not from where we know it: move
        it there once its old address fails a ping, not before (D15)."""
        old = self._table.address_of(node_id)
        if old is None or old == new:
            return
        with self._lock:
            if (node_id, new) in self._moving or len(self._moving) >= MAX_VERIFYING:
                return
            self._moving.add((node_id, new))

        def done(moved: bool) -> bool:
            with self._lock:
                self._moving.discard((node_id, new))
            if moved and self._table.move(node_id, old, new, self._clock()):
                self._stats.incr("contact-moved")
            return True

        try:
            self._requests.request(
                old,
                node_id,
                EventType.PING,
                None,
                lambda *_: done(False),
                lambda _: done(True),
            )
        except ClosedError:
            done(False)
