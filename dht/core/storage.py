"""Storage: the protocol user-defined stores implement, and the default
in-memory expiring store (PROTOCOL.md 7.11).

Times are integer nanoseconds, as on the wire, so stored values round-trip
exactly: ``created_ns`` since the Unix epoch, ``ttl_ns`` a duration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from sortedcontainers import SortedList

from ..wire.events import NS_PER_SECOND, Value
from . import nodelog

log = nodelog.logger("dht.storage")


@runtime_checkable
class Storage(Protocol):
    """What a node needs from its store. Must be thread-safe: listener threads
    call it concurrently. ``Go`` names, like the rest of the API.

    A method that raises is logged and counted as ``storage-error``, never
    fatal (``GuardedStorage``): a Store counts its local copy as failed, a
    Find asks the network instead, a STORE from the network counts its
    values as refused, and a FIND_VALUE is answered with the closest nodes.

    Optional, found by name: ``expire()``, a sweep run at each refresh, and
    ``Delete(key, value) -> bool``, which removes one value: with it, a full
    store makes room for a network holding less than its fair share by
    displacing values of the network holding most (``dht.core.shares``);
    without it, a full store refuses. ``Iterate`` (key transfer to newly
    seen nodes) and ``expire`` run on the process's worker thread, so a slow
    store holds up no timeout."""

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        """Unexpired values under ``key`` created at or after ``from_ns``
        (``from_ns <= 0``: all of them). An empty list when there are none."""
        ...

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        """Add ``value`` under ``key`` (several values per key are kept). A
        value already stored under the key is refreshed. False if refused."""
        ...

    def Iterate(self, fn: Callable[[Value], bool]) -> None:
        """Call ``fn`` for each stored value until it returns False."""
        ...


class GuardedStorage:
    """The user's storage as the engine calls it: a method that raises is
    logged, reported to ``on_error``, and returns what "nothing" means (no
    values, refused, no iteration)."""

    def __init__(self, storage: Storage, on_error: Callable[[], None]) -> None:
        self.storage = storage
        self._on_error = on_error

    def _failed(self, method: str) -> None:
        self._on_error()
        log.exception("storage %s failed", method)

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        try:
            return self.storage.Get(key, from_ns)
        except Exception:
            self._failed("Get")
            return []

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        try:
            return self.storage.Set(key, value, created_ns, ttl_ns)
        except Exception:
            self._failed("Set")
            return False

    def Iterate(self, fn: Callable[[Value], bool]) -> None:
        try:
            self.storage.Iterate(fn)
        except Exception:
            self._failed("Iterate")

    @property
    def can_delete(self) -> bool:
        """Whether the storage has the optional ``Delete``."""
        return callable(getattr(self.storage, "Delete", None))

    def Delete(self, key: bytes, value: bytes) -> bool:
        try:
            return bool(self.storage.Delete(key, value))  # type: ignore[attr-defined]
        except Exception:
            self._failed("Delete")
            return False

    def expire(self) -> None:
        """The storage's own ``expire()`` sweep, if it has one."""
        expire = getattr(self.storage, "expire", None)
        if callable(expire):
            try:
                expire()
            except Exception:
                self._failed("expire")


CLOCK_SKEW_NS = 60 * NS_PER_SECOND
"""How far ahead of our clock a value's ``created`` may be. A later one is
taken as now: a STORE with ``created`` = INT64_MAX made someone else's value
look new to every ``ValuesFrom`` filter, for good."""


def created_here(created_ns: int, now_ns: int) -> int:
    """``created`` as a node keeps it: one too far ahead of ``now_ns`` is now."""
    return now_ns if created_ns > now_ns + CLOCK_SKEW_NS else created_ns


def expires_ns(created_ns: int, ttl_ns: int, now_ns: int) -> int:
    """When a value received at ``now_ns`` expires: ``ttl`` after it was
    created, or after now if that is sooner or ``created`` is unknown (0),
    so handing a value on does not restart its lifetime (D34)."""
    created = created_here(created_ns, now_ns)
    end = now_ns + ttl_ns
    return min(end, created + ttl_ns) if created > 0 else end


# Bytes MemoryStorage charges per key and per value on top of their lengths:
# what CPython spends on the dicts, the entry and the expiry index (about 250
# each, measured on 3.11). Without them a flood of tiny values used over 150
# times max_bytes.
KEY_BOOKKEEPING = 256
VALUE_BOOKKEEPING = 256


def key_cost(key: bytes) -> int:
    """Bytes a new key counts against ``MemoryStorage.max_bytes``."""
    return len(key) + KEY_BOOKKEEPING


def value_cost(value: bytes) -> int:
    """Bytes a value counts against ``MemoryStorage.max_bytes``."""
    return len(value) + VALUE_BOOKKEEPING


ITERATE_CHUNK = 1024
"""Values ``MemoryStorage.Iterate`` copies per hold of its lock (at most
one key's worth more)."""


class _Entry:
    __slots__ = ("created_ns", "expires_ns", "ttl_ns")

    def __init__(self, created_ns: int, ttl_ns: int, expires_ns: int) -> None:
        self.created_ns = created_ns
        self.ttl_ns = ttl_ns
        self.expires_ns = expires_ns


_NOTHING: dict[bytes, _Entry] = {}


class MemoryStorage:
    """The default ``Storage``: values in memory, expiring after their ttl.

    Several values per key, de-duplicated by their bytes. A value expires
    ``ttl`` after it was created (or after it arrived here, if that is sooner
    or ``created`` is unknown), so handing a value on does not restart its
    lifetime (D34). Expiry times are kept in a sorted
    list, so ``expire`` removes each expired value in O(log n) without
    scanning the live ones (the reference's sweep is inverted, D36). Limits
    bound memory: ``max_values_per_key``, ``max_bytes`` (``key_cost`` and
    ``value_cost``: lengths plus bookkeeping) and
    ``max_ttl_ns`` (the longest a value may live here from now); a value that
    would exceed them is refused, never traded for one already stored.
    ``Delete`` removes one value (the node's storage shares use it to make
    room fairly, ``dht.core.shares``).

    ``clock_ns`` returns the current time in nanoseconds since the Unix
    epoch: a node passes the wall clock it gives its engine, the simulator
    its virtual one (``time.time_ns`` when none is given, for use alone).
    """

    def __init__(
        self,
        *,
        clock_ns: Callable[[], int] | None = None,
        max_values_per_key: int = 64,
        max_bytes: int = 256 * 1024 * 1024,
        max_ttl_ns: int | None = None,
    ) -> None:
        if clock_ns is None:
            import time

            clock_ns = time.time_ns
        self._clock_ns = clock_ns
        self.max_values_per_key = max_values_per_key
        self.max_bytes = max_bytes
        self.max_ttl_ns = max_ttl_ns
        self._lock = threading.Lock()
        self._keys: dict[bytes, dict[bytes, _Entry]] = {}
        self._expiry: SortedList = SortedList()  # (expires_ns, key, value)
        self.bytes = 0
        """Bytes held: ``key_cost`` of each key plus ``value_cost`` of each value."""
        self.refused = 0
        """Values refused by the limits."""

    def Get(self, key: bytes, from_ns: int = 0) -> list[Value]:
        now = self._clock_ns()
        with self._lock:
            values = self._keys.get(key)
            if not values:
                return []
            return [
                Value(key, data, entry.ttl_ns, entry.created_ns)
                for data, entry in values.items()
                if entry.expires_ns > now and (from_ns <= 0 or entry.created_ns >= from_ns)
            ]

    def Set(self, key: bytes, value: bytes, created_ns: int, ttl_ns: int) -> bool:
        if ttl_ns <= 0:
            return False
        now = self._clock_ns()
        expires = expires_ns(created_ns, ttl_ns, now)
        if expires <= now or (self.max_ttl_ns is not None and expires - now > self.max_ttl_ns):
            return False  # a longer life was refused, not cut short: the sender learns it
        created_ns = created_here(created_ns, now)
        key = bytes(key)
        value = bytes(value)
        with self._lock:
            self._expire_locked(now)
            values = self._keys.get(key)
            entry = values.get(value) if values else None
            if entry is not None:  # refresh (D41)
                if expires > entry.expires_ns:
                    self._expiry.remove((entry.expires_ns, key, value))
                    entry.expires_ns = expires
                    entry.ttl_ns = ttl_ns
                    self._expiry.add((expires, key, value))
                entry.created_ns = max(entry.created_ns, created_ns)
                return True
            size = value_cost(value) + (0 if values else key_cost(key))
            if (values and len(values) >= self.max_values_per_key) or (
                self.bytes + size > self.max_bytes
            ):
                self.refused += 1
                return False
            if values is None:
                values = self._keys[key] = {}
            values[value] = _Entry(created_ns, ttl_ns, expires)
            self._expiry.add((expires, key, value))
            self.bytes += size
            return True

    def Iterate(self, fn: Callable[[Value], bool]) -> None:
        """Call ``fn`` for each value held, copying about ``ITERATE_CHUNK``
        values per hold of the lock: Get and Set on other threads wait for
        one chunk, not for the whole store (copying 200,000 values at once
        held them up for 250 ms). Values stored meanwhile under new keys may
        be missed; values expired meanwhile are not handed out."""
        keys = self.Keys()
        next_key = 0
        while next_key < len(keys):
            now = self._clock_ns()
            chunk: list[tuple[bytes, bytes, int, int]] = []
            add = chunk.append
            with self._lock:  # fn runs without it (it may call Get)
                while next_key < len(keys) and len(chunk) < ITERATE_CHUNK:
                    key = keys[next_key]
                    next_key += 1
                    for data, entry in self._keys.get(key, _NOTHING).items():
                        if entry.expires_ns > now:
                            add((key, data, entry.ttl_ns, entry.created_ns))
            for key, data, ttl_ns, created_ns in chunk:
                if not fn(Value(key, data, ttl_ns, created_ns)):
                    return

    def Delete(self, key: bytes, value: bytes) -> bool:
        """Remove one value; False if it was not held."""
        with self._lock:
            values = self._keys.get(key)
            entry = values.pop(value, None) if values else None
            if entry is None:
                return False
            self._expiry.remove((entry.expires_ns, key, value))
            self.bytes -= value_cost(value)
            if not values:
                del self._keys[key]
                self.bytes -= key_cost(key)
            return True

    def Keys(self) -> list[bytes]:
        """The keys held now (some values under them may have expired)."""
        with self._lock:
            return list(self._keys)

    def expire(self) -> int:
        """Remove expired values (and keys left empty); return how many."""
        with self._lock:
            return self._expire_locked(self._clock_ns())

    def next_expiry_ns(self) -> int | None:
        """When the next value expires, or None if the store is empty."""
        with self._lock:
            return self._expiry[0][0] if self._expiry else None

    def _expire_locked(self, now: int) -> int:
        expiry = self._expiry
        removed = 0
        while expiry and expiry[0][0] <= now:
            _, key, value = expiry.pop(0)
            values = self._keys[key]
            del values[value]
            self.bytes -= value_cost(value)
            if not values:
                del self._keys[key]
                self.bytes -= key_cost(key)
            removed += 1
        return removed

    def __len__(self) -> int:
        """Number of values held (expired ones included until swept)."""
        with self._lock:
            return len(self._expiry)
