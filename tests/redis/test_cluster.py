"""The Redis layer on a private Redis Cluster (tests/redis/cluster.py): the conformance
suite, the refusal of a cluster mixed with plain shards, and traffic while slots move
between masters and while a master dies and its replica takes over.

Until the layer accepts ``{"cluster": [...]}`` these tests skip, saying so. The module's
tests share one cluster and run in file order; the failover test comes last, as it leaves
one master without a replica."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conformance import ConformanceSuite, LayerSpec
from layers.errors import ConfigurationError
from layers.redis import RedisChannelLayer
from tests.redis.cluster import RedisCluster

pytestmark = [pytest.mark.xdist_group("redis-cluster"), pytest.mark.timeout(120)]

NOT_SUPPORTED = "the Redis layer cannot use a cluster"
# A waiting receiver must get messages again within this many seconds of a change.
RESUME_LIMIT = 5.0


async def _probe(urls: list[str]) -> str | None:
    """Why the layer cannot be used on a cluster, or None when a message gets through."""
    try:
        layer = RedisChannelLayer(hosts=[{"cluster": urls}], prefix="p" + uuid.uuid4().hex[:8])
    except Exception as exc:
        return f"{NOT_SUPPORTED} (building it raised {exc!r})"
    try:
        await asyncio.wait_for(layer.send("probe", {"type": "probe"}), 15)
        await asyncio.wait_for(layer.receive("probe"), 15)
    except TypeError as exc:
        # The cluster's options handed to a plain connection; any other error is a finding.
        if "cluster" not in str(exc):
            raise
        return f"{NOT_SUPPORTED} (a send raised {exc!r})"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(layer.flush(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(layer.close(), 10)
    return None


@pytest.fixture(scope="module")
def cluster(redis_cluster: RedisCluster) -> Iterator[RedisCluster]:
    """The module's cluster, once the layer has shown it can use one (it could not before
    issue #12: now that is a failure, not a skip)."""
    reason = asyncio.run(_probe(redis_cluster.urls[:2]))
    if reason is not None:
        pytest.fail(reason)
    yield redis_cluster


def make_layer(cluster: RedisCluster, prefix: str, **options: Any) -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[{"cluster": cluster.urls[:2]}], prefix=prefix, **options)


class TestCluster(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, cluster: RedisCluster) -> LayerSpec:
        return LayerSpec(RedisChannelLayer, config={"hosts": [{"cluster": cluster.urls}]})


def test_a_cluster_beside_plain_shards_is_refused(cluster: RedisCluster, prefix: str) -> None:
    hosts: list[Any] = [{"cluster": cluster.urls[:2]}, "redis://127.0.0.1:6379/0"]
    with pytest.raises((ConfigurationError, TypeError), match="cluster"):
        RedisChannelLayer(hosts=hosts, prefix=prefix)
    with pytest.raises((ConfigurationError, TypeError), match="cluster"):
        RedisChannelLayer(hosts=list(reversed(hosts)), prefix=prefix)


# -- traffic ---------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Numbered messages to several channels and one group, and what came back."""

    sender: RedisChannelLayer
    receiver: RedisChannelLayer
    channels: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    sent: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    send_errors: list[str] = field(default_factory=list)
    received: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    receive_times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    receive_errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self.channels = [f"c{i}" for i in range(6)]
        self.members = [f"m{i}" for i in range(2)]
        self.members += [await self.receiver.new_channel("local") for _ in range(3)]
        for member in self.members:
            await self.sender.group_add("g", member)
        for channel in self.channels:
            self.tasks.append(asyncio.create_task(self._send(channel)))
        self.tasks.append(asyncio.create_task(self._send(None)))
        for channel in self.channels + self.members:
            self.tasks.append(asyncio.create_task(self._receive(channel)))

    async def _send(self, channel: str | None) -> None:
        target = channel or "group"
        n = 0
        while not self.stop.is_set():
            n += 1
            message = {"type": "t", "src": target, "n": n}
            try:
                if channel is None:
                    await self.sender.group_send("g", message)
                else:
                    await self.sender.send(channel, message)
            except Exception as exc:
                # Not sent, or sent without an answer: either way it may be missing, never twice.
                self.send_errors.append(f"{target} #{n}: {exc!r}")
                await asyncio.sleep(0.1)
                continue
            self.sent[target].add(n)
            await asyncio.sleep(0.01)

    async def _receive(self, channel: str) -> None:
        while True:
            try:
                message = await self.receiver.receive(channel)
            except Exception as exc:
                self.receive_errors.append(f"{channel}: {exc!r}")
                await asyncio.sleep(0.1)
                continue
            self.received[(channel, message["src"])].append(message["n"])
            self.receive_times[channel].append(time.monotonic())

    def expected(self) -> dict[tuple[str, str], set[int]]:
        wanted = {(channel, channel): self.sent[channel] for channel in self.channels}
        wanted.update({(member, "group"): self.sent["group"] for member in self.members})
        return wanted

    def missing(self) -> dict[tuple[str, str], set[int]]:
        return {
            key: numbers - set(self.received.get(key, ()))
            for key, numbers in self.expected().items()
            if numbers - set(self.received.get(key, ()))
        }

    async def finish(self, drain: float = 10.0) -> None:
        """Stop sending, let receivers take what is still queued, then stop them."""
        self.stop.set()
        deadline = time.monotonic() + drain
        # Lost messages never come: stop once nothing new has arrived for two seconds.
        last_count, quiet_since = -1, time.monotonic()
        while self.missing() and time.monotonic() < deadline:
            count = sum(len(numbers) for numbers in self.received.values())
            if count != last_count:
                last_count, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since > 2.0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # time for a duplicate to show up
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def duplicates(self) -> dict[tuple[str, str], list[int]]:
        found = {}
        for key, numbers in self.received.items():
            twice = [n for n, count in Counter(numbers).items() if count > 1]
            if twice:
                found[key] = twice
        return found

    def longest_silence(self, start: float, end: float) -> tuple[float, str]:
        """The longest time a receiver went without a message while messages were sent."""
        worst, where = 0.0, ""
        for channel in self.channels + self.members:
            times = [start] + [t for t in self.receive_times[channel] if start < t < end] + [end]
            gap = max(b - a for a, b in itertools.pairwise(times))
            if gap > worst:
                worst, where = gap, channel
        return worst, where

    def report(self, what: str) -> str:
        sent = sum(len(numbers) for numbers in self.expected().values())
        lost = sum(len(numbers) for numbers in self.missing().values())
        received = sum(len(numbers) for numbers in self.received.values())
        return (
            f"{what}: {sent} deliveries expected from sends that returned, {received} "
            f"received, {lost} lost, {len(self.send_errors)} sends raised, "
            f"{len(self.receive_errors)} receives raised"
        )


async def run_traffic(cluster: RedisCluster, prefix: str, change: Any) -> tuple[Traffic, float]:
    """Traffic for a second, then ``change()`` in a thread, then a second more; returns the
    traffic and the longest silence of a receiver meanwhile."""
    options = {"retry_timeout": 15.0, "expiry": 120}
    traffic = Traffic(
        make_layer(cluster, prefix, **options), make_layer(cluster, prefix, **options)
    )
    try:
        await traffic.start()
        await asyncio.sleep(1.0)
        start = time.monotonic()
        await asyncio.to_thread(change)
        await asyncio.sleep(RESUME_LIMIT + 1.0)
        end = time.monotonic()
        await traffic.finish()
        silence, channel = traffic.longest_silence(start, end)
        print(f"longest silence of a receiver: {silence:.2f} s on {channel}")
        return traffic, silence
    finally:
        traffic.stop.set()
        for task in traffic.tasks:
            task.cancel()
        await asyncio.gather(*traffic.tasks, return_exceptions=True)
        for layer in (traffic.sender, traffic.receiver):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(layer.flush(), 10)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(layer.close(), 10)


def busiest_master(cluster: RedisCluster, prefix: str) -> int:
    counts = cluster.keys_by_master(f"*{prefix}*")
    return max(counts, key=lambda port: counts[port])


async def test_resharding_during_traffic(cluster: RedisCluster, prefix: str) -> None:
    moves: list[str] = []

    def reshard() -> None:
        # Every slot of the master holding most of the test's keys goes to another master,
        # so each of those keys moves mid-traffic (the rebalance afterwards moves some back).
        masters = {node.port: node for node in cluster.masters()}
        source = masters[busiest_master(cluster, prefix)]
        target = next(node for node in masters.values() if node.port != source.port)
        started = time.monotonic()
        cluster.reshard(source, target, source.slot_count)
        moves.append(
            f"{source.slot_count} slots {source.port}->{target.port} "
            f"in {time.monotonic() - started:.1f} s"
        )

    try:
        traffic, silence = await run_traffic(cluster, prefix, reshard)
    finally:
        await asyncio.to_thread(cluster.rebalance)
    print(traffic.report(f"resharding ({', '.join(moves)})"))
    assert not traffic.duplicates(), f"delivered twice: {traffic.duplicates()}"
    assert not traffic.receive_errors, traffic.receive_errors[:5]
    assert not traffic.missing(), f"lost while resharding: {traffic.missing()}"
    assert silence < RESUME_LIMIT + 2.0, f"a receiver waited {silence:.1f} s"


async def test_failover_during_traffic(cluster: RedisCluster, prefix: str) -> None:
    killed: list[Any] = []
    took: list[float] = []

    def kill() -> None:
        master = next(n for n in cluster.masters() if n.port == busiest_master(cluster, prefix))
        killed.append(master)
        took.append(cluster.kill_master(master))

    traffic, silence = await run_traffic(cluster, prefix, kill)
    print(f"failover of {killed[0].port} took {took[0]:.2f} s")
    print(traffic.report("failover"))
    for key, numbers in sorted(traffic.missing().items()):
        print(f"  lost on {key}: {sorted(numbers)}")
    assert not traffic.duplicates(), f"delivered twice: {traffic.duplicates()}"
    assert not traffic.receive_errors, traffic.receive_errors[:5]
    assert silence < took[0] + RESUME_LIMIT, (
        f"a receiver waited {silence:.1f} s (the failover took {took[0]:.1f} s)"
    )
