"""Channels' documented usage, unchanged, on every backend chosen in ``CHANNEL_LAYERS``.

- ``groups`` on a consumer: joined on connect, left on disconnect;
- ``channel_layer_alias`` on a consumer: its layer is that alias's, not the default's;
- ``self.channel_layer.send`` to a named channel that a ``runworker``-style
  :class:`channels.worker.Worker` consumes (the docs' background tasks), which answers the
  consumer through the layer;
- ``get_channel_layer()`` from outside a consumer, async and through ``async_to_sync``;
- ``channels.layers.get_channel_layer`` with several aliases at once, each a different
  backend: each alias its own instance, and nothing crosses between them.

Consumers run in this process through ``channels.testing.WebsocketCommunicator``; the worker
runs on a thread and event loop of its own with a layer instance of its own (for the memory
layer, the same instance: it lives in one process), as ``manage.py runworker`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.consumer import SyncConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers, get_channel_layer
from channels.routing import ChannelNameRouter, URLRouter
from channels.testing import WebsocketCommunicator
from channels.worker import Worker
from django.test import override_settings
from django.urls import path

from tests.backends import NAMES, NETWORKED, Backend, backend

pytestmark = [
    pytest.mark.timeout(90),
    # asgiref's StatelessServer (the Worker's base) hands Channels' SyncConsumer a plain
    # lambda as ``send``, which it wraps in async_to_sync: not ours to fix.
    pytest.mark.filterwarnings("ignore:async_to_sync was passed a non-async-marked callable"),
]

TIMEOUT = 5
WORKER_CHANNEL = "thumbnails-generate"
BROADCAST = "broadcast"


class Room(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Joins ``broadcast`` through ``groups``; hands jobs to the worker channel."""

    groups = [BROADCAST]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if "job" in content:
            await self.channel_layer.send(
                WORKER_CHANNEL,
                {"type": "thumbnail.make", "job": content["job"], "reply_to": self.channel_name},
            )
        elif content.get("whoami"):
            await self.send_json(
                {"channel": self.channel_name, "layer": type(self.channel_layer).__name__}
            )

    async def broadcast_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"]})

    async def thumbnail_done(self, event: dict[str, Any]) -> None:
        await self.send_json({"done": event["job"], "by": event["by"]})


def room_for(alias: str) -> type[Room]:
    """``Room`` on the layer of ``alias``, as a user would subclass it."""
    return type(f"Room_{alias}", (Room,), {"channel_layer_alias": alias})


class Thumbnailer(SyncConsumer):  # type: ignore[misc]
    """The docs' background worker: a sync consumer answering through the layer."""

    def thumbnail_make(self, event: dict[str, Any]) -> None:
        async_to_sync(self.channel_layer.send)(
            event["reply_to"], {"type": "thumbnail.done", "job": event["job"], "by": "worker"}
        )


def websocket_app(alias: str = "default") -> Any:
    return URLRouter([path("ws/", room_for(alias).as_asgi())])


class WorkerThread:
    """``manage.py runworker --layer <alias> thumbnails-generate``, on a thread and loop of
    its own. Like every consumer, the worker's answers go through its ``channel_layer_alias``
    layer; ``layer`` is the one it listens on (the same alias's, in another process)."""

    def __init__(self, layer: Any, alias: str = "default") -> None:
        consumer = type(f"Thumbnailer_{alias}", (Thumbnailer,), {"channel_layer_alias": alias})
        self.worker = Worker(
            application=ChannelNameRouter({WORKER_CHANNEL: consumer.as_asgi()}),
            channels=[WORKER_CHANNEL],
            channel_layer=layer,
        )
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the worker did not start"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._started.set()
            await self.worker.arun()

        # asyncio.run, as runworker: on the way out its consumers' tasks are cancelled too.
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(main())

    def stop(self) -> None:
        assert self._loop is not None and self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the worker did not stop"


@pytest.fixture(params=NAMES)
def site(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The backend as the only layer, "default", of a Channels site."""
    each = backend(request.param)
    with override_settings(CHANNEL_LAYERS={"default": each.settings("site", expiry=10)}):
        try:
            yield each
        finally:
            async_to_sync(channel_layers["default"].flush)()
            async_to_sync(channel_layers["default"].close)()


async def connected(app: Any) -> WebsocketCommunicator:
    client = WebsocketCommunicator(app, "/ws/")
    ok, _ = await client.connect(timeout=TIMEOUT)
    assert ok
    return client


async def test_groups_on_a_consumer_and_get_channel_layer_from_outside(site: Backend) -> None:
    app = websocket_app()
    alice, bob = await connected(app), await connected(app)
    layer = get_channel_layer()
    # From outside any consumer: async ...
    await layer.group_send(BROADCAST, {"type": "broadcast.message", "text": "async"})
    for client in (alice, bob):
        assert await client.receive_json_from(TIMEOUT) == {"text": "async"}
    # ... and from sync code (a view, a task), in a thread as Django runs it.
    await asyncio.to_thread(
        async_to_sync(get_channel_layer().group_send),
        BROADCAST,
        {"type": "broadcast.message", "text": "sync"},
    )
    for client in (alice, bob):
        assert await client.receive_json_from(TIMEOUT) == {"text": "sync"}
    # Leaving the consumer leaves its groups: bob hears nothing more.
    await bob.send_json_to({"whoami": True})
    bobs_channel = (await bob.receive_json_from(TIMEOUT))["channel"]
    await bob.disconnect()
    await layer.group_send(BROADCAST, {"type": "broadcast.message", "text": "after"})
    assert await alice.receive_json_from(TIMEOUT) == {"text": "after"}
    await layer.send(bobs_channel, {"type": "marker"})
    assert await asyncio.wait_for(layer.receive(bobs_channel), TIMEOUT) == {"type": "marker"}
    await alice.disconnect()


async def test_send_to_a_worker_channel_and_back(site: Backend) -> None:
    own = get_channel_layer()
    worker = WorkerThread(site.make("worker", expiry=10) if site.networked else own)
    try:
        client = await connected(websocket_app())
        for job in range(3):
            await client.send_json_to({"job": job})
            assert await client.receive_json_from(TIMEOUT) == {"done": job, "by": "worker"}
        await client.disconnect()
    finally:
        await asyncio.to_thread(worker.stop)
        if site.networked:
            await worker.worker.channel_layer.close()


@pytest.fixture(params=NETWORKED)
def two_aliases(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, Backend]]:
    """The memory layer as "default", and a networked backend as "other"."""
    memory, other = backend("memory"), backend(request.param)
    layers = {"default": memory.settings("site"), "other": other.settings("site", expiry=10)}
    with override_settings(CHANNEL_LAYERS=layers):
        try:
            yield memory, other
        finally:
            for alias in layers:
                async_to_sync(channel_layers[alias].flush)()
                async_to_sync(channel_layers[alias].close)()


async def test_channel_layer_alias_on_a_consumer(two_aliases: tuple[Backend, Backend]) -> None:
    _, other = two_aliases
    on_default, on_other = await connected(websocket_app()), await connected(websocket_app("other"))
    await on_other.send_json_to({"whoami": True})
    assert (await on_other.receive_json_from(TIMEOUT))["layer"] == other.path.rsplit(".", 1)[1]
    # Each consumer's groups live on its own alias's layer.
    await get_channel_layer("other").group_send(
        BROADCAST, {"type": "broadcast.message", "text": "o"}
    )
    assert await on_other.receive_json_from(TIMEOUT) == {"text": "o"}
    assert await on_default.receive_nothing(0.3)
    await get_channel_layer().group_send(BROADCAST, {"type": "broadcast.message", "text": "d"})
    assert await on_default.receive_json_from(TIMEOUT) == {"text": "d"}
    assert await on_other.receive_nothing(0.3)
    # The worker on the alias's layer serves that alias's consumer.
    worker = WorkerThread(other.make("worker", expiry=10), "other")
    try:
        await on_other.send_json_to({"job": 7})
        assert await on_other.receive_json_from(TIMEOUT) == {"done": 7, "by": "worker"}
    finally:
        await asyncio.to_thread(worker.stop)
        await worker.worker.channel_layer.close()
    await on_default.disconnect()
    await on_other.disconnect()


@pytest.fixture
async def every_alias() -> AsyncIterator[dict[str, Backend]]:
    """One alias per backend, all at once, each with a prefix of its own."""
    each = {name: backend(name) for name in NAMES}
    layers = {name: b.settings("site", expiry=10) for name, b in each.items()}
    with override_settings(CHANNEL_LAYERS={"default": layers["memory"], **layers}):
        try:
            yield each
        finally:
            for alias in ("default", *layers):
                await channel_layers[alias].flush()
                await channel_layers[alias].close()


async def test_several_aliases_at_once(every_alias: dict[str, Backend]) -> None:
    instances = {alias: get_channel_layer(alias) for alias in every_alias}
    for alias, layer in instances.items():
        module, _, name = every_alias[alias].path.rpartition(".")
        assert type(layer) is getattr(importlib.import_module(module), name)
        assert get_channel_layer(alias) is layer, "each alias is built once"
    assert len({id(layer) for layer in instances.values()}) == len(instances)
    clients = {alias: await connected(websocket_app(alias)) for alias in every_alias}
    # A group_send on each alias reaches that alias's consumer only.
    for alias, layer in instances.items():
        await layer.group_send(BROADCAST, {"type": "broadcast.message", "text": alias})
    for alias, client in clients.items():
        assert await client.receive_json_from(TIMEOUT) == {"text": alias}
        assert await client.receive_nothing(0.2), f"{alias} heard another alias's message"
    # And from sync code, every alias in turn, as a view would.
    for alias in every_alias:
        await asyncio.to_thread(
            async_to_sync(get_channel_layer(alias).group_send),
            BROADCAST,
            {"type": "broadcast.message", "text": f"sync {alias}"},
        )
    for alias, client in clients.items():
        assert await client.receive_json_from(TIMEOUT) == {"text": f"sync {alias}"}
    for client in clients.values():
        await client.disconnect()
