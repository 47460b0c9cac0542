"""Redis's part of receiving: a source per (event loop, shard, set of lists).

The receive loop itself (who waits, when to fetch, failures, cancellation) is the shared
one in :mod:`layers.runtime.receiver`; this module only says how Redis fetches
(``BLMPOP ... COUNT n``, or ``BLPOP`` before Redis 7), how a blocked pop is ended
(``CLIENT UNBLOCK``, which ends it as if it had timed out, so it pops nothing) and how a
message popped for nobody goes back to the head of its list (``give_back.lua``).

Servers or accounts that refuse ``CLIENT`` (``CLIENT UNBLOCK`` is in ``@dangerous``) cannot
end a blocked pop: it then runs out within ``block_timeout``, and whatever it takes in that
time is given back, so a receiver elsewhere still gets it.
"""

from __future__ import annotations

import logging
import time

from layers.errors import ServerError
from layers.redis import scripts
from layers.redis.cluster import SlotClient
from layers.redis.connections import ShardClient, Watch
from layers.runtime.receiver import Fetched

logger = logging.getLogger("layers.redis")


def parse_entries(key: bytes, entries: list[bytes], offset_ms: float) -> list[Fetched]:
    """Entries ``<expires_ms>:<channel>[,<channel>...]:<payload>`` as :class:`Fetched`,
    expired ones left out; ``offset_ms`` is the server's clock minus ours."""
    server_now_ms = time.time() * 1000 + offset_ms
    now = time.monotonic()
    found = []
    for entry in entries:
        # Anything may sit in a list under our prefix (another program, a bad restore): an
        # entry no layer wrote is dropped here, never allowed to end the receive loop, which
        # would lose the entries popped with it.
        try:
            stamp, names, payload = entry.split(b":", 2)
            left = (int(stamp) - server_now_ms) / 1000
            if left > 0:
                channels = names.decode().split(",")
        except (ValueError, OverflowError):  # UnicodeDecodeError is a ValueError
            logger.warning("dropping an entry of unknown form from %r", key)
            continue
        if left > 0:
            found.append(Fetched(channels, payload, now + left, (key, entry)))
    return found


class RedisSource:
    """Blocking pops on some lists of one shard."""

    def __init__(
        self,
        client: ShardClient | SlotClient,
        keys: tuple[str, ...],
        *,
        drain: bool,
        block_timeout: float,
        read_timeout: float,
    ) -> None:
        self.client = client
        self.address = client.address
        self.keys = keys
        self.drain = drain
        self._block_timeout = block_timeout
        self._read_timeout = read_timeout
        self._watch = Watch()

    async def fetch(self, count: int) -> list[Fetched]:
        client = self.client
        offset = await client.clock_offset_ms()
        keys = self.keys
        if client.has_blmpop:
            try:
                reply = await client.call(
                    "BLMPOP",
                    self._block_timeout,
                    len(keys),
                    *keys,
                    "LEFT",
                    "COUNT",
                    count,
                    timeout=self._read_timeout,
                    watch=self._watch,
                )
            except ServerError as exc:
                if "unknown command" not in str(exc.reason).lower():
                    raise
                client.has_blmpop = False
            else:
                return [] if reply is None else parse_entries(reply[0], reply[1], offset)
        reply = await client.call(
            "BLPOP", *keys, self._block_timeout, timeout=self._read_timeout, watch=self._watch
        )
        return [] if reply is None else parse_entries(reply[0], [reply[1]], offset)

    async def interrupt(self) -> bool:
        client_id = self._watch.client_id
        if client_id is None:
            return True
        return await self.client.unblock(client_id)

    def release(self) -> None:
        pass  # a blocked pop ends with its fetch; nothing is held between fetches

    async def give_back(self, items: list[Fetched]) -> None:
        by_key: dict[bytes, list[bytes]] = {}
        for item in items:
            key, entry = item.origin
            by_key.setdefault(key, []).append(entry)
        for key, entries in by_key.items():
            await self.client.script(scripts.give_back(), [key], entries)
