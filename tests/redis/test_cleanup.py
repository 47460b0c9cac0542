"""After traffic stops, the server holds nothing under the layer's prefix once ``expiry``
and ``group_expiry`` have passed: every key carries a TTL, and nothing calls flush()."""

from __future__ import annotations

import asyncio

import pytest
import redis

from layers.redis import RedisChannelLayer
from tests.leftovers import drive, seconds_until_empty

pytestmark = pytest.mark.timeout(60)

EXPIRY = 2
GROUP_EXPIRY = 3
#: Past the group expiry (the longest lifetime here): a group key lives group_expiry + 1 s
#: after its last group_add, and slack for a loaded machine (a deadline, not a sleep).
MARGIN = 15.0


def keys_under(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return [key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        client.close()


def keys_without_ttl(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return [key for key in keys_under(url, prefix) if client.ttl(key) == -1]
    finally:
        client.close()


async def test_nothing_stays_after_expiry(shared_redis: str, prefix: str) -> None:
    assert keys_under(shared_redis, prefix) == []  # the baseline
    config = {"hosts": [shared_redis], "prefix": prefix, "expiry": EXPIRY}
    sender = RedisChannelLayer(**config, group_expiry=GROUP_EXPIRY)
    receiver = RedisChannelLayer(**config, group_expiry=GROUP_EXPIRY)
    try:
        await drive(sender, receiver)
        assert await asyncio.to_thread(keys_under, shared_redis, prefix), "traffic stored nothing"
        assert await asyncio.to_thread(keys_without_ttl, shared_redis, prefix) == []
    finally:
        await sender.close()
        await receiver.close()

    async def left() -> list[str]:
        return await asyncio.to_thread(keys_under, shared_redis, prefix)

    took = await seconds_until_empty(left, f"keys under {prefix}:", timeout=GROUP_EXPIRY + MARGIN)
    print(f"redis: keys under the prefix gone {took:.1f} s after traffic stopped")
