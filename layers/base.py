"""What every backend shares: config, names, capacities, serialisation and encryption.

A backend subclasses :class:`BaseLayer` and adds only its transport. Everything a caller can
get wrong (a bad name, a message that is not a dict, a value msgpack cannot carry, a message
too large) is caught here, before any backend state is touched, so bad input can never leave
half-written state behind or cost another caller a message.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import msgpack
from channels.exceptions import MessageTooLarge
from channels.layers import BaseChannelLayer

from layers.crypto import Encryptor
from layers.errors import ConfigurationError, ForeignChannel, UndecodableMessage

logger = logging.getLogger("layers")

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
MAX_NAME_LENGTH = 100

# Channels' own regexes accept any Unicode word character after the "!"; the contract is
# ASCII only, because names end up as Redis keys, SQL values and AMQP routing keys.
_CHANNEL_NAME = re.compile(r"[a-zA-Z0-9\-_.]+(![a-zA-Z0-9\-_.]*)?")
_GROUP_NAME = re.compile(r"[a-zA-Z0-9\-_.]+")
_NAME_RULE = "ASCII letters, digits, '-', '_' or '.', shorter than 100 characters"

_valid_channel_names: set[str] = set()
_VALID_NAMES_KEPT = 4096

Message = dict[str, Any]
CapacityPattern = tuple["re.Pattern[str]", int]


class BaseLayer(BaseChannelLayer):  # type: ignore[misc]
    """Base of every channel layer in this package.

    Config (all keyword arguments, every one settings-friendly):

    - ``expiry`` (60): seconds a message waits for a receiver before it is dropped.
    - ``group_expiry`` (86400): seconds a group membership lasts after its last ``group_add``.
    - ``capacity`` (100): messages a channel holds before ``send`` raises ``ChannelFull``.
    - ``channel_capacity`` (``{}``): ``{pattern: capacity}``; a pattern is a glob string or a
      compiled regex (matched with ``.match``); the first matching pattern wins.
    - ``prefix`` ("asgi"): namespace of every key, table row or queue the layer owns, so
      several projects (or tests) can share one server; ``flush`` clears only this prefix.
    - ``symmetric_encryption_keys`` (None): a list of secrets; messages are encrypted with
      the first and decrypted with any, so keys can be rotated without downtime.
    - ``max_message_size`` (1 MiB): the largest encoded message ``send`` accepts.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush", "receive_many"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _merge_config_signature(cls)

    def __init__(
        self,
        *,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[Any, int] | None = None,
        prefix: str = "asgi",
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigurationError(
                f"{type(self).__name__} got unknown config key(s): "
                + ", ".join(repr(key) for key in sorted(unknown))
            )
        self.expiry = seconds_option("expiry", expiry)
        self.group_expiry = seconds_option("group_expiry", group_expiry)
        self.capacity = int_option("capacity", capacity)
        self.max_message_size = int_option("max_message_size", max_message_size)
        if not isinstance(prefix, str) or not _GROUP_NAME.fullmatch(prefix):
            raise ConfigurationError(f"prefix must be a non-empty string of {_NAME_RULE}")
        self.prefix = prefix
        self.channel_capacity: list[CapacityPattern] = compile_capacities(channel_capacity)
        self._capacity_cache: dict[str, int] = {}
        self._encryptor = (
            Encryptor(symmetric_encryption_keys) if symmetric_encryption_keys is not None else None
        )
        # Names this instance's process-local channels, so a message to one reaches only us.
        self.client_prefix = secrets.token_hex(6)
        self._own_marker = f".{self.client_prefix}!"

    # -- names ---------------------------------------------------------------------------

    def require_valid_channel_name(self, name: Any, receive: bool = False) -> bool:
        if type(name) is not str:
            raise TypeError(f"invalid channel name {name!r}: use {_NAME_RULE}, and at most one '!'")
        if name in _valid_channel_names:
            return True
        if len(name) >= MAX_NAME_LENGTH or not _CHANNEL_NAME.fullmatch(name):
            raise TypeError(f"invalid channel name {name!r}: use {_NAME_RULE}, and at most one '!'")
        # Every send and receive checks its name; most names recur, so a set lookup
        # replaces the regex. Capped: process-local names are many and short-lived.
        if len(_valid_channel_names) >= _VALID_NAMES_KEPT:
            _valid_channel_names.clear()
        _valid_channel_names.add(name)
        return True

    def require_valid_group_name(self, name: Any) -> bool:
        if type(name) is not str or len(name) >= MAX_NAME_LENGTH or not _GROUP_NAME.fullmatch(name):
            raise TypeError(f"invalid group name {name!r}: use {_NAME_RULE}")
        return True

    def require_valid_channel_names(self, names: Any) -> list[str]:
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise TypeError(f"channels must be a list of channel names, not {names!r}")
        checked = list(names)
        if not checked:
            raise TypeError("channels must name at least one channel")
        for name in checked:
            self.require_valid_channel_name(name)
        return checked

    async def new_channel(self, prefix: str = "specific") -> str:
        """A fresh process-local channel name, ``prefix.<instance>!<random>``."""
        if not isinstance(prefix, str) or not _GROUP_NAME.fullmatch(prefix):
            raise TypeError(f"invalid new_channel prefix {prefix!r}: use {_NAME_RULE}")
        name = f"{prefix}.{self.client_prefix}!{secrets.token_hex(8)}"
        if len(name) >= MAX_NAME_LENGTH:
            raise TypeError(
                f"new_channel prefix {prefix!r} is too long: the channel name it makes adds "
                f"{len(name) - len(prefix)} characters and must be shorter than {MAX_NAME_LENGTH}"
            )
        self.require_valid_channel_name(name)
        return name

    def is_local_channel(self, name: str) -> bool:
        """True for a process-local channel created by *this* instance."""
        # A name holds at most one "!", so this is "the part before it ends in .<ours>".
        return self._own_marker in name

    def require_own_channel(self, name: str) -> None:
        """Raise :class:`ForeignChannel` for a process-local channel another instance made.

        Only its maker ever receives its messages, so a receive on it would wait forever;
        call this on a validated name before waiting.
        """
        if "!" in name and not self.is_local_channel(name):
            raise ForeignChannel(name)

    # -- capacity ------------------------------------------------------------------------

    def get_capacity(self, channel: str) -> int:
        if not self.channel_capacity:
            return self.capacity
        cached = self._capacity_cache.get(channel)
        if cached is not None:
            return cached
        found = self.capacity
        for pattern, capacity in self.channel_capacity:
            if pattern.match(channel):
                found = capacity
                break
        # Process-local names are unique and short-lived: cap the cache instead of tracking them.
        if len(self._capacity_cache) >= 4096:
            self._capacity_cache.clear()
        self._capacity_cache[channel] = found
        return found

    # -- messages ------------------------------------------------------------------------

    def encode(self, message: Any, target: str) -> bytes:
        """Check and serialise ``message`` bound for ``target`` (a channel or group).

        The bytes are the copy the contract asks for: whatever the caller does to its dict
        after ``send`` returns cannot reach the receiver.
        """
        if not isinstance(message, dict):
            raise TypeError(f"message to {target!r} must be a dict, not {type(message).__name__}")
        try:
            data: bytes = msgpack.packb(message, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"message to {target!r} cannot be serialised: {_find_unpackable(message) or exc}"
            ) from exc
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"message to {target!r} is {len(data)} bytes encoded; "
                f"max_message_size is {self.max_message_size}"
            )
        if self._encryptor is not None:
            data = self._encryptor.encrypt(data)
        return data

    def decode(self, data: bytes) -> Message:
        """Turn bytes from :meth:`encode` back into a message; raises UndecodableMessage."""
        if self._encryptor is not None:
            data = self._encryptor.decrypt(data)
        try:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except TypeError:
            # A tuple used as a map key packs as an array, which cannot be a dict key again
            # unless arrays come back as tuples.
            try:
                message = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=False)
            except Exception as exc:
                raise UndecodableMessage(f"message could not be decoded: {exc}") from exc
        except Exception as exc:
            raise UndecodableMessage(f"message could not be decoded: {exc}") from exc
        if not isinstance(message, dict):
            raise UndecodableMessage(f"decoded message is a {type(message).__name__}, not a dict")
        return message

    def decode_or_none(self, data: bytes, channel: str) -> Message | None:
        """Decode, or log and drop a message nobody can read (a wrong key, foreign bytes)."""
        try:
            return self.decode(data)
        except UndecodableMessage as exc:
            logger.warning("dropping a message on %s: %s", channel, exc)
            return None

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Release connections and tasks; the layer reopens lazily if used again."""


def _merge_config_signature(cls: type[BaseLayer]) -> None:
    """Make ``inspect.signature(cls)`` list every config key, the inherited ones included.

    Backends take their own keys and forward the rest with ``**config``; without this their
    signature would hide ``prefix``, ``expiry`` and the rest from tools (the conformance
    suite and the bench look for ``prefix`` to isolate runs) and from ``help()``.
    """
    init = cls.__dict__.get("__init__")
    if init is None:
        return
    own = inspect.signature(init)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.parameters.values()):
        return
    parent = next(base for base in cls.__mro__[1:] if issubclass(base, BaseLayer))
    inherited = inspect.signature(parent.__init__).parameters.values()
    params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in params}
    params += [
        p for p in inherited if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names
    ]
    init.__signature__ = own.replace(parameters=params)


def compile_capacities(channel_capacity: Mapping[Any, int] | None) -> list[CapacityPattern]:
    if channel_capacity is None:
        return []
    if not isinstance(channel_capacity, Mapping):
        raise ConfigurationError(
            f"channel_capacity must be a dict of pattern -> capacity, not {channel_capacity!r}"
        )
    compiled: list[CapacityPattern] = []
    for pattern, capacity in channel_capacity.items():
        value = int_option(f"channel_capacity[{pattern!r}]", capacity)
        if isinstance(pattern, re.Pattern):
            compiled.append((pattern, value))
        elif isinstance(pattern, str):
            compiled.append((re.compile(fnmatch.translate(pattern)), value))
        else:
            raise ConfigurationError(
                f"channel_capacity key {pattern!r} must be a glob string or a compiled regex"
            )
    return compiled


def seconds_option(key: str, value: Any) -> float:
    """A config value that must be a positive number of seconds; raises ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)


def int_option(key: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """A config value that must be an integer from ``low`` (to ``high``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        if high is not None:
            wanted = f"an integer from {low} to {high}"
        elif low == 1:
            wanted = "a positive integer"
        elif low == 0:
            wanted = "a non-negative integer"
        else:
            wanted = f"an integer of at least {low}"
        raise ConfigurationError(f"{key} must be {wanted}, not {value!r}")
    return value


_PACKABLE_SCALARS = (str, bytes, bytearray, memoryview, float, bool, type(None))
#: The deepest nesting of containers msgpack's packer takes (1.x).
_MSGPACK_NESTING = 1024


def _find_unpackable(message: Any) -> str:
    """Say where in a message the first value msgpack cannot carry sits, and its type.

    Iterative, with the containers on the current path tracked: a message nested deeper
    than Python's recursion limit, or holding itself, must end in the ``TypeError`` that
    names it, not in a ``RecursionError``. A path is kept as links to its parent and
    spelled out only for the answer, so a deep message costs memory in its size only.
    """
    on_path: set[int] = set()
    depth = deepest = 0
    # (value, path, leaving): leaving marks the end of a container's items.
    stack: list[tuple[Any, _Path, bool]] = [(message, None, False)]
    while stack:
        value, path, leaving = stack.pop()
        if leaving:
            on_path.discard(id(value))
            depth -= 1
            continue
        if isinstance(value, dict | list | tuple):
            if id(value) in on_path:
                return f"{_spell(path)} contains itself"
            on_path.add(id(value))
            depth += 1
            deepest = max(deepest, depth)
            stack.append((value, None, True))
            items: list[tuple[Any, _Path]] = []
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(key, tuple):
                        items.append((key, (path, f"'s key {key!r}")))
                    elif not isinstance(key, (*_PACKABLE_SCALARS, int)):
                        return f"{_spell(path)} has a key of type {type(key).__name__}"
                    items.append((item, (path, f"[{key!r}]")))
            else:
                items = [(item, (path, f"[{index}]")) for index, item in enumerate(value)]
            stack.extend((item, where, False) for item, where in reversed(items))
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**64:
                return f"{_spell(path)} is an int out of the 64-bit range"
            continue
        if not isinstance(value, _PACKABLE_SCALARS):
            return f"{_spell(path)} is of type {type(value).__name__}"
    if deepest > _MSGPACK_NESTING:
        return f"message is nested too deeply: {deepest} levels, msgpack takes {_MSGPACK_NESTING}"
    return ""


#: Where a value sits in a message: (the path of its container, its key there); None for
#: the message itself.
_Path = tuple[Any, str] | None


def _spell(path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        path, part = path
        parts.append(part)
    spelled = "message" + "".join(reversed(parts))
    return spelled if len(spelled) <= 200 else f"{spelled[:100]}...{spelled[-100:]}"
