"""Addresses for simulated nodes: one IP address each, in 127.0.0.0/8.

Only loopback addresses are ever used (nothing is sent: they are names).
Drawn at random over 127.1.0.1 to 127.254.255.254, nodes spread over
about 65,000 /24 networks, as internet hosts do, so the per-/24 diversity
limits act on them as on the internet (when ``trust_local_networks`` is
off). 127.0.x.x is left out: tests forge sources there.
"""

from __future__ import annotations

import random

from ..wire.events import Address

PORT = 4000
"""Every simulated node listens on this port of its own address."""


class AddressPool:
    """Hands out distinct addresses, never the same one twice (a node that
    left and one that joined later are different hosts)."""

    def __init__(self, rng: random.Random, *, port: int = PORT) -> None:
        self._rng = rng
        self.port = port
        self._used: set[int] = set()

    def take(self) -> Address:
        """A new address ``("127.a.b.c", port)``, drawn at random."""
        rng = self._rng
        while True:
            a, b, c = rng.randint(1, 254), rng.randint(0, 255), rng.randint(1, 254)
            number = (a << 16) | (b << 8) | c
            if number not in self._used:
                self._used.add(number)
                return (f"127.{a}.{b}.{c}", self.port)

    def __len__(self) -> int:
        return len(self._used)
