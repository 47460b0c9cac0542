"""Concurrent sends of one event loop share statements (layers/postgres/sends.py), and
``prefetch`` lets one claim serve several receives; neither bends the contract."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from layers.errors import ConfigurationError
from layers.postgres import PostgresChannelLayer
from layers.postgres.sends import Outgoing, Sends
from tests.postgres.harness import rows_under

pytestmark = pytest.mark.timeout(60)


def statements_run(layer: PostgresChannelLayer) -> dict[str, int]:
    """Counts, by SQL file, the statements the layer's transport in this loop runs."""
    transport = layer._transport()
    counts: dict[str, int] = {}
    run = transport.run

    async def counted(name: str, params: dict[str, Any], **kw: Any) -> Any:
        counts[name] = counts.get(name, 0) + 1
        return await run(name, params, **kw)

    transport.run = counted  # type: ignore[method-assign]
    return counts


async def send_all(layer: PostgresChannelLayer, sends: list[tuple[str, int]]) -> list[bool]:
    async def one(channel: str, n: int) -> bool:
        try:
            await layer.send(channel, {"type": "m", "n": n})
        except ChannelFull:
            return False
        return True

    return list(await asyncio.gather(*(one(channel, n) for channel, n in sends)))


async def test_concurrent_sends_go_together_and_keep_their_order(
    shared_postgres: str, prefix: str
) -> None:
    layer = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix)
    try:
        counts = statements_run(layer)
        local = await layer.new_channel()
        sends = [("plain", n) for n in range(40)] + [(local, n) for n in range(40)]
        assert all(await send_all(layer, sends))
        assert counts.get("send_batch", 0) >= 1
        assert counts["send"] + counts.get("send_batch", 0) < len(sends)
        assert [(await layer.receive("plain"))["n"] for _ in range(40)] == list(range(40))
        assert [(await layer.receive(local))["n"] for _ in range(40)] == list(range(40))
    finally:
        await layer.flush()
        await layer.close()


async def test_a_batch_counts_its_own_messages_against_capacity(
    shared_postgres: str, prefix: str
) -> None:
    layer = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix, capacity=10)
    try:
        await layer.send("full", {"type": "m", "n": -1})
        outcomes = await send_all(layer, [("full", n) for n in range(30)] + [("free", 0)])
        assert outcomes[-1] is True
        stored = [n for n, ok in enumerate(outcomes[:-1]) if ok]
        assert len(stored) == 9
        got = [(await layer.receive("full"))["n"] for _ in range(10)]
        assert got == [-1, *stored]
        assert rows_under(shared_postgres, prefix) == (1, 0)  # "free" is left
    finally:
        await layer.flush()
        await layer.close()


async def test_a_send_cancelled_before_its_batch_leaves_is_not_sent() -> None:
    release = asyncio.Event()
    stored: list[str] = []

    async def run_one(item: Outgoing) -> bool:
        await release.wait()
        stored.append(item.channel)
        return True

    async def run_many(items: list[Outgoing]) -> list[bool]:
        stored.extend(item.channel for item in items)
        return [True] * len(items)

    sends = Sends(run_one, run_many)

    def outgoing(channel: str) -> Outgoing:
        return Outgoing(channel, channel, 100, b"", "listen")

    first = asyncio.create_task(sends.send(outgoing("a")))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(sends.send(outgoing(name))) for name in ("b", "c", "d")]
    await asyncio.sleep(0)
    queued[1].cancel()
    release.set()
    assert await first is True
    assert [await queued[0], await queued[2]] == [True, True]
    assert stored == ["a", "b", "d"]


async def test_a_failed_batch_fails_each_of_its_sends() -> None:
    async def run_one(item: Outgoing) -> bool:
        await asyncio.sleep(0.01)
        return True

    async def run_many(items: list[Outgoing]) -> list[bool]:
        raise RuntimeError("server said no")

    sends = Sends(run_one, run_many)
    item = Outgoing("q", "q", 1, b"", "l")
    results = await asyncio.gather(*(sends.send(item) for _ in range(4)), return_exceptions=True)
    assert results[0] is True
    assert all(isinstance(r, RuntimeError) for r in results[1:])
    assert await sends.send(item) is True  # and the next sends go on


@pytest.mark.parametrize("value", [-1, 100, 1.5, "3", True])
def test_bad_prefetch(value: object) -> None:
    with pytest.raises(ConfigurationError, match="prefetch"):
        PostgresChannelLayer(prefetch=value)


async def test_prefetch_claims_a_batch_and_keeps_order(shared_postgres: str, prefix: str) -> None:
    layer = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix, prefetch=5)
    try:
        for n in range(10):
            await layer.send("batch", {"type": "m", "n": n})
        assert (await layer.receive("batch"))["n"] == 0
        assert rows_under(shared_postgres, prefix) == (4, 0)
        assert [(await layer.receive("batch"))["n"] for _ in range(9)] == list(range(1, 10))
    finally:
        await layer.flush()
        await layer.close()


async def test_without_prefetch_a_receive_claims_one(shared_postgres: str, prefix: str) -> None:
    layer = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix)
    try:
        for n in range(3):
            await layer.send("one", {"type": "m", "n": n})
        assert (await layer.receive("one"))["n"] == 0
        assert rows_under(shared_postgres, prefix) == (2, 0)
    finally:
        await layer.flush()
        await layer.close()
