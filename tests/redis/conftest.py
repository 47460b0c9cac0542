"""Fixtures for the Redis layer's tests.

Without redis-server (or without the shared server on 127.0.0.1:6379) these tests skip with
the reason, except in CI (``CI`` set), where a missing server is a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import in_ci
from tests.redis.harness import REDIS_SERVER, RedisProcess, free_port, ping, start_sentinel

pytest.importorskip("redis", reason="the [redis] extra is not installed")

if TYPE_CHECKING:
    from tests.redis.cluster import RedisCluster

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


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private three-master cluster (a replica each) for one test module; about 2 s."""
    from tests.redis.cluster import RedisCluster, cluster_support  # needs redis-py

    problem = cluster_support()
    if problem is not None:
        _unavailable(problem)
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


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


def make_certificates(directory: Path) -> dict[str, str]:
    files = {name: str(directory / f"{name}.pem") for name in ("ca", "ca-key", "cert", "key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", files["ca-key"], "-out", files["ca"],
    )  # fmt: skip
    csr = str(directory / "server.csr")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", files["key"], "-out", csr,
    )  # fmt: skip
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", csr, "-CA", files["ca"], "-CAkey", files["ca-key"],
        "-CAcreateserial", "-days", "1", "-out", files["cert"], "-extfile", str(ext),
    )  # fmt: skip
    return files


@pytest.fixture
def tls_server(redis_binary: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    try:
        certs = make_certificates(tmp_path)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"openssl could not make a test certificate: {exc}")
    port = free_port()
    server = RedisProcess(
        tmp_path / "tls",
        extra=[
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", certs["cert"],
            "--tls-key-file", certs["key"], "--tls-ca-cert-file", certs["ca"],
            "--tls-auth-clients", "no",
        ],
    ).start()  # fmt: skip
    try:
        yield port, certs["ca"]
    finally:
        server.stop()
