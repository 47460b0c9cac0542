"""Interchangeable channel layers for Django Channels.

Backends live in subpackages so that importing one never imports another's driver:
``layers.memory``, ``layers.redis``, ``layers.postgres``, ``layers.amqp``.
"""

from layers.base import BaseLayer
from layers.errors import (
    BackendUnavailable,
    ChannelFull,
    ConfigurationError,
    LayerError,
    MessageTooLarge,
    UndecodableMessage,
)

__all__ = [
    "BackendUnavailable",
    "BaseLayer",
    "ChannelFull",
    "ConfigurationError",
    "LayerError",
    "MessageTooLarge",
    "UndecodableMessage",
]
