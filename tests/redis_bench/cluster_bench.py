"""The bench on our Redis layer: one plain server (127.0.0.1:6379) beside a private cluster
of 3 masters with a replica each, interleaved, 3 runs.

    python -m tests.redis_bench.cluster_bench   (figures in docs/benchmarks.md)
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.redis.cluster import RedisCluster


def main() -> None:
    cluster = RedisCluster(size=6, replicas=1).start()
    try:
        config = json.dumps({"hosts": [{"cluster": cluster.urls[:2]}]})
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--no-progress",
                "--repeat",
                "3",
                "--workload",
                "throughput",
                "--workload",
                "fan-in",
                "--workload",
                "rpc",
                "--workload",
                "group",
                "--workload",
                "many-channels",
                "--layer",
                "redis://127.0.0.1:6379/0",
                "--name",
                "one server",
                "--layer",
                cluster.urls[0],
                "--config",
                config,
                "--name",
                "cluster, 3 masters + 3 replicas",
            ],
            check=False,
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
