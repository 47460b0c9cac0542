"""Every redis-py detail the Redis layer relies on that is private or differs by version.

The layer supports redis-py from 5.0.1 to the newest release (``constraints/floor.txt``
pins the oldest for CI). Each helper here checks what it relies on and falls back to a
public path when that is missing, so a redis-py release that renames a private attribute
costs speed or promptness, never correctness. ``tests/redis/test_compat.py`` shows which
path runs on the installed version and forces every fallback.

What differs between the versions we support:

- ``Connection.can_read()`` exists from redis-py 8 only; 5.x to 7.x have
  ``can_read_destructive()``, which with the pure-Python parser reports a connection the
  server closed (EOF) as healthy, and reads a byte off a live one. 8.x deprecates it.
- ``Connection.read_response(timeout=t)`` returns ``None`` when ``t`` runs out, which is
  also the reply of a blocking pop that timed out on the server, and leaves the
  connection with a reply still to come. 8.x reads ``math.inf`` as "no timeout"; 5.x
  arms a timer that never fires. Both keep ``timeout=None`` as "the socket timeout".
- ``Connection.disconnect(nowait=True)`` is in every supported version; 8.x adds keyword
  arguments we do not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from typing import Any

from redis.asyncio.connection import AbstractConnection

# A read timeout redis-py never fires: we time the read ourselves (see read_reply).
_NO_TIMEOUT = math.inf


# -- is an idle connection still good? -----------------------------------------------------


def stale_check_path(conn: AbstractConnection) -> str:
    """Which check :func:`is_stale` uses on ``conn`` (for tests and bug reports)."""
    if callable(getattr(conn, "can_read", None)):
        return "can_read"
    if _stream_buffer(conn) is not None:
        return "stream"
    return "connected"


async def is_stale(conn: AbstractConnection) -> bool:
    """True if an idle connection must not carry a command.

    Stale means closed, closed by the server while it sat idle (``CLIENT KILL``, restart,
    ``timeout``), or holding bytes no command asked for; the next command on it would
    fail, or read someone else's reply.
    """
    if not conn.is_connected:
        return True
    path = stale_check_path(conn)
    if path == "can_read":
        # redis-py 8+: non-destructive, and reports EOF as readable.
        return bool(await _untyped(conn).can_read())
    if path == "stream":
        # Older redis-py: look at the connection's StreamReader ourselves rather than use
        # can_read_destructive (blind to EOF with the Python parser, and costs a loop turn).
        reader = conn._reader
        assert reader is not None
        return reader.at_eof() or bool(_stream_buffer(conn))
    # Nothing to look at: a dead connection then shows as a failed command, which the
    # caller handles like any network error.
    return False


def _stream_buffer(conn: AbstractConnection) -> bytearray | None:
    reader = getattr(conn, "_reader", None)
    if not isinstance(reader, asyncio.StreamReader):
        return None
    buffer = getattr(reader, "_buffer", None)
    return buffer if isinstance(buffer, bytearray) else None


# -- reading a reply -------------------------------------------------------------------------


async def read_reply(conn: AbstractConnection, timeout: float | None = None) -> Any:  # noqa: ASYNC109
    """Read one reply; ``timeout`` (seconds) replaces the socket timeout for it.

    A reply that does not come in time raises ``TimeoutError`` (and redis-py drops the
    connection): never ``None``, which redis-py's own ``timeout`` returns and which
    would pass for an empty reply.
    """
    if timeout is None:
        return await _untyped(conn).read_response()
    async with asyncio.timeout(timeout):
        return await _untyped(conn).read_response(timeout=_NO_TIMEOUT)


# -- error replies ---------------------------------------------------------------------------

# The error codes redis-py cuts off the replies it turns into these classes (named, as some
# exist only in newer versions); 5.x keeps e.g. "MOVED" in the text, 8.x cuts it.
_CUT_CODES = {
    "OutOfMemoryError": "OOM",
    "ReadOnlyError": "READONLY",
    "NoPermissionError": "NOPERM",
    "NoScriptError": "NOSCRIPT",
    "ExecAbortError": "EXECABORT",
    "MasterDownError": "MASTERDOWN",
    "ClusterDownError": "CLUSTERDOWN",
    "TryAgainError": "TRYAGAIN",
    "ClusterCrossSlotError": "CROSSSLOT",
}


def error_text(exc: BaseException) -> str:
    """The server's message for an error reply, its code (``OOM``, ``READONLY``,
    ``NOPERM``...) put back where redis-py cut it off; a plain ``ERR`` stays cut."""
    text = str(exc)
    for cls in type(exc).__mro__:
        code = _CUT_CODES.get(cls.__name__)
        if code is not None:
            return text if text.startswith(f"{code} ") else f"{code} {text}"
    return text


# -- writing ---------------------------------------------------------------------------------


def write_path(conn: AbstractConnection) -> str:
    """Which way :func:`write` sends on ``conn`` (for tests and bug reports)."""
    if isinstance(getattr(conn, "_writer", None), asyncio.StreamWriter):
        return "writer"
    return "send_packed_command"


async def write(conn: AbstractConnection, data: bytes, timeout: float) -> None:  # noqa: ASYNC109
    """Send packed command bytes; ``timeout`` bounds a wait for room in the socket."""
    if write_path(conn) == "writer":
        # redis-py wraps every write in asyncio.wait_for (a task per command); a write the
        # socket takes at once needs no timeout, only one that has to wait for room.
        writer: asyncio.StreamWriter = conn._writer  # type: ignore[assignment]
        writer.write(data)
        if writer.transport.get_write_buffer_size():
            async with asyncio.timeout(timeout):
                await writer.drain()
        return
    await conn.send_packed_command(data, check_health=False)


# -- closing ---------------------------------------------------------------------------------


def close_socket_path(conn: AbstractConnection) -> str:
    """Which way :func:`close_socket` closes ``conn`` (for tests and bug reports)."""
    transport = _transport(conn)
    if transport is None:
        return "none"
    if isinstance(getattr(transport, "_sock", None), socket.socket):
        return "sock"
    if transport.get_extra_info("socket") is not None:
        return "shutdown"
    return "none"


def close_socket(conn: AbstractConnection) -> None:
    """Close a connection whose event loop is closed (nothing can be awaited).

    Its transport cannot close itself without its loop, but its socket can: closed at
    once where the transport exposes it, else shut down (the server sees the connection
    end now; the descriptor goes when the transport is collected).
    """
    path = close_socket_path(conn)
    transport = _transport(conn)
    with contextlib.suppress(OSError):
        if path == "sock":
            transport._sock.close()  # type: ignore[union-attr]
        elif path == "shutdown":
            transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]


def _untyped(conn: AbstractConnection) -> Any:
    # redis-py's annotations differ between versions (untyped in some, typed in others):
    # calls through Any keep one source mypy-clean on all of them.
    return conn


def _transport(conn: AbstractConnection) -> asyncio.BaseTransport | None:
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    return transport if isinstance(transport, asyncio.BaseTransport) else None


async def close_client(client: Any) -> None:
    """Close a redis-py client (Sentinel probes): ``aclose`` from 5.0.1, ``close`` before."""
    closer = getattr(client, "aclose", None) or client.close
    await closer()


def stream_reader(conn: AbstractConnection) -> asyncio.StreamReader | None:
    """The connection's ``StreamReader`` for :mod:`layers.redis.resp`, or None if this
    redis-py keeps it elsewhere (blocking pops are then read by redis-py, and a loop that
    closes while one is blocked may lose what it takes).

    Reading past redis-py's parser is safe on a connection between exchanges: every reply
    asked for has been read whole, so neither parser (Python or hiredis) holds a byte.
    """
    reader = getattr(conn, "_reader", None)
    return reader if isinstance(reader, asyncio.StreamReader) else None
