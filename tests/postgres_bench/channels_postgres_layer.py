"""channels_postgres 1.1.4 outside a Django project, for the bench::

    python -m bench --layer tests.postgres_bench.channels_postgres_layer.ChannelsPostgresLayer \\
        --config '{"dsn": "postgresql://postgres@127.0.0.1:5432/test"}'

channels_postgres is a Django app: its layer imports its models, so Django's settings
must be configured and the app registry loaded before the layer can even be imported, and
its two tables and the NOTIFY trigger come from its migrations. Building a layer here:

- configures Django if nothing has yet: ``INSTALLED_APPS = ["channels_postgres"]``,
  ``USE_TZ = True`` and two aliases, ``default`` and ``channels_postgres`` (the alias its
  ORM calls use), both pointing at ``dsn``; then ``django.setup()``;
- runs ``migrate channels_postgres`` on that alias unless its tables already exist
  (under an advisory lock, since the bench starts its processes at the same moment);
- deletes expired rows from its message table (what its own housekeeping does after a
  ``group_discard``; nothing else ever deletes them, and every delivered message stays
  until it expires, so runs would otherwise pile them up);
- returns its ``PostgresChannelLayer`` with the DATABASES entry as its keyword arguments,
  as its README configures it. Its ``prefix`` only names groups: messages of every run
  share one table, the run id in the channel names keeps runs apart.

``ChannelsPostgresLayer`` is built on first access (module ``__getattr__``), after that
setup, because its base class cannot be imported before it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
ALIAS = "channels_postgres"
MESSAGE_TABLE = "channels_postgres_message"
GROUP_TABLE = "channels_postgres_groupchannel"
# Any fixed number: one process at a time runs the migrations.
_MIGRATE_LOCK = 0x63705F6D69677261

_ready: set[str] = set()


def database_settings(dsn: str) -> dict[str, Any]:
    """A Django DATABASES entry for a libpq URL or key=value string."""
    params = conninfo_to_dict(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", "postgres"),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": str(params.pop("port", "")),
        "OPTIONS": params,
    }


def configure_django(dsn: str) -> None:
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]

    if not settings.configured:
        entry = database_settings(dsn)
        settings.configure(
            INSTALLED_APPS=["channels_postgres"],
            DATABASES={"default": entry, ALIAS: dict(entry)},
            USE_TZ=True,
        )
    django.setup()


def prepare_database(dsn: str) -> None:
    """Create channels_postgres' tables if missing, drop expired messages.

    Run in a thread of its own: the bench builds layers inside a running event loop,
    where Django refuses to run its (synchronous) migrations.
    """
    if dsn in _ready:
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_prepare_database, dsn).result()
    _ready.add(dsn)


def _prepare_database(dsn: str) -> None:
    from django.core.management import call_command  # type: ignore[import-untyped]

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        try:
            row = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                (MESSAGE_TABLE, GROUP_TABLE),
            ).fetchone()
            if not (row and row[0]):
                call_command("migrate", "channels_postgres", database=ALIAS, verbosity=0)
            conn.execute(f"DELETE FROM {MESSAGE_TABLE} WHERE expire < now()")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))


def layer_settings() -> dict[str, Any]:
    """The ``channels_postgres`` DATABASES entry, with Django's defaults filled in."""
    from django.db import connections  # type: ignore[import-untyped]

    return dict(connections[ALIAS].settings_dict)


def make(dsn: str = DEFAULT_DSN, prefix: str = "asgi", **config: Any) -> Any:
    """Configure Django, create the tables if missing, return the layer."""
    configure_django(dsn)
    prepare_database(dsn)
    from channels_postgres.core import PostgresChannelLayer  # type: ignore[import-untyped]

    return PostgresChannelLayer(prefix=prefix, **{**layer_settings(), **config})


_classes: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name != "ChannelsPostgresLayer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _classes:
        _classes[name] = _build_class()
    return _classes[name]


def _build_class() -> type:
    configure_django(DEFAULT_DSN)
    from channels_postgres.core import PostgresChannelLayer

    class ChannelsPostgresLayer(PostgresChannelLayer):  # type: ignore[misc]
        """channels_postgres' layer, with Django and its tables set up from ``dsn``."""

        def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = "asgi", **config: Any) -> None:
            configure_django(dsn)
            prepare_database(dsn)
            super().__init__(prefix=prefix, **{**layer_settings(), **config})

    ChannelsPostgresLayer.__module__ = __name__
    return ChannelsPostgresLayer
