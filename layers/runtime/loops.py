"""State that belongs to one event loop, kept per loop and closed with it.

Connections and tasks belong to the loop that made them: ``async_to_sync`` runs every call
in a fresh loop and closes it afterwards, and Django runs many such calls from many threads
at once against one layer instance. :class:`PerLoop` hands each loop its own state, safely
across threads, and closes that state inside its loop just before the loop closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

logger = logging.getLogger("layers")


class LoopBound(Protocol):
    async def close(self) -> None:
        """Release everything, awaiting inside the owning loop."""

    def abandon(self) -> None:
        """Drop everything without awaiting: the owning loop is already closed."""


S = TypeVar("S", bound=LoopBound)


class PerLoop(Generic[S]):
    """One ``S`` per running event loop, made on first use by ``factory(loop)``."""

    def __init__(self, factory: Callable[[asyncio.AbstractEventLoop], S]) -> None:
        self._factory = factory
        self._states: dict[asyncio.AbstractEventLoop, S] = {}
        # Reads are plain dict lookups (atomic under the GIL); only making, replacing and
        # dropping states take the lock, so two threads never both make one loop's state.
        self._lock = threading.Lock()

    def get(self) -> S:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is not None:
            return state
        with self._lock:
            state = self._states.get(loop)
            if state is not None:
                return state
            for closed in [other for other in self._states if other.is_closed()]:
                self._states.pop(closed).abandon()
            state = self._states[loop] = self._factory(loop)
        close_with_loop(loop, lambda: self._close_one(loop, state))
        return state

    def peek(self) -> S | None:
        """The running loop's state if it has one (never makes one)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._states.get(loop)

    async def _close_one(self, loop: asyncio.AbstractEventLoop, state: S) -> None:
        with self._lock:
            if self._states.get(loop) is state:
                del self._states[loop]
        await state.close()

    async def close(self) -> None:
        """Close every loop's state: awaited in this loop, scheduled in loops running
        elsewhere, dropped for loops already closed."""
        running = asyncio.get_running_loop()
        with self._lock:
            states, self._states = self._states, {}
        for loop, state in states.items():
            if loop is running:
                await state.close()
            elif loop.is_closed():
                state.abandon()
            elif loop.is_running():
                # Not awaited: that loop's thread may be blocked waiting on this one.
                asyncio.run_coroutine_threadsafe(state.close(), loop)
            # A loop neither running nor closed closes the state itself when it closes.


def close_with_loop(
    loop: asyncio.AbstractEventLoop, cleanup: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``cleanup`` inside ``loop`` just before it closes, so connections and tasks end
    in the loop that owns them (``async_to_sync`` closes a loop after every call)."""
    original = loop.close

    def close() -> None:
        if not loop.is_running() and not loop.is_closed():
            try:
                loop.run_until_complete(cleanup())
            except (Exception, asyncio.CancelledError):
                # Cancelled: a library's task this cleanup awaited was cancelled by the
                # loop's shutdown (asyncio.run cancels every task before closing).
                logger.debug("closing connections with their loop failed", exc_info=True)
        original()

    # Loops that refuse new attributes (uvloop) drop connections when collected instead.
    with contextlib.suppress(AttributeError):
        loop.close = close  # type: ignore[method-assign]


class Turn:
    """A lock across event loops and threads, for a queue whose order matters.

    Receive loops of one instance in several event loops (``async_to_sync`` calls from
    several threads) may all drain the instance's process-local queue. Each takes a batch
    and files it into the shared buffer; two batches filed in the other order would break
    FIFO per channel. Taking turns, a batch is fetched and filed before the next is taken.
    Waiting for a turn never blocks a thread: waiters park a future on their own loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if not self._held:
                    self._held = True
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    elif not self._held:
                        # Woken just as we were cancelled: pass the turn on.
                        self._wake_next()
                raise

    def release(self) -> None:
        with self._lock:
            self._held = False
            self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            try:
                waiter.get_loop().call_soon_threadsafe(self._resolve, waiter)
            except RuntimeError:
                continue  # its loop is closed: nobody waits there any more
            return

    def _resolve(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)
            return
        # Cancelled before the wake-up ran: the next waiter gets it.
        with self._lock:
            if not self._held:
                self._wake_next()


class Duty:
    """Background work one event loop of an instance does at a time (a cleanup, a
    janitor): the first loop to ask takes it, and another may once that loop is closed or
    lets it go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def claim(self, loop: asyncio.AbstractEventLoop) -> bool:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                self._loop = loop
            return self._loop is loop

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._loop is loop:
                self._loop = None

    async def end(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None] | None) -> None:
        """Stop ``task``, the duty's work in ``loop``, and let another loop take it on."""
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        self.release(loop)
