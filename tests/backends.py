"""Every backend as a Django user configures it, for tests that run the same code on each.

:func:`backend` gives a :class:`Backend`: the ``CHANNEL_LAYERS`` entry for it (a prefix of
the test's own, so tests share the servers on 127.0.0.1), and, for the networked ones, how
many connections the server sees from one layer instance: Redis ``CLIENT LIST`` by client
name, PostgreSQL ``pg_stat_activity`` by ``application_name``, RabbitMQ connections by
``connection_name``. A backend whose server is missing skips the test with the reason,
and fails it when ``CI`` is set.
"""

from __future__ import annotations

import functools
import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import in_ci

NAMES = ("memory", "redis", "postgres", "amqp")
NETWORKED = NAMES[1:]

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_HOST = "127.0.0.1:5432/test"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: PostgreSQL pool size in these tests: small, so a bound on connections means something.
POOL_SIZE = 4
#: Idle Redis connections a layer keeps after a burst (layers/redis/connections.py).
REDIS_KEEP_IDLE = 4


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@functools.cache
def _why_not(name: str) -> str | None:
    """None when ``name``'s server (and extra) is there, else why not; asked once."""
    if name == "memory":
        return None
    driver = {"redis": "redis", "postgres": "psycopg", "amqp": "pika"}[name]
    try:
        importlib.import_module(driver)
    except ImportError:
        return f"the [{name}] extra is not installed"
    if name == "redis":
        from tests.redis.harness import ping

        return None if ping(6379) else f"no Redis server answers at {REDIS_URL}"
    if name == "postgres":
        from tests.postgres.harness import reachable

        reason = reachable(_postgres_dsn())
        return None if reason is None else f"no PostgreSQL at {_postgres_dsn()}: {reason}"
    from tests.amqp.harness import reachable as amqp_reachable

    reason = amqp_reachable(AMQP_URL)
    return None if reason is None else f"no RabbitMQ broker at {AMQP_URL}: {reason}"


@functools.cache
def _postgres_dsn() -> str:
    from tests.postgres.harness import reachable

    for user in ("postgres", "root"):
        dsn = f"postgresql://{user}@{POSTGRES_HOST}"
        if reachable(dsn) is None:
            return dsn
    return f"postgresql://postgres@{POSTGRES_HOST}"


@dataclass(frozen=True)
class Backend:
    """One backend with a prefix of the test's own."""

    name: str
    path: str
    prefix: str

    @property
    def networked(self) -> bool:
        return self.name != "memory"

    def config(self, label: str = "default", **extra: Any) -> dict[str, Any]:
        """CONFIG for a layer instance whose connections carry ``label`` (where the
        server can tell them apart by a name the client gives)."""
        config: dict[str, Any] = {"prefix": self.prefix, **extra}
        if self.name == "redis":
            config["hosts"] = [{"address": REDIS_URL, "client_name": self._name(label)}]
        elif self.name == "postgres":
            from tests.postgres.harness import with_application_name

            config["dsn"] = with_application_name(_postgres_dsn(), self._name(label))
            config.setdefault("pool_size", POOL_SIZE)
        elif self.name == "amqp":
            config["url"] = AMQP_URL
        return config

    def settings(self, label: str = "default", **extra: Any) -> dict[str, Any]:
        """A ``CHANNEL_LAYERS`` entry."""
        return {"BACKEND": self.path, "CONFIG": self.config(label, **extra)}

    def make(self, label: str = "default", **extra: Any) -> Any:
        module, _, name = self.path.rpartition(".")
        factory: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return factory(**self.config(label, **extra))

    def _name(self, label: str) -> str:
        return f"{self.prefix}-{label}"

    def connections(self, label: str, client_prefix: str) -> int:
        """The server's connections of one layer instance: made with ``label`` (Redis,
        PostgreSQL) or, on RabbitMQ, named after its ``client_prefix``."""
        if self.name == "redis":
            import redis

            admin = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
            try:
                clients = admin.client_list()
            finally:
                admin.close()
            return sum(client.get("name") == self._name(label) for client in clients)
        if self.name == "postgres":
            from tests.postgres.harness import backends

            return len(backends(_postgres_dsn(), self._name(label)))
        if self.name == "amqp":
            from tests.amqp.harness import connections

            return len(connections(f"{self.prefix} {client_prefix}"))
        raise ValueError("the memory layer has no server to count connections on")

    def cut(self, layer: Any, label: str = "default") -> int:
        """Have the server drop every connection of one layer instance; how many."""
        if self.name == "redis":
            import redis

            admin = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
            try:
                ids = [c["id"] for c in admin.client_list() if c.get("name") == self._name(label)]
                return sum(int(admin.client_kill_filter(_id=i)) for i in ids)
            finally:
                admin.close()
        if self.name == "postgres":
            from tests.postgres.harness import terminate_backends

            return terminate_backends(_postgres_dsn(), self._name(label))
        if self.name == "amqp":
            from tests.amqp.harness import close_connections

            return close_connections(f"{self.prefix} {layer.client_prefix}")
        raise ValueError("the memory layer has no server to drop connections")

    def count(self, layer: Any, label: str = "default") -> int:
        return self.connections(label, layer.client_prefix)

    @property
    def kept_at_most(self) -> int:
        """Connections one instance may keep open between calls (its pool's idle ones)."""
        return {"redis": REDIS_KEEP_IDLE, "postgres": POOL_SIZE, "amqp": 1}.get(self.name, 0)


_PATHS = {
    "memory": "layers.memory.InMemoryChannelLayer",
    "redis": "layers.redis.RedisChannelLayer",
    "postgres": "layers.postgres.PostgresChannelLayer",
    "amqp": "layers.amqp.AmqpChannelLayer",
}


def backend(name: str) -> Backend:
    """``name``'s backend with a fresh prefix; skips (fails in CI) if its server is missing."""
    reason = _why_not(name)
    if reason is not None:
        _unavailable(reason)
    return Backend(name, _PATHS[name], "t" + uuid.uuid4().hex[:12])
