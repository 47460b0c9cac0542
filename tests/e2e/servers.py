"""The layer's servers as the end-to-end tests see them: which shared server a site uses,
its connections (to cut them), its group memberships (to count them), and private servers
to restart. Backend drivers are imported only when their backend is tested."""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import in_ci

BACKENDS = ("redis", "postgres", "amqp")
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
ENV_KEYS = {"redis": "CHAT_REDIS_URL", "postgres": "CHAT_POSTGRES_DSN", "amqp": "CHAT_AMQP_URL"}
EXTRAS = {"redis": "redis", "postgres": "psycopg", "amqp": "pika"}


def unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def shared_server(backend: str) -> str:
    """The URL (DSN) of the shared server for ``backend``; skips (fails in CI) without one."""
    pytest.importorskip(EXTRAS[backend], reason=f"the [{backend}] extra is not installed")
    if backend == "redis":
        from tests.redis.harness import ping

        if not ping(6379):
            unavailable("no Redis server answers on 127.0.0.1:6379")
        return REDIS_URL
    if backend == "postgres":
        from tests.postgres.harness import reachable as pg_reachable

        reasons = []
        for dsn in POSTGRES_DSNS:
            reason = pg_reachable(dsn)
            if reason is None:
                return dsn
            reasons.append(reason)
        unavailable(f"no PostgreSQL server usable on 127.0.0.1:5432/test ({reasons})")
    from tests.amqp.harness import reachable as amqp_reachable

    reason = amqp_reachable(AMQP_URL)
    if reason is not None:
        unavailable(f"no RabbitMQ broker usable at {AMQP_URL} ({reason})")
    return AMQP_URL


def kill_connections(backend: str, server: str, prefix: str) -> int:
    """Have the server drop every connection of the site's layer (named ``prefix``) in the
    site's processes; how many it dropped."""
    if backend == "redis":
        import redis

        with contextlib.closing(redis.Redis.from_url(server)) as client:
            ids = [c["id"] for c in client.client_list() if c.get("name") == prefix]
            return sum(int(client.client_kill_filter(_id=i)) for i in ids)
    if backend == "postgres":
        from tests.postgres.harness import terminate_backends

        return terminate_backends(server, prefix)
    from tests.amqp.harness import close_connections

    # The layer names a connection "<prefix> <instance>".
    return close_connections(prefix + " ", node=_node_of(server))


def connection_count(backend: str, server: str, prefix: str) -> int:
    """How many connections the site's layer holds on the server."""
    if backend == "redis":
        import redis

        with contextlib.closing(redis.Redis.from_url(server)) as client:
            return sum(1 for c in client.client_list() if c.get("name") == prefix)
    if backend == "postgres":
        from tests.postgres.harness import backends

        return len(backends(server, prefix))
    from tests.amqp.harness import connections

    return len(connections(prefix + " ", node=_node_of(server)))


#: RabbitMQ: a private node's URL -> its node name (rabbitmqctl needs the node).
PRIVATE_NODES: dict[str, str] = {}


def _node_of(url: str) -> str | None:
    return PRIVATE_NODES.get(url)


def members(backend: str, server: str, prefix: str, group: str) -> int | None:
    """Members of ``group`` as the server stores them, or None where the server does not
    hold them (RabbitMQ: a process-local channel's membership lives in its owner)."""
    if backend == "redis":
        import redis

        with contextlib.closing(redis.Redis.from_url(server)) as client:
            return int(client.zcard(f"{prefix}:g:{group}"))
    if backend == "postgres":
        from tests.postgres.harness import query

        ((count,),) = query(
            server,
            "SELECT count(*) FROM channel_layers_v2_groups"
            " WHERE prefix = %s AND group_name = %s AND expires_at > now()",
            (prefix, group),
        )
        return int(count)
    return None


async def flush(backend: str, server: str, prefix: str) -> None:
    """Remove what a site left under ``prefix`` on a shared server."""
    layer: Any
    if backend == "redis":
        from layers.redis import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[server], prefix=prefix)
    elif backend == "postgres":
        from layers.postgres import PostgresChannelLayer

        layer = PostgresChannelLayer(dsn=server, prefix=prefix)
    else:
        from layers.amqp import AmqpChannelLayer

        layer = AmqpChannelLayer(url=server, prefix=prefix)
    try:
        await layer.flush()
    finally:
        await layer.close()


class PrivateServer:
    """A server of the test's own on a free loopback port, to restart mid-chat; it keeps
    what the layer stored across the restart, as a production server would (Redis with an
    append-only file, PostgreSQL stopped cleanly, RabbitMQ's durable queues)."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.workdir = workdir
        self.server: Any = None
        self.url = ""

    def start(self) -> PrivateServer:
        if self.backend == "redis":
            from tests.redis.harness import REDIS_SERVER, RedisProcess

            if not shutil.which(REDIS_SERVER):
                unavailable(f"redis-server not found (looked for {REDIS_SERVER})")
            extra = ["--appendonly", "yes", "--appendfsync", "always"]
            self.server = RedisProcess(self.workdir / "redis", extra=extra).start()
            self.url = self.server.url
        elif self.backend == "postgres":
            from tests.postgres.harness import INITDB, POSTGRES, PostgresProcess, make_workdir

            for binary in (INITDB, POSTGRES):
                if not binary.exists():
                    unavailable(f"PostgreSQL binary not found: {binary} (set PG_BIN)")
            self.server = PostgresProcess(make_workdir("e2e"))
            self.server.start()
            self.url = self.server.dsn()
        else:
            from tests.amqp.harness import RabbitProcess, rabbit_server

            if rabbit_server() is None:
                unavailable("rabbitmq-server is not on PATH")
            self.server = RabbitProcess()
            self.server.start()
            self.url = self.server.url
            PRIVATE_NODES[self.url] = self.server.node
        return self

    def restart(self, crash: bool = False) -> None:
        """Stop and start again on the same port and data. ``crash``: with no chance to
        save or say goodbye (Redis is always stopped so; PostgreSQL's immediate shutdown,
        RabbitMQ's SIGKILL)."""
        if self.backend == "postgres" and crash:
            from tests.postgres.harness import query

            # Commits are asynchronous (synchronous_commit = off): what the layer stored
            # a moment ago is on disk once the WAL is, which a crash does not wait for.
            query(self.url, "CHECKPOINT")
            self.server.restart(how=signal.SIGQUIT)
        elif self.backend == "amqp" and crash:
            self.server.kill()
            self.server.start()
        else:
            self.server.restart()

    def remove(self) -> None:
        if self.server is None:
            return
        PRIVATE_NODES.pop(self.url, None)
        if self.backend == "redis":
            self.server.stop()
        else:
            self.server.remove()


@contextlib.contextmanager
def private_server(backend: str, workdir: Path) -> Iterator[PrivateServer]:
    server = PrivateServer(backend, workdir)
    try:
        yield server.start()
    finally:
        server.remove()
