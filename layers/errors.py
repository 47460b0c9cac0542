"""The exceptions layers raise beyond the ones Channels defines.

``channels.exceptions.ChannelFull`` and ``MessageTooLarge`` are re-exported so callers can
import every error from one place; ``TypeError`` stays the error for bad names and messages
because that is what Channels' own layers and consumers expect.
"""

from __future__ import annotations

from channels.exceptions import ChannelFull, MessageTooLarge

__all__ = [
    "BackendUnavailable",
    "ChannelFull",
    "ConfigurationError",
    "ForeignChannel",
    "LayerError",
    "MessageTooLarge",
    "ServerError",
    "UndecodableMessage",
]


class LayerError(Exception):
    """Base of the errors a layer raises about its backend (not about caller input)."""


class BackendUnavailable(LayerError, ConnectionError):
    """The server behind a layer could not be reached; ``address`` names it."""

    def __init__(self, address: str, reason: str | BaseException) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"channel layer backend at {address} is unavailable: {reason}")


class ServerError(LayerError):
    """The server answered a command with an error (out of memory, read-only replica after
    a failover, a permission the account lacks); ``address`` names the server."""

    def __init__(self, address: str, reason: str | BaseException) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"channel layer backend at {address} refused a command: {reason}")


class ForeignChannel(LayerError, ValueError):
    """A receive on a process-local channel that another layer instance owns.

    Its messages only ever reach the instance that made it with ``new_channel()``, so such a
    receive could never return: it fails at once instead.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        super().__init__(
            f"cannot receive on {channel!r}: it is a process-local channel of another layer "
            "instance (only the instance whose new_channel() made it can receive on it)"
        )


class ConfigurationError(LayerError, TypeError):
    """A layer was built with config it cannot use.

    A ``TypeError`` too, so that unknown or ill-typed ``CONFIG`` keys fail the way a bad
    keyword argument does in plain Python.
    """


class UndecodableMessage(LayerError):
    """Bytes taken off a backend could not be turned back into a message.

    Raised for a message encrypted with a key this layer does not hold, or bytes some other
    program wrote under our prefix; receivers drop such a message and keep going.
    """
