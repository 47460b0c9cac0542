"""Faults on a private cluster: backends terminated under traffic, a restart under traffic,
and a server that stays down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from layers.errors import BackendUnavailable
from layers.postgres import PostgresChannelLayer
from tests.postgres.harness import PostgresProcess, backends, terminate_backends
from tests.waiting import wait_until

pytestmark = [pytest.mark.xdist_group("postgres-faults"), pytest.mark.timeout(90)]

#: Sends (beyond the first few) that must follow a fault.
AFTER_FAULT = 40
#: A receive waiting when a fault happens gets its message within this long.
DELIVERY = 5.0


def make_layer(
    server: PostgresProcess, prefix: str, name: str, **config: object
) -> PostgresChannelLayer:
    return PostgresChannelLayer(
        dsn=server.dsn_for(name),
        prefix=prefix,
        capacity=10_000,
        **config,  # type: ignore[arg-type]
    )


class Traffic:
    """A producer sending numbered messages to an ordinary and a process-local channel in
    turn, and one consumer per channel; every number is sent once."""

    def __init__(
        self, sender: PostgresChannelLayer, receiver: PostgresChannelLayer, local: str
    ) -> None:
        self.sender = sender
        self.receiver = receiver
        self.sent: list[int] = []
        # Sends whose outcome was lost in the fault: they may or may not have arrived.
        self.maybe: list[int] = []
        self.got: dict[str, list[int]] = {"work": [], local: []}
        self.receive_errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _produce(self) -> None:
        n = 0
        while not self._stop.is_set():
            for channel in self.got:
                try:
                    await self.sender.send(channel, {"type": "m", "n": n})
                    self.sent.append(n)
                except BackendUnavailable:
                    self.maybe.append(n)
                n += 1
            await asyncio.sleep(0.005)

    async def _consume(self, channel: str) -> None:
        while True:
            try:
                message = await self.receiver.receive(channel)
            except BackendUnavailable as exc:
                # Handed over by a receive loop that failed for retry_timeout.
                self.receive_errors.append(exc)
                continue
            self.got[channel].append(message["n"])

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._consume(ch)) for ch in self.got]
        self._tasks.append(asyncio.create_task(self._produce()))

    async def stop_sending(self) -> None:
        self._stop.set()
        await self._tasks[-1]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def more_sent(self, count: int) -> Callable[[], bool]:
        """A predicate: ``count`` more sends succeeded than now."""
        mark = len(self.sent)
        return lambda: len(self.sent) >= mark + count

    @property
    def received(self) -> list[int]:
        return [n for numbers in self.got.values() for n in numbers]

    def check(self, after: set[int]) -> None:
        received = self.received
        duplicates = len(received) - len(set(received))
        assert not duplicates, f"{duplicates} message(s) delivered twice"
        assert set(received) <= set(self.sent) | set(self.maybe)
        assert after, "nothing was sent after the fault"
        missing = after - set(received)
        assert not missing, f"{len(missing)} messages sent after the fault never arrived"


async def wait_after(traffic: Traffic, mark: int) -> set[int]:
    """Let AFTER_FAULT more sends succeed after ``mark``, stop the producer, and wait until
    they have arrived (per-channel FIFO: then everything still deliverable has too)."""
    # The first few sends after the fault may have been under way during it.
    await wait_until(
        lambda: len(traffic.sent) >= mark + 4 + AFTER_FAULT, "sends went on after the fault", 30
    )
    await traffic.stop_sending()
    after = set(traffic.sent[mark + 4 :])
    with contextlib.suppress(AssertionError):
        await wait_until(
            lambda: after <= set(traffic.received),
            "everything sent after the fault arrived",
            DELIVERY,
        )
    return after


async def test_terminated_backends_idle_receivers(
    own_postgres: PostgresProcess, prefix: str
) -> None:
    """Receives waiting on an ordinary and a process-local channel when every backend of
    their layer is terminated get what is sent afterwards, within DELIVERY."""
    name = prefix + "r"
    layer = make_layer(own_postgres, prefix, name, poll_interval=0.5)
    other = make_layer(own_postgres, prefix, prefix + "s")
    local = await layer.new_channel()
    await other.send("warm", {"type": "m"})
    assert (await asyncio.wait_for(layer.receive("warm"), DELIVERY))["type"] == "m"
    try:
        for n in range(3):
            waiting = [asyncio.create_task(layer.receive(ch)) for ch in ("work", local)]
            # Both receives are parked (pooled connections and the LISTEN connection up).
            await wait_until(lambda: len(backends(own_postgres.dsn(), name)) >= 2, "backends up")
            killed = await asyncio.to_thread(terminate_backends, own_postgres.dsn(), name)
            assert killed >= 2
            await other.send("work", {"type": "m", "n": 2 * n})
            await other.send(local, {"type": "m", "n": 2 * n + 1})
            results = await asyncio.wait_for(asyncio.gather(*waiting), DELIVERY)
            assert [r["n"] for r in results] == [2 * n, 2 * n + 1]
    finally:
        await layer.close()
        await other.close()


async def test_terminated_backends_during_traffic(
    own_postgres: PostgresProcess, prefix: str
) -> None:
    sender = make_layer(own_postgres, prefix, prefix + "s", retry_timeout=10)
    receiver = make_layer(own_postgres, prefix, prefix + "r", retry_timeout=10)
    traffic = Traffic(sender, receiver, await receiver.new_channel())
    traffic.start()
    kills = 0
    try:
        await wait_until(lambda: all(traffic.got.values()), "both channels received a message")
        for _ in range(5):
            await wait_until(traffic.more_sent(10), "sends went on", 30)
            for name in (prefix + "s", prefix + "r"):
                kills += await asyncio.to_thread(terminate_backends, own_postgres.dsn(), name)
        assert kills >= 5
        after = await wait_after(traffic, len(traffic.sent))
    finally:
        await traffic.stop()
    try:
        traffic.check(after)
        lost = set(traffic.sent) - set(traffic.received)
        # A claim whose reply was cut off after its commit is lost (at most once); report
        # how many that was, so a regression shows.
        assert not lost, f"{len(lost)} of {len(traffic.sent)} sent messages lost ({kills} kills)"
    finally:
        await sender.close()
        await receiver.close()


async def test_restart_during_traffic(own_postgres: PostgresProcess, prefix: str) -> None:
    sender = make_layer(own_postgres, prefix, prefix + "s", retry_timeout=10)
    receiver = make_layer(own_postgres, prefix, prefix + "r", retry_timeout=10)
    traffic = Traffic(sender, receiver, await receiver.new_channel())
    traffic.start()
    try:
        await wait_until(lambda: all(traffic.got.values()), "both channels received a message")
        # A fast shutdown ends every session; down for a moment (time, not a condition:
        # nothing shows "every client noticed"), then back on the same port.
        await asyncio.to_thread(own_postgres.restart, 0.2)
        after = await wait_after(traffic, len(traffic.sent))
    finally:
        await traffic.stop()
    try:
        traffic.check(after)
    finally:
        await sender.close()
        await receiver.close()


async def test_server_down_raises_backend_unavailable(
    own_postgres: PostgresProcess, prefix: str
) -> None:
    # Each call retries for retry_timeout before it gives up: time, not a condition, so it
    # is short (a refused connect fails at once; connect_timeout bounds one that hangs).
    retry = 0.5
    layer = make_layer(own_postgres, prefix, prefix, retry_timeout=retry, connect_timeout=1)
    # Connected once (the table outlives the clean shutdown below, and so does this).
    await layer.send("warm", {"type": "m"})
    own_postgres.stop()
    address = f"127.0.0.1:{own_postgres.port}"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=address):
        await layer.send("ok", {"type": "m"})
    assert time.monotonic() - started < retry + 3
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=address):
        await asyncio.wait_for(layer.receive("nothing"), 10)
    assert time.monotonic() - started < retry + 5
    with pytest.raises(BackendUnavailable, match=address):
        await asyncio.wait_for(layer.group_send("g", {"type": "m"}), 10)
    await layer.close()
    # And it comes back once the server does.
    await asyncio.to_thread(own_postgres.start)
    await layer.send("ok", {"type": "m", "n": 7})
    assert (await asyncio.wait_for(layer.receive("ok"), DELIVERY))["n"] == 7
    await layer.close()


async def test_fresh_layer_on_a_server_that_is_down(
    own_postgres: PostgresProcess, prefix: str
) -> None:
    """Never connected at all: the first call fails the same way, naming the server."""
    own_postgres.stop()
    layer = make_layer(own_postgres, prefix, prefix, retry_timeout=0.5, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{own_postgres.port}"):
        await layer.send("ok", {"type": "m"})
    assert time.monotonic() - started < 0.5 + 3
    await layer.close()
