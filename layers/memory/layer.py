"""The in-process layer: no server, the reference implementation of the contract.

Messages are stored encoded, exactly as a network layer would carry them, so the memory
layer rejects what the others reject (unserialisable values, oversized messages) and each
receiver gets its own copy.

One instance serves every thread of its process (``async_to_sync`` from Django views and
Celery tasks): the message buffer is thread-safe on its own, and the group table has a
lock of its own, never held across an ``await``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from channels.exceptions import ChannelFull

from layers.base import BaseLayer, Message
from layers.queues import LocalQueues

# Lapsed memberships are dropped by a sweep at most this often (or every group_expiry, if
# shorter): often enough to bound the table, rarely enough to cost nothing per call.
GROUP_SWEEP_INTERVAL = 60.0


class InMemoryChannelLayer(BaseLayer):
    """A channel layer living in this process only; takes the :class:`BaseLayer` config."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._queues: LocalQueues[bytes] = LocalQueues(
            clock=time.monotonic, sweep_interval=max(self.expiry, 1.0)
        )
        # group -> {channel: time of the last group_add}
        self._groups: dict[str, dict[str, float]] = {}
        self._groups_lock = threading.Lock()
        # Memberships lapse only when group_send reads them, so a group nobody sends to
        # would keep every member forever; a sweep bounds that. It is due once its interval
        # has passed *and* as many group calls as there were memberships after the last one
        # have been made, so its cost is amortised O(1) per call however large the table.
        self._group_sweep_interval = min(self.group_expiry, GROUP_SWEEP_INTERVAL)
        self._next_group_sweep = time.monotonic() + self._group_sweep_interval
        self._group_calls = 0
        self._memberships_after_sweep = 0

    async def send(self, channel: str, message: Message) -> None:
        self.require_valid_channel_name(channel)
        data = self.encode(message, channel)
        if not self._offer(channel, data):
            raise ChannelFull(f"channel {channel!r} is at capacity ({self.get_capacity(channel)})")

    def _offer(self, channel: str, data: bytes) -> bool:
        return self._queues.put_if_room(
            channel, data, time.monotonic() + self.expiry, self.get_capacity(channel)
        )

    async def receive(self, channel: str) -> Message:
        self.require_valid_channel_name(channel)
        if "!" in channel:
            self.require_own_channel(channel)
        while True:
            _, data = await self._queues.get_one(channel)
            message = self.decode_or_none(data, channel)
            if message is not None:
                return message

    async def receive_many(self, channels: list[str]) -> tuple[str, Message]:
        names = self.require_valid_channel_names(channels)
        for name in names:
            self.require_own_channel(name)
        while True:
            channel, data = await self._queues.get(names)
            message = self.decode_or_none(data, channel)
            if message is not None:
                return channel, message

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        now = time.monotonic()
        with self._groups_lock:
            self._count_group_call(now)
            self._groups.setdefault(group, {})[channel] = now

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        with self._groups_lock:
            self._count_group_call(time.monotonic())
            members = self._groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._groups[group]

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        data = self.encode(message, group)
        now = time.monotonic()
        with self._groups_lock:
            self._count_group_call(now)
            members = self._groups.get(group)
            if not members:
                return
            joined_after = now - self.group_expiry
            current = []
            for channel, joined in list(members.items()):
                if joined <= joined_after:
                    del members[channel]
                else:
                    current.append(channel)
            if not members:
                del self._groups[group]
        for channel in current:
            # A full member misses this message; the others still get theirs.
            self._offer(channel, data)

    async def flush(self) -> None:
        self._queues.clear()
        with self._groups_lock:
            self._groups.clear()
            self._memberships_after_sweep = 0

    def _count_group_call(self, now: float) -> None:
        """Under the groups lock: run the group sweep if it is due."""
        self._group_calls += 1
        if now >= self._next_group_sweep and self._group_calls >= self._memberships_after_sweep:
            self._sweep_groups(now)

    def _sweep_groups(self, now: float) -> None:
        """Under the groups lock: drop lapsed memberships and the groups left empty."""
        joined_after = now - self.group_expiry
        kept = 0
        for group, members in list(self._groups.items()):
            for channel, joined in list(members.items()):
                if joined <= joined_after:
                    del members[channel]
            if members:
                kept += len(members)
            else:
                del self._groups[group]
        self._memberships_after_sweep = kept
        self._group_calls = 0
        self._next_group_sweep = now + self._group_sweep_interval
