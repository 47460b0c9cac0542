"""Redis Cluster: a slot map, a :class:`ShardClient` per node, and redirections.

In cluster mode a route is a hash slot, not a shard index: every key the layer writes
carries a hash tag (``<prefix>:c:{<channel>}``), so a channel's list, an instance's list of
process-local channels and a group's set each sit in one slot, and every script touches
the keys of one slot only. :class:`SlotClient` is what the layer and the receive loops
use in place of a :class:`ShardClient`: the same calls, sent to whichever master serves
its slot right now.

Redirections, none of which ran the command (so following them never runs a script
twice):

- ``MOVED``: the slot has a new master; the map is updated and the call goes there.
- ``ASK``: the slot is being migrated and this key is already on the target; the call
  goes there once, after ``ASKING`` on the same connection.
- ``TRYAGAIN`` (keys of one call split by a migration) and ``CLUSTERDOWN`` (a failover in
  progress): retried with backoff for up to ``retry_timeout``.

A call whose reply is lost is never repeated on any node (the node's :class:`ShardClient`
decides that, as for plain shards); the slot map is reloaded after it, since the node may
have failed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from layers.errors import BackendUnavailable, ServerError
from layers.redis.connections import NotRun, ShardClient, Watch
from layers.redis.hosts import ClusterSpec
from layers.redis.scripts import Script

SLOTS = 16384
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 0.5
# Redirections one call follows before giving up (a slot map that keeps changing).
_MAX_REDIRECTS = 16
# Seconds one node gets to answer CLUSTER SLOTS before the next one is asked.
_MAP_NODE_TIMEOUT = 1.0
# Seconds one node is retried before the slot map is asked again.
_NODE_RETRY_TIMEOUT = 1.0

Address = tuple[str, int]
# Refusals by which a cluster says the command did not run there.
_NOT_RUN = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))


class ClusterClient:
    """Connections to the masters of one cluster, for one event loop."""

    def __init__(
        self,
        spec: ClusterSpec,
        pool_options: dict[str, Any],
        retry_timeout: float,
        max_connections: int,
    ) -> None:
        self.spec = spec
        self.address = spec.address
        self._pool_options = pool_options
        self._retry_timeout = retry_timeout
        self._max_connections = max_connections
        self._nodes: dict[Address, ShardClient] = {}
        self._map: list[Address | None] = []
        self._loading: asyncio.Task[None] | None = None
        self._slot_clients: dict[int, SlotClient] = {}

    def node(self, address: Address) -> ShardClient:
        client = self._nodes.get(address)
        if client is None:
            # A node is retried only briefly: a master that stays unreachable is probably
            # failing over, and the slot client then looks for the new master until the
            # layer's retry_timeout.
            client = self._nodes[address] = ShardClient(
                self.spec.node(*address),
                self._pool_options,
                min(self._retry_timeout, _NODE_RETRY_TIMEOUT),
                self._max_connections,
            )
        return client

    def slot(self, slot: int) -> SlotClient:
        client = self._slot_clients.get(slot)
        if client is None:
            client = self._slot_clients[slot] = SlotClient(self, slot)
        return client

    async def master(self, slot: int) -> ShardClient:
        if not self._map:
            await self.refresh()
        address = self._map[slot]
        if address is None:
            raise BackendUnavailable(self.address, f"no master serves hash slot {slot}")
        return self.node(address)

    def serves(self, slot: int) -> ShardClient | None:
        """The client of the master the current map names for ``slot``, if any."""
        address = self._map[slot] if self._map else None
        return None if address is None else self.node(address)

    async def masters(self) -> list[ShardClient]:
        if not self._map:
            await self.refresh()
        return [self.node(address) for address in dict.fromkeys(self._map) if address]

    async def scripts(self, calls: list[tuple[int, Script, list[Any], list[Any]]]) -> None:
        """Run scripts (slot, script, keys, args), each at most once, pipelined per master:
        one round trip per master, then one more per call a redirection sent elsewhere.
        Raises the first error, once every call has been tried."""
        if not self._map:
            await self.refresh()
        by_node: dict[ShardClient, list[int]] = {}
        alone: list[int] = []
        for index, call in enumerate(calls):
            node = self.serves(call[0])
            if node is None:
                alone.append(index)
            else:
                by_node.setdefault(node, []).append(index)
        errors: list[BaseException] = []

        async def batch(node: ShardClient, indexes: list[int]) -> None:
            try:
                replies = await node.scripts([calls[i][1:] for i in indexes])
            except NotRun:
                alone.extend(indexes)  # nothing ran there: the slot clients find the master
                return
            except (BackendUnavailable, ServerError) as exc:
                # Kept for later: the other masters' batches still run to the end.
                errors.append(exc)
                return
            for index, reply in zip(indexes, replies, strict=True):
                if not isinstance(reply, ServerError):
                    continue
                kind, where = _redirection(reply.__cause__)
                if kind in _NOT_RUN:
                    if kind == "MOVED" and where is not None:
                        self.moved(*where)
                    alone.append(index)
                else:
                    errors.append(reply)

        await asyncio.gather(*(batch(node, indexes) for node, indexes in by_node.items()))

        async def one(index: int) -> None:
            slot, script, keys, args = calls[index]
            try:
                await self.slot(slot).script(script, keys, args)
            except (BackendUnavailable, ServerError) as exc:
                errors.append(exc)

        await asyncio.gather(*(one(index) for index in alone))
        if errors:
            raise errors[0]

    def moved(self, slot: int, address: Address) -> None:
        if self._map:
            self._map[slot] = address
        # One slot moved usually means more did (resharding, failover): reload in the back.
        self.stale()

    def stale(self) -> None:
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._load())
            self._loading.add_done_callback(_consume)

    async def refresh(self) -> None:
        """Reload the slot map (callers at the same time share one load)."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._load())
            self._loading.add_done_callback(_consume)
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        known = [address for address in dict.fromkeys(self._map) if address]
        candidates = list(dict.fromkeys([*known, *self.spec.seeds, *self._nodes]))
        deadline = time.monotonic() + self._retry_timeout
        delay = _FIRST_BACKOFF
        errors: list[str] = []
        while True:
            for address in candidates:
                try:
                    async with asyncio.timeout(_MAP_NODE_TIMEOUT):
                        reply = await self.node(address).call("CLUSTER", "SLOTS", idempotent=True)
                except (BackendUnavailable, ServerError, TimeoutError) as exc:
                    errors.append(f"{address[0]}:{address[1]}: {exc}")
                    continue
                slot_map = _parse_slots(reply, address)
                if slot_map is not None:
                    self._map = slot_map
                    return
                errors.append(f"{address[0]}:{address[1]}: slots not all served yet")
            if time.monotonic() + delay > deadline:
                raise BackendUnavailable(
                    self.address, "cannot read the slot map: " + "; ".join(errors[-3:])
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        nodes, self._nodes = list(self._nodes.values()), {}
        self._slot_clients.clear()
        for node in nodes:
            await node.close()

    def abandon(self) -> None:
        for node in self._nodes.values():
            node.abandon()
        self._nodes.clear()
        self._slot_clients.clear()


def _consume(task: asyncio.Task[None]) -> None:
    # A background reload that failed is retried by the next call that needs the map.
    if not task.cancelled():
        task.exception()


def _parse_slots(reply: Any, asked: Address) -> list[Address | None] | None:
    slot_map: list[Address | None] = [None] * SLOTS
    for entry in reply or ():
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        # An empty host (or '?') means "the address you reached me by".
        address = (host if host not in ("", "?") else asked[0], int(master[1]))
        slot_map[start : end + 1] = [address] * (end - start + 1)
    # Slots no master serves raise when used (BackendUnavailable naming the slot).
    return slot_map if any(slot_map) else None


class SlotClient:
    """A :class:`ShardClient`'s calls, for the keys of one hash slot, on its master."""

    def __init__(self, cluster: ClusterClient, slot: int) -> None:
        self.cluster = cluster
        self.slot = slot
        self.address = f"{cluster.address} (hash slot {slot})"
        self.has_blmpop = True
        self._blocked_on: ShardClient | None = None

    @property
    def can_unblock(self) -> bool:
        return self._blocked_on is None or self._blocked_on.can_unblock

    async def call(
        self,
        *args: Any,
        idempotent: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
        watch: Watch | None = None,
    ) -> Any:
        async def run(node: ShardClient, asking: bool) -> Any:
            if watch is not None:
                self._blocked_on = node
            return await node.call(
                *args, idempotent=idempotent, timeout=timeout, watch=watch, asking=asking
            )

        return await self._routed(run)

    async def script(
        self, script: Script, keys: list[Any], args: list[Any], *, idempotent: bool = False
    ) -> Any:
        async def run(node: ShardClient, asking: bool) -> Any:
            return await node.script(script, keys, args, idempotent=idempotent, asking=asking)

        return await self._routed(run)

    async def clock_offset_ms(self) -> float:
        return await (await self.cluster.master(self.slot)).clock_offset_ms()

    async def unblock(self, client_id: int) -> bool:
        node = self._blocked_on
        return True if node is None else await node.unblock(client_id)

    async def _routed(self, run: Any) -> Any:
        cluster = self.cluster
        asking_at: Address | None = None
        deadline: float | None = None
        delay = _FIRST_BACKOFF
        for _ in range(_MAX_REDIRECTS):
            node = cluster.node(asking_at) if asking_at else await cluster.master(self.slot)
            try:
                return await run(node, asking_at is not None)
            except ServerError as exc:
                kind, where = _redirection(exc.__cause__)
                asking_at = None
                if kind == "MOVED" and where is not None:
                    cluster.moved(*where)
                    continue
                if kind == "ASK" and where is not None:
                    asking_at = where[1]
                    continue
                if kind not in _NOT_RUN:
                    raise
                now = time.monotonic()
                deadline = deadline or now + cluster._retry_timeout
                if now + delay > deadline:
                    raise
                if kind != "TRYAGAIN":
                    cluster.stale()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
            except NotRun:
                # A master that cannot be reached may be failing over: once the map names
                # another master for the slot, the call (which did not run) goes there.
                asking_at = None
                now = time.monotonic()
                deadline = deadline or now + cluster._retry_timeout
                with contextlib.suppress(BackendUnavailable):
                    await cluster.refresh()
                if cluster.serves(self.slot) is not node and now + delay <= deadline:
                    continue
                if now + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
            except BackendUnavailable:
                # Maybe a failed master: the next call should find its replica promoted.
                cluster.stale()
                raise
        raise BackendUnavailable(
            cluster.address, f"hash slot {self.slot} kept moving ({_MAX_REDIRECTS} redirections)"
        )


def _redirection(error: BaseException | None) -> tuple[str, tuple[int, Address] | None]:
    """A cluster's refusal that did not run the command: its code (``MOVED``, ``ASK``,
    ``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``) and, for the first two, (slot, node).

    redis-py 5.0's ordinary connections do not know these codes (only its cluster client's
    parser does) and raise a plain ``ResponseError("MOVED 3999 10.0.0.2:7000")``; later
    versions raise ``MovedError("3999 10.0.0.2:7000")``. Both are read here.
    """
    if error is None:
        return "", None
    if isinstance(error, MovedError):
        kind, text = "MOVED", str(error)
    elif isinstance(error, AskError):
        kind, text = "ASK", str(error)
    elif isinstance(error, TryAgainError):
        return "TRYAGAIN", None
    elif isinstance(error, ClusterDownError):
        return "CLUSTERDOWN", None
    else:
        kind, _, text = str(error).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return kind, None
    try:
        slot, node = text.split()[-2:]
        host, port = node.rsplit(":", 1)
        return kind, (int(slot), (host, int(port)))
    except ValueError:
        return kind, None
