"""The layer on a server whose ACL user may not run CLIENT commands.

Managed Redis services and careful operators hand out users like ``+@all -@dangerous``
(no ``CLIENT UNBLOCK``, ``CLIENT KILL``...) or deny ``CLIENT`` altogether. The layer must
work for them just the same: a cancelled receive must not leave a blocking pop behind that
takes the next message for nobody, receives must return their messages, and the layer says
once (a warning on ``layers.redis``) what it does instead of ``CLIENT UNBLOCK``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
import redis

from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess

pytestmark = pytest.mark.timeout(120)

PASSWORD = "s3cret-pass"
NO_DANGEROUS = "nodanger"
NO_CLIENT = "noclient"
# ACL SETUSER <user> reset on ><password> +@all <denied> ~* &*
RULES = {NO_DANGEROUS: "-@dangerous", NO_CLIENT: "-client"}
WITHIN = 3.0  # seconds a message may take to reach a waiting receive


@pytest.fixture
def admin(own_server: RedisProcess) -> Iterator[redis.Redis]:
    """The private server's default (unrestricted) user, with the restricted users made."""
    client = redis.Redis(port=own_server.port, socket_timeout=5)
    for user, denied in RULES.items():
        client.acl_setuser(
            user,
            enabled=True,
            reset=True,
            passwords=[f"+{PASSWORD}"],
            categories=["+@all", denied] if denied.startswith("-@") else ["+@all"],
            commands=[] if denied.startswith("-@") else [denied],
            keys=["*"],
            channels=["*"],
        )
        rules = client.acl_getuser(user)
        assert rules is not None and "~*" in str(rules["keys"]), rules
    try:
        yield client
    finally:
        client.close()


def url_for(server: RedisProcess, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


def test_the_users_are_really_restricted(admin: redis.Redis, own_server: RedisProcess) -> None:
    for user in RULES:
        client = redis.Redis(port=own_server.port, username=user, password=PASSWORD)
        try:
            assert client.ping()
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.client_unblock(1)
        finally:
            client.close()


def blocked_clients(admin: redis.Redis) -> int:
    return int(admin.info("clients")["blocked_clients"])


async def until(condition: object, what: str, deadline: float = 5.0) -> None:
    """Wait for ``condition()`` (run in a thread: it may do blocking I/O) to be true."""
    assert callable(condition)
    end = time.monotonic() + deadline
    while not await asyncio.to_thread(condition):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def cancelled_receive_then_other(
    admin: redis.Redis,
    first: RedisChannelLayer,
    second: RedisChannelLayer,
    channel: str,
    rounds: int,
) -> None:
    """``first`` starts a receive and gives up on it; ``second`` then waits on the same
    channel and one message is sent, which ``second`` must get; ``rounds`` times."""
    for n in range(rounds):
        abandoned = asyncio.create_task(first.receive(channel))
        # Its pop is on the server (or a pop of an earlier round still is).
        await until(lambda: blocked_clients(admin) >= 1, "the first receive to block")
        abandoned.cancel()
        (outcome,) = await asyncio.gather(abandoned, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError), (
            f"round {n}: the abandoned receive returned {outcome!r}, a message meant for "
            "the receive that came after it"
        )
        waiting = asyncio.create_task(second.receive(channel))
        await until(lambda: blocked_clients(admin) >= 1, "the second receive to block")
        await second.send(channel, {"type": "m", "n": n})
        try:
            got = await asyncio.wait_for(waiting, WITHIN)
        except TimeoutError:
            raise AssertionError(
                f"round {n}: the message never reached the waiting receive "
                f"({n} of {n + 1} did); the abandoned receive's pop took it"
            ) from None
        assert got == {"type": "m", "n": n}


def client_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("layers.redis")
        and record.levelno == logging.WARNING
        and "client" in record.getMessage().lower()
    ]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("layers.redis") and record.levelno >= logging.ERROR
    ]


async def test_cancelled_receive_leaves_no_pop_behind_without_client_unblock(
    admin: redis.Redis,
    own_server: RedisProcess,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="layers.redis")
    url = url_for(own_server, NO_DANGEROUS)
    first = RedisChannelLayer(hosts=[url], prefix=prefix)
    second = RedisChannelLayer(hosts=[url], prefix=prefix)
    try:
        await cancelled_receive_then_other(admin, first, second, "work", 20)
        warnings = client_warnings(caplog)
        assert len(warnings) == 1, f"expected one warning about CLIENT, got {warnings}"
        assert not errors(caplog)
    finally:
        await first.close()
        await second.close()


async def test_receives_work_without_any_client_command(
    admin: redis.Redis,
    own_server: RedisProcess,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="layers.redis")
    url = url_for(own_server, NO_CLIENT)
    layer = RedisChannelLayer(hosts=[url], prefix=prefix)
    other = RedisChannelLayer(hosts=[url], prefix=prefix)
    try:
        local = await layer.new_channel()
        for n in range(30):
            message = {"type": "m", "n": n}
            kind = ("receive", "receive of a new_channel()", "receive_many")[n % 3]
            target = local if n % 3 == 1 or n % 6 == 5 else "plain"
            await other.send(target, message)
            try:
                if kind == "receive_many":
                    channel, got = await asyncio.wait_for(
                        layer.receive_many(["elsewhere", target]), WITHIN
                    )
                    assert channel == target
                else:
                    got = await asyncio.wait_for(layer.receive(target), WITHIN)
            except TimeoutError:
                raise AssertionError(
                    f"{kind} on {target} #{n} did not return its message within {WITHIN} s"
                ) from None
            assert got == message, f"{kind} #{n}"

        # send, group_send and flush still work for this user.
        await other.group_add("room", local)
        await other.group_add("room", "plain")
        await other.group_send("room", {"type": "g"})
        assert await asyncio.wait_for(layer.receive(local), WITHIN) == {"type": "g"}
        assert await asyncio.wait_for(layer.receive("plain"), WITHIN) == {"type": "g"}

        # A cancelled receive leaves no pop behind here either.
        await cancelled_receive_then_other(admin, layer, other, "work", 5)
        assert len(client_warnings(caplog)) <= 1, client_warnings(caplog)
        assert not errors(caplog)

        await other.send("leftover", {"type": "m"})
        await other.flush()
        assert not admin.keys(f"{prefix}:*")
    finally:
        await layer.close()
        await other.close()
