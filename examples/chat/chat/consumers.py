"""The chat room consumer (one per WebSocket) and the background worker's consumer."""

from __future__ import annotations

import os
from typing import Any

from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from layers.errors import BackendUnavailable

#: A room name, as it appears in URLs: group names allow only these characters.
ROOM = r"(?P<room>[A-Za-z0-9_-]{1,64})"
#: The background channel that `manage.py runworker chat-tasks` listens on.
TASKS = "chat-tasks"


def group_of(room: str) -> str:
    return f"chat.{room}"


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Joins the room's group on connect and leaves it on disconnect.

    In: ``{"text": ...}`` says something to the room; ``{"leave": true}`` and
    ``{"join": true}`` leave and rejoin the room with the socket kept open (answered with
    ``{"left": room}`` / ``{"joined": room}``). Out: ``{"text": ..., "sender": ...}`` for
    everything said in the room, the sender's own messages included; ``{"unsent": ...,
    "error": ...}`` to the sender when the layer could not take a message.
    """

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = group_of(self.room)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("leave"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.send_json({"left": self.room})
        elif content.get("join"):
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.send_json({"joined": self.room})
        elif isinstance(content.get("text"), str):
            try:
                await self.channel_layer.group_send(
                    self.group,
                    {"type": "chat.message", "text": content["text"], "sender": self.channel_name},
                )
            except BackendUnavailable as exc:
                # The layer's server was away longer than retry_timeout, or the connection
                # went with this message on its way (stored or not, never twice). Say so
                # and keep the socket: left alone, the error would end this consumer and
                # Daphne would close the WebSocket (1011).
                await self.send_json({"unsent": content["text"], "error": str(exc)})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"], "sender": event["sender"]})


class TaskConsumer(AsyncConsumer):  # type: ignore[misc]
    """Work handed off by views, run by `manage.py runworker chat-tasks`."""

    async def task_reverse(self, message: dict[str, Any]) -> None:
        if not isinstance(message.get("reply_to"), str) or not isinstance(message.get("text"), str):
            return
        # Stands for slow work a request should not do itself.
        result = {"type": "task.result", "result": message["text"][::-1], "worker": os.getpid()}
        await self.channel_layer.send(message["reply_to"], result)
