"""SQLiteStorage beyond the conformance suite (tests/test_storage_conformance.py):
the file, its errors, a crash mid-burst (SIGKILL), and a real node restarted
on the same file finding its values again.

Every wait is bounded by a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from cluster import RefusingStorage, add_node, wait_until

import dht
from dht.conformance import FakeClock
from dht.core.storage import ITERATE_CHUNK, key_cost, value_cost
from dht.keys import INT64_MAX, INT64_MIN, random_id
from dht.sqlite_storage import SCHEMA_VERSION, SQLiteStorage, StoragePathError
from dht.wire.events import Value

T0 = 1_700_000_000 * 10**9
HOUR = 3600 * 10**9
KEY = bytes(range(20))
RESULT = 10.0
"""Longest wait for one Store/Find to end."""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "values.db"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


# ---------------------------------------------------------------------------
# The file


@pytest.mark.timeout(30)
def test_the_file_is_in_wal_mode_with_the_chosen_synchronous(path: Path) -> None:
    for synchronous, level in (("NORMAL", 1), ("FULL", 2)):
        with SQLiteStorage(path, synchronous=synchronous) as storage:  # type: ignore[arg-type]
            db = storage._db
            assert db is not None
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("PRAGMA synchronous").fetchone() == (level,)
            assert storage.synchronous == synchronous
    with pytest.raises(dht.ArgumentError, match="synchronous"):
        SQLiteStorage(path, synchronous="OFF")  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_close_is_idempotent_and_later_calls_raise_closed_error(path: Path) -> None:
    storage = SQLiteStorage(path)
    assert storage.Set(KEY, b"v", 0, HOUR)
    assert not storage.closed
    with storage:
        pass
    assert storage.closed
    storage.close()
    assert "closed" in repr(storage)
    with pytest.raises(dht.ClosedError):
        storage.Get(KEY)
    with pytest.raises(dht.ClosedError):
        storage.Set(KEY, b"w", 0, HOUR)
    with pytest.raises(dht.ClosedError):
        len(storage)
    with pytest.raises(dht.ClosedError):
        storage.Iterate(lambda value: True)


@pytest.mark.timeout(30)
def test_default_clock_is_wall_time(path: Path) -> None:
    with SQLiteStorage(path) as storage:
        before = time.time_ns()
        assert storage.Set(KEY, b"v", 0, HOUR)
        after = time.time_ns()
        expiry = storage.next_expiry_ns()
        assert expiry is not None and before + HOUR <= expiry <= after + HOUR


@pytest.mark.timeout(30)
def test_memory_database_works_and_keeps_nothing(clock: FakeClock) -> None:
    with SQLiteStorage(":memory:", clock_ns=clock) as storage:
        assert storage.Set(KEY, b"v", T0, HOUR)
        assert storage.Get(KEY) == [Value(KEY, b"v", HOUR, T0)]


@pytest.mark.timeout(30)
def test_largest_values_and_odd_times_round_trip(path: Path, clock: FakeClock) -> None:
    big = os.urandom(32 * 1024)
    with SQLiteStorage(path, clock_ns=clock) as storage:
        assert storage.Set(KEY, big, T0, HOUR)
        assert storage.Set(KEY, big[:-1], -5, HOUR)
    with SQLiteStorage(path, clock_ns=clock) as storage:
        assert storage.Get(KEY) == [Value(KEY, big, HOUR, T0), Value(KEY, big[:-1], HOUR, -5)]
        assert storage.bytes == key_cost(KEY) + value_cost(big) + value_cost(big[:-1])


@pytest.mark.timeout(30)
def test_times_outside_64_bits_are_refused_and_the_longest_ttl_is_kept(
    path: Path, clock: FakeClock
) -> None:
    with SQLiteStorage(path, clock_ns=clock) as storage:
        assert storage.Set(KEY, b"a", INT64_MAX + 1, HOUR) is False
        assert storage.Set(KEY, b"b", INT64_MIN - 1, HOUR) is False
        assert storage.Set(KEY, b"c", 0, INT64_MAX + 1) is False
        # now + ttl overflows 64 bits: the expiry is capped, the ttl kept.
        assert storage.Set(KEY, b"forever", 0, INT64_MAX)
        assert storage.Get(KEY) == [Value(KEY, b"forever", INT64_MAX, 0)]
        assert storage.next_expiry_ns() == INT64_MAX
        assert storage.Get(KEY, INT64_MAX + 1) == []


@pytest.mark.timeout(30)
def test_iterate_reads_a_chunk_at_a_time_so_values_expiring_meanwhile_are_skipped(
    path: Path, clock: FakeClock
) -> None:
    with SQLiteStorage(path, clock_ns=clock) as storage:
        for i in range(3 * ITERATE_CHUNK):
            storage.Set(i.to_bytes(20, "big"), b"v", 0, 10)
        seen: list[Value] = []

        def fn(value: Value) -> bool:
            clock.now = T0 + 10  # every value has expired once the first is seen
            seen.append(value)
            return True

        storage.Iterate(fn)
        assert len(seen) == ITERATE_CHUNK


@pytest.mark.timeout(30)
def test_the_running_byte_total_matches_a_recount_after_reopening(
    path: Path, clock: FakeClock
) -> None:
    with SQLiteStorage(path, clock_ns=clock) as storage:
        for i in range(300):
            storage.Set((i % 37).to_bytes(20, "big"), b"x" * (i % 11), 0, (i % 5 + 1) * 100)
        for i in range(0, 37, 3):
            storage.Delete(i.to_bytes(20, "big"), b"")
        clock.now += 250
        storage.Set(KEY, b"after the sweep", 0, HOUR)
        running, count = storage.bytes, len(storage)
        held = [(k, v.value) for k in storage.Keys() for v in storage.Get(k)]
    assert running == sum(key_cost(k) for k in {k for k, _ in held}) + sum(
        value_cost(v) for _, v in held
    )
    with SQLiteStorage(path, clock_ns=clock) as storage:
        assert (storage.bytes, len(storage)) == (running, count)


# ---------------------------------------------------------------------------
# Unusable paths


@pytest.mark.timeout(30)
def test_unusable_paths_raise_storage_path_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database " * 400)
    cases = {
        tmp_path / "missing" / "values.db": "unable to open",
        tmp_path: "unable to open",
        junk: "not a database",
    }
    for bad, problem in cases.items():
        with pytest.raises(StoragePathError, match=problem) as raised:
            SQLiteStorage(bad)
        assert isinstance(raised.value, dht.ArgumentError)
        assert raised.value.path == str(bad)
        assert problem in raised.value.problem


@pytest.mark.timeout(30)
def test_a_file_in_use_by_another_storage_is_refused(path: Path) -> None:
    with SQLiteStorage(path) as storage:
        assert storage.Set(KEY, b"mine", 0, HOUR)
        with pytest.raises(StoragePathError, match="in use by another"):
            SQLiteStorage(path)
        assert [v.value for v in storage.Get(KEY)] == [b"mine"]
    with SQLiteStorage(path) as storage:  # free once closed
        assert [v.value for v in storage.Get(KEY)] == [b"mine"]


@pytest.mark.timeout(30)
def test_a_file_of_another_schema_version_is_refused(path: Path) -> None:
    SQLiteStorage(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE dht_meta SET value = ? WHERE name = 'schema'", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(StoragePathError, match="schema version"):
        SQLiteStorage(path)


# ---------------------------------------------------------------------------
# A crash mid-burst loses nothing acknowledged

CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from dht.sqlite_storage import SQLiteStorage

    storage = SQLiteStorage(sys.argv[1])
    first, threads = int(sys.argv[2]), 2
    out = threading.Lock()

    def burst(n):
        i = first + n
        while True:
            created = time.time_ns()
            value = b"value %d;" % i * (1 + i % 40)
            if storage.Set(i.to_bytes(20, "big"), value, created, 3600 * 10**9):
                with out:
                    sys.stdout.write(f"{i} {created}\\n")
                    sys.stdout.flush()
            i += threads

    for n in range(threads):
        threading.Thread(target=burst, args=(n,), daemon=True).start()
    threading.Event().wait()
    """
)


def child_value(i: int) -> bytes:
    """What the child stores under key ``i`` (as CHILD computes it)."""
    return b"value %d;" % i * (1 + i % 40)


def acknowledgements(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The child's lines as they come, then None at the end of its output."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.timeout(90)
def test_sigkill_during_a_store_burst_loses_no_acknowledged_value(path: Path) -> None:
    """A child process stores from two threads and prints each key once its
    Set returned True; it is killed with SIGKILL part-way, three times over
    the same file. Every acknowledged value is in the file, as stored."""
    acknowledged: dict[int, int] = {}
    deadline = time.monotonic() + 60

    def record(line: str) -> None:
        i, created = map(int, line.split())
        acknowledged[i] = created

    for round_, kill_after in enumerate((150, 400, 700)):
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(round_ * 1_000_000)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            lines = acknowledgements(proc)
            try:
                for _ in range(kill_after):
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                    if line is None:
                        proc.wait(timeout=30)
                        assert proc.stderr is not None
                        pytest.fail(f"the child ended: {proc.stderr.read()}")
                    record(line)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            while (line := lines.get(timeout=30)) is not None:  # printed before the kill
                record(line)
        with SQLiteStorage(path) as storage:
            missing = [i for i in acknowledged if not storage.Get(i.to_bytes(20, "big"))]
            assert not missing, f"{len(missing)} acknowledged values lost, e.g. {missing[:5]}"
            for i, created in acknowledged.items():
                key = i.to_bytes(20, "big")
                assert storage.Get(key) == [
                    Value(key, b"value %d;" % i * (1 + i % 40), HOUR, created)
                ]
            assert len(storage) >= len(acknowledged)  # one more may be committed, not printed
            assert storage.bytes <= len(storage) * (key_cost(KEY) + value_cost(b"x" * 400))
    assert len(acknowledged) >= 150 + 400 + 700


# ---------------------------------------------------------------------------
# A real node restarted on the same file


@pytest.mark.timeout(60)
def test_a_node_restarted_on_its_file_serves_its_values_again(path: Path) -> None:
    holder_id = random_id()
    keys = [random_id() for _ in range(4)]
    with ExitStack() as first_run:
        other = first_run.enter_context(add_node(None))
        storage = first_run.enter_context(SQLiteStorage(path))
        holder = first_run.enter_context(add_node(other, local_id=holder_id, storage=storage))
        for i, key in enumerate(keys):
            holder.Store(key, b"persistent %d" % i, 600).result(timeout=RESULT)
        holder.Store(keys[0], b"second value", 600).result(timeout=RESULT)
        stored = {key: storage.Get(key) for key in keys}
        assert all(stored.values()) and holder.stats().get("storage-error", 0) == 0
    # Every node of the first run is closed, the file with them: what is found
    # now comes from the file.
    with ExitStack() as second_run:
        storage = second_run.enter_context(SQLiteStorage(path))
        assert {key: storage.Get(key) for key in keys} == stored  # created and ttl kept
        restarted = second_run.enter_context(add_node(None, local_id=holder_id, storage=storage))
        observer = second_run.enter_context(add_node(restarted, storage=RefusingStorage()))
        third = second_run.enter_context(add_node(restarted))
        assert wait_until(
            lambda: (
                observer.stats()["routing-table-size"] == 2
                and restarted.stats()["routing-table-size"] == 2
            ),
            RESULT,
        )
        for i, key in enumerate(keys):
            found = observer.Find(key).result(timeout=RESULT)
            expected = {b"persistent %d" % i} | ({b"second value"} if i == 0 else set())
            assert set(found) == expected and len(found) == len(expected)
        created = max(v.created_ns for v in stored[keys[0]])
        from_newest = dht.ValuesFrom(created / 1e9 - 1e-6)
        later = [v.value for v in stored[keys[0]] if v.created_ns >= from_newest.from_ns]
        assert sorted(observer.Find(keys[0], None, from_newest).result(timeout=RESULT)) == sorted(
            later
        )
        assert restarted.Find(keys[1]).result(timeout=RESULT) == [b"persistent 1"]
        # It keeps storing on the same file (the observer refuses, the third keeps).
        restarted.Store(keys[1], b"after the restart", 600).result(timeout=RESULT)
        assert {v.value for v in storage.Get(keys[1])} == {b"persistent 1", b"after the restart"}
        assert {v.value for v in third._engine.storage.Get(keys[1])} >= {b"after the restart"}
