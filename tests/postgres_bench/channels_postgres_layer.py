"""channels_postgres 1.1.4 outside a Django project, for the bench::

    python -m bench --layer tests.postgres_bench.channels_postgres_layer.ChannelsPostgresLayer \\
        --config '{"dsn": "postgresql://postgres@127.0.0.1:5432/test"}'

channels_postgres is a Django app: its layer imports its models, so Django's settings
must be configured and the app registry loaded before the layer can even be imported, and
its two tables and the NOTIFY trigger come from its migrations. Building a layer here:

- configures Django if nothing has yet (``INSTALLED_APPS = ["channels_postgres"]``,
  ``USE_TZ = True``) and calls ``django.setup()``;
- adds the DATABASES aliases ``channels_postgres`` (the alias its ORM calls and its
  README use) and, if missing, ``default``, both for ``dsn``; one ``dsn`` per process;
- runs ``migrate channels_postgres`` on that alias unless its tables already exist
  (under an advisory lock, since the bench starts its processes at the same moment);
- deletes expired rows from its message table (what its own housekeeping does after a
  ``group_discard``; nothing else ever deletes them, and a message delivered through
  NOTIFY stays in the table until it expires, so runs would otherwise pile them up);
- returns its ``PostgresChannelLayer`` with that DATABASES entry as keyword arguments,
  as its README configures it. Its ``prefix`` only names groups: messages of every run
  share one table, and the run id in the bench's channel names keeps runs apart.

``ChannelsPostgresLayer`` is built on first access (module ``__getattr__``), after Django
is set up, because its base class cannot be imported before; ``make`` is the same as a
function.
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
_CONNECTION_KEYS = ("NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")

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


def configure_django() -> None:
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]

    if not settings.configured:
        settings.configure(INSTALLED_APPS=[ALIAS], DATABASES={}, USE_TZ=True)
    django.setup()


def use_database(dsn: str) -> dict[str, Any]:
    """Point the ``channels_postgres`` alias at ``dsn``; its full settings entry."""
    from django.conf import settings
    from django.db import connections  # type: ignore[import-untyped]

    entry = database_settings(dsn)
    current = settings.DATABASES.get(ALIAS)
    if current is None:
        settings.DATABASES[ALIAS] = entry
        settings.DATABASES.setdefault("default", dict(entry))
        # Django reads DATABASES once; forget what it read so the new aliases count.
        vars(connections).pop("settings", None)
    elif any(current.get(key) != entry[key] for key in _CONNECTION_KEYS):
        raise ValueError(f"the {ALIAS!r} database is already set up for another dsn")
    return dict(connections[ALIAS].settings_dict)


def prepare_database(dsn: str) -> None:
    """Create channels_postgres' tables if missing, drop expired messages.

    Runs in a thread of its own: the bench builds layers inside a running event loop,
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
                call_command("migrate", ALIAS, database=ALIAS, verbosity=0)
            conn.execute(f"DELETE FROM {MESSAGE_TABLE} WHERE expire < now()")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))


def layer_kwargs(dsn: str, config: dict[str, Any]) -> dict[str, Any]:
    configure_django()
    entry = use_database(dsn)
    prepare_database(dsn)
    return {**entry, **config}


def make(dsn: str = DEFAULT_DSN, prefix: str = "asgi", **config: Any) -> Any:
    """Configure Django, create the tables if missing, return the layer."""
    kwargs = layer_kwargs(dsn, config)
    from channels_postgres.core import PostgresChannelLayer  # type: ignore[import-untyped]

    return PostgresChannelLayer(prefix=prefix, **kwargs)


_classes: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name != "ChannelsPostgresLayer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _classes:
        _classes[name] = _build_class()
    return _classes[name]


def _build_class() -> type:
    configure_django()
    from channels_postgres.core import PostgresChannelLayer

    class ChannelsPostgresLayer(PostgresChannelLayer):  # type: ignore[misc]
        """channels_postgres' layer, with Django and its tables set up from ``dsn``."""

        def __init__(self, dsn: str = DEFAULT_DSN, prefix: str = "asgi", **config: Any) -> None:
            super().__init__(prefix=prefix, **layer_kwargs(dsn, config))

    ChannelsPostgresLayer.__module__ = __name__
    return ChannelsPostgresLayer
