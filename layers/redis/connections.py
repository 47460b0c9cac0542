"""Connections to one shard, for one event loop, with the layer's own retry rules.

redis-py's pool and retry are bypassed on purpose: its retry would resend a script whose
reply was lost (a duplicate message), and its pool does per-call bookkeeping the layer does
not need. Connections themselves are redis-py's, so every ``hosts`` form (TLS, unix
sockets, Sentinel) works unchanged; what the layer needs of them beyond redis-py's public
API goes through :mod:`layers.redis.compat`.

What is retried, with backoff, for up to ``retry_timeout`` seconds:

- failing to connect (nothing reached the server);
- any failure of a command that is safe to repeat (reads, ``ZADD``, ``SCRIPT LOAD``...).

A send or pop that fails after its bytes may have reached the server is not repeated: the
error surfaces as :class:`~layers.errors.BackendUnavailable` naming the server.

This module is the one error boundary towards redis-py: nothing from ``redis.exceptions``
leaves a :class:`ShardClient`. An error reply (out of memory, ``READONLY`` after a
failover, an ACL refusal) becomes :class:`~layers.errors.ServerError`, whose ``reason``
is the server's message.

Connections for ordinary commands are bounded per client (one shard in one event loop) by
``max_connections``: callers beyond it wait for one to come back. Blocking pops (calls with
``watch``) each take a connection of their own outside that bound, so a pop blocked on the
server never keeps a send waiting; their number is bounded by the receive loops. Idle
connections beyond a few are closed, and any left unused for ``_IDLE_LIFETIME`` seconds
are closed on the next acquire.

A connection stays usable only while it is in step (every reply read). Any failure or
cancellation during an exchange discards it, except a blocked pop whose caller is
cancelled: that pop is ended and its reply read whole, so what it took is not lost. An
error reply, which is a complete reply, leaves the connection in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from layers.errors import BackendUnavailable, ServerError
from layers.redis import compat
from layers.redis.hosts import ShardSpec
from layers.redis.resp import BlockedReply, UnexpectedReply
from layers.redis.scripts import Script
from layers.runtime.boundary import Boundary

logger = logging.getLogger("layers.redis")

_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 0.5
_UNBLOCK_TIMEOUT = 1.0
# Idle connections kept for the next burst; more than this are closed as they come back.
_KEEP_IDLE = 4
# Seconds an idle connection may sit unused before the next acquire closes it.
_IDLE_LIFETIME = 30.0

# Addresses whose refusal of CLIENT was logged: once per process is enough.
_warned_client_refused: set[str] = set()


class NotRun(BackendUnavailable):
    """Unreachable for ``retry_timeout``, and the command did not run there (the server
    could not be reached) or is safe to run again: a cluster may send it to another node."""


class Watch:
    """Set while a blocking command runs: the server's id of the connection it blocks
    (None when the server does not tell it: then the pop cannot be ended early)."""

    __slots__ = ("client_id",)

    def __init__(self) -> None:
        self.client_id: int | None = None


_Idle = list[tuple[AbstractConnection, float]]


class ShardClient:
    """Connections to one server, used by one event loop."""

    def __init__(
        self,
        spec: ShardSpec,
        pool_options: dict[str, Any],
        retry_timeout: float,
        max_connections: int = 16,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an integer, not {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.address = spec.address
        # Error replies are refusals; anything else redis-py raises means the server
        # could not be reached or answered out of step.
        self._boundary = Boundary(
            spec.address,
            refused=(ResponseError,),
            unavailable=(RedisError, OSError),
            describe=compat.error_text,
        )
        self._pool: ConnectionPool = spec.make_pool(pool_options)
        self._retry_timeout = retry_timeout
        self._write_timeout = pool_options.get("socket_timeout") or 5.0
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._waiting = 0
        # Oldest first: the LIFO end is reused, the old end ages out.
        self._idle: _Idle = []
        self._idle_blocking: _Idle = []
        self._open: set[AbstractConnection] = set()
        self._client_ids: dict[AbstractConnection, int] = {}
        self._clock_offset_ms: float | None = None
        # Servers before 7.0 have no BLMPOP; found out on first use.
        self.has_blmpop = True
        # False once the server refused CLIENT ID or CLIENT UNBLOCK (ACL, renamed command):
        # blocked pops then end only by themselves.
        self.can_unblock = True

    # -- connections -----------------------------------------------------------------------

    async def _take(self, blocking: bool) -> AbstractConnection:
        if blocking:
            return await self._connection(self._idle_blocking, blocking)
        if self._slots.locked():
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        try:
            return await self._connection(self._idle, blocking)
        except BaseException:
            self._slots.release()
            raise

    async def _connection(self, idle: _Idle, blocking: bool) -> AbstractConnection:
        conn: AbstractConnection
        expired = time.monotonic() - _IDLE_LIFETIME
        while idle and idle[0][1] < expired:
            await self._discard(idle.pop(0)[0])
        while idle:
            conn = idle.pop()[0]
            try:
                # A connection the server closed while it sat idle (CLIENT KILL, restart)
                # shows EOF here; using it would fail a command that could have succeeded.
                if not await compat.is_stale(conn):
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
            if blocking and self.can_unblock:
                await self._ask_client_id(conn)
        except BaseException:
            await self._discard(conn)
            raise
        return conn

    async def _ask_client_id(self, conn: AbstractConnection) -> None:
        # Asked once per connection, on its own: an error reply to it (ACL, a renamed
        # command) must be read here, not left behind the blocking pop.
        await compat.write(conn, _CLIENT_ID, self._write_timeout)
        try:
            reply = await compat.read_reply(conn)
        except ResponseError as exc:
            self._client_refused(compat.error_text(exc))
        else:
            self._client_ids[conn] = int(reply)

    async def _give_back(self, conn: AbstractConnection, blocking: bool) -> None:
        """Return a connection that is in step (every reply read)."""
        if blocking:
            await self._keep(self._idle_blocking, conn, 0)
        else:
            try:
                # Connections waiters are about to take are not surplus.
                await self._keep(self._idle, conn, self._waiting)
            finally:
                self._slots.release()

    async def _keep(self, idle: _Idle, conn: AbstractConnection, wanted: int) -> None:
        idle.append((conn, time.monotonic()))
        while len(idle) > _KEEP_IDLE + wanted:
            await self._discard(idle.pop(0)[0])

    async def _drop(self, conn: AbstractConnection, blocking: bool) -> None:
        """Close a connection that is out of step or broken."""
        if not blocking:
            self._slots.release()
        await self._discard(conn)

    async def _discard(self, conn: AbstractConnection) -> None:
        self._open.discard(conn)
        self._client_ids.pop(conn, None)
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    # -- commands --------------------------------------------------------------------------

    async def call(
        self,
        *args: Any,
        idempotent: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
        watch: Watch | None = None,
        asking: bool = False,
    ) -> Any:
        """Run one command; ``timeout`` overrides the socket timeout for the reply.

        With ``asking`` (a cluster's ``ASK`` redirection), ``ASKING`` goes first on the same
        connection.

        With ``watch``, the command gets a connection of its own (outside the bound), and
        the connection's server id is kept there while the command runs, so that a blocked
        pop can be ended early with :meth:`unblock`.

        Raises :class:`~layers.errors.ServerError` for an error reply and
        :class:`~layers.errors.BackendUnavailable` when the server cannot be reached.
        """
        with self._boundary:
            return await self._call(_pack(args), idempotent, timeout, watch, asking)

    async def _call(
        self,
        data: bytes,
        idempotent: bool,
        timeout: float | None,  # noqa: ASYNC109
        watch: Watch | None,
        asking: bool = False,
        replies: int = 0,
    ) -> Any:
        """:meth:`call`, raising redis-py's ``ResponseError`` as it came. With ``replies``,
        ``data`` holds that many commands: their replies come back as a list, an error
        reply as its ``ResponseError`` in its place."""
        blocking = watch is not None
        deadline: float | None = None
        delay = _FIRST_BACKOFF
        while True:
            try:
                conn = await self._take(blocking)
            except _NETWORK_ERRORS as exc:
                error: BaseException = exc
            except ResponseError:
                # Refused while connecting (AUTH, SELECT...): the connection is gone.
                raise
            except RedisError as exc:
                raise BackendUnavailable(self.address, _reason(exc)) from exc
            else:
                if watch is not None and _cancel_was_swallowed():
                    # Don't start a blocking pop for a task already told to stop: it would
                    # hold its loop's shutdown for up to block_timeout.
                    await self._give_back(conn, blocking)
                    raise asyncio.CancelledError
                try:
                    if watch is not None:
                        watch.client_id = self._client_ids.get(conn)
                    if asking:
                        await compat.write(conn, _ASKING + data, self._write_timeout)
                        await compat.read_reply(conn, timeout)
                    else:
                        await compat.write(conn, data, self._write_timeout)
                    if replies:
                        response = [await _reply_or_error(conn, timeout) for _ in range(replies)]
                    elif watch is None:
                        response = await compat.read_reply(conn, timeout)
                    else:
                        response = await self._read_blocked(conn, watch, timeout)
                except ResponseError:
                    # An error reply is a whole reply: the connection is still in step.
                    await self._give_back(conn, blocking)
                    raise
                except _NETWORK_ERRORS as exc:
                    await self._drop(conn, blocking)
                    if not idempotent:
                        raise BackendUnavailable(self.address, _reason(exc)) from exc
                    error = exc
                except RedisError as exc:
                    # A reply redis-py could not parse: nothing after it can be trusted.
                    await self._drop(conn, blocking)
                    raise BackendUnavailable(self.address, _reason(exc)) from exc
                except BaseException:
                    # Cancelled mid-command: its reply would be read by the next command.
                    await self._drop(conn, blocking)
                    raise
                else:
                    await self._give_back(conn, blocking)
                    return response
                finally:
                    if watch is not None:
                        watch.client_id = None
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._retry_timeout
            if now + delay > deadline:
                raise NotRun(self.address, _reason(error)) from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _read_blocked(
        self,
        conn: AbstractConnection,
        watch: Watch,
        timeout: float | None,  # noqa: ASYNC109
    ) -> Any:
        """Read a blocking pop's reply; if cancelled while it waits, end the pop and still
        read it, so that what it took is not lost (see :mod:`layers.redis.resp`). The
        caller, a receive loop, files what comes back and sees it was cancelled."""
        reader = compat.stream_reader(conn)
        if reader is None:
            return await compat.read_reply(conn, timeout)
        reply = BlockedReply(reader)
        try:
            async with asyncio.timeout(timeout):
                response = await reply.read()
        except asyncio.CancelledError:
            client_id = watch.client_id
            if client_id is None or not await self.unblock(client_id):
                raise
            async with asyncio.timeout(_UNBLOCK_TIMEOUT):
                response = await reply.read()
        except (UnexpectedReply, ValueError) as exc:
            raise RedisConnectionError(f"reading from {self.address}: {exc}") from exc
        if isinstance(response, ResponseError):
            raise response
        return response

    async def unblock(self, client_id: int) -> bool:
        """End another connection's blocking pop as if it had timed out (it pops nothing).

        True if the server ended the pop or there was none to end; False if it could not
        be done (then the pop ends by itself within its block timeout). A server that
        refuses ``CLIENT UNBLOCK`` is not asked again: :attr:`can_unblock` turns False.
        """
        if not self.can_unblock:
            return False
        # Quick (a cancelled receive waits for it) and never retried.
        try:
            async with asyncio.timeout(_UNBLOCK_TIMEOUT):
                await self.call("CLIENT", "UNBLOCK", client_id)
        except ServerError as exc:
            self._client_refused(exc.reason)
            return False
        except (BackendUnavailable, TimeoutError):
            return False
        return True

    def _client_refused(self, reason: str | BaseException) -> None:
        self.can_unblock = False
        self._client_ids.clear()
        if self.address in _warned_client_refused:
            return
        _warned_client_refused.add(self.address)
        logger.warning(
            "Redis at %s refuses the CLIENT command (%s): a receive abandoned while its "
            "pop is blocked cannot end that pop, so any message the pop then takes is "
            "handed back to the head of its list instead",
            self.address,
            reason,
        )

    async def script(
        self,
        script: Script,
        keys: list[Any],
        args: list[Any],
        *,
        idempotent: bool = False,
        asking: bool = False,
    ) -> Any:
        """Run a Lua script by SHA1, loading it first if the server does not have it."""
        data = _pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        with self._boundary:
            try:
                return await self._call(data, idempotent, None, None, asking)
            except NoScriptError:
                # Not run at all (server restarted or SCRIPT FLUSH): load it and go again.
                await self._call(_pack(("SCRIPT", "LOAD", script.body)), True, None, None)
                return await self._call(data, idempotent, None, None, asking)

    async def scripts(self, calls: list[tuple[Script, list[Any], list[Any]]]) -> list[Any]:
        """Run several scripts in one round trip (one write, then every reply), each at
        most once. Returns each one's reply, or the :class:`~layers.errors.ServerError` of
        its error reply in its place; a lost connection raises
        :class:`~layers.errors.BackendUnavailable` for all of them (none is repeated)."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        loaded = False
        with self._boundary:
            while todo:
                data = b"".join(
                    _pack(
                        ("EVALSHA", calls[i][0].sha, len(calls[i][1]), *calls[i][1], *calls[i][2])
                    )
                    for i in todo
                )
                replies = await self._call(data, False, None, None, replies=len(todo))
                missing = []
                for i, reply in zip(todo, replies, strict=True):
                    if isinstance(reply, NoScriptError) and not loaded:
                        missing.append(i)  # not run: load the script and go again
                    elif isinstance(reply, ResponseError):
                        results[i] = ServerError(self.address, compat.error_text(reply))
                        results[i].__cause__ = reply
                    else:
                        results[i] = reply
                for body in dict.fromkeys(calls[i][0].body for i in missing):
                    await self._call(_pack(("SCRIPT", "LOAD", body)), True, None, None)
                todo, loaded = missing, True
        return results

    async def clock_offset_ms(self) -> float:
        """Server clock minus ours, in ms; entry expiry times are on the server clock."""
        if self._clock_offset_ms is None:
            before = time.time()
            seconds, micros = await self.call("TIME", idempotent=True)
            after = time.time()
            server_ms = int(seconds) * 1000 + int(micros) / 1000
            self._clock_offset_ms = server_ms - (before + after) * 500
        return self._clock_offset_ms

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        self._idle.clear()
        self._idle_blocking.clear()
        conns, self._open = list(self._open), set()
        self._client_ids.clear()
        # Closed and waited for, not just scheduled: once close() returns, the server may
        # count its clients (as tests and operators do) and find none of ours.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_UNBLOCK_TIMEOUT):
                await asyncio.gather(*(conn.disconnect() for conn in conns), return_exceptions=True)
        # Sentinel pools keep clients of their own for asking the sentinels.
        manager = getattr(self._pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            with contextlib.suppress(Exception):
                await compat.close_client(sentinel)

    def abandon(self) -> None:
        """Drop every connection of a loop that is already closed (nothing can be awaited)."""
        self._idle.clear()
        self._idle_blocking.clear()
        for conn in list(self._open):
            compat.close_socket(conn)
        self._open.clear()
        self._client_ids.clear()


async def _reply_or_error(conn: AbstractConnection, timeout: float | None) -> Any:  # noqa: ASYNC109
    try:
        return await compat.read_reply(conn, timeout)
    except ResponseError as exc:
        return exc


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


def _reason(exc: BaseException | str) -> str:
    return str(exc) or type(exc).__name__


_CLIENT_ID = _pack(("CLIENT", "ID"))
_ASKING = _pack(("ASKING",))
