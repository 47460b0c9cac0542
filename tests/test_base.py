"""Unit tests of what every backend inherits from layers.base."""

from __future__ import annotations

import re
from typing import Any

import pytest
from channels.exceptions import MessageTooLarge

from layers.base import BaseLayer
from layers.errors import ConfigurationError, ForeignChannel, UndecodableMessage


def make(**config: Any) -> BaseLayer:
    return BaseLayer(**config)


def test_defaults_are_the_documented_ones() -> None:
    layer = make()
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (60, 86400, 100)
    assert layer.prefix == "asgi"
    assert layer.max_message_size == 1024 * 1024
    assert {"groups", "flush", "receive_many"} <= set(layer.extensions)


def test_unknown_keys_raise_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match="'hostz'"):
        make(hostz=["redis://"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("expiry", 0),
        ("expiry", "60"),
        ("capacity", 1.5),
        ("capacity", True),
        ("group_expiry", -1),
        ("max_message_size", 0),
        ("prefix", "has space"),
        ("prefix", ""),
        ("channel_capacity", ["a*"]),
        ("channel_capacity", {"a*": 0}),
        ("channel_capacity", {3: 10}),
        ("symmetric_encryption_keys", "one-key-not-a-list"),
        ("symmetric_encryption_keys", []),
    ],
)
def test_bad_config_values_are_type_errors_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key.split("_")[0]):
        make(**{key: value})


def test_config_error_is_a_type_error() -> None:
    assert issubclass(ConfigurationError, TypeError)


@pytest.mark.parametrize(
    "name",
    ["", "a b", "é", "x" * 100, "a!b!c", None, 3, b"bytes", "semi;colon", "new\nline"],
)
def test_bad_channel_names(name: Any) -> None:
    with pytest.raises(TypeError, match="invalid channel name"):
        make().require_valid_channel_name(name)


@pytest.mark.parametrize(
    "name", ["a", "x" * 99, "chat.room-1_a", "specific.abc!", "specific.abc!x.y"]
)
def test_good_channel_names(name: str) -> None:
    assert make().require_valid_channel_name(name)


@pytest.mark.parametrize("name", ["", "a!b", "x" * 100, None, "sp ace"])
def test_bad_group_names(name: Any) -> None:
    with pytest.raises(TypeError, match="invalid group name"):
        make().require_valid_group_name(name)


def test_channel_name_lists() -> None:
    layer = make()
    assert layer.require_valid_channel_names(("a", "b")) == ["a", "b"]
    for bad in ([], "abc", None, ["ok", "not ok"]):
        with pytest.raises(TypeError):
            layer.require_valid_channel_names(bad)


async def test_new_channel_names_are_unique_local_and_owned() -> None:
    layer, other = make(), make()
    names = {await layer.new_channel() for _ in range(1000)}
    assert len(names) == 1000
    name = names.pop()
    prefix, _, _ = name.partition("!")
    assert prefix == f"specific.{layer.client_prefix}"
    assert layer.non_local_name(name) == prefix + "!"
    assert layer.is_local_channel(name) and not other.is_local_channel(name)
    assert not layer.is_local_channel("specific")
    assert (await layer.new_channel("reply")).startswith("reply.")
    with pytest.raises(TypeError):
        await layer.new_channel("bad prefix")


async def test_require_own_channel_refuses_only_another_instances_local_channels() -> None:
    layer, other = make(), make()
    mine, theirs = await layer.new_channel(), await other.new_channel()
    layer.require_own_channel(mine)
    layer.require_own_channel("plain.channel")
    with pytest.raises(ForeignChannel, match=re.escape(repr(theirs))) as raised:
        layer.require_own_channel(theirs)
    assert raised.value.channel == theirs
    # A hand-made local name belongs to no instance, so it is nobody's to receive on either.
    with pytest.raises(ForeignChannel):
        layer.require_own_channel("specific.someone!abc")


def test_capacity_patterns_first_match_wins_globs_and_regexes() -> None:
    layer = make(
        capacity=7,
        channel_capacity={"http.request*": 3, re.compile(r"^http\..*"): 5, "*": 9},
    )
    assert layer.get_capacity("http.request.body") == 3
    assert layer.get_capacity("http.disconnect") == 5
    assert layer.get_capacity("websocket.send") == 9
    assert make(capacity=7).get_capacity("anything") == 7
    # The cached answer stays right.
    assert layer.get_capacity("http.disconnect") == 5


def test_encode_decode_round_trip_and_copy() -> None:
    layer = make()
    message = {"type": "m", "list": [1, 2], "bytes": b"\x00", "n": None, "f": 1.5, "tuple": (1,)}
    data = layer.encode(message, "c")
    message["list"].append(3)
    decoded = layer.decode(data)
    assert decoded == {
        "type": "m",
        "list": [1, 2],
        "bytes": b"\x00",
        "n": None,
        "f": 1.5,
        "tuple": [1],
    }


def test_unusual_keys_survive() -> None:
    layer = make()
    assert layer.decode(layer.encode({1: "int key", "t": {(1, 2): "x"}}, "c"))[1] == "int key"


@pytest.mark.parametrize(
    ("message", "where"),
    [
        ({"type": "m", "bad": {1, 2}}, r"message\['bad'\] is of type set"),
        (
            {"type": "m", "deep": [0, {"x": object()}]},
            r"message\['deep'\]\[1\]\['x'\] is of type object",
        ),
        ({"type": "m", "huge": 2**80}, r"message\['huge'\] is an int out of the 64-bit range"),
        ({frozenset(): 1}, r"key of type frozenset"),
    ],
)
def test_unserialisable_values_name_their_type_and_place(message: Any, where: str) -> None:
    with pytest.raises(TypeError, match=where):
        make().encode(message, "chan")


@pytest.mark.parametrize("message", [None, "text", ["type", "m"], 3])
def test_non_dict_messages(message: Any) -> None:
    with pytest.raises(TypeError, match="must be a dict"):
        make().encode(message, "chan")


def test_max_message_size_is_checked_on_encoded_size() -> None:
    layer = make(max_message_size=1000)
    layer.encode({"type": "m", "text": "x" * 900}, "c")
    with pytest.raises(MessageTooLarge, match="max_message_size is 1000"):
        layer.encode({"type": "m", "text": "x" * 1000}, "c")


def test_undecodable_bytes() -> None:
    layer = make()
    with pytest.raises(UndecodableMessage):
        layer.decode(b"\xc1")
    with pytest.raises(UndecodableMessage):
        layer.decode(layer.encode({"x": 1}, "c")[:-1])
    assert layer.decode_or_none(b"\x93\x01\x02\x03", "c") is None  # a list, not a dict


def test_encryption_round_trip_and_key_rotation() -> None:
    old = make(symmetric_encryption_keys=["old-secret"])
    rotated = make(symmetric_encryption_keys=["new-secret", "old-secret"])
    stranger = make(symmetric_encryption_keys=["another"])
    message = {"type": "secret", "text": "hello"}
    from_old = old.encode(message, "c")
    assert b"hello" not in from_old
    assert rotated.decode(from_old) == message
    from_new = rotated.encode(message, "c")
    assert rotated.decode(from_new) == message
    with pytest.raises(UndecodableMessage, match="not encrypted with any configured key"):
        old.decode(from_new)
    assert stranger.decode_or_none(from_old, "c") is None


def test_backend_signatures_list_inherited_config() -> None:
    import inspect

    from layers.memory import InMemoryChannelLayer

    parameters = inspect.signature(InMemoryChannelLayer).parameters
    assert {"prefix", "expiry", "capacity", "channel_capacity"} <= parameters.keys()
