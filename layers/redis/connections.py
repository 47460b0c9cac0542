"""Connections to one shard, for one event loop, with the layer's own retry rules.

redis-py's pool and retry are bypassed on purpose: its retry would resend a script whose
reply was lost (a duplicate message), and its pool does per-call bookkeeping the layer does
not need. Connections themselves are redis-py's, so every ``hosts`` form (TLS, unix
sockets, Sentinel) works unchanged.

What is retried, with backoff, for up to ``retry_timeout`` seconds:

- failing to connect (nothing reached the server);
- any failure of a command that is safe to repeat (reads, ``ZADD``, ``SCRIPT LOAD``...).

A send or pop that fails after its bytes may have reached the server is not repeated: the
error surfaces as :class:`~layers.errors.BackendUnavailable` naming the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from layers.errors import BackendUnavailable
from layers.redis.hosts import ShardSpec
from layers.redis.scripts import Script

_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 0.5
_UNBLOCK_TIMEOUT = 1.0


class Watch:
    """Set while a blocking command runs: the server's id of the connection it blocks."""

    __slots__ = ("client_id",)

    def __init__(self) -> None:
        self.client_id: int | None = None


class ShardClient:
    """Idle connections to one server, used by one event loop."""

    def __init__(self, spec: ShardSpec, pool_options: dict[str, Any], retry_timeout: float):
        self.address = spec.address
        self._pool: ConnectionPool = spec.make_pool(pool_options)
        self._retry_timeout = retry_timeout
        self._write_timeout = pool_options.get("socket_timeout") or 5.0
        self._idle: list[AbstractConnection] = []
        self._open: set[AbstractConnection] = set()
        self._client_ids: dict[AbstractConnection, int] = {}
        self._clock_offset_ms: float | None = None
        # Servers before 7.0 have no BLMPOP; found out on first use.
        self.has_blmpop = True

    async def _acquire(self) -> AbstractConnection:
        conn: AbstractConnection
        while self._idle:
            conn = self._idle.pop()
            try:
                # A connection the server closed while it sat idle (CLIENT KILL, restart)
                # shows EOF here; using it would fail a command that could have succeeded.
                if conn.is_connected and not await conn.can_read():
                    return conn
            except _NETWORK_ERRORS:
                pass
            await self._discard(conn)
        conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
        self._open.add(conn)
        # A new connection may reach a different machine (Sentinel failover): measure its
        # clock again on next need.
        self._clock_offset_ms = None
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._discard(conn)
            raise
        return conn

    async def _discard(self, conn: AbstractConnection) -> None:
        self._open.discard(conn)
        self._client_ids.pop(conn, None)
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    async def call(
        self,
        *args: Any,
        idempotent: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
        watch: Watch | None = None,
    ) -> Any:
        """Run one command; ``timeout`` overrides the socket timeout for the reply.

        With ``watch``, the connection's server id is kept there while the command runs, so
        that a blocked pop can be ended early with ``CLIENT UNBLOCK``.
        """
        deadline: float | None = None
        delay = _FIRST_BACKOFF
        while True:
            try:
                conn = await self._acquire()
            except _NETWORK_ERRORS as exc:
                error: BaseException = exc
            else:
                if watch is not None and _cancel_was_swallowed():
                    # Don't start a blocking pop for a task already told to stop: it would
                    # hold its loop's shutdown for up to block_timeout.
                    self._idle.append(conn)
                    raise asyncio.CancelledError
                try:
                    if watch is None:
                        await self._write(conn, _pack(args))
                    else:
                        await self._send_watched(conn, args, watch)
                    response = await conn.read_response(timeout=timeout)
                except ResponseError:
                    # An error reply leaves the connection in step: keep it.
                    self._idle.append(conn)
                    raise
                except _NETWORK_ERRORS as exc:
                    await self._discard(conn)
                    if not idempotent:
                        raise BackendUnavailable(self.address, _reason(exc)) from exc
                    error = exc
                except BaseException:
                    # Cancelled mid-command: its reply would be read by the next command.
                    await self._discard(conn)
                    raise
                else:
                    self._idle.append(conn)
                    return response
                finally:
                    if watch is not None:
                        watch.client_id = None
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._retry_timeout
            if now + delay > deadline:
                raise BackendUnavailable(self.address, _reason(error)) from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _send_watched(
        self, conn: AbstractConnection, args: tuple[Any, ...], watch: Watch
    ) -> None:
        client_id = self._client_ids.get(conn)
        if client_id is None:
            # Asked in the same write as the command itself: no extra round trip.
            await self._write(conn, _pack(("CLIENT", "ID")) + _pack(args))
            client_id = self._client_ids[conn] = int(await conn.read_response())
        else:
            await self._write(conn, _pack(args))
        watch.client_id = client_id

    async def _write(self, conn: AbstractConnection, data: bytes) -> None:
        # redis-py wraps every write in asyncio.wait_for (a task per command); a write the
        # socket takes at once needs no timeout, only one that has to wait for room.
        writer = getattr(conn, "_writer", None)
        if writer is None:
            await conn.send_packed_command(data, check_health=False)
            return
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self._write_timeout):
                    await writer.drain()
        except (TimeoutError, OSError) as exc:
            await self._discard(conn)
            raise RedisConnectionError(f"writing to {self.address} failed: {exc}") from exc

    async def unblock(self, client_id: int) -> None:
        """End another connection's blocking pop as if it had timed out (it pops nothing)."""
        # Best effort, and quick (a cancelled receive waits for it): if it fails, the pop
        # ends by itself within block_timeout.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_UNBLOCK_TIMEOUT):
                await self.call("CLIENT", "UNBLOCK", client_id)

    async def script(
        self, script: Script, keys: list[Any], args: list[Any], *, idempotent: bool = False
    ) -> Any:
        try:
            return await self.call(
                "EVALSHA", script.sha, len(keys), *keys, *args, idempotent=idempotent
            )
        except NoScriptError:
            # Not run at all (server restarted or SCRIPT FLUSH): load it and go again.
            await self.call("SCRIPT", "LOAD", script.body, idempotent=True)
            return await self.call(
                "EVALSHA", script.sha, len(keys), *keys, *args, idempotent=idempotent
            )

    async def clock_offset_ms(self) -> float:
        """Server clock minus ours, in ms; entry expiry times are on the server clock."""
        if self._clock_offset_ms is None:
            before = time.time()
            seconds, micros = await self.call("TIME", idempotent=True)
            after = time.time()
            server_ms = int(seconds) * 1000 + int(micros) / 1000
            self._clock_offset_ms = server_ms - (before + after) * 500
        return self._clock_offset_ms

    async def close(self) -> None:
        self._idle.clear()
        for conn in list(self._open):
            await self._discard(conn)
        # Sentinel pools keep clients of their own for asking the sentinels.
        manager = getattr(self._pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            with contextlib.suppress(Exception):
                await sentinel.aclose()

    def abandon(self) -> None:
        """Drop every connection of a loop that is already closed (nothing can be awaited)."""
        self._idle.clear()
        for conn in list(self._open):
            writer = getattr(conn, "_writer", None)
            transport = getattr(writer, "transport", None)
            # The transport cannot close itself without its loop; its socket can.
            sock = getattr(transport, "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._open.clear()


def _cancel_was_swallowed() -> bool:
    """True if this task was cancelled but is still running.

    Python 3.11's ``asyncio.wait_for`` (which redis-py's ``connect`` uses) drops a
    cancellation that arrives as its inner future finishes; the task goes on with
    ``cancelling()`` still set. Seen as ``async_to_sync`` calls taking 10 s each: the loop's
    shutdown cancelled a receive loop mid-connect, and it went on to block on the server.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _pack(args: tuple[Any, ...]) -> bytes:
    """RESP-encode one command (bytes, str, int and float arguments)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
