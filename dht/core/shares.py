"""Storage shares: how much of the store, and of one key, each network holds.

Every value a node keeps is charged to the network it came from: the /24 of
a proven address (one that has answered us), ``UNPROVEN`` for all addresses
that never did (anyone can forge those: charged to their /24, a forged
flood would push an honest network's values out), or ``LOCAL`` for this
node's own user. While there is room, any network may use it. When the store
(in bytes) or a key (in values) is full, it is shared max-min fairly: a value
from a network that holds less than the heaviest one displaces that
network's oldest value; from the heaviest networks, it is refused. So a flood
from a few networks fills its own share and no more: everyone else still
gets in, and a squatted key still takes its owner's value.

Remote networks together hold at most the capacity less ``1/LOCAL_RESERVE``
of it, which only the user's own values may use, and they never displace a
``LOCAL`` value. Without signatures there is no telling who published a
value, so the network that first stored it here is taken as its publisher:
only that network (or the user) may extend its life (``admit``).

The ledger does no I/O: it says which values to delete from the storage to
make room, and the caller deletes them. Time is passed in (nanoseconds,
the wall clock the storage uses). Thread-safe.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import Counter, OrderedDict

from sortedcontainers import SortedList

from .storage import key_cost, value_cost

LOCAL = "local"
"""The share of this node's own user (the local copy of its Stores)."""
UNPROVEN = "unproven"
"""The one share of every address that has never answered a request of ours."""
LOCAL_RESERVE = 8
"""One in this many bytes of the capacity is kept for the user's own values."""
HOLDING_BOOKKEEPING = 512
"""Bytes the ledger itself spends per value (its entry, its place in three
indexes), charged with the value: measured about 450 on CPython 3.11."""

Refusal = str
"""A reason slug of ``dht.wire.refusal.REASONS``."""


def holding_cost(key: bytes, value: bytes) -> int:
    """Bytes a value counts against the capacity: as much as the default
    storage spends on it as the only value of its key, and the ledger's own
    bookkeeping, so the ledger fills before the storage does."""
    return key_cost(key) + value_cost(value) + HOLDING_BOOKKEEPING


class _Holding:
    __slots__ = ("cost", "expires_ns", "network", "seq")

    def __init__(self, network: str, cost: int, expires_ns: int, seq: int) -> None:
        self.network = network
        self.cost = cost
        self.expires_ns = expires_ns
        self.seq = seq
        """Order of arrival (older is smaller); renewed when the expiry moves."""


_Victim = tuple[bytes, bytes, _Holding]


class StorageShares:
    """The ledger of what a node keeps, by network.

    ``evict`` says whether the storage can delete values (``Delete``); if it
    cannot, a full store or key refuses instead of displacing anything.
    """

    def __init__(self, capacity: int, values_per_key: int, *, evict: bool = True) -> None:
        self.capacity = capacity
        self.remote_capacity = capacity - capacity // LOCAL_RESERVE
        self.values_per_key = values_per_key
        self.evict = evict
        self._lock = threading.Lock()
        self._held: dict[bytes, dict[bytes, _Holding]] = {}
        self._by_network: dict[str, OrderedDict[tuple[bytes, bytes], _Holding]] = {}
        self._usage: Counter[str] = Counter()
        self._ranked = SortedList()  # (usage, network) of the remote networks
        self._expiry: list[tuple[int, int, bytes, bytes]] = []  # heap, stale entries skipped
        self._seq = itertools.count()
        self.total = 0
        """Bytes charged in all."""
        self.remote = 0
        """Bytes charged to remote networks."""

    # -- queries ---------------------------------------------------------------

    def usage(self, network: str) -> int:
        """Bytes charged to ``network``."""
        with self._lock:
            return self._usage[network]

    def networks_of(self, key: bytes) -> dict[bytes, str]:
        """The network each value held under ``key`` is charged to."""
        with self._lock:
            return {value: held.network for value, held in self._held.get(key, {}).items()}

    # -- admission -------------------------------------------------------------

    def admit(
        self, key: bytes, value: bytes, network: str, expires_ns: int, now_ns: int
    ) -> tuple[Refusal | None, list[tuple[bytes, bytes]]]:
        """Charge ``value`` under ``key`` to ``network`` until ``expires_ns``.

        Returns ``(None, displaced)`` when it may be kept (after the caller
        deletes the ``(key, value)`` pairs ``displaced`` from the storage), or
        ``(reason, [])``: ``"full"`` or ``"key-full"`` when the network has
        its fair share already, ``"publisher"`` when another network's copy
        of the same bytes is held and this one would extend its life.
        """
        with self._lock:
            self._expire(now_ns)
            under_key = self._held.get(key)
            held = under_key.get(value) if under_key else None
            if held is not None:
                return self._again(key, value, held, network, expires_ns), []
            victims: list[_Victim] = []
            if under_key is not None and len(under_key) >= self.values_per_key:
                victim = self._key_victim(key, under_key, network)
                if victim is None:
                    return "key-full", []
                victims.append(victim)
            cost = holding_cost(key, value)
            if not self._make_room(network, cost, victims):
                return "full", []
            for victim in victims:
                self._remove(*victim)
            self._add(key, value, _Holding(network, cost, expires_ns, next(self._seq)))
            return None, [(k, v) for k, v, _ in victims]

    def cancel(self, key: bytes, value: bytes) -> None:
        """Undo ``admit`` of a value the storage then refused."""
        with self._lock:
            held = self._held.get(key, {}).get(value)
            if held is not None:
                self._remove(key, value, held)

    def _again(
        self, key: bytes, value: bytes, held: _Holding, network: str, expires_ns: int
    ) -> Refusal | None:
        """The same bytes under the same key once more: the publisher (or the
        user, who then owns the copy) may extend its life; another network
        only re-confirms a copy that lives at least as long as it asks."""
        if network == held.network or network == LOCAL:
            if network != held.network:
                self._remove(key, value, held)
                held = _Holding(network, held.cost, held.expires_ns, next(self._seq))
                self._add(key, value, held)
            if expires_ns > held.expires_ns:
                held.expires_ns = expires_ns
                held.seq = next(self._seq)
                heapq.heappush(self._expiry, (expires_ns, held.seq, key, value))
            return None
        return None if expires_ns <= held.expires_ns else "publisher"

    def _key_victim(
        self, key: bytes, under_key: dict[bytes, _Holding], network: str
    ) -> _Victim | None:
        """The value of a full key to displace for one from ``network``: the
        oldest of the network holding most values under it, if that is at
        least two more than ``network`` holds (the user displaces any)."""
        counts = Counter(held.network for held in under_key.values())
        remote = [name for name in counts if name != LOCAL]
        if not remote or not self.evict:
            return None
        heaviest = max(remote, key=counts.__getitem__)
        if network != LOCAL and counts[heaviest] <= counts[network] + 1:
            return None
        value, held = min(
            ((v, h) for v, h in under_key.items() if h.network == heaviest),
            key=lambda item: item[1].seq,
        )
        return key, value, held

    def _make_room(self, network: str, cost: int, victims: list[_Victim]) -> bool:
        """Add to ``victims`` until ``cost`` more bytes fit for ``network``;
        False if they cannot without taking more than its fair share."""
        if not victims and self._fits(network, cost, 0):
            return True  # the usual case: room
        freed: Counter[str] = Counter()
        for _, _, held in victims:
            freed[held.network] += held.cost
        while True:
            if self._fits(network, cost, sum(freed.values())):
                return True
            if not self.evict:
                return False
            heaviest = self._heaviest(network, freed)
            if heaviest is None:
                return False
            name, usage = heaviest
            if network != LOCAL and usage <= self._usage[network] - freed[network] + cost:
                return False  # the newcomer would hold as much: its share is full
            chosen = {(key, value) for key, value, _ in victims}
            for (key, value), held in self._by_network[name].items():  # oldest first
                if (key, value) not in chosen:
                    victims.append((key, value, held))
                    freed[name] += held.cost
                    break

    def _fits(self, network: str, cost: int, released: int) -> bool:
        """Whether ``cost`` more bytes for ``network`` fit once ``released``
        bytes (of remote networks) are taken off."""
        return self.total - released + cost <= self.capacity and (
            network == LOCAL or self.remote - released + cost <= self.remote_capacity
        )

    def _heaviest(self, network: str, freed: Counter[str]) -> tuple[str, int] | None:
        """The remote network other than ``network`` holding most once
        ``freed`` is taken off, with what it would hold."""
        best: tuple[str, int] | None = None
        for usage, name in reversed(self._ranked):
            if best is not None and usage <= best[1]:
                break  # the rest hold no more than this, before what is freed
            left = usage - freed[name]
            if name != network and left > 0 and (best is None or left > best[1]):
                best = (name, left)
        return best

    # -- bookkeeping (under the lock) -----------------------------------------------

    def _add(self, key: bytes, value: bytes, held: _Holding) -> None:
        self._held.setdefault(key, {})[value] = held
        self._by_network.setdefault(held.network, OrderedDict())[(key, value)] = held
        self._charge(held.network, held.cost)
        heapq.heappush(self._expiry, (held.expires_ns, held.seq, key, value))

    def _remove(self, key: bytes, value: bytes, held: _Holding) -> None:
        under_key = self._held[key]
        del under_key[value]
        if not under_key:
            del self._held[key]
        same_network = self._by_network[held.network]
        del same_network[(key, value)]
        if not same_network:
            del self._by_network[held.network]
        self._charge(held.network, -held.cost)

    def _charge(self, network: str, cost: int) -> None:
        before = self._usage[network]
        after = before + cost
        self.total += cost
        if after:
            self._usage[network] = after
        else:
            del self._usage[network]
        if network != LOCAL:
            self.remote += cost
            if before:
                self._ranked.remove((before, network))
            if after:
                self._ranked.add((after, network))

    def _expire(self, now_ns: int) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now_ns:
            _, seq, key, value = heapq.heappop(expiry)
            held = self._held.get(key, {}).get(value)
            if held is not None and held.seq == seq:
                self._remove(key, value, held)
