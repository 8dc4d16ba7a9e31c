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

import logging
import math
import threading
import time
from collections.abc import Callable

from .affinity import pin_current_thread
from .core.timerwheel import Timer, TimerWheel

log = logging.getLogger("dht.timer")


class TimerThread:
    """Thread-safe ``schedule``/``cancel`` on a wheel driven by its own thread."""

    def __init__(
        self, *, tick: float = 0.01, name: str = "dht-timer", cpus: frozenset[int] | None = None
    ) -> None:
        self.cpus = cpus
        self.tick = tick
        self.users = 0
        """``shared_timer`` callers not yet released (under its lock)."""
        self._clock = time.monotonic
        self._wheel = TimerWheel(self._clock(), tick=tick)
        self._cond = threading.Condition()
        self._sleep_until = math.inf
        self._running = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (pending timers are dropped) and wait for it,
        unless called from a timer callback."""
        with self._cond:
            self._running = False
            self._cond.notify()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()

    def schedule(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the timer thread ``delay`` seconds from now
        (at most one tick late)."""
        with self._cond:
            deadline = self._clock() + delay
            timer = self._wheel.schedule(deadline, callback)
            if timer.due_tick * self._wheel.tick < self._sleep_until:
                self._cond.notify()  # wake up earlier than planned
            return timer

    def cancel(self, handle: object) -> None:
        if isinstance(handle, Timer):
            with self._cond:
                self._wheel.cancel(handle)

    def __len__(self) -> int:
        with self._cond:
            return len(self._wheel)

    def _run(self) -> None:
        pin_current_thread(self.cpus)
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
            for callback in due:
                try:
                    callback()
                except Exception:
                    log.exception("timer callback %r raised", callback)


_shared_lock = threading.Lock()
_shared: dict[tuple[float, frozenset[int] | None], TimerThread] = {}


def shared_timer(tick: float, cpus: frozenset[int] | None) -> TimerThread:
    """The process's running timer thread for ``tick`` and ``cpus``, started
    on first use. Each call must be matched by one ``release_timer``."""
    key = (tick, cpus)
    with _shared_lock:
        timer = _shared.get(key)
        if timer is None:
            name = "dht-timer" if cpus is None else f"dht-timer-cpus-{min(cpus)}"
            timer = TimerThread(tick=tick, name=name, cpus=cpus)
            timer.start()  # registered only once running: a failed start is not reused
            _shared[key] = timer
        timer.users += 1
        return timer


def release_timer(timer: TimerThread) -> None:
    """Give back a ``shared_timer``; the last user stops it (pending timers
    are dropped; see ``TimerThread.stop``)."""
    key = (timer.tick, timer.cpus)
    with _shared_lock:
        if _shared.get(key) is not timer:
            return
        timer.users -= 1
        last = timer.users == 0
        if last:
            del _shared[key]
    if last:
        timer.stop()
