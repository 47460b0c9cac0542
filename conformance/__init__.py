"""A reusable pytest suite checking any channel layer against the project's contract.

This package is also home to the ``conformance.plugin`` pytest plugin, which loads in
every pytest run, so importing it must stay cheap: the suite itself (which imports
Channels, asgiref and pytest-asyncio) is only loaded when ``ConformanceSuite`` is used.
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
