"""The hashed timer wheel (dht.core.timerwheel) and the timer thread (dht.timer).

``TimerWheel`` is pure, so it is driven with a fake ``now``. The property
test uses ticks that are powers of two and times that are multiples of
1/1024 s, so every comparison is exact in binary floating point and "never
early" can be checked to the bit. ``TimerThread`` runs on the real clock;
every wait there is bounded (``threading.Event.wait(timeout)``) and only
lower bounds are tight: a timer must never fire early, and must fire within a
loose deadline.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from fractions import Fraction

import pytest
from cluster import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dht.core.timerwheel import Timer, TimerWheel
from dht.timer import TimerThread, release_timer, shared_timer

UNIT = 1024
"""Times in the property test are multiples of 1/UNIT seconds."""

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def expected_due_time(deadline: float, now0: float, tick: float) -> Fraction:
    """The first tick boundary at or after ``deadline`` that is later than the
    tick ``now0`` falls in, computed exactly."""
    d, t = Fraction(deadline), Fraction(tick)
    due = max(math.ceil(d / t), math.floor(Fraction(now0) / t) + 1)
    return due * t


# ---------------------------------------------------------------------------
# TimerWheel: properties


@PROPERTY_SETTINGS
@given(
    tick=st.sampled_from([1 / 64, 1 / 8, 0.25, 1.0]),
    slots=st.sampled_from([1, 4, 512]),
    start=st.integers(0, 10**7),
    offsets=st.lists(st.integers(-3 * UNIT, 3 * UNIT), max_size=40),
    cancel=st.lists(st.booleans(), max_size=40),
    rng=st.randoms(use_true_random=False),
    data=st.data(),
)
def test_timers_fire_on_time_and_in_due_order(
    tick: float,
    slots: int,
    start: int,
    offsets: list[int],
    cancel: list[bool],
    rng: random.Random,
    data: st.DataObject,
) -> None:
    now = start / UNIT
    wheel = TimerWheel(now, tick=tick, slots=slots)
    tick_units = int(tick * UNIT)
    # Deadlines from a little in the past to several wheel turns ahead.
    horizon = (3 * slots + 2) * tick_units
    far = data.draw(st.lists(st.integers(0, horizon), max_size=25))
    deadlines = [now + units / UNIT for units in offsets + far]

    fired: list[int] = []
    pending: dict[int, tuple[float, Fraction, Timer]] = {}
    dues: dict[int, Fraction] = {}
    for index, deadline in enumerate(deadlines):
        timer = wheel.schedule(deadline, lambda i=index: fired.append(i))
        dues[index] = expected_due_time(deadline, now, tick)
        pending[index] = (deadline, dues[index], timer)
    assert len(wheel) == len(deadlines)
    for index, flag in enumerate(cancel[: len(deadlines)]):
        if flag:
            timer = pending.pop(index)[2]
            assert wheel.cancel(timer) is True
            assert wheel.cancel(timer) is False
    cancelled = set(range(len(deadlines))) - set(pending)

    # Steps stay below one full turn (a single slot is always sorted), so
    # every advance may be checked for due order.
    max_step_ticks = 4 if slots == 1 else min(slots - 1, 8)
    done_timers: list[Timer] = []
    for _ in range(100_000):
        assert len(wheel) == len(pending)
        if not pending:
            break
        earliest = min(due for _, due, _ in pending.values())
        assert wheel.next_wakeup() == earliest
        choice = rng.random()
        if choice < 0.15:
            target = float(earliest)  # exactly the due tick: fires
        elif choice < 0.3:
            target = float(earliest) - 1 / UNIT  # just before it: must not
            target = max(target, now)
        else:
            target = now + rng.randint(1, max_step_ticks * tick_units) / UNIT
        if rng.random() < 0.05:  # cancel something on the way
            index = rng.choice(sorted(pending))
            timer = pending.pop(index)[2]
            assert wheel.cancel(timer) is True
            cancelled.add(index)
        now = target
        fired.clear()
        for callback in wheel.advance(now):
            callback()
        for index in fired:
            assert index not in cancelled
            deadline, due, timer = pending.pop(index)
            assert deadline <= now, "fired early"
            assert due <= now
            done_timers.append(timer)
        assert fired == sorted(fired, key=lambda i: (dues[i], i)), "not in due order"
        for deadline, due, _ in pending.values():
            assert now < due, "a due timer did not fire"
            # A deadline already past when scheduled counts from then.
            assert now < max(deadline, start / UNIT) + tick, "fired more than one tick late"
    else:
        pytest.fail("timers never all fired")

    assert len(wheel) == 0
    assert wheel.next_wakeup() is None
    assert wheel.advance(now + 10 * slots * tick) == []
    for timer in done_timers:
        assert wheel.cancel(timer) is False


# ---------------------------------------------------------------------------
# TimerWheel: examples


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        TimerWheel(0.0, tick=0.0)
    with pytest.raises(ValueError):
        TimerWheel(0.0, tick=-1.0)
    with pytest.raises(ValueError):
        TimerWheel(0.0, slots=0)


def test_empty_wheel() -> None:
    wheel = TimerWheel(100.0, tick=0.25, slots=8)
    assert len(wheel) == 0
    assert wheel.next_wakeup() is None
    assert wheel.advance(1000.0) == []


def test_next_wakeup_is_the_earliest_due_tick() -> None:
    wheel = TimerWheel(0.0, tick=0.25, slots=4)
    late = wheel.schedule(10.1, lambda: None)  # several turns away
    assert wheel.next_wakeup() == 10.25
    early = wheel.schedule(0.6, lambda: None)
    assert wheel.next_wakeup() == 0.75
    assert wheel.cancel(early) is True
    assert wheel.next_wakeup() == 10.25
    assert wheel.cancel(late) is True
    assert wheel.next_wakeup() is None
    assert len(wheel) == 0


def test_past_deadline_fires_at_the_next_tick_not_the_current_one() -> None:
    wheel = TimerWheel(10.1, tick=0.25, slots=8)
    hits: list[str] = []
    wheel.schedule(3.0, lambda: hits.append("past"))
    assert wheel.next_wakeup() == 10.25
    assert wheel.advance(10.2) == []
    [callback] = wheel.advance(10.25)
    callback()
    assert hits == ["past"]


def test_timer_several_turns_away_skips_earlier_turns() -> None:
    wheel = TimerWheel(0.0, tick=1.0, slots=4)
    hits: list[float] = []
    wheel.schedule(13.0, lambda: hits.append(13.0))
    for second in range(1, 13):  # passes its slot on turns 1, 2 and 3
        assert wheel.advance(float(second)) == [], second
    assert len(wheel) == 1
    for callback in wheel.advance(13.0):
        callback()
    assert hits == [13.0]


def test_cancel_prevents_firing() -> None:
    wheel = TimerWheel(0.0, tick=0.5, slots=4)
    hits: list[str] = []
    kept = wheel.schedule(1.0, lambda: hits.append("kept"))
    gone = wheel.schedule(1.0, lambda: hits.append("gone"))
    assert wheel.cancel(gone) is True
    assert wheel.cancel(gone) is False
    for callback in wheel.advance(5.0):
        callback()
    assert hits == ["kept"]
    assert wheel.cancel(kept) is False  # already fired


class _Owner:
    """Holds its timer, whose callback is one of its methods: the cycle every
    pending request makes."""

    timer: Timer | None = None

    def fire(self) -> None:
        pass


def test_a_fired_or_cancelled_timer_lets_go_of_its_callback() -> None:
    wheel = TimerWheel(0.0, tick=0.5, slots=4)
    cancelled, fired = _Owner(), _Owner()
    cancelled.timer = wheel.schedule(1.0, cancelled.fire)
    fired.timer = wheel.schedule(1.0, fired.fire)
    gone = [weakref.ref(cancelled), weakref.ref(fired)]
    was_enabled = gc.isenabled()
    gc.disable()  # only reference counting may free them
    try:
        assert wheel.cancel(cancelled.timer)
        [callback] = wheel.advance(5.0)
        callback()
        del cancelled, fired, callback
        assert [ref() for ref in gone] == [None, None]
    finally:
        if was_enabled:
            gc.enable()


def test_same_tick_timers_fire_in_schedule_order() -> None:
    wheel = TimerWheel(0.0, tick=1.0, slots=8)
    hits: list[int] = []
    for i in range(5):
        wheel.schedule(2.5 - i / 10, lambda i=i: hits.append(i))  # all due at tick 3
    for callback in wheel.advance(3.0):
        callback()
    assert hits == [0, 1, 2, 3, 4]


def test_one_advance_over_a_turn_fires_everything_due() -> None:
    wheel = TimerWheel(0.0, tick=1.0, slots=4)
    hits: list[int] = []
    for deadline in (2, 5, 7, 11, 30):
        wheel.schedule(float(deadline), lambda d=deadline: hits.append(d))
    for callback in wheel.advance(12.0):
        callback()
    assert sorted(hits) == [2, 5, 7, 11]
    assert len(wheel) == 1
    assert wheel.next_wakeup() == 30.0


def test_one_advance_over_a_turn_fires_in_due_order() -> None:
    wheel = TimerWheel(0.0, tick=1.0, slots=4)
    hits: list[int] = []
    wheel.schedule(5.0, lambda: hits.append(5))  # slot 1
    wheel.schedule(2.0, lambda: hits.append(2))  # slot 2
    for callback in wheel.advance(10.0):
        callback()
    assert hits == [2, 5]


def test_never_early_with_a_non_binary_tick() -> None:
    wheel = TimerWheel(0.0, tick=0.7, slots=512)
    wheel.schedule(7.0, lambda: None)
    assert wheel.advance(math.nextafter(7.0, 0.0)) == []


def test_default_tick_fires_within_one_tick() -> None:
    # The default 10 ms tick is not exact in binary; allow rounding error
    # (1 us) but nothing more.
    wheel = TimerWheel(1000.0)
    assert wheel.tick == 0.01
    deadlines = [1000.0 + i * 0.0037 for i in range(1, 300)]
    fired: list[int] = []
    for i, deadline in enumerate(deadlines):
        wheel.schedule(deadline, lambda i=i: fired.append(i))
    fired_at: dict[int, float] = {}
    now = 1000.0
    while len(wheel):
        now += 0.001
        for callback in wheel.advance(now):
            callback()
        fired_at.update((i, now) for i in fired if i not in fired_at)
    for i, deadline in enumerate(deadlines):
        assert deadline - 1e-6 <= fired_at[i] <= deadline + 0.01 + 0.001 + 1e-6


# ---------------------------------------------------------------------------
# TimerThread (real time; all waits bounded)

TICK = 0.01
SLACK = 2.0
"""Loose upper bound on scheduling delay: only "not early" is tight."""


@pytest.fixture
def timers() -> Iterator[TimerThread]:
    thread = TimerThread(tick=TICK, name="test-timer")
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()
        assert not thread.thread.is_alive()


def recorder() -> tuple[threading.Event, list[float], Callable[[], None]]:
    event = threading.Event()
    times: list[float] = []

    def callback() -> None:
        times.append(time.monotonic())
        event.set()

    return event, times, callback


def test_thread_fires_not_early_and_within_a_loose_deadline(timers: TimerThread) -> None:
    event, times, callback = recorder()
    delay = 0.05
    started = time.monotonic()
    timers.schedule(delay, callback)
    assert event.wait(delay + TICK + SLACK), "timer did not fire"
    assert times[0] - started >= delay, "fired early"
    assert len(times) == 1
    assert len(timers) == 0


def test_thread_fires_in_due_order(timers: TimerThread) -> None:
    order: list[str] = []
    done = threading.Event()

    def third() -> None:
        order.append("third")
        done.set()

    timers.schedule(0.10, third)
    timers.schedule(0.02, lambda: order.append("first"))
    timers.schedule(0.06, lambda: order.append("second"))
    assert done.wait(0.10 + SLACK)
    assert order == ["first", "second", "third"]


def test_thread_cancel(timers: TimerThread) -> None:
    cancelled, cancelled_times, cancelled_callback = recorder()
    sentinel, _, sentinel_callback = recorder()
    handle = timers.schedule(0.03, cancelled_callback)
    timers.schedule(0.08, sentinel_callback)
    assert len(timers) == 2
    timers.cancel(handle)
    assert len(timers) == 1
    timers.cancel(handle)  # twice is harmless
    timers.cancel(object())  # so is something that is not a timer
    assert sentinel.wait(0.08 + SLACK)
    assert not cancelled.is_set()
    assert cancelled_times == []
    assert len(timers) == 0


def test_thread_survives_a_raising_callback(
    timers: TimerThread, caplog: pytest.LogCaptureFixture
) -> None:
    event, times, callback = recorder()

    def boom() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="dht.timer"):
        timers.schedule(0.01, boom)
        timers.schedule(0.04, callback)
        assert event.wait(0.04 + SLACK)
    assert len(times) == 1
    assert timers.thread.is_alive()
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
    # And it still works afterwards.
    again, _, again_callback = recorder()
    timers.schedule(0.0, again_callback)
    assert again.wait(SLACK)


def test_idle_thread_blocks_and_wakes_for_new_timers(timers: TimerThread) -> None:
    first, _, first_callback = recorder()
    timers.schedule(0.0, first_callback)
    assert first.wait(SLACK)
    # Nothing is scheduled: the thread waits without a timeout ...
    assert len(timers) == 0
    assert timers.thread.is_alive()
    # ... and a new timer still wakes it up.
    event, times, callback = recorder()
    started = time.monotonic()
    timers.schedule(0.03, callback)
    assert event.wait(0.03 + SLACK)
    assert times[0] - started >= 0.03


def test_earlier_timer_wakes_a_thread_sleeping_for_a_later_one(timers: TimerThread) -> None:
    late, _, late_callback = recorder()
    timers.schedule(60.0, late_callback)
    early, times, early_callback = recorder()
    started = time.monotonic()
    timers.schedule(0.03, early_callback)
    assert early.wait(0.03 + SLACK)
    assert times[0] - started >= 0.03
    assert not late.is_set()
    assert len(timers) == 1


def test_a_timer_beyond_the_longest_wait_the_os_allows_does_not_stop_the_thread(
    timers: TimerThread,
) -> None:
    """``Config(timeout=1e10)`` is valid; the thread waits in shorter steps
    instead of dying of an OverflowError (threading.TIMEOUT_MAX)."""
    assert threading.TIMEOUT_MAX < 1e10
    timers.schedule(1e10, lambda: None)
    for _ in range(2):  # the second runs after the thread slept on the far one
        event, _, callback = recorder()
        timers.schedule(0.03, callback)
        assert event.wait(0.03 + SLACK), "timer did not fire"
    assert timers.thread.is_alive()


def test_stop_joins_the_thread_and_drops_pending_timers() -> None:
    timers = TimerThread(tick=TICK)
    timers.start()
    fired, _, callback = recorder()
    timers.schedule(30.0, callback)
    assert timers.thread.is_alive()
    timers.stop()
    assert not timers.thread.is_alive()
    assert not fired.is_set()
    timers.stop()  # idempotent


def test_stop_from_a_callback_does_not_deadlock() -> None:
    timers = TimerThread(tick=TICK)
    timers.start()
    stopped = threading.Event()

    def stop_now() -> None:
        timers.stop()
        stopped.set()

    timers.schedule(0.0, stop_now)
    assert stopped.wait(SLACK)
    timers.thread.join(SLACK)
    assert not timers.thread.is_alive()


def test_an_idle_timer_thread_keeps_nothing_of_its_last_callback() -> None:
    # The last callback stayed in a local of the loop while it slept: a
    # closed node's engine (its refresh) was kept up to a minute.
    timers = TimerThread(tick=0.01)
    timers.start()
    try:

        class Payload:
            pass

        payload = Payload()
        freed = weakref.ref(payload)
        fired = threading.Event()

        def callback(payload: Payload = payload) -> None:
            fired.set()

        timers.schedule(0.0, callback)
        del callback, payload
        assert fired.wait(SLACK)
        assert wait_until(lambda: freed() is None, SLACK)
    finally:
        timers.stop()


def test_shared_timer_is_one_thread_per_tick_and_cpus_until_the_last_release() -> None:
    tick = 0.0123  # no node of the test session uses it
    first = shared_timer(tick, None)
    second = shared_timer(tick, None)
    other = shared_timer(0.0124, None)
    try:
        assert first is second and first is not other
        assert first.thread.is_alive() and other.thread.is_alive()
        event, _, callback = recorder()
        second.schedule(0.0, callback)
        assert event.wait(SLACK)
        release_timer(first)
        assert second.thread.is_alive()  # one user left
    finally:
        release_timer(second)
        release_timer(other)
    assert not first.thread.is_alive() and not other.thread.is_alive()
    again = shared_timer(tick, None)  # a new thread once the old one stopped
    try:
        assert again is not first and again.thread.is_alive()
    finally:
        release_timer(again)
    assert not again.thread.is_alive()
