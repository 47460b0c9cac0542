"""The schema: printed by ``python -m layers.postgres sql``, applied by ``init``, created on
first use, UNLOGGED unless ``durable``; and ``flush`` touching only its own prefix."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from layers.postgres import PostgresChannelLayer
from tests.postgres.harness import PostgresProcess, query, rows_under
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

TABLES = ("channel_layers_v2_messages", "channel_layers_v2_groups")
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layers.postgres", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def persistence(dsn: str) -> dict[str, str]:
    """relpersistence of our tables that exist: 'p' logged, 'u' unlogged."""
    rows = query(
        dsn,
        "SELECT relname, relpersistence FROM pg_class WHERE relname = ANY(%s) AND relkind = 'r'",
        (list(TABLES),),
    )
    return {name: kind for name, kind in rows}


def make_database(server: PostgresProcess, name: str) -> str:
    query(server.dsn(), f"CREATE DATABASE {name}")
    return server.dsn(name)


def test_sql_prints_idempotent_ddl(own_postgres: PostgresProcess) -> None:
    for durable, kind in ((False, "u"), (True, "p")):
        printed = cli("sql", *(["--durable"] if durable else []))
        assert printed.returncode == 0, printed.stderr
        ddl = printed.stdout
        for table in TABLES:
            assert table in ddl
        # The comments may mention UNLOGGED either way; the statements decide.
        statements = " ".join(
            line for line in ddl.upper().splitlines() if not line.lstrip().startswith("--")
        )
        assert ("UNLOGGED" in statements) is not durable
        dsn = make_database(own_postgres, "printed_durable" if durable else "printed")
        # Run as printed, twice: the second run changes nothing and raises nothing.
        query(dsn, ddl)
        query(dsn, ddl)
        assert persistence(dsn) == dict.fromkeys(TABLES, kind)


def test_init_twice(own_postgres: PostgresProcess) -> None:
    for durable, kind in ((False, "u"), (True, "p")):
        dsn = make_database(own_postgres, "init_durable" if durable else "init_plain")
        for _ in range(2):
            done = cli("init", "--dsn", dsn, *(["--durable"] if durable else []))
            assert done.returncode == 0, done.stderr
        assert persistence(dsn) == dict.fromkeys(TABLES, kind)


def test_init_unreachable_fails_naming_the_server(own_postgres: PostgresProcess) -> None:
    port = own_postgres.port
    own_postgres.stop()
    done = cli("init", "--dsn", own_postgres.dsn())
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr + done.stdout


@pytest.mark.parametrize(("durable", "kind"), [(False, "u"), (True, "p")])
async def test_created_on_first_use(
    own_postgres: PostgresProcess, prefix: str, durable: bool, kind: str
) -> None:
    dsn = await asyncio.to_thread(make_database, own_postgres, "fresh")
    assert await asyncio.to_thread(persistence, dsn) == {}
    layer = PostgresChannelLayer(dsn=dsn, prefix=prefix, durable=durable)
    other = PostgresChannelLayer(dsn=dsn, prefix=prefix, durable=durable)
    try:
        local = await layer.new_channel()
        await other.send("plain", {"type": "m", "n": 1})
        await other.send(local, {"type": "m", "n": 2})
        await other.group_add("g", "plain")
        await other.group_send("g", {"type": "m", "n": 3})
        assert (await asyncio.wait_for(layer.receive("plain"), 5))["n"] == 1
        assert (await asyncio.wait_for(layer.receive(local), 5))["n"] == 2
        assert (await asyncio.wait_for(layer.receive("plain"), 5))["n"] == 3
        assert await asyncio.to_thread(persistence, dsn) == dict.fromkeys(TABLES, kind)
    finally:
        await layer.close()
        await other.close()


async def test_first_use_by_many_at_once(own_postgres: PostgresProcess, prefix: str) -> None:
    """Layers starting together on an empty database do not trip over each other's DDL."""
    dsn = await asyncio.to_thread(make_database, own_postgres, "together")
    layers = [PostgresChannelLayer(dsn=dsn, prefix=prefix) for _ in range(6)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(layer.send(f"c{n}", {"type": "m"}) for n, layer in enumerate(layers))),
            20,
        )
        counted = await asyncio.to_thread(
            query,
            dsn,
            "SELECT count(*) FROM channel_layers_v2_messages WHERE prefix = %s",
            (prefix,),
        )
        assert counted == [(6,)]
    finally:
        for layer in layers:
            await layer.close()


async def test_flush_removes_only_its_prefix(shared_postgres: str, prefix: str) -> None:
    mine = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix + "a")
    theirs = PostgresChannelLayer(dsn=shared_postgres, prefix=prefix + "b")
    try:
        for layer in (mine, theirs):
            local = await layer.new_channel()
            for n in range(3):
                await layer.send("plain", {"type": "m", "n": n})
                await layer.send(local, {"type": "m", "n": n})
            await layer.group_add("g", "plain")
            await layer.group_add("g", local)
        assert await asyncio.to_thread(rows_under, shared_postgres, prefix + "a") == (6, 2)
        assert await asyncio.to_thread(rows_under, shared_postgres, prefix + "b") == (6, 2)
        await mine.flush()
        assert await asyncio.to_thread(rows_under, shared_postgres, prefix + "a") == (0, 0)
        assert await asyncio.to_thread(rows_under, shared_postgres, prefix + "b") == (6, 2)
        # The other prefix still works as before.
        assert (await asyncio.wait_for(theirs.receive("plain"), 5))["n"] == 0
        await theirs.group_send("g", {"type": "m", "n": 9})
        assert await asyncio.to_thread(rows_under, shared_postgres, prefix + "b") == (7, 2)
    finally:
        await theirs.flush()
        await mine.close()
        await theirs.close()


# -- first use on a database in use -------------------------------------------------------------
#
# A new instance's first use must not take locks that stop other instances' traffic: the
# tables exist, so there is nothing to create. These hold a transaction open on a private
# cluster (on the shared server they would stall every other test).


async def _open_writer(server: PostgresProcess, prefix: str) -> psycopg.AsyncConnection[Any]:
    """A transaction left open after writing a membership (a RowExclusiveLock on the
    groups table, as any group_add under way holds)."""
    conn = await psycopg.AsyncConnection.connect(server.dsn(), autocommit=False)
    await conn.execute(
        "INSERT INTO channel_layers_v2_groups"
        " (prefix, group_name, channel, queue, listen, expires_at)"
        " VALUES (%s, 'g', 'c', 'c', 'nobody', now() + interval '1 hour')",
        (prefix + "x",),
    )
    return conn


async def _waits_on_a_lock(server: PostgresProcess, name: str) -> bool:
    rows = await asyncio.to_thread(
        query,
        server.dsn(),
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        (name,),
    )
    return bool(rows)


async def test_first_use_does_not_stop_other_instances(
    own_postgres: PostgresProcess, prefix: str
) -> None:
    warm = PostgresChannelLayer(dsn=own_postgres.dsn(), prefix=prefix)
    await warm.send("warm", {"type": "m"})
    writer = await _open_writer(own_postgres, prefix)
    fresh = PostgresChannelLayer(dsn=own_postgres.dsn_for(prefix + "fresh"), prefix=prefix)
    first = asyncio.create_task(fresh.send("a", {"type": "m"}))
    try:
        # If the first use waits on a lock at all, let it get there before going on.
        with contextlib.suppress(AssertionError):
            await wait_until(
                lambda: _waits_on_a_lock(own_postgres, prefix + "fresh"),
                "the new instance's first send waits on a lock",
                timeout=2,
            )
        try:
            await asyncio.wait_for(warm.send("b", {"type": "m"}), 3)
        except TimeoutError:
            raise AssertionError(
                "a send of a running instance waited while a new instance's first use "
                "waited for a lock (schema DDL on existing tables: CREATE INDEX IF NOT "
                "EXISTS takes a ShareLock on the table even when the index exists)"
            ) from None
    finally:
        await writer.rollback()
        await writer.close()
        await asyncio.wait_for(asyncio.gather(first, return_exceptions=True), 10)
        await warm.close()
        await fresh.close()
    first.result()


async def test_first_use_beside_open_transactions_is_no_deadlock(
    own_postgres: PostgresProcess, prefix: str
) -> None:
    warm = PostgresChannelLayer(dsn=own_postgres.dsn(), prefix=prefix)
    await warm.send("warm", {"type": "m"})
    writer = await _open_writer(own_postgres, prefix)
    fresh = PostgresChannelLayer(dsn=own_postgres.dsn_for(prefix + "fresh"), prefix=prefix)
    first = asyncio.create_task(fresh.send("a", {"type": "m"}))
    try:
        with contextlib.suppress(AssertionError):
            await wait_until(
                lambda: _waits_on_a_lock(own_postgres, prefix + "fresh"),
                "the new instance's first send waits on a lock",
                timeout=2,
            )
        # The open transaction now writes a message too (as flush or group_send do, groups
        # then messages): with the first use holding the messages table, that is a cycle.
        await asyncio.wait_for(
            writer.execute(
                "INSERT INTO channel_layers_v2_messages"
                " (prefix, queue, channel, expires_at, payload)"
                " VALUES (%s, 'q', 'q', now() + interval '1 hour', '\\x00')",
                (prefix + "x",),
            ),
            10,
        )
        await writer.commit()
        await asyncio.wait_for(first, 10)
    finally:
        await writer.close()
        await asyncio.gather(first, return_exceptions=True)
        await warm.close()
        await fresh.close()
