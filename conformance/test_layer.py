"""The suite run against the layer named on the command line.

    pytest --pyargs conformance --layer mypkg.layer:make_layer \\
        [--layer-config '{"hosts": ["redis://127.0.0.1:6379/0"]}'] [--layer-local]
"""

from __future__ import annotations

import pytest

from conformance import ConformanceSuite, LayerSpec
from conformance.plugin import LAYER, LAYER_LOCAL, layer_config
from conformance.spec import load_factory


class TestLayer(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, request: pytest.FixtureRequest) -> LayerSpec:
        path = request.config.getoption(LAYER)
        if not path:
            pytest.skip("no --layer given (pytest --pyargs conformance --layer module:factory)")
        try:
            factory = load_factory(path)
        except (ImportError, ValueError) as exc:
            pytest.fail(f"--layer {path!r}: {type(exc).__name__}: {exc}", pytrace=False)
        return LayerSpec(
            factory=factory,
            config=layer_config(request.config),
            local=bool(request.config.getoption(LAYER_LOCAL)),
        )
