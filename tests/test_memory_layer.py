"""The memory layer's own guarantees beyond the shared suite: its group table stays bounded,
receives on another instance's local channel fail at once, and one instance serves many
threads."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from layers.errors import ForeignChannel
from layers.memory import InMemoryChannelLayer


def memberships(layer: InMemoryChannelLayer) -> int:
    return sum(len(members) for members in layer._groups.values())


async def test_groups_never_sent_to_do_not_grow_without_bound() -> None:
    layer = InMemoryChannelLayer(group_expiry=0.05)
    for n in range(500):
        await layer.group_add(f"room{n}", f"member{n}")
    await asyncio.sleep(0.06)  # past group_expiry: only time has to pass
    # Later traffic elsewhere sweeps the lapsed memberships and their now empty groups.
    for n in range(600):
        await layer.group_add("live", f"live{n % 3}")
    assert set(layer._groups) == {"live"}
    assert memberships(layer) == 3


async def test_the_group_sweep_keeps_live_memberships() -> None:
    layer = InMemoryChannelLayer(group_expiry=0.2)
    await layer.group_add("g", "kept")
    for n in range(300):
        await layer.group_add("other", f"c{n}")
    await layer.group_discard("other", "c0")
    await layer.group_send("g", {"type": "m"})
    assert await layer.receive("kept") == {"type": "m"}


async def test_the_group_sweep_is_not_a_scan_per_call() -> None:
    layer = InMemoryChannelLayer(group_expiry=30)
    sweeps = 0
    sweep = layer._sweep_groups

    def counting(now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        sweep(now)

    layer._sweep_groups = counting  # type: ignore[method-assign]
    for n in range(2000):
        await layer.group_add(f"g{n % 50}", f"c{n}")
    # Without time passing, no sweep at all is due.
    assert sweeps <= 1


async def test_receive_on_another_instances_local_channel_fails_at_once() -> None:
    layer, other = InMemoryChannelLayer(), InMemoryChannelLayer()
    theirs = await other.new_channel()
    with pytest.raises(ForeignChannel, match="process-local"):
        await asyncio.wait_for(layer.receive(theirs), 1)
    with pytest.raises(ForeignChannel) as raised:
        await asyncio.wait_for(layer.receive_many(["plain", theirs]), 1)
    assert theirs in str(raised.value)
    # Its own local channels still work, alone and with others.
    mine = await layer.new_channel()
    await layer.send(mine, {"type": "m"})
    assert await layer.receive_many(["plain", mine]) == (mine, {"type": "m"})


async def test_group_send_skips_a_full_member_under_per_channel_capacity() -> None:
    layer = InMemoryChannelLayer(capacity=1)
    await layer.group_add("g", "a")
    await layer.group_add("g", "b")
    await layer.send("a", {"type": "first"})
    await layer.group_send("g", {"type": "group"})
    assert await layer.receive("a") == {"type": "first"}
    assert await layer.receive("b") == {"type": "group"}


def test_many_threads_share_one_instance() -> None:
    """Each thread sends, group-sends and receives through async_to_sync at once."""
    layer = InMemoryChannelLayer(capacity=1000)
    threads_n, rounds = 8, 40
    group = "everyone"
    start = threading.Barrier(threads_n)
    received: dict[int, list[Any]] = {}
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            own = async_to_sync(layer.new_channel)()
            plain = f"plain{index}"
            async_to_sync(layer.group_add)(group, own)
            start.wait(10)
            got: list[Any] = []
            for n in range(rounds):
                async_to_sync(layer.send)(plain, {"type": "m", "from": index, "n": n})
                async_to_sync(layer.group_send)(group, {"type": "g", "from": index, "n": n})
                got.append(async_to_sync(layer.receive)(plain))
                # Each round waits for every thread's group message of that round, so
                # receives park while other threads are still putting to the same channel.
                for _ in range(threads_n):
                    got.append(async_to_sync(layer.receive)(own))
            received[index] = got
        except BaseException as exc:
            failures.append(exc)

    # Daemons, so a hung thread fails the test instead of keeping the process alive.
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    # Switching threads far more often than the default 5 ms makes interleavings inside
    # the layer's bookkeeping likely, instead of once in a blue moon.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not failures, failures[0]
    expected_group = sorted((i, n) for i in range(threads_n) for n in range(rounds))
    for index in range(threads_n):
        got = received[index]
        direct = [(m["from"], m["n"]) for m in got if m["type"] == "m"]
        assert direct == [(index, n) for n in range(rounds)], f"thread {index}: {direct}"
        grouped = sorted((m["from"], m["n"]) for m in got if m["type"] == "g")
        assert grouped == expected_group, f"thread {index} group messages differ"
    assert len(layer._queues) == 0
