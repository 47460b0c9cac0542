"""Concurrent sends of one event loop share statements: one in flight, the rest batched.

A send that finds no other send under way runs its own statement (``send.sql``) in its
own task, so a lone sender pays nothing for this. Sends that arrive while a statement is
in flight wait, and go together as one ``send_batch.sql`` when it returns: one round trip
and one commit for all of them, where PostgreSQL's commit, and its NOTIFY lock, are the
cost that grows with concurrency. Rows keep the order in which their sends were called.

A send cancelled before its batch leaves is not sent; one cancelled after may have been
(at most once either way). A batch that fails fails every send in it, with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import NamedTuple


class Outgoing(NamedTuple):
    queue: str
    channel: str
    capacity: int
    payload: bytes
    listen: str


RunOne = Callable[[Outgoing], Awaitable[bool]]
RunMany = Callable[[list[Outgoing]], Awaitable[list[bool]]]


class Sends:
    def __init__(self, run_one: RunOne, run_many: RunMany) -> None:
        self._run_one = run_one
        self._run_many = run_many
        self._busy = False
        self._waiting: list[tuple[Outgoing, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, item: Outgoing) -> bool:
        """Store one message; False if its channel was full."""
        if not self._busy:
            self._busy = True
            try:
                return await self._run_one(item)
            finally:
                self._busy = False
                self._start_flusher()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        return await future

    def _start_flusher(self) -> None:
        if self._waiting and not self._busy:
            self._busy = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while True:
                batch = [(item, future) for item, future in self._waiting if not future.done()]
                self._waiting.clear()
                if not batch:
                    return
                try:
                    if len(batch) == 1:
                        results = [await self._run_one(batch[0][0])]
                    else:
                        results = await self._run_many([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), stored in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(stored)
        finally:
            self._busy = False
            self._flusher = None

    async def close(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
        for _, future in self._waiting:
            future.cancel()
        self._waiting.clear()
