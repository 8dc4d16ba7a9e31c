"""SQLiteStorage: a ``Storage`` kept in an SQLite file, so a node's values
survive a restart (standard library ``sqlite3`` only).

The semantics are ``MemoryStorage``'s, checked by the same conformance suite
(``dht.conformance``): several values per key, de-duplicated by their bytes
(a value stored again is refreshed), expiry ``ttl`` after ``created`` or
after arrival if sooner (D34), ``created`` far in the future taken as now,
``ValuesFrom`` filtering by ``created``, and the limits ``max_values_per_key``,
``max_bytes`` (counted with ``key_cost`` and ``value_cost``, so a node's
storage shares fill the same way on either store) and ``max_ttl_ns``.

One table holds the values; ``expires_ns`` is indexed, so ``expire()`` and
the sweep at each ``Set`` delete what is due without scanning the rest. The
file is opened in WAL mode with ``locking_mode=EXCLUSIVE``: one
``SQLiteStorage`` owns a file at a time (a second one, in this process or
another, fails with ``StoragePathError``), which is what makes its running
byte and value counts true.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from .core.storage import (
    ITERATE_CHUNK,
    KEY_BOOKKEEPING,
    VALUE_BOOKKEEPING,
    created_here,
    expires_ns,
    key_cost,
    value_cost,
)
from .errors import ArgumentError, ClosedError
from .keys import INT64_MAX, INT64_MIN
from .wire.events import Value

SCHEMA_VERSION = 1
"""The layout of the tables below, kept in ``dht_meta``; a file of another
version is refused rather than misread."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dht_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # A value is found by its key and the SHA-256 of its bytes: the unique
    # index holds 52 bytes per value instead of a copy of up to 32 KiB.
    "CREATE TABLE IF NOT EXISTS dht_values ("
    " id INTEGER PRIMARY KEY,"
    " key BLOB NOT NULL,"
    " digest BLOB NOT NULL,"
    " value BLOB NOT NULL,"
    " created_ns INTEGER NOT NULL,"
    " ttl_ns INTEGER NOT NULL,"
    " expires_ns INTEGER NOT NULL,"
    " UNIQUE (key, digest))",
    "CREATE INDEX IF NOT EXISTS dht_values_expires ON dht_values (expires_ns)",
)

BUSY_TIMEOUT = 1.0
"""Seconds ``SQLiteStorage`` waits for a lock another connection holds (a
second opener waits this long, then fails)."""


class StoragePathError(ArgumentError):
    """``SQLiteStorage`` cannot use ``path``: it cannot be opened or created,
    is not an SQLite database, holds tables of another schema version, or is
    in use by another ``SQLiteStorage``. ``problem`` says which."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"SQLiteStorage({path!r}): {problem}")
        self.path = path
        self.problem = problem


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class SQLiteStorage:
    """A ``Storage`` in an SQLite file: values with their ``created``, ttl and
    expiry survive a restart (expired ones are purged on opening and by
    ``expire()``), with the semantics and limits of ``MemoryStorage``.

    Durability: a ``Set`` (or ``Delete``) that returned is committed. The
    file is in WAL mode; with ``synchronous="NORMAL"`` (the default) a commit
    is written to the WAL file but not fsynced, so it survives the process
    being killed (SIGKILL included: the data is in the kernel) but not a
    power loss or an OS crash, which may lose the last commits (never corrupt
    the file). ``synchronous="FULL"`` fsyncs every commit and survives those
    too, at the price of one fsync per stored value on the thread that
    stores it (a listener thread, for values from the network).

    Thread-safe: one connection, used under one lock by the listener
    threads, the worker thread and the user's. SQLite serialises writers
    anyway, and a point query takes a few microseconds, far less than the
    Python around it. ``Iterate`` holds the lock for one chunk of
    ``ITERATE_CHUNK`` values at a time and calls ``fn`` without it.

    ``path`` is a file name (created if missing) or ``":memory:"`` (nothing
    persists; for tests). The knobs are ``MemoryStorage``'s: ``clock_ns``
    (nanoseconds since the Unix epoch; ``time.time_ns`` by default, the
    clock a node gives its default storage), ``max_values_per_key``,
    ``max_bytes`` and ``max_ttl_ns``. A node does not pass its ``Config``
    limits to a storage it is given: pass the same ones here. Values
    already in the file are kept on opening even beyond smaller limits;
    new ones are refused until there is room. Times outside 64 bits (which
    the wire cannot carry) are refused.

    Raises ``StoragePathError`` (a ``dht.ArgumentError``) if ``path`` cannot
    be used. After ``close()`` every method raises ``dht.ClosedError``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock_ns: Callable[[], int] | None = None,
        max_values_per_key: int = 64,
        max_bytes: int = 256 * 1024 * 1024,
        max_ttl_ns: int | None = None,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ArgumentError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = os.fspath(path)
        self._clock_ns = clock_ns or time.time_ns
        self.max_values_per_key = max_values_per_key
        self.max_bytes = max_bytes
        self.max_ttl_ns = max_ttl_ns
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self.bytes = 0
        """Bytes held: ``key_cost`` of each key plus ``value_cost`` of each
        value, kept as values come and go (summed once, on opening)."""
        self.refused = 0
        """Values refused by the limits since opening."""
        self._count = 0
        self._next_expiry: int | None = None  # at or before the earliest expiry
        self._db: sqlite3.Connection | None = self._open()

    # -- opening -------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise StoragePathError(self.path, str(error)) from error
        try:
            # Exclusive before WAL: the lock is held from the first write to
            # close, and no shared-memory index is needed.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal" and self.path != ":memory:":
                raise StoragePathError(self.path, f"cannot use WAL mode (journal_mode={mode})")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO dht_meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            (version,) = db.execute("SELECT value FROM dht_meta WHERE name = 'schema'").fetchone()
            if version != SCHEMA_VERSION:
                raise StoragePathError(
                    self.path, f"schema version {version}, this library reads {SCHEMA_VERSION}"
                )
            self._load_totals(db)
            removed, freed = self._sweep(db, self._clock_ns())
            db.execute("COMMIT")
        except BaseException as error:
            db.close()
            if isinstance(error, sqlite3.Error):
                problem = str(error)
                if isinstance(error, sqlite3.OperationalError) and "locked" in problem:
                    problem += " (in use by another SQLiteStorage?)"
                raise StoragePathError(self.path, problem) from error
            raise
        self._count -= removed
        self.bytes -= freed
        self._next_expiry = self._earliest(db)
        return db

    def _load_totals(self, db: sqlite3.Connection) -> None:
        count, value_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM dht_values"
        ).fetchone()
        keys, key_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(key)), 0)"
            " FROM (SELECT DISTINCT key FROM dht_values)"
        ).fetchone()
        self._count = count
        self.bytes = value_bytes + count * VALUE_BOOKKEEPING + key_bytes + keys * KEY_BOOKKEEPING

    # -- the Storage protocol --------------------------------------------------

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        """Unexpired values under ``key`` created at or after ``from_ns``
        (``from_ns <= 0``: all of them), in the order they were first stored."""
        now = self._clock_ns()
        key = bytes(key)
        if from_ns > INT64_MAX:
            return []
        query = "SELECT value, ttl_ns, created_ns FROM dht_values WHERE key = ? AND expires_ns > ?"
        args: tuple[Any, ...] = (key, min(now, INT64_MAX))
        if from_ns > 0:
            query += " AND created_ns >= ?"
            args += (from_ns,)
        with self._lock:
            rows = self._connection().execute(query + " ORDER BY id", args).fetchall()
        return [Value(key, data, ttl_ns, created_ns) for data, ttl_ns, created_ns in rows]

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        """Add ``value`` under ``key``, or refresh it if held (a later expiry
        and a newer ``created`` are kept); False if refused. Committed when
        it returns True (see the class docstring on durability)."""
        if ttl_ns <= 0 or ttl_ns > INT64_MAX or not INT64_MIN <= created_ns <= INT64_MAX:
            return False
        now = self._clock_ns()
        expires = expires_ns(created_ns, ttl_ns, now)
        if expires <= now or (self.max_ttl_ns is not None and expires - now > self.max_ttl_ns):
            return False  # a longer life was refused, not cut short: the sender learns it
        expires = min(expires, INT64_MAX)
        created_ns = created_here(created_ns, now)
        key = bytes(key)
        value = bytes(value)
        digest = _digest(value)
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                removed, freed = self._sweep(db, now)
                row = db.execute(
                    "SELECT id, value, created_ns, ttl_ns, expires_ns FROM dht_values"
                    " WHERE key = ? AND digest = ?",
                    (key, digest),
                ).fetchone()
                added = size = 0
                if row is not None:  # refresh (D41)
                    row_id, held, held_created, held_ttl, held_expires = row
                    kept = bool(held == value)  # else one SHA-256 for two values: refuse
                    if kept and (expires > held_expires or created_ns > held_created):
                        if expires <= held_expires:
                            ttl_ns, expires = held_ttl, held_expires
                        db.execute(
                            "UPDATE dht_values SET created_ns = ?, ttl_ns = ?, expires_ns = ?"
                            " WHERE id = ?",
                            (max(created_ns, held_created), ttl_ns, expires, row_id),
                        )
                else:
                    (under_key,) = db.execute(
                        "SELECT COUNT(*) FROM dht_values WHERE key = ?", (key,)
                    ).fetchone()
                    size = value_cost(value) + (0 if under_key else key_cost(key))
                    kept = under_key < self.max_values_per_key and (
                        self.bytes - freed + size <= self.max_bytes
                    )
                    if kept:
                        db.execute(
                            "INSERT INTO dht_values"
                            " (key, digest, value, created_ns, ttl_ns, expires_ns)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            (key, digest, value, created_ns, ttl_ns, expires),
                        )
                        added = 1
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._count += added - removed
            self.bytes += (size if added else 0) - freed
            if removed:
                self._next_expiry = self._earliest(db)
            if added and (self._next_expiry is None or expires < self._next_expiry):
                self._next_expiry = expires
            if not kept:
                self.refused += 1
            return kept

    def Iterate(self, fn: Callable[[Value], bool]) -> None:
        """Call ``fn`` for each value held, reading about ``ITERATE_CHUNK``
        values per hold of the lock (``fn`` runs without it, so it may call
        Get and Set). Values stored meanwhile may be missed or seen; values
        expired meanwhile are not handed out."""
        last = -1
        while True:
            now = min(self._clock_ns(), INT64_MAX)
            with self._lock:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT id, key, value, ttl_ns, created_ns FROM dht_values"
                        " WHERE id > ? AND expires_ns > ? ORDER BY id LIMIT ?",
                        (last, now, ITERATE_CHUNK),
                    )
                    .fetchall()
                )
            for _, key, data, ttl_ns, created_ns in rows:
                if not fn(Value(key, data, ttl_ns, created_ns)):
                    return
            if len(rows) < ITERATE_CHUNK:
                return
            last = rows[-1][0]

    # -- beyond the protocol ---------------------------------------------------------

    def Delete(self, key: bytes, value: bytes) -> bool:
        """Remove one value; False if it was not held. Committed when it returns."""
        key = bytes(key)
        value = bytes(value)
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                deleted = db.execute(
                    "DELETE FROM dht_values WHERE key = ? AND digest = ? AND value = ?",
                    (key, _digest(value), value),
                ).rowcount
                emptied = deleted and not self._holds(db, key)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if not deleted:
                return False
            self._count -= 1
            self.bytes -= value_cost(value) + (key_cost(key) if emptied else 0)
            return True

    def Keys(self) -> list[bytes]:
        """The keys held now (some values under them may have expired)."""
        with self._lock:
            rows = self._connection().execute("SELECT DISTINCT key FROM dht_values").fetchall()
        return [key for (key,) in rows]

    def expire(self) -> int:
        """Delete expired values (and so keys left empty); return how many."""
        now = self._clock_ns()
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                removed, freed = self._sweep(db, now)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._count -= removed
            self.bytes -= freed
            if removed:
                self._next_expiry = self._earliest(db)
            return removed

    def next_expiry_ns(self) -> int | None:
        """When the next value expires, or None if the store is empty."""
        with self._lock:
            return self._earliest(self._connection())

    def __len__(self) -> int:
        """Number of values held (expired ones included until swept)."""
        with self._lock:
            self._connection()
            return self._count

    def close(self) -> None:
        """Close the file (checkpointing the WAL into it). Idempotent."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> SQLiteStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else f"{self._count} values, {self.bytes} bytes"
        return f"SQLiteStorage({self.path!r}, {state})"

    # -- under the lock ------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError(f"SQLiteStorage({self.path!r}) is closed")
        return self._db

    @staticmethod
    def _earliest(db: sqlite3.Connection) -> int | None:
        earliest: int | None = db.execute("SELECT MIN(expires_ns) FROM dht_values").fetchone()[0]
        return earliest

    @staticmethod
    def _holds(db: sqlite3.Connection, key: bytes) -> bool:
        row = db.execute("SELECT 1 FROM dht_values WHERE key = ? LIMIT 1", (key,)).fetchone()
        return row is not None

    def _sweep(self, db: sqlite3.Connection, now: int) -> tuple[int, int]:
        """Delete the values expired at ``now``, in the caller's transaction;
        return how many and the bytes they (and keys left empty) freed. The
        caller applies them to the counts once the transaction commits."""
        if self._next_expiry is not None and now < self._next_expiry:
            return 0, 0  # nothing due (the usual case): no query at all
        now = min(now, INT64_MAX)
        due = db.execute(
            "SELECT key, LENGTH(value) FROM dht_values WHERE expires_ns <= ?", (now,)
        ).fetchall()
        if not due:
            return 0, 0
        db.execute("DELETE FROM dht_values WHERE expires_ns <= ?", (now,))
        freed = sum(length for _, length in due) + len(due) * VALUE_BOOKKEEPING
        for key in {key for key, _ in due}:
            if not self._holds(db, key):
                freed += key_cost(key)
        return len(due), freed
