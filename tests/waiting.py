"""Waiting for a condition instead of sleeping, with a deadline.

Tests wait for what they rely on (rows gone, connections back to where they were, a
message arrived), polling often, so they take as long as the condition and fail with a
message, not a hang, when it never comes. The predicate may be sync or async.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL = 0.01
WAIT_TIMEOUT = 5.0


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109
    poll: float = POLL,
) -> None:
    """Return once ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        await asyncio.sleep(poll)


def wait_until_sync(
    predicate: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT, poll: float = POLL
) -> None:
    """``wait_until`` for synchronous tests (outside any event loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(poll)
