"""LocalQueues: the buffer under the memory layer and every network layer's local channels."""

from __future__ import annotations

import asyncio
import threading

from layers.queues import LocalQueues


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_fifo_and_expiry_on_read() -> None:
    clock = FakeClock()
    queues: LocalQueues[int] = LocalQueues(clock=clock)
    queues.put("a", 1, expires_at=10)
    queues.put("a", 2, expires_at=20)
    clock.now = 15
    assert queues.size("a") == 1
    assert queues.pop_nowait(["a"]) == ("a", 2)
    assert queues.pop_nowait(["a"]) is None
    assert queues.channels == []


async def test_a_woken_receiver_that_is_cancelled_passes_the_message_on() -> None:
    queues: LocalQueues[str] = LocalQueues()
    first = asyncio.create_task(queues.get(["c"]))
    second = asyncio.create_task(queues.get(["c"]))
    await asyncio.sleep(0)
    queues.put("c", "only", expires_at=1e12)
    # `first` has been woken but has not run yet: cancel it now.
    first.cancel()
    assert await asyncio.wait_for(second, 1) == ("c", "only")
    assert first.cancelled()


async def test_cancellation_storm_loses_nothing() -> None:
    queues: LocalQueues[int] = LocalQueues()
    got: list[int] = []

    async def receiver() -> None:
        while True:
            _, item = await queues.get(["c"])
            got.append(item)

    for round_ in range(50):
        tasks = [asyncio.create_task(receiver()) for _ in range(5)]
        await asyncio.sleep(0)
        for i in range(4):
            queues.put("c", round_ * 4 + i, expires_at=1e12)
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    while (found := queues.pop_nowait(["c"])) is not None:
        got.append(found[1])
    assert sorted(got) == list(range(200))


async def test_get_many_takes_one_entry_and_unregisters_everywhere() -> None:
    queues: LocalQueues[str] = LocalQueues()
    waiter = asyncio.create_task(queues.get(["a", "b", "c"]))
    await asyncio.sleep(0)
    queues.put("b", "x", expires_at=1e12)
    assert await waiter == ("b", "x")
    assert queues._waiters == {}


async def test_cancelled_waiters_do_not_pile_up() -> None:
    queues: LocalQueues[str] = LocalQueues()
    for _ in range(100):
        task = asyncio.create_task(queues.get(["idle"]))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert queues._waiters == {}


def test_sweep_drops_channels_nobody_reads_again() -> None:
    clock = FakeClock()
    queues: LocalQueues[int] = LocalQueues(clock=clock, sweep_interval=5)
    for i in range(100):
        queues.put(f"c{i}", i, expires_at=1)
    clock.now = 6
    queues.put("fresh", 0, expires_at=100)  # put runs the due sweep
    assert queues.channels == ["fresh"]


async def test_wakes_a_receiver_on_another_threads_loop() -> None:
    queues: LocalQueues[str] = LocalQueues()
    result: list[tuple[str, str]] = []
    started = threading.Event()

    def other_thread() -> None:
        async def wait() -> None:
            task = asyncio.create_task(queues.get(["x"]))
            await asyncio.sleep(0)
            started.set()
            result.append(await asyncio.wait_for(task, 5))

        asyncio.run(wait())

    thread = threading.Thread(target=other_thread)
    thread.start()
    await asyncio.to_thread(started.wait, 5)
    queues.put("x", "hello", expires_at=1e12)
    await asyncio.to_thread(thread.join, 5)
    assert result == [("x", "hello")]
