"""The SQL under this package, one statement a file, read once per process."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

_NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class Statement:
    """A statement with PostgreSQL's own ``$n`` placeholders, run by a raw cursor.

    The files name their parameters (``%(prefix)s``) for the reader; they are turned into
    positions once, here, because psycopg would otherwise parse the query again on every
    execute (about 15% of a send's time here).
    """

    text: str
    names: tuple[str, ...]

    def args(self, params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.names)


@cache
def load(name: str) -> str:
    return (files("layers.postgres") / f"{name}.sql").read_text()


@cache
def statement(name: str) -> Statement:
    names: list[str] = []

    def position(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return Statement(_NAMED.sub(position, load(name)), tuple(names))


def schema(durable: bool) -> str:
    """The DDL; a durable layer's tables are ordinary (logged) ones."""
    ddl = load("schema")
    return ddl.replace("CREATE UNLOGGED TABLE", "CREATE TABLE") if durable else ddl
