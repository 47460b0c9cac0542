"""ShardClient: connections stay in step, one error boundary, bounded connections.

- In step: ``CLIENT ID`` is asked on its own, so a server that refuses ``CLIENT`` (an ACL
  user with ``-client``, or ``+@all -@dangerous`` for ``CLIENT UNBLOCK``) leaves no reply
  unread; an error reply keeps the connection, a failure or cancellation mid-exchange
  drops it; a read that times out raises instead of passing for an empty reply.
- Errors: an error reply (unknown command, OOM, READONLY, NOPERM) becomes
  ``layers.errors.ServerError`` naming the server; nothing from ``redis.exceptions``
  leaves a ShardClient.
- Bounded: ordinary commands of one client share at most ``max_connections`` connections;
  blocking pops take their own and never wait behind the bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import RedisError

from layers.errors import BackendUnavailable, ServerError
from layers.redis import RedisChannelLayer, connections
from layers.redis.connections import ShardClient, Watch
from layers.redis.hosts import parse_hosts
from tests.redis.harness import RedisProcess, free_port

pytestmark = pytest.mark.timeout(60)

PASSWORD = "conn-pass"
NO_CLIENT = "noclient"  # +@all -client
NO_DANGEROUS = "nodanger"  # +@all -@dangerous: CLIENT ID yes, CLIENT UNBLOCK no
OPTIONS = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}


@pytest.fixture
def admin(own_server: RedisProcess) -> Iterator[redis.Redis]:
    """The private server's unrestricted user; the restricted users are made here."""
    client = redis.Redis(port=own_server.port, socket_timeout=5)
    for user, rule in ((NO_CLIENT, "-client"), (NO_DANGEROUS, "-@dangerous")):
        client.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, "reset", "on", f">{PASSWORD}", "+@all", rule, "~*", "&*"
        )
    try:
        yield client
    finally:
        client.close()


def url_for(server: RedisProcess, user: str | None = None) -> str:
    if user is None:
        return server.url
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.fixture
async def shard(own_server: RedisProcess) -> AsyncIterator[ShardClient]:
    client = ShardClient(parse_hosts(own_server.url)[0], OPTIONS, retry_timeout=1.0)
    try:
        yield client
    finally:
        await client.close()


def client_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "layers.redis"
        and record.levelno == logging.WARNING
        and "CLIENT" in record.getMessage()
    ]


async def blocked(admin: redis.Redis, count: int = 1) -> None:
    for _ in range(500):
        if int(admin.info("clients")["blocked_clients"]) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} pop(s) never blocked on the server")


# -- in step (CLIENT asked on its own) ----------------------------------------------------------


async def test_a_server_refusing_client_keeps_every_connection_in_step(
    admin: redis.Redis, own_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="layers.redis")
    address_spec = parse_hosts(url_for(own_server, NO_CLIENT))[0]
    client = ShardClient(address_spec, OPTIONS, retry_timeout=1.0)
    watch = Watch()
    try:
        for n in range(30):
            # An empty pop, a pop with a message, and an ordinary command, in turn: each
            # reads its own reply, never one left over from CLIENT ID.
            assert await client.call("BLMPOP", 0.01, 1, "k", "LEFT", watch=watch) is None
            await client.call("RPUSH", "k", f"m{n}")
            reply = await client.call("BLMPOP", 1, 1, "k", "LEFT", "COUNT", 5, watch=watch)
            assert reply == [b"k", [f"m{n}".encode()]], n
            assert await client.call("ECHO", f"e{n}") == f"e{n}".encode()
        assert client.has_blmpop, "a refused CLIENT was taken for a missing BLMPOP"
        assert not client.can_unblock
        assert await client.unblock(12345) is False
        warnings = client_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert address_spec.address in warnings[0]
        assert "head of its list" in warnings[0]
    finally:
        await client.close()
    # Once per process per address: a second client on the same server says nothing more.
    again = ShardClient(address_spec, OPTIONS, retry_timeout=1.0)
    try:
        assert await again.call("BLMPOP", 0.01, 1, "k", "LEFT", watch=Watch()) is None
        assert not again.can_unblock
    finally:
        await again.close()
    assert len(client_warnings(caplog)) == 1


async def test_a_refused_client_unblock_returns_false_and_is_not_asked_again(
    admin: redis.Redis, own_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="layers.redis")
    client = ShardClient(
        parse_hosts(url_for(own_server, NO_DANGEROUS))[0], OPTIONS, retry_timeout=1.0
    )
    watch = Watch()
    try:
        pop = asyncio.create_task(client.call("BLMPOP", 0.5, 1, "k", "LEFT", watch=watch))
        await blocked(admin)
        # CLIENT ID is allowed for this user, CLIENT UNBLOCK is not.
        assert watch.client_id is not None
        assert client.can_unblock
        assert await client.unblock(watch.client_id) is False
        assert not client.can_unblock
        assert await pop is None  # it ended by itself
        assert len(client_warnings(caplog)) == 1
        # Not asked again: no CLIENT UNBLOCK reaches the server.
        before = admin.info("commandstats").get("cmdstat_client|unblock", {}).get("calls", 0)
        assert await client.unblock(1) is False
        after = admin.info("commandstats").get("cmdstat_client|unblock", {}).get("calls", 0)
        assert before == after
    finally:
        await client.close()


async def test_unblock_ends_a_blocked_pop(admin: redis.Redis, shard: ShardClient) -> None:
    watch = Watch()
    pop = asyncio.create_task(shard.call("BLMPOP", 10, 1, "k", "LEFT", watch=watch))
    await blocked(admin)
    client_id = watch.client_id
    assert client_id is not None
    assert await shard.unblock(client_id) is True
    assert await asyncio.wait_for(pop, 2) is None
    assert watch.client_id is None  # only set while the pop runs
    # Nothing to end is not a failure.
    assert await shard.unblock(client_id) is True
    assert shard.can_unblock


async def test_an_error_reply_keeps_the_connection(shard: ShardClient) -> None:
    assert await shard.call("ECHO", "a") == b"a"
    (first,) = shard._open
    with pytest.raises(ServerError):
        await shard.call("NOSUCHCOMMAND", "x")
    assert await shard.call("ECHO", "b") == b"b"
    assert shard._open == {first}


async def test_cancelled_mid_exchange_leaves_no_reply_behind(
    admin: redis.Redis, shard: ShardClient
) -> None:
    for watch in (None, Watch()):
        pop = asyncio.create_task(shard.call("BLPOP", "k", 5, watch=watch))
        await blocked(admin)
        pop.cancel()
        outcome = (await asyncio.gather(pop, return_exceptions=True))[0]
        if watch is None:
            assert isinstance(outcome, asyncio.CancelledError)
            assert not shard._open, "a connection with a reply still to come was kept"
        else:
            # A blocked pop may be ended (CLIENT UNBLOCK) and its empty reply read, or
            # dropped with its connection: either way nothing is left to read.
            assert outcome is None or isinstance(outcome, asyncio.CancelledError), outcome
        for _ in range(100):
            if int(admin.info("clients")["blocked_clients"]) == 0:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the cancelled pop is still blocked on the server")
        # Whatever connection was kept is in step: each command reads its own reply.
        await shard.call("RPUSH", "k", "v")
        assert await shard.call("BLPOP", "k", 1, watch=watch) == [b"k", b"v"]
        assert await shard.call("ECHO", "after") == b"after"
        await shard.close()


async def test_a_reply_that_comes_too_late_is_an_error_not_an_empty_pop(
    admin: redis.Redis, shard: ShardClient
) -> None:
    # redis-py's own read timeout returns None, which would pass for "nothing popped"
    # and leave the pop's reply for the next command.
    with pytest.raises(BackendUnavailable):
        await shard.call("BLPOP", "k", 2, timeout=0.1, watch=Watch())
    assert not shard._open
    await asyncio.sleep(0.1)
    admin.rpush("k", "v")
    assert await shard.call("ECHO", "x") == b"x"
    assert await shard.call("LPOP", "k") == b"v"


async def test_receives_in_a_row_without_client(
    admin: redis.Redis, own_server: RedisProcess
) -> None:
    """30 receives through the layer for a user denied every CLIENT command."""
    hosts = [{"address": own_server.url, "username": NO_CLIENT, "password": PASSWORD}]
    layer = RedisChannelLayer(hosts=hosts, block_timeout=0.5)
    sender = RedisChannelLayer(hosts=hosts)
    try:
        local = await layer.new_channel()
        for n in range(30):
            target = local if n % 2 else "plain"
            receive = asyncio.create_task(layer.receive(target))
            await asyncio.sleep(0.01)
            await sender.send(target, {"type": "m", "n": n})
            assert await asyncio.wait_for(receive, 3) == {"type": "m", "n": n}, n
    finally:
        await layer.close()
        await sender.close()


# -- one error boundary ------------------------------------------------------------------------


def assert_server_error(exc: BaseException, address: str, text: str) -> None:
    assert isinstance(exc, ServerError), repr(exc)
    assert not isinstance(exc, RedisError)
    assert exc.address == address
    assert address in str(exc)
    assert isinstance(exc.reason, str)
    assert text.lower() in exc.reason.lower(), exc.reason


@pytest.mark.parametrize(
    ("user", "command", "text"),
    [
        (None, ("NOSUCHCOMMAND",), "unknown command"),
        (None, ("GET",), "wrong number of arguments"),
        (None, ("INCR", "s"), "not an integer"),
        (NO_DANGEROUS, ("FLUSHALL",), "NOPERM"),
        (NO_CLIENT, ("CLIENT", "ID"), "NOPERM"),
    ],
)
async def test_error_replies_become_server_errors(
    admin: redis.Redis,
    own_server: RedisProcess,
    user: str | None,
    command: tuple[str, ...],
    text: str,
) -> None:
    admin.set("s", "text")
    spec = parse_hosts(url_for(own_server, user))[0]
    client = ShardClient(spec, OPTIONS, retry_timeout=1.0)
    try:
        with pytest.raises(ServerError) as caught:
            await client.call(*command, idempotent=True)
        assert_server_error(caught.value, spec.address, text)
        assert await client.call("ECHO", "still fine") == b"still fine"
    finally:
        await client.close()


async def test_out_of_memory_is_a_server_error(
    admin: redis.Redis, own_server: RedisProcess
) -> None:
    layer = RedisChannelLayer(hosts=[own_server.url])
    try:
        await layer.send("warm", {"type": "m"})  # scripts loaded before memory runs out
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        address = layer.shards[0].address
        for operation in (
            layer.send("c", {"type": "m"}),
            layer.group_add("g", "c"),
        ):
            with pytest.raises(ServerError) as caught:
                await operation
            assert_server_error(caught.value, address, "OOM")
    finally:
        admin.config_set("maxmemory", 0)
        await layer.close()


async def test_a_read_only_replica_is_a_server_error(
    admin: redis.Redis, own_server: RedisProcess
) -> None:
    layer = RedisChannelLayer(hosts=[own_server.url])
    try:
        await layer.send("warm", {"type": "m"})
        # A replica of a master that is not there: it refuses writes all the same.
        admin.execute_command("REPLICAOF", "127.0.0.1", free_port())  # type: ignore[no-untyped-call]
        with pytest.raises(ServerError) as caught:
            await layer.send("c", {"type": "m"})
        assert_server_error(caught.value, layer.shards[0].address, "READONLY")
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
        await layer.close()


async def test_a_flushed_script_is_loaded_again(
    admin: redis.Redis, own_server: RedisProcess
) -> None:
    layer = RedisChannelLayer(hosts=[own_server.url])
    try:
        await layer.send("c", {"type": "m", "n": 1})
        admin.script_flush()
        await layer.send("c", {"type": "m", "n": 2})
        assert admin.llen(f"{layer.prefix}:c:c") == 2
    finally:
        await layer.close()


async def test_network_errors_stay_backend_unavailable(own_server: RedisProcess) -> None:
    for url in (
        f"redis://127.0.0.1:{free_port()}/0",  # nobody listens
        f"redis://{NO_CLIENT}:wrong@127.0.0.1:{own_server.port}/0",  # refused login
    ):
        spec = parse_hosts(url)[0]
        client = ShardClient(spec, OPTIONS, retry_timeout=0.2)
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await client.call("PING", idempotent=True)
            assert not isinstance(caught.value, RedisError)
            assert caught.value.address == spec.address
        finally:
            await client.close()


# -- bounded connections -----------------------------------------------------------------------


class ConnectionCounter:
    """Samples CLIENT LIST in a thread while a test runs: the most clients at once."""

    def __init__(self, server: RedisProcess) -> None:
        self._client = redis.Redis(port=server.port, socket_timeout=5)
        self._before = int(self._client.info("stats")["total_connections_received"])
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Our own connection is one of them.
            self.peak = max(self.peak, len(self._client.client_list()) - 1)
            self._stop.wait(0.002)

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def opened(self) -> int:
        """Connections accepted since this counter was made, its own excluded."""
        return int(self._client.info("stats")["total_connections_received"]) - self._before

    def close(self) -> None:
        self._client.close()


async def test_200_concurrent_sends_open_at_most_max_connections(
    own_server: RedisProcess,
) -> None:
    layer = RedisChannelLayer(hosts=[own_server.url], capacity=1000)
    members = [f"member{n}" for n in range(5)]
    for member in members:
        await layer.group_add("room", member)
    await layer.close()  # start from no connection at all
    counter = ConnectionCounter(own_server)
    try:
        with counter:
            calls = [
                layer.group_send("room", {"type": "g", "n": n})
                if n % 2
                else layer.send("direct", {"type": "d", "n": n})
                for n in range(200)
            ]
            await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert counter.peak <= 16, f"{counter.peak} connections at once"
        assert counter.opened() <= 16, f"{counter.opened()} connections opened"
        check = redis.Redis(port=own_server.port)
        try:
            assert check.llen(f"{layer.prefix}:c:direct") == 100
            for member in members:
                assert check.llen(f"{layer.prefix}:c:{member}") == 100
        finally:
            check.close()
    finally:
        counter.close()
        await layer.close()


async def test_callers_beyond_the_bound_wait_and_all_complete(shard: ShardClient) -> None:
    small = ShardClient(parse_hosts(shard.address)[0], OPTIONS, 1.0, max_connections=4)
    try:
        most = 0

        async def one(n: int) -> bytes:
            nonlocal most
            most = max(most, len(small._open))
            reply: bytes = await small.call("ECHO", str(n))
            most = max(most, len(small._open))
            return reply

        replies = await asyncio.gather(*(one(n) for n in range(200)))
        assert replies == [str(n).encode() for n in range(200)]
        assert most <= 4
        assert len(small._open) <= connections._KEEP_IDLE
    finally:
        await small.close()


async def test_idle_connections_are_trimmed(
    shard: ShardClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.gather(*(shard.call("BLPOP", "none", 0.05) for _ in range(12)))
    # More than a few idle ones are closed as they come back...
    assert len(shard._open) <= connections._KEEP_IDLE
    # ...and the rest once unused for a while, on the next acquire.
    monkeypatch.setattr(connections, "_IDLE_LIFETIME", 0.05)
    await asyncio.sleep(0.1)
    await shard.call("PING")
    assert len(shard._open) == 1


async def test_blocking_pops_never_wait_behind_the_bound(
    admin: redis.Redis, own_server: RedisProcess
) -> None:
    client = ShardClient(parse_hosts(own_server.url)[0], OPTIONS, 1.0, max_connections=1)
    try:
        pops = [
            asyncio.create_task(client.call("BLPOP", f"k{n}", 5, watch=Watch())) for n in range(5)
        ]
        await blocked(admin, 5)
        # Five pops block on the server, and ordinary commands still go through.
        for n in range(5):
            assert await asyncio.wait_for(client.call("RPUSH", f"k{n}", "v"), 1) == 1
        assert await asyncio.wait_for(asyncio.gather(*pops), 2) == [
            [f"k{n}".encode(), b"v"] for n in range(5)
        ]
    finally:
        await client.close()


async def test_cancelled_callers_give_their_slot_back(shard: ShardClient) -> None:
    client = ShardClient(parse_hosts(shard.address)[0], OPTIONS, 1.0, max_connections=2)
    rng = random.Random(7)
    try:
        tasks = [asyncio.create_task(client.call("BLPOP", "none", 0.02)) for _ in range(60)]
        for task in tasks:
            if rng.random() < 0.5:
                task.get_loop().call_later(rng.random() * 0.1, task.cancel)
        await asyncio.gather(*tasks, return_exceptions=True)
        # Both slots are free: two commands that each hold a connection run at once.
        both = asyncio.gather(client.call("BLPOP", "none", 0.3), client.call("BLPOP", "none", 0.3))
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(both, 2)
        assert asyncio.get_running_loop().time() - started < 0.55
    finally:
        await client.close()
