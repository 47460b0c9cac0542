"""``flush``, ``close``, ``extensions`` and construction from config."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.constants import CANCEL_GRACE, CLOSE_RECEIVE_TIMEOUT, SETTLE
from conformance.spec import LayerSpec
from conformance.suite.helpers import (
    Names,
    assert_all_quiet,
    assert_quiet,
    call,
    message,
    receive,
    require_method,
)

REQUIRED_EXTENSIONS = ("groups", "flush", "receive_many")


class LifecycleChecks:
    @pytest.mark.parametrize("extension", REQUIRED_EXTENSIONS)
    @pytest.mark.asyncio
    async def test_extensions_include(self, layer: Any, extension: str) -> None:
        # In a running loop, as Channels reads it: some layers set up per loop on first use.
        offered = getattr(layer, "extensions", None)
        assert offered is not None, f"{type(layer).__name__} has no 'extensions' attribute"
        assert extension in offered, f"extensions is {offered!r}; it must include {extension!r}"

    @pytest.mark.asyncio
    async def test_flush_removes_messages(self, layer: Any, other_layer: Any, names: Names) -> None:
        flush = require_method(layer, "flush", "flush")
        local = await call(layer.new_channel(), "new_channel()")
        plain = names.channel("flushed")
        await call(layer.send(plain, message(1)), "send")
        await call(other_layer.send(local, message(2)), "send")
        await call(flush(), "flush()")
        await assert_all_quiet(
            [(other_layer, plain), (layer, local)], "flush() ran after the message was sent"
        )

    @pytest.mark.asyncio
    async def test_flush_removes_groups(self, layer: Any, other_layer: Any, names: Names) -> None:
        flush = require_method(layer, "flush", "flush")
        group, channel = names.group("flushed"), names.channel("member")
        await call(layer.group_add(group, channel), "group_add")
        await call(flush(), "flush()")
        await call(other_layer.group_send(group, message(1)), "group_send after flush()")
        await assert_quiet(layer, channel, "flush() removed the group before group_send")

    @pytest.mark.asyncio
    async def test_layer_works_after_flush(self, layer: Any, names: Names) -> None:
        flush = require_method(layer, "flush", "flush")
        await call(flush(), "flush()")
        channel = names.channel("after-flush")
        await call(layer.send(channel, message(1)), "send after flush()")
        assert await receive(layer, channel) == message(1)

    @pytest.mark.asyncio
    async def test_close_then_layer_works_again(self, layer: Any, names: Names) -> None:
        close = require_method(layer, "close", "close")
        channel = names.channel("reopen")
        await call(layer.send(channel, message(1)), "send")
        assert await receive(layer, channel) == message(1)
        await call(close(), "close()")
        await call(layer.send(channel, message(2)), "send after close()")
        assert await receive(layer, channel, "receive after close()") == message(2)
        local = await call(layer.new_channel(), "new_channel() after close()")
        await call(layer.group_add(names.group("g"), local), "group_add after close()")
        await call(layer.group_send(names.group("g"), message(3)), "group_send after close()")
        assert await receive(layer, local, "receive of a group message after close()") == message(3)

    @pytest.mark.asyncio
    async def test_close_twice_in_a_row(self, layer: Any, names: Names) -> None:
        close = require_method(layer, "close", "close")
        channel = names.channel("close-twice")
        await call(layer.send(channel, message(1)), "send")
        await call(close(), "close()")
        await call(close(), "second close()")
        assert await receive(layer, channel, "receive after two close()") == message(1)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("kind", ["plain", "local"])
    async def test_close_ends_a_waiting_receive(self, layer: Any, names: Names, kind: str) -> None:
        """A receive waiting while close() runs ends: with the message sent after close()
        (the layer reopened), or with an error; it never hangs."""
        close = require_method(layer, "close", "close")
        if kind == "local":
            channel = await call(layer.new_channel(), "new_channel()")
        else:
            channel = names.channel("close-while-waiting")
        waiting = asyncio.create_task(layer.receive(channel))
        try:
            await asyncio.sleep(SETTLE)
            await call(close(), "close() while a receive waits")
            await call(layer.send(channel, message(1)), "send after close()")
            done, _ = await asyncio.wait({waiting}, timeout=CLOSE_RECEIVE_TIMEOUT)
            if not done:
                problem = f"did not end within {CLOSE_RECEIVE_TIMEOUT}s"
            elif waiting.cancelled():
                # A consumer would take this for its own cancellation and stop silently.
                problem = "ended with CancelledError, though nobody cancelled it"
            elif waiting.exception() is not None:
                return  # ending with an error is allowed
            else:
                got = waiting.result()
                assert got == message(1), (
                    f"a {kind} receive waiting during close() returned {got!r}, not the "
                    "message sent after close()"
                )
                return
        finally:
            waiting.cancel()
            await asyncio.wait({waiting}, timeout=CANCEL_GRACE)
        pytest.fail(f"a {kind} receive waiting during close() {problem}")

    def test_unknown_config_key_raises_type_error(self, layer_spec: LayerSpec) -> None:
        config = {**layer_spec.config, "conformance_no_such_option": 1}
        try:
            built = layer_spec.factory(**config)
        except TypeError:
            return
        except Exception as exc:
            pytest.fail(
                f"an unknown config key raised {type(exc).__name__}: {exc}; expected TypeError"
            )
        pytest.fail(f"an unknown config key was accepted: built {built!r}; expected TypeError")
