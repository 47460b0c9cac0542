"""Options and behaviours beyond the shared contract: prefetch, flush scope, unblocking."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from layers.errors import ConfigurationError
from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess
from tests.redis.waiting import wait_blocked

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value", [-1, 100, 1.5, True])
def test_bad_prefetch(value: object) -> None:
    with pytest.raises(ConfigurationError):
        RedisChannelLayer(prefetch=value)


async def list_length(url: str, key: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(await client.llen(key))
    finally:
        await client.aclose()


async def test_prefetch_takes_a_batch_and_keeps_order(shared_redis: str, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[shared_redis], prefix=prefix, prefetch=5)
    try:
        for n in range(10):
            await layer.send("batch", {"type": "m", "n": n})
        assert (await layer.receive("batch"))["n"] == 0
        assert await list_length(shared_redis, f"{prefix}:c:batch") == 4
        got = [(await layer.receive("batch"))["n"] for _ in range(9)]
        assert got == list(range(1, 10))
    finally:
        await layer.flush()
        await layer.close()


async def test_no_prefetch_takes_one(shared_redis: str, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[shared_redis], prefix=prefix)
    try:
        for n in range(3):
            await layer.send("one", {"type": "m", "n": n})
        assert (await layer.receive("one"))["n"] == 0
        assert await list_length(shared_redis, f"{prefix}:c:one") == 2
    finally:
        await layer.flush()
        await layer.close()


async def test_flush_touches_only_its_prefix(shared_redis: str, prefix: str) -> None:
    mine = RedisChannelLayer(hosts=[shared_redis], prefix=prefix)
    theirs = RedisChannelLayer(hosts=[shared_redis], prefix=prefix + "x")
    try:
        await mine.send("c", {"type": "m"})
        await theirs.send("c", {"type": "m", "n": 1})
        await theirs.group_add("g", "c")
        await mine.flush()
        assert await list_length(shared_redis, f"{prefix}:c:c") == 0
        await theirs.group_send("g", {"type": "m", "n": 2})
        assert (await theirs.receive("c"))["n"] == 1
        assert (await theirs.receive("c"))["n"] == 2
    finally:
        await theirs.flush()
        await mine.close()
        await theirs.close()


async def test_abandoned_receive_does_not_take_the_next_message(
    own_server: RedisProcess, prefix: str
) -> None:
    # A private server, so that the one blocked client on it is the first instance's pop.
    first = RedisChannelLayer(hosts=[own_server.url], prefix=prefix)
    second = RedisChannelLayer(hosts=[own_server.url], prefix=prefix)
    try:
        abandoned = asyncio.create_task(first.receive("shared"))
        await wait_blocked(own_server.port)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        await second.send("shared", {"type": "m", "n": 1})
        # The first instance's blocked pop was ended when its receive gave up.
        assert (await asyncio.wait_for(second.receive("shared"), 2))["n"] == 1
    finally:
        await first.flush()
        await first.close()
        await second.close()
