"""Every ``hosts`` form reaches a server; bad ones fail at construction."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from layers.errors import ConfigurationError
from layers.redis import RedisChannelLayer
from layers.redis.sharding import jump_hash, shard_index
from tests.redis.harness import RedisProcess

pytestmark = pytest.mark.timeout(60)


async def round_trip(hosts: Any, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=hosts, prefix=prefix)
    other = RedisChannelLayer(hosts=hosts, prefix=prefix)
    try:
        local = await layer.new_channel()
        await other.send("plain", {"type": "m", "n": 1})
        await other.send(local, {"type": "m", "n": 2})
        await other.group_add("g", local)
        await other.group_send("g", {"type": "m", "n": 3})
        assert (await asyncio.wait_for(layer.receive("plain"), 5))["n"] == 1
        assert (await asyncio.wait_for(layer.receive(local), 5))["n"] == 2
        assert (await asyncio.wait_for(layer.receive(local), 5))["n"] == 3
        await layer.flush()
    finally:
        await layer.close()
        await other.close()


@pytest.mark.parametrize(
    "form",
    [
        "url",
        "tuple",
        "list-pair",
        "dict",
        "dict-address",
    ],
)
async def test_shared_server_forms(shared_redis: str, prefix: str, form: str) -> None:
    hosts: Any = {
        "url": [shared_redis],
        "tuple": [("127.0.0.1", 6379)],
        "list-pair": [["127.0.0.1", 6379]],
        "dict": [{"host": "127.0.0.1", "port": 6379, "db": 0}],
        "dict-address": [{"address": shared_redis, "socket_keepalive": True}],
    }[form]
    await round_trip(hosts, prefix)


async def test_single_host_string(shared_redis: str, prefix: str) -> None:
    await round_trip(shared_redis, prefix)


@pytest.mark.parametrize("hosts", [None, [], ()])
async def test_no_hosts_means_the_default_server(
    shared_redis: str, prefix: str, hosts: Any
) -> None:
    # As in channels_redis, whose settings may say "hosts": [].
    await round_trip(hosts, prefix)


@pytest.fixture
def unix_server(redis_binary: str, tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "redis.sock")
    server = RedisProcess(tmp_path / "unix", extra=["--port", "0", "--unixsocket", path]).start()
    try:
        yield path
    finally:
        server.stop()


async def test_unix_socket(unix_server: str, prefix: str) -> None:
    await round_trip([f"unix://{unix_server}"], prefix)
    await round_trip([{"path": unix_server}], prefix)


async def test_tls(tls_server: tuple[int, str], prefix: str) -> None:
    port, ca = tls_server
    await round_trip([f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"], prefix)
    await round_trip([{"host": "127.0.0.1", "port": port, "ssl": True, "ssl_ca_certs": ca}], prefix)


async def test_sentinel_dict(
    sentinel_setup: tuple[RedisProcess, RedisProcess], prefix: str
) -> None:
    _, sentinel = sentinel_setup
    await round_trip(
        [{"sentinels": [["127.0.0.1", sentinel.port]], "master_name": "mymaster", "db": 0}],
        prefix,
    )


@pytest.mark.parametrize(
    "hosts",
    [
        ["http://127.0.0.1"],
        [42],
        [("127.0.0.1",)],
        [{"sentinels": [("127.0.0.1", 1)]}],
        [{"address": 5}],
    ],
)
def test_bad_hosts(hosts: Any) -> None:
    with pytest.raises(ConfigurationError):
        RedisChannelLayer(hosts=hosts)


@pytest.mark.parametrize(
    "option", ["block_timeout", "socket_timeout", "retry_timeout", "connect_timeout"]
)
def test_bad_timeouts(option: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisChannelLayer(**{option: 0})
    with pytest.raises(TypeError):
        RedisChannelLayer(no_such_option=1)


# Pinned: every process and every release must agree on where a name lives, so a change of
# the hash (another digest, byte order or jump constant) must fail here, not move data.
PINNED_NAMES = ("a", "b", "specific.abc!", "group", "chat.lobby", "asgi", "x" * 99)
PINNED_SHARDS = {
    2: [0, 0, 1, 0, 0, 0, 0],
    3: [0, 0, 1, 0, 0, 0, 0],
    5: [0, 0, 4, 4, 0, 0, 0],
    10: [6, 8, 5, 4, 0, 0, 0],
    1000: [379, 335, 31, 703, 186, 897, 975],
}


def reference_shard(name: str, buckets: int) -> int:
    """The documented formula, written out again from the paper (Lamping and Veach 2014,
    figure 1) over the first 8 bytes of BLAKE2b, big-endian."""
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % 2**64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


@pytest.mark.parametrize("buckets", sorted(PINNED_SHARDS))
def test_shard_hash_is_pinned(buckets: int) -> None:
    assert [shard_index(name, buckets) for name in PINNED_NAMES] == PINNED_SHARDS[buckets]
    assert [reference_shard(name, buckets) for name in PINNED_NAMES] == PINNED_SHARDS[buckets]


def test_shard_hash_matches_the_documented_formula() -> None:
    assert hashlib.blake2b(b"a", digest_size=8).hexdigest() == "40f89e395b66422f"
    for buckets in (1, 2, 3, 4, 7, 16, 100):
        for i in range(300):
            name = f"channel{i}"
            assert shard_index(name, buckets) == reference_shard(name, buckets), (name, buckets)


def test_shard_hash_is_consistent() -> None:
    assert [jump_hash(key, 10) for key in (0, 1, 2, 256)] == [0, 6, 6, 3]
    names = [f"channel{i}" for i in range(3000)]
    moved = [n for n in names if shard_index(n, 3) != shard_index(n, 4)]
    # Growing 3 -> 4 hosts moves about a quarter, and only onto the new host.
    assert 0.18 < len(moved) / len(names) < 0.32
    assert all(shard_index(n, 4) == 3 for n in moved)


def test_local_channels_share_their_owners_shard() -> None:
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{6379 + i}" for i in range(5)])
    routes = {layer._route(f"specific.{layer.client_prefix}!{i}") for i in range(50)}
    assert len(routes) == 1
