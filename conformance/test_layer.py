"""The suite run against the layer named on the command line.

    pytest --pyargs conformance --layer mypkg.layer:make_layer \\
        [--layer-config '{"hosts": ["redis://127.0.0.1:6379/0"]}'] [--layer-local]
"""

from __future__ import annotations

import pytest

from conformance import ConformanceSuite, LayerSpec
from conformance.plugin import layer_spec_from_options


class TestLayer(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, request: pytest.FixtureRequest) -> LayerSpec:
        try:
            spec = layer_spec_from_options(request.config)
        except pytest.UsageError as exc:
            pytest.fail(str(exc), pytrace=False)
        if spec is None:
            pytest.skip("no --layer given (pytest --pyargs conformance --layer module:factory)")
        return spec
