"""Traffic that leaves things behind on the server, for the cleanup tests of every backend.

``drive`` uses two layer instances standing in for two processes of a site: a sender and a
receiver with process-local channels. It touches everything a layer stores (ordinary and
process-local channels, messages read and never read, group memberships of both kinds,
one discarded, a group without members, a cancelled receive) and returns with messages
still queued, so that what the server holds afterwards can only go by expiry and the
layer's own cleanup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: How long one call of the traffic may take before the test fails instead of hanging.
CALL_TIMEOUT = 10.0


async def _bounded(call: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(call, CALL_TIMEOUT)


async def drive(sender: Any, receiver: Any) -> None:
    m = {"type": "m"}
    local = await receiver.new_channel()
    idle_local = await receiver.new_channel()

    # Ordinary channels: one message read, three never read.
    await _bounded(sender.send("plain.read", m))
    assert await _bounded(receiver.receive("plain.read")) == m
    for _ in range(3):
        await _bounded(sender.send("plain.unread", m))

    # Process-local channels: one read, one never read.
    await _bounded(sender.send(local, m))
    assert await _bounded(receiver.receive(local)) == m
    await _bounded(sender.send(idle_local, m))

    # Groups: ordinary and process-local members; one read round, one left unread.
    for channel in ("plain.member", local, idle_local):
        await _bounded(sender.group_add("room", channel))
    await _bounded(sender.group_add("room", "plain.member"))  # renewed
    await _bounded(sender.group_send("room", m))
    assert await _bounded(receiver.receive(local)) == m
    assert await _bounded(receiver.receive("plain.member")) == m
    await _bounded(sender.group_send("room", m))

    # A membership discarded again, and a group nobody ever joined.
    await _bounded(sender.group_add("brief", "plain.brief"))
    await _bounded(sender.group_add("brief", local))
    await _bounded(sender.group_discard("brief", "plain.brief"))
    await _bounded(sender.group_discard("brief", local))
    await _bounded(sender.group_send("brief", m))
    await _bounded(sender.group_send("nobody", m))

    # receive_many, and receives given up on (ordinary and process-local).
    await _bounded(sender.send("plain.many", m))
    assert await _bounded(receiver.receive_many(["plain.other", "plain.many"])) == (
        "plain.many",
        m,
    )
    for channel in ("plain.abandoned", local):
        waiting = asyncio.create_task(receiver.receive(channel))
        await asyncio.sleep(0.3)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)


async def seconds_until_empty(
    leftovers: Callable[[], Awaitable[list[str]]],
    what: str,
    timeout: float,  # noqa: ASYNC109
    since: float | None = None,
    poll: float = 0.25,
) -> float:
    """Seconds from ``since`` (a ``time.monotonic()``, else now) until ``leftovers()`` is
    empty; fails ``timeout`` seconds after ``since`` naming what is left."""
    start = time.monotonic() if since is None else since
    while True:
        left = await leftovers()
        if not left:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(
                f"{what}: {len(left)} still there {timeout:.0f} s after traffic stopped: "
                + ", ".join(sorted(left)[:20])
            )
        await asyncio.sleep(poll)
