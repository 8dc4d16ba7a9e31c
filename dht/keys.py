"""Keys, node ids and XOR distance (PROTOCOL.md 5.1, 7.1, 7.13)."""

from __future__ import annotations

import hashlib
import itertools
import secrets

from .errors import ArgumentError, ArgumentTypeError

K = 20
"""Replication factor, bucket size and lookup width."""
KEY_BITS = 160
KEY_BYTES = 20
ALPHA = 3
"""Requests a lookup keeps in flight."""

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
"""Go's int and the wire's times (nanoseconds) are signed 64-bit."""


def Key(x: str | bytes | int) -> bytes:
    """Return the 20-byte key for ``x``, exactly as the Go library's ``dht.Key``.

    The key is the SHA-1 digest of: a string's UTF-8 bytes; the bytes
    themselves; an integer's 8-byte little-endian two's complement (Go's
    64-bit ``int``). So the same key gives the same id in Go and Python.

    Raises ``ArgumentTypeError`` (a ``TypeError``) for any other type
    (``bool`` included: Go's bool is not an int; ``float``: Go's ``dht.Key``
    has no float form) and ``ArgumentError`` (a ``ValueError``) for integers
    outside the signed 64-bit range.
    """
    if isinstance(x, str):
        data = x.encode("utf-8")
    elif isinstance(x, bytes | bytearray | memoryview):
        data = bytes(x)
    elif isinstance(x, int) and not isinstance(x, bool):
        if not INT64_MIN <= x <= INT64_MAX:
            raise ArgumentError(f"dht.Key: integer {x} is outside the signed 64-bit range")
        data = (x & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    else:
        raise ArgumentTypeError(
            f"dht.Key takes str, bytes or int, not {type(x).__name__} ({x!r:.40})"
        )
    return hashlib.sha1(data).digest()


def random_id() -> bytes:
    """A new random 20-byte id from the OS's cryptographic source.

    Used for node ids; event ids come from ``EventIds``.
    """
    return secrets.token_bytes(KEY_BYTES)


class EventIds:
    """Unpredictable 20-byte event ids: a keyed BLAKE2b of a counter, the key
    drawn once from the OS's cryptographic source. Ids must be unguessable
    (an off-path attacker must not forge responses, defect D14), but asking
    the OS for each one is a system call per request, and every system call
    hands the GIL to a waiting thread. Safe to call from any thread."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._counter = itertools.count()  # next() is atomic under the GIL

    def __call__(self) -> bytes:
        counter = next(self._counter).to_bytes(8, "big")
        return hashlib.blake2b(counter, key=self._key, digest_size=KEY_BYTES).digest()


def check_id(value: bytes, what: str) -> bytes:
    """Return ``value`` as bytes if it is 20 bytes long, else raise ArgumentError."""
    if type(value) is bytes and len(value) == KEY_BYTES:  # the usual case, on hot paths
        return value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ArgumentTypeError(
            f"{what} must be {KEY_BYTES} bytes, not {type(value).__name__}"
            + (" (dht.Key(x) makes one)" if what == "key" else "")
        )
    if len(value) != KEY_BYTES:
        raise ArgumentError(f"{what} must be {KEY_BYTES} bytes, got {len(value)}")
    return bytes(value)


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two ids as an unsigned 160-bit integer (smaller is closer)."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_length(a: bytes, b: bytes) -> int:
    """Number of leading bits on which ``a`` and ``b`` agree (0..160)."""
    return KEY_BITS - distance(a, b).bit_length()
