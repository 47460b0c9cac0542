"""Point-to-point delivery: send, receive, ordering, copying, two instances, new_channel."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from conformance.constants import (
    CANCEL_GRACE,
    DEFAULT_NEW_CHANNEL_PREFIX,
    ERROR_TIMEOUT,
    LARGE_PAYLOAD,
    MAX_NAME_LENGTH,
    NEW_CHANNEL_SAMPLES,
    SETTLE,
)
from conformance.spec import LayerSpec
from conformance.suite.base import LayerFactory
from conformance.suite.helpers import (
    Names,
    assert_quiet,
    call,
    describe,
    message,
    receive,
    require_method,
)

# ``prefix.<instance>!<random>``, in the characters the contract allows.
NEW_CHANNEL_FORM = re.compile(
    r"^(?P<prefix>[A-Za-z0-9_.-]+?)\.(?P<instance>[A-Za-z0-9_.-]+)![A-Za-z0-9_.-]+$"
)


class SendReceiveChecks:
    @pytest.mark.asyncio
    async def test_send_receive_roundtrip(self, layer: Any, names: Names) -> None:
        channel = names.channel("roundtrip")
        sent = {
            "type": "conformance.roundtrip",
            "text": "héllo",
            "data": b"\x00\xff",
            "n": [1, 2.5, None, True],
        }
        await call(layer.send(channel, sent), "send")
        assert await receive(layer, channel) == sent

    @pytest.mark.asyncio
    async def test_fifo_per_channel_for_one_reader(self, layer: Any, names: Names) -> None:
        channel = names.channel("fifo")
        for n in range(20):
            await call(layer.send(channel, message(n)), f"send #{n}")
        got = [(await receive(layer, channel))["n"] for _ in range(20)]
        assert got == list(range(20)), "messages on one channel came back out of order"

    @pytest.mark.asyncio
    async def test_message_is_copied_at_send_time(self, layer: Any, names: Names) -> None:
        channel = names.channel("copy")
        sent: dict[str, Any] = {"type": "conformance.copy", "items": [1], "nested": {"k": "v"}}
        await call(layer.send(channel, sent), "send")
        sent["type"] = "conformance.changed"
        sent["items"].append(2)
        sent["nested"]["k"] = "changed"
        got = await receive(layer, channel)
        assert got == {"type": "conformance.copy", "items": [1], "nested": {"k": "v"}}, (
            "changing a message after send changed what was received"
        )

    @pytest.mark.asyncio
    async def test_send_never_waits_for_a_receiver(self, layer: Any, names: Names) -> None:
        channel = names.channel("nobody-listens")
        # Well under the default capacity; each send must return without any receive.
        for n in range(10):
            await call(layer.send(channel, message(n)), "send with no receiver", within=1.0)

    @pytest.mark.asyncio
    async def test_receive_waits_until_a_message_arrives(self, layer: Any, names: Names) -> None:
        channel = names.channel("waits")
        waiting = asyncio.create_task(layer.receive(channel))
        try:
            await asyncio.sleep(SETTLE)
            if waiting.done():
                pytest.fail(f"receive on an empty channel returned early: {waiting.result()!r}")
            await call(layer.send(channel, message(1)), "send")
            got = await call(waiting, "receive started before the send")
        finally:
            waiting.cancel()
        assert got == message(1)

    @pytest.mark.asyncio
    async def test_two_instances_send_on_one_receive_on_other(
        self, layer: Any, other_layer: Any, names: Names
    ) -> None:
        channel = names.channel("cross")
        await call(layer.send(channel, message(1)), "send on the first instance")
        assert await receive(other_layer, channel, "receive on the other instance") == message(1)
        await call(other_layer.send(channel, message(2)), "send on the other instance")
        assert await receive(layer, channel, "receive on the first instance") == message(2)

    @pytest.mark.asyncio
    async def test_large_message_under_the_limit_roundtrips(self, layer: Any, names: Names) -> None:
        channel = names.channel("large")
        sent = message(1, body="x" * LARGE_PAYLOAD)
        await call(layer.send(channel, sent), f"send of a {LARGE_PAYLOAD}-character message")
        assert await receive(layer, channel) == sent


class NewChannelChecks:
    @pytest.mark.asyncio
    async def test_new_channel_names_are_unique(self, layer: Any, other_layer: Any) -> None:
        made = [
            await call(layer.new_channel(), "new_channel()") for _ in range(NEW_CHANNEL_SAMPLES)
        ]
        made += [
            await call(other_layer.new_channel(), "new_channel()")
            for _ in range(NEW_CHANNEL_SAMPLES)
        ]
        assert len(set(made)) == len(made), "new_channel() returned the same name twice"

    @pytest.mark.asyncio
    async def test_new_channel_default_prefix_is_specific(self, layer: Any) -> None:
        name = await call(layer.new_channel(), "new_channel()")
        assert isinstance(name, str), f"new_channel() returned {type(name).__name__}, not str"
        assert name.startswith(DEFAULT_NEW_CHANNEL_PREFIX + "."), (
            f"new_channel() returned {name!r}; expected '{DEFAULT_NEW_CHANNEL_PREFIX}.<instance>!<random>'"
        )

    @pytest.mark.asyncio
    async def test_new_channel_name_form(self, layer: Any) -> None:
        name = await call(layer.new_channel(), "new_channel()")
        assert NEW_CHANNEL_FORM.match(name), (
            f"new_channel() returned {name!r}: not 'prefix.<instance>!<random>' in "
            "ASCII alphanumerics, '-', '_', '.'"
        )
        assert len(name) < MAX_NAME_LENGTH, f"new_channel() name is {len(name)} characters long"

    @pytest.mark.asyncio
    async def test_new_channel_custom_prefix(self, layer: Any) -> None:
        name = await call(layer.new_channel(prefix="custom"), "new_channel(prefix='custom')")
        assert name.startswith("custom."), f"new_channel(prefix='custom') returned {name!r}"
        assert NEW_CHANNEL_FORM.match(name), f"new_channel(prefix='custom') returned {name!r}"

    @pytest.mark.asyncio
    async def test_new_channel_names_share_the_instance_part(
        self, layer_spec: LayerSpec, layer: Any, other_layer: Any
    ) -> None:
        def instance_part(name: str) -> str:
            return name[: name.index("!") + 1] if "!" in name else name

        first = await call(layer.new_channel(), "new_channel()")
        second = await call(layer.new_channel(), "new_channel()")
        assert instance_part(first) == instance_part(second), (
            f"one instance made {first!r} and {second!r}: the part up to '!' should name the instance"
        )
        if not layer_spec.local:
            foreign = await call(other_layer.new_channel(), "new_channel() on the other instance")
            assert instance_part(foreign) != instance_part(first), (
                f"two instances made {first!r} and {foreign!r}: the same instance part"
            )

    @pytest.mark.asyncio
    async def test_new_channel_messages_reach_that_instance(
        self, layer: Any, other_layer: Any
    ) -> None:
        channel = await call(layer.new_channel(), "new_channel()")
        await call(other_layer.send(channel, message(1)), "send from the other instance")
        await call(layer.send(channel, message(2)), "send from the owner")
        assert await receive(layer, channel) == message(1)
        assert await receive(layer, channel) == message(2)

    @pytest.mark.asyncio
    async def test_new_channels_do_not_share_messages(self, layer: Any) -> None:
        first = await call(layer.new_channel(), "new_channel()")
        second = await call(layer.new_channel(), "new_channel()")
        await call(layer.send(first, message(1)), "send")
        await assert_quiet(layer, second, f"only {first!r} was sent to")
        assert await receive(layer, first) == message(1)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("call_name", ["receive", "receive_many"])
    async def test_receive_on_another_instances_local_channel_raises(
        self, make_layer: LayerFactory, names: Names, call_name: str
    ) -> None:
        # A second instance even for a layer living in one process: it stands for another
        # process, whose process-local channels this instance can never receive on.
        layer, other = make_layer(), make_layer()
        theirs = await call(other.new_channel(), "new_channel() on another instance")
        if call_name == "receive":
            receiving = layer.receive(theirs)
        else:
            receive_many = require_method(layer, "receive_many", "receive_many")
            receiving = receive_many([names.channel("plain"), theirs])
        what = f"{call_name} on another instance's process-local channel {theirs!r}"
        # Any exception will do, so the call is watched as a task: a TimeoutError from a
        # bounded wait would be indistinguishable from one the layer raised.
        task = asyncio.ensure_future(receiving)
        try:
            done, _ = await asyncio.wait({task}, timeout=ERROR_TIMEOUT)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_GRACE)
        if not done:
            pytest.fail(f"{what} did not raise within {ERROR_TIMEOUT}s; it must fail at once")
        if task.cancelled():
            pytest.fail(f"{what} ended with CancelledError; it must raise an error")
        error = task.exception()
        if error is None:
            pytest.fail(f"{what} returned {task.result()!r}; it must raise an error")
        assert theirs in str(error), (
            f"{what} raised {describe(error)}, which does not name the channel"
        )
