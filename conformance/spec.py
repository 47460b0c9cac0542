"""What the suite needs to know about a layer: how to build it and how far its state reaches.

Kept to the standard library so that ``conformance.plugin`` (loaded in every pytest run)
can import it cheaply.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LayerSpec", "accepts_keyword", "load_factory"]


@dataclass
class LayerSpec:
    """How to build the layer under test.

    ``factory`` is called as ``factory(**config)``, the way Channels builds a backend
    from ``CONFIG``. ``local`` says the layer's state lives in one instance (an in-memory
    layer), so the instance that stands in for "another process" is the same object.
    """

    factory: Callable[..., Any]
    config: dict[str, Any] = field(default_factory=dict)
    local: bool = False

    @property
    def takes_prefix(self) -> bool:
        return accepts_keyword(self.factory, "prefix")


def accepts_keyword(factory: Callable[..., Any], name: str) -> bool:
    """True if ``factory`` names ``name`` as a parameter.

    A bare ``**kwargs`` does not count: a layer that merely forwards unknown keys (to a
    base class that may reject them) has not promised to honour the option.
    """
    target: Any = factory.__init__ if inspect.isclass(factory) else factory
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get(name)
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def load_factory(path: str) -> Callable[..., Any]:
    """Resolve ``package.module:factory`` or ``package.module.ClassName``."""
    if ":" in path:
        module_name, _, attribute_path = path.partition(":")
        module = importlib.import_module(module_name)
    else:
        module_name, attribute_path, module = _import_longest_module(path)
    if not module_name or not attribute_path:
        raise ValueError(
            f"cannot read layer {path!r}: expected 'package.module:factory' "
            "or 'package.module.ClassName'"
        )
    target: Any = module
    for attribute in attribute_path.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attribute_path!r}") from None
    if not callable(target):
        raise ValueError(f"layer factory {path!r} is not callable: {target!r}")
    return target  # type: ignore[no-any-return]


def _import_longest_module(path: str) -> tuple[str, str, Any]:
    """Split a dotted path into the longest importable module and the attributes after it,
    so that nested attributes (``pkg.mod.Outer.factory``) resolve too."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing candidate module means "try a shorter one"; anything missing
            # inside a module that does exist is a real error.
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        return module_name, ".".join(parts[cut:]), module
    raise ModuleNotFoundError(f"no importable module in {path!r}")
