"""Idle pooled connections the server dropped without a word the client read.

After an immediate shutdown (SIGQUIT: what a crash, an OOM kill or a failover looks like
to a client), the server's goodbye on an idle connection is lost with the reset that
follows. A send or group_send cannot be repeated once sent (it might have run), so the
pool must not hand out such a connection: it certainly never ran anything there. Found by
tests/e2e (a chat's first message after a crash closed the sender's WebSocket).
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from layers.postgres import PostgresChannelLayer
from tests.postgres.harness import PostgresProcess, query

pytestmark = [pytest.mark.xdist_group("postgres-faults"), pytest.mark.timeout(60)]


@pytest.mark.parametrize("how", [signal.SIGQUIT, signal.SIGINT], ids=["immediate", "fast"])
async def test_calls_after_a_restart_do_not_fail_on_stale_idle_connections(
    own_postgres: PostgresProcess, prefix: str, how: signal.Signals
) -> None:
    # Durable: the group must outlive the crash (UNLOGGED tables are emptied by one).
    layer = PostgresChannelLayer(
        dsn=own_postgres.dsn_for(prefix), prefix=prefix, pool_size=2, durable=True
    )
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        # Two pooled connections idle: one statement each, at the same time.
        await asyncio.gather(layer.send("a", {"n": 0}), layer.send("b", {"n": 0}))
        assert await layer.receive("a") == {"n": 0}
        assert await layer.receive("b") == {"n": 0}
        # The layer commits asynchronously (synchronous_commit = off): the membership is
        # on disk only once the WAL is, which a crash does not wait for.
        await asyncio.to_thread(query, own_postgres.dsn(), "CHECKPOINT")
        await asyncio.to_thread(own_postgres.restart, 0.0, how)
        await layer.send("a", {"n": 1})
        await layer.group_send("room", {"n": 2})
        await layer.send("b", {"n": 3})
        assert await asyncio.wait_for(layer.receive("a"), 10) == {"n": 1}
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"n": 2}
        assert await asyncio.wait_for(layer.receive("b"), 10) == {"n": 3}
    finally:
        await layer.close()
