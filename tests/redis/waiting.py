"""Waiting for a condition instead of sleeping: ``wait_until`` and what the server shows.

Tests wait for what they rely on (a receive parked in a blocking pop, a message arrived)
with a deadline, polling often, so they take as long as the condition and fail with a
message, not a hang, when it never comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis

POLL = 0.01
WAIT_TIMEOUT = 5.0


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109
) -> None:
    """Return once ``predicate()`` (sync or async) is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        await asyncio.sleep(POLL)


async def client_list(port: int) -> list[dict[str, str]]:
    """The server's ``CLIENT LIST``, without the connection asking for it."""
    admin = redis.Redis(port=port, socket_timeout=5)
    try:
        clients: list[dict[str, str]] = await admin.client_list()
        own = str(await admin.client_id())
    finally:
        await admin.aclose()
    return [client for client in clients if client["id"] != own]


def is_blocked(client: dict[str, str]) -> bool:
    """A connection parked in a blocking command (for the layer: ``BLMPOP``, or ``BLPOP``
    before Redis 7). ``cmd`` alone would not do: it names the last command, also once the
    pop has returned. A client flagged ``A`` is being closed (killed), not waiting."""
    return "b" in client["flags"] and "A" not in client["flags"]


async def blocked_clients(port: int) -> int:
    return sum(is_blocked(client) for client in await client_list(port))


async def wait_blocked(port: int, count: int = 1, timeout: float = WAIT_TIMEOUT) -> None:  # noqa: ASYNC109
    """Wait until at least ``count`` connections are parked in a blocking pop."""

    async def enough() -> bool:
        return await blocked_clients(port) >= count

    await wait_until(enough, f"{count} connection(s) block in BLMPOP on :{port}", timeout)
