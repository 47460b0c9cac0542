"""The shared conformance suite on the shared RabbitMQ broker."""

from __future__ import annotations

import pytest

from conformance import ConformanceSuite, LayerSpec
from conformance.suite.base import LayerFactory
from conformance.suite.helpers import Names
from layers.amqp import AmqpChannelLayer


class TestShared(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, shared_amqp: str) -> LayerSpec:
        return LayerSpec(AmqpChannelLayer, config={"url": shared_amqp})

    # Known defect, open in issue #9: about one run in six, a group message to a local
    # channel is not received when 8 threads share one instance through async_to_sync
    # (the event loop that consumes the instance's inbox changes as threads' loops close;
    # see tests/amqp/test_faults.py for the inbox's auto-ack losses). Not strict: it
    # passes most runs, and must be fixed, not hidden, before #9 is resolved.
    @pytest.mark.xfail(strict=False, reason="issue #9: group message lost under 8 threads")
    def test_threads_share_one_instance(self, make_sync_layer: LayerFactory, names: Names) -> None:
        super().test_threads_share_one_instance(make_sync_layer, names)
