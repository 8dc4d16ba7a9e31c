"""Virtual time: the one clock every simulated node reads.

Nothing in the simulator reads the machine's clock. ``VirtualClock.now`` is
seconds since the simulation began (or since ``start``); it moves only when
the event queue (``events``) takes the next event due.
"""

from __future__ import annotations

EPOCH_S = 1_700_000_000
"""Unix time, in seconds, that virtual time 0 stands for (values' creation
and expiry times are read against wall-clock nanoseconds)."""


class VirtualClock:
    """Seconds of virtual time: call it for ``now`` (an engine's ``clock``);
    ``wall_ns`` is the matching wall-clock time in nanoseconds since the
    Unix epoch (an engine's and a storage's ``wall_clock_ns``)."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        """Seconds of virtual time; only the event queue moves it forward."""

    def __call__(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        """Nanoseconds since the Unix epoch at virtual time ``now``."""
        return int((EPOCH_S + self.now) * 1e9)
