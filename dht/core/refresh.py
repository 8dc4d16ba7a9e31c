"""Bucket refresh: a lookup of a random id in each bucket no lookup passed
through for ``refresh_interval`` (the Kademlia paper, 2.3).

A bucket whose range nobody looks up keeps contacts that may have left
long ago; a lookup of an id in its range finds who is there now. The
lookups of a node's own users mark the buckets they pass through
(``RoutingTable.looked_up``), so only idle ranges cost a lookup. At most
``refresh_lookups`` run at once and due buckets never queue: a node back
from a long pause, with every bucket due, refreshes a few per round.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ..wire.events import Node
from .context import Context
from .operations import NodeLookup
from .slots import Slots


class BucketRefresh:
    """One node's bucket refresh; ``run`` once per maintenance round."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self.slots = Slots(context.schedule.refresh_lookups)

    def run(self, now: float) -> None:
        context = self._context
        table = context.table
        free = self.slots.free
        if not free:
            return
        for index in table.due_for_refresh(now, context.schedule.refresh_interval)[:free]:
            target = table.random_id_in(index, context.new_id())
            table.looked_up(target, now)  # not due again while it runs
            context.stats.incr("buckets-refreshed")
            self.slots.submit(partial(self._lookup, target))

    def _lookup(self, target: bytes, done: Callable[[], None]) -> None:
        def ended(_: list[Node]) -> None:
            done()

        NodeLookup(self._context, target, ended).start()

    def close(self) -> None:
        self.slots.close()
