"""Capacity (``capacity``, ``channel_capacity``) and message expiry."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from conformance.constants import (
    DEFAULT_CAPACITY,
    EXPIRY,
    EXPIRY_WAIT,
    LOCAL_CHANNELS,
    SMALL_CAPACITY,
)
from conformance.suite.base import LayerFactory
from conformance.suite.helpers import Names, assert_quiet, call, expect_error, message, receive


async def fill(layer: Any, channel: str, count: int, what: str) -> None:
    for n in range(count):
        await call(layer.send(channel, message(n)), f"send #{n + 1} of {count} ({what})")


class CapacityChecks:
    @pytest.mark.asyncio
    async def test_send_to_full_channel_raises_channel_full(
        self, make_layer: LayerFactory, names: Names
    ) -> None:
        layer = make_layer(capacity=3)
        channel = names.channel("full")
        await fill(layer, channel, 3, "capacity=3")
        await expect_error(ChannelFull, layer.send(channel, message(3)), "4th send with capacity=3")

    @pytest.mark.asyncio
    async def test_capacity_is_shared_by_instances(self, make_pair: Any, names: Names) -> None:
        first, other = make_pair(capacity=2)
        channel = names.channel("full-shared")
        await fill(first, channel, 2, "capacity=2")
        await expect_error(
            ChannelFull, other.send(channel, message(2)), "3rd send, from the other instance"
        )

    @pytest.mark.asyncio
    async def test_sending_works_again_after_receiving(
        self, make_layer: LayerFactory, names: Names
    ) -> None:
        layer = make_layer(capacity=2)
        channel = names.channel("refill")
        await fill(layer, channel, 2, "capacity=2")
        await expect_error(ChannelFull, layer.send(channel, message(2)), "3rd send with capacity=2")
        assert await receive(layer, channel) == message(0)
        await call(layer.send(channel, message(3)), "send after one message was received")
        assert await receive(layer, channel) == message(1)
        assert await receive(layer, channel) == message(3)

    @pytest.mark.asyncio
    async def test_capacity_is_per_channel(self, make_layer: LayerFactory, names: Names) -> None:
        layer = make_layer(capacity=1)
        await fill(layer, names.channel("one"), 1, "capacity=1")
        await call(layer.send(names.channel("two"), message(1)), "send to a different channel")

    @pytest.mark.asyncio
    async def test_capacity_is_per_process_local_channel(
        self, layer: Any, other_layer: Any
    ) -> None:
        # Nobody receives yet, so whatever buffers an instance's local channels holds them
        # all at once; the default capacity still applies to each channel on its own.
        made = [await call(layer.new_channel(), "new_channel()") for _ in range(LOCAL_CHANNELS)]
        for n, channel in enumerate(made):
            await call(
                other_layer.send(channel, message(n)),
                f"send #{n + 1} of {LOCAL_CHANNELS}, each to a different process-local "
                f"channel of one instance, at the default capacity",
            )
        for n, channel in enumerate(made):
            got = await receive(layer, channel)
            assert got == message(n), f"process-local channel #{n + 1} received {got!r}"

    @pytest.mark.asyncio
    async def test_process_local_channel_still_fills_up(self, make_pair: Any) -> None:
        first, other = make_pair(capacity=SMALL_CAPACITY)
        channel = await call(first.new_channel(), "new_channel()")
        await fill(other, channel, SMALL_CAPACITY, f"process-local, capacity={SMALL_CAPACITY}")
        await expect_error(
            ChannelFull,
            other.send(channel, message(SMALL_CAPACITY)),
            f"send #{SMALL_CAPACITY + 1} to a process-local channel nobody receives on, "
            f"capacity={SMALL_CAPACITY}",
        )

    @pytest.mark.asyncio
    async def test_default_capacity_is_100(self, layer: Any, names: Names) -> None:
        channel = names.channel("default-capacity")
        await fill(layer, channel, DEFAULT_CAPACITY, "default capacity")
        await expect_error(
            ChannelFull,
            layer.send(channel, message(DEFAULT_CAPACITY)),
            f"send #{DEFAULT_CAPACITY + 1} with the default capacity",
        )

    @pytest.mark.asyncio
    async def test_channel_capacity_glob_pattern(
        self, make_layer: LayerFactory, names: Names
    ) -> None:
        layer = make_layer(capacity=10, channel_capacity={names.channel("small.*"): 2})
        channel = names.channel("small.one")
        await fill(layer, channel, 2, "glob capacity 2")
        await expect_error(
            ChannelFull, layer.send(channel, message(2)), "3rd send, glob capacity 2"
        )
        # Unmatched channels keep the plain capacity.
        await fill(layer, names.channel("big.one"), 10, "unmatched channel, capacity=10")

    @pytest.mark.asyncio
    async def test_channel_capacity_compiled_regex(
        self, make_layer: LayerFactory, names: Names
    ) -> None:
        pattern = re.compile(re.escape(names.channel("rx")) + r"\.\d+$")
        layer = make_layer(capacity=10, channel_capacity={pattern: 1})
        channel = names.channel("rx.42")
        await fill(layer, channel, 1, "regex capacity 1")
        await expect_error(
            ChannelFull, layer.send(channel, message(1)), "2nd send, regex capacity 1"
        )
        # The regex does not match this one, so it gets the plain capacity.
        await fill(layer, names.channel("rx.name"), 2, "channel the regex does not match")

    @pytest.mark.asyncio
    async def test_channel_capacity_first_match_wins(
        self, make_layer: LayerFactory, names: Names
    ) -> None:
        narrow, broad = names.channel("first.*"), names.channel("*")
        narrow_first = make_layer(capacity=10, channel_capacity={narrow: 1, broad: 3})
        channel = names.channel("first.a")
        await fill(narrow_first, channel, 1, "first pattern gives 1")
        await expect_error(
            ChannelFull, narrow_first.send(channel, message(1)), "2nd send, first pattern gives 1"
        )
        broad_first = make_layer(capacity=10, channel_capacity={broad: 3, narrow: 1})
        channel = names.channel("first.b")
        await fill(broad_first, channel, 3, "first pattern gives 3 (a later one gives 1)")
        await expect_error(
            ChannelFull, broad_first.send(channel, message(3)), "4th send, first pattern gives 3"
        )


class ExpiryChecks:
    @pytest.mark.asyncio
    async def test_expired_message_is_never_returned(self, make_pair: Any, names: Names) -> None:
        first, other = make_pair(expiry=EXPIRY)
        channel = names.channel("expiry")
        await call(first.send(channel, message(1)), "send")
        await asyncio.sleep(EXPIRY_WAIT)
        await assert_quiet(
            other, channel, f"the only message was sent {EXPIRY_WAIT}s ago with expiry={EXPIRY}"
        )
        await call(first.send(channel, message(2)), "send after the first expired")
        got = await receive(other, channel)
        assert got == message(2), f"received {got!r}, which expired before it was received"

    @pytest.mark.asyncio
    async def test_expired_message_is_skipped_for_a_fresh_one(
        self, make_pair: Any, names: Names
    ) -> None:
        first, other = make_pair(expiry=EXPIRY)
        channel = names.channel("expiry-skip")
        await call(first.send(channel, message(1)), "send")
        await asyncio.sleep(EXPIRY_WAIT)
        # No receive in between: the expired message is still at the head of the queue.
        await call(first.send(channel, message(2)), "send after the first expired")
        got = await receive(other, channel)
        assert got == message(2), f"received {got!r}, which expired before it was received"
        await assert_quiet(other, channel, "the only other message had expired")

    @pytest.mark.asyncio
    async def test_expired_messages_do_not_count_against_capacity(
        self, make_layer: LayerFactory, names: Names
    ) -> None:
        layer = make_layer(expiry=EXPIRY, capacity=2)
        channel = names.channel("expiry-capacity")
        await fill(layer, channel, 2, "capacity=2")
        await asyncio.sleep(EXPIRY_WAIT)
        await call(
            layer.send(channel, message(10)), "send to a channel holding only expired messages"
        )
        await call(layer.send(channel, message(11)), "2nd send after expiry, capacity=2")
        assert await receive(layer, channel) == message(10)
        assert await receive(layer, channel) == message(11)
