"""Throwaway PostgreSQL clusters on loopback ports, and what a test asks the server.

A private cluster is made once per test session with ``initdb`` (a template) and copied for
each test that wants one; it runs in the foreground (``postgres -D ...``), is remembered by
pid and stopped by that pid, never by name. ``initdb`` and ``postgres`` refuse to run as
root, so when the tests run as root the cluster's files belong to the ``postgres`` OS user
and its processes run as that user. Nothing here touches the shared server on 5432 except
the read-only queries a test makes with :func:`query`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
INITDB = PG_BIN / "initdb"
POSTGRES = PG_BIN / "postgres"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
#: The OS user a cluster runs as when the tests run as root (initdb refuses root).
CLUSTER_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_params(dsn: str, **params: str) -> str:
    """``dsn`` (a ``postgresql://`` URL) with query parameters added or replaced."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def with_application_name(dsn: str, name: str) -> str:
    """A DSN whose connections show ``name`` in ``pg_stat_activity.application_name``."""
    return with_params(dsn, application_name=name)


def reachable(dsn: str, timeout: float = 2.0) -> str | None:
    """None if a connection to ``dsn`` works, else why not."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True):
            return None
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (autocommit); its rows, if any."""
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description is not None else []


def rows_under(dsn: str, prefix: str) -> tuple[int, int]:
    """Messages and memberships stored under ``prefix``."""
    ((messages, groups),) = query(
        dsn,
        "SELECT (SELECT count(*) FROM channel_layers_v2_messages WHERE prefix = %(p)s),"
        " (SELECT count(*) FROM channel_layers_v2_groups WHERE prefix = %(p)s)",
        {"p": prefix},
    )
    return messages, groups


def backends(dsn: str, application_name: str) -> list[int]:
    """Pids of the server's backends whose connections carry ``application_name``."""
    rows = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    )
    return [row[0] for row in rows]


def terminate_backends(dsn: str, application_name: str) -> int:
    """``pg_terminate_backend`` on every backend of ``application_name``; how many."""
    rows = query(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    )
    return sum(1 for (done,) in rows if done)


def _run_as() -> dict[str, Any]:
    """Popen keywords that run a cluster's processes as CLUSTER_USER when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": CLUSTER_USER, "group": pwd.getpwnam(CLUSTER_USER).pw_gid, "extra_groups": []}


def _give_to_cluster_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(CLUSTER_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def make_workdir(tag: str) -> Path:
    """A directory the cluster user can use: under the system temp dir, not pytest's
    ``tmp_path`` (root's 0700 directories are closed to the ``postgres`` user)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pgtest-{tag}-"))
    _give_to_cluster_user(workdir)
    return workdir


def initdb(datadir: Path) -> None:
    """A new cluster in ``datadir`` with a trusting ``postgres`` superuser."""
    datadir.parent.mkdir(parents=True, exist_ok=True)
    _give_to_cluster_user(datadir.parent)
    result = subprocess.run(
        [
            str(INITDB),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={**os.environ, "LC_ALL": "C"},
        **_run_as(),
    )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr[-2000:]}")


class PostgresProcess:
    """One private postgres server on 127.0.0.1; ``restart()`` keeps its port and data."""

    def __init__(self, workdir: Path, template: Path | None = None, port: int | None = None):
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.socketdir = workdir / "sockets"
        self.socketdir.mkdir(exist_ok=True)
        if template is not None:
            shutil.copytree(template, self.datadir, symlinks=True)
            self.datadir.chmod(0o700)
        else:
            initdb(self.datadir)
        _give_to_cluster_user(workdir)
        self.port = free_port() if port is None else port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dsn(self, database: str = "postgres", **params: str) -> str:
        return with_params(f"postgresql://postgres@127.0.0.1:{self.port}/{database}", **params)

    def dsn_for(self, application_name: str, database: str = "postgres") -> str:
        return self.dsn(database, application_name=application_name)

    def _command(self) -> list[str]:
        return [
            str(POSTGRES), "-D", str(self.datadir), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-k", str(self.socketdir),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=100", "-c", "shared_buffers=16MB",
        ]  # fmt: skip

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def start(self) -> PostgresProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self._command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            env={**os.environ, "LC_ALL": "C"},
            **_run_as(),
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres on port {self.port} exited: {self.log_tail()}")
            if reachable(self.dsn(), timeout=1.0) is None:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres on port {self.port} did not start: {self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, how: signal.Signals = signal.SIGINT) -> None:
        """Stop the postmaster by pid: SIGINT is a fast shutdown (sessions are ended),
        SIGQUIT an immediate one (crash recovery at the next start). Falls back to
        SIGKILL if it does not end in time."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, how)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, down_for: float = 0.0, how: signal.Signals = signal.SIGINT) -> None:
        self.stop(how)
        time.sleep(down_for)
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
