"""Connections belong to an event loop and go away with it (the home loop's, which serves
``async_to_sync`` calls, with close()); one instance in one loop holds
at most ``pool_size`` pooled connections plus its one LISTEN connection.

Each test's connections carry its prefix as ``application_name``, so the counts below are
this test's own backends on the shared server, whatever else runs there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from asgiref.sync import async_to_sync

from layers.postgres import PostgresChannelLayer
from tests.postgres.harness import backends, query
from tests.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(120)

POOL_SIZE = 3
#: Backends exit a moment after their client closes them: the deadline for the count to
#: come back (a bound on a wait, not a sleep).
SETTLE = 10.0


class BackendCounter:
    """Samples pg_stat_activity in a thread: the most backends of one application_name at
    once, and every pid seen."""

    def __init__(self, dsn: str, application_name: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        self._name = application_name
        self.peak = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self._conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self._name,)
            ).fetchall()
            self.peak = max(self.peak, len(rows))
            self.pids.update(row[0] for row in rows)
            self._stop.wait(0.003)

    def __enter__(self) -> BackendCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def count_back_to(dsn: str, name: str, expected: int) -> Callable[[], bool]:
    return lambda: len(backends(dsn, name)) == expected


def test_async_to_sync_calls_share_the_home_loops_connections(
    dsn_for: Callable[[str], str], shared_postgres: str, prefix: str
) -> None:
    """Calls from async_to_sync's one-call loops run in the instance's home loop
    (layers/runtime/home.py): its pool serves them all, no connection is made per call,
    and close() ends them."""
    dsn = dsn_for(prefix)
    layer = PostgresChannelLayer(dsn=dsn, prefix=prefix, pool_size=POOL_SIZE, capacity=10_000)
    members = ["m1", "m2", "m3"]
    for member in members:
        async_to_sync(layer.group_add)("room", member)
    with BackendCounter(shared_postgres, prefix) as sequential:
        for n in range(200):
            async_to_sync(layer.group_send)("room", {"type": "m", "n": n})

    def calls(thread: int) -> None:
        for n in range(25):
            async_to_sync(layer.group_send)("room", {"type": "m", "n": 1000 * thread + n})

    with BackendCounter(shared_postgres, prefix) as threaded:
        threads = [threading.Thread(target=calls, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a thread's calls hung"
    # Every call arrived once per member.
    counted = query(
        shared_postgres,
        "SELECT channel, count(*) FROM channel_layers_v2_messages WHERE prefix = %s"
        " GROUP BY channel",
        (prefix,),
    )
    assert dict(counted) == dict.fromkeys(members, 400)
    # One pool, whatever the number of calls and threads; the same backends throughout.
    assert sequential.peak <= POOL_SIZE, f"{sequential.peak} backends at once"
    assert len(sequential.pids) <= POOL_SIZE, f"{len(sequential.pids)} backends in turn"
    assert threaded.peak <= POOL_SIZE, f"{threaded.peak} backends at once"
    assert len(threaded.pids | sequential.pids) <= POOL_SIZE, "backends were replaced"
    async_to_sync(layer.flush)()
    async_to_sync(layer.close)()
    wait_until_sync(
        count_back_to(shared_postgres, prefix, 0), "close() ended the connections", SETTLE
    )


async def test_200_concurrent_sends_hold_at_most_pool_size_plus_one(
    dsn_for: Callable[[str], str], shared_postgres: str, prefix: str
) -> None:
    dsn = dsn_for(prefix)
    layer = PostgresChannelLayer(dsn=dsn, prefix=prefix, pool_size=POOL_SIZE, capacity=1000)
    other = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix, capacity=1000)
    try:
        local = await layer.new_channel()
        members = [f"member{n}" for n in range(5)] + [local]
        for member in members:
            await other.group_add("room", member)
        received: list[int] = []

        async def consume() -> None:
            while True:
                received.append((await layer.receive(local))["n"])

        with BackendCounter(shared_postgres, prefix) as counter:
            consumer = asyncio.create_task(consume())
            calls = [
                layer.group_send("room", {"type": "g", "n": n})
                if n % 2
                else layer.send("direct", {"type": "d", "n": n})
                for n in range(200)
            ]
            await asyncio.wait_for(asyncio.gather(*calls), 60)
            try:
                await wait_until(lambda: len(received) >= 100, "the local member got 100", 10)
            finally:
                consumer.cancel()
        assert sorted(received) == list(range(1, 200, 2))
        assert counter.peak <= POOL_SIZE + 1, f"{counter.peak} backends at once"
        assert len(counter.pids) <= POOL_SIZE + 1, f"{len(counter.pids)} backends in all"
        counted = await asyncio.to_thread(
            query,
            shared_postgres,
            "SELECT channel, count(*) FROM channel_layers_v2_messages WHERE prefix = %s"
            " GROUP BY channel",
            (prefix,),
        )
        assert dict(counted) == {"direct": 100, **{m: 100 for m in members[:-1]}}
    finally:
        await other.flush()
        await layer.close()
        await other.close()
