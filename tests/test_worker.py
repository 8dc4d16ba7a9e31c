"""The worker thread (``dht.worker``): jobs in order, one at a time, a job
that raises does not stop it, and one worker per ``cpus`` shared until the
last release. Real threads; every wait has a deadline."""

from __future__ import annotations

import os
import threading
import weakref

import pytest
from cluster import wait_until

from dht.worker import Worker, release_worker, shared_worker

SLACK = 10.0


def test_jobs_run_in_order_one_at_a_time_and_a_raise_does_not_stop_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Worker()
    worker.start()
    try:
        ran: list[int] = []
        busy = threading.Lock()
        done = threading.Event()

        def job(i: int) -> None:
            assert busy.acquire(blocking=False), "two jobs at once"
            try:
                ran.append(i)
                if i == 2:
                    raise RuntimeError("a job's bug")
            finally:
                busy.release()

        for i in range(5):
            worker.submit(lambda i=i: job(i))  # type: ignore[misc]
        worker.submit(done.set)
        assert done.wait(SLACK)
        assert ran == [0, 1, 2, 3, 4]
        assert "a job's bug" in caplog.text
    finally:
        worker.stop()
    assert not worker.thread.is_alive()


def test_stop_drops_the_jobs_not_yet_started_and_later_submits() -> None:
    worker = Worker()
    worker.start()
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(SLACK)
        ran.append("slow")

    worker.submit(slow)
    worker.submit(lambda: ran.append("queued"))
    assert started.wait(SLACK)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    assert wait_until(lambda: not worker._jobs, SLACK)  # stop has dropped "queued"
    release.set()
    stopper.join(SLACK)
    assert not stopper.is_alive() and not worker.thread.is_alive()
    worker.submit(lambda: ran.append("late"))
    assert ran == ["slow"]


def test_a_job_can_stop_its_own_worker() -> None:
    worker = Worker()
    worker.start()
    stopped = threading.Event()

    def stop_now() -> None:
        worker.stop()  # must not wait for itself
        stopped.set()

    worker.submit(stop_now)
    assert stopped.wait(SLACK)
    worker.thread.join(SLACK)
    assert not worker.thread.is_alive()


def test_shared_worker_is_one_thread_per_cpus_until_the_last_release() -> None:
    cpus = frozenset({min(os.sched_getaffinity(0))})  # pinned: no other test's worker
    first, second = shared_worker(cpus), shared_worker(cpus)
    try:
        assert first is second and first.thread.is_alive()
        release_worker(first)
        assert second.thread.is_alive()  # one user left
    finally:
        release_worker(second)
    assert not first.thread.is_alive()
    again = shared_worker(cpus)  # a new thread once the old one stopped
    try:
        assert again is not first and again.thread.is_alive()
    finally:
        release_worker(again)
    assert not again.thread.is_alive()


class _Payload:
    """Something a job refers to (a node's storage, say)."""


def test_an_idle_worker_keeps_nothing_of_its_last_job() -> None:
    worker = Worker()
    worker.start()
    try:
        payload = _Payload()
        freed = weakref.ref(payload)
        done = threading.Event()

        def job(payload: _Payload = payload) -> None:
            done.set()

        worker.submit(job)
        del job, payload
        assert done.wait(SLACK)
        assert wait_until(lambda: freed() is None, SLACK)
    finally:
        worker.stop()
