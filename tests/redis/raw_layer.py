"""A bare redis-py LPUSH / BRPOP "layer": the yardstick the Redis layer's throughput is
compared with (``python -m bench --layer tests.redis.raw_layer.RawRedisLayer``).

No capacity, expiry, groups or cancellation safety: only ``send`` and ``receive``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import redis.asyncio as redis


class RawRedisLayer:
    extensions: list[str] = []

    def __init__(self, hosts: list[str] | None = None, prefix: str = "raw", **_: Any) -> None:
        self._url = (hosts or ["redis://127.0.0.1:6379/0"])[0]
        self._prefix = prefix
        self._client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self._url, socket_timeout=None)
        return self._client

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis().lpush(f"{self._prefix}:{channel}", msgpack.packb(message))

    async def receive(self, channel: str) -> dict[str, Any]:
        _, data = await self._redis().brpop([f"{self._prefix}:{channel}"])  # type: ignore[misc]
        return msgpack.unpackb(data)  # type: ignore[no-any-return]

    async def new_channel(self, prefix: str = "specific") -> str:
        import secrets

        return f"{prefix}.raw!{secrets.token_hex(8)}"

    async def flush(self) -> None:
        client = self._redis()
        async for key in client.scan_iter(match=f"{self._prefix}:*"):
            await client.delete(key)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
