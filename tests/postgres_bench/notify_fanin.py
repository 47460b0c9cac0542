"""NOTIFY under fan-in: what the NOTIFY in ``send.sql`` costs several producer processes.

Every transaction that NOTIFYs takes a cluster-wide lock at commit. This measures the
aggregate send rate of 1, 2 and 4 producer processes, each sending sequentially to one
channel of one prefix while another instance LISTENs on it, once with the NOTIFY and once
with it taken out of the statement. Bounded: 1,500 sends a producer.

    python -m tests.postgres_bench.notify_fanin [DSN]
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
import time
from multiprocessing.synchronize import Event
from typing import Any

import psycopg

SENDS = 1500
DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _without_notify() -> None:
    from layers.postgres import sql

    load = sql.load.__wrapped__

    def patched(name: str) -> str:
        text: str = load(name)
        if name == "send":
            text = text.replace("SELECT pg_notify(%(listen)s, %(key)s)", "SELECT 1")
        return text

    sql.load = patched  # type: ignore[assignment]
    sql.statement.cache_clear()


def _producer(dsn: str, prefix: str, notify: bool, start: Event, out: Any) -> None:
    if not notify:
        _without_notify()
    from layers.postgres import PostgresChannelLayer

    async def main() -> None:
        layer = PostgresChannelLayer(dsn=dsn, prefix=prefix, capacity=10**6)
        await layer.send("warm", {"type": "w"})
        start.wait()
        began = time.perf_counter()
        for n in range(SENDS):
            await layer.send("fan", {"type": "m", "n": n, "text": "x" * 100})
        out.put(time.perf_counter() - began)
        await layer.close()

    asyncio.run(main())


def _listener(dsn: str, prefix: str, stop: Event) -> None:
    from layers.postgres import PostgresChannelLayer

    async def main() -> None:
        layer = PostgresChannelLayer(dsn=dsn, prefix=prefix)
        waiting = asyncio.create_task(layer.receive("idle"))
        await asyncio.to_thread(stop.wait)
        waiting.cancel()
        await layer.close()

    asyncio.run(main())


def measure(dsn: str, producers: int, notify: bool) -> float:
    prefix = f"notify-fanin-{time.time()}"
    ctx = mp.get_context("spawn")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    listener = ctx.Process(target=_listener, args=(dsn, prefix, stop))
    listener.start()
    workers = [
        ctx.Process(target=_producer, args=(dsn, prefix, notify, start, out))
        for _ in range(producers)
    ]
    for worker in workers:
        worker.start()
    time.sleep(3.0)  # every process connected and warmed up
    began = time.perf_counter()
    start.set()
    for _ in workers:
        out.get(timeout=120)
    rate = producers * SENDS / (time.perf_counter() - began)
    for worker in workers:
        worker.join(timeout=30)
    stop.set()
    listener.join(timeout=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM channel_layers_v2_messages WHERE prefix = %s", (prefix,))
    return rate


def main() -> None:
    dsn = sys.argv[1] if len(sys.argv) > 1 else DSN
    print("| producer processes | with NOTIFY | without | cost |")
    print("|--:|--:|--:|--:|")
    for producers in (1, 2, 4):
        with_notify = measure(dsn, producers, True)
        without = measure(dsn, producers, False)
        cost = 1 - with_notify / without
        print(f"| {producers} | {with_notify:,.0f} msg/s | {without:,.0f} msg/s | {cost:.0%} |")


if __name__ == "__main__":
    main()
