"""channels-lite 0.4.0 (SQLite) outside a Django project, for the suite and the bench::

    python -m pytest --pyargs conformance --layer tests.others.channels_lite_layer:make \\
        --layer-config '{"path": "/tmp/lite.sqlite3"}'
    python -m bench --layer tests.others.channels_lite_layer.make_aio \\
        --config '{"path": "/tmp/lite-aio.sqlite3"}'

channels-lite is a Django app: its layers read ``settings.DATABASES[database]`` when built
(the ORM layer ``SQLiteChannelLayer`` also stores through its models), and its two tables
come from its migrations. Its README asks for ``channels_lite`` in ``INSTALLED_APPS``, a
SQLite database (WAL "required" when several processes share it; the PRAGMAs below are its
"SQLite Performance Settings" block, word for word), ``migrate``, and
``CONFIG = {"database": <alias>}``. Building a layer here does exactly that, and nothing
else:

- configures Django if nothing has yet (``INSTALLED_APPS = ["channels_lite"]``,
  ``USE_TZ = True``, the database ``default`` at ``path``) and calls ``django.setup()``;
  one ``path`` per process;
- runs ``migrate channels_lite`` unless its tables exist, in a thread of its own (the
  suite and the bench build layers inside a running event loop, where Django refuses to
  run its synchronous migrations) and under a file lock (the bench starts its processes
  at the same moment);
- returns ``SQLiteChannelLayer`` (``make``) or ``AIOSQLiteChannelLayer`` (``make_aio``,
  needs ``channels-lite[aio]``) with ``database="default"`` and the other keyword
  arguments unchanged.

Neither layer takes a ``prefix``, so these factories take none: every test and run shares
the tables, the bench's run id in its channel names keeps runs apart, and ``flush()``
empties both tables for everyone. Give each comparison a fresh ``path``.
"""

from __future__ import annotations

import fcntl
import sqlite3
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_PATH = str(Path(tempfile.gettempdir()) / "channels-lite.sqlite3")
APP = "channels_lite"
TABLES = ("channels_lite_event", "channels_lite_groupmembership")
# channels-lite's README, "SQLite Performance Settings".
OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 5,
    "init_command": (
        "PRAGMA journal_mode=WAL; "
        "PRAGMA synchronous=NORMAL; "
        "PRAGMA cache_size=10000; "
        "PRAGMA temp_store=MEMORY; "
        "PRAGMA busy_timeout=5000;"
    ),
}

_ready: set[str] = set()


def configure_django(path: str) -> None:
    import django  # type: ignore[import-untyped, unused-ignore]
    from django.conf import settings  # type: ignore[import-untyped, unused-ignore]

    entry = {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": OPTIONS}
    if not settings.configured:
        settings.configure(INSTALLED_APPS=[APP], DATABASES={"default": entry}, USE_TZ=True)
    elif settings.DATABASES.get("default", {}).get("NAME") != path:
        raise ValueError(f"Django's default database is already set up, not for {path!r}")
    django.setup()


def prepare_database(path: str) -> None:
    """Create channels-lite's tables in ``path`` unless they exist."""
    if path in _ready:
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_prepare_database, path).result()
    _ready.add(path)


def _prepare_database(path: str) -> None:
    from django.core.management import call_command  # type: ignore[import-untyped, unused-ignore]
    from django.db import connections  # type: ignore[import-untyped, unused-ignore]

    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with sqlite3.connect(path) as conn:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not set(TABLES) <= names:
            call_command("migrate", APP, database="default", verbosity=0)
        # This thread's connection would otherwise stay open until the process ends.
        connections.close_all()


def layer_kwargs(path: str, config: dict[str, Any]) -> dict[str, Any]:
    configure_django(path)
    prepare_database(path)
    return {"database": "default", **config}


def make(path: str = DEFAULT_PATH, **config: Any) -> Any:
    """channels-lite's ORM layer, ``SQLiteChannelLayer``, on the SQLite file ``path``."""
    kwargs = layer_kwargs(path, config)
    from channels_lite.layers.core import SQLiteChannelLayer  # type: ignore[import-not-found, unused-ignore]

    factory: Any = SQLiteChannelLayer  # untyped
    return factory(**kwargs)


def make_aio(path: str = DEFAULT_PATH, **config: Any) -> Any:
    """channels-lite's aiosqlite layer, ``AIOSQLiteChannelLayer``, on ``path``."""
    kwargs = layer_kwargs(path, config)
    from channels_lite.layers.aio import AIOSQLiteChannelLayer  # type: ignore[import-not-found, unused-ignore]

    factory: Any = AIOSQLiteChannelLayer  # untyped
    return factory(**kwargs)
