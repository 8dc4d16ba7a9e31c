"""The timer thread: runs a ``TimerWheel`` and fires its callbacks.

It sleeps until the next due tick, and indefinitely while nothing is
scheduled, so an idle node costs no CPU. Callbacks run on this thread, one at
a time; one that raises is logged and the thread goes on.

The nodes of a process share one timer thread (per ``timer_tick`` and
``cpus``; ``shared_timer``/``release_timer``): a thread that sleeps until the
earliest timer must be woken each time an earlier one is scheduled, and with
a thread per node nearly every short timer (a lookup's hedge) was the
earliest of its node's. Shared, it usually is not.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Self

from .core import nodelog
from .core.timerwheel import Timer, TimerWheel
from .shared import SharedThread, SharedThreads

log = nodelog.logger("dht.timer")


class TimerThread(SharedThread):
    """Thread-safe ``schedule``/``cancel`` on a wheel driven by its own thread."""

    NAME = "dht-timer"
    """The thread's name (with ``-cpus-N`` when pinned)."""

    def __init__(
        self, *, tick: float = 0.01, name: str = "dht-timer", cpus: frozenset[int] | None = None
    ) -> None:
        super().__init__(name=name, cpus=cpus)
        self.tick = tick
        self._clock = time.monotonic
        self._wheel = TimerWheel(self._clock(), tick=tick)
        self._sleep_until = math.inf

    @classmethod
    def made_for(cls, key: Hashable) -> Self:
        """The thread a ``SharedThreads`` starts for ``(tick, cpus)``."""
        assert isinstance(key, tuple)
        tick, cpus = key
        name = cls.NAME if cpus is None else f"{cls.NAME}-cpus-{min(cpus)}"
        return cls(tick=tick, name=name, cpus=cpus)

    def schedule(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the timer thread ``delay`` seconds from now
        (at most one tick late), as the node current here (``nodelog``)."""
        callback = nodelog.bound(callback)
        with self._cond:
            deadline = self._clock() + delay
            timer = self._wheel.schedule(deadline, callback)
            if timer.due_tick * self._wheel.tick < self._sleep_until:
                self._wake()  # earlier than planned
            return timer

    def _wake(self) -> None:
        """Under ``_cond``: make the sleeping thread look at the wheel again."""
        self._cond.notify()

    def cancel(self, handle: object) -> None:
        if isinstance(handle, Timer):
            with self._cond:
                self._wheel.cancel(handle)

    def __len__(self) -> int:
        with self._cond:
            return len(self._wheel)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._running:
                        return
                    now = self._clock()
                    due = self._wheel.advance(now)
                    if due:
                        self._sleep_until = now
                        break
                    wake = self._wheel.next_wakeup()
                    self._sleep_until = math.inf if wake is None else wake
                    # A far timer (a huge timeout) is waited for in steps:
                    # a wait over TIMEOUT_MAX raises OverflowError.
                    pause = None if wake is None else max(wake - now, 0.0)
                    self._cond.wait(None if pause is None else min(pause, threading.TIMEOUT_MAX))
            fire(due)  # in a function: no local keeps the last callback while idle


def fire(callbacks: list[Callable[[], None]]) -> None:
    """Run due timer callbacks in order; one that raises is logged."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("timer callback %r raised", callback)


_timers = SharedThreads(TimerThread.made_for)


def shared_timer(tick: float, cpus: frozenset[int] | None) -> TimerThread:
    """The process's running timer thread for ``tick`` and ``cpus``, started
    on first use. Each call must be matched by one ``release_timer``."""
    return _timers.acquire((tick, cpus))


def release_timer(timer: TimerThread) -> None:
    """Give back a ``shared_timer``; the last user stops it (pending timers
    are dropped; see ``TimerThread.stop``)."""
    _timers.release((timer.tick, timer.cpus), timer)
