"""One layer instance called from many threads at once through ``async_to_sync``.

This is how Django views and Celery tasks use a channel layer: every call runs on a new
event loop in its own thread, and many such calls run at the same time on the one instance
``get_channel_layer()`` returns. Each receive must return exactly the message meant for its
channel (channels_redis 4.3 returned another thread's message in 1,592 of 1,600 receives
this way), nothing may be lost, and no connection may outlive the loop that opened it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync

from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess

pytestmark = pytest.mark.timeout(180)

THREADS = 8
ROUNDS = 15
MEMBERS = 12
RECEIVE_TIMEOUT = 10.0


def receive(layer: RedisChannelLayer, channel: str) -> Any:
    """A receive from sync code; what it raised (a timeout if its message never came)
    stands in for the message, so one thread's failure does not hide the others'."""

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)

    try:
        return async_to_sync(bounded)()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def own_channels(layer: RedisChannelLayer, worker: int) -> list[str]:
    """One thread's work: to its own ordinary and process-local channels, then back."""
    local = async_to_sync(layer.new_channel)()
    plain = f"thread{worker}"
    wrong = []
    for n in range(ROUNDS):
        for channel in (plain, local):
            sent = {"type": "m", "worker": worker, "n": n, "channel": channel}
            async_to_sync(layer.send)(channel, sent)
            got = receive(layer, channel)
            if got != sent:
                wrong.append(f"{channel} round {n}: got {got}")
                if len(wrong) >= 3:
                    return wrong
    return wrong


def group_receiver(layer: RedisChannelLayer, members: list[str]) -> list[str]:
    wrong = []
    for n in range(ROUNDS):
        for member in members:
            got = receive(layer, member)
            if got != {"type": "g", "n": n}:
                wrong.append(f"{member} expected round {n}: got {got}")
                if len(wrong) >= 3:
                    return wrong
    return wrong


def group_sender(layer: RedisChannelLayer, group: str) -> list[str]:
    for n in range(ROUNDS):
        async_to_sync(layer.group_send)(group, {"type": "g", "n": n})
    return []


def run_threads(layer: RedisChannelLayer) -> None:
    """THREADS workers on their own channels, and a group send received in another thread,
    all at once on ``layer``."""
    group = "everyone"
    members = [async_to_sync(layer.new_channel)() for _ in range(MEMBERS)]
    for member in members:
        async_to_sync(layer.group_add)(group, member)
    jobs: list[tuple[Callable[..., list[str]], tuple[Any, ...]]] = [
        (own_channels, (layer, worker)) for worker in range(THREADS)
    ]
    jobs += [(group_receiver, (layer, members)), (group_sender, (layer, group))]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job, *args) for job, args in jobs]
        # .result() re-raises any exception a thread met.
        wrong = [line for future in futures for line in future.result()]
    assert not wrong, f"{len(wrong)} receives failed (each thread stops at 3): {wrong}"


def test_many_threads_on_one_instance(shared_redis: str, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[shared_redis], prefix=prefix)
    try:
        run_threads(layer)
    finally:
        async_to_sync(layer.flush)()
        async_to_sync(layer.close)()


def connected_clients(admin: redis.Redis) -> int:
    return int(admin.info("clients")["connected_clients"])


def settles_at(
    admin: redis.Redis, expected: int, deadline: float = 10.0, at_most: bool = False
) -> int:
    """The server's connection count once it reaches ``expected`` (or, ``at_most``, falls
    to it), or at the deadline: a closed loop's connections may take a moment to be seen
    closed by the server."""
    end = time.monotonic() + deadline
    while True:
        count = connected_clients(admin)
        if count == expected or (at_most and count < expected) or time.monotonic() > end:
            return count
        time.sleep(0.02)


def test_connections_do_not_pile_up(own_server: RedisProcess, prefix: str) -> None:
    admin = redis.Redis(port=own_server.port, socket_timeout=5)
    layer = RedisChannelLayer(hosts=[own_server.url], prefix=prefix)
    try:
        before = connected_clients(admin)  # this admin connection only
        async_to_sync(layer.group_add)("room", "member")
        # Calls from async_to_sync's loops run in the instance's home loop, on its one
        # connection (layers/runtime/home.py); the receives' connections go with their loops.
        for n in range(200):
            async_to_sync(layer.group_send)("room", {"type": "m", "n": n})
        assert settles_at(admin, before + 1) == before + 1
        run_threads(layer)
        # The home loop keeps a few idle connections after a burst (_KEEP_IDLE, 4).
        assert settles_at(admin, before + 5, at_most=True) <= before + 5
        async_to_sync(layer.close)()
        assert settles_at(admin, before) == before
    finally:
        async_to_sync(layer.flush)()
        async_to_sync(layer.close)()
        admin.close()
