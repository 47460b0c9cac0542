"""channels_rabbitmq 4.0.1 for the bench::

    python -m bench --layer tests.amqp_bench.channels_rabbitmq_layer.ChannelsRabbitmqLayer \\
        --config '{"url": "amqp://guest:guest@127.0.0.1:5672/%2F"}' \\
        --workload many-channels --workload group

channels_rabbitmq only has process-local channels (``new_channel()``, named
``<its queue>!<12 letters>``): each layer declares one exclusive queue, named at random
(``channels_<12 letters>``), consumes it and routes what arrives to the channels of its
process; ``send`` and ``receive`` raise ``RuntimeError: *** You are trying to use
"Normal Channels" ...`` for any name without a ``!``. So of the bench's workloads:

- ``many-channels`` runs: 2,000 ``new_channel()`` channels of one process, sent to from
  another (a send goes to the queue named before the ``!``).
- ``group`` runs at ``--quick`` size, or while ``--sends`` is at most 41: its members
  report progress on the normal channel ``bench.<run>.ack``, and the sender first reads
  it once it is more than 40 sends ahead; that receive raises the ``RuntimeError`` and
  ends the run (at the default 200 sends the row says "run failed: RuntimeError ...").
- ``throughput`` and ``fan-in`` send to and receive from the normal channel
  ``bench.<run>.in``, and the ``rpc`` server receives on ``bench.<run>.rpc``: every
  call raises the ``RuntimeError`` (counted in the notes), nothing is delivered, and
  the run ends after the idle timeout with every message lost.

What this module changes, and nothing else (everything else is channels_rabbitmq's own
code, called as is):

- ``url`` becomes its ``host`` (its default expects a vhost ``asgi``; ``%2F`` is ``/``).
  Other keyword arguments go to its constructor unchanged (``local_capacity``,
  ``remote_capacity``, ``expiry``, ``local_expiry``, ``groups_exchange``, ...). It has no
  ``prefix``: ``prefix`` is accepted so the bench passes one, and unused (the random
  exclusive queue keeps runs apart and is deleted with its connection; the shared
  ``groups`` exchange stays, and the group names carry the run id).
- The bench's warm-up sends to and receives from a normal channel
  ``bench.<run>.warm.<role>`` in the same process, which channels_rabbitmq refuses, so
  every workload would fail in its setup. Those names (only those) are mapped to a
  ``new_channel()`` of the layer, once per name, so the warm-up still goes through
  RabbitMQ. ``warm_up_loopback=false`` turns that off, to see the refusal.
- It only connects on the first ``send``/``group_add``/``group_discard``/``group_send``:
  ``receive`` never does, so a process that only receives would wait forever without
  consuming its queue. ``new_channel()`` connects here first, and every receive is on a
  channel from ``new_channel()`` (its receive asserts the name starts with its queue).
"""

from __future__ import annotations

import re
from typing import Any

from channels_rabbitmq.core import RabbitmqChannelLayer  # type: ignore[import-untyped]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
# bench/probe.py warm_up(): f"bench.{run_id}.warm.{tag}", sent to and read in one process.
WARM_UP_CHANNEL = re.compile(r"bench\.\d+\.warm\.[\w.-]+")


class ChannelsRabbitmqLayer(RabbitmqChannelLayer):  # type: ignore[misc]
    """channels_rabbitmq's layer, connected to ``url``, with the bench's warm-up channel
    served by one of its process-local channels."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        prefix: str = "asgi",
        warm_up_loopback: bool = True,
        **config: Any,
    ) -> None:
        super().__init__(host=url, **config)
        self._prefix = prefix  # unused: channels_rabbitmq has no prefix (see above)
        self._warm_up_loopback = warm_up_loopback
        self._loopback: dict[str, str] = {}

    async def _local(self, channel: str) -> str:
        if "!" in channel or not self._warm_up_loopback:
            return channel
        if not WARM_UP_CHANNEL.fullmatch(channel):
            return channel  # a normal channel: channels_rabbitmq raises its RuntimeError
        local = self._loopback.get(channel)
        if local is None:
            local = self._loopback[channel] = await self.new_channel()
        return local

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await super().send(await self._local(channel), message)

    async def receive(self, channel: str) -> dict[str, Any]:
        message: dict[str, Any] = await super().receive(await self._local(channel))
        return message

    async def new_channel(self, prefix: str = "") -> str:
        await self.carehare_connection  # connect and consume now: receive() never would
        name: str = await super().new_channel(prefix)
        return name
