"""The layer as a PostgreSQL role that has only what the layer needs (docs/reliability.md,
"Least privilege", gives the same statements): LOGIN, no superuser, no CREATEDB, no
CREATEROLE, and in a schema of the site's

- ``user``: tables an admin made beforehand, with SELECT, INSERT, UPDATE, DELETE on them
  and USAGE on the schema (UPDATE: the claims lock rows with ``FOR UPDATE``, group_add
  upserts); NOTIFY, LISTEN and advisory locks need no grant;
- ``owner``: USAGE and CREATE on the schema, and the role makes the tables itself on first
  use (then its cleanup may VACUUM them too).

Each test gets a role and schema of its own on the shared server, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from conformance import ConformanceSuite, LayerSpec
from layers.errors import ServerError
from layers.postgres import PostgresChannelLayer, sql
from tests.conftest import in_ci
from tests.leftovers import drive
from tests.postgres.harness import query, with_params
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

REFUSED = re.compile(r"permission denied|InsufficientPrivilege|must be owner", re.IGNORECASE)
TABLES = ("channel_layers_v2_messages", "channel_layers_v2_groups")

#: ``restricted(mode)``: the DSN of a new role and schema set up for ``mode``.
Restricted = Callable[[str], str]


@pytest.fixture
def restricted(shared_postgres: str) -> Iterator[Restricted]:
    ((may,),) = query(
        shared_postgres,
        "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user",
    )
    if not may:
        reason = f"the account of {shared_postgres} may not create roles"
        if in_ci():
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)
    made: list[str] = []

    def make(mode: str) -> str:
        token = uuid.uuid4().hex[:12]
        # Not one name for both: a schema named like the role is on its default search_path.
        role, schema = f"lp_{token}", f"lps_{token}"
        made.append(token)
        admin = shared_postgres
        query(admin, f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        query(admin, f"CREATE SCHEMA {schema}")
        if mode == "owner":
            query(admin, f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}")
        elif mode == "user":
            query(admin, f"SET search_path = {schema};\n{sql.schema(durable=False)}")
            query(admin, f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            tables = ", ".join(f"{schema}.{table}" for table in TABLES)
            query(admin, f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {role}")
        elif mode == "usage":  # the schema and nothing in it
            query(admin, f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        else:
            raise ValueError(mode)
        parts = urlsplit(shared_postgres)
        where = parts.netloc.rsplit("@", 1)[-1]  # the host and port, without the admin
        user_dsn = urlunsplit(parts._replace(netloc=f"{role}@{where}"))
        if mode == "owner":
            # The role's own default instead of the DSN's: the docs offer both.
            query(admin, f"ALTER ROLE {role} SET search_path = {schema}")
            return user_dsn
        return with_params(user_dsn, options=f"-csearch_path={schema}")

    try:
        yield make
    finally:
        for token in made:
            query(shared_postgres, f"DROP SCHEMA IF EXISTS lps_{token} CASCADE")
            # Also revokes whatever the role was granted elsewhere in this database.
            query(shared_postgres, f"DROP OWNED BY lp_{token}")
            query(shared_postgres, f"DROP ROLE lp_{token}")


class TestAsLeastPrivilegedRole(ConformanceSuite):
    """Tables made by an admin; the role may only read and write their rows."""

    @pytest.fixture
    def layer_spec(self, restricted: Restricted) -> LayerSpec:
        return LayerSpec(PostgresChannelLayer, config={"dsn": restricted("user")})

    @pytest.fixture(autouse=True)
    def nothing_refused(self, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
        """Refusals the layer only logs (its background cleanup...) fail too."""
        caplog.set_level(logging.DEBUG, logger="layers")
        yield
        refused = [r.getMessage() for r in caplog.records if REFUSED.search(r.getMessage())]
        assert not refused, f"the server refused the layer: {refused}"


def role_of(dsn: str) -> tuple[bool, bool, bool]:
    ((flags),) = query(dsn, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                       " WHERE rolname = current_user")  # fmt: skip
    return flags


@pytest.mark.parametrize("mode", ["user", "owner"])
async def test_traffic_flush_and_cleanup(
    restricted: Restricted, shared_postgres: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="layers")
    dsn = restricted(mode)
    assert role_of(dsn) == (False, False, False)
    (schema,) = query(dsn, "SELECT current_schema()")[0]
    assert schema.startswith("lps_"), schema
    config = {"dsn": dsn, "prefix": "p", "expiry": 1, "cleanup_interval": 0.3}
    sender = PostgresChannelLayer(**config)
    receiver = PostgresChannelLayer(**config)
    try:
        await drive(sender, receiver)
        await sender.send("old", {"type": "m"})

        def stored() -> int:
            return sum(
                query(shared_postgres, f"SELECT count(*) FROM {schema}.{table}")[0][0]
                for table in TABLES
            )

        assert stored()

        async def messages_expired() -> bool:
            (count,) = query(
                shared_postgres, f"SELECT count(*) FROM {schema}.channel_layers_v2_messages"
            )[0]
            return bool(count == 0)

        # The background cleanup deletes expired rows as this role too.
        await wait_until(messages_expired, "the role's cleanup deleted expired messages", 15)
        vacuumed = query(
            shared_postgres,
            "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = %s"
            " AND last_vacuum IS NOT NULL",
            (schema,),
        )[0][0]
        # Only a table's owner may VACUUM it (PostgreSQL 17: or a role granted MAINTAIN);
        # other roles' cleanup skips that step and autovacuum does it.
        assert vacuumed == (2 if mode == "owner" else 0)
        await sender.group_add("g", "plain")
        await sender.flush()
        assert stored() == 0
    finally:
        await sender.close()
        await receiver.close()
    refused = [r.getMessage() for r in caplog.records if REFUSED.search(r.getMessage())]
    assert not refused


async def test_outside_the_grant_is_refused(restricted: Restricted, shared_postgres: str) -> None:
    admin = PostgresChannelLayer(dsn=shared_postgres)
    try:
        await admin.ensure_schema()  # the public schema's tables, whoever made them
    finally:
        await admin.close()
    dsn = restricted("user")
    # The default search_path: the public schema's tables (those of other tests on this
    # server), on which the role has no grant.
    elsewhere = PostgresChannelLayer(dsn=dsn.split("?", 1)[0], prefix="p", retry_timeout=1)
    # A schema the role may use but not create in, with no tables: nothing is made.
    empty = PostgresChannelLayer(dsn=restricted("usage"), prefix="p", retry_timeout=1)
    try:
        for layer, reason in ((elsewhere, "for table"), (empty, "for schema")):
            with pytest.raises(ServerError, match=f"permission denied {reason}"):
                await layer.send("plain", {"type": "m"})
        with pytest.raises(ServerError, match="permission denied for table"):
            await elsewhere.group_add("g", "plain")
    finally:
        await elsewhere.close()
        await empty.close()
    for statement in ("CREATE TABLE t (x int)", "CREATE DATABASE lp_nope", "CREATE ROLE lp_nope"):
        with pytest.raises(Exception, match="permission denied"):
            await asyncio.to_thread(query, dsn, statement)
