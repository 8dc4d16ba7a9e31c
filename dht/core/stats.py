"""A node's counters and lookup figures, by name: what ``DHT.stats()`` reports.

``STATS`` documents every key ``DHT.stats()`` returns (its meaning, unit,
and whether it only grows, a counter, or goes up and down, a gauge), and
``FAMILIES`` the keys made of a prefix and a reason (``drop-<reason>``,
``store-refused-<reason>``); ``dht.metrics`` serves them all in the
Prometheus text format from these same tables. Every value is an ``int``:
durations are in microseconds (keys ending ``-us``), sizes in bytes.

Lookups (``LOOKUPS``: a node's joins, Finds and Stores, each an iterative
lookup) are counted when they end, found or not, with their duration and
the nodes they queried. Their p50 and p99 are over the last
``RECENT_LOOKUPS`` of each kind (a bounded window: memory stays fixed and
the figures follow the present); the ``-total`` sums and the counts are
over the node's life, so rates and means come from their differences.

A lookup's *queried* figure is the number of nodes it sent a request to
(its cost in round trips, ``Lookup.queried``), not the depth of the path
to the node that answered: the lookup does not record which answer named
which node.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

RECENT_LOOKUPS = 1024
"""Lookups of each kind the p50 and p99 are taken over (the last ones)."""
LOOKUPS = ("bootstrap", "find", "store")
"""The kinds of lookup, as the first part of their keys."""


@dataclass(frozen=True)
class Stat:
    """What a ``stats()`` key means."""

    kind: Literal["counter", "gauge"]
    """``counter``: only grows over the node's life; ``gauge``: a level now."""
    unit: str
    meaning: str


def _counter(unit: str, meaning: str) -> Stat:
    return Stat("counter", unit, meaning)


def _gauge(unit: str, meaning: str) -> Stat:
    return Stat("gauge", unit, meaning)


STATS: dict[str, Stat] = {
    # Receiving
    "datagrams-received": _counter("datagrams", "Datagrams read from the node's sockets."),
    "events-received": _counter(
        "events",
        "Events (requests and responses) decoded, within the rate limit, and handed to "
        "the engine; an event split over several datagrams counts once.",
    ),
    "requests-received": _counter(
        "requests", "Of events-received, the requests (from peers asking this node)."
    ),
    "receive-error": _counter(
        "errors",
        "Socket reads that failed; usually the ICMP report of a datagram sent to a "
        "closed port (a peer that left).",
    ),
    "handler-error": _counter(
        "events", "Events whose handling raised (a bug; logged with its traceback)."
    ),
    "fragments-held": _gauge(
        "records", "Events being reassembled: parts arrived, the rest awaited."
    ),
    # Our requests
    "pending-requests": _gauge("requests", "Requests of this node awaiting their answer."),
    "request-retried": _counter("requests", "Requests sent again after no answer."),
    "request-timeout": _counter(
        "requests", "Requests that got no answer in time, after their resends (once each)."
    ),
    "request-refused-pending-cap": _counter(
        "requests", "Requests not sent: max_pending_requests were awaiting answers."
    ),
    "send-failed": _counter(
        "events", "Events not sent: the socket refused them (buffer full, unreachable)."
    ),
    "answer-wrong-node": _counter(
        "answers",
        "Answers from the address asked but under another id: the node asked is gone.",
    ),
    "store-refusals-received": _counter(
        "refusals", "Refusals received for this node's STOREs (the peer did not keep them)."
    ),
    # Answering
    "answer-cut": _counter(
        "answers", "FIND_VALUE answers cut to max_answer_bytes (the rest not sent)."
    ),
    "held-amplification": _counter(
        "answers",
        "Answers held until the requester proved its address (their size exceeded "
        "the amplification allowance for an unproven source).",
    ),
    "ignored-request": _counter("requests", "PONG events sent as requests, ignored as by Go."),
    # Routing table
    "routing-table-size": _gauge("contacts", "Contacts in the routing table."),
    "contact-moved": _counter(
        "contacts", "Contacts moved to a new address after their old one failed a ping."
    ),
    # Storage
    "stored-keys": _gauge(
        "keys",
        "Keys in the node's storage (through its Keys(); absent if it has none). "
        "Counting them takes a pass over the keys.",
    ),
    "stored-values": _gauge(
        "values",
        "Values in the node's storage, expired ones until swept (its len(); absent "
        "if it has none).",
    ),
    "stored-bytes": _gauge(
        "bytes",
        "Bytes the storage counts against max_store_bytes: keys and values plus "
        "their bookkeeping (its bytes attribute; absent if it has none).",
    ),
    "storage-error": _counter(
        "calls", "Calls to the storage that raised (logged with the traceback)."
    ),
    "find-full": _counter(
        "finds", "Finds ended at max_find_values or max_find_bytes (more values were left)."
    ),
    # Key transfer (to newly seen nodes) and replication (to the K closest)
    "values-transferred": _counter(
        "values", "Values handed to newly seen nodes by key transfer and kept by them."
    ),
    "values-replicated": _counter(
        "values", "Values re-sent by replication to the K closest nodes and kept by them."
    ),
    "transfer-error": _counter("scans", "Scans of the storage for transfer that raised."),
    "replication-rounds": _counter(
        "rounds", "Replication rounds started (one per replicate_interval at most)."
    ),
    # Republishing (of what this node stored through Store) and bucket refresh
    "values-republished": _counter(
        "values", "Values this node stored through Store and republished successfully."
    ),
    "republish-failed": _counter("values", "Republications that failed (a StoreError)."),
    "publications-dropped": _counter(
        "values",
        "Values no longer republished, the oldest first, to keep the values to "
        "republish within max_store_bytes.",
    ),
    "buckets-refreshed": _counter(
        "lookups", "Bucket-refresh lookups started (a bucket no lookup passed through)."
    ),
    "contacts-dropped": _counter(
        "contacts",
        "Contacts dropped from the routing table after six unanswered requests in a row.",
    ),
}
"""Every fixed key of ``DHT.stats()``; the shipping and lookup keys are added below."""

for _name, _what in (("transfer", "key transfer"), ("replicate", "replication")):
    STATS.update(
        {
            f"{_name}-bytes": _counter("bytes", f"Bytes of values sent by {_what}."),
            f"{_name}-paced": _counter(
                "batches",
                f"Batches of {_what} delayed by its rate or by the pending requests.",
            ),
            f"{_name}-skipped": _counter(
                "nodes", f"Nodes not served by {_what}: too many were waiting."
            ),
            f"{_name}-stopped": _counter(
                "nodes", f"Nodes whose {_what} ended early: no answer, or no room."
            ),
        }
    )

for _kind in LOOKUPS:
    _what = {"bootstrap": "Joins (New's lookup)", "find": "Finds", "store": "Stores"}[_kind]
    STATS.update(
        {
            f"{_kind}-done": _counter("lookups", f"{_what} ended, succeeded or not."),
            f"{_kind}-failed": _counter(
                "lookups",
                f"{_what} ended with an error (NotFoundError, StoreError, "
                "BootstrapError, ClosedError).",
            ),
            f"{_kind}-duration-p50-us": _gauge(
                "microseconds", f"Median duration of the last {RECENT_LOOKUPS} {_kind}s."
            ),
            f"{_kind}-duration-p99-us": _gauge(
                "microseconds", f"99th percentile duration of the last {RECENT_LOOKUPS} {_kind}s."
            ),
            f"{_kind}-duration-total-us": _counter(
                "microseconds", f"Sum of the durations of all {_kind}s ended."
            ),
            f"{_kind}-queried-p50": _gauge(
                "nodes", f"Median of the nodes queried by the last {RECENT_LOOKUPS} {_kind}s."
            ),
            f"{_kind}-queried-p99": _gauge(
                "nodes",
                f"99th percentile of the nodes queried by the last {RECENT_LOOKUPS} {_kind}s.",
            ),
            f"{_kind}-queried-total": _counter(
                "nodes", f"Sum of the nodes queried by all {_kind}s ended."
            ),
        }
    )

COUNTERS = tuple(key for key, stat in STATS.items() if stat.kind == "counter")
"""The counters of ``STATS``: ``DHT.stats()`` has each from the start (0),
so a series does not appear only once its first event happens."""

FAMILIES: dict[str, Stat] = {
    "drop-": _counter(
        "events",
        "Input dropped, by reason (the key's rest; see DROPS). A burst is logged at "
        "WARNING, at most once per reason per interval.",
    ),
    "store-refused-": _counter(
        "values",
        "Values of STOREs from peers that this node refused to keep, by reason "
        "(dht.wire.refusal.REASONS).",
    ),
}
"""Keys made of a prefix and a reason."""

DROPS: dict[str, str] = {
    "rate-limited": "a request beyond request_rate/request_burst of its source",
    "answer-rate": "a FIND_VALUE from a source beyond its answer_rate bytes",
    "amplification": "a request from an unproven address beyond unproven_answer_rate",
    "own-id": "an event claiming this node's own id",
    "unsolicited-response": "a response to no pending request (late, or duplicated)",
    "spoofed-response": "a response from an address other than the one asked",
    "wrong-response-type": "a response of another type than the request",
    "implausible-answer": "an answer listing ids closer to the key than is plausible",
    "wrong-key": "a value in a FIND_VALUE answer under another key",
    "invalid-value": "a value in a FIND_VALUE answer with a bad size, ttl or time",
    "internal-error": "a datagram whose reading raised (e.g. MemoryError; logged)",
    "<protocol reason>": "a datagram that failed framing, reassembly or decoding, by "
    "its ProtocolError reason (short-datagram, bad-part, reassembly-full, ...)",
}
"""What each ``drop-<reason>`` counts."""


def describe(key: str) -> Stat | None:
    """What ``key`` of ``DHT.stats()`` means, or None if it is undocumented."""
    stat = STATS.get(key)
    if stat is None:
        for prefix, family in FAMILIES.items():
            if key.startswith(prefix):
                return family
    return stat


class _Lookups:
    """One kind's lookups: lifetime counts and sums, and the recent ones."""

    __slots__ = ("done", "failed", "microseconds", "queried", "recent")

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.microseconds = 0
        self.queried = 0
        self.recent: deque[tuple[int, int]] = deque(maxlen=RECENT_LOOKUPS)


class Stats:
    """Thread-safe event counters and lookup figures, by name.

    ``alarm``, when set, is called with each ``drop-*`` key and its
    increment, outside the lock, on the thread that counted it (the node
    sets a ``nodelog.Bursts``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._lookups = {kind: _Lookups() for kind in LOOKUPS}
        self.alarm: Callable[[str, int], None] | None = None

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n
        alarm = self.alarm
        if alarm is not None and name.startswith("drop-"):
            alarm(name, n)

    def lookup_done(self, kind: str, seconds: float, queried: int, ok: bool) -> None:
        """Count a lookup of ``kind`` (one of ``LOOKUPS``) that ended after
        ``seconds`` having queried ``queried`` nodes, ``ok`` or not."""
        microseconds = max(0, round(seconds * 1_000_000))
        with self._lock:
            lookups = self._lookups[kind]
            lookups.done += 1
            lookups.failed += not ok
            lookups.microseconds += microseconds
            lookups.queried += queried
            lookups.recent.append((microseconds, queried))

    def snapshot(self) -> dict[str, int]:
        """The counters counted so far (``incr``), by name."""
        with self._lock:
            return dict(self._counts)

    def lookup_figures(self) -> dict[str, int]:
        """The ``<kind>-*`` keys of every kind of lookup (zeros before the
        first of a kind ends)."""
        with self._lock:
            lookups = {
                kind: (each.done, each.failed, each.microseconds, each.queried, list(each.recent))
                for kind, each in self._lookups.items()
            }
        figures: dict[str, int] = {}
        for kind, (done, failed, microseconds, queried, recent) in lookups.items():
            durations = sorted(duration for duration, _ in recent)
            nodes = sorted(n for _, n in recent)
            figures[f"{kind}-done"] = done
            figures[f"{kind}-failed"] = failed
            figures[f"{kind}-duration-p50-us"] = quantile(durations, 0.5)
            figures[f"{kind}-duration-p99-us"] = quantile(durations, 0.99)
            figures[f"{kind}-duration-total-us"] = microseconds
            figures[f"{kind}-queried-p50"] = quantile(nodes, 0.5)
            figures[f"{kind}-queried-p99"] = quantile(nodes, 0.99)
            figures[f"{kind}-queried-total"] = queried
        return figures


def quantile(ordered: list[int], q: float) -> int:
    """The ``q`` quantile of the sorted ``ordered`` by nearest rank (a value
    that occurred, at least ``q`` of them at or below it); 0 if empty."""
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
