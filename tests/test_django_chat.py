"""A Django Channels consumer works unchanged over our layer, chosen in CHANNEL_LAYERS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from tests.chat.routing import application
from tests.conftest import in_ci

MEMORY: dict[str, Any] = {
    "default": {"BACKEND": "layers.memory.InMemoryChannelLayer", "CONFIG": {"expiry": 30}}
}


def redis_settings() -> dict[str, Any]:
    pytest.importorskip("redis", reason="the [redis] extra is not installed")
    from tests.redis.harness import ping

    if not ping(6379):
        reason = "no Redis server answers on 127.0.0.1:6379"
        if in_ci():
            pytest.fail(reason + " (CI is set)")
        pytest.skip(reason)
    config = {"hosts": ["redis://127.0.0.1:6379/0"], "prefix": "django" + uuid.uuid4().hex[:8]}
    return {"default": {"BACKEND": "layers.redis.RedisChannelLayer", "CONFIG": config}}


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The same consumer, unchanged, over each backend chosen only in CHANNEL_LAYERS."""
    layers = MEMORY if request.param == "memory" else redis_settings()
    with override_settings(CHANNEL_LAYERS=layers):
        yield layers["default"]["BACKEND"]
        layer = channel_layers["default"]
        await layer.flush()
        await layer.close()


async def test_two_clients_in_one_room_hear_each_other(backend: str) -> None:
    assert type(get_channel_layer()).__module__.startswith(backend.rsplit(".", 1)[0])
    alice = WebsocketCommunicator(application, "/ws/chat/lobby/")
    bob = WebsocketCommunicator(application, "/ws/chat/lobby/")
    stranger = WebsocketCommunicator(application, "/ws/chat/elsewhere/")
    for client in (alice, bob, stranger):
        connected, _ = await client.connect()
        assert connected
    try:
        await alice.send_json_to({"text": "hello bob"})
        assert await alice.receive_json_from(timeout=2) == {"text": "hello bob", "own": True}
        assert await bob.receive_json_from(timeout=2) == {"text": "hello bob", "own": False}
        await bob.send_json_to({"text": "hi alice"})
        assert await alice.receive_json_from(timeout=2) == {"text": "hi alice", "own": False}
        assert await bob.receive_json_from(timeout=2) == {"text": "hi alice", "own": True}
        assert await stranger.receive_nothing(timeout=0.2)
    finally:
        for client in (alice, bob, stranger):
            await client.disconnect()


async def test_a_client_that_left_hears_nothing(backend: str) -> None:
    alice = WebsocketCommunicator(application, "/ws/chat/lobby/")
    bob = WebsocketCommunicator(application, "/ws/chat/lobby/")
    assert (await alice.connect())[0]
    assert (await bob.connect())[0]
    await bob.send_json_to({"whoami": True})
    bobs_channel = (await bob.receive_json_from(timeout=2))["channel"]
    # Leaving runs the consumer's disconnect handler, which calls group_discard.
    await bob.disconnect()
    await alice.send_json_to({"text": "anyone?"})
    assert await alice.receive_json_from(timeout=2) == {"text": "anyone?", "own": True}
    # Bob's channel still exists in the layer; had group_discard done nothing, the group
    # message would be queued there ahead of this marker (channels are FIFO).
    layer = channel_layers["default"]
    await layer.send(bobs_channel, {"type": "marker"})
    first = await asyncio.wait_for(layer.receive(bobs_channel), 5)
    assert first == {"type": "marker"}, f"{bobs_channel} still got a group message: {first}"
    # The room still works for those in it, new members included.
    probe = await layer.new_channel()
    await layer.group_add("chat.lobby", probe)
    await layer.group_send("chat.lobby", {"type": "chat.message", "text": "x", "sender": probe})
    assert await alice.receive_json_from(timeout=2) == {"text": "x", "own": False}
    assert (await asyncio.wait_for(layer.receive(probe), 5))["text"] == "x"
    await layer.send(bobs_channel, {"type": "marker", "n": 2})
    assert await asyncio.wait_for(layer.receive(bobs_channel), 5) == {"type": "marker", "n": 2}
    await alice.disconnect()


@override_settings(
    CHANNEL_LAYERS={
        "default": {"BACKEND": "layers.memory.InMemoryChannelLayer", "CONFIG": {"bogus": 1}}
    }
)
def test_unknown_config_key_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="bogus"):
        get_channel_layer()
