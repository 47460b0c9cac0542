"""How one group_send to 200 members spread over 20 instances costs on one plain server and
on clusters of 3, 4 and 6 masters (no replicas): p50 and p90 of 200 calls, in ms.

    python -m tests.redis_bench.cluster_group   (figures in docs/benchmarks.md)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from layers.redis import RedisChannelLayer
from tests.redis.cluster import RedisCluster


async def measure(
    hosts: list[Any], sends: int = 200, instances: int = 20, per: int = 10
) -> tuple[float, float]:
    prefix = "cg" + uuid.uuid4().hex[:6]
    owners = [RedisChannelLayer(hosts=hosts, prefix=prefix) for _ in range(instances)]
    sender = RedisChannelLayer(hosts=hosts, prefix=prefix)
    for o in owners:
        for _ in range(per):
            await o.group_add("room", await o.new_channel())
    await sender.group_send("room", {"type": "warm"})
    times = []
    for n in range(sends):
        t = time.perf_counter()
        await sender.group_send("room", {"type": "m", "n": n})
        times.append((time.perf_counter() - t) * 1000)
    await sender.flush()
    for layer in (sender, *owners):
        await layer.close()
    times.sort()
    return round(statistics.median(times), 3), round(times[int(0.9 * len(times))], 3)


def main() -> None:
    out: dict[str, tuple[float, float]] = {}
    out["one server 6379"] = asyncio.run(measure(["redis://127.0.0.1:6379/0"]))
    print(out, flush=True)
    for masters in (3, 4, 6):
        cluster = RedisCluster(size=masters, replicas=0).start()
        try:
            out[f"cluster {masters} masters"] = asyncio.run(
                measure([{"cluster": cluster.urls[:2]}])
            )
            print(out, flush=True)
        finally:
            cluster.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
