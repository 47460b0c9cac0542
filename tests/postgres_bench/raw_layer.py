"""A bare psycopg 3 INSERT / claim "layer": the yardstick the PostgreSQL layer's throughput
is compared with (``python -m bench --layer tests.postgres_bench.raw_layer.RawPostgresLayer
--config '{"dsn": "postgresql://postgres@127.0.0.1:5432/test"}'``).

One UNLOGGED table of its own (``raw_bench_messages``, created if missing). A send is one
prepared ``INSERT`` (autocommit, ``synchronous_commit = off``); a receive is one claim,
``DELETE ... WHERE id = (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``, and
when the channel is empty it polls: it sleeps 0.5 ms, doubling up to 5 ms, and claims
again. No LISTEN/NOTIFY, capacity, expiry, groups or cancellation safety: only what the
bench's ``throughput`` and ``fan-in`` workloads call. Runs are kept apart by ``prefix``,
which goes in front of every channel name in the table.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import msgpack
import psycopg

TABLE = "raw_bench_messages"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# Any fixed number: serializes CREATE TABLE IF NOT EXISTS between processes starting at once.
_CREATE_LOCK = 0x7261775F62656E63

CREATE = f"""
CREATE UNLOGGED TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_channel_id ON {TABLE} (channel, id)
"""
INSERT = f"INSERT INTO {TABLE} (channel, payload) VALUES (%s, %s)"
CLAIM = f"""
DELETE FROM {TABLE} WHERE id = (
    SELECT id FROM {TABLE} WHERE channel = %s ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1
) RETURNING payload
"""
FIRST_SLEEP = 0.0005
MAX_SLEEP = 0.005


class RawPostgresLayer:
    extensions: list[str] = []

    def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = "raw", **_: Any) -> None:
        self._dsn = dsn
        self._prefix = prefix
        # Like redis-py's pool: a concurrent task takes an idle connection or opens one.
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._created = False

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, options="-c synchronous_commit=off"
        )
        if not self._created:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
                await conn.execute(CREATE)
            self._created = True
        return conn

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        return self._idle.pop() if self._idle else await self._connect()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        conn = await self._take()
        try:
            await conn.execute(
                INSERT, (f"{self._prefix}:{channel}", msgpack.packb(message)), prepare=True
            )
        except BaseException:
            await conn.close()
            raise
        self._idle.append(conn)

    async def receive(self, channel: str) -> dict[str, Any]:
        key, delay = f"{self._prefix}:{channel}", FIRST_SLEEP
        while True:
            conn = await self._take()
            try:
                cursor = await conn.execute(CLAIM, (key,), prepare=True)
                row = await cursor.fetchone()
            except BaseException:
                await conn.close()
                raise
            self._idle.append(conn)
            if row is not None:
                return msgpack.unpackb(row[0])  # type: ignore[no-any-return]
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_SLEEP)

    async def new_channel(self, prefix: str = "specific") -> str:
        return f"{prefix}.raw!{secrets.token_hex(8)}"

    async def flush(self) -> None:
        conn = await self._take()
        try:
            await conn.execute(
                f"DELETE FROM {TABLE} WHERE starts_with(channel, %s)", (f"{self._prefix}:",)
            )
        except BaseException:
            await conn.close()
            raise
        self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
