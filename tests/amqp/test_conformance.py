"""The shared conformance suite on the shared RabbitMQ broker."""

from __future__ import annotations

import pytest

from conformance import ConformanceSuite, LayerSpec
from layers.amqp import AmqpChannelLayer


class TestShared(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, shared_amqp: str) -> LayerSpec:
        return LayerSpec(AmqpChannelLayer, config={"url": shared_amqp})
