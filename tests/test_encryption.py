"""``symmetric_encryption_keys`` on every networked backend (issue #11).

- What a layer stores is unreadable: the raw Redis entry, the PostgreSQL row and the queued
  RabbitMQ body (tests/raw_servers.py) of a direct send, a send to a process-local channel
  and a group send hold no trace of the message, where the same read shows it plainly
  without keys (so the read itself is known to look in the right place).
- Rotation: a layer with ``[new, old]`` reads what ``[old]`` wrote, and what it writes is
  read by ``[new]`` alone.
- A message no configured key decrypts (another key's, or none) is dropped with a logged
  warning, and the receive loop goes on: the valid message after it arrives, also to a
  receive that was already waiting.

tests/redis/test_migration.py checks the channels_redis form of the same setting on Redis;
tests/test_base.py checks the encryption itself, without a server.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.backends import NETWORKED, Backend, backend

pytest.importorskip("cryptography", reason="the [crypto] extra is not installed")

pytestmark = pytest.mark.timeout(120)

WITHIN = 10.0
OLD, NEW, OTHER = "old-secret", "new-secret", "someone-else's-secret"
UNREADABLE = "not encrypted with any configured key"


@pytest.fixture(params=NETWORKED)
def each(request: pytest.FixtureRequest) -> Backend:
    return backend(request.param)


class Layers:
    """Instances of one backend on one prefix, each with its keys; flushed and closed."""

    def __init__(self, each: Backend) -> None:
        self.each = each
        self.made: list[Any] = []

    def __call__(self, *keys: str) -> Any:
        extra = {"symmetric_encryption_keys": list(keys)} if keys else {}
        layer = self.each.make(f"l{len(self.made)}", **extra)
        self.made.append(layer)
        return layer

    async def close(self) -> None:
        if self.made:
            await self.made[0].flush()
        for layer in self.made:
            await layer.close()


@pytest.fixture
async def layers(each: Backend) -> AsyncIterator[Layers]:
    made = Layers(each)
    try:
        yield made
    finally:
        await made.close()


async def receive(layer: Any, channel: str) -> Any:
    return await asyncio.wait_for(layer.receive(channel), WITHIN)


def raw_reader(each: Backend) -> Any:
    """A reader of what is stored for a channel: ``read(channel)``, ``close()``."""
    from tests import raw_servers

    if each.name == "redis":
        redis_raw = raw_servers.RedisRaw(each.prefix)
        return redis_raw, redis_raw.stored
    if each.name == "postgres":
        postgres_raw = raw_servers.PostgresRaw(each.prefix, each.config()["dsn"])
        return postgres_raw, postgres_raw.stored
    amqp_raw = raw_servers.AmqpRaw(each.prefix)
    return amqp_raw, lambda channel: amqp_raw.stored(amqp_raw.queue(channel))


async def stored_after_sends(each: Backend, layer: Any, marker: str) -> dict[str, list[bytes]]:
    """Send ``marker`` three ways (direct, to a process-local channel, through a group to
    an ordinary member) and read what the server holds for each, before anyone receives."""
    plain, member = f"plain-{uuid.uuid4().hex[:6]}", f"member-{uuid.uuid4().hex[:6]}"
    local = await layer.new_channel()
    message = {"type": "secret.message", "text": marker, "blob": marker.encode(), marker: 1}
    await layer.group_add("secret-group", member)
    await layer.send(plain, message)
    await layer.send(local, message)
    await layer.group_send("secret-group", message)
    raw, read = raw_reader(each)
    try:
        stored = {name: read(name) for name in (plain, local, member)}
    finally:
        raw.close()
    for name in (plain, local, member):
        assert await receive(layer, name) == message, f"{name} did not give the message back"
    await layer.group_discard("secret-group", member)
    return stored


async def test_payloads_on_the_server_are_unreadable(each: Backend, layers: Layers) -> None:
    marker = f"plain-text-marker-{uuid.uuid4().hex}"
    shown = await stored_after_sends(each, layers(), marker)
    for name, bodies in shown.items():
        assert len(bodies) == 1, f"{name}: expected one stored message, found {len(bodies)}"
        assert marker.encode() in bodies[0], f"without keys the read of {name} should show it"
    hidden = await stored_after_sends(each, layers(NEW, OLD), marker)
    for name, bodies in hidden.items():
        assert len(bodies) == 1, f"{name}: expected one stored message, found {len(bodies)}"
        assert marker.encode() not in bodies[0], f"{name} is stored readable: {bodies[0]!r}"
        assert b"secret.message" not in bodies[0]


async def test_key_rotation(layers: Layers) -> None:
    old, rotating, new = layers(OLD), layers(NEW, OLD), layers(NEW)
    channel = f"rotate-{uuid.uuid4().hex[:6]}"
    # Step 1 of a rotation: [new, old] everywhere reads what [old] still writes...
    await old.send(channel, {"type": "m", "from": "old"})
    assert await receive(rotating, channel) == {"type": "m", "from": "old"}
    local = await rotating.new_channel()
    await old.send(local, {"type": "m", "from": "old", "to": "local"})
    assert await receive(rotating, local) == {"type": "m", "from": "old", "to": "local"}
    await rotating.group_add("rotate-group", local)
    await old.group_send("rotate-group", {"type": "m", "from": "old", "via": "group"})
    assert await receive(rotating, local) == {"type": "m", "from": "old", "via": "group"}
    # ...and writes with the new key, which [new] reads once [old] is dropped.
    await rotating.send(channel, {"type": "m", "from": "rotating"})
    assert await receive(new, channel) == {"type": "m", "from": "rotating"}
    new_local = await new.new_channel()
    await rotating.send(new_local, {"type": "m", "from": "rotating", "to": "local"})
    assert await receive(new, new_local) == {"type": "m", "from": "rotating", "to": "local"}


async def test_undecryptable_messages_are_dropped_and_receiving_goes_on(
    layers: Layers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="layers")
    reader, writer = layers(NEW, OLD), layers(NEW)
    strangers = [layers(OTHER), layers()]  # another key, and no encryption at all
    plain = f"undecryptable-{uuid.uuid4().hex[:6]}"
    local = await reader.new_channel()
    member = await reader.new_channel()
    await reader.group_add("undecryptable", member)

    async def bad_then_good(channel: str, n: int) -> None:
        for stranger in strangers:
            for _ in range(2):
                if channel == member:
                    await stranger.group_send("undecryptable", {"type": "bad", "n": n})
                else:
                    await stranger.send(channel, {"type": "bad", "n": n})
        if channel == member:
            await writer.group_send("undecryptable", {"type": "good", "n": n})
        else:
            await writer.send(channel, {"type": "good", "n": n})

    for n, channel in enumerate((plain, local, member, plain, local, member)):
        before = len(caplog.records)
        if n < 3:
            await bad_then_good(channel, n)
            got = await receive(reader, channel)
        else:
            # A receive already waiting when the bad messages arrive.
            waiting = asyncio.ensure_future(receive(reader, channel))
            await asyncio.sleep(0.1)
            await bad_then_good(channel, n)
            got = await waiting
        assert got == {"type": "good", "n": n}, f"{channel}: {got!r}"
        dropped = [r for r in caplog.records[before:] if UNREADABLE in r.getMessage()]
        assert len(dropped) == 4, (
            f"{channel}: {len(dropped)} warnings for 4 undecryptable messages: "
            + "; ".join(r.getMessage() for r in caplog.records[before:])
        )
        assert all(r.levelno == logging.WARNING for r in dropped)
    # Nothing stopped: the reader still gets messages on all three afterwards.
    for channel in (plain, local):
        await writer.send(channel, {"type": "after"})
        assert await receive(reader, channel) == {"type": "after"}
    await writer.group_send("undecryptable", {"type": "after"})
    assert await receive(reader, member) == {"type": "after"}
