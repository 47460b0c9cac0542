"""RabbitMQ's part of receiving: consumers, pushed to by the broker, all with manual acks.

- :class:`PlainSource`: ordinary channels, which other processes may read too. One
  consumer per queue with a prefetch of the receivers waiting (plus ``prefetch``), so
  competing processes share a channel. A fetch acks what it takes and then makes one
  synchronous call on the same channel (``basic.qos``): the broker handles a channel's
  frames in order, so when that call returns the acks are settled, and only then are the
  messages handed to the receive runtime. If the connection goes before that, the fetch
  hands out nothing: had the acks not reached the broker, it gives the messages to any
  consumer, in any process, so handing them out could deliver them twice; had they, the
  messages are lost (at most once; tests/amqp/test_faults.py measures that window).
  Deliveries beyond what a fetch takes are rejected back to their queue. Between receive
  loops the consumers stay a moment (a receiver usually comes straight back), then are
  cancelled and what they held goes back, in order.
- :class:`LocalSource`: this instance's own queues, which nobody else reads: its inbox
  (group messages, fanned out here to the local members, membership changes, notices of
  new queues) and the queue of each local channel a receive waits on (direct sends). A
  fetch acks and hands out at once, with a barrier behind the acks that settles them in
  the instance's ledger of doubts (doubts.py): a connection lost in between makes the
  broker deliver again, to this instance, only what it had not handed out, or what the
  ledger recognises and drops. When the receive loop stops, or its event loop closes, the
  channel closes and the broker takes back, in order, what was not acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

from layers.amqp import envelope
from layers.amqp.calls import Channel, Closed, Deliveries, Delivery
from layers.runtime import Fetched

if TYPE_CHECKING:
    from layers.amqp.transport import Transport

logger = logging.getLogger("layers.amqp")

#: Seconds a fetch waits for a delivery before it returns empty (the loop then checks
#: whether anyone still waits, and fetches again).
_WAIT = 1.0
#: Seconds a local channel's consumer stays after its last receive asked for it.
_IDLE_CONSUMER = 60.0
#: Seconds between two sweeps of idle local channels' consumers.
_SWEEP = 1.0
#: Seconds an ordinary channel's consumers stay after their receive loop stopped.
_GRACE = 0.05


class _Consuming:
    """One AMQP channel of a receive loop, with its consumers (tag -> channel name)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.address = transport.layer.address
        self.channel: Channel | None = None
        self.deliveries: Deliveries | None = None
        self.tags: dict[str, str] = {}
        self._interrupted = False

    def _usable(self) -> bool:
        return (
            self.channel is not None
            and self.channel.is_open
            and self.deliveries is not None
            and not (self.deliveries.cancelled & self.tags.keys())
        )

    async def _start(self, prefetch: int) -> tuple[Channel, Deliveries]:
        if self._usable():
            assert self.channel is not None and self.deliveries is not None
            return self.channel, self.deliveries
        _Consuming.release(self)
        channel = await (await self.transport.connection()).channel()
        deliveries = Deliveries(channel)
        await channel.basic_qos(prefetch)
        self.channel, self.deliveries = channel, deliveries
        return channel, deliveries

    async def _settle(self, channel: Channel, take: list[Delivery], prefetch: int) -> None:
        """Ack ``take`` and wait until the broker has handled the acks."""
        for delivery in take:
            channel.raw.basic_ack(delivery.tag)
        await channel.basic_qos(prefetch)

    async def _wait(self, deliveries: Deliveries) -> None:
        if not deliveries.items and not self._interrupted:
            await deliveries.wait(_WAIT)
        self._interrupted = False

    async def interrupt(self) -> bool:
        self._interrupted = True
        self.interrupt_wait()
        return True

    def interrupt_wait(self) -> None:
        """End the current wait for deliveries (something else needs looking at)."""
        if self.deliveries is not None:
            self.deliveries.nudge()
        idle = getattr(self, "_idle", None)
        if idle is not None:
            idle.set()

    def release(self) -> None:
        """Close the channel: the broker takes back whatever it delivered us unacked."""
        channel, self.channel, self.deliveries = self.channel, None, None
        self.tags = {}
        if channel is not None and channel.is_open:
            try:
                channel.raw.close()
            except Exception as exc:
                logger.debug("closing a consuming channel: %s", exc)


class PlainSource(_Consuming):
    """Kept by the transport across receive loops: between them it stops consuming (and
    rejects back what it held) but keeps its channel."""

    drain = False

    def __init__(self, transport: Transport, channels: tuple[str, ...]) -> None:
        super().__init__(transport)
        self._channels = channels
        self._prefetch = 1
        self._pausing: asyncio.Future[None] | None = None
        self._pause_started = False

    async def fetch(self, count: int) -> list[Fetched]:
        transport = self.transport
        layer = transport.layer
        with transport.boundary:
            await self._resume()
            channel, deliveries = await self._start(count)
            if count != self._prefetch:
                await channel.basic_qos(count)
                self._prefetch = count
            if not self.tags:
                for name in self._channels:
                    # Declared whatever this process remembers: a flush elsewhere may have
                    # deleted it, and a consumer is started rarely.
                    await transport.ensure_queue(name, force=True)
                    self.tags[await deliveries.consume(layer.queue_of(name))] = name
            await self._wait(deliveries)
            items, deliveries.items = deliveries.items, []
            # Deliveries to consumers cancelled since (see release) are not ours to take.
            ours = [item for item in items if item.consumer in self.tags]
            take = ours[:count]
            for delivery in items[len(take) :] if items[: len(take)] == take else items:
                if delivery not in take:
                    channel.raw.basic_nack(delivery.tag, requeue=True)
            if not take:
                return []
            await self._settle(channel, take, count)
        return _fetched(take, self.tags)

    def release(self) -> None:
        """No receiver waits: after a moment of grace, stop consuming and hand back what
        was delivered meanwhile (in order, once the cancel is confirmed, so that nothing
        still on its way comes back behind later messages). The next fetch takes over
        the consumers if it comes in time, or waits for the pause to finish."""
        if self.tags and self._usable():
            self._pausing = asyncio.ensure_future(self._pause(_GRACE))

    async def _pause(self, grace: float) -> None:
        await asyncio.sleep(grace)
        self._pause_started = True
        channel, deliveries = self.channel, self.deliveries
        tags = set(self.tags)
        self.tags = {}
        if channel is None or deliveries is None:
            return
        try:
            for tag in tags:
                await channel.basic_cancel(tag)
            # In delivery order: each goes back to where it was in its queue.
            for delivery in deliveries.items:
                if delivery.consumer in tags:
                    channel.raw.basic_nack(delivery.tag, requeue=True)
            deliveries.items = [d for d in deliveries.items if d.consumer not in tags]
        except Exception as exc:
            logger.debug("pausing a consuming channel: %s", exc)
            _Consuming.release(self)

    async def _resume(self) -> None:
        pausing, self._pausing = self._pausing, None
        if pausing is not None:
            if self._pause_started:
                await pausing
            else:
                pausing.cancel()  # still in its grace: the consumers carry on
        self._pause_started = False

    async def aclose(self) -> None:
        if self._pausing is not None:
            self._pausing.cancel()
        _Consuming.release(self)

    async def give_back(self, items: list[Fetched]) -> None:
        # AMQP puts nothing back at the head of a queue: these go to its tail.
        transport = self.transport
        for item in items:
            name, body = item.origin
            await transport.publish("", transport.layer.queue_of(name), body)


class LocalSource(_Consuming):
    drain = True
    #: Only the loop holding ``layer.local_duty`` consumes (and files, in order), so the
    #: runtime's turns between loops are not needed (layers/runtime/network.py).
    one_loop_at_a_time = True

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self._consumed: dict[str, str] = {}  # local channel -> consumer tag
        self._qos = 0  # the prefetch the channel gives the next consumer it starts
        self._swept = 0.0
        # Deliveries of local channels' own queues waiting for room in their buffer.
        self._held: list[Delivery] = []
        self._idle = asyncio.Event()

    async def fetch(self, count: int) -> list[Fetched]:
        transport = self.transport
        layer = transport.layer
        if not layer.local_duty.claim(transport.loop):
            # Another event loop of this instance consumes its queues, into the buffer
            # every loop's receivers share: one consumer keeps the inbox's order (a
            # membership before the group messages that need it) and each queue's.
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), _WAIT)
            return []
        with transport.boundary:
            if not self._usable():
                self._consumed = {}
                self._held = []
                _, deliveries = await self._start(layer.local_batch)
                self._qos = layer.local_batch
                await transport.ensure_inbox(layer.inbox, force=True)
                self.tags[await deliveries.consume(layer.inbox)] = ""
            channel, deliveries = await self._start(layer.local_batch)
            await self._follow(deliveries)
            if not self._fileable():
                await self._wait(deliveries)
            items, deliveries.items = deliveries.items, []
            fresh, again = self._sort(items)
            # A channel's own queue is acked only as its buffer has room: the rest waits
            # unacked (the broker holds it), and the queue keeps the channel's capacity.
            direct = [*self._held, *(d for d in fresh if self.tags.get(d.consumer))]
            take, self._held = self._room(direct)
            inbox = [d for d in fresh if self.tags.get(d.consumer) == ""]
            if take or inbox or again:
                self._settle_later(channel, [*inbox, *take], again)
        return self._open(inbox) + self._open(take)

    def _sort(self, items: list[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        """Split off the redeliveries of what was handed out already (see doubts.py)."""
        doubts = self.transport.layer.doubts
        if not len(doubts):
            return items, []
        wall = time.time()
        fresh: list[Delivery] = []
        again: list[Delivery] = []
        for delivery in items:
            if delivery.redelivered and doubts.redelivered(delivery.body, wall):
                again.append(delivery)
            else:
                fresh.append(delivery)
        return fresh, again

    def _settle_later(self, channel: Channel, taken: list[Delivery], again: list[Delivery]) -> None:
        """Ack, and hand out without waiting: the barrier behind the acks settles them in
        the ledger when it answers (only this instance consumes these queues)."""
        layer = self.transport.layer
        if not channel.is_open:
            # None of this is handed out: the broker delivers it all again. Past here
            # nothing can fail or yield, so what is acked is handed out.
            raise Closed("the consuming channel closed")
        for delivery in (*taken, *again):
            channel.raw.basic_ack(delivery.tag)
        barrier = channel.start_qos(self._qos)

        def settled(future: asyncio.Future[object]) -> None:
            if future.cancelled() or future.exception() is not None:
                layer.doubts.orphan(token)
            else:
                layer.doubts.settle(token)

        until = time.time() + float(layer.expiry) + 1.0
        token = layer.doubts.hold([(delivery.body, until) for delivery in taken])
        barrier.add_done_callback(settled)

    def _room(self, direct: list[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        layer = self.transport.layer
        buffer = layer._buffer
        room: dict[str, int] = {}
        take: list[Delivery] = []
        held: list[Delivery] = []
        for delivery in direct:
            name = self.tags.get(delivery.consumer)
            if name is None:
                continue  # its consumer was cancelled: the broker has it back
            if name not in room:
                room[name] = layer.get_capacity(name) - buffer.size(name)
            if room[name] > 0:
                room[name] -= 1
                take.append(delivery)
            else:
                held.append(delivery)
        return take, held

    def _fileable(self) -> bool:
        """Whether a held delivery now has room (a receive took from its buffer)."""
        if not self._held:
            return False
        layer = self.transport.layer
        return any(
            layer._buffer.size(name) < layer.get_capacity(name)
            for name in {self.tags.get(d.consumer) for d in self._held}
            if name is not None
        )

    async def _follow(self, deliveries: Deliveries) -> None:
        """Consume the queue of every local channel that has one (its inbox said so) and
        that a receive asked for lately; once a second, stop consuming those nobody asked
        for in a while, so that their queues can expire, and forget them."""
        layer = self.transport.layer
        now = time.monotonic()
        if now - self._swept >= _SWEEP:
            self._swept = now
            await self._sweep(deliveries.channel, now - max(_IDLE_CONSUMER, 2 * layer.expiry))
        # Every consumed channel is in direct: equal sizes mean nothing new (O(1) a fetch
        # with thousands of channels).
        if len(self._consumed) == len(layer.direct):
            return
        for name in layer.direct - self._consumed.keys():
            # Declared (a flush may have removed it since), not registered: whoever sent
            # to it did that.
            queue = layer.queue_of(name)
            await deliveries.channel.queue_declare(queue, arguments=layer.queue_arguments(name))
            # At most its capacity in flight to us, unacked until its buffer has room
            # (basic.qos applies to the consumers started after it).
            capacity = layer.get_capacity(name)
            if capacity != self._qos:
                await deliveries.channel.basic_qos(capacity)
                self._qos = capacity
            tag = await deliveries.consume(queue)
            self._consumed[name] = tag
            self.tags[tag] = name

    async def _sweep(self, channel: Channel, cutoff: float) -> None:
        layer = self.transport.layer
        for name, when in list(layer.wanted.items()):
            if when >= cutoff:
                continue
            layer.wanted.pop(name, None)
            layer.direct.discard(name)
            tag = self._consumed.pop(name, None)
            if tag is not None:
                await channel.basic_cancel(tag)
        # A notice for a channel no receive has asked for lately (or ever): forgotten.
        for name in layer.direct - layer.wanted.keys():
            layer.direct.discard(name)

    def release(self) -> None:
        """Close the channel: the broker takes back what it delivered and was not acked,
        in order, for whichever loop consumes next (acks written before it go first)."""
        self._consumed = {}
        self._held = []
        _Consuming.release(self)
        self.transport.layer.local_duty.release(self.transport.loop)

    async def aclose(self) -> None:
        self.release()

    def _open(self, items: list[Delivery]) -> list[Fetched]:
        layer = self.transport.layer
        wall, now = time.time(), time.monotonic()
        fetched: list[Fetched] = []
        for delivery in items:
            name = self.tags.get(delivery.consumer)
            try:
                message = envelope.unpack(delivery.body)
                if message.kind in _NOTICES:
                    channel = self._notice(message, name)
            except ValueError as exc:
                logger.warning("dropping a message on %s that no layer wrote: %s", layer.inbox, exc)
                continue
            if message.kind == envelope.QUEUE:
                # Consumed from the next fetch on (which comes straight after this one),
                # for a while even if no receive asks for it yet.
                layer.direct.add(channel)
                layer.wanted[channel] = max(layer.wanted.get(channel, 0.0), now)
                continue
            if message.kind in (envelope.ADD, envelope.DISCARD):
                if layer.membership(message.kind, message.group, channel, message.deadline):
                    layer._state().spawn(self.transport.unbind_inbox(message.group))
                continue
            left = message.deadline - wall
            if not left > 0:  # a nan deadline too
                continue
            if name:
                channels = [name]
            elif message.kind == envelope.GROUP:
                channels = layer.members(message.group)
            else:
                continue
            if channels:
                fetched.append(Fetched(channels, message.rest, now + left, None))
        return fetched

    def _notice(self, message: envelope.Envelope, name: str | None) -> str:
        """The channel a notice (QUEUE, ADD, DISCARD) is about; ValueError for one no layer
        wrote. Its names are checked before use: a QUEUE notice makes this instance declare
        and consume a queue, so it must name one of this instance's own channels."""
        if name:
            raise ValueError(f"a notice ({message.kind!r}) on {name!r}'s queue, not the inbox")
        layer = self.transport.layer
        channel = message.rest.decode()  # UnicodeDecodeError is a ValueError
        try:
            layer.require_valid_channel_name(channel)
            if message.kind != envelope.QUEUE:
                layer.require_valid_group_name(message.group)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if not layer.is_local_channel(channel):
            raise ValueError(f"{channel!r} is not a channel of this instance")
        if message.kind == envelope.ADD and not math.isfinite(message.deadline):
            raise ValueError(f"membership deadline {message.deadline!r}")
        return channel

    async def give_back(self, items: list[Fetched]) -> None:
        raise AssertionError("a draining source never gives back")


_NOTICES = (envelope.QUEUE, envelope.ADD, envelope.DISCARD)


def _fetched(items: list[Delivery], tags: dict[str, str]) -> list[Fetched]:
    wall, now = time.time(), time.monotonic()
    fetched: list[Fetched] = []
    for delivery in items:
        name = tags.get(delivery.consumer)
        if name is None:
            continue
        try:
            message = envelope.unpack(delivery.body)
        except ValueError as exc:
            logger.warning("dropping a message for %s that no layer wrote: %s", name, exc)
            continue
        left = message.deadline - wall
        if left > 0 and message.kind in (envelope.MESSAGE, envelope.GROUP):
            fetched.append(Fetched((name,), message.rest, now + left, (name, delivery.body)))
    return fetched
