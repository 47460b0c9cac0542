"""Use from several event loops in turn, as ``async_to_sync`` and ``asyncio.run`` do.

These tests are synchronous on purpose: each layer call below runs in a loop of its own,
and the test itself must not be inside one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import async_to_sync

from conformance.constants import LOOP_ROUNDS, OP_TIMEOUT
from conformance.spec import LayerSpec
from conformance.suite.base import LayerFactory
from conformance.suite.helpers import Names, call, message, receive, receive_or_none

T = TypeVar("T")


def in_new_loop(what: str, function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run one layer call through ``async_to_sync`` (a fresh loop each time), bounded."""

    async def bounded() -> T:
        return await call(function(*args), what, OP_TIMEOUT)

    return async_to_sync(bounded)()


class EventLoopChecks:
    def test_async_to_sync_calls_in_turn(
        self, layer_spec: LayerSpec, make_sync_layer: LayerFactory, names: Names
    ) -> None:
        first = make_sync_layer()
        other = first if layer_spec.local else make_sync_layer()
        channel, group = names.channel("sync"), names.group("sync")
        for n in range(LOOP_ROUNDS):
            in_new_loop("send", first.send, channel, message(n))
            got = in_new_loop("receive", other.receive, channel)
            assert got == message(n), f"round {n}: received {got!r}"
            local = in_new_loop("new_channel", first.new_channel)
            in_new_loop("group_add", other.group_add, group, local)
            in_new_loop("group_send", other.group_send, group, message(100 + n))
            got = in_new_loop("receive (group message)", first.receive, local)
            assert got == message(100 + n), f"round {n}: received {got!r}"
            in_new_loop("group_discard", first.group_discard, group, local)

    def test_asyncio_run_twice_on_the_same_layer(
        self, make_sync_layer: LayerFactory, names: Names
    ) -> None:
        layer = make_sync_layer()
        channel, group = names.channel("run"), names.group("run")

        async def roundtrip(n: int) -> None:
            await call(layer.send(channel, message(n)), "send")
            assert await receive(layer, channel) == message(n)
            local = await call(layer.new_channel(), "new_channel")
            await call(layer.group_add(group, local), "group_add")
            await call(layer.group_send(group, message(n)), "group_send")
            assert await receive(layer, local) == message(n)

        asyncio.run(roundtrip(1))
        asyncio.run(roundtrip(2))

    def test_receive_waiting_across_loops(
        self, make_sync_layer: LayerFactory, names: Names
    ) -> None:
        """A receive left waiting in one loop must not break or steal from the next loop."""
        layer = make_sync_layer()
        channel = names.channel("abandoned")

        async def give_up() -> None:
            assert await receive_or_none(layer, channel) is None

        async def deliver() -> None:
            await call(layer.send(channel, message(1)), "send")
            assert await receive(layer, channel) == message(1)

        asyncio.run(give_up())
        asyncio.run(deliver())
