"""Faults on private servers: restarts, killed connections, a server that stays down, and
an idle receive outliving redis-py's default socket timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis.asyncio as redis

from layers.errors import BackendUnavailable
from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess
from tests.redis.waiting import wait_blocked, wait_until

pytestmark = [pytest.mark.xdist_group("redis-faults"), pytest.mark.timeout(60)]

#: Sends (beyond the first few) that must follow the restart.
AFTER_RESTART = 40


def make_layer(server: RedisProcess, prefix: str, **config: object) -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[server.url], prefix=prefix, capacity=10_000, **config)  # type: ignore[arg-type]


async def kill_clients(server: RedisProcess) -> int:
    admin = redis.Redis(port=server.port, socket_timeout=5)
    try:
        # SKIPME yes (the default) spares this admin connection.
        return int(await admin.execute_command("CLIENT", "KILL", "TYPE", "normal"))  # type: ignore[no-untyped-call]
    finally:
        await admin.aclose()


async def test_restart_during_sends_and_receives(own_server: RedisProcess, prefix: str) -> None:
    sender = make_layer(own_server, prefix, retry_timeout=10)
    receiver = make_layer(own_server, prefix, retry_timeout=10)
    local = await receiver.new_channel()
    sent: list[int] = []
    maybe: list[int] = []
    got: dict[str, list[int]] = {"work": [], local: []}
    stop = asyncio.Event()

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            for channel in ("work", local):
                try:
                    await sender.send(channel, {"type": "m", "n": n})
                    sent.append(n)
                except BackendUnavailable:
                    # The reply was lost mid-restart: it may or may not have arrived.
                    maybe.append(n)
                n += 1
            await asyncio.sleep(0.005)

    async def consume(channel: str) -> None:
        while True:
            got[channel].append((await receiver.receive(channel))["n"])

    consumers = [asyncio.create_task(consume(channel)) for channel in got]
    producer = asyncio.create_task(produce())
    await wait_until(lambda: all(got.values()), "both channels received a message")
    # Down for a moment (time, not a condition: nothing shows "every client noticed"); the
    # kill already breaks every connection, so this only needs to be short and non-zero.
    await asyncio.to_thread(own_server.restart, 0.2)
    restarted_at = len(sent)
    # The first few sends after the restart may have been under way during it.
    await wait_until(
        lambda: len(sent) >= restarted_at + 4 + AFTER_RESTART, "sends went on after the restart"
    )
    stop.set()
    await producer
    after = set(sent[restarted_at + 4 :])
    # Per channel FIFO: once everything sent after the restart has arrived, so has anything
    # else still deliverable.
    with contextlib.suppress(AssertionError):
        await wait_until(
            lambda: after <= set(got["work"] + got[local]),
            "everything sent after the restart arrived",
        )
    for task in consumers:
        task.cancel()
    received = got["work"] + got[local]
    assert len(received) == len(set(received)), "a message was delivered twice"
    assert set(received) <= set(sent) | set(maybe)
    assert after, "nothing was sent after the restart"
    missing = after - set(received)
    assert not missing, f"{len(missing)} messages sent after the restart never arrived"
    await sender.close()
    await receiver.close()


async def test_killed_connections_are_survived(own_server: RedisProcess, prefix: str) -> None:
    layer = make_layer(own_server, prefix)
    other = make_layer(own_server, prefix)
    local = await layer.new_channel()
    waiting = [asyncio.create_task(layer.receive(ch)) for ch in ("work", local)]
    await other.send("warm", {"type": "m"})
    # Both receives parked: the pop for "work" and the receive loop of the local channels.
    await wait_blocked(own_server.port, 2)
    assert await kill_clients(own_server) >= 3
    # Pooled connections died idle, the receive loops died blocked: all must recover.
    await wait_blocked(own_server.port, 2)
    await other.send("work", {"type": "m", "n": 1})
    await other.send(local, {"type": "m", "n": 2})
    results = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert [r["n"] for r in results] == [1, 2]
    assert (await asyncio.wait_for(layer.receive("warm"), 5))["type"] == "m"
    for _ in range(3):
        await kill_clients(own_server)
        await other.send(local, {"type": "m", "n": 3})
        assert (await asyncio.wait_for(layer.receive(local), 5))["n"] == 3
    await layer.close()
    await other.close()


async def test_kill_storm_delivers_nothing_twice(own_server: RedisProcess, prefix: str) -> None:
    sender = make_layer(own_server, prefix)
    receiver = make_layer(own_server, prefix)
    received: list[int] = []
    sent: list[int] = []
    progress = asyncio.Event()

    async def consume() -> None:
        while True:
            received.append((await receiver.receive("work"))["n"])
            progress.set()

    consumer = asyncio.create_task(consume())
    for n in range(300):
        try:
            await sender.send("work", {"type": "m", "n": n})
            sent.append(n)
        except BackendUnavailable:
            pass
        if n % 30 == 0:
            await kill_clients(own_server)
    # Wait until the consumer has been quiet for a while: everything deliverable arrived.
    while len(received) < len(sent):
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), 1.0)
        except TimeoutError:
            break
    consumer.cancel()
    assert len(received) == len(set(received)), "a message was delivered twice"
    # A pop whose reply was cut off by a kill is lost (at most once), never repeated.
    assert len(set(received)) >= len(sent) - 10
    await sender.close()
    await receiver.close()


async def test_server_down_raises_backend_unavailable(
    own_server: RedisProcess, prefix: str
) -> None:
    # Each call below retries for retry_timeout before it gives up: that is time, not a
    # condition, so it is made short (a refused connect fails at once; connect_timeout only
    # bounds a connect that hangs).
    retry = 0.5
    layer = make_layer(own_server, prefix, retry_timeout=retry, connect_timeout=0.5)
    await layer.send("ok", {"type": "m"})
    own_server.stop()
    address = f"127.0.0.1:{own_server.port}"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=address):
        await layer.send("ok", {"type": "m"})
    assert time.monotonic() - started < retry + 3
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=address):
        await asyncio.wait_for(layer.receive("nothing"), 10)
    assert time.monotonic() - started < retry + 5
    with pytest.raises(BackendUnavailable, match=address):
        await layer.group_send("g", {"type": "m"})
    await layer.close()
    # And it comes back once the server does.
    own_server.start()
    await layer.send("ok", {"type": "m", "n": 7})
    assert (await asyncio.wait_for(layer.receive("ok"), 5))["n"] == 7
    await layer.close()


async def test_idle_receive_outlives_the_socket_timeout(shared_redis: str, prefix: str) -> None:
    # redis-py 8 reads with a 5 s socket timeout by default; a receive must not care. Scaled
    # down: the server holds each pop for block_timeout, twice the socket timeout, so a pop's
    # reply read with the socket timeout would time out first; a receive loop failing for
    # retry_timeout hands the error to its receives.
    socket_timeout, block_timeout, retry_timeout = 0.5, 1.0, 0.5
    layer = RedisChannelLayer(
        hosts=[shared_redis],
        prefix=prefix,
        socket_timeout=socket_timeout,
        block_timeout=block_timeout,
        retry_timeout=retry_timeout,
    )
    other = RedisChannelLayer(hosts=[shared_redis], prefix=prefix)
    local = await layer.new_channel()
    waiting = [asyncio.create_task(layer.receive(ch)) for ch in ("idle", local)]
    # Time, not a condition: the property is that nothing happens while the receives stay
    # idle past the socket timeout, a whole blocked pop (the pops are reissued) and the
    # retry_timeout a failing pop would be retried for.
    await asyncio.sleep(block_timeout + socket_timeout + retry_timeout)
    assert not any(task.done() for task in waiting), [t.exception() for t in waiting if t.done()]
    await other.send("idle", {"type": "m", "n": 1})
    await other.send(local, {"type": "m", "n": 2})
    results = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert [r["n"] for r in results] == [1, 2]
    await layer.flush()
    await layer.close()
    await other.close()
