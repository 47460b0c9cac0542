"""Fixtures for the Redis layer's tests.

Without redis-server (or without the shared server on 127.0.0.1:6379) these tests skip with
the reason, except in CI (``CI`` set), where a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.redis.harness import REDIS_SERVER, RedisProcess, ping, start_sentinel

pytest.importorskip("redis", reason="the [redis] extra is not installed")

SHARED_URL = "redis://127.0.0.1:6379/0"


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_redis() -> str:
    """The shared server on 6379, for tests that do not stop or break their server."""
    if not ping(6379):
        _unavailable("no Redis server answers on 127.0.0.1:6379")
    return SHARED_URL


@pytest.fixture(scope="session")
def redis_binary() -> str:
    if not os.path.exists(REDIS_SERVER):
        _unavailable(f"redis-server not found (looked for {REDIS_SERVER})")
    return REDIS_SERVER


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("redis")


@pytest.fixture(scope="session")
def three_shards(redis_binary: str, server_dir: Path) -> Iterator[list[RedisProcess]]:
    servers = [RedisProcess(server_dir / f"shard{i}").start() for i in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def sentinel_setup(
    redis_binary: str, server_dir: Path
) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    master = RedisProcess(server_dir / "sentinel-master").start()
    try:
        sentinel = start_sentinel(server_dir / "sentinel", master)
    except BaseException:
        master.stop()
        raise
    try:
        yield master, sentinel
    finally:
        sentinel.stop()
        master.stop()


@pytest.fixture
def own_server(redis_binary: str, tmp_path: Path) -> Iterator[RedisProcess]:
    """A private server a test may restart, kill or break."""
    server = RedisProcess(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]
