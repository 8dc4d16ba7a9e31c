"""Per-source token buckets for incoming requests (time passed in, seconds).

Each source address may send ``burst`` requests at once and ``rate`` per
second after that. At most ``max_sources`` buckets are kept; the least
recently used is forgotten first (a forgotten source starts with a full
bucket again, which errs on the side of answering).
"""

from __future__ import annotations

from collections import OrderedDict

from ..wire.events import Address


class RateLimiter:
    """Not thread-safe: each listener owns one (the kernel steers a source
    address to one SO_REUSEPORT socket)."""

    def __init__(self, rate: float, burst: float, *, max_sources: int = 16384) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be positive, burst and max_sources at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[Address, list[float]] = OrderedDict()  # [tokens, last]

    def allow(self, source: Address, now: float) -> bool:
        """Take one token for ``source``; False if it has none left."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            bucket = self._buckets[source] = [self.burst, now]
        else:
            self._buckets.move_to_end(source)
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            bucket[0] = tokens if tokens < self.burst else self.burst
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False

    def __len__(self) -> int:
        return len(self._buckets)
