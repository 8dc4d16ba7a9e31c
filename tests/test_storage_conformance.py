"""The storage conformance suite (dht.conformance) against every storage
shipped, and the suite itself: it skips what a storage lacks and names
what a broken one gets wrong."""

from __future__ import annotations

import itertools
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dht
from dht import conformance
from dht.conformance import CHECKS, Check, ConformanceError, NotApplicable, Subject
from dht.core.storage import MemoryStorage, Storage
from dht.sqlite_storage import SQLiteStorage
from dht.wire.events import Value


def memory_subject(tmp_path: Path) -> Subject:
    return Subject(lambda clock_ns, **limits: MemoryStorage(clock_ns=clock_ns, **limits))


def sqlite_subject(tmp_path: Path) -> Subject:
    names = itertools.count()

    def make(clock_ns: Callable[[], int], **limits: Any) -> SQLiteStorage:
        return SQLiteStorage(tmp_path / f"{next(names)}.db", clock_ns=clock_ns, **limits)

    def reopen(storage: Storage, clock_ns: Callable[[], int]) -> SQLiteStorage:
        assert isinstance(storage, SQLiteStorage)
        storage.close()
        return SQLiteStorage(
            storage.path,
            clock_ns=clock_ns,
            max_values_per_key=storage.max_values_per_key,
            max_bytes=storage.max_bytes,
            max_ttl_ns=storage.max_ttl_ns,
        )

    return Subject(make, reopen)


SUBJECTS = {"MemoryStorage": memory_subject, "SQLiteStorage": sqlite_subject}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("check", CHECKS, ids=str)
@pytest.mark.parametrize("storage", list(SUBJECTS))
def test_conformance(storage: str, check: Check, tmp_path: Path) -> None:
    subject = SUBJECTS[storage](tmp_path)
    if storage == "MemoryStorage" and check.name in PERSISTENCE:
        with pytest.raises(NotApplicable):
            check(subject)
        return
    check(subject)


PERSISTENCE = {"values_survive_a_reopen", "expired_values_are_purged_on_reopen_or_by_expire"}


# ---------------------------------------------------------------------------
# The suite itself


@pytest.mark.timeout(60)
def test_check_storage_runs_every_check_and_reports_skips(tmp_path: Path) -> None:
    outcomes = conformance.check_storage(
        lambda clock_ns, **limits: MemoryStorage(clock_ns=clock_ns, **limits)
    )
    assert list(outcomes) == [check.name for check in CHECKS]
    assert {name for name, outcome in outcomes.items() if outcome != "passed"} == PERSISTENCE
    assert all(outcomes[name].startswith("skipped: ") for name in PERSISTENCE)


def test_every_check_is_named_and_documented() -> None:
    names = [check.name for check in CHECKS]
    assert len(names) == len(set(names)) >= 30
    assert all(check.doc for check in CHECKS)
    assert issubclass(NotApplicable, unittest.SkipTest)
    assert issubclass(ConformanceError, AssertionError)


class Minimal:
    """Only the three methods of the protocol, no limits, no extras."""

    def __init__(self, clock_ns: Callable[[], int]) -> None:
        self._inner = MemoryStorage(clock_ns=clock_ns)

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        return self._inner.Get(key, from_ns)

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        return self._inner.Set(key, value, created_ns, ttl_ns)

    def Iterate(self, fn: Callable[[Value], bool]) -> None:
        self._inner.Iterate(fn)


@pytest.mark.timeout(60)
def test_a_minimal_storage_passes_what_applies_and_skips_the_rest() -> None:
    outcomes = conformance.check_storage(lambda clock_ns: Minimal(clock_ns), limits=False)
    passed = {name for name, outcome in outcomes.items() if outcome == "passed"}
    skipped = set(outcomes) - passed
    assert {
        "several_values_per_key_deduplicated_by_bytes",
        "get_from_filters_each_value_by_created",
        "iterate_callback_may_use_the_store",
        "concurrent_calls_from_several_threads",
    } <= passed
    assert {
        "max_bytes_refuses_the_value_that_would_exceed_it",
        "delete_removes_one_value",
        "expire_on_empty_store",
        "keys_lists_each_key_once",
        "set_sweeps_expired_values",
        *PERSISTENCE,
    } <= skipped
    assert "takes no limits" in outcomes["max_ttl_refuses_a_longer_life"]
    assert "has no Delete" in outcomes["delete_removes_one_value"]


class Forgetful(Minimal):
    """Broken on purpose: keeps a second copy of a value stored twice, and
    ignores ``from_ns``."""

    def __init__(self, clock_ns: Callable[[], int]) -> None:
        super().__init__(clock_ns)
        self._copies: dict[bytes, list[Value]] = {}

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        return self._inner.Get(key) + self._copies.get(key, [])

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        if self._inner.Get(key) and any(v.value == value for v in self._inner.Get(key)):
            self._copies.setdefault(key, []).append(Value(key, value, ttl_ns, created_ns))
            return True
        return self._inner.Set(key, value, created_ns, ttl_ns)


@pytest.mark.timeout(60)
def test_a_broken_storage_fails_the_checks_it_breaks() -> None:
    with pytest.raises(ConformanceError) as raised:
        conformance.check_storage(lambda clock_ns: Forgetful(clock_ns), limits=False)
    failed = set(raised.value.failures)
    assert {
        "several_values_per_key_deduplicated_by_bytes",
        "get_from_filters_each_value_by_created",
        "re_set_takes_the_newer_created",
    } <= failed
    assert "get_returns_the_stored_fields" not in failed
    assert "several_values_per_key_deduplicated_by_bytes" in str(raised.value)


@pytest.mark.timeout(60)
def test_a_check_closes_the_storages_it_made(tmp_path: Path) -> None:
    made: list[SQLiteStorage] = []

    def make(clock_ns: Callable[[], int], **limits: Any) -> SQLiteStorage:
        made.append(SQLiteStorage(tmp_path / f"{len(made)}.db", clock_ns=clock_ns, **limits))
        return made[-1]

    by_name = {check.name: check for check in CHECKS}
    by_name["a_created_time_far_in_the_future_is_taken_as_now"](Subject(make))
    assert len(made) == 3 and all(storage.closed for storage in made)
    assert isinstance(made[0], dht.Storage)
