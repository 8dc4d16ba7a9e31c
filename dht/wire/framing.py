"""Datagram framing: split events into datagrams and reassemble them (PROTOCOL.md 3).

Every datagram is a 24-byte header (event id, 1-based part, total parts, event
size as u16 little-endian) followed by one chunk of the serialized event.
``fragment`` is the sender side. ``Reassembler`` is the receiver side, built
for hostile input: headers are checked for consistency, records are keyed by
(source, event id, total, size) with a set of received parts, and memory is
capped by record count and buffered bytes, overall and per source. Time is
passed in (``now``, seconds on any monotonic clock); nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import EventTooLarge, FramingError, ReassemblyFull
from ..keys import KEY_BYTES
from .events import Address

HEADER_SIZE = 24
MAX_DATAGRAM = 1472
"""1500-byte MTU minus the IPv4 and UDP headers."""
MAX_CHUNK = MAX_DATAGRAM - HEADER_SIZE  # 1448
MAX_EVENT_SIZE = 0xFFFF
"""The header's size field is 16 bits."""

_HEADER = struct.Struct("<20sBBH")


@dataclass(frozen=True, slots=True)
class Header:
    """The 24-byte datagram header."""

    event_id: bytes
    part: int
    total: int
    size: int


def wire_size(event_size: int) -> int:
    """Bytes on the wire of an event of ``event_size`` bytes: its datagrams'
    headers and chunks."""
    return event_size + HEADER_SIZE * max(1, -(-event_size // MAX_CHUNK))


def fragment(event_id: bytes, event: bytes) -> list[bytes]:
    """Cut a serialized event into datagrams, parts 1..total in sending order.

    Every datagram but the last carries exactly 1448 event bytes. Raises
    ``EventTooLarge`` for an event over 65535 bytes (the size field would wrap).
    """
    size = len(event)
    if size > MAX_EVENT_SIZE:
        raise EventTooLarge(size, MAX_EVENT_SIZE)
    if size == 0:
        raise ValueError("cannot frame an empty event")
    if len(event_id) != KEY_BYTES:
        raise ValueError(f"event id must be {KEY_BYTES} bytes, got {len(event_id)}")
    if size <= MAX_CHUNK:
        return [_HEADER.pack(event_id, 1, 1, size) + event]
    total = -(-size // MAX_CHUNK)
    return [
        _HEADER.pack(event_id, part + 1, total, size)
        + event[part * MAX_CHUNK : (part + 1) * MAX_CHUNK]
        for part in range(total)
    ]


def parse_header(datagram: bytes | bytearray | memoryview) -> Header:
    """Read and validate a datagram's header against its own length.

    Raises ``FramingError`` when the datagram is too short or too long, or
    when part, total, size and chunk length are inconsistent (D1, D2, D10).
    """
    length = len(datagram)
    if length <= HEADER_SIZE:
        raise FramingError("short-datagram", f"{length} bytes")
    if length > MAX_DATAGRAM:
        raise FramingError("long-datagram", f"{length} bytes, at most {MAX_DATAGRAM}")
    event_id, part, total, size = _HEADER.unpack_from(datagram)
    if not 1 <= part <= total:
        raise FramingError("bad-part", f"part {part} of {total}")
    if size == 0 or total != -(-size // MAX_CHUNK):
        raise FramingError("bad-size", f"event size {size} does not fit {total} parts")
    chunk = length - HEADER_SIZE
    expected = MAX_CHUNK if part < total else size - (total - 1) * MAX_CHUNK
    if chunk != expected:
        raise FramingError(
            "bad-chunk-length", f"part {part}/{total} carries {chunk} bytes, expected {expected}"
        )
    return Header(event_id, part, total, size)


class _Record:
    """One event being reassembled."""

    __slots__ = ("chunks", "deadline", "held", "source")

    def __init__(self, source: Address, deadline: float) -> None:
        self.source = source
        self.deadline = deadline
        self.chunks: dict[int, bytes] = {}
        self.held = 0


_RecordKey = tuple[Address, bytes, int, int]
_Group = TypeVar("_Group", Address, str)


def _forget(
    records: dict[_Group, dict[_RecordKey, None]],
    held: dict[_Group, int],
    group: _Group,
    key: _RecordKey,
    size: int,
) -> None:
    """Take the record ``key`` of ``size`` bytes out of ``group``'s
    accounts (a source address, or an IP address); drop an empty group."""
    own = records[group]
    del own[key]
    if own:
        held[group] -= size
    else:
        del records[group]
        del held[group]


class Reassembler:
    """Joins the datagrams of fragmented events, within bounded memory.

    ``feed`` returns the complete event bytes, or None while parts are missing.
    Limits (all configurable): at most ``max_records`` events in progress
    holding ``max_bytes`` of chunks in all, and per source address at most
    ``max_records_per_source`` and ``max_bytes_per_source``. A source over its
    own limits loses its oldest records first; when the overall limits are
    hit, bare first fragments go first, oldest first (see ``_overall_victim``),
    except those of events ``awaited`` says we are waiting for: the answers
    to our own requests, whose 20-byte random ids no flood can guess.
    A record is dropped ``timeout`` seconds after its first fragment arrived.

    Events may reuse an id (D7: the events of a split answer), so a late copy
    of a part of a completed event (D6) can open a record that the next event
    with the same id, total and size fills: when that event's own part
    arrives with other bytes, it replaces the late copy. If the late copy is
    of the part the next event sends last, the event completes with it
    first; nothing tells the two apart sooner, and parts with equal bytes
    (values sharing a block) must not be dropped.

    Not thread-safe: give each listener thread its own (the kernel steers all
    datagrams from one source address to the same SO_REUSEPORT socket).
    """

    def __init__(
        self,
        *,
        max_records: int = 1024,
        max_bytes: int = 16 * 1024 * 1024,
        max_records_per_source: int = 64,
        max_bytes_per_source: int = 1024 * 1024,
        max_event_size: int = MAX_EVENT_SIZE,
        timeout: float = 5.0,
        awaited: Callable[[bytes], bool] | None = None,
    ) -> None:
        for name, value in (
            ("max_records", max_records),
            ("max_bytes", max_bytes),
            ("max_records_per_source", max_records_per_source),
            ("max_bytes_per_source", max_bytes_per_source),
            ("max_event_size", max_event_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_records_per_source = max_records_per_source
        self.max_bytes_per_source = max_bytes_per_source
        self.max_event_size = min(max_event_size, MAX_EVENT_SIZE)
        self.timeout = timeout
        self._awaited = awaited
        # Insertion order is creation order, so it is also deadline order.
        self._records: dict[_RecordKey, _Record] = {}
        self._fresh: dict[_RecordKey, None] = {}  # records with one part, oldest first
        self._by_source: dict[Address, dict[_RecordKey, None]] = {}
        self._source_bytes: dict[Address, int] = {}
        # The same per IP address: ports cost an attacker nothing, IPs do.
        self._by_host: dict[str, dict[_RecordKey, None]] = {}
        self._host_bytes: dict[str, int] = {}
        # Recently completed events: key -> (deadline, hash of each part).
        # A late duplicate of one of their parts (a straggler, D6) opens a
        # record that the next event reusing the id (D7) would complete with
        # the wrong bytes; when that event's own part arrives with other
        # bytes, it replaces the straggler. (Parts with the same bytes are
        # interchangeable: dropping them on arrival lost the second event of
        # a split answer whose values shared a block.)
        self._completed: dict[_RecordKey, tuple[float, dict[int, int]]] = {}
        self.held_bytes = 0
        """Chunk bytes held by incomplete events."""
        self.evicted = 0
        """Records dropped to stay within the limits (not counting timeouts)."""
        self.expired = 0
        """Records dropped because their timeout passed."""

    @property
    def records(self) -> int:
        """Number of events being reassembled."""
        return len(self._records)

    def next_deadline(self) -> float | None:
        """When the oldest record expires, or None if there is none."""
        for record in self._records.values():
            return record.deadline
        return None

    def feed(
        self, datagram: bytes | bytearray | memoryview, source: Address, now: float
    ) -> bytes | memoryview | None:
        """Take one datagram from ``source``; return a complete event or None.

        A single-part event is returned as a slice of ``datagram`` (no copy; it
        is valid as long as ``datagram`` is). Raises ``FramingError`` for a bad
        header, a duplicate part or an event over ``max_event_size``, and
        ``ReassemblyFull`` if a new record cannot fit; neither disturbs the
        other records.
        """
        self.expire(now)
        header = parse_header(datagram)
        if header.size > self.max_event_size:
            raise FramingError(
                "event-too-large", f"{header.size} bytes, at most {self.max_event_size}"
            )
        chunk = memoryview(datagram)[HEADER_SIZE:]
        if header.total == 1:
            return chunk
        key = (source, header.event_id, header.total, header.size)
        record = self._records.get(key)
        if record is None:
            record = self._open(key, source, len(chunk), now)
        elif header.part in record.chunks:
            held = record.chunks[header.part]
            if held == chunk or not self._is_straggler(key, header.part, held):
                raise FramingError("duplicate-part", f"part {header.part} of {header.total}")
            # The held part was a late copy from the last event with this key:
            # this is the part of the event now being sent (same length).
            record.chunks[header.part] = bytes(chunk)
        else:
            self._make_room(source, len(chunk), keep=key)
            self._fresh.pop(key, None)  # a second part: no longer a bare first fragment
        if header.part not in record.chunks:
            record.chunks[header.part] = bytes(chunk)
            record.held += len(chunk)
            self.held_bytes += len(chunk)
            self._source_bytes[source] += len(chunk)
            self._host_bytes[source[0]] += len(chunk)
        if len(record.chunks) < header.total:
            return None
        self._remove(key)
        chunks = record.chunks
        self._remember(key, chunks, now)
        return b"".join(chunks[part] for part in range(1, header.total + 1))

    def _is_straggler(self, key: _RecordKey, part: int, chunk: bytes) -> bool:
        """Whether ``chunk`` is part ``part`` of the event last completed
        under ``key``."""
        completed = self._completed.get(key)
        return completed is not None and completed[1].get(part) == hash(chunk)

    def _remember(self, key: _RecordKey, chunks: dict[int, bytes], now: float) -> None:
        """Keep the parts' hashes of a completed event for ``timeout``
        seconds, for at most ``max_records`` events."""
        completed = self._completed
        completed.pop(key, None)  # re-inserted last: the order stays deadline order
        if len(completed) >= self.max_records:
            del completed[next(iter(completed))]
        completed[key] = (now + self.timeout, {part: hash(chunk) for part, chunk in chunks.items()})

    def _open(self, key: _RecordKey, source: Address, size: int, now: float) -> _Record:
        own = self._by_source.get(source)
        while own and len(own) >= self.max_records_per_source:
            self._evict(next(iter(own)))
            own = self._by_source.get(source)
        while len(self._records) >= self.max_records:
            victim = self._overall_victim(source[0], None)
            assert victim is not None  # there are records
            self._evict(victim)
        self._make_room(source, size, keep=None)
        record = _Record(source, now + self.timeout)
        self._records[key] = record
        if self._awaited is None or not self._awaited(key[1]):
            # A bare first fragment, first to go under a flood of them. A
            # part of an answer we await is not: its next part, sent right
            # after it, can reach us behind more flood fragments than the
            # record cap (seen on a loaded machine).
            self._fresh[key] = None
        self._by_source.setdefault(source, {})[key] = None
        self._source_bytes.setdefault(source, 0)
        self._by_host.setdefault(source[0], {})[key] = None
        self._host_bytes.setdefault(source[0], 0)
        return record

    def _make_room(self, source: Address, size: int, keep: _RecordKey | None) -> None:
        """Evict records until ``size`` more bytes from ``source`` fit the caps.

        A source over its own cap loses its oldest records; over the overall
        cap, ``_overall_victim`` chooses. The record ``keep`` (the one
        growing) goes last: if it alone is too big, it is dropped and
        ``ReassemblyFull`` raised.
        """
        if size > self.max_bytes_per_source or size > self.max_bytes:
            raise ReassemblyFull("reassembly-full", f"a {size}-byte chunk exceeds the caps")
        while self._source_bytes.get(source, 0) + size > self.max_bytes_per_source:
            self._evict_oldest(source, keep)
        while self.held_bytes + size > self.max_bytes:
            victim = self._overall_victim(source[0], keep)
            if victim is None:  # only the growing record is left
                assert keep is not None
                self._evict(keep)
                raise ReassemblyFull("reassembly-full", "an event is larger than the caps")
            self._evict(victim)

    def _overall_victim(self, host: str, keep: _RecordKey | None) -> _RecordKey | None:
        """The record to evict for a datagram from ``host`` when the overall
        caps bind (never ``keep``).

        First, if ``host`` itself holds more than a quarter of the records,
        its oldest: a flood from the ports of one address pays for itself
        (ports cost an attacker nothing, and taken before it, a sender
        pacing its parts lost each event at its first part). Then the oldest
        record still holding only its first fragment: that is all a flood of
        first fragments from many addresses leaves, while a legitimate event
        leaves this group at its second part. Then the oldest record of the
        IP address holding the most bytes. O(1) apart from that fallback.
        """
        own = self._by_host.get(host)
        if own is not None and len(own) > self.max_records // 4:
            victim = next((key for key in own if key != keep), None)
            if victim is not None:
                return victim
        for key in self._fresh:  # at most two steps: keep may come first
            if key != keep:
                return key
        if not self._host_bytes:
            return None
        heaviest = max(self._host_bytes, key=self._host_bytes.__getitem__)
        victim = next((key for key in self._by_host[heaviest] if key != keep), None)
        if victim is None:  # the heaviest holds only keep: take the oldest other
            victim = next((key for key in self._records if key != keep), None)
        return victim

    def _evict_oldest(self, source: Address, keep: _RecordKey | None) -> None:
        own = self._by_source[source]
        victim = next((key for key in own if key != keep), None)
        if victim is None:  # only the growing record is left: it cannot fit
            assert keep is not None
            self._evict(keep)
            raise ReassemblyFull("reassembly-full", "an event is larger than the reassembly caps")
        self._evict(victim)

    def _evict(self, key: _RecordKey) -> None:
        self._remove(key)
        self.evicted += 1

    def _remove(self, key: _RecordKey) -> None:
        record = self._records.pop(key)
        self._fresh.pop(key, None)
        self.held_bytes -= record.held
        _forget(self._by_source, self._source_bytes, record.source, key, record.held)
        _forget(self._by_host, self._host_bytes, record.source[0], key, record.held)

    def expire(self, now: float) -> int:
        """Drop records whose deadline has passed; return how many."""
        dropped = 0
        records = self._records
        while records:
            key = next(iter(records))
            if records[key].deadline > now:
                break
            self._remove(key)
            dropped += 1
        self.expired += dropped
        completed = self._completed
        while completed:
            key = next(iter(completed))
            if completed[key][0] > now:
                break
            del completed[key]
        return dropped
