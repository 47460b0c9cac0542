"""The shared conformance suite on the in-memory layer: one instance stands in for both
"processes", because its state lives in one object."""

from __future__ import annotations

import pytest

from conformance import ConformanceSuite, LayerSpec
from layers.memory import InMemoryChannelLayer


class TestMemoryConformance(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self) -> LayerSpec:
        return LayerSpec(InMemoryChannelLayer, local=True)
