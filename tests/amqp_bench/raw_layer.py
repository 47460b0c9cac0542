"""A bare pika publish / consume "layer": the yardstick for layers on RabbitMQ
(``python -m bench --layer tests.amqp_bench.raw_layer.RawAmqpLayer --config '{"url":
"amqp://guest:guest@127.0.0.1:5672/%2F"}' --workload throughput --workload fan-in``).

One connection per process (pika's asyncio adapter on the running loop) with one channel
in confirm mode. Every channel name is a durable queue ``<prefix>.<channel>``, declared
once per process on first use with no TTL or max-length arguments. A send is one
``basic_publish`` of the msgpack body (transient unless ``persistent``) and awaits its
publisher confirm; a receive takes the next message of the queue's consumer
(``basic_consume``, prefetch 100, manual acks) and acks it as it hands it out. No
capacity, expiry, groups or cancellation safety: only what the bench's ``throughput``
and ``fan-in`` workloads call. The bench never calls ``flush``, so the queues are left
behind; ``x-expires`` makes RabbitMQ delete each one a minute after its last consumer
and declaration.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import msgpack
import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.spec import Basic

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
PREFETCH = 100
QUEUE_EXPIRES_MS = 60_000  # an unused queue is deleted by the server after this long


class RawAmqpLayer:
    extensions: list[str] = []

    def __init__(
        self, url: str = DEFAULT_URL, prefix: str = "raw", persistent: bool = False, **_: Any
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._properties = pika.BasicProperties(delivery_mode=2 if persistent else 1)
        self._conn: AsyncioConnection | None = None
        self._ready: asyncio.Future[Channel] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._next_tag = 1  # delivery tag of the next publish (confirm mode counts from 1)
        self._confirms: dict[int, asyncio.Future[None]] = {}
        self._ops: set[asyncio.Future[Any]] = set()  # declares and consumes in flight
        self._declared: dict[str, asyncio.Future[Any]] = {}
        self._inboxes: dict[str, asyncio.Queue[tuple[int, bytes]]] = {}

    def _future(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops.add(future)
        future.add_done_callback(self._ops.discard)
        return future

    async def _channel(self) -> Channel:
        if self._ready is None:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[Channel] = loop.create_future()
            closed: asyncio.Future[None] = loop.create_future()
            self._ready, self._closed = ready, closed

            def on_channel(channel: Channel) -> None:
                channel.add_on_close_callback(self._on_channel_closed)
                channel.confirm_delivery(
                    self._on_confirm,
                    callback=lambda _: channel.basic_qos(
                        prefetch_count=PREFETCH, callback=lambda _: ready.set_result(channel)
                    ),
                )

            def on_closed(_: Any, exc: BaseException) -> None:  # or never opened
                if not ready.done():
                    ready.set_exception(ConnectionError(f"cannot connect to RabbitMQ: {exc!r}"))
                if not closed.done():
                    closed.set_result(None)

            self._conn = AsyncioConnection(
                pika.URLParameters(self._url),
                on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
                on_open_error_callback=on_closed,
                on_close_callback=on_closed,
                custom_ioloop=loop,
            )
        return await self._ready

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if method.multiple:
            tags = [tag for tag in self._confirms if tag <= method.delivery_tag]
        else:
            tags = [method.delivery_tag]
        nack = isinstance(method, Basic.Nack)
        for tag in tags:
            future = self._confirms.pop(tag, None)
            if future is not None and not future.done():
                if nack:
                    future.set_exception(RuntimeError("RabbitMQ refused the message (nack)"))
                else:
                    future.set_result(None)

    def _on_channel_closed(self, _: Channel, reason: BaseException) -> None:
        waiting = [*self._confirms.values(), *self._ops]
        self._confirms.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(ConnectionError(f"channel closed: {reason!r}"))

    async def _declare(self, queue: str) -> Channel:
        channel = await self._channel()
        declared = self._declared.get(queue)
        if declared is None:
            declared = self._declared[queue] = self._future()
            channel.queue_declare(
                queue,
                durable=True,
                arguments={"x-expires": QUEUE_EXPIRES_MS},
                callback=declared.set_result,
            )
        await declared
        return channel

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        queue = f"{self._prefix}.{channel}"
        ch = await self._declare(queue)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirms[self._next_tag] = confirmed
        self._next_tag += 1
        ch.basic_publish("", queue, msgpack.packb(message), self._properties)
        await confirmed

    async def receive(self, channel: str) -> dict[str, Any]:
        queue = f"{self._prefix}.{channel}"
        inbox = self._inboxes.get(queue)
        if inbox is None:
            inbox = self._inboxes[queue] = asyncio.Queue()
            ch = await self._declare(queue)
            consuming = self._future()
            ch.basic_consume(
                queue,
                lambda _ch, method, _props, body: inbox.put_nowait((method.delivery_tag, body)),
                callback=consuming.set_result,
            )
            await consuming
        tag, body = await inbox.get()
        (await self._channel()).basic_ack(tag)
        return msgpack.unpackb(body)  # type: ignore[no-any-return]

    async def new_channel(self, prefix: str = "specific") -> str:
        return f"{prefix}.raw!{secrets.token_hex(8)}"

    async def close(self) -> None:
        conn, closed = self._conn, self._closed
        self._conn = self._ready = None
        if conn is not None and closed is not None:
            if not (conn.is_closed or conn.is_closing):
                conn.close()
            await closed
