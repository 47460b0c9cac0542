"""What a Redis server shows, to wait for (``wait_until`` itself is in tests/waiting.py).

Tests wait for what they rely on (a receive parked in a blocking pop, a message arrived)
with a deadline, polling often, so they take as long as the condition and fail with a
message, not a hang, when it never comes.
"""

from __future__ import annotations

import redis.asyncio as redis

from tests.waiting import WAIT_TIMEOUT, wait_until

__all__ = ["blocked_clients", "client_list", "wait_blocked", "wait_until"]


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
