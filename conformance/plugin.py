"""pytest plugin: ``--layer``, ``--layer-config`` and ``--layer-local``.

Registered through the ``pytest11`` entry point, so it is loaded by every pytest run in an
environment where this package is installed: it imports only pytest and the standard
library (``conformance.spec`` is stdlib-only), and does nothing unless its options are used.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conformance.spec import LayerSpec, load_factory

LAYER = "conformance_layer"
LAYER_CONFIG = "conformance_layer_config"
LAYER_LOCAL = "conformance_layer_local"

_spec_key = pytest.StashKey[LayerSpec]()


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


def layer_spec_from_options(config: pytest.Config) -> LayerSpec | None:
    """The spec named by ``--layer``, resolved once per run; None without ``--layer``."""
    path = config.getoption(LAYER)
    if not path:
        return None
    if _spec_key not in config.stash:
        try:
            factory = load_factory(path)
        except (ImportError, ValueError) as exc:
            hint = ""
            if isinstance(exc, ModuleNotFoundError):
                # The usual cause: plain `pytest` does not put the current directory on
                # sys.path the way `python -m pytest` does.
                hint = " (install it, or run `python -m pytest` from the directory holding it)"
            raise pytest.UsageError(
                f"--layer {path!r}: {type(exc).__name__}: {exc}{hint}"
            ) from None
        config.stash[_spec_key] = LayerSpec(
            factory=factory,
            config=layer_config(config),
            local=bool(config.getoption(LAYER_LOCAL)),
        )
    return config.stash[_spec_key]


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not _is_xdist_worker(config) and bool(config.getoption("numprocesses", None))


def pytest_configure(config: pytest.Config) -> None:
    # A malformed config is reported before anything runs, rather than once per test.
    layer_config(config)
    # The xdist controller never collects, and a usage error raised by a worker is an
    # internal error, so with -n the layer is resolved here, up front.
    if _is_xdist_controller(config):
        layer_spec_from_options(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Resolved after collection, when test directories are importable, yet before any test:
    # a wrong --layer is then one clear usage error instead of an error per test.
    if not _is_xdist_worker(session.config):
        layer_spec_from_options(session.config)
