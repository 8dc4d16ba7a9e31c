"""Latency models: the one-way delay of a datagram between two addresses.

A model gives each pair of addresses a fixed round trip, the same in both
directions, derived from the pair and a seed by a hash: nothing is stored
per pair (10,000 nodes make 5 * 10^7 pairs), yet a pair's delay is the
same in every run with that seed. A datagram takes half its pair's round
trip, so datagrams between two nodes arrive in the order they were sent.

Addresses enter as integers (``address_number``): the IPv4 address shifted
left 16 bits, plus the port.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Protocol

from ..wire.events import Address

_M64 = (1 << 64) - 1
QUANTILES = 1 << 14
"""Steps of the tabulated distribution a pair's hash picks from."""


def address_number(address: Address) -> int:
    """``address`` as an integer: the IPv4 address << 16 | port."""
    host, port = address
    a, b, c, d = (int(part) for part in host.split("."))
    return (((a << 24) | (b << 16) | (c << 8) | d) << 16) | port


def pair_hash(a: int, b: int, seed: int) -> int:
    """A 64-bit hash of the unordered pair ``a``, ``b`` and ``seed``
    (SplitMix64's finaliser over a mix of the three; pure integer
    arithmetic, the same in every process)."""
    if a > b:
        a, b = b, a
    x = (a * 0x9E3779B97F4A7C15 + b * 0xC2B2AE3D27D4EB4F + seed * 0x165667B19E3779F9) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class Latency(Protocol):
    """One-way delays between addresses, in seconds."""

    def one_way(self, a: int, b: int) -> float:
        """Seconds a datagram takes between the addresses numbered ``a`` and
        ``b`` (either way)."""
        ...

    @property
    def median_rtt(self) -> float:
        """The median round trip of a pair, in seconds, by the model."""
        ...

    def describe(self) -> str:
        """One line for a report."""
        ...


class ConstantLatency:
    """Every datagram takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"latency must not be negative, got {seconds}")
        self.seconds = seconds

    def one_way(self, a: int, b: int) -> float:
        return self.seconds

    @property
    def median_rtt(self) -> float:
        return 2 * self.seconds

    def describe(self) -> str:
        return f"constant, {self.seconds * 1e3:g} ms one way"


class LogNormalLatency:
    """Pair round trips drawn from a log-normal distribution with median
    ``median_rtt`` seconds and log-standard-deviation ``sigma``.

    The defaults, an 80 ms median and sigma 0.84, put the middle 90 % of
    pairs between 20 ms and 320 ms of round trip (a 20-300 ms body, as
    between hosts on one continent and across an ocean); a datagram takes
    half of it. The distribution is tabulated at ``QUANTILES`` evenly spaced
    quantiles, so a pair's delay is one hash and one list index.
    """

    def __init__(self, median_rtt: float = 0.080, sigma: float = 0.84, *, seed: int = 0) -> None:
        if median_rtt <= 0 or sigma < 0:
            raise ValueError("the median must be positive and sigma not negative")
        self._median_rtt = median_rtt
        self.sigma = sigma
        self.seed = seed
        self._mixed_seed = seed * 0x165667B19E3779F9
        normal = NormalDist()
        half = median_rtt / 2
        self._table = [
            half * math.exp(sigma * normal.inv_cdf((i + 0.5) / QUANTILES)) for i in range(QUANTILES)
        ]

    def one_way(self, a: int, b: int) -> float:
        # pair_hash, inlined: it runs for every datagram sent.
        if a > b:
            a, b = b, a
        x = (a * 0x9E3779B97F4A7C15 + b * 0xC2B2AE3D27D4EB4F + self._mixed_seed) & _M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
        return self._table[(x ^ (x >> 31)) >> 50]

    @property
    def median_rtt(self) -> float:
        return self._median_rtt

    def rtt_quantile(self, q: float) -> float:
        """The round trip at quantile ``q`` of the model (0 < q < 1), seconds."""
        return self._median_rtt * math.exp(self.sigma * NormalDist().inv_cdf(q))

    def describe(self) -> str:
        return (
            f"log-normal pair round trips, median {self._median_rtt * 1e3:.0f} ms, "
            f"sigma {self.sigma:g} (5-95 %: {self.rtt_quantile(0.05) * 1e3:.0f}"
            f"-{self.rtt_quantile(0.95) * 1e3:.0f} ms); one way is half"
        )


class SlowNodes:
    """``base``'s round trips, with a share of the nodes slow: a pair with a
    slow node at either end (or both) takes ``factor`` times its round trip
    (``10 % at 10x``: a tenth of the nodes behind a congested or distant
    link; two slow ends are not compounded, which would put their pairs
    past any timeout).

    Whether an address is slow is a hash of its number and ``seed``, below
    ``fraction``: the same in every run with that seed, nothing drawn from
    any of the run's random streams, so adding slow nodes changes no node's
    id, address or session.
    """

    def __init__(self, base: Latency, fraction: float, factor: float, *, seed: int = 0) -> None:
        if not 0.0 <= fraction < 1.0 or factor < 1.0:
            raise ValueError("the fraction must be in [0, 1) and the factor at least 1")
        self.base = base
        self.fraction = fraction
        self.factor = factor
        self.seed = seed
        self._threshold = int(fraction * 2**64)
        self._slow: dict[int, bool] = {}

    def slow(self, number: int) -> bool:
        """Whether the node at the address numbered ``number`` is slow."""
        slow = self._slow.get(number)
        if slow is None:
            # The pair hash of the address with itself, under another seed.
            slow = self._slow[number] = (
                pair_hash(number, number, self.seed ^ 0x510E) < self._threshold
            )
        return slow

    def one_way(self, a: int, b: int) -> float:
        delay = self.base.one_way(a, b)
        if self.slow(a) or self.slow(b):
            return delay * self.factor
        return delay

    @property
    def median_rtt(self) -> float:
        return self.base.median_rtt

    def describe(self) -> str:
        return (
            f"{self.base.describe()}; {100 * self.fraction:g}% of the nodes slow: "
            f"a pair with one (or two) takes {self.factor:g}x its round trip"
        )
