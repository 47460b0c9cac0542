"""The connections of one layer instance in one event loop, at most ``size`` at a time.

Not psycopg_pool: ``async_to_sync`` makes and closes an event loop per call, and a pool
per loop would start (and have cancelled under it by the loop's shutdown) worker tasks and
a scheduler every time, and its ``close()`` then stops before closing its connections.
What the layer needs is small: idle connections reused, a bound, connections that are not
idle after a statement (broken, or cancelled mid-statement) closed, every connection
closed with its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

# Messages are ephemeral: a commit need not wait for the WAL to reach disk. Claims must
# walk a queue's index in id order and stop at the first rows: where statistics are stale
# (a table that empties and fills all day, and autovacuum off on some servers) the planner
# takes a queue for a row or two and picks a bitmap scan that reads and sorts all of it
# (a claim from a queue of 500: 0.43 ms, against 0.12 ms by the index). Generic plans:
# the statements are prepared once, and planning a claim anew for every execution (what
# PostgreSQL's "auto" mode chose here) doubled its time (0.53 ms -> 0.27 ms a claim).
_SESSION = (
    "SET synchronous_commit = off; SET enable_bitmapscan = off;"
    " SET plan_cache_mode = force_generic_plan"
)


class ConnectFailed(psycopg.OperationalError):
    """No connection could be made: nothing was sent, so a statement may be tried again."""


def _hung_up(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server has spoken on an idle connection: it says nothing unasked (no
    pooled connection LISTENs), so input there is its goodbye (a FATAL, end of file or a
    reset). Such a connection is dropped before a statement goes out on it: after an
    immediate shutdown, a crash or a reset the goodbye is often lost, the statement's
    failure looks like any lost connection, and a send or group_send (not repeatable once
    sent) would fail although it certainly never ran."""
    try:
        fileno = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    if hasattr(select, "poll"):  # select.select cannot take descriptors past FD_SETSIZE
        poller = select.poll()
        poller.register(fileno, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fileno], [], [], 0)
    return bool(readable)


class Connections:
    def __init__(self, connect: dict[str, Any], size: int) -> None:
        self._connect = connect
        self._slots = asyncio.Semaphore(size)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._open: set[psycopg.AsyncConnection[Any]] = set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                if candidate.closed:
                    self._open.discard(candidate)
                elif _hung_up(candidate):
                    await self._discard(candidate)
                else:
                    conn = candidate
            if conn is None:
                conn = await self._new()
            try:
                yield conn
            finally:
                # Reused only when in step: idle, no statement or transaction half done.
                if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                    self._idle.append(conn)
                else:
                    await self._discard(conn)

    async def _new(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                **self._connect,
                autocommit=True,
                prepare_threshold=0,
                # Statements come with $n placeholders (see sql.Statement).
                cursor_factory=psycopg.AsyncRawCursor,
            )
        except psycopg.OperationalError as exc:
            raise ConnectFailed(str(exc)) from exc
        self._open.add(conn)
        try:
            await conn.execute(_SESSION, prepare=False)
        except BaseException:
            await self._discard(conn)
            raise
        return conn

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._open.discard(conn)
        with contextlib.suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        self._idle.clear()
        conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()

    def abandon(self) -> None:
        """Close every socket of a loop already closed (nothing can be awaited there)."""
        self._idle.clear()
        conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()
