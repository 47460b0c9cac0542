"""The Redis channel layer. See ``layers/redis/README.md`` for the data layout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from typing import Any, cast

from channels.exceptions import ChannelFull

from layers.base import Message, int_option, seconds_option
from layers.errors import ConfigurationError
from layers.redis import scripts
from layers.redis.cluster import ClusterClient, SlotClient, slot_of
from layers.redis.connections import ShardClient
from layers.redis.hosts import ClusterSpec, ShardSpec, parse_layout
from layers.redis.receiver import RedisSource, parse_entries
from layers.redis.sharding import shard_index
from layers.runtime import Fetched, NetworkLayer

logger = logging.getLogger("layers.redis")

Route = tuple[int, str]
SourceKey = tuple[int, tuple[str, ...]]
_SCAN_BATCH = 1000


class RedisChannelLayer(NetworkLayer):
    """A channel layer on one or more Redis servers (Redis 7 or later; 6.2 works with BLPOP).

    Config, besides the :class:`~layers.base.BaseLayer` keys:

    - ``hosts`` (``["redis://127.0.0.1:6379/0"]``): the servers, one shard each; every form
      :mod:`layers.redis.hosts` accepts (``redis://``, ``rediss://``, ``unix://`` URLs,
      ``(host, port)``, a dict of redis-py options, a Sentinel dict); or, as the only entry,
      a Redis Cluster named by some of its nodes, ``{"cluster": ["redis://h:7000", ...],
      ...redis-py options for every node}`` (see ``layers/redis/README.md``, "Redis
      Cluster"). A cluster beside other entries raises ConfigurationError.
    - ``block_timeout`` (5.0): seconds a blocking pop waits on the server before it is
      reissued. Replies to blocking pops are read with ``block_timeout + socket_timeout``,
      so an idle ``receive`` never trips the socket timeout.
    - ``socket_timeout`` (5.0): seconds to wait for the reply to any other command.
    - ``connect_timeout`` (2.0): seconds to wait for a connection to open.
    - ``retry_timeout`` (5.0): how long an unreachable server is retried, with backoff,
      before calls raise :class:`~layers.errors.BackendUnavailable` naming it.
    - ``local_batch`` (100): entries the receive loop of this instance's process-local
      channels takes off Redis per pop.
    - ``prefetch`` (0): extra messages of an ordinary channel a waiting receive may take
      off Redis along with its own, kept in this instance's buffer for the next receives.
      Raises one consumer's throughput (fewer round trips) at the cost of fairness: up to
      ``prefetch`` messages wait in this process while receivers elsewhere may be idle,
      and they are lost if the process dies before receiving them.
    - ``max_connections`` (16): connections per shard and event loop for commands other
      than blocking pops (each waiting set of channels holds one more); callers beyond it
      wait for one to come free.
    - ``random_prefix_length`` (12), ``serializer_format`` ("msgpack"): accepted so that
      channels_redis settings work unchanged. The first sizes the random bytes channels_redis
      puts before each stored message to keep equal messages apart in its sorted sets; our
      lists need none, so it is ignored. The second must be "msgpack".

    Capacity of a process-local channel: ``send`` counts that channel's entries in the list
    all of this instance's local channels (of one ``new_channel`` prefix) share, once that
    list is as long as the capacity, so it bites only while the owner is not draining; the
    owner's buffer enforces it per channel as it drains, dropping (and logging) what
    overflows.
    """

    def __init__(
        self,
        *,
        hosts: Any = None,
        block_timeout: float = 5.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retry_timeout: float = 5.0,
        local_batch: int = 100,
        prefetch: int = 0,
        max_connections: int = 16,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
        **config: Any,
    ) -> None:
        super().__init__(**config)
        if serializer_format != "msgpack":
            raise ConfigurationError(
                f"serializer_format {serializer_format!r} is not supported: messages are "
                "always msgpack (channels_redis's default); drop the key"
            )
        int_option("random_prefix_length", random_prefix_length, low=0)
        layout = parse_layout(hosts)
        # In cluster mode a route's number is a hash slot, and keys carry hash tags.
        self.cluster: ClusterSpec | None = layout if isinstance(layout, ClusterSpec) else None
        self.shards: list[ShardSpec] = [] if isinstance(layout, ClusterSpec) else layout
        self.block_timeout = seconds_option("block_timeout", block_timeout)
        self.socket_timeout = seconds_option("socket_timeout", socket_timeout)
        self.connect_timeout = seconds_option("connect_timeout", connect_timeout)
        self.retry_timeout = seconds_option("retry_timeout", retry_timeout)
        self.local_batch = int_option("local_batch", local_batch)
        self.prefetch = int_option("prefetch", prefetch, low=0, high=99)
        self.max_connections = int_option("max_connections", max_connections)
        self.linger = 2 * self.block_timeout
        self._expiry_ms = max(1, round(self.expiry * 1000))
        self._group_expiry_ms = max(1, round(self.group_expiry * 1000))
        self._routes: dict[str, Route] = {}
        self._plans: dict[tuple[str, ...], list[tuple[int, tuple[str, ...]]]] = {}

    # -- keys and shards -------------------------------------------------------------------

    def _route(self, channel: str) -> Route:
        """(shard, list key) of a channel: process-local channels share their owner's list."""
        route = self._routes.get(channel)
        if route is None:
            bang = channel.find("!")
            name = channel if bang < 0 else channel[: bang + 1]
            if self.cluster is not None:
                key = f"{self.prefix}:c:{{{name}}}"
                route = (slot_of(key), key)
            else:
                route = (shard_index(name, len(self.shards)), f"{self.prefix}:c:{name}")
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[channel] = route
        return route

    def _group_route(self, group: str) -> Route:
        if self.cluster is not None:
            key = f"{self.prefix}:g:{{{group}}}"
            return slot_of(key), key
        return shard_index(group, len(self.shards)), f"{self.prefix}:g:{group}"

    def _plan(self, channels: tuple[str, ...]) -> list[tuple[int, tuple[str, ...]]]:
        """The lists to pop from for ``channels``, by shard. Receives on another
        instance's local channels never get here (they raise ForeignChannel first)."""
        plan = self._plans.get(channels)
        if plan is None:
            by_shard: dict[int, list[str]] = {}
            for channel in channels:
                shard, key = self._route(channel)
                keys = by_shard.setdefault(shard, [])
                if key not in keys:
                    keys.append(key)
            plan = [(shard, tuple(keys)) for shard, keys in by_shard.items()]
            if len(self._plans) >= 4096:
                self._plans.clear()
            self._plans[channels] = plan
        return plan

    # -- the transport ----------------------------------------------------------------------

    def _open_transport(self, loop: asyncio.AbstractEventLoop) -> _Transport:
        return _Transport(self)

    def _sources(self, channels: tuple[str, ...]) -> list[Hashable]:
        return list(self._plan(channels))

    def _clients(self) -> _Transport:
        return self._state().transport  # type: ignore[return-value]

    # -- sending ---------------------------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        self.require_valid_channel_name(channel)
        data = self.encode(message, channel)
        shard, key = self._route(channel)
        capacity = self.get_capacity(channel)
        pushed = (
            await self._clients()
            .client(shard)
            .script(scripts.send(), [key], [self._expiry_ms, capacity, channel, data])
        )
        if not pushed:
            raise ChannelFull(f"channel {channel!r} is at capacity ({capacity})")

    # -- groups ----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        shard, key = self._group_route(group)
        await (
            self._clients()
            .client(shard)
            .script(scripts.group_add(), [key], [channel, self._group_expiry_ms], idempotent=True)
        )

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        shard, key = self._group_route(group)
        await self._clients().client(shard).call("ZREM", key, channel, idempotent=True)

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        data = self.encode(message, group)
        clients = self._clients()
        shard, key = self._group_route(group)
        members = await clients.client(shard).script(
            scripts.group_members(), [key], [self._group_expiry_ms], idempotent=True
        )
        if not members:
            return
        # shard -> list key -> members: one entry per list, naming every member it serves.
        lists: dict[int, dict[str, list[str]]] = {}
        for channel in members.decode().split(","):
            target_shard, target_key = self._route(channel)
            lists.setdefault(target_shard, {}).setdefault(target_key, []).append(channel)
        calls = []
        batch = []
        for target_shard, by_key in lists.items():
            args: list[Any] = [self._expiry_ms, data]
            for names in by_key.values():
                args.append(min(self.get_capacity(name) for name in names))
                args.append(",".join(names))
            if clients.cluster is not None:
                batch.append((target_shard, scripts.group_send(), list(by_key), args))
                continue
            calls.append(
                clients.client(target_shard).script(scripts.group_send(), list(by_key), args)
            )
        if clients.cluster is not None:
            # A list per slot: one script per member list, pipelined per master.
            await clients.cluster.scripts(batch)
        elif len(calls) == 1:
            await calls[0]
        else:
            await asyncio.gather(*calls)

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self) -> None:
        clients = self._clients()
        nodes: list[ShardClient]
        if clients.cluster is not None:
            nodes = await clients.cluster.masters()
        else:
            nodes = [clients.shard(shard) for shard in range(len(self.shards))]
        for client in nodes:
            cursor = 0
            while True:
                cursor, keys = await client.call(
                    "SCAN",
                    cursor,
                    "MATCH",
                    f"{self.prefix}:*",
                    "COUNT",
                    _SCAN_BATCH,
                    idempotent=True,
                )
                if keys and clients.cluster is not None:
                    # One UNLINK per slot: a cluster refuses keys of several slots in one.
                    by_slot: dict[int, list[bytes]] = {}
                    for key in keys:
                        by_slot.setdefault(slot_of(key.decode()), []).append(key)
                    await asyncio.gather(
                        *(
                            clients.cluster.slot(slot).call("UNLINK", *same, idempotent=True)
                            for slot, same in by_slot.items()
                        )
                    )
                elif keys:
                    await client.call("UNLINK", *keys, idempotent=True)
                cursor = int(cursor)
                if cursor == 0:
                    break
        self._buffer.clear()


class _Transport:
    """The connections of one layer instance in one event loop, a client per shard."""

    def __init__(self, layer: RedisChannelLayer) -> None:
        self.layer = layer
        self.clients: dict[int, ShardClient] = {}
        self._options = {
            "socket_timeout": layer.socket_timeout,
            "socket_connect_timeout": layer.connect_timeout,
            "socket_keepalive": True,
        }
        self.cluster = (
            None
            if layer.cluster is None
            else ClusterClient(
                layer.cluster, self._options, layer.retry_timeout, layer.max_connections
            )
        )

    def client(self, shard: int) -> ShardClient | SlotClient:
        """The client of a route: a shard, or in cluster mode a hash slot."""
        if self.cluster is not None:
            return self.cluster.slot(shard)
        return self.shard(shard)

    def shard(self, shard: int) -> ShardClient:
        client = self.clients.get(shard)
        if client is None:
            layer = self.layer
            client = self.clients[shard] = ShardClient(
                layer.shards[shard], self._options, layer.retry_timeout, layer.max_connections
            )
        return client

    def source(self, key: Hashable) -> RedisSource:
        shard, keys = cast(SourceKey, key)
        layer = self.layer
        return RedisSource(
            self.client(shard),
            keys,
            drain=len(keys) == 1 and keys[0].endswith(("!", "!}")),
            block_timeout=layer.block_timeout,
            read_timeout=layer.block_timeout + layer.socket_timeout,
        )

    async def take_waiting(self, keys: Sequence[Hashable]) -> list[Fetched]:
        for shard, lists in cast(Sequence[SourceKey], keys):
            client = self.client(shard)
            offset = await client.clock_offset_ms()
            reply = await client.script(scripts.receive_many(), list(lists), [])
            if reply is not None:
                return parse_entries(reply[0], [reply[1]], offset)
        return []

    async def close(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            await client.close()
        if self.cluster is not None:
            await self.cluster.close()

    def abandon(self) -> None:
        for client in self.clients.values():
            client.abandon()
        self.clients.clear()
        if self.cluster is not None:
            self.cluster.abandon()
