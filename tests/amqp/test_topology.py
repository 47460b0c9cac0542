"""What the RabbitMQ layer leaves on the broker: the queues, arguments and bindings it
makes, one copy of a group message per receiving instance, queues that outlive a sender's
pauses but not their process, and a flush that removes all of it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from layers.amqp import AmqpChannelLayer
from tests.amqp.harness import Binding, bindings, exchanges, queues, rabbitmqctl
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(90)


def arguments(prefix: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(
        rabbitmqctl("list_queues", "-q", "--formatter", "json", "name", "arguments", "durable")
    )
    # Each argument comes as [name, type, value].
    return {
        row["name"]: {**{a[0]: a[-1] for a in row["arguments"]}, "durable": row["durable"]}
        for row in rows
        if row["name"].startswith(prefix)
    }


async def test_a_channel_is_a_durable_queue_with_expiry_capacity_and_lease(
    shared_amqp: str, prefix: str
) -> None:
    layer = AmqpChannelLayer(
        url=shared_amqp, prefix=prefix, expiry=30, capacity=7, channel_capacity={"small*": 2}
    )
    try:
        await layer.send("work", {"type": "m"})
        await layer.send("small.one", {"type": "m"})
        found = await asyncio.to_thread(arguments, prefix)
        assert found[f"{prefix}:work"] == {
            "x-message-ttl": 30_000,
            "x-max-length": 7,
            "x-overflow": "reject-publish",
            "x-expires": 90_000,
            "durable": True,
        }
        assert found[f"{prefix}:small.one"]["x-max-length"] == 2
    finally:
        await layer.flush()
        await layer.close()


async def test_group_send_is_one_copy_per_instance(shared_amqp: str, prefix: str) -> None:
    owner = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    sender = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    try:
        members = [await owner.new_channel() for _ in range(3)]
        for member in members:
            await sender.group_add("room", member)
        await sender.group_add("room", "worker")
        assert await asyncio.to_thread(bindings, prefix) == [
            Binding(f"{prefix}:groups", f"{prefix}:!{owner.client_prefix}", "room"),
            Binding(f"{prefix}:groups", f"{prefix}:worker", "room"),
            Binding(f"{prefix}:leases", f"{prefix}:!leases", ""),
        ]
        await sender.group_send("room", {"type": "m", "n": 1})
        got = [await asyncio.wait_for(owner.receive(m), 5) for m in members]
        assert got == [{"type": "m", "n": 1}] * 3
        assert (await asyncio.wait_for(owner.receive("worker"), 5))["n"] == 1
    finally:
        await owner.flush()
        await owner.close()
        await sender.close()


async def test_flush_leaves_nothing_of_the_prefix(shared_amqp: str, prefix: str) -> None:
    first = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    other = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    try:
        local = await first.new_channel()
        await other.send(local, {"type": "m"})
        await other.send("plain", {"type": "m"})
        await other.group_add("g", local)
        await other.group_add("g", "member")
        await other.group_send("g", {"type": "m"})
        assert await asyncio.to_thread(queues, prefix)
        await first.flush()
        assert await asyncio.to_thread(queues, prefix) == {}
        assert await asyncio.to_thread(exchanges, prefix) == {}
    finally:
        await first.close()
        await other.close()


async def test_a_queue_sent_to_but_never_read_keeps_its_messages(
    shared_amqp: str, prefix: str
) -> None:
    # Publishing does not count as use for x-expires: without the sender declaring the
    # queue again, it would vanish 3 s after the first send with newer messages in it.
    sender = AmqpChannelLayer(url=shared_amqp, prefix=prefix, expiry=2, queue_expires=3)
    receiver = AmqpChannelLayer(url=shared_amqp, prefix=prefix, expiry=2, queue_expires=3)
    try:
        for n in range(6):
            await sender.send("quiet", {"type": "m", "n": n})
            await asyncio.sleep(0.8)
        got = []
        while len(got) < 6:
            try:
                got.append((await asyncio.wait_for(receiver.receive("quiet"), 0.5))["n"])
            except TimeoutError:
                break
        # Sent 0.8 s apart with a 2 s expiry: the last two or three are still alive.
        assert got and got[-1] == 5 and got == sorted(got), got
    finally:
        await receiver.flush()
        await sender.close()
        await receiver.close()


async def test_the_queues_of_a_process_that_is_gone_expire(shared_amqp: str, prefix: str) -> None:
    layer = AmqpChannelLayer(
        url=shared_amqp, prefix=prefix, expiry=1, queue_expires=2, group_expiry=2
    )
    local = await layer.new_channel()
    await layer.send(local, {"type": "m"})
    await layer.group_add("g", local)
    await layer.group_add("g", "member")
    await layer.send("member", {"type": "m"})
    await asyncio.wait_for(layer.receive(local), 5)
    assert await asyncio.to_thread(queues, prefix)
    await layer.close()

    async def all_gone() -> bool:
        return not await asyncio.to_thread(queues, prefix) and not await asyncio.to_thread(
            exchanges, prefix
        )

    await wait_until(
        all_gone,
        timeout=30,
        what="every queue and exchange of a closed layer expired",
    )


async def test_a_process_that_only_receives_gets_its_messages(
    shared_amqp: str, prefix: str
) -> None:
    receiver = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    sender = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    try:
        local = await receiver.new_channel()
        # What its receive declares: an ordinary channel's queue; for a process-local
        # channel, the instance's inbox (a sender declares the channel's own queue and
        # tells the owner there).
        inbox = f"{prefix}:!{receiver.client_prefix}"
        for channel, made in (("jobs", f"{prefix}:jobs"), (local, inbox)):
            waiting = asyncio.create_task(receiver.receive(channel))

            async def declared(name: str = made) -> bool:
                return name in await asyncio.to_thread(queues, prefix)

            await wait_until(declared, timeout=10, what=f"the receive on {channel} declared {made}")
            await sender.send(channel, {"type": "m", "to": channel})
            assert (await asyncio.wait_for(waiting, 5))["to"] == channel
    finally:
        await receiver.flush()
        await receiver.close()
        await sender.close()


async def test_a_capacity_beyond_amqps_prefetch_field(shared_amqp: str, prefix: str) -> None:
    """basic.qos carries its count in 16 bits: a capacity above 65,535 still receives, on
    ordinary and process-local channels (the local consumer's prefetch is its channel's
    capacity; it once failed to encode and stopped the receive loop)."""
    layer = AmqpChannelLayer(url=shared_amqp, prefix=prefix, capacity=100_000)
    try:
        local = await layer.new_channel()
        for channel in ("big", local):
            await layer.send(channel, {"type": "m", "to": channel})
            got = await asyncio.wait_for(layer.receive(channel), 10)
            assert got == {"type": "m", "to": channel}
    finally:
        await layer.flush()
        await layer.close()


async def test_group_send_to_a_vanished_exchange_spares_direct_sends(
    shared_amqp: str, prefix: str
) -> None:
    """The groups exchange deletes itself with its last binding; an instance that saw it
    still publishes group_send there, and the broker closes the publishing channel. Sends
    in flight beside it must not share that channel (32 of 40 failed with ServerError)."""
    layer = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    try:
        await layer.send("x", {"type": "m"})
        await layer.group_add("g", "member")
        await layer.group_discard("g", "member")
        await wait_until(lambda: f"{prefix}:groups" not in exchanges(prefix), "exchange gone", 10)
        sends = [layer.send("x", {"type": "m", "n": n}) for n in range(40)]
        results = await asyncio.gather(
            *sends[:20], layer.group_send("g", {"type": "m"}), *sends[20:], return_exceptions=True
        )
        assert [r for r in results if r is not None] == []
        # The group_send was dropped (no members); the next one is too, quietly.
        await layer.group_send("g", {"type": "m"})
    finally:
        await layer.flush()
        await layer.close()
