"""Runs one (layer, workload) pair in freshly spawned worker processes.

Workers are spawned, never forked, so each imports and connects its own layer: nothing
(sockets, event loops, locks) is inherited from the parent. The parent only coordinates:
it waits for every worker to be set up, hands each the others' setup data, says "go",
and collects the results, with a deadline on every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from bench.probe import clock, percentiles
from bench.targets import Target, build_layer
from bench.workloads import WORKLOADS, Ctx, Info, Params, Peers

SETUP_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0

Slot = tuple[str, int]


@dataclass
class Measurement:
    """One run of one workload on one layer; ``error`` set when it could not run."""

    layer: str
    workload: str
    unit: str
    repeat: int = 0
    rate: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    stale: int = 0
    retries: int = 0
    errors: int = 0
    elapsed: float | None = None
    error: str | None = None
    stage: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    target: Target
    workload: str
    params: Params
    repeat: int = 0


class JobFailed(Exception):
    def __init__(self, reason: str, stage: str) -> None:
        super().__init__(reason)
        self.stage = stage


def describe(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- worker process side


def worker_main(
    target: Target, workload: str, slots: list[Slot], run_id: int, params: Params, conn: Connection
) -> None:
    stage = ["import"]
    try:
        asyncio.run(_serve(target, workload, slots, run_id, params, conn, stage))
    except BaseException as exc:  # anything at all must reach the parent's table row
        with contextlib.suppress(OSError):
            conn.send(("error", stage[0], describe(exc)))
    finally:
        conn.close()


async def _serve(
    target: Target,
    workload: str,
    slots: list[Slot],
    run_id: int,
    params: Params,
    conn: Connection,
    stage: list[str],
) -> None:
    layer = build_layer(target, prefix=f"bench{run_id:x}")
    classes = dict(WORKLOADS[workload].roles)
    roles = [(name, classes[name](Ctx(run_id, params, name, index))) for name, index in slots]
    try:
        stage[0] = "setup"
        infos = {name: await role.setup(layer) for name, role in roles}
        conn.send(("ready", infos))
        order = await asyncio.to_thread(conn.recv)
        if order[0] != "go":
            return
        stage[0] = "run"
        results = await asyncio.gather(*(role.run(layer, order[1]) for _, role in roles))
        conn.send(("done", {name: res for (name, _), res in zip(roles, results, strict=True)}))
    finally:
        await close_layer(layer)


async def close_layer(layer: Any) -> None:
    # Ours and Channels' layers have close(); channels_redis only has close_pools().
    for name in ("close", "close_pools"):
        method = getattr(layer, name, None)
        if callable(method):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(method(), CLOSE_TIMEOUT)
            return


# ---------------------------------------------------------------- parent side

Worker = tuple[multiprocessing.process.BaseProcess, Connection]


def run_job(job: Job, timeout: float, tick: Callable[[], None] = lambda: None) -> Measurement:
    workload = WORKLOADS[job.workload]
    run_id = secrets.randbits(31)
    slots: list[Slot] = [(name, 0) for name, _ in workload.roles]
    groups = [slots] if job.target.in_process else [[slot] for slot in slots]
    context = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    base = Measurement(job.target.label, job.workload, workload.unit, job.repeat)
    try:
        for group in groups:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(job.target, job.workload, group, run_id, job.params, child_end),
                name=f"bench-{job.workload}-{'+'.join(name for name, _ in group)}",
                daemon=True,
            )
            process.start()
            child_end.close()
            workers.append((process, parent_end))
        infos = _collect(workers, "ready", clock() + SETUP_TIMEOUT, tick)
        peers: Peers = {name: [info] for per_worker in infos for name, info in per_worker.items()}
        for _, conn in workers:
            conn.send(("go", peers))
        results = _collect(workers, "done", clock() + timeout, tick)
    except JobFailed as exc:
        base.error, base.stage = str(exc), exc.stage
        return base
    finally:
        _stop(workers)
    merged = {name: res for per_worker in results for name, res in per_worker.items()}
    return summarize(base, job.params, merged)


def _collect(
    workers: list[Worker], expect: str, deadline: float, tick: Callable[[], None]
) -> list[Info]:
    """Wait for ``expect`` from every worker, failing fast on the first error."""
    got: dict[int, Info] = {}
    by_conn = {id(conn): i for i, (_, conn) in enumerate(workers)}
    while len(got) < len(workers):
        pending = [conn for i, (_, conn) in enumerate(workers) if i not in got]
        for ready in wait(pending, timeout=0.1):
            assert isinstance(ready, Connection)
            index = by_conn[id(ready)]
            process = workers[index][0]
            try:
                reply = ready.recv()
            except EOFError:
                process.join(1.0)
                raise JobFailed(
                    f"{process.name} exited without a result (exit code {process.exitcode})",
                    expect,
                ) from None
            if reply[0] == "error":
                raise JobFailed(reply[2], reply[1])
            got[index] = reply[1]
        tick()
        if clock() > deadline:
            stage = "setup" if expect == "ready" else "run"
            raise JobFailed(f"timed out waiting for workers to be {expect}", stage)
    return [got[i] for i in range(len(workers))]


def _stop(workers: list[Worker]) -> None:
    for _, conn in workers:
        with contextlib.suppress(OSError):
            conn.send(("stop",))
    for process, conn in workers:
        process.join(CLOSE_TIMEOUT)
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()


def summarize(base: Measurement, params: Params, results: dict[str, Info]) -> Measurement:
    workload = WORKLOADS[base.workload]
    source, sink = results[workload.source], results[workload.sink]
    base.expected = workload.expected(params)
    base.delivered = sink["unique"]
    base.lost = base.expected - base.delivered
    base.duplicated = sum(r.get("duplicated", 0) for r in results.values())
    base.stale = sum(r.get("stale", 0) for r in results.values())
    base.retries = sum(r.get("retries", 0) for r in results.values())
    base.errors = sum(r.get("errors", 0) for r in results.values())
    first = next((r["error"] for r in results.values() if r.get("error")), None)
    if first:
        base.extra["first_error"] = first
    if base.delivered:
        base.elapsed = max(sink["last"] - source["start"], 1e-9)
        base.rate = base.delivered / base.elapsed
    else:
        base.rate = 0.0
    pct = percentiles(sink["latencies"])
    base.p50, base.p90, base.p99 = pct["p50"], pct["p90"], pct["p99"]
    if "end" in source:
        base.extra["send_seconds"] = source["end"] - source["start"]
    if "sent" in source:
        base.extra["sent"] = source["sent"]
    return base
