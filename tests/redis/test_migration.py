"""Coming from channels_redis: its settings work unchanged once BACKEND names our layer.

Every ``CONFIG`` key and ``hosts`` shape channels_redis 4.3.0 accepts (``core.py``,
``pubsub.py``, ``utils.decode_hosts`` / ``create_pool``) builds a
:class:`layers.redis.RedisChannelLayer` that sends and receives:

- ``hosts``: a list of URL strings, ``(host, port)`` tuples or lists, dicts with
  ``"address"`` plus redis-py ``from_url`` options, dicts of redis-py connection options,
  Sentinel dicts (``"sentinels"``, ``"master_name"``, ``"sentinel_kwargs"``, plus options
  for the master connections);
- ``prefix``, ``expiry``, ``group_expiry``, ``capacity``, ``channel_capacity`` (glob or
  compiled regex keys), ``symmetric_encryption_keys``, ``random_prefix_length``,
  ``serializer_format`` (only ``"msgpack"``: anything else is refused with a reason).

See the "Coming from channels_redis" section of ``layers/redis/README.md``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.exceptions import ChannelFull
from channels.layers import channel_layers, get_channel_layer
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer
from django.test import override_settings

from layers.errors import ConfigurationError
from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess

pytestmark = pytest.mark.timeout(60)

WITHIN = 5.0


async def works(layer: Any) -> None:
    """Send and receive on an ordinary and a process-local channel, and through a group."""
    try:
        local = await layer.new_channel()
        await layer.send("migrated", {"type": "m", "n": 1})
        await layer.send(local, {"type": "m", "n": 2})
        await layer.group_add("room", local)
        await layer.group_send("room", {"type": "m", "n": 3})
        assert (await asyncio.wait_for(layer.receive("migrated"), WITHIN))["n"] == 1
        assert (await asyncio.wait_for(layer.receive(local), WITHIN))["n"] == 2
        assert (await asyncio.wait_for(layer.receive(local), WITHIN))["n"] == 3
        await layer.group_discard("room", local)
    finally:
        await layer.flush()
        await layer.close()


# -- hosts ----------------------------------------------------------------------------------

SHARED_HOSTS: dict[str, list[Any]] = {
    "url": ["redis://127.0.0.1:6379/0"],
    "url-without-db": ["redis://127.0.0.1:6379"],
    "url-localhost": ["redis://localhost:6379"],
    "tuple": [("127.0.0.1", 6379)],
    "list-pair": [["127.0.0.1", 6379]],  # what JSON or env-parsed settings produce
    "address": [{"address": "redis://127.0.0.1:6379"}],
    "address-with-options": [
        {
            "address": "redis://127.0.0.1:6379/0",
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 30,
        }
    ],
    "redis-py-options": [{"host": "127.0.0.1", "port": 6379, "db": 0}],
    "two-shards-one-server": ["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"],
}


@pytest.mark.parametrize("form", sorted(SHARED_HOSTS))
async def test_hosts_shapes(shared_redis: str, prefix: str, form: str) -> None:
    await works(RedisChannelLayer(hosts=SHARED_HOSTS[form], prefix=prefix))


@pytest.fixture
def password_server(redis_binary: str, tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "auth").start()
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", "pw")  # after start: the harness's readiness PING
    admin.close()
    try:
        yield server
    finally:
        server.stop()


async def test_hosts_with_a_password(password_server: RedisProcess, prefix: str) -> None:
    port = password_server.port
    for hosts in (
        [f"redis://:pw@127.0.0.1:{port}/0"],
        [f"redis://default:pw@127.0.0.1:{port}/0"],
        [{"address": f"redis://127.0.0.1:{port}/0", "password": "pw"}],
        [{"host": "127.0.0.1", "port": port, "password": "pw"}],
    ):
        await works(RedisChannelLayer(hosts=hosts, prefix=prefix))


async def test_hosts_tls_without_certificate_check(
    tls_server: tuple[int, str], prefix: str
) -> None:
    tls_port, _ = tls_server
    # The channels_redis documentation's setting for Heroku-style self-signed TLS.
    hosts = [{"address": f"rediss://127.0.0.1:{tls_port}", "ssl_cert_reqs": None}]
    await works(RedisChannelLayer(hosts=hosts, prefix=prefix))


async def test_hosts_sentinel(
    sentinel_setup: tuple[RedisProcess, RedisProcess], prefix: str
) -> None:
    _, sentinel = sentinel_setup
    hosts = [
        {
            "sentinels": [("127.0.0.1", sentinel.port)],
            "master_name": "mymaster",
            "sentinel_kwargs": {"socket_timeout": 2},
            "db": 0,
        }
    ]
    await works(RedisChannelLayer(hosts=hosts, prefix=prefix))


# -- the other keys ---------------------------------------------------------------------------


async def test_common_keys_keep_their_meaning(shared_redis: str, prefix: str) -> None:
    layer = RedisChannelLayer(
        hosts=[shared_redis],
        prefix=prefix,
        expiry=30,
        group_expiry=3600,
        capacity=2,
        channel_capacity={
            "http.request": 3,
            "http.response!*": 10,
            re.compile(r"^websocket.send\!.+"): 20,
            re.compile(r"^small\d+$"): 1,
        },
    )
    try:
        assert (layer.expiry, layer.group_expiry) == (30, 3600)
        assert layer.get_capacity("other") == 2
        assert layer.get_capacity("http.request") == 3
        assert layer.get_capacity("http.response!abc") == 10
        assert layer.get_capacity("websocket.send!abc") == 20
        assert layer.get_capacity("small7") == 1
        # Capacity is enforced as in channels_redis: a full channel raises ChannelFull.
        await layer.send("small7", {"type": "m"})
        with pytest.raises(ChannelFull):
            await layer.send("small7", {"type": "m"})
        for _ in range(3):
            await layer.send("http.request", {"type": "m"})
        with pytest.raises(ChannelFull):
            await layer.send("http.request", {"type": "m"})
        # prefix: everything this layer stores is under it.
        admin = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
        try:
            keys = await admin.keys(f"{prefix}*")
            assert keys and all(str(key).startswith(f"{prefix}:") for key in keys)
        finally:
            await admin.aclose()
    finally:
        await layer.flush()
        await layer.close()


async def test_symmetric_encryption_keys(shared_redis: str, prefix: str) -> None:
    pytest.importorskip("cryptography", reason="the [crypto] extra is not installed")
    sender = RedisChannelLayer(
        hosts=[shared_redis], prefix=prefix, symmetric_encryption_keys=["new", "old"]
    )
    reader = RedisChannelLayer(
        hosts=[shared_redis], prefix=prefix, symmetric_encryption_keys=["old"]
    )
    admin = redis.asyncio.Redis.from_url(shared_redis)
    try:
        await sender.send("secret", {"type": "m", "text": "plain-text-marker"})
        stored = await admin.lrange(f"{prefix}:c:secret", 0, -1)
        assert stored and b"plain-text-marker" not in stored[0]
        # Encrypted with the first key; a reader that knows only an older key cannot read
        # it (key rotation works as in channels_redis: add the new key first everywhere).
        same_keys = RedisChannelLayer(
            hosts=[shared_redis], prefix=prefix, symmetric_encryption_keys=["old", "new"]
        )
        got = await asyncio.wait_for(same_keys.receive("secret"), WITHIN)
        assert got["text"] == "plain-text-marker"
        await same_keys.close()
        await reader.send("secret", {"type": "m", "n": 2})
        assert (await asyncio.wait_for(sender.receive("secret"), WITHIN))["n"] == 2
    finally:
        await admin.aclose()
        await sender.flush()
        await sender.close()
        await reader.close()


@pytest.mark.parametrize("length", [12, 0, 32])
async def test_random_prefix_length_is_accepted(
    shared_redis: str, prefix: str, length: int
) -> None:
    # channels_redis prepends that many random bytes to every stored message so that equal
    # messages stay distinct members of its sorted sets; our lists need no such bytes.
    await works(RedisChannelLayer(hosts=[shared_redis], prefix=prefix, random_prefix_length=length))


async def test_serializer_format_msgpack(shared_redis: str, prefix: str) -> None:
    await works(RedisChannelLayer(hosts=[shared_redis], prefix=prefix, serializer_format="msgpack"))


@pytest.mark.parametrize("name", ["json", "pickle", "my_custom_format"])
def test_other_serializer_formats_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(ConfigurationError, match="msgpack") as raised:
        RedisChannelLayer(serializer_format=name)
    assert name in str(raised.value)


def test_pubsub_only_keys_are_refused_by_name() -> None:
    # RedisPubSubChannelLayer takes on_disconnect / on_reconnect (unused in 4.3.0) and
    # silently ignores every key it does not know; we refuse unknown keys by name.
    for key in ("on_disconnect", "on_reconnect"):
        config: dict[str, Any] = {key: None}
        with pytest.raises(TypeError, match=key):
            RedisChannelLayer(**config)


# -- a whole settings file ------------------------------------------------------------------


def channels_redis_config(prefix: str) -> dict[str, Any]:
    """A CONFIG as a channels_redis project has it, every key set."""
    return {
        "hosts": [("127.0.0.1", 6379)],
        "prefix": prefix,
        "expiry": 60,
        "group_expiry": 86400,
        "capacity": 100,
        "channel_capacity": {"http.request": 200, re.compile(r"^websocket.send\!.+"): 20},
        "symmetric_encryption_keys": ["django-insecure-secret-key"],
        "random_prefix_length": 12,
        "serializer_format": "msgpack",
    }


@pytest.fixture
async def switched(shared_redis: str, prefix: str) -> AsyncIterator[None]:
    """The Django setting with only BACKEND changed (the layer is built in the test)."""
    pytest.importorskip("cryptography", reason="the [crypto] extra is not installed")
    settings = {
        "default": {
            "BACKEND": "layers.redis.RedisChannelLayer",
            "CONFIG": channels_redis_config(prefix),
        }
    }
    with override_settings(CHANNEL_LAYERS=settings):
        yield
        if "default" in channel_layers.backends:
            await channel_layers["default"].close()


async def test_a_channels_redis_settings_file_needs_only_backend_changed(switched: None) -> None:
    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer)
    await works(layer)


async def test_the_two_layers_do_not_share_data(shared_redis: str, prefix: str) -> None:
    """Same server, same prefix: each layer sees only its own messages (another key layout),
    so a message sent by a switched process never reaches one still on channels_redis."""
    pytest.importorskip("cryptography", reason="the [crypto] extra is not installed")
    config = channels_redis_config(prefix)
    theirs = ChannelsRedisLayer(**config)
    ours = RedisChannelLayer(**config)
    try:
        await theirs.send("both", {"type": "m", "from": "channels_redis"})
        await ours.send("both", {"type": "m", "from": "ours"})
        got = await asyncio.wait_for(ours.receive("both"), WITHIN)
        assert got["from"] == "ours"
        got = await asyncio.wait_for(theirs.receive("both"), WITHIN)
        assert got["from"] == "channels_redis"
    finally:
        await ours.flush()
        await ours.close()
        await theirs.flush()
        await theirs.close_pools()
