"""Fixtures for the PostgreSQL layer's tests.

- ``shared_postgres``: the DSN of the shared server on 127.0.0.1:5432 (database ``test``,
  user ``postgres``, else ``root``), for tests that neither stop nor break their server.
- ``prefix``: a layer prefix of the test's own, which is also the ``application_name`` that
  ``dsn_for(prefix)`` puts in the DSN, so a test finds exactly its own backends in
  ``pg_stat_activity`` while other tests use the same server.
- ``own_postgres``: a private cluster on a free loopback port, for tests that restart,
  stop or break their server (copied from one ``initdb`` per session).

Without a reachable shared server, or without the PostgreSQL binaries for a private
cluster, these tests skip with the reason, except in CI (``CI`` set), where that is a
failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci

pytest.importorskip("psycopg", reason="the [postgres] extra is not installed")

from tests.postgres.harness import (
    INITDB,
    POSTGRES,
    PostgresProcess,
    initdb,
    make_workdir,
    reachable,
    with_application_name,
)

SHARED_HOST = "127.0.0.1:5432"
SHARED_DATABASE = "test"
SHARED_USERS = ("postgres", "root")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_postgres() -> str:
    """The shared server's DSN, for tests that do not stop or break their server."""
    reasons = []
    for user in SHARED_USERS:
        dsn = f"postgresql://{user}@{SHARED_HOST}/{SHARED_DATABASE}"
        reason = reachable(dsn)
        if reason is None:
            return dsn
        reasons.append(f"{user}: {reason}")
    _unavailable(f"no PostgreSQL server usable on {SHARED_HOST}/{SHARED_DATABASE} ({reasons})")
    raise AssertionError("unreachable")  # _unavailable raises


@pytest.fixture
def prefix() -> str:
    """A layer prefix (and application_name) of this test's own."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def dsn_for(shared_postgres: str) -> Callable[[str], str]:
    """``dsn_for(prefix)``: the shared server's DSN whose connections carry ``prefix`` as
    their ``application_name``."""

    def make(name: str) -> str:
        return with_application_name(shared_postgres, name)

    return make


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[Path]:
    """One ``initdb`` per session (per xdist worker); private clusters are copies of it."""
    for binary in (INITDB, POSTGRES):
        if not os.path.exists(binary):
            _unavailable(f"PostgreSQL binary not found: {binary} (set PG_BIN)")
    workdir = make_workdir("template")
    try:
        initdb(workdir / "data")
    except (OSError, RuntimeError) as exc:
        _unavailable(f"cannot make a private PostgreSQL cluster: {exc}")
    try:
        yield workdir / "data"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def own_postgres(postgres_template: Path) -> Iterator[PostgresProcess]:
    """A private, empty cluster on a free loopback port that the test may restart, stop or
    break; stopped (by pid) and removed afterwards."""
    server = PostgresProcess(make_workdir("own"), template=postgres_template)
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    try:
        yield server
    finally:
        server.remove()
