"""Connections belong to one event loop and go away with it (the home loop's with close());
close() and reopening."""

from __future__ import annotations

import asyncio

import pytest
import redis
from asgiref.sync import async_to_sync

from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess
from tests.redis.waiting import wait_blocked

pytestmark = [pytest.mark.xdist_group("redis-faults"), pytest.mark.timeout(60)]


def connected_clients(server: RedisProcess) -> int:
    admin = redis.Redis(port=server.port, socket_timeout=5)
    try:
        # Minus this admin connection itself.
        return len(admin.client_list()) - 1
    finally:
        admin.close()


# A hang detector, not a speed target: with the receive loop's blocking pop outliving its
# loop's shutdown (Python 3.11's wait_for swallowing the cancel), each call took a whole
# block_timeout.
@pytest.mark.timeout(30)
def test_connections_close_with_their_loop(own_server: RedisProcess, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[own_server.url], prefix=prefix, block_timeout=20)

    async def use() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "m"})
        await layer.receive(channel)
        await layer.send("plain", {"type": "m"})
        await layer.receive("plain")

    for _ in range(5):
        async_to_sync(use)()
    # The receives' connections closed with their loops; the sends ran in the instance's
    # home loop (layers/runtime/home.py), whose one connection serves every such call.
    assert connected_clients(own_server) == 1
    async_to_sync(layer.close)()
    assert connected_clients(own_server) == 0


async def test_close_releases_and_reopens(own_server: RedisProcess, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[own_server.url], prefix=prefix)
    local = await layer.new_channel()
    await layer.send(local, {"type": "m", "n": 1})
    assert (await layer.receive(local))["n"] == 1
    assert await asyncio.to_thread(connected_clients, own_server) >= 1
    await layer.close()
    assert await asyncio.to_thread(connected_clients, own_server) == 0
    await layer.send(local, {"type": "m", "n": 2})
    assert (await asyncio.wait_for(layer.receive(local), 5))["n"] == 2
    await layer.close()


async def test_many_local_consumers_share_one_connection(
    own_server: RedisProcess, prefix: str
) -> None:
    layer = RedisChannelLayer(hosts=[own_server.url], prefix=prefix)
    other = RedisChannelLayer(hosts=[own_server.url], prefix=prefix)
    channels = [await layer.new_channel() for _ in range(2000)]
    waiting = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    # The receives have started (they run as soon as this test first waits) and the
    # instance's receive loop is parked in its pop.
    await wait_blocked(own_server.port)
    # One blocking pop for all 2000 receivers (plus at most a couple of idle connections).
    assert await asyncio.to_thread(connected_clients, own_server) <= 2
    for channel in channels:
        await other.group_add("everyone", channel)
    await other.group_send("everyone", {"type": "m"})
    done = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert len(done) == 2000
    await layer.close()
    await other.close()
