"""The shared conformance suite on one Redis, on three shards, and through Sentinel."""

from __future__ import annotations

import pytest

from conformance import ConformanceSuite, LayerSpec
from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess


class TestOneShard(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, shared_redis: str) -> LayerSpec:
        return LayerSpec(RedisChannelLayer, config={"hosts": [shared_redis]})


class TestThreeShards(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, three_shards: list[RedisProcess]) -> LayerSpec:
        return LayerSpec(
            RedisChannelLayer, config={"hosts": [server.url for server in three_shards]}
        )


class TestSentinel(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, sentinel_setup: tuple[RedisProcess, RedisProcess]) -> LayerSpec:
        _, sentinel = sentinel_setup
        hosts = [{"sentinels": [("127.0.0.1", sentinel.port)], "master_name": "mymaster"}]
        return LayerSpec(RedisChannelLayer, config={"hosts": hosts})
