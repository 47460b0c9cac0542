"""A consumer on a thread and event loop of its own, as a websocket consumer in another
process would be: it joins a group on a channel of its own and keeps what arrives."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

RECEIVE_TIMEOUT = 30.0


class Collector:
    def __init__(self, layer: Any, group: str) -> None:
        self.layer = layer
        self.group = group
        self._lock = threading.Lock()
        self._got: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.channel: str = self._run(self._join())
        self._task = asyncio.run_coroutine_threadsafe(self._receive(), self._loop)

    def _run(self, work: Any, timeout: float = RECEIVE_TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    async def _join(self) -> str:
        channel: str = await self.layer.new_channel()
        await self.layer.group_add(self.group, channel)
        return channel

    async def _receive(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            with self._lock:
                self._got.append(message)

    def got(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._got)

    def wait_for(self, count: int, timeout: float = RECEIVE_TIMEOUT) -> list[dict[str, Any]]:
        """Everything received once ``count`` messages arrived (or at the deadline: the
        caller's assertion then says what was missing)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.got()
            if len(got) >= count or time.monotonic() > deadline or self._task.done():
                return got
            time.sleep(0.01)

    def take(self, count: int, timeout: float = RECEIVE_TIMEOUT) -> list[dict[str, Any]]:
        """``wait_for``, then forget what arrived, ready for the next batch."""
        got = self.wait_for(count, timeout)
        with self._lock:
            del self._got[: len(got)]
        return got

    def close(self, close_layer: bool = True) -> None:
        self._task.cancel()

        async def shut() -> None:
            if close_layer:
                await self.layer.close()

        try:
            self._run(shut(), 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
