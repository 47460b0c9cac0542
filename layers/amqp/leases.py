"""Group memberships of ordinary channels lapse through leases the broker expires.

A binding has no expiry of its own. So ``group_add`` of an ordinary channel also puts a
lease in a queue of its own (``x-max-length`` 1, ``drop-head``, ``x-message-ttl`` =
``group_expiry``, dead-lettered to the prefix's leases exchange): a later ``group_add``
pushes the old lease out, and a lease nobody renewed expires and is dead-lettered. Every
instance runs a janitor (in one of its event loops) consuming the dead letters; for each
it looks whether its lease queue holds a newer lease, and if not unbinds the channel from
the group. If no instance runs, the dead letters wait for the next one that does.

(Process-local members need none of this: their owner keeps their memberships, with
their deadlines, from what its inbox tells it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from layers.amqp import envelope
from layers.amqp.calls import Deliveries, Refused
from layers.errors import LayerError

if TYPE_CHECKING:
    from layers.amqp.transport import Transport

logger = logging.getLogger("layers.amqp")

_RETRY = 1.0


def lease_queue(prefix: str, group: str, channel: str) -> str:
    digest = hashlib.md5(f"{group}\0{channel}".encode(), usedforsecurity=False).hexdigest()
    return f"{prefix}:!lease.{digest[:24]}"


class Leases:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        layer = transport.layer
        self.exchange = f"{layer.prefix}:leases"
        self.expired = f"{layer.prefix}:!leases"
        self._ready = False
        # Set once the leases' exchange and queue exist: the janitor has work to wait for.
        self._made = asyncio.Event()

    def _arguments(self) -> dict[str, Any]:
        group_expiry_ms = round(float(self.transport.layer.group_expiry) * 1000)
        return {
            "x-message-ttl": group_expiry_ms,
            "x-max-length": 1,
            "x-overflow": "drop-head",
            "x-dead-letter-exchange": self.exchange,
            # Gone a while after its last lease expired (and was dead-lettered).
            "x-expires": group_expiry_ms + round(self.transport.layer.queue_expires * 1000),
        }

    async def _prepare(self) -> None:
        """The dead-letter exchange and the janitors' queue: without them an expired lease
        would vanish unseen."""
        if self._ready:
            return
        transport = self.transport
        # A channel of its own: a flush elsewhere may delete the exchange between these
        # calls, and the refusal must not close a channel other tasks are using.
        channel = await (await transport.connection()).channel()
        try:
            await channel.exchange_declare(self.exchange, "fanout")
            await channel.queue_declare(
                self.expired, arguments=transport.layer.registry_arguments()
            )
            await channel.queue_bind(self.expired, self.exchange, "")
        finally:
            await channel.close()
        self._ready = True
        self._made.set()

    async def renew(self, group: str, channel: str) -> None:
        transport = self.transport
        layer = transport.layer
        queue = lease_queue(layer.prefix, group, channel)
        await transport.retrying(self._prepare)
        await transport.declare_queue(queue, self._arguments(), force=True)
        deadline = time.time() + float(layer.group_expiry)
        await transport.publish(
            "", queue, envelope.pack(envelope.ADD, deadline, channel.encode(), group)
        )

    async def end(self, group: str, channel: str) -> None:
        transport = self.transport
        queue = lease_queue(transport.layer.prefix, group, channel)

        async def delete() -> None:
            declaring = await transport.declaring()
            with contextlib.suppress(Refused):
                await declaring.queue_delete(queue)

        await transport.retrying(delete)

    def forget(self) -> None:
        self._ready = False
        self._made.clear()

    # -- the janitor -----------------------------------------------------------------------

    async def run(self) -> None:
        """Handle expired leases until cancelled."""
        while True:
            try:
                with self.transport.boundary:
                    await self._serve()
            except asyncio.CancelledError:
                raise
            except (LayerError, Exception) as exc:
                logger.debug("lease janitor: %s", exc)
            await asyncio.sleep(_RETRY)

    async def _serve(self) -> None:
        transport = self.transport
        channel = await (await transport.connection()).channel()
        try:
            deliveries = Deliveries(channel)
            await channel.basic_qos(50)
            try:
                tag = await deliveries.consume(self.expired)
            except Refused:
                # No leases under this prefix (yet, or since a flush): nothing to look
                # after until this instance makes one, or another process does.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._made.wait(), 30.0)
                return
            while channel.is_open and tag not in deliveries.cancelled:
                await deliveries.wait(30.0)
                items, deliveries.items = deliveries.items, []
                for delivery in items:
                    await self._lapse(delivery.body)
                    channel.raw.basic_ack(delivery.tag)
        finally:
            self._ready = False
            # Not awaited: this runs when the janitor is cancelled, as its loop closes.
            if channel.is_open:
                with contextlib.suppress(Exception):
                    channel.raw.close()

    async def _lapse(self, body: bytes) -> None:
        try:
            lease = envelope.unpack(body)
        except ValueError:
            return
        transport = self.transport
        layer = transport.layer
        group, channel = lease.group, lease.rest.decode()
        queue = lease_queue(layer.prefix, group, channel)
        # A passive declare the broker refuses closes its channel: use one of its own.
        probe = await (await transport.connection()).channel()
        try:
            renewed = await probe.queue_declare(queue, passive=True) > 0
        except Refused:
            renewed = False  # the lease queue is gone: nobody renewed it
        finally:
            await probe.close()
        if renewed:
            return
        await transport.unbind(layer.queue_of(channel), group)
        await self.end(group, channel)
