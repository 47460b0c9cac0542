"""Wake-ups go only where they are used: an instance LISTENs on the NOTIFY channel of its
own process-local queue and on one per ordinary channel it receives on, from the first
receive, and on nothing else."""

from __future__ import annotations

import asyncio

import pytest

from layers.postgres import PostgresChannelLayer
from tests.postgres.harness import query

pytestmark = pytest.mark.timeout(60)


def listening(layer: PostgresChannelLayer) -> set[str]:
    return set(layer._transport().listener._listening)


async def test_a_local_receiver_listens_only_on_its_own_name(
    shared_postgres: str, prefix: str
) -> None:
    layer = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix)
    try:
        local = await layer.new_channel()
        await layer.send(local, {"type": "m"})
        await layer.receive(local)
        assert listening(layer) == {layer._notify_target(layer._queue(local))}
        await layer.send("work", {"type": "m"})
        await layer.receive("work")
        assert listening(layer) == {
            layer._notify_target(layer._queue(local)),
            layer._notify_target("work"),
        }
        assert layer._notify_target("work") != layer._notify_target("other")
    finally:
        await layer.flush()
        await layer.close()


async def test_a_waiting_receive_wakes_on_its_channel_at_once(
    shared_postgres: str, prefix: str
) -> None:
    # poll_interval far above the test's bound: only a NOTIFY can end the wait in time.
    receiver = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix, poll_interval=30)
    sender = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix)
    try:
        local = await receiver.new_channel()
        for channel in ("work", local):
            waiting = asyncio.create_task(receiver.receive(channel))
            await asyncio.sleep(0.2)
            await sender.send("unrelated", {"type": "m"})
            await sender.send(channel, {"type": "m", "to": channel})
            assert (await asyncio.wait_for(waiting, 5))["to"] == channel
    finally:
        await receiver.flush()
        await receiver.close()
        await sender.close()


async def test_any_owner_name_gets_a_notify_channel_postgres_takes(
    shared_postgres: str, prefix: str
) -> None:
    layer = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix)
    try:
        for channel in ("specific." + "o" * 80 + "!x", "specific.a-b_c!x", "x" * 99):
            await layer.send(channel, {"type": "m"})
            assert len(layer._notify_target(layer._queue(channel)).encode()) <= 63
        rows = query(
            shared_postgres,
            "SELECT count(*) FROM channel_layers_v2_messages WHERE prefix = %s",
            (prefix,),
        )
        assert rows == [(3,)]
    finally:
        await layer.flush()
        await layer.close()
