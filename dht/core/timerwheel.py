"""A hashed timer wheel: O(1) schedule and cancel, fired in tick order.

Pure state, time passed in (seconds on a monotonic clock). A timer due at
``deadline`` fires at the first tick boundary at or after it, so never early
and at most one ``tick`` late. ``next_wakeup`` lets the driving thread sleep
until the next non-empty slot instead of ticking while idle.
Not thread-safe: the timer thread (``dht.timer``) wraps it in a lock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol


def _spent() -> None:
    """The callback of a timer that fired or was cancelled."""


class Timer:
    """A scheduled callback; pass it to ``TimerWheel.cancel``.

    A timer lets go of its callback once it fires or is cancelled: callbacks
    usually close over the object that holds the timer, and that cycle would
    otherwise outlive the timer until the garbage collector finds it."""

    __slots__ = ("callback", "due_tick", "pending")

    def __init__(self, due_tick: int, callback: Callable[[], None]) -> None:
        self.due_tick = due_tick
        self.callback = callback
        # Not a reference to its slot: that would make a cycle of every
        # timer a closed node leaves scheduled.
        self.pending = True


class TimerWheel:
    """``slots`` buckets of ``tick`` seconds each; longer timers go round again."""

    def __init__(self, now: float, *, tick: float = 0.01, slots: int = 512) -> None:
        if tick <= 0 or slots < 1:
            raise ValueError("tick must be positive and slots at least 1")
        self.tick = tick
        # A slot's dict is made on first use: an idle node pays for none.
        self._slots: list[dict[Timer, None] | None] = [None] * slots
        self._current = math.floor(now / tick)  # last tick processed
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def schedule(self, deadline: float, callback: Callable[[], None]) -> Timer:
        due = math.ceil(deadline / self.tick)
        if due * self.tick < deadline:  # float rounding must never make it early
            due += 1
        due = max(due, self._current + 1)
        timer = Timer(due, callback)
        index = due % len(self._slots)
        slot = self._slots[index]
        if slot is None:
            slot = self._slots[index] = {}
        slot[timer] = None
        self._count += 1
        return timer

    def cancel(self, timer: Timer) -> bool:
        """Remove a pending timer. False if it already fired or was cancelled."""
        if not timer.pending:
            return False
        slot = self._slots[timer.due_tick % len(self._slots)]
        assert slot is not None
        del slot[timer]
        timer.pending = False
        timer.callback = _spent
        self._count -= 1
        return True

    def advance(self, now: float) -> list[Callable[[], None]]:
        """Process every tick up to ``now``; return the due callbacks in order."""
        target = math.floor(now / self.tick)
        if target * self.tick > now:  # float rounding must never make it early
            target -= 1
        if target <= self._current:
            return []
        due: list[Timer] = []
        slots = self._slots
        first = self._current + 1
        # Past one full turn every slot is visited once; what is due fires.
        for tick in range(first, min(target, first + len(slots) - 1) + 1):
            slot = slots[tick % len(slots)]
            if slot:
                due.extend(timer for timer in slot if timer.due_tick <= target)
        due.sort(key=_due_tick)  # slot order is due order only within one turn
        callbacks = []
        for timer in due:
            slot = slots[timer.due_tick % len(slots)]
            assert slot is not None
            del slot[timer]
            timer.pending = False
            callbacks.append(timer.callback)
            timer.callback = _spent
        self._count -= len(due)
        self._current = target
        return callbacks

    def next_wakeup(self) -> float | None:
        """When the earliest pending timer is due (a tick boundary), or None."""
        if not self._count:
            return None
        slots = self._slots
        earliest: int | None = None
        for step in range(1, len(slots) + 1):
            tick = self._current + step
            slot = slots[tick % len(slots)]
            if slot:
                due = min(timer.due_tick for timer in slot)
                if due == tick:  # nothing can be due sooner than the first such slot
                    return tick * self.tick
                earliest = due if earliest is None else min(earliest, due)
        return None if earliest is None else earliest * self.tick


def _due_tick(timer: Timer) -> int:
    return timer.due_tick


class Timers(Protocol):
    """What the core needs of a timer service: the shell's timer thread
    (``dht.timer``) or the simulator's virtual clock. ``schedule`` runs
    ``callback`` after ``delay`` seconds; ``cancel`` takes its handle."""

    def schedule(self, delay: float, callback: Callable[[], None]) -> object: ...

    def cancel(self, handle: object) -> None: ...
