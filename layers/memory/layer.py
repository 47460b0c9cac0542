"""The in-process layer: no server, the reference implementation of the contract.

Messages are stored encoded, exactly as a network layer would carry them, so the memory
layer rejects what the others reject (unserialisable values, oversized messages) and each
receiver gets its own copy.
"""

from __future__ import annotations

import time
from typing import Any

from channels.exceptions import ChannelFull

from layers.base import BaseLayer, Message
from layers.queues import LocalQueues


class InMemoryChannelLayer(BaseLayer):
    """A channel layer living in this process only; takes the :class:`BaseLayer` config."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._queues: LocalQueues[bytes] = LocalQueues(
            clock=time.monotonic, sweep_interval=max(self.expiry, 1.0)
        )
        # group -> {channel: time of the last group_add}
        self._groups: dict[str, dict[str, float]] = {}

    async def send(self, channel: str, message: Message) -> None:
        self.require_valid_channel_name(channel)
        data = self.encode(message, channel)
        if not self._offer(channel, data):
            raise ChannelFull(f"channel {channel!r} is at capacity ({self.get_capacity(channel)})")

    def _offer(self, channel: str, data: bytes) -> bool:
        if self._queues.size(channel) >= self.get_capacity(channel):
            return False
        self._queues.put(channel, data, time.monotonic() + self.expiry)
        return True

    async def receive(self, channel: str) -> Message:
        self.require_valid_channel_name(channel)
        while True:
            _, data = await self._queues.get((channel,))
            message = self.decode_or_none(data, channel)
            if message is not None:
                return message

    async def receive_many(self, channels: list[str]) -> tuple[str, Message]:
        names = self.require_valid_channel_names(channels)
        while True:
            channel, data = await self._queues.get(names)
            message = self.decode_or_none(data, channel)
            if message is not None:
                return channel, message

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._groups.setdefault(group, {})[channel] = time.monotonic()

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        members = self._groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._groups[group]

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        data = self.encode(message, group)
        members = self._groups.get(group)
        if not members:
            return
        joined_after = time.monotonic() - self.group_expiry
        for channel, joined in list(members.items()):
            if joined <= joined_after:
                del members[channel]
                continue
            # A full member misses this message; the others still get theirs.
            self._offer(channel, data)
        if not members:
            self._groups.pop(group, None)

    async def flush(self) -> None:
        self._queues.clear()
        self._groups.clear()
