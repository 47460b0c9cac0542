"""PostgreSQL's part of receiving: claims, woken by the listener, polled as a safety net.

The receive loop itself is the shared one (:mod:`layers.runtime.receiver`). A fetch here
makes sure the instance LISTENs on its queues' NOTIFY channels, claims (``claim.sql``), and when nothing was waiting
waits for a NOTIFY naming one of its queues, ``poll_interval`` at most; the receive loop
then fetches again. Nothing blocks on the server, so interrupting a fetch only ends its
local wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from layers.postgres.listener import Listener
from layers.runtime.receiver import Fetched

Claim = Callable[[tuple[str, ...], int], Awaitable[list[tuple[Any, ...]]]]
GiveBack = Callable[[list[tuple[Any, ...]]], Awaitable[None]]


def to_fetched(rows: list[tuple[Any, ...]]) -> list[Fetched]:
    """Rows of ``claim.sql`` as :class:`Fetched`, oldest first."""
    now = time.monotonic()
    rows.sort(key=lambda row: row[0])
    return [Fetched((row[2],), bytes(row[4]), now + row[3], row) for row in rows if row[3] > 0]


class PostgresSource:
    def __init__(
        self,
        address: str,
        queues: tuple[str, ...],
        *,
        drain: bool,
        listener: Listener,
        listens: tuple[str, ...],
        claim: Claim,
        give_back: GiveBack,
        poll_interval: float,
    ) -> None:
        self.address = address
        self.queues = queues
        self.drain = drain
        self._listener = listener
        self._listens = listens
        self._claim = claim
        self._give_back = give_back
        self._poll_interval = poll_interval
        self._interrupt: asyncio.Future[None] | None = None

    async def fetch(self, count: int) -> list[Fetched]:
        listener = self._listener
        await listener.ready(self._listens)
        mark = listener.mark(self.queues)
        rows = await self._claim(self.queues, count)
        if rows:
            return to_fetched(rows)
        self._interrupt = asyncio.get_running_loop().create_future()
        try:
            await listener.wait(self.queues, mark, self._poll_interval, self._interrupt)
        finally:
            self._interrupt = None
        return []

    async def interrupt(self) -> bool:
        if self._interrupt is not None and not self._interrupt.done():
            self._interrupt.set_result(None)
        return True

    async def give_back(self, items: list[Fetched]) -> None:
        await self._give_back([item.origin for item in items])

    def release(self) -> None:
        pass  # nothing is held between fetches: the listener is the transport's
