"""``Slots``: at most n jobs of one kind running at once, the rest waiting.

Bucket refresh and republishing start lookups from a maintenance round; a
node back from a long pause finds them all due at once, and must not start
them all at once (a storm of lookups filled the pending-request table).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

Job = Callable[[Callable[[], None]], None]
"""Starts some work; calls the function it is given once, when it ends."""


class Slots:
    """Runs jobs, ``size`` at most at once, in the order given (any thread;
    a job starts on the thread that submits it or that ends another)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()  # guards the three below
        self._running = 0
        self._waiting: deque[Job] = deque()
        self._closed = False
        # Jobs to start on this thread once the job it is starting returns: a
        # job that ends at once must not start the next inside itself (a
        # queue of a thousand would recurse a thousand deep).
        self._starting = threading.local()

    @property
    def free(self) -> int:
        """Jobs that would start at once if submitted now."""
        with self._lock:
            return max(0, self.size - self._running - len(self._waiting))

    def submit(self, job: Job) -> None:
        """Start ``job`` now if a slot is free, else when one is; never once
        closed."""
        with self._lock:
            if self._closed:
                return
            if self._running >= self.size:
                self._waiting.append(job)
                return
            self._running += 1
        self._start(job)

    def close(self) -> None:
        """Drop the waiting jobs and refuse new ones (those running end as
        they do)."""
        with self._lock:
            self._closed = True
            self._waiting.clear()

    def _start(self, job: Job) -> None:
        queue: list[Job] | None = getattr(self._starting, "queue", None)
        if queue is not None:  # inside another job's start on this thread
            queue.append(job)
            return
        queue = self._starting.queue = [job]
        try:
            while queue:
                self._run(queue.pop(0))
        finally:
            self._starting.queue = None

    def _run(self, job: Job) -> None:
        ended = False

        def done() -> None:
            nonlocal ended
            with self._lock:
                if ended:  # once per job, whatever the job does
                    return
                ended = True
                following = self._waiting.popleft() if self._waiting else None
                if following is None:
                    self._running -= 1
            if following is not None:
                self._start(following)

        job(done)
