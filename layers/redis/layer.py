"""The Redis channel layer. See ``layers/redis/README.md`` for the data layout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.exceptions import ChannelFull

from layers.base import BaseLayer, Message
from layers.errors import ConfigurationError
from layers.queues import LocalQueues
from layers.redis import scripts
from layers.redis.connections import ShardClient
from layers.redis.hosts import ShardSpec, parse_hosts
from layers.redis.receiver import Puller
from layers.redis.sharding import shard_index

logger = logging.getLogger("layers.redis")

Route = tuple[int, str]
_SCAN_BATCH = 1000


class RedisChannelLayer(BaseLayer):
    """A channel layer on one or more Redis servers (Redis 7 or later; 6.2 works with BLPOP).

    Config, besides the :class:`~layers.base.BaseLayer` keys:

    - ``hosts`` (``["redis://127.0.0.1:6379/0"]``): the servers, one shard each; every form
      :mod:`layers.redis.hosts` accepts (``redis://``, ``rediss://``, ``unix://`` URLs,
      ``(host, port)``, a dict of redis-py options, a Sentinel dict).
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

    Capacity of a process-local channel: ``send`` checks it against the list all of this
    instance's local channels (of one ``new_channel`` prefix) share, so it bites only
    while the owner is not draining; the owner's buffer enforces it per channel as it
    drains, dropping (and logging) what overflows.
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
        **config: Any,
    ) -> None:
        super().__init__(**config)
        self.shards: list[ShardSpec] = parse_hosts(hosts)
        self.block_timeout = _seconds("block_timeout", block_timeout)
        self.socket_timeout = _seconds("socket_timeout", socket_timeout)
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.retry_timeout = _seconds("retry_timeout", retry_timeout)
        if isinstance(local_batch, bool) or not isinstance(local_batch, int) or local_batch < 1:
            raise ConfigurationError(f"local_batch must be a positive integer, not {local_batch!r}")
        self.local_batch = local_batch
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 <= prefetch <= 99:
            raise ConfigurationError(f"prefetch must be an integer from 0 to 99, not {prefetch!r}")
        self.prefetch = prefetch
        self._expiry_ms = max(1, round(self.expiry * 1000))
        self._group_expiry_ms = max(1, round(self.group_expiry * 1000))
        self._buffer: LocalQueues[bytes] = LocalQueues(
            clock=time.monotonic, sweep_interval=max(float(self.expiry), 1.0)
        )
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._routes: dict[str, Route] = {}
        self._plans: dict[tuple[str, ...], list[tuple[int, tuple[str, ...]]]] = {}

    # -- keys and shards -------------------------------------------------------------------

    def _route(self, channel: str) -> Route:
        """(shard, list key) of a channel: process-local channels share their owner's list."""
        route = self._routes.get(channel)
        if route is None:
            bang = channel.find("!")
            name = channel if bang < 0 else channel[: bang + 1]
            route = (shard_index(name, len(self.shards)), f"{self.prefix}:c:{name}")
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[channel] = route
        return route

    def _group_route(self, group: str) -> Route:
        return shard_index(group, len(self.shards)), f"{self.prefix}:g:{group}"

    def _plan(self, channels: tuple[str, ...]) -> list[tuple[int, tuple[str, ...]]]:
        """The lists to pop from for ``channels``, by shard (another instance's local list
        is never popped: its messages are not ours to take)."""
        plan = self._plans.get(channels)
        if plan is None:
            by_shard: dict[int, list[str]] = {}
            for channel in channels:
                if "!" in channel and not self.is_local_channel(channel):
                    continue
                shard, key = self._route(channel)
                keys = by_shard.setdefault(shard, [])
                if key not in keys:
                    keys.append(key)
            plan = [(shard, tuple(keys)) for shard, keys in by_shard.items()]
            if len(self._plans) >= 4096:
                self._plans.clear()
            self._plans[channels] = plan
        return plan

    # -- per event loop state --------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            for other in [other for other in self._states if other.is_closed()]:
                self._states.pop(other).abandon()
            state = self._states[loop] = _LoopState(self, loop)
            _close_with_loop(loop, state.close)
        return state

    # -- sending ---------------------------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        self.require_valid_channel_name(channel)
        data = self.encode(message, channel)
        shard, key = self._route(channel)
        capacity = self.get_capacity(channel)
        pushed = (
            await self._state()
            .client(shard)
            .script(scripts.send(), [key], [self._expiry_ms, capacity, channel, data])
        )
        if not pushed:
            raise ChannelFull(f"channel {channel!r} is at capacity ({capacity})")

    # -- receiving -------------------------------------------------------------------------

    async def receive(self, channel: str) -> Message:
        self.require_valid_channel_name(channel)
        return (await self._receive((channel,)))[1]

    async def receive_many(self, channels: list[str]) -> tuple[str, Message]:
        names = self.require_valid_channel_names(channels)
        return await self._receive(tuple(dict.fromkeys(names)))

    async def _receive(self, channels: tuple[str, ...]) -> tuple[str, Message]:
        while True:
            found = self._buffer.pop_nowait(channels)
            if found is None:
                found = await self._wait(channels)
            channel, data = found
            message = self.decode_or_none(data, channel)
            if message is not None:
                return channel, message

    async def _wait(self, channels: tuple[str, ...]) -> tuple[str, bytes]:
        state = self._state()
        plan = self._plan(channels)
        if len(plan) > 1:
            # No single blocking pop covers several shards: take a message that is already
            # waiting atomically, shard by shard, before blocking on all of them at once.
            # Shielded: what the script pops reaches the buffer even if we are cancelled.
            await asyncio.shield(self._take_waiting(state, plan))
            found = self._buffer.pop_nowait(channels)
            if found is not None:
                return found
        task = asyncio.current_task()
        assert task is not None
        pullers = [state.puller(shard, keys) for shard, keys in plan]
        for puller in pullers:
            puller.add(task)
        found = None
        try:
            found = await self._buffer.get(channels)
        except asyncio.CancelledError:
            error = state.failures.pop(task, None)
            if error is not None and task.uncancel() == 0:
                raise error from None
            raise
        finally:
            state.failures.pop(task, None)
            unblocks = [
                puller.shard.unblock(client_id)
                for puller in pullers
                if (client_id := puller.remove(task)) is not None
            ]
            if unblocks:
                # A pop still blocked for nobody would take the next message for nobody.
                # When we leave empty-handed, end it before the caller goes on (to send,
                # say); when we hold a message, no await may come between it and the caller.
                if found is None:
                    await asyncio.gather(*unblocks)
                else:
                    state.spawn(asyncio.gather(*unblocks))
        return found

    async def _take_waiting(
        self, state: _LoopState, plan: list[tuple[int, tuple[str, ...]]]
    ) -> None:
        for shard, keys in plan:
            client = state.client(shard)
            offset = await client.clock_offset_ms()
            reply = await client.script(scripts.receive_many(), list(keys), [])
            if reply is not None:
                self._deliver(reply[0], [reply[1]], offset)
                return

    def _deliver(self, key: bytes, entries: list[bytes], offset_ms: float) -> None:
        """File popped entries into the buffer, by the channel(s) each names."""
        server_now_ms = time.time() * 1000 + offset_ms
        now = time.monotonic()
        # Only process-local lists ("...!") hold entries for many channels, and only there
        # is a channel's capacity still to enforce.
        shared = key.endswith(b"!")
        buffer = self._buffer
        for entry in entries:
            try:
                stamp, names, payload = entry.split(b":", 2)
                left = (int(stamp) - server_now_ms) / 1000
            except ValueError:
                logger.warning("dropping an entry of unknown form from %r", key)
                continue
            if left <= 0:
                continue
            for name in names.decode().split(","):
                if shared and buffer.size(name) >= self.get_capacity(name):
                    logger.warning("dropping a message for %s: its buffer is full", name)
                    continue
                buffer.put(name, payload, now + left)

    # -- groups ----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        shard, key = self._group_route(group)
        await (
            self._state()
            .client(shard)
            .script(scripts.group_add(), [key], [channel, self._group_expiry_ms], idempotent=True)
        )

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        shard, key = self._group_route(group)
        await self._state().client(shard).call("ZREM", key, channel, idempotent=True)

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        data = self.encode(message, group)
        state = self._state()
        shard, key = self._group_route(group)
        members = await state.client(shard).script(
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
        for target_shard, by_key in lists.items():
            args: list[Any] = [self._expiry_ms, data]
            for names in by_key.values():
                args.append(min(self.get_capacity(name) for name in names))
                args.append(",".join(names))
            calls.append(
                state.client(target_shard).script(scripts.group_send(), list(by_key), args)
            )
        if len(calls) == 1:
            await calls[0]
        else:
            await asyncio.gather(*calls)

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self) -> None:
        state = self._state()
        for shard in range(len(self.shards)):
            client = state.client(shard)
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
                if keys:
                    await client.call("UNLINK", *keys, idempotent=True)
                cursor = int(cursor)
                if cursor == 0:
                    break
        self._buffer.clear()

    async def close(self) -> None:
        running = asyncio.get_running_loop()
        states, self._states = self._states, {}
        for loop, state in states.items():
            if loop is running:
                await state.close()
            elif loop.is_closed():
                state.abandon()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(state.close(), loop)
            # A loop neither running nor closed closes the state itself when it closes.


class _LoopState:
    """Connections and pullers of one layer instance in one event loop."""

    def __init__(self, layer: RedisChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.clients: dict[int, ShardClient] = {}
        self.pullers: dict[tuple[int, tuple[str, ...]], Puller] = {}
        self.failures: dict[asyncio.Task[Any], BaseException] = {}
        self._background: set[asyncio.Future[Any]] = set()
        self._options = {
            "socket_timeout": layer.socket_timeout,
            "socket_connect_timeout": layer.connect_timeout,
            "socket_keepalive": True,
        }

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, keeping it referenced until it ends."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def client(self, shard: int) -> ShardClient:
        client = self.clients.get(shard)
        if client is None:
            client = self.clients[shard] = ShardClient(
                self.layer.shards[shard], self._options, self.layer.retry_timeout
            )
        return client

    def puller(self, shard: int, keys: tuple[str, ...]) -> Puller:
        puller = self.pullers.get((shard, keys))
        if puller is None:
            layer = self.layer
            drain = len(keys) == 1 and keys[0].endswith("!")
            puller = self.pullers[(shard, keys)] = Puller(
                self.client(shard),
                keys,
                drain=drain,
                batch=layer.local_batch if drain else 100,
                prefetch=layer.prefetch,
                block_timeout=layer.block_timeout,
                read_timeout=layer.block_timeout + layer.socket_timeout,
                retry_timeout=layer.retry_timeout,
                linger=2 * layer.block_timeout,
                deliver=layer._deliver,
                failures=self.failures,
                on_exit=lambda done: self._forget((shard, keys), done),
            )
        return puller

    def _forget(self, key: tuple[int, tuple[str, ...]], puller: Puller) -> None:
        if self.pullers.get(key) is puller:
            del self.pullers[key]

    async def close(self) -> None:
        pullers, self.pullers = list(self.pullers.values()), {}
        for puller in pullers:
            await puller.stop()
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            await client.close()

    def abandon(self) -> None:
        self.pullers.clear()
        for client in self.clients.values():
            client.abandon()
        self.clients.clear()


def _close_with_loop(
    loop: asyncio.AbstractEventLoop, cleanup: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``cleanup`` inside ``loop`` just before it closes, so connections and tasks end
    in the loop that owns them (``async_to_sync`` closes a loop after every call)."""
    original = loop.close

    def close() -> None:
        if not loop.is_running() and not loop.is_closed():
            try:
                loop.run_until_complete(cleanup())
            except Exception:
                logger.debug("closing connections with their loop failed", exc_info=True)
        original()

    # Loops that refuse new attributes (uvloop) drop connections when collected instead.
    with contextlib.suppress(AttributeError):
        loop.close = close  # type: ignore[method-assign]


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)
