"""A soak worker process: one layer instance and the nodes that share it (every node in one
process for an in-process layer such as ``memory://``, else one node a process).

A node sends at a steady pace on every destination of :mod:`bench.soak.plan` and receives
on its own channels until the parent's end time, then drains and reports plain data: per
destination a status byte and a send time per message, per receiving channel a count per
(sender, sequence), and per path time series the parent turns into throughput and
recovery times. Every receive is bounded by a short random timeout, so receives are
cancelled all the time, as a consumer's are when its client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import threading
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from channels.exceptions import ChannelFull

from bench.probe import Errors, clock, warm_up
from bench.runner import close_layer, describe
from bench.soak.plan import (
    BUCKET,
    ERROR,
    FULL,
    LATE_TOLERANCE,
    MESSAGE_TYPE,
    OK,
    PENDING,
    SoakParams,
    normal_channel,
    path_of,
)
from bench.targets import Target, build_layer

Info = dict[str, Any]
STAT_EVERY = 1.0
FLUSH_TIMEOUT = 15.0


class Sent:
    """What one node sent to one destination, indexed by sequence number."""

    def __init__(self) -> None:
        self.status = bytearray()
        self.times = array("d")  # when each send (or group_send) was called
        self.ends = array("d")  # when it returned: group sends only

    def as_dict(self) -> Info:
        return {"status": bytes(self.status), "times": self.times, "ends": self.ends}


class Book:
    """What arrived on one receiving channel: a count per (sender, sequence), capped at 255."""

    def __init__(self, dest: str, path: str, kind: str = "") -> None:
        self.dest, self.path, self.kind = dest, path, kind
        self.seen: dict[int, bytearray] = {}
        # group_add/group_discard calls of a churning member: (called, returned, op, ok)
        self.events: list[tuple[float, float, str, bool]] = []

    def as_dict(self) -> Info:
        return {
            "dest": self.dest,
            "path": self.path,
            "kind": self.kind,
            "seen": {sender: bytes(counts) for sender, counts in self.seen.items()},
            "events": self.events,
        }


class Series:
    """Per time bucket since the start: deliveries (by receive time) and the earliest
    receive time of a message sent in the bucket (by send time), for recovery times."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.count = array("l")
        self.first = array("d")
        self.late = 0
        self.oldest = 0.0

    def add(self, sent: float, received: float) -> None:
        slot = max(0, int((received - self.t0) / BUCKET))
        if slot >= len(self.count):
            self.count.extend([0] * (slot + 1 - len(self.count)))
        self.count[slot] += 1
        if sent >= self.t0:
            slot = int((sent - self.t0) / BUCKET)
            if slot >= len(self.first):
                self.first.extend([math.inf] * (slot + 1 - len(self.first)))
            if received < self.first[slot]:
                self.first[slot] = received

    def as_dict(self) -> Info:
        return {"count": self.count, "first": self.first, "late": self.late, "oldest": self.oldest}


class Node:
    def __init__(self, index: int, params: SoakParams, run: int, layer: Any) -> None:
        self.index, self.p, self.run_id, self.layer = index, params, run, layer
        self.last = index == params.nodes - 1
        self.rng = random.Random(run ^ (index << 20))
        self.text = "x" * params.payload
        self.t0 = self.t_end = 0.0
        self.sent: dict[str, Sent] = {}
        self.books: list[tuple[str, Book]] = []  # (channel, book)
        self.churners: list[tuple[str, str, Book]] = []  # (group, channel, book)
        self.series: dict[str, Series] = {}
        self.pauses: list[tuple[float, float]] = []
        self.errors = Errors()
        self.sent_count = self.received = self.cancelled = self.foreign = self.misrouted = 0
        self.last_receipt = 0.0

    def group(self, k: int) -> str:
        return normal_channel(self.run_id, f"g{k}")

    async def setup(self) -> Info:
        layer, p = self.layer, self.p
        await warm_up(layer, self.run_id, f"soak{self.index}", 5, 5.0)
        self.inbox: str = await layer.new_channel("inbox")
        self.books.append((self.inbox, Book(f"inbox{self.index}", "local")))
        if self.index in (0, 1):
            book = Book("work", "normal")
            self.books += [(normal_channel(self.run_id, "work"), book)] * 2  # two competing tasks
        if self.index == min(1, p.nodes - 1):
            self.books.append((normal_channel(self.run_id, "tight"), Book("tight", "tight")))
        if self.last:
            self.books.append((normal_channel(self.run_id, "lag"), Book("lag", "lag")))
        for k in range(p.groups):
            dest = f"g{k}"
            kinds = ("stable", "churn", "tight") if self.last else ("stable", "churn")
            for kind in kinds:
                channel = await layer.new_channel({"stable": "member"}.get(kind, kind))
                book = Book(dest, path_of(dest, kind), kind)
                self.books.append((channel, book))
                if kind == "churn":
                    self.churners.append((self.group(k), channel, book))
                else:
                    await layer.group_add(self.group(k), channel)
        return {"inbox": self.inbox}

    # -- sending ---------------------------------------------------------------------------

    def _book(self, dest: str) -> Sent:
        sent = self.sent.get(dest)
        if sent is None:
            sent = self.sent[dest] = Sent()
        return sent

    def _message(self, dest: str, seq: int, now: float) -> Info:
        return {
            "type": MESSAGE_TYPE,
            "r": self.run_id,
            "n": self.index,
            "d": dest,
            "s": seq,
            "t": now,
            "text": self.text,
        }

    async def _call(self, call: Awaitable[None]) -> int:
        try:
            await asyncio.wait_for(call, self.p.send_timeout)
        except ChannelFull:
            return FULL
        except Exception as exc:
            self.errors.record(exc)
            return ERROR
        return OK

    async def send(self, dest: str, channel: str) -> None:
        sent = self._book(dest)
        seq, now = len(sent.status), clock()
        sent.status.append(PENDING)
        sent.times.append(now)
        sent.status[seq] = await self._call(self.layer.send(channel, self._message(dest, seq, now)))
        self.sent_count += 1

    async def group_send(self, dest: str, group: str) -> None:
        sent = self._book(dest)
        seq, now = len(sent.status), clock()
        sent.status.append(PENDING)
        sent.times.append(now)
        sent.ends.append(now)
        call = self.layer.group_send(group, self._message(dest, seq, now))
        sent.status[seq] = await self._call(call)
        sent.ends[seq] = clock()
        self.sent_count += 1

    async def _paced(self, rate: float, step: Callable[[], Awaitable[None]]) -> None:
        """Call ``step`` ``rate`` times a second until the end; after a call that took
        long (a fault), go on at the pace from then, without a burst to catch up."""
        if rate <= 0:
            return
        period = 1.0 / rate
        due = self.t0 + self.rng.random() * period
        while True:
            now = clock()
            if due > now:
                await asyncio.sleep(due - now)
            if clock() >= self.t_end:
                return
            await step()
            due = max(due + period, clock() - period)

    def _senders(self, peers: dict[int, Info]) -> list[Awaitable[None]]:
        p, run = self.p, self.run_id
        inboxes = [(f"inbox{j}", info["inbox"]) for j, info in sorted(peers.items())]
        others = [pair for pair in inboxes if pair[0] != f"inbox{self.index}"] or inboxes
        turn = {"local": 0, "group": 0}

        async def local() -> None:
            dest, channel = others[turn["local"] % len(others)]
            turn["local"] += 1
            await self.send(dest, channel)

        async def group() -> None:
            k = turn["group"] % p.groups
            turn["group"] += 1
            await self.group_send(f"g{k}", self.group(k))

        def direct(what: str) -> Callable[[], Awaitable[None]]:
            channel = normal_channel(run, what)
            return lambda: self.send(what, channel)

        return [
            self._paced(p.rate, direct("work")),
            self._paced(p.rate, local),
            self._paced(p.group_rate, group),
            self._paced(p.lag_rate, direct("lag")),
            self._paced(p.tight_rate, direct("tight")),
        ]

    # -- receiving -------------------------------------------------------------------------

    def _tick(self, book: Book, msg: Any) -> None:
        now = clock()
        self.received += 1
        self.last_receipt = now
        if not isinstance(msg, dict) or msg.get("r") != self.run_id:
            self.foreign += 1
            return
        if msg.get("d") != book.dest:
            self.misrouted += 1
            return
        sender, seq = msg["n"], msg["s"]
        counts = book.seen.get(sender)
        if counts is None:
            counts = book.seen[sender] = bytearray()
        if seq >= len(counts):
            counts.extend(bytes(seq + 1 - len(counts)))
        if counts[seq] < 255:
            counts[seq] += 1
        series = self.series[book.path]
        series.add(msg["t"], now)
        age = now - msg["t"]
        if age > series.oldest:
            series.oldest = age
        if age > self.p.expiry + LATE_TOLERANCE:
            series.late += 1

    async def _receive_one(self, channel: str, book: Book, longest: float = 0.6) -> bool:
        try:
            msg = await asyncio.wait_for(
                self.layer.receive(channel), self.rng.uniform(0.05, longest)
            )
        except TimeoutError:
            self.cancelled += 1
            return False
        except Exception as exc:  # a reader outlives its layer's errors, to count their cost
            self.errors.record(exc)
            await asyncio.sleep(0.05)
            return False
        self._tick(book, msg)
        return True

    async def _reader(self, channel: str, book: Book) -> None:
        pace = 1.0 / self.p.slow_rate if book.path.startswith("tight") else 0.0
        while True:
            if await self._receive_one(channel, book) and pace:
                await asyncio.sleep(pace)

    async def _lag_reader(self, channel: str, book: Book) -> None:
        """Reads for ``lag_active`` seconds, then pauses longer than ``expiry``; from the
        end time on it reads without pauses, to drain."""
        p = self.p
        active_until = self.t0 + p.lag_active
        while True:
            now = clock()
            if active_until <= now < self.t_end:
                await asyncio.sleep(max(0.0, min(now + p.lag_pause, self.t_end) - now))
                self.pauses.append((now, clock()))
                active_until = clock() + p.lag_active
                continue
            await self._receive_one(channel, book, 0.3)

    async def _churn(self, group: str, channel: str, book: Book) -> None:
        inside = False
        while True:
            await asyncio.sleep(self.rng.uniform(0.2, 1.2))
            if clock() >= self.t_end:
                return
            op = "discard" if inside else "add"
            call = self.layer.group_discard if inside else self.layer.group_add
            called = clock()
            ok = await self._call(call(group, channel)) == OK
            book.events.append((called, clock(), op, ok))
            if ok:
                inside = not inside

    # -- the run ---------------------------------------------------------------------------

    async def run(self, peers: dict[int, Info], t0: float, t_end: float) -> Info:
        p = self.p
        self.t0, self.t_end = t0, t_end
        self.series = {book.path: Series(t0) for _, book in self.books}
        background = [
            asyncio.ensure_future(self._lag_reader(c, b) if b.dest == "lag" else self._reader(c, b))
            for c, b in self.books
        ]
        background += [asyncio.ensure_future(self._churn(*churner)) for churner in self.churners]
        try:
            await asyncio.gather(*self._senders(peers))
            self.last_receipt = max(self.last_receipt, clock())
            while True:
                now = clock()
                if now - self.last_receipt >= p.drain_quiet or now > self.t_end + p.drain_max:
                    break
                await asyncio.sleep(0.1)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        return self.report()

    def report(self) -> Info:
        books: dict[int, tuple[str, Book]] = {}
        for channel, book in self.books:
            books.setdefault(id(book), (channel, book))
        return {
            "node": self.index,
            "sent": {dest: sent.as_dict() for dest, sent in self.sent.items()},
            "books": [book.as_dict() for _, book in books.values()],
            "series": {path: series.as_dict() for path, series in self.series.items()},
            "pauses": self.pauses,
            "cancelled": self.cancelled,
            "foreign": self.foreign,
            "misrouted": self.misrouted,
            "errors": self.errors.errors,
            "error": self.errors.error,
        }


# ---------------------------------------------------------------- the process


class LogCounter(logging.Handler):
    """Counts the warnings the layer logs, by message template, instead of printing
    each (a full member logs one per message dropped, hundreds a second)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {record.msg}"] += 1


def worker_main(
    target: Target,
    node_ids: list[int],
    params: SoakParams,
    run: int,
    prefix: str,
    control: Connection,
    report: Connection,
) -> None:
    stage = ["import"]
    logs = LogCounter()
    logging.getLogger().addHandler(logs)
    try:
        asyncio.run(_serve(target, node_ids, params, run, prefix, control, report, stage, logs))
    except BaseException as exc:  # anything at all must reach the parent's report
        with contextlib.suppress(OSError):
            report.send(("error", stage[0], describe(exc)))
    finally:
        report.close()


def _listen(
    control: Connection, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]
) -> None:
    """The parent's orders, read on a daemon thread (an executor thread blocked in recv
    would hold up the interpreter's exit) and handed to the loop."""
    while True:
        try:
            order = control.recv()
        except (EOFError, OSError):
            order = ("exit", False)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(inbox.put_nowait, order)
        if order[0] == "exit":
            return


async def _serve(
    target: Target,
    node_ids: list[int],
    params: SoakParams,
    run: int,
    prefix: str,
    control: Connection,
    report: Connection,
    stage: list[str],
    logs: LogCounter,
) -> None:
    layer = build_layer(target, prefix)
    orders: asyncio.Queue[Any] = asyncio.Queue()
    threading.Thread(
        target=_listen, args=(control, asyncio.get_running_loop(), orders), daemon=True
    ).start()
    nodes = [Node(i, params, run, layer) for i in node_ids]
    try:
        stage[0] = "setup"
        infos = {node.index: await node.setup() for node in nodes}
        report.send(("ready", os.getpid(), infos))
        order = await orders.get()
        if order[0] != "go":
            return
        _, peers, t0, t_end = order
        stage[0] = "run"
        work = asyncio.gather(*(node.run(peers, t0, t_end) for node in nodes))
        ticker = asyncio.ensure_future(_stats(nodes, report, orders))
        try:
            results = await work
        finally:
            ticker.cancel()
        report.send(("done", results, dict(logs.counts)))
        while order[0] != "exit":
            order = await orders.get()
        if order[1]:
            stage[0] = "flush"
            await asyncio.wait_for(layer.flush(), FLUSH_TIMEOUT)
    finally:
        await close_layer(layer)


async def _stats(nodes: list[Node], report: Connection, orders: asyncio.Queue[Any]) -> None:
    """Counts for the parent's progress line, once a second. Any order during the run
    means the parent gave up early (interrupted): the end time comes forward."""
    while True:
        try:
            order = await asyncio.wait_for(orders.get(), STAT_EVERY)
        except TimeoutError:
            order = None
        if order is not None:
            for node in nodes:
                node.t_end = min(node.t_end, clock())
            if order[0] == "exit":
                orders.put_nowait(order)  # for _serve, after the run
                return
        sent = sum(node.sent_count for node in nodes)
        received = sum(node.received for node in nodes)
        report.send(("stat", os.getpid(), sent, received))
