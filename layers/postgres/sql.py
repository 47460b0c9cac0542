"""The SQL under this package, one statement a file, read once per process."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load(name: str) -> str:
    return (files("layers.postgres") / f"{name}.sql").read_text()


def schema(durable: bool) -> str:
    """The DDL; a durable layer's tables are ordinary (logged) ones."""
    ddl = load("schema")
    return ddl.replace("CREATE UNLOGGED TABLE", "CREATE TABLE") if durable else ddl
