"""Faults the soak injects: the server drops every connection of the layer's instances, or
(``--restart``) the private server restarts.

The layer's connections are found by the name the soak has them carry, its ``prefix``:
Redis ``CLIENT LIST`` by client name (the soak sets ``client_name``), PostgreSQL
``pg_stat_activity`` by ``application_name`` (the soak puts it in the DSN), RabbitMQ
connections whose ``connection_name`` the layer itself starts with its prefix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

CTL_TIMEOUT = 60.0


class FaultError(RuntimeError):
    """A fault could not be injected (the admin call failed): named with its backend."""


def with_query(dsn: str, **params: str) -> str:
    """``dsn`` with query parameters added or replaced; split by hand, since urlunsplit
    drops the ``//`` of a URL without a host (``postgresql://`` means the local server)."""
    base, _, query = dsn.partition("?")
    merged = {**dict(parse_qsl(query)), **params}
    return f"{base}?{urlencode(merged, quote_via=quote)}"


def _kill_redis(url: str, name: str) -> int:
    import redis

    admin = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
        return sum(int(admin.client_kill_filter(_id=i)) for i in ids)
    finally:
        admin.close()


def _kill_postgres(dsn: str, name: str) -> int:
    import psycopg

    admin = with_query(dsn, application_name=f"{name}-faults")
    with psycopg.connect(admin, connect_timeout=5, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def rabbitmqctl(*args: str, node: str | None = None) -> str:
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    command = [binary, *(["-n", node] if node else []), *args]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FaultError(f"{' '.join(command)}: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-500:]
        raise FaultError(f"{' '.join(command)} failed ({result.returncode}): {detail}")
    return result.stdout


_CONNECTION_NAME = re.compile(r'\{"connection_name","((?:[^"\\]|\\.)*)"\}')


def amqp_connections(prefix: str, node: str | None = None) -> list[str]:
    """Pids (as rabbitmqctl prints them) of the connections named ``<prefix> ...``."""
    # Not --formatter json: it prints pids that close_connection cannot take.
    out = rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "client_properties", node=node
    )
    pids = []
    for line in out.splitlines():
        pid, _, properties = line.partition("\t")
        match = _CONNECTION_NAME.search(properties)
        if not match or not pid.startswith("<"):
            continue
        try:
            name = str(json.loads(f'"{match.group(1)}"'))
        except ValueError:
            name = match.group(1)
        if name.startswith(f"{prefix} "):
            pids.append(pid)
    return pids


def _kill_amqp(prefix: str, node: str | None) -> int:
    pids = amqp_connections(prefix, node)
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    # One rabbitmqctl takes about a second to start: close them all at once.
    closers = [
        subprocess.Popen(
            [binary, *(["-n", node] if node else []), "close_connection", pid, "soak fault"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        for pid in pids
    ]
    # A failed close is a connection that went away between the listing and the close.
    return sum(closer.wait(timeout=CTL_TIMEOUT) == 0 for closer in closers)


@dataclass(frozen=True)
class Killer:
    """How to drop the connections of the layers named ``prefix`` on one server."""

    backend: str  # "redis", "postgres" or "amqp"
    address: str  # the URL or DSN the layer uses
    prefix: str
    node: str | None = None  # a private RabbitMQ node's name, for rabbitmqctl -n

    def kill(self) -> int:
        """Drop them all; how many the server dropped."""
        try:
            if self.backend == "redis":
                return _kill_redis(self.address, self.prefix)
            if self.backend == "postgres":
                return _kill_postgres(self.address, self.prefix)
            if self.backend == "amqp":
                return _kill_amqp(self.prefix, self.node)
        except FaultError:
            raise
        except Exception as exc:
            raise FaultError(f"dropping {self.backend} connections failed: {exc}") from exc
        raise FaultError(f"no way to drop connections of a {self.backend!r} layer")


def named_config(backend: str, config: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The layer's config with its connections named after ``prefix``, where the server
    can only tell them apart by a name the client gives (Redis, PostgreSQL)."""
    config = dict(config)
    if backend == "redis":
        hosts = config.get("hosts")
        if isinstance(hosts, list) and all(isinstance(h, str) for h in hosts):
            config["hosts"] = [{"address": h, "client_name": prefix} for h in hosts]
    elif backend == "postgres" and isinstance(config.get("dsn"), str):
        config["dsn"] = with_query(config["dsn"], application_name=prefix)
    return config
