"""The layer as a Redis ACL user that has only what the layer needs: its prefix's keys and
the commands below (docs/reliability.md, "Least privilege", gives the same rule).

Each test gets a user of its own on a private server, limited to that test's prefix; the
whole conformance suite runs as such users, and what lies outside the grant is refused.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

import pytest
import redis

from conformance import ConformanceSuite, LayerSpec
from layers.errors import ServerError
from layers.redis import RedisChannelLayer
from tests.redis.harness import RedisProcess

pytestmark = pytest.mark.timeout(120)

#: Every command the layer sends, the Lua scripts' own redis.call()s included (Redis checks
#: those against the caller's ACL too). CLIENT ID and CLIENT UNBLOCK end a blocking pop
#: whose receivers left; without them the layer warns once and works on (see
#: tests/redis/test_restricted.py).
COMMANDS = (
    "evalsha", "script|load", "time", "blmpop", "blpop", "zrem", "scan", "unlink",
    "client|id", "client|unblock", "lindex", "llen", "lpop", "lpush", "lrange", "rpush",
    "pexpire", "pttl", "zadd", "zrange", "zremrangebyscore",
)  # fmt: skip
PASSWORD = "lp-" + uuid.uuid4().hex
REFUSED = re.compile(r"NOPERM|no permissions", re.IGNORECASE)


def acl_rules(prefix: str) -> list[str]:
    """``ACL SETUSER <user> <rules>`` for a layer with ``prefix``."""
    return [
        "reset", "on", f">{PASSWORD}", f"~{prefix}:*", "resetchannels", "-@all",
        *(f"+{command}" for command in COMMANDS),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def acl_server(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private server for this module's users: ACL SETUSER never touches the shared one."""
    server = RedisProcess(tmp_path_factory.mktemp("redis-acl")).start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def url_for(acl_server: str) -> Iterator[object]:
    """``url_for(prefix)``: the URL of a new user limited to ``prefix``; users deleted after."""
    host, port = acl_server.split(":")
    admin = redis.Redis(host=host, port=int(port), socket_timeout=5)
    made: list[str] = []

    def make(prefix: str) -> str:
        user = f"lp-{uuid.uuid4().hex[:12]}"
        admin.execute_command("ACL", "SETUSER", user, *acl_rules(prefix))
        made.append(user)
        return f"redis://{user}:{PASSWORD}@{acl_server}/0"

    try:
        yield make
    finally:
        if made:
            admin.execute_command("ACL", "DELUSER", *made)
        admin.close()


class TestAsLeastPrivilegedUser(ConformanceSuite):
    @pytest.fixture
    def layer_spec(self, url_for: object, conformance_prefix: str) -> LayerSpec:
        assert callable(url_for)
        return LayerSpec(RedisChannelLayer, config={"hosts": [url_for(conformance_prefix)]})

    @pytest.fixture(autouse=True)
    def nothing_refused(self, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
        """Refusals the layer only logs (a blocking pop it could not end...) fail too."""
        caplog.set_level(logging.DEBUG, logger="layers")
        yield
        refused = [r.getMessage() for r in caplog.records if REFUSED.search(r.getMessage())]
        assert not refused, f"the server refused the layer: {refused}"


async def test_outside_the_grant_is_refused(url_for: object, acl_server: str) -> None:
    assert callable(url_for)
    prefix = "t" + uuid.uuid4().hex[:12]
    url = url_for(prefix)
    mine = RedisChannelLayer(hosts=[url], prefix=prefix)
    other = RedisChannelLayer(hosts=[url], prefix=prefix + "x", retry_timeout=1)
    try:
        await mine.send("plain", {"type": "m"})
        assert await mine.receive("plain") == {"type": "m"}
        for call in (
            other.send("plain", {"type": "m"}),
            other.group_add("g", "plain"),
            other.group_send("g", {"type": "m"}),
        ):
            with pytest.raises(ServerError, match=REFUSED):
                await call
    finally:
        await mine.flush()
        await mine.close()
        await other.close()
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        for command in (
            ("SET", f"{prefix}:c:x", "1"),  # a key it may touch, with a command it may not
            ("GET", "unrelated"),
            ("KEYS", "*"),
            ("FLUSHDB",),
            ("EVAL", "return 1", "0"),  # only scripts the layer loads, by SHA
            ("SUBSCRIBE", f"{prefix}:c:x"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    finally:
        client.close()
