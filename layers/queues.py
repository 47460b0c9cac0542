"""In-process channel buffers: the memory layer's storage, and every network layer's buffer
for the process-local channels its receive loop drains.

Each channel is a deque of ``(expires_at, payload)``; a receiver that finds nothing parks a
future on every channel it listens to and ``put`` wakes exactly one of them, so a send costs
O(1) however many channels or waiters exist. Receivers are only *woken*, never handed the
message: the woken receiver pops it itself, so a receiver cancelled between wake-up and
resumption cannot take a message down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

Clock = Callable[[], float]


class LocalQueues(Generic[T]):
    def __init__(self, clock: Clock = time.monotonic, sweep_interval: float = 60.0) -> None:
        self._clock = clock
        self._queues: dict[str, deque[tuple[float, T]]] = {}
        self._waiters: dict[str, deque[asyncio.Future[str]]] = {}
        # Expired entries are normally dropped when their channel is read or written; a
        # channel nobody touches again is caught by an occasional full sweep instead.
        self._sweep_interval = sweep_interval
        self._next_sweep = clock() + sweep_interval

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    @property
    def channels(self) -> list[str]:
        return list(self._queues)

    def size(self, channel: str) -> int:
        """Unexpired entries on ``channel``."""
        queue = self._queues.get(channel)
        if queue is None:
            return 0
        self._drop_expired(channel, queue, self._clock())
        return len(queue)

    def put(self, channel: str, payload: T, expires_at: float) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep(now)
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = deque()
        queue.append((expires_at, payload))
        if channel in self._waiters:
            self._wake(channel)

    def put_front(self, channel: str, payload: T, expires_at: float) -> None:
        """Give back an entry taken but not delivered, ahead of everything else."""
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = deque()
        queue.appendleft((expires_at, payload))
        if channel in self._waiters:
            self._wake(channel)

    def pop_nowait(self, channels: Sequence[str]) -> tuple[str, T] | None:
        """The first unexpired entry of the first listed channel that has one."""
        now = self._clock()
        for channel in channels:
            queue = self._queues.get(channel)
            if queue is None:
                continue
            self._drop_expired(channel, queue, now)
            if queue:
                _, payload = queue.popleft()
                if not queue:
                    del self._queues[channel]
                return channel, payload
        return None

    async def get(self, channels: Sequence[str]) -> tuple[str, T]:
        """Wait for the first entry on any of ``channels``; cancellation loses nothing."""
        while True:
            found = self.pop_nowait(channels)
            if found is not None:
                return found
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            for channel in channels:
                self._waiters.setdefault(channel, deque()).append(waiter)
            try:
                await waiter
            except BaseException:
                self._forget(waiter, channels)
                # If a put woke us just as we were cancelled, that wake-up was meant for a
                # receiver: pass it on so the entry does not sit unnoticed.
                for channel in channels:
                    if channel in self._queues:
                        self._wake(channel)
                raise
            if len(channels) > 1:
                self._forget(waiter, channels)

    def remove(self, channel: str) -> None:
        self._queues.pop(channel, None)

    def clear(self) -> None:
        self._queues.clear()

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired entry and empty channel; returns how many entries went."""
        now = self._clock() if now is None else now
        self._next_sweep = now + self._sweep_interval
        dropped = 0
        for channel, queue in list(self._queues.items()):
            before = len(queue)
            self._drop_expired(channel, queue, now)
            dropped += before - len(queue)
        return dropped

    def _drop_expired(self, channel: str, queue: deque[tuple[float, T]], now: float) -> None:
        # Entries on one channel share one expiry, so they expire in order from the head.
        while queue and queue[0][0] <= now:
            queue.popleft()
        if not queue:
            self._queues.pop(channel, None)

    def _wake(self, channel: str) -> None:
        waiters = self._waiters.get(channel)
        running = asyncio._get_running_loop()
        while waiters:
            waiter = waiters.popleft()
            if waiter.done():
                continue
            loop = waiter.get_loop()
            if loop is running:
                waiter.set_result(channel)
            elif loop.is_closed():
                continue
            else:
                # A waiter on another thread's loop (async_to_sync from a worker thread).
                loop.call_soon_threadsafe(_resolve, waiter, channel)
            break
        if waiters is not None and not waiters:
            del self._waiters[channel]

    def _forget(self, waiter: asyncio.Future[str], channels: Sequence[str]) -> None:
        for channel in channels:
            waiters = self._waiters.get(channel)
            if waiters is None:
                continue
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                del self._waiters[channel]


def _resolve(waiter: asyncio.Future[str], channel: str) -> None:
    if not waiter.done():
        waiter.set_result(channel)
