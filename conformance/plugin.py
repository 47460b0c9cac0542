"""pytest plugin: ``--layer``, ``--layer-config`` and ``--layer-local``.

Registered through the ``pytest11`` entry point, so it is loaded by every pytest run in an
environment where this package is installed: it imports only pytest and the standard
library, and does nothing unless its options are used.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

LAYER = "conformance_layer"
LAYER_CONFIG = "conformance_layer_config"
LAYER_LOCAL = "conformance_layer_local"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "channel layer conformance suite")
    group.addoption(
        "--layer",
        dest=LAYER,
        default=None,
        metavar="SPEC",
        help="channel layer to check: 'package.module:factory' or 'package.module.ClassName' "
        "(run with: pytest --pyargs conformance --layer SPEC)",
    )
    group.addoption(
        "--layer-config",
        dest=LAYER_CONFIG,
        default=None,
        metavar="JSON",
        help='base config for the layer as a JSON object, e.g. \'{"hosts": ["redis://..."]}\'',
    )
    group.addoption(
        "--layer-local",
        dest=LAYER_LOCAL,
        action="store_true",
        default=False,
        help="the layer keeps its state in one instance (in-memory): cross-instance checks "
        "use a single instance",
    )


def layer_config(config: pytest.Config) -> dict[str, Any]:
    raw = config.getoption(LAYER_CONFIG)
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise pytest.UsageError(f"--layer-config is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise pytest.UsageError(f"--layer-config must be a JSON object, not {raw!r}")
    return parsed


def pytest_configure(config: pytest.Config) -> None:
    # Fail fast on a malformed config rather than once per test.
    layer_config(config)
