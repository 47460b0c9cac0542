from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        self.room = "chat." + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content.get("whoami"):
            # For tests: which channel this connection's consumer listens on.
            await self.send_json({"channel": self.channel_name})
            return
        await self.channel_layer.group_send(
            self.room,
            {"type": "chat.message", "text": content["text"], "sender": self.channel_name},
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"], "own": event["sender"] == self.channel_name})
