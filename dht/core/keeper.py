"""What a node agrees to keep, and how it hands a key's values out.

``keep`` checks a value as every node of ours would (its size, a lifetime
left, at most ``max_ttl_ns`` of it here), charges it to the share of the
network it came from (``shares``), deletes what that displaces, and hands it
to the user's storage. It says why it refused, or None: a STORE is
acknowledged only when every value was kept (``dht.wire.refusal``), so a
``Store`` that reports success means the copies exist.

``values`` gives a key's values with their networks interleaved, the network
holding fewest first, each network's values in an order that turns with the
request: an answer cut short (``answers``) then carries every network's
values in turn, a key squatted by a few networks still shows its owner's
value first, and the holders of a key that does not fit in one answer each
send a different part of it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..wire.events import MAX_VALUE_SIZE, Value
from .shares import LOCAL, Refusal, StorageShares
from .storage import GuardedStorage, expires_ns


class Keeper:
    """The user's storage behind the checks and shares every value passes."""

    def __init__(
        self,
        storage: GuardedStorage,
        *,
        capacity: int,
        values_per_key: int,
        max_ttl_ns: int,
        clock_ns: Callable[[], int],
    ) -> None:
        self.storage = storage
        self.shares = StorageShares(capacity, values_per_key, evict=storage.can_delete)
        self.max_ttl_ns = max_ttl_ns
        self._clock_ns = clock_ns
        self.on_received: Callable[[Value], None] | None = None
        """Called with each value kept for another node (replication's
        ``received``), on the thread that kept it."""

    def keep(self, value: Value, network: str) -> Refusal | None:
        """Store ``value`` for ``network`` (``shares.LOCAL``: this node's
        user); the reason it was refused, or None once it is kept."""
        now = self._clock_ns()
        if len(value.value) > MAX_VALUE_SIZE or value.ttl_ns <= 0:
            return "invalid"
        expires = expires_ns(value.created_ns, value.ttl_ns, now)
        if expires <= now:
            return "expired"
        if expires - now > self.max_ttl_ns:
            return "ttl"
        reason, displaced = self.shares.admit(value.key, value.value, network, expires, now)
        if reason is not None:
            return reason
        for key, data in displaced:
            self.storage.Delete(key, data)
        if not self.storage.Set(value.key, value.value, value.created_ns, value.ttl_ns):
            self.shares.cancel(value.key, value.value)
            return "refused"
        if network != LOCAL and self.on_received is not None:
            self.on_received(value)
        return None

    def values(self, key: bytes, from_ns: int, turn: int = 0) -> list[Value]:
        """The values under ``key`` created at or after ``from_ns``, networks
        interleaved (see the module docstring); ``turn`` picks where each
        network's list starts (callers derive it from the request)."""
        values = self.storage.Get(key, from_ns)
        if len(values) < 2:
            return values
        networks = self.shares.networks_of(key)
        groups: dict[str, list[Value]] = {}
        for value in values:
            groups.setdefault(networks.get(value.value, ""), []).append(value)
        ordered = sorted(groups.items(), key=lambda item: (len(item[1]), item[0]))
        turned = []
        for _, group in ordered:
            start = turn % len(group)
            turned.append(group[start:] + group[:start])
        out: list[Value] = []
        for depth in range(len(turned[-1])):
            out.extend(group[depth] for group in turned if depth < len(group))
        return out
