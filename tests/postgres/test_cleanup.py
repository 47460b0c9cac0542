"""Expired messages and lapsed memberships are deleted in the background, with no receiver
running: nothing under a prefix outlives its expiry for long, and nothing unexpired goes.
Nothing calls flush(): what the traffic leaves goes only by expiry and the cleanup."""

from __future__ import annotations

import asyncio
import time

import pytest

from layers.postgres import PostgresChannelLayer
from tests.leftovers import drive, seconds_until_empty
from tests.postgres.harness import rows_under
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

EXPIRY = 0.3
GROUP_EXPIRY = 1
CLEANUP_INTERVAL = 0.2
#: How long past the group expiry the rows may stay: a few cleanup rounds, and slack for a
#: loaded machine (the deadline of a wait, not a sleep).
MARGIN = 10.0


async def test_expired_rows_are_deleted_without_a_receiver(
    shared_postgres: str, prefix: str
) -> None:
    layer = PostgresChannelLayer(
        dsn=shared_postgres,
        prefix=prefix,
        expiry=EXPIRY,
        group_expiry=GROUP_EXPIRY,
        cleanup_interval=CLEANUP_INTERVAL,
    )
    # Under another prefix, with the default expiries: the cleanup must leave these.
    keep = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix + "keep")
    try:
        local = await layer.new_channel()
        for n in range(5):
            await layer.send("plain", {"type": "m", "n": n})
            await layer.send(local, {"type": "m", "n": n})
        await layer.group_add("g", "plain")
        await layer.group_add("g", local)
        await layer.group_send("g", {"type": "m", "n": 99})
        await keep.send("plain", {"type": "m"})
        await keep.group_add("g", "plain")
        written = await asyncio.to_thread(rows_under, shared_postgres, prefix)
        assert written == (12, 2), written

        async def gone() -> bool:
            return await asyncio.to_thread(rows_under, shared_postgres, prefix) == (0, 0)

        await wait_until(
            gone,
            f"the expired rows of prefix {prefix} are deleted from both tables",
            timeout=GROUP_EXPIRY + MARGIN,
            poll=0.1,
        )
        assert await asyncio.to_thread(rows_under, shared_postgres, prefix + "keep") == (1, 1)
    finally:
        await keep.flush()
        await layer.close()
        await keep.close()


@pytest.mark.parametrize("after", ["survivor", "restart"])
async def test_nothing_stays_after_traffic_stops(
    shared_postgres: str, prefix: str, after: str
) -> None:
    """Traffic of every kind (tests/leftovers.py), then its instances close. What they left
    goes by expiry and the cleanup of a layer instance that runs on: another process of the
    site that stayed up idle (``survivor``), or the first one started afterwards
    (``restart``: no instance ran in between)."""
    assert rows_under(shared_postgres, prefix) == (0, 0)  # the baseline
    config = {"dsn": shared_postgres, "prefix": prefix, "expiry": 2, "group_expiry": 3}
    survivor = PostgresChannelLayer(**config, cleanup_interval=CLEANUP_INTERVAL)
    if after == "survivor":
        await survivor.group_discard("nothing", "nothing")  # in use before the traffic
    sender = PostgresChannelLayer(**config)
    receiver = PostgresChannelLayer(**config)
    try:
        await drive(sender, receiver)
        messages, groups = await asyncio.to_thread(rows_under, shared_postgres, prefix)
        assert messages and groups, "the traffic stored nothing"
    finally:
        await sender.close()
        await receiver.close()
    stopped = time.monotonic()
    try:
        if after == "restart":
            await asyncio.sleep(3)  # past group_expiry with no instance running
            await survivor.group_discard("nothing", "nothing")  # first use: cleanup starts

        async def left() -> list[str]:
            messages, groups = await asyncio.to_thread(rows_under, shared_postgres, prefix)
            return [f"{messages} messages"] * bool(messages) + [f"{groups} groups"] * bool(groups)

        took = await seconds_until_empty(
            left, f"rows of prefix {prefix}", timeout=3 + MARGIN, since=stopped
        )
        print(f"postgres ({after}): rows of the prefix gone {took:.1f} s after traffic stopped")
    finally:
        await survivor.close()
