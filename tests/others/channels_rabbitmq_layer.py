"""channels_rabbitmq 4.0.1 for the conformance suite, built in the loop that first uses it::

    python -m pytest --pyargs conformance --layer tests.others.channels_rabbitmq_layer:make \\
        --layer-config '{"url": "amqp://guest:guest@127.0.0.1:5672/%2F"}'

``RabbitmqChannelLayer.__init__`` raises ``RuntimeError: Refusing to initialize channel
layer without a running event loop``, and the suite (like Channels' ``get_channel_layer()``
called from synchronous code) builds layers outside any loop, so run as it is every test
fails in its setup. ``make`` returns a stand-in that builds the real layer, with ``url``
as its ``host``, when one of its methods is first awaited, in that running loop, and then
hands every call to it unchanged. Nothing else differs: calls from another loop reach the
layer bound to the first one, normal channels (names without ``!``) raise its
``RuntimeError``, and ``receive`` does not connect (the bench's adapter,
tests/amqp_bench/channels_rabbitmq_layer.py, connects in ``new_channel``; this one does
not). It has no ``prefix``: its random exclusive queue keeps instances apart.
"""

from __future__ import annotations

from typing import Any

from channels_rabbitmq.core import RabbitmqChannelLayer

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class DeferredRabbitmqLayer:
    """Builds ``RabbitmqChannelLayer(host=url, **config)`` on first use, in that loop."""

    extensions = list(RabbitmqChannelLayer.extensions)

    def __init__(self, url: str = DEFAULT_URL, **config: Any) -> None:
        self._kwargs = {"host": url, **config}
        self._layer: Any = None

    def _built(self) -> Any:
        if self._layer is None:
            self._layer = RabbitmqChannelLayer(**self._kwargs)
        return self._layer

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._built().send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        message: dict[str, Any] = await self._built().receive(channel)
        return message

    async def new_channel(self, prefix: str = "") -> str:
        name: str = await self._built().new_channel(prefix)
        return name

    async def group_add(self, group: str, channel: str) -> None:
        await self._built().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._built().group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._built().group_send(group, message)

    async def close(self) -> None:
        if self._layer is not None:
            await self._layer.close()


def make(url: str = DEFAULT_URL, **config: Any) -> DeferredRabbitmqLayer:
    return DeferredRabbitmqLayer(url, **config)
