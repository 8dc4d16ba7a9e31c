"""Token buckets per source (time passed in, seconds).

``TokenBuckets`` keeps one bucket per key (a source address, an IP, ...):
``burst`` tokens at once, ``rate`` per second after that. A cost may be
charged after the fact and leave a bucket in debt, so that work whose size
is known only once done (the bytes of an answer) is paid for by the
requests after it. At most ``max_keys`` buckets are kept; the least
recently used is forgotten first (a forgotten key starts with a full
bucket again, which errs on the side of answering). Not thread-safe.

``RateLimiter`` is the per-source request limit of a listener: one token a
request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from ..wire.events import Address


class TokenBuckets:
    """A token bucket per key."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 16384) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()  # [tokens, last]

    def _bucket(self, key: Hashable, now: float) -> list[float]:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            bucket[0] = tokens if tokens < self.burst else self.burst
            bucket[1] = now
        return bucket

    def available(self, key: Hashable, now: float) -> float:
        """Tokens ``key`` has now (negative while in debt)."""
        return self._bucket(key, now)[0]

    def account(self, key: Hashable, now: float) -> list[float]:
        """``key``'s bucket, refilled to ``now``: ``[tokens, when]``. Reading
        and charging it (``account[0] -= cost``) costs one lookup where
        ``available`` then ``charge`` cost two."""
        return self._bucket(key, now)

    def take(self, key: Hashable, cost: float, now: float) -> bool:
        """Take ``cost`` tokens if ``key`` has them; False (nothing taken) if not."""
        bucket = self._bucket(key, now)
        if bucket[0] >= cost:
            bucket[0] -= cost
            return True
        return False

    def charge(self, key: Hashable, cost: float, now: float) -> None:
        """Take ``cost`` tokens, into debt if need be."""
        self._bucket(key, now)[0] -= cost

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimiter:
    """Requests per source address. Not thread-safe: each listener owns one
    (the kernel steers a source address to one SO_REUSEPORT socket)."""

    def __init__(self, rate: float, burst: float, *, max_sources: int = 16384) -> None:
        self._buckets = TokenBuckets(rate, burst, max_keys=max_sources)
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources

    def allow(self, source: Address, now: float) -> bool:
        """Take one token for ``source``; False if it has none left."""
        return self._buckets.take(source, 1.0, now)

    def __len__(self) -> int:
        return len(self._buckets)
