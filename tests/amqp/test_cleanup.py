"""After traffic stops, the broker holds nothing under the layer's prefix once ``expiry``,
``group_expiry`` and ``queue_expires`` have passed: queues expire unused (``x-expires``),
exchanges delete themselves with their last binding, and nothing calls flush()."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from layers.amqp import AmqpChannelLayer
from tests.amqp.harness import RABBITMQCTL, bindings, exchanges, queues
from tests.conftest import in_ci
from tests.leftovers import drive, seconds_until_empty

pytestmark = [pytest.mark.timeout(90), pytest.mark.xdist_group("cleanup")]

EXPIRY = 2
GROUP_EXPIRY = 3
QUEUE_EXPIRES = 3
#: The longest lifetime here is a lease queue's: group_expiry + queue_expires after the
#: last group_add. Plus slack for a loaded machine (a deadline, not a sleep).
MARGIN = 20.0


@pytest.fixture(scope="module", autouse=True)
def _rabbitmqctl() -> None:
    """What the broker holds is counted with rabbitmqctl on this machine."""
    if shutil.which(RABBITMQCTL) is None:
        reason = f"{RABBITMQCTL} not found: cannot count the broker's queues"
        if in_ci():
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)


def leftovers(prefix: str) -> list[str]:
    # The prefix with its colon: another test's prefix may start with this one's.
    under = f"{prefix}:"
    return [
        *(f"queue {name}" for name in queues(under)),
        *(f"exchange {name}" for name in exchanges(under)),
        *(f"binding {b.source} -> {b.destination} ({b.routing_key})" for b in bindings(under)),
    ]


async def test_nothing_stays_after_expiry(shared_amqp: str, prefix: str) -> None:
    assert await asyncio.to_thread(leftovers, prefix) == []  # the baseline
    config = {
        "url": shared_amqp,
        "prefix": prefix,
        "expiry": EXPIRY,
        "group_expiry": GROUP_EXPIRY,
        "queue_expires": QUEUE_EXPIRES,
    }
    sender = AmqpChannelLayer(**config)
    receiver = AmqpChannelLayer(**config)
    try:
        await drive(sender, receiver)
        assert await asyncio.to_thread(leftovers, prefix), "the traffic stored nothing"
    finally:
        await sender.close()
        await receiver.close()
    stopped = time.monotonic()

    async def left() -> list[str]:
        return await asyncio.to_thread(leftovers, prefix)

    took = await seconds_until_empty(
        left,
        f"the broker's objects under {prefix}:",
        timeout=GROUP_EXPIRY + QUEUE_EXPIRES + MARGIN,
        since=stopped,
        poll=1.0,  # each look runs rabbitmqctl three times
    )
    print(f"amqp: everything under the prefix gone {took:.1f} s after traffic stopped")


async def test_a_group_send_to_nobody_leaves_nothing(shared_amqp: str, prefix: str) -> None:
    # The groups exchange deletes itself with its last binding, so one declared for a
    # group_send when no group had a member (and never bound) would stay for good.
    sender = AmqpChannelLayer(url=shared_amqp, prefix=prefix)
    try:
        await sender.group_send("nobody", {"type": "m"})
        await sender.group_send("nobody", {"type": "m"})
        assert await asyncio.to_thread(leftovers, prefix) == []
        # Once a member joins, the group_sends of the same instance reach it.
        await sender.group_add("room", "plain")
        await sender.group_send("room", {"type": "m", "n": 1})
        assert await asyncio.wait_for(sender.receive("plain"), 5) == {"type": "m", "n": 1}
        await sender.group_discard("room", "plain")
    finally:
        await sender.flush()
        await sender.close()
