"""The home loop (layers/runtime/home.py): calls from ``async_to_sync``'s one-call loops run
in one long-lived loop per layer instance; it ends when closed or idle, never with a call in
flight, and a call arriving as it ends starts a new one."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from layers.runtime.home import Home, one_call_loop
from layers.runtime.network import NetworkLayer

pytestmark = pytest.mark.timeout(60)


async def where() -> asyncio.AbstractEventLoop:
    """The loop a call ran in: compared by identity (thread idents are reused once a thread
    ends, so they cannot tell a new home thread from an old one)."""
    loop = asyncio.get_running_loop()
    assert threading.current_thread() is not threading.main_thread()
    return loop


def test_one_call_loops_are_told_apart() -> None:
    async def check() -> bool:
        return one_call_loop()

    assert async_to_sync(check)() is True
    assert asyncio.run(check()) is False


def test_calls_share_one_thread_until_closed() -> None:
    home = Home("t", idle=30)

    async def call() -> asyncio.AbstractEventLoop:
        return await home.run(where())

    first = async_to_sync(call)()
    assert all(async_to_sync(call)() is first for _ in range(20))
    loop = home.loop()
    assert loop is first and loop.is_running()
    async_to_sync(home.close)()
    assert loop.is_closed()
    assert home.loop() is None
    # Used again, it starts again.
    again = async_to_sync(call)()
    assert again is not first
    async_to_sync(home.close)()


def test_idle_home_ends_and_the_next_call_starts_another() -> None:
    home = Home("t", idle=0.1)

    async def call() -> asyncio.AbstractEventLoop:
        return await home.run(where())

    first = async_to_sync(call)()
    loop = home.loop()
    assert loop is not None
    deadline = time.monotonic() + 5
    while not loop.is_closed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.is_closed()
    assert async_to_sync(call)() is not first
    async_to_sync(home.close)()


def test_close_waits_for_calls_in_flight() -> None:
    home = Home("t", idle=30)
    started = threading.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "done"

    async def call() -> str:
        return await home.run(slow())

    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(async_to_sync(call))
        assert started.wait(5)
        began = time.monotonic()
        async_to_sync(home.close)()
        assert time.monotonic() - began >= 0.2
        assert result.result(5) == "done"


def test_a_cancelled_caller_cancels_its_work() -> None:
    home = Home("t", idle=30)
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(home.run(forever()), 0.05)

    async_to_sync(give_up)()
    assert cancelled.wait(5)
    async_to_sync(home.close)()


def test_many_threads_while_it_keeps_ending() -> None:
    """Calls racing the home loop's end (idle after 1 ms): each runs, none hangs."""
    home = Home("t", idle=0.001)

    async def call(n: int) -> int:
        async def echo() -> int:
            await asyncio.sleep(0)
            return n

        return await home.run(echo())

    def worker(base: int) -> list[int]:
        out = []
        for n in range(base, base + 50):
            out.append(async_to_sync(call)(n))
            if n % 7 == 0:
                time.sleep(0.002)  # let it go idle and end
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(0, 400, 50), timeout=50))
    assert [n for chunk in results for n in chunk] == list(range(400))
    async_to_sync(home.close)()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_forked_child_starts_its_own() -> None:
    home = Home("t", idle=30)

    async def call() -> asyncio.AbstractEventLoop:
        return await home.run(where())

    parent = async_to_sync(call)()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanups
        try:
            child = async_to_sync(call)()
            os.write(write, b"ok" if child is not parent else b"the parent's loop")
        except BaseException as exc:
            os.write(write, repr(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(write)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.read(read, 256) == b"ok"
        assert status == 0
    finally:
        os.close(read)
    # The parent's home loop is untouched.
    assert async_to_sync(call)() is parent
    async_to_sync(home.close)()


class Recording(NetworkLayer):
    """Records where each call ran and what it was given."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.calls: list[tuple[int, Any]] = []

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        self.calls.append((threading.get_ident(), message))

    async def group_discard(self, group: str, channel: str) -> None:
        raise ValueError(f"refused {group}")


def test_layer_calls_from_one_call_loops_run_at_home() -> None:
    layer = Recording()
    message = {"type": "m", "items": [1, 2]}
    async_to_sync(layer.send)("c", message)
    async_to_sync(layer.send)("c", message=message)
    asyncio.run(layer.send("c", message))
    (home, first), (again, second), (here, third) = layer.calls
    assert home == again != threading.get_ident() and here == threading.get_ident()
    # Copied when it changes threads (the caller's loop runs on meanwhile); not otherwise.
    assert first == second == message and first is not message and second is not message
    assert third is message
    # Errors come back to the caller.
    with pytest.raises(ValueError, match="refused g"):
        async_to_sync(layer.group_discard)("g", "c")
    async_to_sync(layer.close)()
