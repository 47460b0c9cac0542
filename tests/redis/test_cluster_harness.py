"""The private test cluster itself (tests/redis/cluster.py): formed, resharded, failed over
and stopped as the layer's cluster tests expect. Runs in module order on one cluster; the
failover test comes last as it changes which nodes are masters."""

from __future__ import annotations

import os

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncClusterClient
from redis.crc import key_slot

from tests.conftest import in_ci
from tests.redis.cluster import RedisCluster, cluster_support
from tests.redis.harness import ping

pytestmark = [pytest.mark.xdist_group("redis-cluster"), pytest.mark.timeout(120)]


def tags_by_master(cluster: RedisCluster) -> dict[int, str]:
    """A hash tag whose slot each master owns, by the master's port."""
    found: dict[int, str] = {}
    masters = cluster.masters()
    for i in range(10_000):
        tag = f"tag{i}"
        owner = next(node for node in masters if node.owns(key_slot(tag.encode())))
        found.setdefault(owner.port, tag)
        if len(found) == len(masters):
            return found
    raise AssertionError("no hash tag found for every master")


def test_formed_with_three_masters_each_with_a_replica(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.urls) == 6
    for port in redis_cluster.ports:
        with redis_cluster.client(port) as client:
            assert b"cluster_state:ok" in client.execute_command("CLUSTER INFO")
    masters, replicas = redis_cluster.masters(), redis_cluster.replicas()
    assert len(masters) == 3
    assert sum(node.slot_count for node in masters) == 16384
    assert sorted(node.master_id or "" for node in replicas) == sorted(m.id for m in masters)


async def test_keys_with_different_tags_land_on_different_masters(
    redis_cluster: RedisCluster,
) -> None:
    tags = tags_by_master(redis_cluster)
    client = AsyncClusterClient.from_url(redis_cluster.urls[0])
    try:
        for tag in tags.values():
            await client.set(f"{{{tag}}}:k", tag)
    finally:
        await client.aclose()
    for port, tag in tags.items():
        with redis_cluster.client(port) as direct:
            assert direct.get(f"{{{tag}}}:k") == tag.encode()
            assert direct.execute_command("CLUSTER COUNTKEYSINSLOT", key_slot(tag.encode())) == 1


async def test_reshard_moves_slots_with_their_keys(redis_cluster: RedisCluster) -> None:
    source, target, _ = sorted(redis_cluster.masters(), key=lambda node: node.port)
    # redis-cli moves the source's lowest slots first.
    slot = source.slots[0][0]
    tag = next(f"r{i}" for i in range(100_000) if key_slot(f"r{i}".encode()) == slot)
    client = AsyncClusterClient.from_url(redis_cluster.urls[0])
    try:
        await client.set(f"{{{tag}}}:k", "v")
        redis_cluster.reshard(source, target, 100)
        assert await client.get(f"{{{tag}}}:k") == b"v"
    finally:
        await client.aclose()
    after = {node.id: node for node in redis_cluster.masters()}
    assert after[source.id].slot_count == source.slot_count - 100
    assert after[target.id].slot_count == target.slot_count + 100
    assert after[target.id].owns(slot)
    with redis_cluster.client(target.port) as direct:
        assert direct.get(f"{{{tag}}}:k") == b"v"


def test_kill_master_promotes_its_replica(redis_cluster: RedisCluster) -> None:
    master = max(redis_cluster.masters(), key=lambda node: node.port)
    replica = next(node for node in redis_cluster.replicas() if node.master_id == master.id)
    tag = next(f"f{i}" for i in range(100_000) if master.owns(key_slot(f"f{i}".encode())))
    with redis_cluster.client(master.port) as direct:
        direct.set(f"{{{tag}}}:k", "kept")
        assert direct.execute_command("WAIT", 1, 5000) == 1
    took = redis_cluster.kill_master(master)
    print(f"failover took {took:.2f} s")
    assert took < 15
    promoted = next(node for node in redis_cluster.masters() if node.id == replica.id)
    assert promoted.slots == master.slots
    with redis_cluster.client(promoted.port) as direct:
        assert direct.get(f"{{{tag}}}:k") == b"kept"
    redis_cluster.restart(master)
    rejoined = next(node for node in redis_cluster.nodes() if node.id == master.id)
    assert not rejoined.master and rejoined.master_id == replica.id


def test_stop_kills_every_node_and_removes_its_files() -> None:
    problem = cluster_support()
    if problem is not None:
        (pytest.fail if in_ci() else pytest.skip)(problem)
    cluster = RedisCluster().start()
    pids = [proc.pid for proc in cluster.procs.values()]
    workdir = cluster.workdir
    cluster.stop()
    assert not workdir.exists()
    for pid in pids:
        # Reaped, so the pid is gone (its reuse within these milliseconds is unlikely).
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(ping(port) for port in cluster.ports)
