"""The worker thread: runs jobs that may block for long, one at a time.

Key transfer scans the whole store through the user's ``Storage``, whose
``Iterate`` or ``expire`` may take seconds (a database, a large store). On
the timer thread, that held up every timeout, stall and hedge of every node
in the process; here it holds up only other such jobs. The nodes of a
process share one worker per ``cpus`` (``shared_worker``/``release_worker``).
It sleeps while there is no job, so an idle node costs no CPU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable

from .core import nodelog
from .shared import SharedThread, SharedThreads

log = nodelog.logger("dht.worker")


class Worker(SharedThread):
    """Thread-safe ``submit`` of jobs run in order by its own thread."""

    def __init__(self, *, name: str = "dht-worker", cpus: frozenset[int] | None = None) -> None:
        super().__init__(name=name, cpus=cpus)
        self._jobs: deque[Callable[[], None]] = deque()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the worker thread after those submitted before it
        (dropped once the worker is stopped), as the node current here
        (``nodelog``). A job that raises is logged."""
        with self._cond:
            if self._running:
                self._jobs.append(nodelog.bound(job))
                self._cond.notify()

    def _dropping(self) -> None:
        self._jobs.clear()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._jobs:
                    self._cond.wait()
                if not self._running:
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:
                log.exception("worker job %r raised", job)
            del job  # while idle, hold nothing of a node's (its storage, say)


def _make(cpus: Hashable) -> Worker:
    assert cpus is None or isinstance(cpus, frozenset)
    name = "dht-worker" if cpus is None else f"dht-worker-cpus-{min(cpus)}"
    return Worker(name=name, cpus=cpus)


_workers = SharedThreads(_make)


def shared_worker(cpus: frozenset[int] | None) -> Worker:
    """The process's running worker for ``cpus``, started on first use. Each
    call must be matched by one ``release_worker``."""
    return _workers.acquire(cpus)


def release_worker(worker: Worker) -> None:
    """Give back a ``shared_worker``; the last user stops it."""
    _workers.release(worker.cpus, worker)
