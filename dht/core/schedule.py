"""``Schedule``: how often a node does each part of its maintenance.

The shell builds one from ``dht.Config``, whose fields document each
default and the reason for it; the defaults here are the same, so that an
engine built directly (tests, simulations) behaves as a node with the
default ``Config``. Times are seconds on the engine's clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Schedule:
    """One node's periodic work and its budgets (``dht.Config`` says why)."""

    maintenance_interval: float = 60.0
    """Seconds between two maintenance rounds (``maintenance``)."""
    liveness_interval: float = 300.0
    """Seconds a contact may go unheard before a round pings it."""
    refresh_interval: float = 3600.0
    """Seconds after which a bucket no lookup passed through is refreshed."""
    refresh_lookups: int = 2
    """Bucket-refresh lookups running at once, at most."""
    republish_interval: float = 3600.0
    """Seconds between two republications of a value stored through ``Store``."""
    replicate_interval: float = 3600.0
    """Seconds between two replication rounds."""
    replicate_rate: float = 64 * 1024
    """Bytes of values per second replication sends (a quarter to one IP)."""
    latency_aware_routing: bool = True
    """Whether lookups ask the faster of equally close candidates first."""
