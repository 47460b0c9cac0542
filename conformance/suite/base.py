"""Fixtures shared by every part of the suite."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import async_to_sync

from conformance.constants import OP_TIMEOUT
from conformance.spec import LayerSpec
from conformance.suite.helpers import Names, bounded, describe

LayerFactory = Callable[..., Any]


def _build(spec: LayerSpec, prefix: str, overrides: dict[str, Any]) -> Any:
    config = {**spec.config}
    if spec.takes_prefix:
        config["prefix"] = prefix
    config.update(overrides)
    try:
        return spec.factory(**config)
    except Exception as exc:
        # Shown instead of a bare traceback so a rejected option reads as the finding.
        pytest.fail(f"building the layer with {config!r} raised {describe(exc)}")


async def _release(layer: Any, flush: bool) -> None:
    """Best-effort cleanup; failures here are reported by the flush and close tests."""
    for name in ("flush", "close") if flush else ("close",):
        method = getattr(layer, name, None)
        if callable(method):
            with contextlib.suppress(Exception):
                await bounded(method(), OP_TIMEOUT)


class SuiteBase:
    """Fixtures: ``layer_spec`` (to override), ``make_layer``, ``layer``, ``other_layer``."""

    @pytest.fixture
    def layer_spec(self) -> LayerSpec:
        pytest.skip(
            "no layer to test: override the 'layer_spec' fixture in your ConformanceSuite "
            "subclass, or run 'pytest --pyargs conformance --layer module:factory'"
        )

    @pytest.fixture
    def conformance_prefix(self) -> str:
        return "conf" + uuid.uuid4().hex[:10]

    @pytest.fixture
    def names(self, conformance_prefix: str) -> Names:
        # Reusing the prefix in names keeps tests apart even for layers without a prefix.
        return Names(conformance_prefix)

    @pytest.fixture
    def build_layer(self, layer_spec: LayerSpec, conformance_prefix: str) -> LayerFactory:
        """Build layers that the test closes itself (for tests that run their own loops)."""

        def build(**overrides: Any) -> Any:
            return _build(layer_spec, conformance_prefix, overrides)

        return build

    @pytest.fixture
    def make_sync_layer(
        self, layer_spec: LayerSpec, build_layer: LayerFactory
    ) -> Iterator[LayerFactory]:
        """For synchronous tests that drive layers from loops of their own.

        Cleanup runs in yet another fresh loop, as ``async_to_sync`` would.
        """
        built: list[Any] = []

        def make(**overrides: Any) -> Any:
            layer = build_layer(**overrides)
            built.append(layer)
            return layer

        yield make
        for layer in built:
            async_to_sync(_release)(layer, layer_spec.takes_prefix)

    @pytest_asyncio.fixture(loop_scope="function")
    async def make_layer(
        self, layer_spec: LayerSpec, conformance_prefix: str
    ) -> AsyncIterator[LayerFactory]:
        """Build layers sharing this test's prefix; closed in the test's loop afterwards."""
        built: list[Any] = []

        def make(**overrides: Any) -> Any:
            layer = _build(layer_spec, conformance_prefix, overrides)
            built.append(layer)
            return layer

        yield make
        # Flushing only under a private prefix: without one, flush would wipe the state of
        # tests running in parallel against the same server.
        for layer in built:
            await _release(layer, flush=layer_spec.takes_prefix)

    @pytest.fixture
    def layer(self, make_layer: LayerFactory) -> Any:
        return make_layer()

    @pytest.fixture
    def other_layer(self, layer_spec: LayerSpec, make_layer: LayerFactory, layer: Any) -> Any:
        """The instance standing in for another process: ``layer`` itself if spec.local."""
        return layer if layer_spec.local else make_layer()

    @pytest.fixture
    def make_pair(
        self, layer_spec: LayerSpec, make_layer: LayerFactory
    ) -> Callable[..., tuple[Any, Any]]:
        """Like ``layer`` and ``other_layer``, with config overrides."""

        def make(**overrides: Any) -> tuple[Any, Any]:
            first = make_layer(**overrides)
            return first, first if layer_spec.local else make_layer(**overrides)

        return make
