"""The LISTEN connection of one layer instance in one event loop: wake-ups, never messages.

One dedicated autocommit connection, outside the pool, LISTENs on the NOTIFY channels its
receive loops need, and only those, from the first time one needs them: the instance's own
(its process-local queue: only it reads that) and one per ordinary channel it receives on.
A process that never receives on ordinary channels (a web server) hears nothing of what is
sent to workers. A NOTIFY's payload names the queue that got a message; receive loops
waiting on that queue are woken and claim. Wake-ups are hints: each receive loop also
claims every ``poll_interval`` seconds, and after a reconnect every waiter is woken, since
notifications sent while the connection was down are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import psycopg
import psycopg.pq

from layers.errors import BackendUnavailable
from layers.runtime.boundary import Boundary

logger = logging.getLogger("layers.postgres")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class Listener:
    def __init__(
        self,
        connect: dict[str, Any],
        boundary: Boundary,
        retry_timeout: float,
    ) -> None:
        self._connect = connect
        self._boundary = boundary
        self._retry_timeout = retry_timeout
        # NOTIFY channels wanted (in the order first asked for), and those LISTENed on the
        # current connection.
        self._wanted: dict[str, None] = {}
        self._listening: set[str] = set()
        # queue -> futures of the receive loops waiting for it
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._generation: dict[str, int] = {}
        self._epoch = 0
        # Set when the connection has something to read or names wait to be LISTENed.
        self._nudge: asyncio.Event | None = None
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def ready(self, names: Iterable[str]) -> None:
        """Wait until ``names`` are LISTENed on (a claim made after it misses no wake-up)."""
        missing = [name for name in names if name not in self._listening]
        if not missing:
            return
        for name in missing:
            self._wanted.setdefault(name)
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._nudge = asyncio.Event()
            self._task = loop.create_task(self._run())
        assert self._nudge is not None
        while any(name not in self._listening for name in missing):
            if self._ready is None or self._ready.done():
                self._ready = loop.create_future()
            self._nudge.set()
            await asyncio.shield(self._ready)

    def mark(self, queues: Iterable[str]) -> tuple[int, ...]:
        """Where the wake-ups of ``queues`` stand now; pass to :meth:`wait`."""
        generation = self._generation
        return (self._epoch, *(generation.get(queue, 0) for queue in queues))

    async def wait(
        self,
        queues: tuple[str, ...],
        mark: tuple[int, ...],
        timeout: float,  # noqa: ASYNC109
        interrupt: asyncio.Future[None],
    ) -> None:
        """Wait until one of ``queues`` was notified since ``mark``, ``timeout`` passes or
        ``interrupt`` is set."""
        if self.mark(queues) != mark:
            return
        waiter = asyncio.get_running_loop().create_future()
        for queue in queues:
            self._waiters.setdefault(queue, set()).add(waiter)
        try:
            await asyncio.wait(
                [waiter, interrupt], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for queue in queues:
                waiting = self._waiters.get(queue)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[queue]

    def _wake(self, queue: str) -> None:
        self._generation[queue] = self._generation.get(queue, 0) + 1
        for waiter in self._waiters.get(queue, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all(self) -> None:
        self._epoch += 1
        for waiting in self._waiters.values():
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        failing_since: float | None = None
        while True:
            try:
                with self._boundary:
                    conn = await psycopg.AsyncConnection.connect(**self._connect, autocommit=True)
                    self._conn = conn
                    # Notifications that arrive while a LISTEN runs are read by psycopg.
                    conn.add_notify_handler(self._on_notify)
                    try:
                        await self._listen_all(conn)
                        # Anything sent while we were not listening was never announced.
                        self._wake_all()
                        failing_since, backoff = None, _FIRST_BACKOFF
                        while True:
                            await self._read(conn)
                            await self._listen_all(conn)
                    finally:
                        self._conn = None
                        self._listening = set()
                        with contextlib.suppress(Exception):
                            await conn.close()
            except BackendUnavailable as exc:
                stop_if_cancelled()
                now = time.monotonic()
                failing_since = failing_since or now
                logger.debug("listener: %s", exc)
                ready = self._ready
                if (
                    ready is not None
                    and not ready.done()
                    and now - failing_since >= self._retry_timeout
                ):
                    # Receive loops waiting to start hear of the outage; the next ready()
                    # tries again.
                    ready.set_exception(exc)
                    ready.exception()
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _listen_all(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for name in list(self._wanted):
            if name not in self._listening:
                await conn.execute(f'LISTEN "{name}"')
                self._listening.add(name)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _on_notify(self, notify: psycopg.Notify) -> None:
        self._wake(notify.payload)

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read notifications until the connection fails or names wait to be LISTENed.

        Straight from libpq rather than through ``conn.notifies()``: this loop is
        cancelled by every event loop that ``async_to_sync`` closes, and older psycopg
        releases could hang in a cancelled ``notifies()``. Here a cancel only removes a
        reader callback.
        """
        pgconn = conn.pgconn
        fd = pgconn.socket
        loop = asyncio.get_running_loop()
        nudge = self._nudge
        assert nudge is not None
        loop.add_reader(fd, nudge.set)
        try:
            while True:
                await nudge.wait()
                nudge.clear()
                pgconn.consume_input()
                while (notify := pgconn.notifies()) is not None:
                    self._wake(notify.extra.decode())
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the LISTEN connection was closed")
                if len(self._listening) < len(self._wanted):
                    return
        finally:
            loop.remove_reader(fd)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._wake_all()

    def abandon(self) -> None:
        self._task = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled but goes on running.

    psycopg's connect can turn a cancellation that arrives mid-connect into a connection
    error (Python 3.11's ``wait_for`` drops it as its inner future finishes); a loop that
    then retried would never end, and neither would ``asyncio.run``'s shutdown.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
