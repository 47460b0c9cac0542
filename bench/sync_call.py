"""``python -m bench.sync_call``: what one ``async_to_sync(layer.group_send)`` costs.

A Django view under WSGI, a Celery task or a management command reaches the layer through
``async_to_sync``, which runs every call in a new event loop on a new thread and closes
that loop afterwards: an HTTP request that pushes to a group pays this on every push. This
measures that call, one at a time from a plain thread, as such code makes it.

Each run builds a fresh layer instance (the one ``get_channel_layer()`` would cache), warms
it up with a few calls, then times ``--calls`` calls one after another. A receiver (in its
own spawned process, as a websocket consumer would be; in a thread of this process for
layers that keep their state in one process) is a member of the group, or the target of
``send``, and counts what arrives, so a call that returns without delivering shows up as
lost. Runs are interleaved across layers, ``--repeat`` times; the table gives the median
of each run's percentiles. ``--floor`` adds a row for ``async_to_sync`` of a coroutine that
does nothing: asgiref's own cost, which no layer can go below.

example:
  python -m bench.sync_call --floor --layer memory:// --layer redis://127.0.0.1:6379/0 \\
      --layer channels_redis.core.RedisChannelLayer \\
      --config '{"hosts": ["redis://127.0.0.1:6379/0"]}' --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync

from bench.cli import _AddLayer, _Attach
from bench.probe import percentiles
from bench.runner import close_layer, describe
from bench.targets import Target, TargetError, build_layer, parse_target

OPS = ("group_send", "send")
FLOOR_LABEL = "async_to_sync(no-op)"
GROUP = "sync-call"
STOP = "bench.stop"
SETUP_TIMEOUT = 60.0
RECEIVE_TIMEOUT = 30.0


@dataclass
class Run:
    """One timed run of one layer: per-call times in seconds, and what the receiver got."""

    label: str
    samples: list[float] = field(default_factory=list)
    expected: int = 0
    received: int | None = None
    error: str | None = None


@dataclass
class Row:
    label: str
    runs: int
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    lost: int
    errors: list[str]


# ---------------------------------------------------------------- the receiver


async def _receive_until_stop(layer: Any, channel: str) -> int:
    count = 0
    while True:
        message = await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT)
        if message.get("type") == STOP:
            return count
        count += 1


async def _join(layer: Any, op: str) -> str:
    channel: str = await layer.new_channel()
    if op == "group_send":
        await layer.group_add(GROUP, channel)
    return channel


def receiver_process(target: Target, prefix: str, op: str, conn: Connection) -> None:
    """A consumer in another process: joins, says on which channel, counts until stop."""

    async def serve() -> None:
        layer = build_layer(target, prefix)
        try:
            channel = await _join(layer, op)
            conn.send(("ready", channel))
            conn.send(("done", await _receive_until_stop(layer, channel)))
        finally:
            await close_layer(layer)

    try:
        asyncio.run(serve())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", describe(exc)))
    finally:
        conn.close()


class Receiver:
    """Where the receiver runs: a spawned process, or a thread sharing the sender's layer."""

    def __init__(self, target: Target, prefix: str, op: str, layer: Any) -> None:
        self.channel = ""
        self._result: tuple[str, Any] | None = None
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._thread: threading.Thread | None = None
        if target.in_process:
            ready = threading.Event()

            def run() -> None:
                async def serve() -> tuple[str, Any]:
                    self.channel = await _join(layer, op)
                    ready.set()
                    return ("done", await _receive_until_stop(layer, self.channel))

                try:
                    self._result = asyncio.run(serve())
                except BaseException as exc:
                    self._result = ("error", describe(exc))
                finally:
                    ready.set()

            self._thread = threading.Thread(target=run, name="sync-call receiver", daemon=True)
            self._thread.start()
            if not ready.wait(SETUP_TIMEOUT) or not self.channel:
                raise RuntimeError(f"receiver did not start: {self._result}")
            return
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._conn = parent
        self._process = context.Process(
            target=receiver_process, args=(target, prefix, op, child), daemon=True
        )
        self._process.start()
        child.close()
        if not parent.poll(SETUP_TIMEOUT):
            self.stop_process()
            raise RuntimeError("receiver process did not start in time")
        kind, value = parent.recv()
        if kind != "ready":
            self.stop_process()
            raise RuntimeError(f"receiver failed: {value}")
        self.channel = value

    def result(self) -> int:
        """How many messages arrived before the stop message (raises if it failed)."""
        if self._thread is not None:
            self._thread.join(RECEIVE_TIMEOUT + 5)
            result = self._result
        else:
            assert self._conn is not None
            result = self._conn.recv() if self._conn.poll(RECEIVE_TIMEOUT + 5) else None
            self.stop_process()
        if result is None:
            raise RuntimeError("receiver did not finish in time")
        if result[0] != "done":
            raise RuntimeError(f"receiver failed: {result[1]}")
        return int(result[1])

    def stop_process(self) -> None:
        if self._process is not None:
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        if self._conn is not None:
            self._conn.close()


# ---------------------------------------------------------------- the sender


def _timed(call: Callable[[], object], calls: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(calls):
        started = clock()
        call()
        samples.append(clock() - started)
    return samples


def measure(target: Target, op: str, calls: int, warmup: int) -> Run:
    run = Run(target.label)
    prefix = f"sync{secrets.token_hex(4)}"
    try:
        layer = build_layer(target, prefix)
    except Exception as exc:
        run.error = f"build: {describe(exc)}"
        return run
    try:
        receiver = Receiver(target, prefix, op, layer)
    except Exception as exc:
        run.error = f"receiver: {describe(exc)}"
        async_to_sync(close_layer)(layer)
        return run
    message = {"type": "chat.message", "text": "x" * 64}
    if op == "group_send":
        group_send = async_to_sync(layer.group_send)

        def call() -> None:
            group_send(GROUP, message)
    else:
        send, channel = async_to_sync(layer.send), receiver.channel

        def call() -> None:
            send(channel, message)

    try:
        _timed(call, warmup)
        run.samples = _timed(call, calls)
        run.expected = warmup + calls
    except Exception as exc:
        run.error = f"call: {describe(exc)}"
    finally:
        try:
            async_to_sync(layer.send)(receiver.channel, {"type": STOP})
            run.received = receiver.result()
        except Exception as exc:
            run.error = run.error or f"receiver: {describe(exc)}"
            receiver.stop_process()
        async_to_sync(close_layer)(layer)
    return run


def measure_floor(calls: int, warmup: int) -> Run:
    async def nothing() -> None:
        return None

    call = async_to_sync(nothing)
    _timed(call, warmup)
    return Run(FLOOR_LABEL, samples=_timed(call, calls))


# ---------------------------------------------------------------- report


def summarize(label: str, runs: list[Run]) -> Row:
    ok = [run for run in runs if run.error is None]

    def median_of(key: str) -> float | None:
        values = [percentiles(run.samples)[key] for run in ok if run.samples]
        present = [value for value in values if value is not None]
        return statistics.median(present) if present else None

    means = [statistics.fmean(run.samples) * 1000 for run in ok if run.samples]
    lost = sum(run.expected - run.received for run in ok if run.received is not None)
    return Row(
        label,
        len(runs),
        median_of("p50"),
        median_of("p90"),
        median_of("p99"),
        statistics.median(means) if means else None,
        lost,
        [run.error for run in runs if run.error is not None],
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[Row], op: str, calls: int) -> str:
    lines = [
        f"`async_to_sync(layer.{op})`, {calls} calls a run, one at a time; ms, median of runs",
        "",
        "| layer | runs | p50 | p90 | p99 | mean | lost | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        errors = "; ".join(row.errors)[:200] or ""
        lines.append(
            f"| {row.label} | {row.runs} | {_ms(row.p50)} | {_ms(row.p90)} | {_ms(row.p99)} "
            f"| {_ms(row.mean)} | {row.lost} | {errors} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sync_call",
        description="Time one async_to_sync(layer.group_send) (or send) call, per layer.",
        epilog=__doc__.split("example:", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--layer", action=_AddLayer, dest="layers", default=[], metavar="URL_OR_PATH")
    add("--config", action=_Attach, metavar="JSON", help="keyword arguments for that layer")
    add("--name", action=_Attach, metavar="LABEL", help="label for that layer in the table")
    add("--op", choices=OPS, default="group_send", help="the call to time (group_send)")
    add("--calls", type=int, default=500, metavar="N", help="timed calls a run (500)")
    add("--warmup", type=int, default=20, metavar="N", help="untimed calls first (20)")
    add("--repeat", type=int, default=3, metavar="N", help="runs of each layer (3)")
    add("--floor", action="store_true", help=f"add a row for {FLOOR_LABEL}")
    add("--json", metavar="FILE", help="also write every run's percentiles as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--calls and --repeat must be at least 1, --warmup at least 0")
    if not args.layers and not args.floor:
        parser.error("name at least one --layer (or --floor)")
    targets = []
    try:
        for entry in args.layers:
            target = parse_target(entry["spec"]).with_config(entry["config"])
            if entry["name"]:
                target = Target(entry["name"], target.factory, target.config, target.in_process)
            targets.append(target)
    except TargetError as exc:
        parser.error(str(exc))
    runs: dict[str, list[Run]] = {}
    if args.floor:
        runs[FLOOR_LABEL] = []
    for target in targets:
        runs[target.label] = []
    for repeat in range(args.repeat):
        if args.floor:
            runs[FLOOR_LABEL].append(measure_floor(args.calls, args.warmup))
        for target in targets:
            print(f"run {repeat + 1}/{args.repeat}: {target.label}", file=sys.stderr)
            runs[target.label].append(measure(target, args.op, args.calls, args.warmup))
    rows = [summarize(label, group) for label, group in runs.items()]
    sys.stdout.write(table(rows, args.op, args.calls))
    if args.json:
        document = {
            "op": args.op,
            "calls": args.calls,
            "warmup": args.warmup,
            "rows": [asdict(row) for row in rows],
            "runs": [
                {"label": run.label, **percentiles(run.samples), "error": run.error}
                for group in runs.values()
                for run in group
            ],
        }
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    failed = any(row.errors or row.lost for row in rows)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
