"""``Limits``: the budgets an engine enforces, in the core's units.

The shell builds one from ``dht.Config``, whose fields document each
default and the reason for it; the defaults here are the same, so that an
engine built directly (tests, simulations) behaves as a node with the
default ``Config``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire.events import NS_PER_SECOND

DAY_NS = 24 * 3600 * NS_PER_SECOND


@dataclass(frozen=True, slots=True)
class Limits:
    """What one node keeps, answers and collects at most."""

    max_store_bytes: int = 256 * 1024 * 1024
    """Bytes of values kept, counted with their bookkeeping (``shares.holding_cost``)."""
    max_values_per_key: int = 64
    """Values kept under one key."""
    max_ttl_ns: int = 30 * DAY_NS
    """Longest a value may live here from when it arrives, in nanoseconds."""
    max_answer_bytes: int = 256 * 1024
    """Bytes of values one FIND_VALUE answer carries at most."""
    answer_rate: float = 4 * 1024 * 1024
    """Bytes per second of FIND_VALUE answers to one source (an IP address,
    or an address of a local network when ``trust_local_networks``), after
    a burst of twice as much."""
    unproven_answer_rate: float = 256 * 1024
    """Bytes per second answered to all addresses that never answered us."""
    max_find_values: int = 256
    """Values one Find collects at most."""
    max_find_bytes: int = 4 * 1024 * 1024
    """Bytes of values one Find collects at most."""
    transfer_rate: float = 1024 * 1024
    """Bytes of values per second key transfer sends, to all nodes together
    (a quarter of it to one IP address)."""
    trust_local_networks: bool = True
    """Whether loopback, private and link-local addresses are spared the
    per-IP and per-network limits (``networks``)."""
