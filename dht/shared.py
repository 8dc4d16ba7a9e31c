"""Threads the nodes of a process share (the timer thread, the worker): one
per setting, started by the first node that asks for it and stopped when the
last one gives it back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .affinity import pin_current_thread


class SharedThread:
    """A daemon thread running ``_loop`` from ``start`` until ``stop``.
    ``_cond`` guards the subclass's state; ``_running`` turns false on stop."""

    def __init__(self, *, name: str, cpus: frozenset[int] | None) -> None:
        self.cpus = cpus
        self._cond = threading.Condition()
        self._running = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread once what it runs now returns (what is pending is
        dropped) and wait for it, unless called from the thread itself."""
        with self._cond:
            self._running = False
            self._dropping()
            self._cond.notify()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()

    def _dropping(self) -> None:
        """Under ``_cond``, on ``stop``: let go of what is pending."""

    def _run(self) -> None:
        pin_current_thread(self.cpus)
        self._loop()

    def _loop(self) -> None:
        raise NotImplementedError


T = TypeVar("T", bound=SharedThread)


class SharedThreads(Generic[T]):
    """Running threads by key, with a count of their users."""

    def __init__(self, make: Callable[[Hashable], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._running: dict[Hashable, tuple[T, int]] = {}

    def acquire(self, key: Hashable) -> T:
        """The running thread for ``key``, started on first use. Each call
        must be matched by one ``release``."""
        with self._lock:
            thread, users = self._running.get(key, (None, 0))
            if thread is None:
                thread = self._make(key)
                thread.start()  # registered only once running: a failed start is not reused
            self._running[key] = (thread, users + 1)
            return thread

    def release(self, key: Hashable, thread: T) -> None:
        """Give back ``thread``; the last user stops it."""
        with self._lock:
            running, users = self._running.get(key, (None, 0))
            if running is not thread:
                return
            last = users == 1
            if last:
                del self._running[key]
            else:
                self._running[key] = (thread, users - 1)
        if last:
            thread.stop()
