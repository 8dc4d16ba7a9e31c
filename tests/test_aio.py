"""``dht.aio``: the threaded node awaited from a running event loop, which
keeps running while the network works. Real nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from cluster import config, running_cluster

import dht
import dht.aio

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
DEADLINE = 20.0


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, DEADLINE)

    return asyncio.run(bounded())


class Ticker:
    """A task that counts loop turns: proof the loop was not blocked."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.ticks += 1
            self.longest_gap = max(self.longest_gap, now - last)
            last = now


def test_store_find_and_iterate_inside_a_running_loop() -> None:
    with running_cluster(3) as nodes:

        async def main() -> None:
            cfg = config(bootstrap_addresses=[nodes[0].address])
            async with dht.aio.open(cfg) as node:
                key = dht.Key("aio")
                await node.store(key, b"one", ttl=60)
                await node.store(key, b"two", ttl=60)
                assert sorted(await node.find(key)) == [b"one", b"two"]
                assert sorted([value async for value in node.values(key)]) == [b"one", b"two"]
                first = [value async for value in node.values(key, dht.FirstValue())]
                assert first and set(first) <= {b"one", b"two"}
                with pytest.raises(dht.NotFoundError):
                    await node.find(dht.Key("nothing here"))
                assert [value async for value in node.values(dht.Key("nothing here"))] == []
                assert sorted(nodes[2].Find(key).result(timeout=10)) == [b"one", b"two"]
            assert node.sync.closed

        run(main())


def test_the_loop_keeps_ticking_during_a_find() -> None:
    """A Find that waits for a node that has gone (its request times out)
    takes a while; the ticker runs all along."""
    with running_cluster(2, timeout=0.5) as nodes:
        gone = dht.New(config(bootstrap_addresses=[nodes[0].address], timeout=0.5))
        gone_address = gone.address
        gone.Close()

        async def main() -> None:
            cfg = config(bootstrap_addresses=[nodes[0].address, gone_address], timeout=0.5)
            async with dht.aio.open(cfg) as node:
                assert node.stats()["routing-table-size"] >= 2  # the gone node is still listed
                ticker = Ticker()
                task = asyncio.create_task(ticker.run())
                await asyncio.sleep(0.02)  # the ticker has started
                before, started = ticker.ticks, time.monotonic()
                with pytest.raises(dht.NotFoundError):
                    await node.find(dht.Key("missing"))
                took = time.monotonic() - started
                task.cancel()
                assert took >= 0.1  # it waited for the gone node
                assert ticker.ticks - before >= 5
                assert ticker.longest_gap < took  # never blocked for the whole Find

        run(main())


def test_await_open_then_close_and_errors() -> None:
    async def main() -> None:
        node = await dht.aio.open(config())
        try:
            with pytest.raises(dht.ArgumentTypeError):
                await node.store("a str", b"v", ttl=1)  # type: ignore[arg-type]
        finally:
            await node.close()
        with pytest.raises(dht.ClosedError):
            await node.find(dht.Key("after close"))
        with pytest.raises(dht.ClosedError):
            [value async for value in node.values(dht.Key("after close"))]

    run(main())


def test_a_failed_open_raises_the_error_of_new() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{holder.getsockname()[1]}"
            with pytest.raises(dht.AddressInUse):
                async with dht.aio.open(config(listen_address=address)):
                    pass

    run(main())
