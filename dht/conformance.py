"""The storage conformance suite: what every ``dht.Storage`` shipped here
guarantees, as checks you can run against your own.

A node relies on more than the three methods of the protocol: values it
was given come back until they expire and not after, a value stored again
is one value, ``ValuesFrom`` filters by ``created``, a full store refuses
instead of dropping what it holds, and so on. ``MemoryStorage`` and
``SQLiteStorage`` both pass every check; a storage of your own should too.

Each check builds fresh storages with ``make_storage(clock_ns, **limits)``
and a fake clock (integer nanoseconds since the epoch, moved by hand), so
expiry is exact and nothing sleeps. ``limits`` holds only the knobs a check
sets, by ``MemoryStorage``'s names: ``max_values_per_key``, ``max_bytes``
(counted with ``dht.core.storage.key_cost`` and ``value_cost``, as the
node's storage shares count) and ``max_ttl_ns``.

Optional parts are checked when present and skipped otherwise: the
methods ``Delete``, ``expire``, ``Keys``, ``next_expiry_ns``, ``__len__``
and the counters ``bytes`` and ``refused`` (as on ``MemoryStorage``); the
limits (``limits=False`` if your factory takes none); and persistence
(``reopen(storage, clock_ns)``: close ``storage`` and open what it stored
again). Storages are closed after each check if they have ``close()``.

Run all of it at once::

    from dht.conformance import check_storage
    check_storage(lambda clock_ns, **limits: MyStorage(clock_ns=clock_ns, **limits))

which raises ``ConformanceError`` naming each failed check, or one check
per test with pytest (a check that does not apply raises
``NotApplicable``, a ``unittest.SkipTest``, which pytest reports as a skip)::

    import pytest
    from dht.conformance import CHECKS, Subject

    SUBJECT = Subject(lambda clock_ns, **limits: MyStorage(clock_ns=clock_ns, **limits))

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("check", CHECKS, ids=str)
    def test_my_storage(check):
        check(SUBJECT)

The checks call the storage from a few threads at most, and every wait in
them is bounded (``THREAD_WAIT`` seconds).
"""

from __future__ import annotations

import contextlib
import threading
import unittest
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .core.storage import CLOCK_SKEW_NS, Storage, key_cost, value_cost
from .keys import INT64_MAX
from .wire.events import Value

T0 = 1_700_000_000 * 10**9
"""The fake clock's start: a plausible "now" in nanoseconds since the epoch."""
HOUR = 3600 * 10**9
KEY = bytes.fromhex("a1" * 20)
OTHER_KEY = bytes.fromhex("b2" * 20)
THREAD_WAIT = 30.0
"""Seconds a check waits for a thread it started before failing (a deadlock)."""

MakeStorage = Callable[..., Storage]
"""``make_storage(clock_ns, **limits) -> Storage``: a new, empty storage."""
Reopen = Callable[[Storage, Callable[[], int]], Storage]
"""``reopen(storage, clock_ns) -> Storage``: close ``storage`` and open what
it holds again, on ``clock_ns``."""


class NotApplicable(unittest.SkipTest):
    """The storage lacks the optional part a check needs (pytest and
    unittest report it as a skip)."""


class ConformanceError(AssertionError):
    """``check_storage`` found checks that failed: ``failures`` maps each
    one's name to what it raised."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        lines = [f"{name}: {type(error).__name__}: {error}" for name, error in failures.items()]
        super().__init__(f"{len(failures)} storage check(s) failed:\n" + "\n".join(lines))
        self.failures = failures


class FakeClock:
    """A clock for ``clock_ns``: returns ``now``, which the checks move."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass(frozen=True)
class Subject:
    """The storage under test: how to make one, how to reopen one (for
    persistent storages; None otherwise), and whether the factory takes
    the limits."""

    make_storage: MakeStorage
    reopen: Reopen | None = None
    limits: bool = True


class Run:
    """One check's run: a fake clock, and the storages made with it (closed
    at the end)."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.clock = FakeClock()
        self._made: list[Storage] = []

    def new(self, **limits: int | None) -> Storage:
        """A fresh storage on this run's clock, with ``limits``."""
        if limits and not self.subject.limits:
            raise NotApplicable("the storage takes no limits (Subject.limits is False)")
        storage = self.subject.make_storage(self.clock, **limits)
        self._made.append(storage)
        return storage

    def reopen(self, storage: Storage) -> Storage:
        """``storage`` closed and opened again (persistent storages only)."""
        if self.subject.reopen is None:
            raise NotApplicable("the storage is not persistent (no Subject.reopen)")
        reopened = self.subject.reopen(storage, self.clock)
        self._made.append(reopened)
        return reopened

    def close(self) -> None:
        for storage in self._made:
            close = getattr(storage, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # closed already, say
                    close()


def has(storage: Storage, part: str) -> bool:
    """Whether ``storage`` has the optional ``part``: a method name, or the
    counters ``"bytes"`` and ``"refused"``."""
    if part in ("bytes", "refused"):
        return isinstance(getattr(storage, part, None), int)
    return callable(getattr(storage, part, None))


def need(storage: Storage, *parts: str) -> Any:
    """``storage`` as ``Any`` for its optional ``parts``, or NotApplicable."""
    for part in parts:
        if not has(storage, part):
            raise NotApplicable(f"{type(storage).__name__} has no {part}")
    return storage


@dataclass(frozen=True)
class Check:
    """One check: call it with a ``Subject``. ``str`` is its name."""

    name: str
    run: Callable[[Run], None] = field(repr=False)

    @property
    def doc(self) -> str:
        """What it checks (the first line of its docstring)."""
        return (self.run.__doc__ or "").strip().splitlines()[0]

    def __call__(self, subject: Subject) -> None:
        run = Run(subject)
        try:
            self.run(run)
        finally:
            run.close()

    def __str__(self) -> str:
        return self.name


_checks: list[Check] = []


def _check(fn: Callable[[Run], None]) -> Callable[[Run], None]:
    _checks.append(Check(fn.__name__, fn))
    return fn


def check_storage(
    make_storage: MakeStorage, *, reopen: Reopen | None = None, limits: bool = True
) -> dict[str, str]:
    """Run every check; raise ``ConformanceError`` if any fails. Returns each
    check's name mapped to ``"passed"`` or ``"skipped: <why>"``."""
    subject = Subject(make_storage, reopen, limits)
    outcomes: dict[str, str] = {}
    failures: dict[str, BaseException] = {}
    for check in CHECKS:
        try:
            check(subject)
        except NotApplicable as skipped:
            outcomes[check.name] = f"skipped: {skipped}"
        except Exception as error:
            failures[check.name] = error
        else:
            outcomes[check.name] = "passed"
    if failures:
        raise ConformanceError(failures)
    return outcomes


# ---------------------------------------------------------------------------
# Helpers of the checks


def datas(values: list[Value]) -> set[bytes]:
    return {value.value for value in values}


def collect(storage: Storage) -> list[Value]:
    seen: list[Value] = []

    def fn(value: Value) -> bool:
        seen.append(value)
        return True

    storage.Iterate(fn)
    return seen


def _len_is(storage: Storage, expected: int) -> None:
    if has(storage, "__len__"):
        got = len(need(storage, "__len__"))
        assert got == expected, f"len() is {got}, expected {expected}"


def _bytes_are(storage: Storage, expected: int) -> None:
    if has(storage, "bytes"):
        got = need(storage, "bytes").bytes
        assert got == expected, f"bytes is {got}, expected {expected}"


def _next_expiry_is(storage: Storage, expected: int | None) -> None:
    if has(storage, "next_expiry_ns"):
        got = need(storage, "next_expiry_ns").next_expiry_ns()
        assert got == expected, f"next_expiry_ns() is {got}, expected {expected}"


def _refused_is(storage: Storage, expected: int) -> None:
    if has(storage, "refused"):
        got = need(storage, "refused").refused
        assert got == expected, f"refused is {got}, expected {expected}"


def _in_thread(fn: Callable[[], None], what: str) -> None:
    """Run ``fn`` on a thread, waiting at most ``THREAD_WAIT``; re-raise."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True, name=f"conformance {what}")
    thread.start()
    thread.join(THREAD_WAIT)
    assert not thread.is_alive(), f"{what} did not finish within {THREAD_WAIT} s (deadlock?)"
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------
# Set and Get


@_check
def several_values_per_key_deduplicated_by_bytes(run: Run) -> None:
    """Several values per key, one copy of each byte string, keys apart."""
    storage = run.new()
    assert storage.Set(KEY, b"a", T0, HOUR)
    assert storage.Set(KEY, b"b", T0, HOUR)
    assert storage.Set(KEY, b"a", T0, HOUR)
    assert storage.Set(KEY, b"", T0, HOUR)
    assert storage.Set(OTHER_KEY, b"a", T0, HOUR)
    got = storage.Get(KEY)
    assert sorted(v.value for v in got) == [b"", b"a", b"b"], got
    assert all(v.key == KEY for v in got)
    assert [v.value for v in storage.Get(OTHER_KEY)] == [b"a"]
    assert storage.Get(bytes(20)) == []
    _len_is(storage, 4)


@_check
def get_returns_the_stored_fields(run: Run) -> None:
    """Get returns key, value, ttl and created as stored (created 0 too)."""
    storage = run.new()
    assert storage.Set(KEY, b"payload", T0 - 5, HOUR)
    assert storage.Get(KEY) == [Value(KEY, b"payload", HOUR, T0 - 5)]
    assert storage.Set(OTHER_KEY, b"no created", 0, HOUR)
    assert storage.Get(OTHER_KEY) == [Value(OTHER_KEY, b"no created", HOUR, 0)]


@_check
def set_copies_its_buffers(run: Run) -> None:
    """Set keeps copies: mutating the caller's buffers changes nothing."""
    storage = run.new()
    key = bytearray(KEY)
    value = bytearray(b"original")
    assert storage.Set(key, value, T0, HOUR)  # type: ignore[arg-type]
    key[0] ^= 0xFF
    value[:] = b"mutated!"
    [got] = storage.Get(KEY)
    assert got.value == b"original"
    assert type(got.value) is bytes and type(got.key) is bytes


@_check
def get_returns_a_copy(run: Run) -> None:
    """Changing the list Get returned changes nothing stored."""
    storage = run.new()
    storage.Set(KEY, b"a", T0, HOUR)
    storage.Set(KEY, b"b", T0, HOUR)
    first = storage.Get(KEY)
    first.clear()
    second = storage.Get(KEY)
    assert datas(second) == {b"a", b"b"}
    second.append(Value(KEY, b"intruder", HOUR, T0))
    assert datas(storage.Get(KEY)) == {b"a", b"b"}


@_check
def get_from_filters_each_value_by_created(run: Run) -> None:
    """Get(key, from_ns) keeps values created at or after from_ns (D38); <= 0 keeps all (D12)."""
    storage = run.new()
    for created, data in ((T0 - 100, b"newest"), (T0 - 300, b"oldest"), (T0 - 200, b"middle")):
        assert storage.Set(KEY, data, created, HOUR)
    assert datas(storage.Get(KEY, T0 - 250)) == {b"newest", b"middle"}
    assert datas(storage.Get(KEY, T0 - 200)) == {b"newest", b"middle"}
    assert datas(storage.Get(KEY, T0 - 199)) == {b"newest"}
    assert storage.Get(KEY, T0) == []
    everything = {b"newest", b"oldest", b"middle"}
    for from_ns in (0, -1, -6795364578871345152):
        assert datas(storage.Get(KEY, from_ns)) == everything, from_ns
    assert datas(storage.Get(KEY)) == everything


@_check
def get_from_non_positive_is_no_filter_even_for_negative_created(run: Run) -> None:
    """from_ns <= 0 means no filter, not created >= from_ns (D12)."""
    storage = run.new()
    assert storage.Set(KEY, b"odd created", -5, HOUR)
    assert datas(storage.Get(KEY, -1)) == {b"odd created"}
    assert datas(storage.Get(KEY, 0)) == {b"odd created"}
    assert storage.Get(KEY, 1) == []


@_check
def get_from_excludes_values_of_unknown_creation(run: Run) -> None:
    """A value with created 0 (unknown) is left out by any positive from_ns."""
    storage = run.new()
    storage.Set(KEY, b"unknown", 0, HOUR)
    storage.Set(KEY, b"known", T0, HOUR)
    assert datas(storage.Get(KEY, 1)) == {b"known"}
    assert datas(storage.Get(KEY, 0)) == {b"unknown", b"known"}


@_check
def non_positive_ttl_is_refused(run: Run) -> None:
    """Set with ttl <= 0 returns False and stores nothing."""
    storage = run.new()
    assert storage.Set(KEY, b"zero", T0, 0) is False
    assert storage.Set(KEY, b"negative", T0, -1) is False
    assert storage.Set(KEY, b"negative, no created", 0, -HOUR) is False
    assert storage.Get(KEY) == []
    _len_is(storage, 0)
    _bytes_are(storage, 0)


@_check
def is_a_storage(run: Run) -> None:
    """The storage implements dht.Storage (Get, Set and Iterate)."""
    assert isinstance(run.new(), Storage)


# ---------------------------------------------------------------------------
# Expiry


@_check
def get_excludes_expired_values_before_any_sweep(run: Run) -> None:
    """Expiry is checked on read, not only by a sweep (D37)."""
    storage = run.new()
    storage.Set(KEY, b"short", 0, 10)
    storage.Set(KEY, b"long", 0, HOUR)
    run.clock.now += 10
    assert datas(storage.Get(KEY)) == {b"long"}
    run.clock.now += HOUR
    assert storage.Get(KEY) == []


def _held_until(run: Run, storage: Storage, data: bytes, expires_ns: int) -> None:
    """``KEY`` holds just ``data`` until ``expires_ns`` and nothing from then on."""
    _next_expiry_is(storage, expires_ns)
    run.clock.now = expires_ns - 1
    assert datas(storage.Get(KEY)) == {data}
    run.clock.now = expires_ns
    assert storage.Get(KEY) == []


@_check
def expiry_is_created_plus_ttl_when_that_is_sooner(run: Run) -> None:
    """A value expires ttl after created: handing it on does not restart its life (D34)."""
    storage = run.new()
    assert storage.Set(KEY, b"v", T0 - 400, 1000)
    _held_until(run, storage, b"v", T0 + 600)


@_check
def expiry_is_store_time_plus_ttl_when_that_is_sooner(run: Run) -> None:
    """A value created in the future expires ttl after it arrived."""
    storage = run.new()
    assert storage.Set(KEY, b"from the future", T0 + 5000, 1000)
    _held_until(run, storage, b"from the future", T0 + 1000)


@_check
def expiry_without_created_is_store_time_plus_ttl(run: Run) -> None:
    """A value of unknown creation (0) expires ttl after it arrived."""
    storage = run.new()
    assert storage.Set(KEY, b"v", 0, 1000)
    _held_until(run, storage, b"v", T0 + 1000)


@_check
def value_expired_on_arrival_is_refused(run: Run) -> None:
    """Set refuses a value whose life is over when it arrives."""
    storage = run.new()
    assert storage.Set(KEY, b"just expired", T0 - 1000, 1000) is False
    assert storage.Set(KEY, b"long expired", T0 - 5 * HOUR, HOUR) is False
    assert storage.Get(KEY) == []
    _len_is(storage, 0)
    _bytes_are(storage, 0)
    _next_expiry_is(storage, None)
    assert storage.Set(KEY, b"one ns left", T0 - 999, 1000) is True


@_check
def a_created_time_far_in_the_future_is_taken_as_now(run: Run) -> None:
    """A created beyond CLOCK_SKEW_NS ahead is stored as now; within it, as sent."""
    for created in (INT64_MAX, T0 + 2 * CLOCK_SKEW_NS):
        storage = run.new()
        assert storage.Set(KEY, b"headline", T0 - 50, HOUR)
        assert storage.Set(KEY, b"headline", created, HOUR)
        [got] = storage.Get(KEY)
        assert got.created_ns == T0, (created, got)
        assert storage.Get(KEY, T0 + 1) == []
        assert storage.Set(OTHER_KEY, b"fresh", created, HOUR)
        assert storage.Get(OTHER_KEY)[0].created_ns == T0
    storage = run.new()
    assert storage.Set(OTHER_KEY, b"v", T0 + CLOCK_SKEW_NS, HOUR)
    assert storage.Get(OTHER_KEY)[0].created_ns == T0 + CLOCK_SKEW_NS


@_check
def expire_removes_exactly_the_expired_values(run: Run) -> None:
    """expire() removes what is due, keys left empty with it, and returns how many (D36)."""
    storage = run.new()
    sweeper = need(storage, "expire")
    long_key, short_key = KEY, OTHER_KEY
    assert storage.Set(long_key, b"hour", 0, HOUR)
    assert storage.Set(short_key, b"nanosecond", 0, 1)
    _bytes_are(
        storage,
        key_cost(long_key) + value_cost(b"hour") + key_cost(short_key) + value_cost(b"nanosecond"),
    )
    _next_expiry_is(storage, T0 + 1)
    run.clock.now += 10
    assert sweeper.expire() == 1
    assert datas(storage.Get(long_key)) == {b"hour"}
    assert storage.Get(short_key) == []
    _len_is(storage, 1)
    _bytes_are(storage, key_cost(long_key) + value_cost(b"hour"))
    _next_expiry_is(storage, T0 + HOUR)
    if has(storage, "Keys"):
        assert sweeper.Keys() == [long_key]
    assert [v.key for v in collect(storage)] == [long_key]
    assert sweeper.expire() == 0
    run.clock.now = T0 + HOUR
    assert sweeper.expire() == 1
    _len_is(storage, 0)
    _bytes_are(storage, 0)
    _next_expiry_is(storage, None)


@_check
def expire_keeps_a_key_while_it_has_values(run: Run) -> None:
    """expire() removes one value of a key and keeps the key while others live."""
    storage = run.new()
    sweeper = need(storage, "expire")
    storage.Set(KEY, b"short", 0, 100)
    storage.Set(KEY, b"long", 0, 200)
    run.clock.now += 150
    assert sweeper.expire() == 1
    _bytes_are(storage, key_cost(KEY) + value_cost(b"long"))
    assert datas(storage.Get(KEY)) == {b"long"}
    run.clock.now += 50
    assert sweeper.expire() == 1
    _bytes_are(storage, 0)
    assert storage.Get(KEY) == []


@_check
def expire_on_empty_store(run: Run) -> None:
    """expire() on an empty store removes nothing."""
    storage = run.new()
    assert need(storage, "expire").expire() == 0
    _next_expiry_is(storage, None)
    _len_is(storage, 0)


@_check
def expire_removes_exactly_the_due_values_of_many(run: Run) -> None:
    """Of 2,000 values with distinct expiries, expire() removes just the 10 due."""
    storage = run.new()
    sweeper = need(storage, "expire")
    count = 2000
    for i in range(count):
        assert storage.Set(i.to_bytes(20, "big"), b"v", 0, 1000 + i)
    _len_is(storage, count)
    _next_expiry_is(storage, T0 + 1000)
    run.clock.now = T0 + 1009
    assert sweeper.expire() == 10
    _len_is(storage, count - 10)
    _next_expiry_is(storage, T0 + 1010)
    _bytes_are(storage, (count - 10) * (key_cost(bytes(20)) + value_cost(b"v")))
    assert storage.Get((9).to_bytes(20, "big")) == []
    assert len(storage.Get((10).to_bytes(20, "big"))) == 1
    assert sweeper.expire() == 0


@_check
def set_sweeps_expired_values(run: Run) -> None:
    """A Set removes values already expired (they count no more)."""
    storage = run.new()
    if not (has(storage, "__len__") or has(storage, "bytes")):
        raise NotApplicable(f"{type(storage).__name__} has neither __len__ nor bytes")
    storage.Set(KEY, b"old", 0, 10)
    run.clock.now += 10
    storage.Set(OTHER_KEY, b"new", 0, HOUR)
    _len_is(storage, 1)
    _bytes_are(storage, key_cost(OTHER_KEY) + value_cost(b"new"))


# ---------------------------------------------------------------------------
# Refresh (D41)


@_check
def re_set_refreshes_expiry_and_keeps_one_copy(run: Run) -> None:
    """Storing a held value again extends its life and keeps one copy."""
    storage = run.new()
    assert storage.Set(KEY, b"v", 0, 100)
    bytes_before = getattr(storage, "bytes", None)
    run.clock.now += 60
    assert storage.Set(KEY, b"v", 0, 100)
    _len_is(storage, 1)
    if bytes_before is not None:
        _bytes_are(storage, bytes_before)
    _next_expiry_is(storage, T0 + 160)
    run.clock.now = T0 + 120  # past the first lifetime
    if has(storage, "expire"):
        assert need(storage, "expire").expire() == 0
    assert datas(storage.Get(KEY)) == {b"v"}
    run.clock.now = T0 + 160
    assert storage.Get(KEY) == []


@_check
def re_set_never_shortens_a_life(run: Run) -> None:
    """Storing a held value again with a sooner expiry keeps the later one and its ttl."""
    storage = run.new()
    assert storage.Set(KEY, b"v", 0, HOUR)
    assert storage.Set(KEY, b"v", 0, 100)
    [got] = storage.Get(KEY)
    assert got.ttl_ns == HOUR
    _next_expiry_is(storage, T0 + HOUR)
    run.clock.now = T0 + 100
    assert datas(storage.Get(KEY)) == {b"v"}


@_check
def re_set_takes_the_newer_created(run: Run) -> None:
    """Storing a held value again keeps the newer of the two created times."""
    storage = run.new()
    storage.Set(KEY, b"v", T0 - 50, HOUR)
    storage.Set(KEY, b"v", T0 - 10, HOUR)
    [got] = storage.Get(KEY)
    assert got.created_ns == T0 - 10
    assert datas(storage.Get(KEY, T0 - 20)) == {b"v"}
    storage.Set(KEY, b"v", T0 - 30, HOUR)
    assert storage.Get(KEY)[0].created_ns == T0 - 10


# ---------------------------------------------------------------------------
# Limits (D40)


@_check
def max_values_per_key_refuses_the_extra_value(run: Run) -> None:
    """A full key refuses a new value, still refreshes a held one; other keys are apart."""
    storage = run.new(max_values_per_key=2)
    assert storage.Set(KEY, b"one", T0, HOUR)
    assert storage.Set(KEY, b"two", T0, HOUR)
    before = storage.Get(KEY)
    bytes_before = getattr(storage, "bytes", None)
    assert storage.Set(KEY, b"three", T0, HOUR) is False
    _refused_is(storage, 1)
    assert storage.Get(KEY) == before
    if bytes_before is not None:
        _bytes_are(storage, bytes_before)
    assert storage.Set(KEY, b"one", T0, 2 * HOUR) is True
    _refused_is(storage, 1)
    assert storage.Set(OTHER_KEY, b"three", T0, HOUR) is True
    _refused_is(storage, 1)


@_check
def max_bytes_refuses_the_value_that_would_exceed_it(run: Run) -> None:
    """max_bytes counts key_cost and value_cost; the value over it is refused; expiry frees room."""
    full = key_cost(KEY) + 2 * value_cost(b"0123456789")
    storage = run.new(max_bytes=full)
    assert storage.Set(KEY, b"0123456789", 0, 100)
    assert storage.Set(KEY, b"abcdefghij", 0, HOUR)
    _bytes_are(storage, full)
    assert storage.Set(KEY, b"x", 0, HOUR) is False
    assert storage.Set(OTHER_KEY, b"", 0, HOUR) is False  # even an empty value has a cost
    _refused_is(storage, 2)
    assert datas(storage.Get(KEY)) == {b"0123456789", b"abcdefghij"}
    _bytes_are(storage, full)
    run.clock.now += 100  # the first value expires and frees its bytes
    assert storage.Set(KEY, b"klmnopqrst", 0, HOUR) is True
    _bytes_are(storage, full)
    # Exactly full fits: one byte less of room does not.
    storage = run.new(max_bytes=key_cost(KEY) + value_cost(b"abc") - 1)
    assert storage.Set(KEY, b"abc", 0, HOUR) is False
    assert storage.Set(KEY, b"ab", 0, HOUR) is True


@_check
def max_ttl_refuses_a_longer_life(run: Run) -> None:
    """A life here over max_ttl_ns is refused, not cut short; what counts is the life left."""
    storage = run.new(max_ttl_ns=100)
    assert storage.Set(KEY, b"v", 0, HOUR) is False
    assert storage.Set(KEY, b"v", T0, 101) is False
    assert storage.Get(KEY) == []
    assert storage.Set(KEY, b"exactly", T0, 100)
    assert storage.Set(KEY, b"old, little left", T0 - HOUR, HOUR + 50)
    _next_expiry_is(storage, T0 + 50)
    assert storage.Set(OTHER_KEY, b"short", 0, 50)
    assert storage.Get(OTHER_KEY)[0].ttl_ns == 50
    run.clock.now += 100
    assert storage.Get(KEY) == []


# ---------------------------------------------------------------------------
# Delete and Keys (the node's storage shares make room with Delete)


@_check
def delete_removes_one_value(run: Run) -> None:
    """Delete removes one value (True), not one never held (False), and frees bytes and key."""
    storage = run.new()
    deleter = need(storage, "Delete")
    assert storage.Set(KEY, b"a", T0, HOUR)
    assert storage.Set(KEY, b"b", T0, HOUR)
    assert storage.Set(OTHER_KEY, b"a", T0, HOUR)
    assert deleter.Delete(KEY, b"a") is True
    assert datas(storage.Get(KEY)) == {b"b"}
    assert datas(storage.Get(OTHER_KEY)) == {b"a"}
    assert deleter.Delete(KEY, b"a") is False
    assert deleter.Delete(KEY, b"never stored") is False
    assert deleter.Delete(bytes(20), b"b") is False
    _len_is(storage, 2)
    _bytes_are(storage, key_cost(KEY) + value_cost(b"b") + key_cost(OTHER_KEY) + value_cost(b"a"))
    assert deleter.Delete(KEY, b"b") is True
    assert storage.Get(KEY) == []
    _bytes_are(storage, key_cost(OTHER_KEY) + value_cost(b"a"))
    _next_expiry_is(storage, T0 + HOUR)
    if has(storage, "Keys"):
        assert deleter.Keys() == [OTHER_KEY]
    assert [(v.key, v.value) for v in collect(storage)] == [(OTHER_KEY, b"a")]
    # A deleted value may be stored again, as new.
    assert storage.Set(KEY, b"a", T0 - 5, HOUR)
    assert storage.Get(KEY) == [Value(KEY, b"a", HOUR, T0 - 5)]


@_check
def delete_makes_room_under_the_limits(run: Run) -> None:
    """After a Delete, a full key or a full store takes a new value."""
    storage = run.new(max_values_per_key=2, max_bytes=key_cost(KEY) + 2 * value_cost(b"1"))
    deleter = need(storage, "Delete")
    assert storage.Set(KEY, b"1", T0, HOUR)
    assert storage.Set(KEY, b"2", T0, HOUR)
    assert storage.Set(KEY, b"3", T0, HOUR) is False
    assert deleter.Delete(KEY, b"1")
    assert storage.Set(KEY, b"3", T0, HOUR) is True
    assert datas(storage.Get(KEY)) == {b"2", b"3"}
    assert deleter.Delete(KEY, b"2") and deleter.Delete(KEY, b"3")
    _bytes_are(storage, 0)
    assert storage.Set(OTHER_KEY, b"4", T0, HOUR)


@_check
def keys_lists_each_key_once(run: Run) -> None:
    """Keys() lists every key held, once."""
    storage = run.new()
    lister = need(storage, "Keys")
    assert lister.Keys() == []
    keys = [i.to_bytes(20, "big") for i in range(50)]
    for key in keys:
        assert storage.Set(key, b"a", T0, HOUR)
        assert storage.Set(key, b"b", T0, HOUR)
    got = lister.Keys()
    assert sorted(got) == keys and all(type(key) is bytes for key in got)


# ---------------------------------------------------------------------------
# Iterate (D35)


@_check
def iterate_visits_every_unexpired_value(run: Run) -> None:
    """Iterate hands out each unexpired value with its fields, and no expired one."""
    storage = run.new()
    storage.Set(KEY, b"a", 0, HOUR)
    storage.Set(KEY, b"b", T0 - 7, HOUR)
    storage.Set(OTHER_KEY, b"c", 0, HOUR)
    storage.Set(OTHER_KEY, b"gone", 0, 5)
    run.clock.now += 5
    seen = collect(storage)
    assert sorted(seen, key=lambda v: (v.key, v.value)) == [
        Value(KEY, b"a", HOUR, 0),
        Value(KEY, b"b", HOUR, T0 - 7),
        Value(OTHER_KEY, b"c", HOUR, 0),
    ]


@_check
def iterate_visits_every_value_once_among_many(run: Run) -> None:
    """Iterate visits each of 6,000 values under 3,000 keys exactly once."""
    storage = run.new()
    keys = [i.to_bytes(20, "big") for i in range(3000)]
    for key in keys:
        storage.Set(key, b"a", 0, HOUR)
        storage.Set(key, b"b", 0, HOUR)
    seen = sorted((v.key, v.value) for v in collect(storage))
    assert seen == [(key, data) for key in keys for data in (b"a", b"b")]


@_check
def iterate_stops_when_fn_returns_false(run: Run) -> None:
    """Iterate stops at the first False from fn."""
    storage = run.new()
    for i in range(5):
        storage.Set(KEY, bytes([i]), 0, HOUR)
    calls: list[Value] = []

    def fn(value: Value) -> bool:
        calls.append(value)
        return len(calls) < 2

    storage.Iterate(fn)
    assert len(calls) == 2
    storage.Iterate(lambda value: False)
    storage.Iterate(lambda value: True)


@_check
def iterate_callback_may_use_the_store(run: Run) -> None:
    """fn may call Get and Set (no lock is held around it), also after stopping early."""
    storage = run.new()
    storage.Set(KEY, b"a", 0, HOUR)
    storage.Set(KEY, b"b", 0, HOUR)
    results: dict[str, object] = {}

    def fn(value: Value) -> bool:
        results["get"] = datas(storage.Get(value.key))
        results["set"] = storage.Set(OTHER_KEY, b"written during iterate", 0, HOUR)
        return False

    def body() -> None:
        storage.Iterate(fn)
        results["after"] = storage.Set(KEY, b"c", 0, HOUR)
        results["get after"] = datas(storage.Get(KEY))

    _in_thread(body, "Iterate with a callback using the store")
    assert results == {
        "get": {b"a", b"b"},
        "set": True,
        "after": True,
        "get after": {b"a", b"b", b"c"},
    }
    assert datas(storage.Get(OTHER_KEY)) == {b"written during iterate"}


@_check
def concurrent_calls_from_several_threads(run: Run) -> None:
    """Set, Get, Iterate (and Delete, expire) from 4 threads at once lose and corrupt nothing."""
    storage = run.new()
    per_thread = 300
    errors: list[BaseException] = []
    start = threading.Barrier(4, timeout=THREAD_WAIT)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                key = bytes([n]) * 10 + i.to_bytes(10, "big")
                assert storage.Set(key, b"value %d" % i, T0, HOUR)
                assert storage.Set(key, b"doomed", T0, HOUR)
                assert datas(storage.Get(key)) >= {b"value %d" % i}
                if has(storage, "Delete"):
                    assert need(storage, "Delete").Delete(key, b"doomed")
                if i % 100 == 0:
                    collect(storage)
                    if has(storage, "expire"):
                        need(storage, "expire").expire()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_WAIT)
        assert not thread.is_alive(), f"a thread did not finish within {THREAD_WAIT} s"
    if errors:
        raise errors[0]
    expected = {
        (bytes([n]) * 10 + i.to_bytes(10, "big"), b"value %d" % i)
        for n in range(4)
        for i in range(per_thread)
    }
    held = {(v.key, v.value) for v in collect(storage)}
    if has(storage, "Delete"):
        assert held == expected
        _len_is(storage, len(expected))
        _bytes_are(storage, sum(key_cost(k) + value_cost(v) for k, v in expected))
    else:
        assert held >= expected


# ---------------------------------------------------------------------------
# Persistence (storages that keep values across a restart)


@_check
def values_survive_a_reopen(run: Run) -> None:
    """Reopened, the store holds the same values, created, ttl and expiry; limits count them."""
    storage = run.new(max_values_per_key=3)
    assert storage.Set(KEY, b"a", T0 - 400, 1000)  # expires at T0 + 600
    assert storage.Set(KEY, b"b", 0, HOUR)
    assert storage.Set(OTHER_KEY, b"c", T0 - 7, HOUR)
    assert storage.Set(OTHER_KEY, b"gone", 0, 10)
    bytes_before = getattr(storage, "bytes", None)
    run.clock.now += 5
    storage = run.reopen(storage)
    assert sorted(storage.Get(KEY), key=lambda v: v.value) == [
        Value(KEY, b"a", 1000, T0 - 400),
        Value(KEY, b"b", HOUR, 0),
    ]
    assert datas(storage.Get(OTHER_KEY, T0 - 7)) == {b"c"}
    assert datas(storage.Get(OTHER_KEY)) == {b"c", b"gone"}
    if bytes_before is not None:
        _bytes_are(storage, bytes_before)
    _len_is(storage, 4)
    _next_expiry_is(storage, T0 + 10)
    # The expiry is the one given before the restart, not a new one.
    run.clock.now = T0 + 599
    assert datas(storage.Get(KEY)) == {b"a", b"b"}
    run.clock.now = T0 + 600
    assert datas(storage.Get(KEY)) == {b"b"}
    assert datas(storage.Get(OTHER_KEY)) == {b"c"}
    # Limits count what was stored before the restart; a refresh is one copy.
    run.clock.now = T0
    storage = run.reopen(storage)
    assert storage.Set(KEY, b"d", T0, HOUR)
    assert storage.Set(KEY, b"e", T0, HOUR) is False
    assert storage.Set(KEY, b"b", T0, 2 * HOUR)
    assert sorted(v.value for v in storage.Get(KEY)) == [b"a", b"b", b"d"]


@_check
def expired_values_are_purged_on_reopen_or_by_expire(run: Run) -> None:
    """Values that expired while the store was closed are never handed out, and go."""
    storage = run.new()
    assert storage.Set(KEY, b"short", 0, 100)
    assert storage.Set(OTHER_KEY, b"long", 0, HOUR)
    run.clock.now += 100
    storage = run.reopen(storage)
    assert storage.Get(KEY) == []
    assert [v.value for v in collect(storage)] == [b"long"]
    if has(storage, "expire"):
        need(storage, "expire").expire()
    _len_is(storage, 1)
    _bytes_are(storage, key_cost(OTHER_KEY) + value_cost(b"long"))
    if has(storage, "Keys"):
        assert need(storage, "Keys").Keys() == [OTHER_KEY]


CHECKS: tuple[Check, ...] = tuple(_checks)
"""Every check, in the order above."""
