"""The ``groups`` extension: membership, fan-out, expiry of membership, full members."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.constants import (
    GROUP_EXPIRY,
    GROUP_EXPIRY_POLL,
    GROUP_EXPIRY_WAIT,
    GROUP_REFRESH_STEP,
    LOCAL_GROUP_MEMBERS,
)
from conformance.suite.helpers import (
    Names,
    assert_all_quiet,
    assert_quiet,
    call,
    message,
    receive,
    receive_or_none,
)


async def join(layer: Any, group: str, *channels: str) -> None:
    for channel in channels:
        await call(layer.group_add(group, channel), f"group_add({group!r}, {channel!r})")


async def receive_once(layer: Any, channel: str, expected: dict[str, Any], why: str) -> None:
    got = await receive(layer, channel, f"{why}: receive({channel!r})")
    assert got == expected, f"{why}: {channel!r} received {got!r}"


class GroupChecks:
    @pytest.mark.asyncio
    async def test_group_add_is_idempotent(self, layer: Any, names: Names) -> None:
        group, channel = names.group("g"), names.channel("member")
        await join(layer, group, channel, channel)
        await call(layer.group_send(group, message(1)), "group_send")
        await receive_once(layer, channel, message(1), "added twice")
        await assert_quiet(layer, channel, "a channel added twice must get a group message once")

    @pytest.mark.asyncio
    async def test_group_discard_is_idempotent(self, layer: Any, names: Names) -> None:
        group, channel = names.group("g"), names.channel("member")
        await join(layer, group, channel)
        await call(layer.group_discard(group, channel), "group_discard")
        await call(layer.group_discard(group, channel), "second group_discard")
        await call(
            layer.group_discard(names.group("never-made"), channel),
            "group_discard from a group that does not exist",
        )
        await call(layer.group_send(group, message(1)), "group_send")
        await assert_quiet(layer, channel, "the channel was discarded from the group")

    @pytest.mark.asyncio
    async def test_group_send_reaches_every_member_once(
        self, layer: Any, other_layer: Any, names: Names
    ) -> None:
        group = names.group("fanout")
        plain_a, plain_b = names.channel("plain-a"), names.channel("plain-b")
        mine = await call(layer.new_channel(), "new_channel()")
        theirs = await call(other_layer.new_channel(), "new_channel() on the other instance")
        await join(layer, group, plain_a, mine)
        await join(other_layer, group, plain_b, theirs)
        await call(layer.group_send(group, message(7)), "group_send")
        # Each member is read by its owner; plain channels from either side.
        readers = [(other_layer, plain_a), (layer, plain_b), (layer, mine), (other_layer, theirs)]
        for reader, channel in readers:
            await receive_once(reader, channel, message(7), "group member")
        await assert_all_quiet(readers, "each member must get a group message exactly once")

    @pytest.mark.asyncio
    async def test_group_send_from_other_instance(
        self, layer: Any, other_layer: Any, names: Names
    ) -> None:
        group = names.group("remote")
        mine = await call(layer.new_channel(), "new_channel()")
        await join(layer, group, mine)
        await call(other_layer.group_send(group, message(3)), "group_send from the other instance")
        await receive_once(layer, mine, message(3), "member of a group sent to elsewhere")

    @pytest.mark.asyncio
    async def test_discarded_member_gets_nothing(self, layer: Any, names: Names) -> None:
        group, kept, dropped = names.group("g"), names.channel("kept"), names.channel("dropped")
        await join(layer, group, kept, dropped)
        await call(layer.group_discard(group, dropped), "group_discard")
        await call(layer.group_send(group, message(1)), "group_send")
        await receive_once(layer, kept, message(1), "remaining member")
        await assert_quiet(layer, dropped, "the channel was discarded before group_send")

    @pytest.mark.asyncio
    async def test_group_send_to_empty_group_does_nothing(self, layer: Any, names: Names) -> None:
        await call(layer.group_send(names.group("nobody"), message(1)), "group_send to no members")

    @pytest.mark.asyncio
    async def test_group_message_is_copied_at_send_time(self, layer: Any, names: Names) -> None:
        group, channel = names.group("g"), names.channel("member")
        await join(layer, group, channel)
        sent: dict[str, Any] = {"type": "conformance.copy", "items": [1]}
        await call(layer.group_send(group, sent), "group_send")
        sent["items"].append(2)
        await receive_once(layer, channel, {"type": "conformance.copy", "items": [1]}, "copied")

    @pytest.mark.asyncio
    async def test_group_membership_lapses_after_group_expiry(
        self, make_pair: Any, names: Names
    ) -> None:
        first, other = make_pair(group_expiry=GROUP_EXPIRY)
        group, channel = names.group("lapse"), names.channel("member")
        await join(first, group, channel)
        loop = asyncio.get_running_loop()
        joined = loop.time()
        # Time, not a condition: a membership may last until group_expiry.
        await asyncio.sleep(GROUP_EXPIRY)
        # From then on it may lapse at any moment up to GROUP_EXPIRY_WAIT (a layer may round
        # join times to whole seconds): probe until a group_send reaches nobody.
        probe = 0
        while loop.time() - joined < GROUP_EXPIRY_WAIT:
            probe += 1
            await call(other.group_send(group, message(probe)), "group_send after group_expiry")
            if await receive_or_none(first, channel) is None:
                return
            await asyncio.sleep(GROUP_EXPIRY_POLL)
        await call(other.group_send(group, message(0)), "group_send after group_expiry")
        await assert_quiet(
            first,
            channel,
            f"the membership was added {GROUP_EXPIRY_WAIT}s ago with group_expiry={GROUP_EXPIRY}",
        )

    @pytest.mark.asyncio
    async def test_group_add_again_renews_membership(self, make_pair: Any, names: Names) -> None:
        first, other = make_pair(group_expiry=GROUP_EXPIRY)
        group, channel = names.group("renew"), names.channel("member")
        await join(first, group, channel)
        await asyncio.sleep(GROUP_REFRESH_STEP)
        await join(other, group, channel)
        await asyncio.sleep(GROUP_REFRESH_STEP)
        await call(first.group_send(group, message(1)), "group_send")
        await receive_once(
            first,
            channel,
            message(1),
            f"renewed {GROUP_REFRESH_STEP}s ago (group_expiry={GROUP_EXPIRY})",
        )

    @pytest.mark.asyncio
    async def test_full_member_is_skipped_without_channel_full(
        self, make_pair: Any, names: Names
    ) -> None:
        first, other = make_pair(capacity=1)
        group = names.group("partly-full")
        full, roomy = names.channel("full"), names.channel("roomy")
        await call(first.send(full, message(0)), "send filling the channel (capacity=1)")
        await join(first, group, full, roomy)
        await call(first.group_send(group, message(1)), "group_send with one member at capacity")
        await receive_once(other, roomy, message(1), "member with room")
        await receive_once(other, full, message(0), "full member keeps what it had")
        await assert_quiet(other, full, "the member was full when group_send ran")

    @pytest.mark.asyncio
    async def test_group_send_honours_channel_capacity_per_member(
        self, make_pair: Any, names: Names
    ) -> None:
        tight, loose = names.channel("tight.one"), names.channel("loose")
        first, other = make_pair(capacity=5, channel_capacity={names.channel("tight.*"): 1})
        group = names.group("capacities")
        await join(first, group, tight, loose)
        await call(first.group_send(group, message(0)), "group_send #1")
        await call(first.group_send(group, message(1)), "group_send #2, the capacity-1 member full")
        await receive_once(other, loose, message(0), "member with capacity 5, 1st")
        await receive_once(other, loose, message(1), "member with capacity 5, 2nd")
        await receive_once(other, tight, message(0), "member with capacity 1")
        await assert_quiet(other, tight, "a channel_capacity pattern gave it capacity 1")

    @pytest.mark.asyncio
    async def test_group_send_reaches_many_local_members(self, layer: Any, names: Names) -> None:
        group = names.group("crowd")
        members = [
            await call(layer.new_channel(), "new_channel()") for _ in range(LOCAL_GROUP_MEMBERS)
        ]
        await join(layer, group, *members)
        await call(
            layer.group_send(group, message(5)), f"group_send to {LOCAL_GROUP_MEMBERS} members"
        )
        await asyncio.gather(
            *(
                receive_once(layer, channel, message(5), "one of many members")
                for channel in members
            )
        )
        await assert_all_quiet(
            [(layer, channel) for channel in members], "each member must get the message once"
        )
