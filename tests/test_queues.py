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


async def test_a_waiter_woken_for_one_channel_that_takes_another_passes_the_wake_on() -> None:
    queues: LocalQueues[str] = LocalQueues()
    many = asyncio.create_task(queues.get(["b", "a"]))
    await asyncio.sleep(0)
    single = asyncio.create_task(queues.get(["a"]))
    await asyncio.sleep(0)
    # "a" wakes `many` (the first waiter on "a"); before it runs, "b" arrives, and `many`
    # takes "b" because it lists "b" first. The wake-up for "a" must reach `single`.
    queues.put("a", "for a", expires_at=1e12)
    queues.put("b", "for b", expires_at=1e12)
    assert await asyncio.wait_for(many, 1) == ("b", "for b")
    assert await asyncio.wait_for(single, 1) == ("a", "for a")


def test_a_waiter_chosen_on_another_loop_is_not_chosen_again() -> None:
    """Two puts from this thread while the waiters' loops are held back: the first chooses
    the multi-channel waiter, so the second must wake the other waiter on "b", not choose
    the first one again (whose loop would then run one wake-up and lose the other)."""
    queues: LocalQueues[str] = LocalQueues()
    results: dict[str, tuple[str, str]] = {}
    go = threading.Event()

    def run(label: str, channels: list[str], parked: threading.Event) -> None:
        async def main() -> None:
            task = asyncio.create_task(queues.get(channels))
            await asyncio.sleep(0)
            parked.set()
            # Keep this loop from running the scheduled wake-up until both puts are done.
            await asyncio.to_thread(go.wait, 5)
            results[label] = await asyncio.wait_for(task, 2)

        asyncio.run(main())

    threads = []
    # "many" parks first, so it is first in line on "b" too.
    for label, channels in (("many", ["a", "b"]), ("single", ["b"])):
        parked = threading.Event()
        thread = threading.Thread(target=run, args=(label, channels, parked))
        thread.start()
        assert parked.wait(5)
        threads.append(thread)
    queues.put("a", "for a", expires_at=1e12)
    queues.put("b", "for b", expires_at=1e12)
    go.set()
    for thread in threads:
        thread.join(5)
    assert results == {"many": ("a", "for a"), "single": ("b", "for b")}


def test_many_threads_put_and_get_lose_nothing() -> None:
    queues: LocalQueues[int] = LocalQueues()
    threads_n, per_thread, stop = 8, 300, -1
    got: list[list[int]] = [[] for _ in range(threads_n)]

    def consumer(index: int) -> None:
        async def main() -> None:
            # Each lists its own channel first, so it only sees a stop once that is empty.
            while (item := (await queues.get([f"c{index}", "shared"]))[1]) != stop:
                got[index].append(item)

        asyncio.run(asyncio.wait_for(main(), 20))

    def producer(index: int) -> None:
        for n in range(per_thread):
            channel = "shared" if n % 2 else f"c{(index + 1) % threads_n}"
            queues.put(channel, index * per_thread + n, expires_at=1e12)

    consumers = [threading.Thread(target=consumer, args=(i,)) for i in range(threads_n)]
    producers = [threading.Thread(target=producer, args=(i,)) for i in range(threads_n)]
    for thread in consumers + producers:
        thread.start()
    for thread in producers:
        thread.join(20)
    for _ in consumers:
        queues.put("shared", stop, expires_at=1e12)
    for thread in consumers:
        thread.join(20)
    assert not any(thread.is_alive() for thread in consumers + producers)
    everything = sorted(item for items in got for item in items)
    assert everything == list(range(threads_n * per_thread))
    assert len(queues) == 0


def test_put_if_room_checks_unexpired_size() -> None:
    clock = FakeClock()
    queues: LocalQueues[int] = LocalQueues(clock=clock)
    assert queues.put_if_room("c", 1, expires_at=10, capacity=2)
    assert queues.put_if_room("c", 2, expires_at=20, capacity=2)
    assert not queues.put_if_room("c", 3, expires_at=30, capacity=2)
    clock.now = 15  # the first entry has expired, which makes room
    assert queues.put_if_room("c", 4, expires_at=30, capacity=2)
    assert queues.pop_nowait(["c"]) == ("c", 2)
    assert queues.pop_nowait(["c"]) == ("c", 4)


def test_put_if_room_from_many_threads_never_overfills() -> None:
    queues: LocalQueues[int] = LocalQueues()
    accepted: list[bool] = []
    start = threading.Barrier(8)

    def offer() -> None:
        start.wait(5)
        for n in range(200):
            accepted.append(queues.put_if_room("c", n, expires_at=1e12, capacity=50))

    threads = [threading.Thread(target=offer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert accepted.count(True) == 50
    assert queues.size("c") == 50


async def test_put_if_room_wakes_a_waiter() -> None:
    queues: LocalQueues[str] = LocalQueues()
    waiter = asyncio.create_task(queues.get(["c"]))
    await asyncio.sleep(0)
    assert queues.put_if_room("c", "x", expires_at=1e12, capacity=1)
    assert await asyncio.wait_for(waiter, 1) == ("c", "x")
