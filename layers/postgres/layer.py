"""The PostgreSQL channel layer. See ``layers/postgres/README.md`` for the design."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Hashable, Sequence
from typing import Any, cast

import psycopg
import psycopg.errors
from channels.exceptions import ChannelFull
from psycopg.conninfo import conninfo_to_dict

from layers.base import Message, int_option, seconds_option
from layers.errors import BackendUnavailable, ConfigurationError
from layers.postgres import sql
from layers.postgres.connections import ConnectFailed, Connections
from layers.postgres.listener import Listener, stop_if_cancelled
from layers.postgres.receiver import PostgresSource, to_fetched
from layers.postgres.sends import Outgoing, Sends
from layers.runtime import Fetched, NetworkLayer
from layers.runtime.boundary import Boundary
from layers.runtime.loops import Duty

logger = logging.getLogger("layers.postgres")

# Advisory lock keys (any bigint unlikely to collide with an application's own).
_SCHEMA_LOCK = 0x6C61_7965_7273_0001
_CLEANUP_LOCK = 0x6C61_7965_7273_0002
_CLEANUP_BATCH = 5000
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 0.5

SourceKey = tuple[bool, tuple[str, ...]]

# Errors that say the statement never ran to commit: safe to try again on a new connection.
_NEVER_RAN = (
    ConnectFailed,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CrashShutdown,
    psycopg.errors.CannotConnectNow,
    # Rolled back by the server, so not run; PostgreSQL asks the client to try again.
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)


class PostgresChannelLayer(NetworkLayer):
    """A channel layer on one PostgreSQL database (PostgreSQL 12 or later).

    Config, besides the :class:`~layers.base.BaseLayer` keys:

    - ``dsn`` (None): libpq conninfo (``"host=db dbname=app"``) or URL
      (``"postgresql://user@db/app"``); missing parts come from the ``PG*`` environment
      variables, as with ``psql``.
    - ``pool_size`` (10): connections per event loop for statements, at most; each event
      loop with a waiting receive holds one more, its LISTEN connection.
    - ``durable`` (False): create the tables as ordinary logged tables instead of
      ``UNLOGGED`` ones (which skip the WAL and are emptied after a server crash).
    - ``poll_interval`` (1.0): seconds a waiting receive goes without a NOTIFY before it
      claims anyway (the safety net under wake-ups).
    - ``connect_timeout`` (5.0), ``retry_timeout`` (5.0): seconds to connect, and how long
      an unreachable server is retried before calls raise
      :class:`~layers.errors.BackendUnavailable` naming it.
    - ``local_batch`` (500): messages of this instance's process-local channels read at a
      time (each read is a statement: bench group, 200 members, 8,700 deliveries/s at 100,
      11,900 at 500).
    - ``prefetch`` (0): extra messages of an ordinary channel a waiting receive may claim
      along with its own, kept in this instance's buffer for the next receives. One claim
      then serves several receives (bench throughput: see docs/benchmarks.md), at the
      cost of fairness: up to ``prefetch`` messages wait in this process while receivers
      elsewhere may be idle, and they are lost if the process dies before receiving them.
    - ``cleanup_interval`` (30.0): seconds between deletes of expired messages and lapsed
      memberships (by one instance at a time).
    """

    def __init__(
        self,
        *,
        dsn: str | None = None,
        pool_size: int = 10,
        durable: bool = False,
        poll_interval: float = 1.0,
        connect_timeout: float = 5.0,
        retry_timeout: float = 5.0,
        local_batch: int = 500,
        prefetch: int = 0,
        cleanup_interval: float = 30.0,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        if dsn is not None and not isinstance(dsn, str):
            raise ConfigurationError(f"dsn must be a connection string or URL, not {dsn!r}")
        try:
            params = conninfo_to_dict(dsn or "")
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"dsn {dsn!r} cannot be read: {exc}") from None
        if not isinstance(durable, bool):
            raise ConfigurationError(f"durable must be True or False, not {durable!r}")
        self.durable = durable
        self.pool_size = int_option("pool_size", pool_size)
        self.poll_interval = seconds_option("poll_interval", poll_interval)
        self.connect_timeout = seconds_option("connect_timeout", connect_timeout)
        self.retry_timeout = seconds_option("retry_timeout", retry_timeout)
        self.local_batch = int_option("local_batch", local_batch)
        self.prefetch = int_option("prefetch", prefetch, low=0, high=99)
        self.cleanup_interval = seconds_option("cleanup_interval", cleanup_interval)
        self.linger = 2 * self.poll_interval
        self.address = _address(params)
        if "application_name" not in params and "PGAPPNAME" not in os.environ:
            params["application_name"] = "channel-layers"
        params.setdefault("connect_timeout", max(1, round(self.connect_timeout)))
        self._connect = params
        self.boundary = Boundary(
            self.address,
            refused=(
                psycopg.ProgrammingError,
                psycopg.DataError,
                psycopg.IntegrityError,
                psycopg.InternalError,
                psycopg.NotSupportedError,
            ),
            unavailable=(psycopg.OperationalError, psycopg.InterfaceError, OSError),
        )
        # NOTIFY channels (at most 63 bytes): one per ordinary channel, and one per
        # instance for its process-local queue, so that only its owner is woken.
        self._notify_base = "cl1_" + _digest(self.prefix)
        self._notify_names: dict[str, str] = {}
        self._schema_ready = False
        # Ids of local messages read and filed, still to delete (see claim_local.sql).
        self._local_done: list[int] = []
        # One event loop per instance runs the cleanup.
        self.janitor = Duty()

    # -- names -----------------------------------------------------------------------------

    @staticmethod
    def _queue(channel: str) -> str:
        """Where ``channel``'s messages wait: the channel itself, or for a process-local
        channel its owner instance's one queue ``<instance>!``, whatever prefix
        ``new_channel`` was given.

        One queue per instance, not one per ``new_channel`` prefix: claim_local.sql reads
        rows and deletes them on the next read, with one list of ids for the instance, so
        one reader at a time may read them. Local channels of two prefixes had two receive
        loops whose reads overwrote each other's ids, and rows were read (and delivered)
        twice.
        """
        bang = channel.find("!")
        if bang < 0:
            return channel
        return channel[channel.rfind(".", 0, bang) + 1 : bang + 1]

    def _notify_target(self, queue: str) -> str:
        """The NOTIFY channel that wakes the readers of ``queue``."""
        name = self._notify_names.get(queue)
        if name is None:
            if queue.endswith("!"):
                owner = queue[queue.rfind(".", 0, len(queue) - 1) + 1 : -1]
                if len(owner) > 24 or not owner.isalnum():
                    owner = _digest(owner)  # not one of ours: any owner may be named
                name = f"{self._notify_base}_{owner}"
            else:
                name = f"{self._notify_base}.{_digest(queue)}"
            if len(self._notify_names) >= 10_000:
                self._notify_names.clear()
            self._notify_names[queue] = name
        return name

    # -- the transport ---------------------------------------------------------------------

    def _open_transport(self, loop: asyncio.AbstractEventLoop) -> _Transport:
        return _Transport(self, loop)

    def _sources(self, channels: tuple[str, ...]) -> list[Hashable]:
        local = tuple(dict.fromkeys(self._queue(c) for c in channels if "!" in c))
        plain = tuple(c for c in channels if "!" not in c)
        keys: list[Hashable] = []
        if plain:
            keys.append((False, plain))
        if local:
            keys.append((True, local))
        return keys

    def _transport(self) -> _Transport:
        return cast(_Transport, self._state().transport)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        self.require_valid_channel_name(channel)
        data = self.encode(message, channel)
        queue = self._queue(channel)
        capacity = self.get_capacity(channel)
        outgoing = Outgoing(queue, channel, capacity, data, self._notify_target(queue))
        if not await self._transport().sends.send(outgoing):
            raise ChannelFull(f"channel {channel!r} is at capacity ({capacity})")

    # -- groups ----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        queue = self._queue(channel)
        await self._transport().run(
            "group_add",
            {
                "prefix": self.prefix,
                "group": group,
                "channel": channel,
                "queue": queue,
                "listen": self._notify_target(queue),
                "group_expiry": float(self.group_expiry),
            },
            retry=True,
        )

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._transport().run(
            "group_discard", {"prefix": self.prefix, "group": group, "channel": channel}, retry=True
        )

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        data = self.encode(message, group)
        transport = self._transport()
        if not self.channel_capacity:
            await transport.run(
                "group_send",
                {
                    "prefix": self.prefix,
                    "group": group,
                    "expiry": float(self.expiry),
                    "payload": data,
                    "capacity": self.capacity,
                },
            )
            return
        # Capacities by channel pattern: the members are read here to learn each one's.
        rows = await transport.run(
            "group_members", {"prefix": self.prefix, "group": group}, rows=True, retry=True
        )
        if not rows:
            return
        wake = {queue: listen for _, queue, listen in rows}
        await transport.run(
            "group_send_each",
            {
                "prefix": self.prefix,
                "expiry": float(self.expiry),
                "payload": data,
                "queues": [queue for _, queue, _ in rows],
                "channels": [channel for channel, _, _ in rows],
                "capacities": [self.get_capacity(channel) for channel, _, _ in rows],
                "listens": list(wake.values()),
                "keys": list(wake),
                "wake_queues": list(wake),
            },
        )

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self) -> None:
        await self._transport().run("flush", {"prefix": self.prefix}, retry=True)
        self._buffer.clear()

    async def _create_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        exists = sql.load("schema_exists")
        row = await (await conn.execute(exists, prepare=False)).fetchone()
        if not (row and row[0]):
            async with conn.transaction():
                # Processes starting together would race on CREATE ... IF NOT EXISTS.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1)", (_SCHEMA_LOCK,), prepare=False
                )
                row = await (await conn.execute(exists, prepare=False)).fetchone()
                if not (row and row[0]):
                    await conn.execute(sql.schema(self.durable).encode(), prepare=False)
        self._schema_ready = True

    async def ensure_schema(self) -> None:
        """Create the tables and indexes now if they are missing (idempotent)."""
        with self.boundary:
            async with self._transport().connections().connection() as conn:
                await self._create_schema(conn)


class _Transport:
    """The pool and the listener of one layer instance in one event loop."""

    def __init__(self, layer: PostgresChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self._pool: Connections | None = None
        self.listener = Listener(layer._connect, layer.boundary, layer.retry_timeout)
        self._janitor: asyncio.Task[None] | None = None
        self.sends = Sends(self._send_one, self._send_many)

    def connections(self) -> Connections:
        connections = self._pool
        if connections is None:
            layer = self.layer
            connections = self._pool = Connections(layer._connect, layer.pool_size)
            if layer.janitor.claim(self.loop):
                self._janitor = self.loop.create_task(self._clean())
        return connections

    async def run(
        self,
        name: str,
        params: dict[str, Any],
        *,
        rows: bool = False,
        retry: bool = False,
        prepare: bool = True,
    ) -> Any:
        """Run one statement of ``name``.sql on a pooled connection.

        ``retry``: the statement is safe to repeat, so a failure is retried (with backoff,
        within ``retry_timeout``). Other statements are repeated only when they certainly
        never ran (no connection, or the server ended the connection before running them).
        """
        layer = self.layer
        statement = sql.statement(name)
        args = statement.args(params)
        delay = _FIRST_BACKOFF
        deadline = time.monotonic() + layer.retry_timeout
        while True:
            try:
                with layer.boundary:
                    async with self.connections().connection() as conn:
                        if not layer._schema_ready:
                            await layer._create_schema(conn)
                        cursor = await conn.execute(statement.text, args, prepare=prepare)
                        if cursor.description is None:
                            return None
                        return await (cursor.fetchall() if rows else cursor.fetchone())
            except BackendUnavailable as exc:
                if not (retry or isinstance(exc.__cause__, _NEVER_RAN)):
                    raise
                stop_if_cancelled()
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
            except Exception as exc:
                # Dropped under us (a test, an operator): make it again, once.
                if isinstance(exc.__cause__, psycopg.errors.UndefinedTable) and layer._schema_ready:
                    layer._schema_ready = False
                    continue
                raise

    # -- sending ---------------------------------------------------------------------------

    async def _send_one(self, item: Outgoing) -> bool:
        row = await self.run(
            "send",
            {
                "prefix": self.layer.prefix,
                "queue": item.queue,
                "channel": item.channel,
                "expiry": float(self.layer.expiry),
                "payload": item.payload,
                "capacity": item.capacity,
                "listen": item.listen,
                "key": item.queue,
            },
        )
        return bool(row and row[0])

    async def _send_many(self, items: list[Outgoing]) -> list[bool]:
        rows = await self.run(
            "send_batch",
            {
                "prefix": self.layer.prefix,
                "expiry": float(self.layer.expiry),
                "queues": [item.queue for item in items],
                "channels": [item.channel for item in items],
                "capacities": [item.capacity for item in items],
                "payloads": [item.payload for item in items],
                "listens": [item.listen for item in items],
            },
            rows=True,
        )
        return [bool(row[0]) for row in rows]

    # -- receiving -------------------------------------------------------------------------

    def source(self, key: Hashable) -> PostgresSource:
        drain, queues = cast(SourceKey, key)
        layer = self.layer
        return PostgresSource(
            layer.address,
            queues,
            drain=drain,
            listener=self.listener,
            listens=tuple(dict.fromkeys(layer._notify_target(queue) for queue in queues)),
            claim=self._claim_local if drain else self._claim,
            give_back=self._give_back,
            poll_interval=layer.poll_interval,
        )

    async def _claim(self, queues: tuple[str, ...], limit: int) -> list[tuple[Any, ...]]:
        rows = await self.run(
            "claim",
            {"prefix": self.layer.prefix, "queues": list(queues), "limit": limit},
            rows=True,
        )
        return cast(list[tuple[Any, ...]], rows)

    async def _claim_local(self, queues: tuple[str, ...], limit: int) -> list[tuple[Any, ...]]:
        # One fetch at a time per instance (the receive runtime's turn), so `done` is
        # never read and changed by two event loops at once.
        layer = self.layer
        done = list(layer._local_done)
        rows = cast(
            list[tuple[Any, ...]],
            await self.run(
                "claim_local",
                {"prefix": layer.prefix, "queues": list(queues), "limit": limit, "done": done},
                rows=True,
            ),
        )
        # Returned: the delete of `done` ran. The rows read are filed as soon as this
        # returns (nothing is awaited in between), so from now on they count as done.
        layer._local_done = [row[0] for row in rows]
        return rows

    async def _give_back(self, rows: list[tuple[Any, ...]]) -> None:
        layer = self.layer
        queues = list(dict.fromkeys(row[1] for row in rows))
        await self.run(
            "give_back",
            {
                "prefix": layer.prefix,
                "ids": [row[0] for row in rows],
                "queues": [row[1] for row in rows],
                "channels": [row[2] for row in rows],
                "lefts": [row[3] for row in rows],
                "payloads": [row[4] for row in rows],
                "listens": [layer._notify_target(queue) for queue in queues],
                "keys": queues,
            },
        )

    async def take_waiting(self, keys: Sequence[Hashable]) -> list[Fetched]:
        # Not the instance's local queue: its receive loop may have read rows there that it
        # deletes only on its next read (claim_local.sql); claimed here too, they would be
        # delivered twice. What waits there reaches the buffer through that loop anyway.
        queues = tuple(
            queue
            for key in keys
            if not cast(SourceKey, key)[0]
            for queue in cast(SourceKey, key)[1]
        )
        if not queues:
            return []
        return to_fetched(await self._claim(queues, 1))

    # -- housekeeping ----------------------------------------------------------------------

    async def _clean(self) -> None:
        layer = self.layer
        while True:
            await asyncio.sleep(layer.cleanup_interval)
            try:
                while True:
                    row = await self.run(
                        "cleanup", {"lock": _CLEANUP_LOCK, "batch": _CLEANUP_BATCH}
                    )
                    if not row or max(row) < _CLEANUP_BATCH:
                        break
                await self.run("vacuum", {}, prepare=False)
            except Exception as exc:
                logger.debug("cleanup on %s: %s", layer.address, exc)

    async def close(self) -> None:
        janitor, self._janitor = self._janitor, None
        await self.layer.janitor.end(self.loop, janitor)
        await self.sends.close()
        await self.listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def abandon(self) -> None:
        self.layer.janitor.release(self.loop)
        self.listener.abandon()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.abandon()


def _digest(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:16]


def _address(params: dict[str, Any]) -> str:
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or ""
    return f"{host}:{port}/{dbname}" if dbname else f"{host}:{port}"


__all__ = ["BackendUnavailable", "PostgresChannelLayer"]
