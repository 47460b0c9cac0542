"""The connection of one layer instance in one event loop, and the broker calls made on it.

One pika connection per event loop, opened on first use and again after it is lost (with
backoff, within ``retry_timeout``). On it: a publishing channel in confirm mode, a channel
for declarations (a declaration the broker refuses closes its channel, so that one is
replaced, never shared with publishing or consuming), and one channel per receive loop
(see :mod:`layers.amqp.receiver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pika
import pika.exceptions

from layers.amqp import envelope
from layers.amqp.calls import Channel, Closed, Connection, Publisher, Refused, Verdict
from layers.amqp.leases import Leases
from layers.errors import BackendUnavailable, ServerError
from layers.runtime import Fetched
from layers.runtime.boundary import Boundary

if TYPE_CHECKING:
    from layers.amqp.layer import AmqpChannelLayer
    from layers.amqp.receiver import LocalSource, PlainSource

logger = logging.getLogger("layers.amqp")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
T = TypeVar("T")


def boundary(address: str) -> Boundary:
    return Boundary(
        address,
        refused=(Refused,),
        unavailable=(Closed, pika.exceptions.AMQPError, OSError, TimeoutError),
    )


class Transport:
    def __init__(self, layer: AmqpChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.boundary = boundary(layer.address)
        self._connection: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        # Direct sends and group sends publish on channels of their own: a group_send to
        # an exchange deleted meanwhile (its last member left, a flush elsewhere) makes
        # the broker close its channel, failing every publish in flight on it.
        self._publishers: dict[bool, Publisher] = {}
        self._declarer: Channel | None = None
        self._exchange_ready = False
        # Receive sources outlive their receive loops (their channels are kept).
        self._sources: dict[Hashable, PlainSource | LocalSource] = {}
        self.leases = Leases(self)
        self._janitor: asyncio.Task[None] | None = None

    # -- the connection --------------------------------------------------------------------

    async def connection(self) -> Connection:
        """The open connection, made (again) if needed; BackendUnavailable after
        ``retry_timeout`` seconds of failing."""
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Connection:
        layer = self.layer
        deadline = time.monotonic() + layer.retry_timeout
        delay = _FIRST_BACKOFF
        while True:
            try:
                with self.boundary:
                    connection = await asyncio.wait_for(
                        Connection.open(layer.parameters), layer.connect_timeout + 1
                    )
            except BackendUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, _MAX_BACKOFF)
                continue
            self._connection = connection
            self._publishers = {}
            self._declarer = None
            self._exchange_ready = False
            self.leases.forget()
            if self._janitor is None and layer.janitor.claim(self.loop):
                self._janitor = self.loop.create_task(self.leases.run())
            return connection

    async def retrying(
        self, work: Callable[[], Awaitable[T]], *, sent: Callable[[], bool] | None = None
    ) -> T:
        """Run ``work`` again, with backoff within ``retry_timeout``, when its connection
        was lost: always if it is safe to repeat, else only while ``sent()`` says nothing
        reached the broker yet."""
        deadline = time.monotonic() + self.layer.retry_timeout
        delay = _FIRST_BACKOFF
        while True:
            try:
                with self.boundary:
                    return await work()
            except BackendUnavailable:
                if (sent is not None and sent()) or time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, _MAX_BACKOFF)

    async def declaring(self) -> Channel:
        channel = self._declarer
        if channel is None or not channel.is_open:
            channel = self._declarer = await (await self.connection()).channel()
        return channel

    # -- declarations ----------------------------------------------------------------------

    def _due(self, queue: str) -> bool:
        """Whether ``queue`` is to be declared (again) before we send to it: never
        declared by this process, or long enough ago that it could expire idle before a
        message we send now does."""
        layer = self.layer
        last = layer.declared.get(queue)
        renew = (layer.queue_expires - float(layer.expiry)) / 2
        return last is None or time.monotonic() - last >= renew

    async def declare_queue(
        self, queue: str, arguments: dict[str, Any], *, force: bool = False
    ) -> None:
        layer = self.layer
        if not force and not self._due(queue):
            return
        first = queue not in layer.declared

        async def declare() -> None:
            channel = await self.declaring()
            await channel.queue_declare(queue, arguments=arguments)

        await self.retrying(declare)
        layer.declared[queue] = time.monotonic()
        if first and queue != layer.registry:
            # flush() finds what other processes declared there.
            await self.declare_queue(layer.registry, layer.registry_arguments())
            await self.publish("", layer.registry, queue.encode())

    async def deliver(self, channel: str, body: bytes) -> Verdict:
        """Publish a message to ``channel``'s queue, declaring the queue first when it is
        due, in the same round trip: on the publishing channel, whose frames the broker
        handles in order, so the queue exists when the message arrives."""
        layer = self.layer
        queue = layer.queue_of(channel)
        if not self._due(queue):
            return await self.publish("", queue, body, mandatory=True)
        first = queue not in layer.declared
        if first:
            await self.declare_queue(layer.registry, layer.registry_arguments())
        # A process-local channel's owner consumes its queue only once told it exists
        # (most local channels never get a direct message: no queue, no consumer).
        inbox = layer.inbox_of_channel(channel) if "!" in channel else None
        if inbox is not None:
            await self.declare_queue(inbox, layer.inbox_arguments())
        arguments = layer.queue_arguments(channel)
        written = False

        async def deliver() -> Verdict:
            nonlocal written
            written = False
            publisher = await self._publishing()
            async with publisher.slots:
                raw = publisher.channel.raw
                declared = publisher.channel.start(
                    raw.queue_declare, queue, durable=True, arguments=arguments
                )
                written = True
                # Named in the registry in the same round trip (flush reads it).
                registered = (
                    publisher.begin("", layer.registry, queue.encode(), pika.BasicProperties())
                    if first
                    else None
                )
                verdict = publisher.begin("", queue, body, pika.BasicProperties(), mandatory=True)
                told = (
                    publisher.begin(
                        "",
                        inbox,
                        envelope.pack(envelope.QUEUE, 0.0, channel.encode(), "-"),
                        pika.BasicProperties(),
                    )
                    if inbox is not None
                    else None
                )
                try:
                    await declared
                    result = await verdict
                    if registered is not None:
                        await registered
                    if told is not None:
                        await told
                except BaseException:
                    # A refusal closes the channel and fails every publish after it too:
                    # read them all, or asyncio logs each as never retrieved.
                    for pending in (verdict, registered, told):
                        if pending is not None:
                            pending.add_done_callback(_retrieve)
                    raise
                return result

        result = await self.retrying(deliver, sent=lambda: written)
        layer.declared[queue] = time.monotonic()
        return result

    async def ensure_queue(self, channel: str, *, force: bool = False) -> None:
        layer = self.layer
        await self.declare_queue(
            layer.queue_of(channel), layer.queue_arguments(channel), force=force
        )

    async def ensure_inbox(self, inbox: str, *, force: bool = False) -> None:
        await self.declare_queue(inbox, self.layer.inbox_arguments(), force=force)

    async def ensure_exchange(self) -> None:
        if self._exchange_ready:
            return

        async def declare() -> None:
            channel = await self.declaring()
            await channel.exchange_declare(self.layer.exchange, "direct")

        await self.retrying(declare)
        self._exchange_ready = True

    async def exchange_exists(self) -> bool:
        """Whether the groups exchange is there, without making it. A group with a member
        has it (``bind`` declares it first); one declared for a ``group_send`` while no
        group had a member would never get a binding, so would never delete itself."""
        if self._exchange_ready:
            return True

        async def probe() -> bool:
            # A channel of its own: the refusal closes it, and other tasks use the shared one.
            channel = await (await self.connection()).channel()
            try:
                await channel.exchange_declare(self.layer.exchange, "direct", passive=True)
            except Refused:
                return False
            finally:
                await channel.close()
            return True

        self._exchange_ready = await self.retrying(probe)
        return self._exchange_ready

    def forget_exchange(self) -> None:
        self._exchange_ready = False

    async def bind(
        self, queue: str, group: str, declare: Callable[[bool], Awaitable[None]]
    ) -> None:
        """Bind ``queue`` for ``group``; ``declare(force)`` makes sure the queue exists."""

        async def bind() -> None:
            channel = await self.declaring()
            await channel.queue_bind(queue, self.layer.exchange, group)

        await self.ensure_exchange()
        await declare(False)
        try:
            await self.retrying(bind)
        except ServerError:
            # A flush elsewhere deleted the exchange or the queue since we declared them.
            self._exchange_ready = False
            await self.ensure_exchange()
            await declare(True)
            await self.retrying(bind)

    async def unbind(self, queue: str, group: str) -> None:
        async def unbind() -> None:
            channel = await self.declaring()
            with contextlib.suppress(Refused):  # no such queue or exchange: not bound
                await channel.queue_unbind(queue, self.layer.exchange, group)

        await self.retrying(unbind)

    # -- publishing ------------------------------------------------------------------------

    async def _publishing(self, groups: bool = False) -> Publisher:
        publisher = self._publishers.get(groups)
        if publisher is None or not publisher.channel.is_open:
            publisher = await Publisher.open(await self.connection())
            self._publishers[groups] = publisher
        return publisher

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, *, mandatory: bool = False
    ) -> Verdict:
        """Publish and wait for the broker's confirm. A publish whose connection failed
        before it was written is tried again; one lost after raises BackendUnavailable
        (it may or may not have been stored, and is never stored twice)."""
        properties = pika.BasicProperties()
        written = False

        async def publish() -> Verdict:
            nonlocal written
            written = False
            publisher = await self._publishing(groups=exchange == self.layer.exchange)
            written = True
            return await publisher.publish(
                exchange, routing_key, body, properties, mandatory=mandatory
            )

        return await self.retrying(publish, sent=lambda: written)

    # -- receiving -------------------------------------------------------------------------

    def source(self, key: Hashable) -> PlainSource | LocalSource:
        from layers.amqp.receiver import LocalSource, PlainSource

        source = self._sources.get(key)
        if source is None:
            kind = cast(tuple[Any, ...], key)
            source = PlainSource(self, kind[1]) if kind[0] == "plain" else LocalSource(self)
            self._sources[key] = source
        return source

    def nudge_local(self) -> None:
        source = self._sources.get(("local",))
        if source is not None:
            source.interrupt_wait()

    async def take_waiting(self, keys: Sequence[Hashable]) -> list[Fetched]:
        # Consumers are pushed what arrives as it arrives: nothing waits to be taken that a
        # receive loop would not get as soon.
        return []

    async def unbind_inbox(self, group: str) -> None:
        """The owner's last member of ``group`` left: its inbox need not get the group's
        messages any more."""
        try:
            await self.unbind(self.layer.inbox, group)
        except Exception as exc:  # it will only cost deliveries the owner drops
            logger.debug("unbinding %s from %s: %s", self.layer.inbox, group, exc)

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self, queues: list[str]) -> None:
        layer = self.layer

        async def flush() -> None:
            # A channel of its own, and a new one after each refusal (a thing already
            # gone): a refusal closes its channel, and other tasks use the shared one.
            connection = await self.connection()
            channel = await connection.channel()
            names = dict.fromkeys(queues)
            while True:
                try:
                    while (name := await channel.get(layer.registry)) is not None:
                        names[name.decode()] = None
                    break
                except Refused:
                    channel = await connection.channel()
                    break
            names.update(dict.fromkeys((self.leases.expired, layer.registry)))
            for exchange in (layer.exchange, self.leases.exchange):
                try:
                    await channel.exchange_delete(exchange)
                except Refused:
                    channel = await connection.channel()
            for queue in names:
                try:
                    await channel.queue_delete(queue)
                except Refused:
                    channel = await connection.channel()
            await channel.close()

        await self.retrying(flush)
        self._exchange_ready = False
        self.leases.forget()
        layer.declared.clear()

    async def close(self) -> None:
        janitor, self._janitor = self._janitor, None
        await self.layer.janitor.end(self.loop, janitor)
        sources = list(self._sources.values())
        self._sources.clear()
        for source in sources:
            await source.aclose()
        connection, self._connection = self._connection, None
        self._publishers = {}
        self._declarer = None
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if connection is not None:
            await connection.close()

    def abandon(self) -> None:
        self._janitor = None
        self.layer.janitor.release(self.loop)
        self._sources.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
