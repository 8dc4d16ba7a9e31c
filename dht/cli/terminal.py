"""What the commands print while they run: a node's summary line, and a
progress bar (redrawn in place on a terminal, plain lines otherwise)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..node import DHT


class Summary:
    """One line about a node: contacts, values held, events received per
    second and datagrams dropped, the rates since the last line."""

    def __init__(self, node: DHT, values: Callable[[], int]) -> None:
        self._node = node
        self._values = values
        self._time = time.monotonic()
        self._events = 0
        self._drops = 0

    def line(self) -> str:
        stats = self._node.stats()
        now = time.monotonic()
        events = stats.get("events-received", 0)
        drops = sum(count for name, count in stats.items() if name.startswith("drop-"))
        rate = (events - self._events) / max(now - self._time, 1e-9)
        new_drops = drops - self._drops
        self._time, self._events, self._drops = now, events, drops
        return (
            f"contacts {stats.get('routing-table-size', 0)}, values {self._values()}, "
            f"events in {rate:.1f}/s, drops {drops} (+{new_drops})"
        )


class Progress:
    """``label [#####-----] done/total`` redrawn in place on a terminal; on
    anything else a plain line at each quarter, so logs stay readable."""

    WIDTH = 30
    REDRAW = 0.1  # seconds between two redraws on a terminal

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        self.terminal = self.stream.isatty()
        self._drawn = -1.0
        self._quarter = 0

    def update(self, done: int) -> None:
        if self.terminal:
            now = time.monotonic()
            if done >= self.total or now - self._drawn >= self.REDRAW:
                self._drawn = now
                filled = self.WIDTH * done // max(self.total, 1)
                bar = "#" * filled + "-" * (self.WIDTH - filled)
                self.stream.write(f"\r{self.label:<8} [{bar}] {done}/{self.total}")
                if done >= self.total:
                    self.stream.write("\n")
                self.stream.flush()
            return
        quarter = 4 * done // max(self.total, 1)
        if quarter > self._quarter:
            self._quarter = quarter
            print(f"{self.label}: {done}/{self.total}", file=self.stream, flush=True)

    def abandon(self) -> None:
        """End a bar left unfinished (an interruption) with its line."""
        if self.terminal and self._drawn >= 0:
            self.stream.write("\n")
            self.stream.flush()
