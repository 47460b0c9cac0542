"""The shared conformance suite on the shared server: UNLOGGED tables (the default), and
once more with ``durable=True`` in a schema of its own, so that its tables really are
logged ones (the first layer to create a table decides its persistence)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from conformance import ConformanceSuite, LayerSpec
from layers.postgres import PostgresChannelLayer
from tests.postgres.harness import query, with_params

DURABLE_SCHEMA = "channel_layers_durable_tests"


@pytest.fixture(scope="session")
def durable_dsn(shared_postgres: str) -> str:
    """The shared server, with unqualified table names resolving in DURABLE_SCHEMA."""
    for _ in range(5):
        try:
            query(shared_postgres, f"CREATE SCHEMA IF NOT EXISTS {DURABLE_SCHEMA}")
            break
        except psycopg.Error:  # two workers creating it at once: look again
            if query(
                shared_postgres,
                "SELECT 1 FROM pg_namespace WHERE nspname = %s",
                (DURABLE_SCHEMA,),
            ):
                break
    return with_params(shared_postgres, options=f"-c search_path={DURABLE_SCHEMA}")


class TestShared(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, shared_postgres: str) -> LayerSpec:
        return LayerSpec(PostgresChannelLayer, config={"dsn": shared_postgres})


class TestDurable(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, durable_dsn: str) -> LayerSpec:
        return LayerSpec(PostgresChannelLayer, config={"dsn": durable_dsn, "durable": True})

    async def test_its_tables_are_logged(self, durable_dsn: str, make_layer: Any) -> None:
        await make_layer().send("c", {"type": "m"})
        rows = await asyncio.to_thread(
            query,
            durable_dsn,
            "SELECT relname, relpersistence FROM pg_class"
            " WHERE relnamespace = %s::regnamespace AND relkind = 'r'"
            " AND relname LIKE 'channel_layers_v2_%%'",
            (DURABLE_SCHEMA,),
        )
        assert sorted(rows) == [
            ("channel_layers_v2_groups", "p"),
            ("channel_layers_v2_messages", "p"),
        ]
