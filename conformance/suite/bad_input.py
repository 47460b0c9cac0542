"""Bad names and bad messages: a clear exception, and nothing else disturbed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from channels.exceptions import MessageTooLarge

from conformance.constants import ERROR_TIMEOUT, MAX_NAME_LENGTH, OVERSIZED_PAYLOAD
from conformance.suite.base import LayerFactory
from conformance.suite.helpers import Names, call, expect_error, message, receive


class Gadget:
    """A value no serialiser knows; its distinctive name must appear in the error."""


BAD_CHANNEL_NAMES: dict[str, Any] = {
    "empty": "",
    "int": 123,
    "none": None,
    "bytes": b"channel",
    "too-long": "a" * MAX_NAME_LENGTH,
    "space": "has space",
    "unicode": "caf\u00e9",
    "unicode-after-bang": "specific.x!caf\u00e9",
    "two-bangs": "a!b!c",
    "slash": "a/b",
}
BAD_GROUP_NAMES: dict[str, Any] = {
    "empty": "",
    "int": 123,
    "none": None,
    "too-long": "g" * MAX_NAME_LENGTH,
    "space": "has space",
    "unicode": "caf\u00e9",
    "bang": "group!x",
}
NOT_DICTS: dict[str, Any] = {
    "list": [("type", "conformance.message")],
    "str": "conformance.message",
    "bytes": b"conformance.message",
    "none": None,
    "int": 42,
}
# (value inside the message, type name the TypeError must mention)
UNSERIALISABLE: dict[str, tuple[dict[str, Any], str]] = {
    "set": ({"type": "conformance.bad", "value": {1, 2}}, "set"),
    "object": ({"type": "conformance.bad", "value": Gadget()}, "Gadget"),
    "nested": ({"type": "conformance.bad", "value": [{"deep": Gadget()}]}, "Gadget"),
}

Operation = Callable[[Any, Any, Names], Awaitable[Any]]

CHANNEL_OPERATIONS: dict[str, Operation] = {
    "send": lambda layer, name, names: layer.send(name, message(0)),
    "receive": lambda layer, name, names: layer.receive(name),
    "group_add": lambda layer, name, names: layer.group_add(names.group("g"), name),
    "group_discard": lambda layer, name, names: layer.group_discard(names.group("g"), name),
}
GROUP_OPERATIONS: dict[str, Operation] = {
    "group_add": lambda layer, name, names: layer.group_add(name, names.channel("member")),
    "group_discard": lambda layer, name, names: layer.group_discard(name, names.channel("member")),
    "group_send": lambda layer, name, names: layer.group_send(name, message(0)),
}


async def queue_bystanders(layer: Any, names: Names) -> str:
    """Messages that must survive whatever bad input comes next."""
    channel = names.channel("bystander")
    await call(layer.send(channel, message(1)), "send before the bad input")
    await call(layer.send(channel, message(2)), "send before the bad input")
    return channel


async def assert_still_works(layer: Any, channel: str, after: str) -> None:
    await call(layer.send(channel, message(3)), f"send after {after}")
    got = [await receive(layer, channel, f"receive after {after}") for _ in range(3)]
    assert got == [message(1), message(2), message(3)], (
        f"after {after}, the queued messages came back as {got!r}"
    )


class BadInputChecks:
    @pytest.mark.asyncio
    @pytest.mark.parametrize("operation", list(CHANNEL_OPERATIONS))
    @pytest.mark.parametrize("case", list(BAD_CHANNEL_NAMES))
    async def test_bad_channel_name_raises_type_error(
        self, layer: Any, names: Names, operation: str, case: str
    ) -> None:
        bystander = await queue_bystanders(layer, names)
        bad = BAD_CHANNEL_NAMES[case]
        await expect_error(
            TypeError,
            CHANNEL_OPERATIONS[operation](layer, bad, names),
            f"{operation} with channel name {bad!r}",
            ERROR_TIMEOUT,
        )
        await assert_still_works(layer, bystander, f"{operation} with a bad channel name")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("operation", list(GROUP_OPERATIONS))
    @pytest.mark.parametrize("case", list(BAD_GROUP_NAMES))
    async def test_bad_group_name_raises_type_error(
        self, layer: Any, names: Names, operation: str, case: str
    ) -> None:
        bystander = await queue_bystanders(layer, names)
        bad = BAD_GROUP_NAMES[case]
        await expect_error(
            TypeError,
            GROUP_OPERATIONS[operation](layer, bad, names),
            f"{operation} with group name {bad!r}",
            ERROR_TIMEOUT,
        )
        await assert_still_works(layer, bystander, f"{operation} with a bad group name")

    @pytest.mark.asyncio
    async def test_longest_valid_names_are_accepted(self, layer: Any, names: Names) -> None:
        channel = names.channel("c").ljust(MAX_NAME_LENGTH - 1, "c")
        group = names.group("g").ljust(MAX_NAME_LENGTH - 1, "g")
        await call(
            layer.group_add(group, channel), f"group_add with {MAX_NAME_LENGTH - 1}-character names"
        )
        await call(layer.group_send(group, message(1)), "group_send to the long group name")
        assert await receive(layer, channel) == message(1)

    @pytest.mark.asyncio
    async def test_names_with_allowed_punctuation_are_accepted(
        self, layer: Any, names: Names
    ) -> None:
        channel = names.channel("A-z_0.9")
        group = names.group("A-z_0.9")
        await call(layer.group_add(group, channel), "group_add with '-', '_' and '.' in names")
        await call(layer.group_send(group, message(1)), "group_send")
        assert await receive(layer, channel) == message(1)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("operation", ["send", "group_send"])
    @pytest.mark.parametrize("case", list(NOT_DICTS))
    async def test_non_dict_message_raises_type_error(
        self, layer: Any, names: Names, operation: str, case: str
    ) -> None:
        bystander = await queue_bystanders(layer, names)
        bad = NOT_DICTS[case]
        group = names.group("g")
        await call(layer.group_add(group, names.channel("member")), "group_add")
        sending = (
            layer.send(names.channel("target"), bad)
            if operation == "send"
            else layer.group_send(group, bad)
        )
        await expect_error(TypeError, sending, f"{operation} of {bad!r}", ERROR_TIMEOUT)
        await assert_still_works(layer, bystander, f"{operation} of a non-dict")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("operation", ["send", "group_send"])
    @pytest.mark.parametrize("case", list(UNSERIALISABLE))
    async def test_unserialisable_message_raises_type_error_naming_the_type(
        self, layer: Any, names: Names, operation: str, case: str
    ) -> None:
        bystander = await queue_bystanders(layer, names)
        bad, type_name = UNSERIALISABLE[case]
        group, member = names.group("g"), names.channel("member")
        await call(layer.group_add(group, member), "group_add")
        sending = (
            layer.send(names.channel("target"), bad)
            if operation == "send"
            else layer.group_send(group, bad)
        )
        error = await expect_error(TypeError, sending, f"{operation} of {bad!r}", ERROR_TIMEOUT)
        assert type_name in str(error), (
            f"{operation} raised TypeError({str(error)!r}), which does not name the bad "
            f"value's type {type_name!r}"
        )
        await assert_still_works(layer, bystander, f"{operation} of an unserialisable message")

    @pytest.mark.asyncio
    async def test_oversized_message_raises_message_too_large(
        self, layer: Any, names: Names
    ) -> None:
        bystander = await queue_bystanders(layer, names)
        big = message(0, body="x" * OVERSIZED_PAYLOAD)
        await expect_error(
            MessageTooLarge,
            layer.send(names.channel("target"), big),
            f"send of a {OVERSIZED_PAYLOAD}-character message (default max_message_size)",
        )
        await assert_still_works(layer, bystander, "an oversized send")

    @pytest.mark.asyncio
    async def test_max_message_size_is_configurable(
        self, make_layer: LayerFactory, names: Names
    ) -> None:
        layer = make_layer(max_message_size=10_000)
        channel = names.channel("sized")
        small = message(1, body="x" * 1_000)
        await call(
            layer.send(channel, small), "send of 1000 characters with max_message_size=10000"
        )
        await expect_error(
            MessageTooLarge,
            layer.send(channel, message(2, body="x" * 20_000)),
            "send of 20000 characters with max_message_size=10000",
        )
        assert await receive(layer, channel) == small
