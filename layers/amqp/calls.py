"""pika's callbacks as futures: the only module of the backend that touches them.

pika's asyncio adapter calls back on the event loop it was given. Here every RPC of a
channel becomes one future, and every future still waiting is failed when its channel or
connection closes, so nothing awaits forever on a broker that went away. Thread
ownership: a :class:`Connection` and its channels belong to the event loop that opened
them and are used only from it.

- :class:`Connection`: one ``AsyncioConnection`` on the running loop.
- :class:`Channel`: the RPCs the layer makes (declare, bind, qos, cancel, delete, get).
- :class:`Publisher`: a channel in confirm mode; ``publish`` returns the broker's verdict
  (acked, nacked, or returned as unroutable), with a bound on confirms in flight.
- :class:`Consumer`: deliveries of one ``basic_consume``, waited for as a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorPhaseErrorBase,
)


class Closed(Exception):
    """The channel or connection an operation needed closed first; ``reason`` says why."""

    def __init__(self, reason: BaseException | str) -> None:
        super().__init__(_describe(reason))
        self.reason = reason


def _describe(reason: BaseException | str) -> str:
    """What went wrong, in words. A failed connection attempt reaches us wrapped in pika's
    workflow exceptions (sometimes inside an ``AMQPConnectionError``), whose ``str()`` is
    empty: the cause (a refused port, a certificate that did not verify, a handshake
    timeout) is their innermost exception."""
    reason = _innermost(reason)
    return str(reason) or type(reason).__name__


def _innermost(reason: BaseException | str) -> BaseException | str:
    for _ in range(4):  # connection error -> workflow -> connector phase -> cause
        if (
            isinstance(reason, pika.exceptions.AMQPConnectionError)
            and reason.args
            and isinstance(reason.args[0], BaseException)
        ):
            reason = reason.args[0]
        elif isinstance(reason, AMQPConnectionWorkflowFailed) and reason.exceptions:
            reason = reason.exceptions[-1]
        elif isinstance(reason, AMQPConnectorPhaseErrorBase):
            reason = reason.exception
        else:
            break
    return reason


_DENIED = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
)


class Refused(Closed):
    """The broker closed the channel over what it was asked (a queue declared with other
    arguments, a missing queue, no permission): asking again will not help."""


def _closed(reason: BaseException | str) -> Closed:
    if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        return Refused(reason)
    return Closed(reason)


#: The largest prefetch count AMQP can carry (basic.qos has a 16-bit field).
MAX_PREFETCH = 65535


def _coalesce_writes(raw: AsyncioConnection) -> None:
    """pika writes each frame it buffered with a send() of its own, three system calls a
    publish (method, header, body), when the socket is next writable. Join what is
    buffered at that moment into one send: same bytes, same order, fewer calls (each
    ~10 us on loopback here). A pika whose transport lacks these internals is left alone."""
    transport: Any = getattr(raw, "_transport", None)
    produce = getattr(transport, "_produce", None)
    if produce is None or not isinstance(getattr(transport, "_tx_buffers", None), deque):
        return

    def joined() -> None:
        buffers = transport._tx_buffers
        if len(buffers) > 1:
            data = b"".join(buffers)
            buffers.clear()
            buffers.append(data)
        produce()

    transport._produce = joined


class Connection:
    """One pika connection on one event loop; :meth:`open` it, then make channels."""

    def __init__(self, raw: AsyncioConnection) -> None:
        self.raw = raw
        self.closed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._channels: set[Channel] = set()

    @classmethod
    async def open(cls, parameters: pika.ConnectionParameters) -> Connection:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        made: list[Connection] = []

        def on_open(_: Any) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_open_error(_: Any, error: BaseException | str) -> None:
            if not opened.done():
                # Wrong credentials or no access to the vhost: trying again will not help.
                denied = isinstance(_innermost(error), _DENIED)
                opened.set_exception(Refused(error) if denied else Closed(error))

        def on_close(_: Any, reason: BaseException) -> None:
            if made:
                made[0]._on_close(reason)
            elif not opened.done():
                opened.set_exception(Closed(reason))

        raw = AsyncioConnection(
            parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        connection = cls(raw)
        made.append(connection)
        try:
            await opened
        except BaseException:
            connection.abandon()
            raise
        _coalesce_writes(raw)
        return connection

    @property
    def is_open(self) -> bool:
        return not self.closed.done() and bool(self.raw.is_open)

    def _on_close(self, reason: BaseException) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        for channel in list(self._channels):
            channel._on_close(reason)

    async def channel(self) -> Channel:
        if not self.is_open:
            raise Closed(self.closed.result() if self.closed.done() else "connection not open")
        opened: asyncio.Future[pika.channel.Channel] = asyncio.get_running_loop().create_future()

        def on_open(raw: pika.channel.Channel) -> None:
            if not opened.done():
                opened.set_result(raw)

        self.raw.channel(on_open_callback=on_open)
        raw = await _either(opened, self.closed)
        channel = Channel(self, raw)
        self._channels.add(channel)
        return channel

    async def close(self) -> None:
        """Close cleanly (what was written is flushed first) and wait for it."""
        if not self.closed.done():
            with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
                self.raw.close()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.closed), 5.0)
        self.abandon()

    def abandon(self) -> None:
        """Drop the socket without a word to the broker (its loop is closing or closed)."""
        transport = getattr(self.raw, "_transport", None)
        with contextlib.suppress(Exception):
            if transport is not None:
                transport.abort()
        self._on_close(Closed("connection abandoned"))


class Channel:
    """One AMQP channel: each RPC a future, all failed when the channel closes."""

    def __init__(self, connection: Connection, raw: pika.channel.Channel) -> None:
        self.connection = connection
        self.raw = raw
        self._pending: set[asyncio.Future[Any]] = set()
        self.closed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._on_closed: list[Callable[[BaseException], None]] = []
        raw.add_on_close_callback(lambda _, reason: self._on_close(reason))

    @property
    def is_open(self) -> bool:
        return not self.closed.done() and bool(self.raw.is_open)

    def on_close(self, hook: Callable[[BaseException], None]) -> None:
        self._on_closed.append(hook)

    def _on_close(self, reason: BaseException) -> None:
        if self.closed.done():
            return
        self.closed.set_result(reason)
        self.connection._channels.discard(self)
        for future in list(self._pending):
            if not future.done():
                future.set_exception(_closed(reason))
        self._pending.clear()
        for hook in self._on_closed:
            hook(reason)

    def start(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Send a pika RPC that takes ``callback=`` now; a future of its reply frame."""
        if not self.is_open:
            raise _closed(self.closed.result() if self.closed.done() else "channel not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

        def done(frame: Any) -> None:
            if not future.done():
                future.set_result(frame)

        method(*args, callback=done, **kwargs)
        return future

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a pika RPC that takes ``callback=``; its reply frame."""
        return await self.start(method, *args, **kwargs)

    async def queue_declare(
        self,
        queue: str,
        *,
        passive: bool = False,
        durable: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> int:
        """Declare ``queue``; how many messages it holds ready."""
        frame = await self.call(
            self.raw.queue_declare, queue, passive=passive, durable=durable, arguments=arguments
        )
        return int(frame.method.message_count)

    async def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self.call(self.raw.queue_bind, queue, exchange, routing_key=routing_key)

    async def queue_unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self.call(self.raw.queue_unbind, queue, exchange, routing_key=routing_key)

    async def queue_delete(self, queue: str) -> None:
        await self.call(self.raw.queue_delete, queue)

    async def exchange_declare(self, exchange: str, kind: str, *, passive: bool = False) -> None:
        """Durable, and deleted with its last binding: once every queue bound to it has
        expired, nothing of it is left. ``passive``: only check that it exists (the broker
        refuses otherwise, closing this channel)."""
        await self.call(
            self.raw.exchange_declare,
            exchange,
            exchange_type=kind,
            passive=passive,
            durable=True,
            auto_delete=True,
        )

    async def exchange_delete(self, exchange: str) -> None:
        await self.call(self.raw.exchange_delete, exchange)

    async def get(self, queue: str) -> bytes | None:
        """Take one message off ``queue`` (acked as it is taken); None if it is empty."""
        if not self.is_open:
            raise _closed(self.closed.result() if self.closed.done() else "channel not open")
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._pending.add(future)

        def got(_: Any, method: Any, properties: Any, body: bytes) -> None:
            if not future.done():
                future.set_result(body)

        def empty(_: Any) -> None:
            if not future.done():
                future.set_result(None)

        # pika reports an empty queue only through a callback on Basic.GetEmpty.
        self.raw.add_callback(empty, [pika.spec.Basic.GetEmpty], one_shot=True)
        try:
            self.raw.basic_get(queue, got, auto_ack=True)
            return await future
        finally:
            self._pending.discard(future)

    async def basic_qos(self, prefetch_count: int) -> None:
        """Also a barrier: when it returns, the broker has handled every frame sent on
        this channel before it (acks included), since a channel's frames are handled in
        order."""
        await self.start_qos(prefetch_count)

    def start_qos(self, prefetch_count: int) -> asyncio.Future[Any]:
        """Write basic.qos now; a future of its reply (the barrier, for callers that do not
        wait on it). AMQP carries the count in 16 bits: a larger one becomes 65,535."""
        return self.start(self.raw.basic_qos, prefetch_count=min(prefetch_count, MAX_PREFETCH))

    async def basic_cancel(self, consumer_tag: str) -> None:
        await self.call(self.raw.basic_cancel, consumer_tag)

    async def close(self) -> None:
        if self.is_open:
            with contextlib.suppress(pika.exceptions.ChannelWrongStateError):
                self.raw.close()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.closed), 5.0)


class Verdict(enum.Enum):
    ACKED = "acked"  # stored by every queue it was routed to
    NACKED = "nacked"  # refused (a full queue with reject-publish)
    RETURNED = "returned"  # routed to no queue (mandatory)


class Publisher:
    """A channel in confirm mode. Confirms are a stream: one future per delivery tag,
    ``multiple`` acks and nacks settle every tag up to theirs, and at most
    ``max_in_flight`` publishes wait at once. A returned message (mandatory, unroutable)
    is reported as such: its return reaches us before its ack."""

    def __init__(self, channel: Channel, max_in_flight: int = 1000) -> None:
        self.channel = channel
        self._slots = asyncio.Semaphore(max_in_flight)
        self._next_tag = 1
        self._waiting: dict[int, asyncio.Future[Verdict]] = {}
        self._returned: set[int] = set()
        channel.on_close(self._fail_all)

    @classmethod
    async def open(cls, connection: Connection, max_in_flight: int = 1000) -> Publisher:
        channel = await connection.channel()
        publisher = cls(channel, max_in_flight)
        channel.raw.add_on_return_callback(publisher._on_return)
        await channel.call(channel.raw.confirm_delivery, publisher._on_confirm)
        return publisher

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.spec.BasicProperties,
        *,
        mandatory: bool = False,
    ) -> Verdict:
        async with self._slots:
            return await self.begin(exchange, routing_key, body, properties, mandatory=mandatory)

    def begin(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.spec.BasicProperties,
        *,
        mandatory: bool = False,
    ) -> asyncio.Future[Verdict]:
        """Write the publish now; a future of the broker's verdict (callers hold a slot)."""
        channel = self.channel
        if not channel.is_open:
            raise _closed(channel.closed.result() if channel.closed.done() else "closed")
        tag = self._next_tag
        self._next_tag += 1
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting[tag] = future
        future.add_done_callback(lambda _: self._waiting.pop(tag, None))
        properties.message_id = str(tag)
        channel.raw.basic_publish(exchange, routing_key, body, properties, mandatory)
        return future

    @property
    def slots(self) -> asyncio.Semaphore:
        return self._slots

    def _on_return(self, _: Any, method: Any, properties: Any, body: bytes) -> None:
        with contextlib.suppress(TypeError, ValueError):
            self._returned.add(int(properties.message_id))

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        last = int(method.delivery_tag)
        tags = [t for t in self._waiting if t <= last] if method.multiple else [last]
        for tag in tags:
            future = self._waiting.pop(tag, None)
            if tag in self._returned:
                self._returned.discard(tag)
                verdict = Verdict.RETURNED
            else:
                verdict = Verdict.ACKED if acked else Verdict.NACKED
            if future is not None and not future.done():
                future.set_result(verdict)

    def _fail_all(self, reason: BaseException) -> None:
        # Whether these were stored is unknown: the caller hears the channel closed.
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(_closed(reason))
        self._waiting.clear()
        self._returned.clear()


class Delivery(NamedTuple):
    tag: int
    consumer: str
    redelivered: bool
    body: bytes


class Deliveries:
    """What the consumers of one channel (manual acks) were sent, in delivery order."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.items: list[Delivery] = []
        #: Consumers the broker cancelled (their queue was deleted).
        self.cancelled: set[str] = set()
        self._arrived = asyncio.Event()
        channel.on_close(lambda _: self._arrived.set())
        channel.raw.add_on_cancel_callback(self._on_broker_cancel)

    async def consume(self, queue: str, *, auto_ack: bool = False) -> str:
        """Start consuming ``queue``; its consumer tag."""
        frame = await self.channel.call(
            self.channel.raw.basic_consume,
            queue,
            on_message_callback=self._on_message,
            auto_ack=auto_ack,
        )
        return str(frame.method.consumer_tag)

    def _on_message(self, _: Any, method: Any, properties: Any, body: bytes) -> None:
        self.items.append(
            Delivery(
                int(method.delivery_tag), str(method.consumer_tag), bool(method.redelivered), body
            )
        )
        self._arrived.set()

    def _on_broker_cancel(self, frame: Any) -> None:
        self.cancelled.add(str(frame.method.consumer_tag))
        self._arrived.set()

    def nudge(self) -> None:
        """End a wait early (something else changed)."""
        self._arrived.set()

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until a delivery or a cancel arrives, the channel closes, :meth:`nudge` or
        ``timeout`` seconds."""
        if not self.items and not self.cancelled and self.channel.is_open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        self._arrived.clear()


async def _either(result: asyncio.Future[Any], closed: asyncio.Future[BaseException]) -> Any:
    """``result``'s value, or :class:`Closed` if ``closed`` is set first."""
    await asyncio.wait([result, closed], return_when=asyncio.FIRST_COMPLETED)
    if result.done():
        return result.result()
    result.cancel()
    raise Closed(closed.result())
