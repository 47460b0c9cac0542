"""The workloads: each is a few roles that run in their own processes (or as tasks of one
process for in-process layers), plus how their results combine into one measurement.

A role has two phases. ``setup`` warms the layer up and creates whatever the peers must
know about (process-local channel names, group membership) and returns it as plain data;
``run`` is the timed part and receives every role's setup data.

Every role that receives names its channel in its setup data as ``"channel"``: the normal
channel ``bench.<run>.<what>``, or with ``--local-targets`` (``Params.local_targets``) a
process-local channel it made with ``new_channel()``, for layers that refuse normal
channels. Senders always take the name from ``peers``, so both cases share one path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.probe import (
    STOP_TYPE,
    Errors,
    SendStats,
    Tally,
    bounded,
    clock,
    drain,
    linger,
    message,
    receive_counted,
    send_retrying,
    warm_up,
)

Info = dict[str, Any]
Peers = dict[str, list[Info]]


@dataclass(frozen=True)
class Params:
    messages: int = 20_000
    producers: int = 4
    round_trips: int = 2_000
    members: int = 200
    sends: int = 200
    channels: int = 2_000
    per_channel: int = 3
    payload: int = 100
    warmup: int = 20
    idle_timeout: float = 5.0
    linger: float = 0.2
    local_targets: bool = False  # receive only on new_channel() channels (--local-targets)


QUICK = Params(
    messages=400,
    producers=4,
    round_trips=100,
    members=20,
    sends=20,
    channels=100,
    per_channel=2,
    warmup=5,
    idle_timeout=2.0,
    linger=0.05,
)


@dataclass(frozen=True)
class Ctx:
    run_id: int
    params: Params
    role: str
    index: int = 0

    def name(self, what: str) -> str:
        return f"bench.{self.run_id}.{what}"


class Role:
    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.p = ctx.params
        self.text = "x" * ctx.params.payload

    async def setup(self, layer: Any) -> Info:
        p = self.p
        await warm_up(
            layer, self.ctx.run_id, self.ctx.role, p.warmup, p.idle_timeout, p.local_targets
        )
        return {}

    async def run(self, layer: Any, peers: Peers) -> Info:
        raise NotImplementedError

    async def receiving_channel(self, layer: Any, what: str) -> str:
        """The channel this role receives on: ``bench.<run>.<what>``, or with
        ``local_targets`` a process-local channel of its own (peers learn it in setup)."""
        if not self.p.local_targets:
            return self.ctx.name(what)
        channel: str = await layer.new_channel()
        return channel


class Collector(Role):
    """Consumer of one channel (throughput, fan-in): normal, or its own local one."""

    async def setup(self, layer: Any) -> Info:
        await super().setup(layer)
        self.channel = await self.receiving_channel(layer, "in")
        return {"channel": self.channel}

    async def run(self, layer: Any, peers: Peers) -> Info:
        channel, n = self.channel, self.p.messages
        seen, tally = bytearray(n), Tally(run_id=self.ctx.run_id)
        done = await bounded(
            drain(layer, channel, seen, 0, n, tally, False),
            lambda: tally.received,
            self.p.idle_timeout,
        )
        if done:
            await linger(drain(layer, channel, seen, 0, n, tally, True), self.p.linger)
        return tally.as_dict()


class Producer(Role):
    """Sends ``messages`` to the consumer's channel from ``tasks`` concurrent tasks."""

    tasks = 1

    async def run(self, layer: Any, peers: Peers) -> Info:
        channel: str = peers["consumer"][0]["channel"]
        n, step = self.p.messages, self.tasks
        stats, run_id, text, idle = SendStats(), self.ctx.run_id, self.text, self.p.idle_timeout

        async def produce(first: int) -> None:
            for seq in range(first, n, step):
                if not await send_retrying(layer, channel, message(run_id, seq, text), stats, idle):
                    return

        start = clock()
        work = asyncio.gather(*(produce(i) for i in range(step)))
        await bounded(work, lambda: stats.sent + stats.retries, idle)
        return {"start": start, "end": clock(), **stats.as_dict()}


class FanInProducer(Producer):
    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.tasks = max(1, self.p.producers)


class RpcServer(Role):
    """Answers each request on the reply channel it carries, until told to stop."""

    async def setup(self, layer: Any) -> Info:
        await super().setup(layer)
        self.channel = await self.receiving_channel(layer, "rpc")
        return {"channel": self.channel}

    async def run(self, layer: Any, peers: Peers) -> Info:
        channel, run_id, idle = self.channel, self.ctx.run_id, self.p.idle_timeout
        stats, tally = SendStats(), Tally(run_id=run_id)

        async def serve() -> None:
            while True:
                msg = await receive_counted(layer, channel, tally)
                if msg.get("type") == STOP_TYPE:
                    return
                if msg.get("r") != run_id:
                    tally.stale += 1
                    continue
                reply = {"type": "bench.reply", "r": run_id, "s": msg["s"], "t": msg["t"]}
                reply["text"] = msg["text"]
                await send_retrying(layer, msg["reply"], reply, stats, idle)

        await bounded(serve(), lambda: tally.received, idle)
        errors = tally.errors + stats.errors
        return {
            "stale": tally.stale,
            "retries": stats.retries,
            "errors": errors,
            "error": tally.error or stats.error,
        }


class RpcClient(Role):
    """Sequential request/reply round trips through a ``new_channel()`` reply channel."""

    async def setup(self, layer: Any) -> Info:
        await super().setup(layer)
        self.reply = await layer.new_channel()
        return {}

    async def run(self, layer: Any, peers: Peers) -> Info:
        server: str = peers["server"][0]["channel"]
        reply, n = self.reply, self.p.round_trips
        run_id, text, idle = self.ctx.run_id, self.text, self.p.idle_timeout
        stats, tally, seen = SendStats(), Tally(run_id=run_id), bytearray(n)
        lat = tally.latencies

        async def calls() -> None:
            for seq in range(n):
                t0 = clock()
                request = {"type": "bench.request", "r": run_id, "s": seq, "t": t0}
                request["reply"], request["text"] = reply, text
                failed = stats.errors
                if not await send_retrying(layer, server, request, stats, idle):
                    return
                if stats.errors != failed:
                    continue  # the request raised: no reply to wait for, it counts as lost
                while True:
                    answer = await receive_counted(layer, reply, tally)
                    got = answer.get("s", -1) if answer.get("r") == run_id else -1
                    if got == seq:
                        break
                    if 0 <= got < n and seen[got]:
                        tally.duplicated += 1
                    else:
                        tally.stale += 1
                tally.last = clock()
                lat.append(tally.last - t0)
                seen[seq] = 1
                tally.unique += 1

        start = clock()
        done = await bounded(calls(), lambda: tally.received + stats.retries, idle)
        await send_retrying(layer, server, {"type": STOP_TYPE}, stats, idle)
        if done:
            # Late copies of replies already counted show up here as duplicates.
            await linger(drain(layer, reply, seen, 0, n, tally, True), self.p.linger)
        result = {**tally.as_dict(), "start": start, "retries": stats.retries}
        result["errors"] += stats.errors
        result["error"] = tally.error or stats.error
        return result


# The group sender stays at most GROUP_WINDOW sends ahead of what every member has
# received, so the workload measures sustained fan-out instead of how much of a burst
# fits under the default capacity of 100 (members that fall further behind are full, and
# the contract skips full members). The members report back every GROUP_ACK_EVERY sends.
GROUP_WINDOW = 40
GROUP_ACK_EVERY = 10
ACK_TYPE = "bench.ack"


class GroupMembers(Role):
    """Holds ``members`` process-local channels, all in one group."""

    async def setup(self, layer: Any) -> Info:
        await super().setup(layer)
        self.channels = [await layer.new_channel() for _ in range(self.p.members)]
        for channel in self.channels:
            await layer.group_add(self.ctx.name("group"), channel)
        return {}

    async def run(self, layer: Any, peers: Peers) -> Info:
        k, tally = self.p.sends, Tally(run_id=self.ctx.run_id)
        seen = [bytearray(k) for _ in self.channels]
        pairs = list(zip(self.channels, seen, strict=True))
        progress = asyncio.Event()

        def receivers(forever: bool) -> Any:
            return asyncio.gather(
                *(drain(layer, c, s, 0, k, tally, forever, progress) for c, s in pairs)
            )

        ack_channel: str = peers["sender"][0]["channel"]
        acks = asyncio.ensure_future(self._report(layer, ack_channel, tally, progress))
        try:
            if await bounded(receivers(False), lambda: tally.received, self.p.idle_timeout):
                await linger(receivers(True), self.p.linger)
        finally:
            acks.cancel()
        return tally.as_dict()

    async def _report(
        self, layer: Any, channel: str, tally: Tally, progress: asyncio.Event
    ) -> None:
        """Tell the sender how many sends every member has received (roughly: losses
        spread over all members, so one lost delivery cannot stall the sender)."""
        members, reported = len(self.channels), 0
        while True:
            await progress.wait()
            progress.clear()
            done = tally.unique // members
            if done >= reported + GROUP_ACK_EVERY:
                reported = done
                with contextlib.suppress(Exception):
                    await layer.send(channel, {"type": ACK_TYPE, "r": self.ctx.run_id, "s": done})


class GroupSender(Role):
    """Calls ``group_send``, paced by the members' acks on a channel of its own."""

    async def setup(self, layer: Any) -> Info:
        await super().setup(layer)
        self.acks = await self.receiving_channel(layer, "ack")
        return {"channel": self.acks}

    async def run(self, layer: Any, peers: Peers) -> Info:
        group, run_id, text = self.ctx.name("group"), self.ctx.run_id, self.text
        sent, errors = 0, Errors()

        ack_channel, acked = self.acks, 0

        async def send_all() -> None:
            nonlocal sent, acked
            for seq in range(self.p.sends):
                while seq - acked > GROUP_WINDOW:
                    ack = await layer.receive(ack_channel)
                    if ack.get("r") == run_id:
                        acked = max(acked, ack["s"])
                try:
                    await layer.group_send(group, message(run_id, seq, text))
                    sent += 1
                except Exception as exc:
                    errors.record(exc)
                # Yield so in-process members can drain; otherwise one uninterrupted burst
                # would overflow their capacity, which measures the burst, not the layer.
                await asyncio.sleep(0)

        start = clock()
        await bounded(send_all(), lambda: sent, self.p.idle_timeout)
        return {"start": start, "end": clock(), "sent": sent, **asdict(errors)}


class ManyOwner(Role):
    """Thousands of process-local channels in one process, one receiving task each."""

    async def setup(self, layer: Any) -> Info:
        await super().setup(layer)
        self.channels = [await layer.new_channel() for _ in range(self.p.channels)]
        return {"channels": self.channels}

    async def run(self, layer: Any, peers: Peers) -> Info:
        per, tally = self.p.per_channel, Tally(run_id=self.ctx.run_id)
        seen = bytearray(per * len(self.channels))

        def receivers(forever: bool) -> Any:
            return asyncio.gather(
                *(
                    drain(layer, c, seen, i * per, (i + 1) * per, tally, forever)
                    for i, c in enumerate(self.channels)
                )
            )

        if await bounded(receivers(False), lambda: tally.received, self.p.idle_timeout):
            await linger(receivers(True), self.p.linger)
        return tally.as_dict()


class ManySender(Role):
    async def run(self, layer: Any, peers: Peers) -> Info:
        channels: list[str] = peers["owner"][0]["channels"]
        per, run_id, text, idle = (
            self.p.per_channel,
            self.ctx.run_id,
            self.text,
            self.p.idle_timeout,
        )
        stats = SendStats()

        async def send_all() -> None:
            # Round-robin so every channel has its first message early, as with many clients.
            for j in range(per):
                for i, channel in enumerate(channels):
                    msg = message(run_id, i * per + j, text)
                    if not await send_retrying(layer, channel, msg, stats, idle):
                        return

        start = clock()
        await bounded(send_all(), lambda: stats.sent + stats.retries, idle)
        return {"start": start, "end": clock(), **stats.as_dict()}


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    roles: tuple[tuple[str, type[Role]], ...]
    source: str  # the role whose "start" opens the timed window
    sink: str  # the role whose tally closes it
    expected: Callable[[Params], int]
    summary: str


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "throughput",
            "msg/s",
            (("consumer", Collector), ("producer", Producer)),
            "producer",
            "consumer",
            lambda p: p.messages,
            "one producer process -> one consumer process, one normal channel",
        ),
        Workload(
            "fan-in",
            "msg/s",
            (("consumer", Collector), ("producer", FanInProducer)),
            "producer",
            "consumer",
            lambda p: p.messages,
            "several concurrent producer tasks -> one channel -> one consumer",
        ),
        Workload(
            "rpc",
            "rt/s",
            (("server", RpcServer), ("client", RpcClient)),
            "client",
            "client",
            lambda p: p.round_trips,
            "sequential request/reply; the reply goes to a new_channel() channel",
        ),
        Workload(
            "group",
            "deliveries/s",
            (("members", GroupMembers), ("sender", GroupSender)),
            "sender",
            "members",
            lambda p: p.members * p.sends,
            "group_send to process-local members of one group in another process",
        ),
        Workload(
            "many-channels",
            "msg/s",
            (("owner", ManyOwner), ("sender", ManySender)),
            "sender",
            "owner",
            lambda p: p.channels * p.per_channel,
            "thousands of process-local channels in one process, a few messages each",
        ),
    )
}
