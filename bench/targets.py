"""Turn what the user typed (a URL or a dotted path plus JSON config) into a layer spec.

The spec is plain data so it crosses the spawn boundary by pickling; the layer class
itself is only imported inside the worker processes.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MEMORY_CLASS = "layers.memory.InMemoryChannelLayer"
REDIS_CLASS = "layers.redis.RedisChannelLayer"
POSTGRES_CLASS = "layers.postgres.PostgresChannelLayer"
AMQP_CLASS = "layers.amqp.AmqpChannelLayer"

DEFAULT_LAYER = "memory://"


class TargetError(ValueError):
    """The layer description itself is malformed (a usage error, not a layer failure)."""


@dataclass(frozen=True)
class Target:
    """One layer to measure: which callable to build it with, and how it is reached."""

    label: str
    factory: str
    config: dict[str, Any] = field(default_factory=dict)
    in_process: bool = False

    def with_config(self, extra: dict[str, Any]) -> Target:
        return replace(self, config={**self.config, **extra})


def redact(url: str) -> str:
    """Hide a password so labels can go into tables, JSON files and CI logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_target(text: str) -> Target:
    """Map a URL or dotted path to a Target; config and reach may be attached later."""
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        label = redact(text)
        if scheme == "memory":
            return Target(label, MEMORY_CLASS, {}, in_process=True)
        if scheme in ("redis", "rediss", "unix"):
            return Target(label, REDIS_CLASS, {"hosts": [text]})
        if scheme in ("postgres", "postgresql"):
            return Target(label, POSTGRES_CLASS, {"dsn": text})
        if scheme in ("amqp", "amqps"):
            return Target(label, AMQP_CLASS, {"url": text})
        raise TargetError(f"unknown layer URL scheme {scheme!r} in {label!r}")
    module, _, attr = text.replace(":", ".").rpartition(".")
    if not module or not attr or not all(p.isidentifier() for p in [*module.split("."), attr]):
        raise TargetError(f"{text!r} is neither a layer URL nor a dotted path module.Class")
    return Target(text, f"{module}.{attr}")


def parse_config(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TargetError(f"--config is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TargetError("--config must be a JSON object of keyword arguments")
    return value


def load_factory(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None


def accepts_prefix(factory: Any) -> bool:
    """True when ``prefix`` is a named parameter of the factory or of a base class that
    its ``**kwargs`` are forwarded to.

    Our layers take ``**config`` and hand it to ``BaseLayer``, which names ``prefix``;
    Channels' in-memory layer takes ``**kwargs`` that end at a base without one, so a
    prefix there would be meaningless. A real prefix namespaces server-side state, which
    is what keeps runs from seeing each other's leftovers.
    """
    if not inspect.isclass(factory):
        return _names_prefix(factory) is True
    for cls in factory.__mro__:
        if "__init__" in vars(cls):
            verdict = _names_prefix(vars(cls)["__init__"])
            if verdict is not None:
                return verdict
    return False


def _names_prefix(function: Any) -> bool | None:
    """True/False if the signature settles it, None if it passes ``**kwargs`` along."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("prefix")
    if param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return False


def build_layer(target: Target, prefix: str) -> Any:
    """Import and construct the layer; only ever called inside a worker process."""
    factory = load_factory(target.factory)
    config = dict(target.config)
    if "prefix" not in config and accepts_prefix(factory):
        config["prefix"] = prefix
    return factory(**config)
