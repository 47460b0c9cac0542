"""``python -m layers.postgres init|sql``: the schema, for sites that forbid DDL at run time.

    python -m layers.postgres sql [--durable]            print the DDL
    python -m layers.postgres init [--dsn DSN] [--durable]   create the tables now

The layer creates the same tables on first use when they are missing; ``init`` lets a
migration step (or a DBA) do it instead, with an account that may run DDL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from layers.errors import LayerError
from layers.postgres import sql
from layers.postgres.layer import PostgresChannelLayer


async def _init(dsn: str | None, durable: bool) -> None:
    layer = PostgresChannelLayer(dsn=dsn, durable=durable)
    try:
        await layer.ensure_schema()
    finally:
        await layer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layers.postgres", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("sql", help="print the DDL")
    show.add_argument("--durable", action="store_true", help="logged tables, not UNLOGGED")
    init = commands.add_parser("init", help="create the tables (idempotent)")
    init.add_argument("--dsn", help="libpq conninfo or URL (default: the PG* variables)")
    init.add_argument("--durable", action="store_true", help="logged tables, not UNLOGGED")
    args = parser.parse_args(argv)
    if args.command == "sql":
        sys.stdout.write(sql.schema(args.durable))
        return 0
    try:
        asyncio.run(_init(args.dsn, args.durable))
    except LayerError as exc:
        print(f"init failed: {exc}", file=sys.stderr)
        return 1
    print("channel layer tables are in place")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
