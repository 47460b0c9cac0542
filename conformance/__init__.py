"""A reusable pytest suite checking any channel layer against the project's contract.

Run it against a layer from the command line (the ``conformance.plugin`` adds the options)::

    pytest --pyargs conformance --layer mypkg.layer:make_layer \
        --layer-config '{"hosts": ["redis://127.0.0.1:6379/0"]}'
    pytest --pyargs conformance --layer mypkg.layer.InMemoryLayer --layer-local

or subclass the suite in a test module of your own::

    class TestMyLayer(ConformanceSuite):
        @pytest.fixture
        def layer_spec(self) -> LayerSpec:
            return LayerSpec(MyLayer, config={"hosts": [...]})

Tests are parallel-safe under pytest-xdist when the factory takes a ``prefix`` keyword:
each test then builds its layers under a prefix of its own. Requires pytest-asyncio.
Every wait is bounded, except that a layer swallowing ``CancelledError`` can still hang
event-loop teardown; pytest-timeout guards against that.

This package also holds the plugin, which loads in every pytest run, so importing it must
stay cheap: the suite itself (which imports Channels, asgiref and pytest-asyncio) is only
loaded when ``ConformanceSuite`` is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from conformance.spec import LayerSpec

# Plain asserts in the suite's modules should explain themselves like those in test files.
pytest.register_assert_rewrite("conformance.suite")

if TYPE_CHECKING:
    from conformance.suite import ConformanceSuite

__all__ = ["ConformanceSuite", "LayerSpec"]


def __getattr__(name: str) -> Any:
    if name == "ConformanceSuite":
        from conformance.suite import ConformanceSuite

        return ConformanceSuite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
