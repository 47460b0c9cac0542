"""Many receivers at once, cancelled receives, and the ``receive_many`` extension."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from conformance.constants import (
    BULK_CAPACITY,
    CANCEL_GRACE,
    CONCURRENT_MESSAGES,
    CONCURRENT_RECEIVERS,
    OP_TIMEOUT,
    QUIET_WAIT,
    RECEIVE_MANY_CALLERS,
    RECEIVE_MANY_MESSAGES,
    RECEIVE_TIMEOUT,
    SETTLE,
    STORM_DURATION,
    STORM_MAX_LIFETIME,
    STORM_MESSAGES,
    STORM_MIN_LIFETIME,
    WORKLOAD_TIMEOUT,
)
from conformance.suite.helpers import (
    Names,
    assert_exactly_once,
    assert_quiet,
    bounded,
    call,
    describe,
    drain,
    message,
    receive,
)

Receive = Callable[[], Coroutine[Any, Any, Any]]


async def collect_until(
    receivers: list[Receive], wanted: int, produce: Callable[[], Awaitable[None]]
) -> list[Any]:
    """Run receivers in loops while ``produce`` sends; stop once ``wanted`` have arrived.

    A short grace period after the last expected message lets duplicates show up.
    """
    received: list[Any] = []
    enough = asyncio.Event()
    errors: list[BaseException] = []

    async def run(receive: Receive) -> None:
        while True:
            try:
                got = await receive()
            except Exception as exc:
                errors.append(exc)
                enough.set()
                return
            received.append(got)
            if len(received) >= wanted:
                enough.set()

    tasks = [asyncio.create_task(run(receive)) for receive in receivers]
    try:
        await call(produce(), "sending the workload", WORKLOAD_TIMEOUT)
        # Running out of time is reported below, as the messages that never arrived.
        with contextlib.suppress(TimeoutError):
            await bounded(enough.wait(), WORKLOAD_TIMEOUT)
        await asyncio.sleep(QUIET_WAIT)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=CANCEL_GRACE)
    if errors:
        pytest.fail(f"a concurrent receive raised {describe(errors[0])}")
    return received


class ConcurrentReceiveChecks:
    @pytest.mark.asyncio
    async def test_many_receivers_get_each_message_exactly_once(
        self, make_pair: Any, names: Names
    ) -> None:
        first, other = make_pair(capacity=BULK_CAPACITY)
        channel = names.channel("crowded")
        instances = [first, other]
        receivers: list[Receive] = [
            functools.partial(instances[i % 2].receive, channel)
            for i in range(CONCURRENT_RECEIVERS)
        ]

        async def produce() -> None:
            for n in range(CONCURRENT_MESSAGES):
                await instances[n % 2].send(channel, message(n))
                if n % 10 == 0:
                    await asyncio.sleep(0)

        received = await collect_until(receivers, CONCURRENT_MESSAGES, produce)
        assert_exactly_once(received, range(CONCURRENT_MESSAGES))

    @pytest.mark.asyncio
    async def test_cancelled_receives_lose_nothing(self, make_pair: Any, names: Names) -> None:
        first, other = make_pair(capacity=BULK_CAPACITY)
        instances = [first] if first is other else [first, other]
        channel = names.channel("storm")
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        returned: list[Any] = []

        async def producer() -> None:
            for n in range(STORM_MESSAGES):
                await instances[n % len(instances)].send(channel, message(n))
                if n % 5 == 0:
                    await asyncio.sleep(rng.uniform(0, STORM_MAX_LIFETIME))

        async def short_lived_receive(layer: Any) -> None:
            task = asyncio.create_task(layer.receive(channel))
            await asyncio.wait({task}, timeout=rng.uniform(STORM_MIN_LIFETIME, STORM_MAX_LIFETIME))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
            if not done:
                pytest.fail(f"receive was still running {CANCEL_GRACE}s after being cancelled")
            # A receive may complete despite the cancel; then its message counts as returned.
            if not task.cancelled():
                if task.exception() is not None:
                    pytest.fail(f"receive raised {describe(task.exception())}")  # type: ignore[arg-type]
                returned.append(task.result())

        async def storm(layer: Any) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STORM_DURATION
            while loop.time() < deadline:
                await asyncio.gather(
                    *(short_lived_receive(layer) for _ in range(rng.randint(1, 4)))
                )

        sending = asyncio.create_task(producer())
        try:
            await call(
                asyncio.gather(*(storm(layer) for layer in instances)),
                "the storm of cancelled receives",
                STORM_DURATION + OP_TIMEOUT,
            )
            await call(sending, "sending the messages", OP_TIMEOUT)
        finally:
            sending.cancel()
        leftover = await drain(instances, channel)
        assert_exactly_once(
            returned + leftover,
            range(STORM_MESSAGES),
            f"{len(returned)} returned during the storm, {len(leftover)} drained after; "
            f"random seed {seed}",
        )


class ReceiveManyChecks:
    def _receive_many(self, layer: Any) -> Callable[[list[str]], Coroutine[Any, Any, Any]]:
        if "receive_many" not in (getattr(layer, "extensions", None) or ()):
            pytest.fail(f"{type(layer).__name__} does not list 'receive_many' in extensions")
        method = getattr(layer, "receive_many", None)
        if not callable(method):
            pytest.fail(f"{type(layer).__name__} has no receive_many() method")
        return method  # type: ignore[no-any-return]

    @pytest.mark.asyncio
    async def test_receive_many_returns_from_whichever_has_a_message(
        self, layer: Any, names: Names
    ) -> None:
        receive_many = self._receive_many(layer)
        a, b = names.channel("a"), names.channel("b")
        await call(layer.send(b, message(1)), "send")
        assert await call(receive_many([a, b]), "receive_many") == (b, message(1))
        await call(layer.send(a, message(2)), "send")
        assert await call(receive_many([a, b]), "receive_many") == (a, message(2))

    @pytest.mark.asyncio
    async def test_receive_many_waits_for_the_first_message(
        self, layer: Any, other_layer: Any, names: Names
    ) -> None:
        receive_many = self._receive_many(layer)
        a, b = names.channel("a"), names.channel("b")
        waiting = asyncio.create_task(receive_many([a, b]))
        try:
            await asyncio.sleep(SETTLE)
            assert not waiting.done(), (
                f"receive_many on empty channels returned {waiting.result()!r}"
            )
            await call(other_layer.send(b, message(1)), "send")
            got = await call(waiting, "receive_many started before the send")
        finally:
            waiting.cancel()
        assert got == (b, message(1))

    @pytest.mark.asyncio
    async def test_receive_many_takes_exactly_one_message(self, layer: Any, names: Names) -> None:
        receive_many = self._receive_many(layer)
        a, b = names.channel("a"), names.channel("b")
        await call(layer.send(a, message(1)), "send")
        await call(layer.send(b, message(2)), "send")
        channel, got = await call(receive_many([a, b]), "receive_many")
        assert (channel, got) in ((a, message(1)), (b, message(2))), f"got {(channel, got)!r}"
        rest, expected = (b, message(2)) if channel == a else (a, message(1))
        assert await call(receive_many([a, b]), "second receive_many") == (rest, expected)
        await assert_quiet(layer, a, "both messages were taken")

    @pytest.mark.asyncio
    async def test_receive_many_concurrent_callers_get_no_duplicates(
        self, make_pair: Any, names: Names
    ) -> None:
        first, other = make_pair(capacity=BULK_CAPACITY)
        self._receive_many(first)
        channels = [names.channel(label) for label in ("x", "y", "z")]
        instances = [first, other]

        async def take(layer: Any) -> Any:
            channel, got = await layer.receive_many(channels)
            assert channel in channels and got["channel"] == channel, (
                f"receive_many returned {got!r} as coming from {channel!r}"
            )
            return got

        receivers: list[Receive] = [
            functools.partial(take, instances[i % 2]) for i in range(RECEIVE_MANY_CALLERS)
        ]

        async def produce() -> None:
            for n in range(RECEIVE_MANY_MESSAGES):
                channel = channels[n % len(channels)]
                await instances[n % 2].send(channel, message(n, channel=channel))

        received = await collect_until(receivers, RECEIVE_MANY_MESSAGES, produce)
        assert_exactly_once(received, range(RECEIVE_MANY_MESSAGES))

    @pytest.mark.asyncio
    @pytest.mark.parametrize("kind", ["plain", "local"])
    async def test_receive_many_woken_for_one_channel_does_not_strand_another(
        self, layer: Any, names: Names, kind: str
    ) -> None:
        """``receive_many([b, a])`` waits first, ``receive(a)`` second; a then b are sent.

        If ``receive_many`` takes b (it may have been woken by a), the wake-up a brought
        must still reach ``receive(a)``; if it took a, b must still be there.
        """
        receive_many = self._receive_many(layer)
        if kind == "local":
            a = await call(layer.new_channel(), "new_channel()")
            b = await call(layer.new_channel(), "new_channel()")
        else:
            a, b = names.channel("a"), names.channel("b")
        many = asyncio.create_task(receive_many([b, a]))
        await asyncio.sleep(SETTLE)
        single = asyncio.create_task(layer.receive(a))
        try:
            await asyncio.sleep(SETTLE)

            async def send_both() -> None:
                # One task, so a layer that need not wait in between sends both before the
                # waiter woken by the first has run.
                await layer.send(a, message(1))
                await layer.send(b, message(2))

            await call(send_both(), "send to a, then to b")
            first = await call(many, "receive_many([b, a]) waiting before the sends")
            if first == (b, message(2)):
                got = await call(
                    single,
                    f"receive(a) ({kind} channels), after receive_many([b, a]) took b,",
                    RECEIVE_TIMEOUT,
                )
                assert got == message(1), f"receive(a) returned {got!r}, not the message to a"
            else:
                assert first == (a, message(1)), f"receive_many([b, a]) returned {first!r}"
                got = await receive(layer, b, "receive(b) after receive_many([b, a]) took a")
                assert got == message(2), f"receive(b) returned {got!r}, not the message to b"
        finally:
            many.cancel()
            single.cancel()
