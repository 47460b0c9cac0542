"""The receive path every network layer shares, over a backend's transport.

A backend subclasses :class:`NetworkLayer` and supplies:

- ``_open_transport(loop)``: its connections for one event loop (a :class:`Transport`);
- ``_sources(channels)``: which sources can bring messages for those channels (never
  another instance's process-local queue: its messages are not ours to take);
- ``send``, the group calls and ``flush``, over its transport.

Everything between a ``receive`` call and the transport lives here, in one place: the
buffer, the receive loops and their receivers, failures handed to waiting receivers,
``close()`` while receives wait, and cancellation. A receive never holds a connection: it
registers with receive loops and waits on the buffer, so cancelling it at any point loses
nothing the loops fetched.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from typing import Any, Protocol

from layers.base import BaseLayer, Message
from layers.queues import LocalQueues
from layers.runtime.home import Home, one_call_loop
from layers.runtime.loops import PerLoop, Turn
from layers.runtime.receiver import Fetched, ReceiveLoop, Source

logger = logging.getLogger("layers")

#: Calls made from a loop ``async_to_sync`` made for them run in the instance's home loop
#: (layers/runtime/home.py), on connections kept from one call to the next. Receives stay
#: in their own loop: a receive is cancelled as its caller gives up, and a message taken
#: in another loop just then would have nobody to go to.
HOMED = ("send", "group_add", "group_discard", "group_send", "flush")
#: Of those, the calls whose second argument is a message, copied before it changes hands
#: (the contract's copy at send time: the caller's loop runs on while the home loop sends).
_MESSAGE_CALLS = ("send", "group_send")

AsyncMethod = Callable[..., Coroutine[Any, Any, Any]]


class Transport(Protocol):
    """A backend's connections in one event loop."""

    def source(self, key: Hashable) -> Source:
        """The source ``key`` (one of what ``_sources`` returned) names."""

    async def take_waiting(self, keys: Sequence[Hashable]) -> list[Fetched]:
        """Take one message already waiting in any of several sources, without blocking;
        used before a receive blocks on sources that no single fetch covers."""

    async def close(self) -> None: ...

    def abandon(self) -> None: ...


def _one_at_a_time(source: Source) -> bool:
    """Whether the source itself lets only one event loop of the instance fetch at a time
    (the RabbitMQ layer's consumer of its own queues): then loops take no turns. A turn
    taken by a loop that may not fetch would be held for nothing, and the turn goes to
    whoever asks first: such a loop asking again and again starved the one that fetches."""
    return bool(getattr(source, "one_loop_at_a_time", False))


class _Reopen(Exception):
    """Handed to the receivers of a loop being closed by ``close()``: start again."""


class LoopState:
    """Receive loops, and the transport under them, of one layer instance in one loop."""

    def __init__(self, layer: NetworkLayer, transport: Transport) -> None:
        self.layer = layer
        self.transport = transport
        self.loops: dict[Hashable, ReceiveLoop] = {}
        self.failures: dict[asyncio.Task[Any], BaseException] = {}
        self._background: set[asyncio.Future[Any]] = set()

    def receive_loop(self, key: Hashable) -> ReceiveLoop:
        loop = self.loops.get(key)
        if loop is None:
            layer = self.layer
            source = self.transport.source(key)
            loop = self.loops[key] = ReceiveLoop(
                source,
                batch=layer.local_batch if source.drain else 100,
                prefetch=layer.prefetch,
                linger=layer.linger,
                retry_timeout=layer.retry_timeout,
                file=layer._file,
                failures=self.failures,
                on_exit=lambda done: self._forget(key, done),
                turn=layer._turn(key) if source.drain and not _one_at_a_time(source) else None,
            )
        return loop

    def _forget(self, key: Hashable, done: ReceiveLoop) -> None:
        if self.loops.get(key) is done:
            del self.loops[key]

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, keeping it referenced until it ends."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        loops, self.loops = list(self.loops.values()), {}
        for loop in loops:
            # Waiting receives start again on fresh connections instead of hanging.
            loop.hand_over(_Reopen())
            await loop.stop()
        await self.transport.close()

    def abandon(self) -> None:
        for loop in self.loops.values():
            loop.abandon()
        self.loops.clear()
        self.transport.abandon()


def _homed(name: str, method: AsyncMethod) -> AsyncMethod:
    """``method``, run in the home loop when called from a one-call loop."""
    copies = name in _MESSAGE_CALLS

    @functools.wraps(method)
    async def call(self: NetworkLayer, *args: Any, **kwargs: Any) -> Any:
        if not one_call_loop():
            return await method(self, *args, **kwargs)
        if copies:
            try:
                if len(args) > 1:
                    args = (args[0], copy.deepcopy(args[1]), *args[2:])
                elif "message" in kwargs:
                    kwargs["message"] = copy.deepcopy(kwargs["message"])
            except Exception:
                pass  # not copyable, so not serialisable: the call raises TypeError for it
        return await self._home.run(method(self, *args, **kwargs))

    call._homed = True  # type: ignore[attr-defined]
    return call


class NetworkLayer(BaseLayer):
    """Base of layers whose messages live on a server. See the module docstring."""

    #: Backends set these in ``__init__``.
    retry_timeout: float = 5.0
    prefetch: int = 0
    local_batch: int = 100
    #: Seconds a draining receive loop runs on after its last receiver left.
    linger: float = 10.0
    #: Seconds the home loop (and its connections) outlives the last call handed to it.
    home_idle: float = 60.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Done here, once for every backend, so a backend writes its calls plainly.
        for name in HOMED:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_homed", False):
                setattr(cls, name, _homed(name, method))

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._home = Home(f"{self.prefix}.{self.client_prefix}", self.home_idle)
        self._buffer: LocalQueues[bytes] = LocalQueues(
            clock=time.monotonic, sweep_interval=max(float(self.expiry), 1.0)
        )
        self._loops: PerLoop[LoopState] = PerLoop(
            lambda loop: LoopState(self, self._open_transport(loop))
        )
        self._turns: dict[Hashable, Turn] = {}

    # -- what a backend supplies -----------------------------------------------------------

    def _open_transport(self, loop: asyncio.AbstractEventLoop) -> Transport:
        raise NotImplementedError

    def _sources(self, channels: tuple[str, ...]) -> list[Hashable]:
        raise NotImplementedError

    # -- for backends ----------------------------------------------------------------------

    def _state(self) -> LoopState:
        return self._loops.get()

    def _turn(self, key: Hashable) -> Turn:
        """The turn every event loop's receive loop on the draining source ``key`` takes."""
        # setdefault is atomic for a dict: two threads always get the same Turn.
        return self._turns.setdefault(key, Turn())

    def _file(self, items: list[Fetched], drain: bool) -> None:
        """Put fetched messages into the buffer under every channel each names.

        A draining source carries many channels in one queue, so only there is each
        channel's capacity still to enforce: what overflows is dropped and logged, the
        same outcome a ``group_send`` gives a full member.
        """
        buffer = self._buffer
        for item in items:
            for name in item.channels:
                if not drain:
                    buffer.put(name, item.payload, item.expires_at)
                elif not buffer.put_if_room(
                    name, item.payload, item.expires_at, self.get_capacity(name)
                ):
                    logger.warning("dropping a message for %s: its buffer is full", name)

    # -- receiving -------------------------------------------------------------------------

    async def receive(self, channel: str) -> Message:
        self.require_valid_channel_name(channel)
        if "!" in channel:
            self.require_own_channel(channel)
        return (await self._receive((channel,)))[1]

    async def receive_many(self, channels: list[str]) -> tuple[str, Message]:
        names = self.require_valid_channel_names(channels)
        for name in names:
            if "!" in name:
                self.require_own_channel(name)
        return await self._receive(tuple(dict.fromkeys(names)))

    async def _receive(self, channels: tuple[str, ...]) -> tuple[str, Message]:
        while True:
            found = self._buffer.pop_nowait(channels)
            if found is None:
                found = await self._wait(channels)
                if found is None:
                    continue
            channel, data = found
            message = self.decode_or_none(data, channel)
            if message is not None:
                return channel, message

    async def _wait(self, channels: tuple[str, ...]) -> tuple[str, bytes] | None:
        """Wait for a message through the receive loops; None to start again (closed)."""
        state = self._state()
        keys = self._sources(channels)
        if len(keys) > 1:
            # No single fetch covers several sources: take a message already waiting
            # first, so one sent long ago is not passed over for a newer one elsewhere.
            # Shielded: what it takes reaches the buffer even if we are cancelled.
            items = await asyncio.shield(state.transport.take_waiting(keys))
            if items:
                # Possibly from a queue of many local channels: capacity applies.
                self._file(items, True)
                found = self._buffer.pop_nowait(channels)
                if found is not None:
                    return found
        task = asyncio.current_task()
        assert task is not None
        loops = [state.receive_loop(key) for key in keys]
        for loop in loops:
            loop.add(task)
        found = None
        try:
            if len(channels) == 1:
                found = await self._buffer.get_one(channels[0])
            else:
                found = await self._buffer.get(channels)
        except asyncio.CancelledError:
            error = state.failures.pop(task, None)
            if error is not None and task.uncancel() == 0:
                if isinstance(error, _Reopen):
                    return None
                raise error from None
            raise
        finally:
            state.failures.pop(task, None)
            blocked = [loop.source for loop in loops if loop.remove(task)]
            if blocked:
                # A fetch still blocked for nobody would take the next message for nobody.
                # Leaving empty-handed, end it before the caller goes on (to send, say);
                # holding a message, no await may come between it and the caller.
                interrupts = asyncio.gather(*(source.interrupt() for source in blocked))
                if found is None:
                    await interrupts
                else:
                    state.spawn(interrupts)
        return found

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        # The home loop first: it ends once its calls in flight are done, closing its
        # connections in its own thread; the other loops' states are closed after.
        await self._home.close()
        await self._loops.close()
