"""Pullers: the tasks that pop from Redis lists into the layer's in-process buffer.

One puller per (event loop, shard, set of lists) runs while receivers in that loop wait on
those lists; receivers never talk to Redis themselves, they wait on the buffer
(:class:`layers.queues.LocalQueues`). So:

- cancelling a receive never loses a message: whatever a pop brings back lands in the
  buffer, where the next receive on that channel finds it (until it expires);
- all receivers of one loop on the same lists share one blocking connection;
- the puller of an instance's process-local list (``drain`` mode) pops up to ``batch``
  entries at a time and keeps running a while after its last receiver left, so thousands
  of local channels cost one blocking connection and one pop per burst.

For ordinary channels a puller pops at most as many entries as receivers wait, so it does
not take messages another process's receivers could have had. When the last receiver
leaves while a pop is blocked, the pop is ended with ``CLIENT UNBLOCK`` (it then pops
nothing) instead of being left to grab the next message for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from layers.errors import BackendUnavailable
from layers.redis.connections import ShardClient, Watch

logger = logging.getLogger("layers.redis")

Deliver = Callable[[bytes, list[bytes], float], None]
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class Puller:
    def __init__(
        self,
        shard: ShardClient,
        keys: tuple[str, ...],
        *,
        drain: bool,
        batch: int,
        prefetch: int,
        block_timeout: float,
        read_timeout: float,
        retry_timeout: float,
        linger: float,
        deliver: Deliver,
        failures: dict[asyncio.Task[Any], BaseException],
        on_exit: Callable[[Puller], None],
    ) -> None:
        self.shard = shard
        self.keys = keys
        self.drain = drain
        self._batch = batch
        self._prefetch = prefetch
        self._block_timeout = block_timeout
        self._read_timeout = read_timeout
        self._retry_timeout = retry_timeout
        self._linger = linger
        self._deliver = deliver
        self._failures = failures
        self._on_exit = on_exit
        self.receivers: set[asyncio.Task[Any]] = set()
        self._last_receiver = time.monotonic()
        self._watch = Watch()
        self._task: asyncio.Task[None] | None = None

    # -- receivers -------------------------------------------------------------------------

    def add(self, task: asyncio.Task[Any]) -> None:
        self.receivers.add(task)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, task: asyncio.Task[Any]) -> int | None:
        """Forget a receiver; returns the id of a pop left blocked for nobody, to unblock."""
        self.receivers.discard(task)
        if self.receivers:
            return None
        self._last_receiver = time.monotonic()
        return None if self.drain else self._watch.client_id

    def _fail(self, error: BaseException) -> None:
        """Hand a lasting outage to every waiting receiver (they raise it)."""
        for task in list(self.receivers):
            if task in self._failures:
                continue
            self._failures[task] = error
            if not task.cancel():
                del self._failures[task]

    # -- the loop --------------------------------------------------------------------------

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def _wanted(self) -> bool:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled, but a library swallowed it on the way (see connections.py).
            return False
        if self.receivers:
            return True
        return self.drain and time.monotonic() - self._last_receiver < self._linger

    async def _run(self) -> None:
        failing_since: float | None = None
        backoff = _FIRST_BACKOFF
        try:
            while self._wanted():
                started = time.monotonic()
                try:
                    offset = await self.shard.clock_offset_ms()
                    reply = await self._pop()
                except BackendUnavailable as exc:
                    failing_since = failing_since or started
                    if time.monotonic() - failing_since >= self._retry_timeout:
                        self._fail(exc)
                    logger.debug("receive loop on %s: %s", self.shard.address, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                except ResponseError as exc:
                    logger.error("receive loop on %s: %s", self.shard.address, exc)
                    await asyncio.sleep(_MAX_BACKOFF)
                    continue
                failing_since, backoff = None, _FIRST_BACKOFF
                if reply is not None:
                    self._deliver(reply[0], reply[1], offset)
                    # Let the receivers just woken take their messages (and leave) before
                    # counting who still waits, or the next pop would be for nobody.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("receive loop on %s stopped", self.shard.address)
            for task in list(self.receivers):
                self._failures.setdefault(
                    task, BackendUnavailable(self.shard.address, "receive loop failed")
                )
                task.cancel()
        finally:
            self._task = None
            self._on_exit(self)

    async def _pop(self) -> tuple[bytes, list[bytes]] | None:
        if self.drain:
            count = self._batch
        else:
            count = max(1, min(len(self.receivers) + self._prefetch, self._batch))
        keys = self.keys
        if self.shard.has_blmpop:
            try:
                reply = await self.shard.call(
                    "BLMPOP",
                    self._block_timeout,
                    len(keys),
                    *keys,
                    "LEFT",
                    "COUNT",
                    count,
                    timeout=self._read_timeout,
                    watch=self._watch,
                )
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self.shard.has_blmpop = False
            else:
                return None if reply is None else (reply[0], reply[1])
        reply = await self.shard.call(
            "BLPOP", *keys, self._block_timeout, timeout=self._read_timeout, watch=self._watch
        )
        return None if reply is None else (reply[0], [reply[1]])
