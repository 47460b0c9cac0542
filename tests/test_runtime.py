"""The shared runtime's parts on their own: the error boundary, per-loop state, turns."""

from __future__ import annotations

import asyncio
import threading

import pytest

from layers.errors import BackendUnavailable, LayerError, ServerError
from layers.runtime import PerLoop
from layers.runtime.boundary import Boundary
from layers.runtime.loops import Turn


class Refused(Exception):
    pass


class Unreachable(ConnectionError):
    pass


class Refusal(Unreachable):
    """A driver that derives its error replies from its connection errors."""


def boundary() -> Boundary:
    return Boundary("db:1", refused=(Refusal, Refused), unavailable=(Unreachable,))


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (Refused("NOPERM"), ServerError),
        (Refusal("READONLY"), ServerError),
        (Unreachable("reset"), BackendUnavailable),
    ],
)
def test_boundary_wraps_driver_errors_with_the_address(
    raised: Exception, expected: type[LayerError]
) -> None:
    with pytest.raises(expected) as caught, boundary():
        raise raised
    assert "db:1" in str(caught.value)
    assert str(raised) in str(caught.value)
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize("raised", [TypeError("bad name"), BackendUnavailable("x", "y")])
def test_boundary_lets_other_errors_through(raised: Exception) -> None:
    with pytest.raises(type(raised)) as caught, boundary():
        raise raised
    assert caught.value is raised


def test_boundary_never_touches_cancellation() -> None:
    with pytest.raises(asyncio.CancelledError), boundary():
        raise asyncio.CancelledError


class State:
    def __init__(self) -> None:
        self.closed = 0
        self.abandoned = 0

    async def close(self) -> None:
        self.closed += 1

    def abandon(self) -> None:
        self.abandoned += 1


def test_per_loop_state_is_closed_inside_its_loop_as_the_loop_closes() -> None:
    made: list[State] = []

    def make(loop: asyncio.AbstractEventLoop) -> State:
        made.append(State())
        return made[-1]

    states: PerLoop[State] = PerLoop(make)

    async def use() -> State:
        assert states.get() is states.get()
        return states.get()

    first = asyncio.run(use())
    second = asyncio.run(use())
    assert first is not second
    assert (first.closed, second.closed) == (1, 1)
    assert states.peek() is None


def test_per_loop_state_is_made_once_per_loop_across_threads() -> None:
    made: list[State] = []
    lock = threading.Lock()

    def make(loop: asyncio.AbstractEventLoop) -> State:
        with lock:
            made.append(State())
        return made[-1]

    states: PerLoop[State] = PerLoop(make)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:

        async def get() -> State:
            return states.get()

        futures = [asyncio.run_coroutine_threadsafe(get(), loop) for _ in range(50)]
        got = {id(future.result(5)) for future in futures}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert len(got) == 1
    assert len(made) == 1
    assert made[0].closed == 1


def test_turns_across_threads_are_exclusive_and_all_get_one() -> None:
    turn = Turn()
    inside = 0
    most = 0
    done = 0
    count = threading.Lock()

    async def take() -> None:
        nonlocal inside, most, done
        for _ in range(20):
            await turn.acquire()
            with count:
                inside += 1
                most = max(most, inside)
            await asyncio.sleep(0)
            with count:
                inside -= 1
                done += 1
            turn.release()

    threads = [threading.Thread(target=asyncio.run, args=(take(),)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert (most, done) == (1, 120)


async def test_a_turn_passed_to_a_cancelled_waiter_goes_on_to_the_next() -> None:
    turn = Turn()
    await turn.acquire()
    first = asyncio.create_task(turn.acquire())
    second = asyncio.create_task(turn.acquire())
    await asyncio.sleep(0)
    turn.release()
    first.cancel()
    await asyncio.wait_for(second, 2)
    assert first.cancelled()
    turn.release()
