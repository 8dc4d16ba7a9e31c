"""asyncio front end: the same threaded node, awaited.

::

    async with dht.aio.open(dht.Config(bootstrap_addresses=[...])) as node:
        await node.store(dht.Key("greeting"), b"hello", ttl=3600)
        print(await node.find(dht.Key("greeting")))        # [b'hello']
        async for value in node.values(dht.Key("greeting")):
            print(value)

There is no second implementation: ``store`` and ``find`` call the node's
``Store`` and ``Find``, which return at once, and the node's threads hand
each result to the event loop with ``loop.call_soon_threadsafe`` (through
``asyncio.wrap_future`` for the futures). So no library thread ever runs
your code, and the loop never waits on the network. Starting and closing a
node block (the bootstrap lookup; joining the threads), so ``open`` and
``close`` run them in the loop's default executor.

Cancelling an awaiting task stops the waiting, not the operation: a Store
or Find already sent runs to its end, and its result is dropped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

from .config import Config
from .errors import NotFoundError
from .node import DHT, FirstValue, New, ValuesFrom

__all__ = ["Node", "open"]


class Node:
    """A running node, for coroutines of the event loop it was opened on.
    Make one with ``dht.aio.open(cfg)``. The threaded node is ``sync``."""

    def __init__(self, node: DHT) -> None:
        self.sync = node
        """The ``dht.DHT`` underneath (for ``stats()``, ``threads()``, ...)."""

    @property
    def id(self) -> bytes:
        return self.sync.id

    @property
    def address(self) -> str:
        return self.sync.address

    async def store(self, key: bytes, value: bytes, ttl: float | timedelta) -> None:
        """``DHT.Store``: returns once a majority of the K closest nodes
        kept the value; raises ``StoreError`` otherwise. Bad arguments raise
        at once, as ``Store`` does."""
        await asyncio.wrap_future(self.sync.Store(key, value, ttl))

    async def find(self, key: bytes, *opts: ValuesFrom | FirstValue) -> list[bytes]:
        """``DHT.Find``: every distinct value found (``opts``: ``ValuesFrom``,
        ``FirstValue``); raises ``NotFoundError`` when there is none."""
        return await asyncio.wrap_future(self.sync.Find(key, None, *opts))

    async def values(self, key: bytes, *opts: ValuesFrom | FirstValue) -> AsyncIterator[bytes]:
        """``DHT.Find``'s values one by one, each as soon as it arrives: the
        ones held here first, then those of the network. Ends when the Find
        does; finding nothing is an empty iteration (no ``NotFoundError``),
        other errors (``ClosedError``, ...) are raised. Leaving the loop
        early leaves the Find to end on its own."""
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue[bytes | Future[list[bytes]]] = asyncio.Queue()

        def hand_over(item: bytes | Future[list[bytes]]) -> None:
            # Runs on a listener or timer thread (or this one, for values
            # held here).
            try:
                loop.call_soon_threadsafe(arrived.put_nowait, item)
            except RuntimeError:  # the loop is closed: no one is waiting
                pass

        def on_value(value: bytes | None, error: Exception | None) -> None:
            if value is not None:
                hand_over(value)

        # The node delivers a Find's values before its end, one at a time
        # (its outbox), so the end arrives after the last value.
        self.sync.Find(key, on_value, *opts).add_done_callback(hand_over)
        while not isinstance(item := await arrived.get(), Future):
            yield item
        error = item.exception()
        if error is not None and not isinstance(error, NotFoundError):
            raise error

    def stats(self) -> dict[str, int]:
        """``DHT.stats()``."""
        return self.sync.stats()

    async def close(self) -> None:
        """``DHT.Close`` in the loop's executor (it joins the node's threads)."""
        await asyncio.get_running_loop().run_in_executor(None, self.sync.Close)

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<dht.aio.Node {self.sync!r}>"


class _Opening:
    """What ``open`` returns: ``await`` it for a ``Node`` (then ``await
    node.close()``), or ``async with`` it (closed on leaving)."""

    def __init__(self, cfg: Config | None) -> None:
        self._cfg = cfg
        self._node: Node | None = None

    def __await__(self) -> Generator[Any, None, Node]:
        return _start(self._cfg).__await__()

    async def __aenter__(self) -> Node:
        self._node = await _start(self._cfg)
        return self._node

    async def __aexit__(self, *exc: object) -> None:
        if self._node is not None:
            await self._node.close()


def open(cfg: Config | None = None) -> _Opening:
    """Start a node as ``dht.New(cfg)`` does (bind, join; same errors), in
    the loop's default executor so the loop runs meanwhile."""
    return _Opening(cfg)


async def _start(cfg: Config | None) -> Node:
    started = asyncio.get_running_loop().run_in_executor(None, New, cfg)
    try:
        node = await asyncio.shield(started)
    except asyncio.CancelledError:
        # New goes on in its thread: close what it makes, as no one else can.
        started.add_done_callback(_close_when_started)
        raise
    return Node(node)


def _close_when_started(started: asyncio.Future[DHT]) -> None:
    if not started.cancelled() and started.exception() is None:
        threading.Thread(target=started.result().Close, name="dht-aio-close").start()
