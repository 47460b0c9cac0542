"""layers.redis.compat: which path runs on the installed redis-py, and that every fallback
works when forced (as it would on a redis-py that lacks what the fast path relies on)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection, Connection

from layers.redis import compat
from layers.redis.connections import ShardClient, Watch
from layers.redis.hosts import parse_hosts

REDIS_MAJOR = int(redis.__version__.split(".")[0])
OPTIONS = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
# Packing needs no connection to the server, only redis-py's encoder.
CONN_FOR_PACKING: Any = Connection()


@pytest.fixture
async def conn(shared_redis: str) -> AsyncIterator[AbstractConnection]:
    connection = new_connection(shared_redis)
    await connection.connect()
    try:
        yield connection
    finally:
        await connection.disconnect()


def new_connection(url: str) -> Any:
    """An unconnected redis-py connection (typed Any: its annotations vary by version)."""
    pool: Any = parse_hosts(url)[0].make_pool(OPTIONS)
    return pool.make_connection()


def packed(*args: Any) -> bytes:
    return b"".join(CONN_FOR_PACKING.pack_command(*args))


async def command(conn: AbstractConnection, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
    await compat.write(conn, packed(*args), 5.0)
    return await compat.read_reply(conn, timeout)


async def kill(shared_redis: str, conn: AbstractConnection) -> None:
    """Have the server close ``conn`` (as CLIENT KILL or a restart would) and let its EOF in."""
    client_id = await command(conn, "CLIENT", "ID")
    admin = redis.asyncio.Redis.from_url(shared_redis)
    try:
        assert await admin.client_kill_filter(_id=client_id) == 1
    finally:
        await compat.close_client(admin)
    await asyncio.sleep(0.05)


def force(monkeypatch: pytest.MonkeyPatch, name: str, path: str) -> None:
    monkeypatch.setattr(compat, name, lambda conn: path)


# -- which path runs here ----------------------------------------------------------------------


async def test_paths_on_the_installed_redis_py(conn: AbstractConnection) -> None:
    # redis-py 8 has a non-destructive can_read(); older ones only can_read_destructive().
    expected = "can_read" if REDIS_MAJOR >= 8 else "stream"
    assert compat.stale_check_path(conn) == expected, redis.__version__
    assert compat.write_path(conn) == "writer", redis.__version__
    assert compat.close_socket_path(conn) == "sock", redis.__version__
    # Blocking pops are read off the connection's StreamReader (layers.redis.resp).
    assert isinstance(compat.stream_reader(conn), asyncio.StreamReader), redis.__version__


def test_stream_reader_falls_back_to_none() -> None:
    class Bare:
        _reader = object()

    assert compat.stream_reader(Bare()) is None  # type: ignore[arg-type]


# -- is_stale ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["native", "can_read", "stream"])
async def test_is_stale_sees_a_connection_the_server_closed(
    conn: AbstractConnection, shared_redis: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    if path == "can_read" and REDIS_MAJOR < 8:
        pytest.skip("redis-py before 8 has no can_read()")
    if path != "native":
        force(monkeypatch, "stale_check_path", path)
    assert not await compat.is_stale(conn)
    await kill(shared_redis, conn)
    assert await compat.is_stale(conn)


async def test_is_stale_sees_an_unread_reply(conn: AbstractConnection) -> None:
    await compat.write(conn, packed("PING"), 5.0)
    await asyncio.sleep(0.05)
    assert await compat.is_stale(conn)


async def test_is_stale_public_fallback(
    conn: AbstractConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    force(monkeypatch, "stale_check_path", "connected")
    assert not await compat.is_stale(conn)
    await conn.disconnect()
    assert await compat.is_stale(conn)


def test_stale_check_falls_back_without_a_stream() -> None:
    class Bare:
        is_connected = True
        _reader = None

    assert compat.stale_check_path(Bare()) == "connected"  # type: ignore[arg-type]


# -- read_reply ----------------------------------------------------------------------------------


async def test_read_reply_raises_on_timeout_instead_of_returning_none(
    conn: AbstractConnection,
) -> None:
    # A nil reply within the timeout is None...
    assert await command(conn, "BLPOP", "compat:nothing", 0.05, timeout=2.0) is None
    # ...but a reply still to come is a timeout, and the connection is not reused.
    with pytest.raises(TimeoutError):
        await command(conn, "BLPOP", "compat:nothing", 2, timeout=0.1)
    assert not conn.is_connected


# -- write -------------------------------------------------------------------------------------


async def test_write_fallback(conn: AbstractConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    force(monkeypatch, "write_path", "send_packed_command")
    assert await command(conn, "PING") in (b"PONG", "PONG", True)


# -- close_socket --------------------------------------------------------------------------------


def connection_of_a_closed_loop(url: str) -> tuple[AbstractConnection, int]:
    """A connection whose event loop is closed, as ``abandon()`` finds it; and its id."""
    loop = asyncio.new_event_loop()
    try:
        conn = new_connection(url)
        loop.run_until_complete(conn.connect())
        client_id = loop.run_until_complete(command(conn, "CLIENT", "ID"))
    finally:
        loop.close()
    return conn, int(client_id)


def server_sees_closed(url: str, client_id: int) -> bool:
    admin = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            if all(int(client["id"]) != client_id for client in admin.client_list()):
                return True
            time.sleep(0.02)
        return False
    finally:
        admin.close()


@pytest.mark.parametrize("path", ["native", "shutdown"])
def test_close_socket_ends_the_connection_of_a_closed_loop(
    shared_redis: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    conn, client_id = connection_of_a_closed_loop(shared_redis)
    if path != "native":
        force(monkeypatch, "close_socket_path", path)
    compat.close_socket(conn)
    assert server_sees_closed(shared_redis, client_id)


def test_close_socket_without_a_transport_does_nothing() -> None:
    class Bare:
        _writer = None

    assert compat.close_socket_path(Bare()) == "none"  # type: ignore[arg-type]
    compat.close_socket(Bare())  # type: ignore[arg-type]


def test_close_socket_on_a_tls_like_transport_shuts_down() -> None:
    """A transport without ``_sock`` (TLS) is shut down through its public socket."""
    left, right = socket.socketpair()

    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return left if name == "socket" else default

    class Writer:
        transport = Transport()

    class Conn:
        _writer = Writer()

    try:
        assert compat.close_socket_path(Conn()) == "shutdown"  # type: ignore[arg-type]
        compat.close_socket(Conn())  # type: ignore[arg-type]
        assert right.recv(1) == b""  # the peer sees the end
    finally:
        left.close()
        right.close()


# -- close_client --------------------------------------------------------------------------------


async def test_close_client_uses_aclose_or_close() -> None:
    calls: list[str] = []

    class New:
        async def aclose(self) -> None:
            calls.append("aclose")

        async def close(self) -> None:
            calls.append("close")

    class Old:
        async def close(self) -> None:
            calls.append("close")

    await compat.close_client(New())
    await compat.close_client(Old())
    assert calls == ["aclose", "close"]


# -- the client on every fallback at once --------------------------------------------------------


async def test_shard_client_on_the_public_fallbacks(
    shared_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    force(monkeypatch, "stale_check_path", "connected")
    force(monkeypatch, "write_path", "send_packed_command")
    force(monkeypatch, "close_socket_path", "shutdown")
    monkeypatch.setattr(compat, "stream_reader", lambda conn: None)
    client = ShardClient(parse_hosts(shared_redis)[0], OPTIONS, retry_timeout=2.0)
    try:
        assert await client.call("PING") == b"PONG"
        # Blocking pops read by redis-py: empty, then with an entry.
        key = f"compat:{id(client)}"
        watch = Watch()
        assert await client.call("BLPOP", key, 0.01, timeout=2.0, watch=watch) is None
        await client.call("RPUSH", key, "v")
        assert await client.call("BLPOP", key, 1, timeout=2.0, watch=watch) == [key.encode(), b"v"]
        # A connection the server closed while idle: its failure is retried when safe.
        client_id = await client.call("CLIENT", "ID")
        admin = redis.asyncio.Redis.from_url(shared_redis)
        try:
            await admin.client_kill_filter(_id=client_id)
        finally:
            await compat.close_client(admin)
        await asyncio.sleep(0.05)
        assert await client.call("PING", idempotent=True) == b"PONG"
        assert await client.call("ECHO", "x") == b"x"
    finally:
        await client.close()
