"""Building blocks shared by every workload: tagging, counting, bounded waits, retries.

Every message carries the run id ``r`` and a small sequence number ``s``; receivers tick
them off in a bytearray, which is what lets us count losses, duplicates and foreign
(stale) messages at a cost of a few attribute lookups per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.exceptions import ChannelFull

# CLOCK_MONOTONIC on Linux (and its equivalents elsewhere) is system-wide, so stamps
# taken in a producer process can be subtracted from stamps taken in a consumer process.
clock = time.perf_counter

MESSAGE_TYPE = "bench.message"
STOP_TYPE = "bench.stop"
MAX_BACKOFF = 0.02
# After a layer call raised, pause before calling again so a broken layer is not spun on.
ERROR_PAUSE = 0.01


class WorkloadError(RuntimeError):
    """A workload could not even start (warm-up failed): reported in the layer's row."""


def message(run_id: int, seq: int, text: str) -> dict[str, Any]:
    return {"type": MESSAGE_TYPE, "r": run_id, "s": seq, "t": clock(), "text": text}


@dataclass
class Errors:
    """Exceptions a layer raised (other than ChannelFull): counted, first one kept."""

    errors: int = 0
    error: str | None = None

    def record(self, exc: Exception) -> None:
        self.errors += 1
        if self.error is None:
            self.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


@dataclass
class Tally(Errors):
    """What one process received; ``received`` counts every message, good or not."""

    run_id: int = 0
    received: int = 0
    unique: int = 0
    duplicated: int = 0
    stale: int = 0
    last: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "unique": self.unique,
            "duplicated": self.duplicated,
            "stale": self.stale,
            "last": self.last,
            "latencies": self.latencies,
            "errors": self.errors,
            "error": self.error,
        }


@dataclass
class SendStats(Errors):
    sent: int = 0
    retries: int = 0
    gave_up: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "retries": self.retries,
            "errors": self.errors,
            "error": self.error,
        }


async def drain(
    layer: Any,
    channel: str,
    seen: bytearray,
    lo: int,
    hi: int,
    tally: Tally,
    forever: bool,
    progress: asyncio.Event | None = None,
) -> None:
    """Receive on ``channel`` until every sequence in [lo, hi) has arrived once.

    With ``forever`` it keeps going (the caller bounds it) so duplicates that arrive
    after the last expected message are still counted. ``progress`` is set on every new
    message, for a workload that reports back how far its receivers have got.
    """
    remaining = hi - lo - seen[lo:hi].count(1)
    receive = layer.receive
    run_id = tally.run_id
    lat = tally.latencies
    while remaining or forever:
        try:
            msg = await receive(channel)
        except Exception as exc:  # a consumer survives its layer's errors to count losses
            tally.record(exc)
            await asyncio.sleep(ERROR_PAUSE)
            continue
        now = clock()
        tally.received += 1
        seq = msg.get("s", -1) if msg.get("r") == run_id else -1
        if not lo <= seq < hi:
            tally.stale += 1
        elif seen[seq]:
            tally.duplicated += 1
        else:
            seen[seq] = 1
            tally.unique += 1
            tally.last = now
            lat.append(now - msg["t"])
            remaining -= 1
            if progress is not None:
                progress.set()


async def receive_counted(layer: Any, channel: str, tally: Tally) -> dict[str, Any]:
    """Receive one message, counting it; a receive that raises is recorded and retried,
    so a consumer outlives its layer's errors and the run can count what they cost."""
    while True:
        try:
            msg: dict[str, Any] = await layer.receive(channel)
        except Exception as exc:
            tally.record(exc)
            await asyncio.sleep(ERROR_PAUSE)
            continue
        tally.received += 1
        return msg


async def bounded(work: Awaitable[Any], progress: Callable[[], int], idle: float) -> bool:
    """Await ``work`` unless ``progress()`` stops moving for ``idle`` seconds.

    A watchdog instead of a timeout around each receive keeps the per-message cost at
    zero; returns False when the work was abandoned.
    """
    task = asyncio.ensure_future(work)
    last_value, last_change = progress(), clock()
    tick = min(0.1, idle / 4)
    while True:
        done, _ = await asyncio.wait({task}, timeout=tick)
        if done:
            task.result()
            return True
        value, now = progress(), clock()
        if value != last_value:
            last_value, last_change = value, now
        elif now - last_change > idle:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False


async def linger(work: Awaitable[Any], seconds: float) -> None:
    """Run ``work`` (a forever-drain) for a short while to catch late duplicates."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(work, seconds)


async def send_retrying(
    layer: Any, channel: str, msg: dict[str, Any], stats: SendStats, idle: float
) -> bool:
    """Send, backing off on ChannelFull; give up after ``idle`` seconds without room.

    Returns False only when the channel stayed full; a send that raised anything else is
    recorded and skipped (the message counts as lost), so one bad call does not end a run.
    """
    try:
        await layer.send(channel, msg)
        stats.sent += 1
        return True
    except ChannelFull:
        pass
    except Exception as exc:
        stats.record(exc)
        await asyncio.sleep(ERROR_PAUSE)
        return True
    delay = 0.0
    deadline = clock() + idle
    while True:
        stats.retries += 1
        # The first retry only yields: an in-process consumer drains the channel at once.
        await asyncio.sleep(delay)
        try:
            await layer.send(channel, msg)
            stats.sent += 1
            return True
        except ChannelFull:
            if clock() > deadline:
                stats.gave_up = True
                return False
        except Exception as exc:
            stats.record(exc)
            await asyncio.sleep(ERROR_PAUSE)
            return True
        delay = min(delay * 2 or 0.0005, MAX_BACKOFF)


async def warm_up(
    layer: Any, run_id: int, tag: str, count: int, idle: float, local_only: bool = False
) -> None:
    """Open connections and prime both normal and process-local paths before timing;
    with ``local_only`` (``--local-targets``) only the process-local one, for layers
    that refuse normal channels.

    A lossy layer still gets measured: only a layer that delivers nothing at all to
    itself fails here, so that its row says so instead of showing a rate of zero.
    """
    wait = min(idle, 1.0)
    delivered = 0
    local = await asyncio.wait_for(layer.new_channel(), max(idle, 5.0))
    channels = (local,) if local_only else (f"bench.{run_id}.warm.{tag}", local)
    for channel in channels:
        for i in range(count):
            await asyncio.wait_for(layer.send(channel, message(run_id, i, "w")), max(idle, 5.0))
            try:
                await asyncio.wait_for(layer.receive(channel), wait)
                delivered += 1
            except TimeoutError:
                if not delivered:
                    break
    if count and not delivered:
        raise WorkloadError("warm-up: the layer did not deliver a message to its own process")


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 in milliseconds (nearest rank), None when nothing was measured."""
    if not samples:
        return {"p50": None, "p90": None, "p99": None}
    ordered = sorted(samples)
    last = len(ordered) - 1
    return {
        f"p{q}": ordered[min(last, max(0, -(-q * len(ordered) // 100) - 1))] * 1000.0
        for q in (50, 90, 99)
    }
