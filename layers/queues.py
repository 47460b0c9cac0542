"""In-process channel buffers: the memory layer's storage, and every network layer's buffer
for the process-local channels its receive loop drains.

Each channel is a deque of ``(expires_at, payload)``; a receiver that finds nothing parks a
waiter on every channel it listens to and ``put`` wakes exactly one of them, so a send costs
O(1) however many channels or waiters exist. Receivers are only *woken*, never handed the
message: the woken receiver pops it itself, so a receiver cancelled between wake-up and
resumption cannot take a message down with it.

A wake-up is a promise that someone will look at a channel, so it must never vanish:

- a woken waiter counts as woken from the moment it is *chosen*, even while its resolution
  is still queued on another thread's loop, so a second ``put`` wakes someone else;
- a waiter on several channels woken for one of them may take an entry of another (it
  takes the first listed channel holding one); then the wake-up it was given is passed on;
- a chosen waiter that is cancelled passes its wake-up on too.

One instance is shared by every thread of a process (``async_to_sync`` from Django views
and Celery tasks, each thread with a loop of its own), so all state sits behind one
``threading.Lock``; no call holds it across an ``await``, and waiters on other loops are
resolved with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

Clock = Callable[[], float]


class _Waiter:
    """A parked ``get``: its future, and whether a put has already chosen it."""

    __slots__ = ("chosen", "future")

    def __init__(self, future: asyncio.Future[str]) -> None:
        self.future = future
        self.chosen = False


class LocalQueues(Generic[T]):
    def __init__(self, clock: Clock = time.monotonic, sweep_interval: float = 60.0) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._queues: dict[str, deque[tuple[float, T]]] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}
        # Expired entries are normally dropped when their channel is read or written; a
        # channel nobody touches again is caught by an occasional full sweep instead.
        self._sweep_interval = sweep_interval
        self._next_sweep = clock() + sweep_interval

    def __len__(self) -> int:
        with self._lock:
            return sum(len(queue) for queue in self._queues.values())

    @property
    def channels(self) -> list[str]:
        with self._lock:
            return list(self._queues)

    def size(self, channel: str) -> int:
        """Unexpired entries on ``channel``."""
        with self._lock:
            return self._size(channel, self._clock())

    def put(self, channel: str, payload: T, expires_at: float) -> None:
        # The hot path of every network layer's delivery: inlined, since a call costs as
        # much as the lock.
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)
            queue = self._queues.get(channel)
            if queue is None:
                queue = self._queues[channel] = deque()
            queue.append((expires_at, payload))
            if channel in self._waiters:
                self._wake(channel)

    def put_if_room(self, channel: str, payload: T, expires_at: float, capacity: int) -> bool:
        """Append unless ``channel`` already holds ``capacity`` unexpired entries.

        Check and append are one step, so concurrent senders on several threads can never
        overfill a channel between them. Returns whether the entry went in.
        """
        # The hot path of every memory-layer send: inlined like put.
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)
            queues = self._queues
            queue = queues.get(channel)
            if queue is None:
                queue = queues[channel] = deque()
            else:
                # Never empty while listed: a queue that empties is dropped from the dict.
                if queue[0][0] <= now:
                    self._drop_expired(channel, queue, now)
                    queues[channel] = queue
                if len(queue) >= capacity:
                    if not queue:
                        del queues[channel]
                    return False
            queue.append((expires_at, payload))
            if channel in self._waiters:
                self._wake(channel)
            return True

    def put_front(self, channel: str, payload: T, expires_at: float) -> None:
        """Give back an entry taken but not delivered, ahead of everything else."""
        with self._lock:
            queue = self._queues.get(channel)
            if queue is None:
                queue = self._queues[channel] = deque()
            queue.appendleft((expires_at, payload))
            if channel in self._waiters:
                self._wake(channel)

    def pop_nowait(self, channels: Sequence[str]) -> tuple[str, T] | None:
        """The first unexpired entry of the first listed channel that has one."""
        # The hot path of every receive: _pop inlined, like put.
        with self._lock:
            now = self._clock()
            for channel in channels:
                queue = self._queues.get(channel)
                if queue is None:
                    continue
                if queue[0][0] <= now:
                    self._drop_expired(channel, queue, now)
                    if not queue:
                        continue
                _, payload = queue.popleft()
                if not queue:
                    del self._queues[channel]
                return channel, payload
            return None

    async def get(self, channels: Sequence[str]) -> tuple[str, T]:
        """Wait for the first entry on any of ``channels``; cancellation loses nothing."""
        if len(channels) == 1:
            return await self.get_one(channels[0])
        loop = asyncio.get_running_loop()
        woken_for: str | None = None
        waiter: _Waiter | None = None
        while True:
            with self._lock:
                if waiter is not None and len(channels) > 1:
                    # Chosen on one channel, it is still parked on the others.
                    self._forget(waiter, channels)
                found = self._pop(channels, self._clock())
                if found is not None:
                    if woken_for is not None and found[0] != woken_for:
                        self._pass_on(channels)
                    return found
                # Checking and parking under one lock hold: a put in between would find
                # nobody to wake and its entry would sit unnoticed.
                waiter = _Waiter(loop.create_future())
                for channel in channels:
                    self._waiters.setdefault(channel, deque()).append(waiter)
            try:
                woken_for = await waiter.future
            except BaseException:
                with self._lock:
                    self._forget(waiter, channels)
                    if waiter.chosen:
                        # A put chose us just as we were cancelled; that wake-up was meant
                        # for a receiver, and puts meanwhile skipped us as already woken.
                        self._pass_on(channels)
                raise

    async def get_one(self, channel: str) -> tuple[str, T]:
        """``get((channel,))``, the hot path of every receive, for callers to use directly:
        no wake-up to pass on (what it finds is always of the channel it was woken for)."""
        lock = self._lock
        queues = self._queues
        while True:
            with lock:
                queue = queues.get(channel)
                if queue is not None:
                    now = self._clock()
                    if queue[0][0] <= now:
                        self._drop_expired(channel, queue, now)
                    if queue:
                        payload = queue.popleft()[1]
                        if not queue:
                            del queues[channel]
                        return channel, payload
                waiter = _Waiter(asyncio.get_running_loop().create_future())
                waiters = self._waiters.get(channel)
                if waiters is None:
                    waiters = self._waiters[channel] = deque()
                waiters.append(waiter)
            try:
                await waiter.future
            except BaseException:
                with lock:
                    self._forget(waiter, (channel,))
                    if waiter.chosen:
                        self._pass_on((channel,))
                raise

    def remove(self, channel: str) -> None:
        with self._lock:
            self._queues.pop(channel, None)

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired entry and empty channel; returns how many entries went."""
        with self._lock:
            return self._sweep(self._clock() if now is None else now)

    # -- under the lock ---------------------------------------------------------------

    def _size(self, channel: str, now: float) -> int:
        queue = self._queues.get(channel)
        if queue is None:
            return 0
        self._drop_expired(channel, queue, now)
        return len(queue)

    def _pop(self, channels: Sequence[str], now: float) -> tuple[str, T] | None:
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

    def _sweep(self, now: float) -> int:
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

    def _pass_on(self, channels: Sequence[str]) -> None:
        for channel in channels:
            if channel in self._queues and channel in self._waiters:
                self._wake(channel)

    def _wake(self, channel: str) -> None:
        waiters = self._waiters[channel]
        running = asyncio._get_running_loop()
        while waiters:
            waiter = waiters.popleft()
            future = waiter.future
            if waiter.chosen or future.done():
                continue
            loop = future.get_loop()
            if loop is running:
                future.set_result(channel)
            else:
                # A waiter on another thread's loop (async_to_sync from a worker thread).
                try:
                    loop.call_soon_threadsafe(_resolve, future, channel)
                except RuntimeError:
                    # Its loop closed under it; nobody will ever run that receive.
                    continue
            waiter.chosen = True
            break
        if not waiters:
            del self._waiters[channel]

    def _forget(self, waiter: _Waiter, channels: Sequence[str]) -> None:
        for channel in channels:
            waiters = self._waiters.get(channel)
            if waiters is None:
                continue
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                del self._waiters[channel]


def _resolve(future: asyncio.Future[str], channel: str) -> None:
    # Cancelled in the meantime: its get() passes the wake-up on as it unwinds.
    if not future.done():
        future.set_result(channel)
