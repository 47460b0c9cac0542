"""The parent side of one soak: private server, worker processes, fault schedule, samples
of each worker's memory and connections, and the final count.

Workers are spawned, never forked (as in the bench). The parent starts them, waits until
every one is set up, gives them a common start and end time, then watches: it reads their
progress counts, samples ``/proc`` once a second, and a thread injects the faults. When
every worker has drained and reported, the one holding node 0 flushes the layer's prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import secrets
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, TextIO
from urllib.parse import urlsplit

from bench.probe import clock
from bench.runner import describe
from bench.soak.account import tally, throughput
from bench.soak.faults import FaultError, Killer, named_config
from bench.soak.plan import SoakParams, channel_capacity
from bench.soak.resources import Sample, sample
from bench.soak.servers import SERVERS, PrivateServer, RabbitServer
from bench.soak.worker import worker_main
from bench.targets import AMQP_CLASS, MEMORY_CLASS, POSTGRES_CLASS, REDIS_CLASS, Target

Info = dict[str, Any]
BACKENDS = {
    MEMORY_CLASS: "memory",
    REDIS_CLASS: "redis",
    POSTGRES_CLASS: "postgres",
    AMQP_CLASS: "amqp",
}
SETUP_TIMEOUT = 90.0
EXIT_TIMEOUT = 30.0
START_DELAY = 0.5
LATE_FAULT = 1.0  # a fault this late (behind a slow one) is skipped
MIN_GAP = 2.0  # seconds from the end of a fault to the start of the next, at least  # from "go" to the common start time: every worker gets the order first


@dataclass(frozen=True)
class Options:
    faults: bool = False
    restart: bool = False
    fault_every: float = 5.0
    settle: float | None = None  # seconds at the end without a fault starting (see settle)
    down_for: float = 1.0  # seconds a restarted server stays down
    rss_margin: float = 50.0  # MB a process may grow from the start sample to the end one
    conn_margin: int = 4  # connections a process may have above its start sample


class RunFailed(Exception):
    def __init__(self, reason: str, stage: str) -> None:
        super().__init__(reason)
        self.stage = stage


class Status:
    """The progress line on stderr: redrawn in place on a terminal, a line every few
    seconds otherwise (CI logs), nothing when disabled."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and stream.isatty()
        self.width = max(40, shutil.get_terminal_size((100, 20)).columns - 1)
        self.drawn = -1e9

    def show(self, text: str, force: bool = False) -> None:
        now = clock()
        if not self.enabled or (not force and now - self.drawn < (0.2 if self.tty else 5.0)):
            return
        self.drawn = now
        if self.tty:
            self.stream.write("\r" + text[: self.width].ljust(self.width))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def backend_of(target: Target) -> str | None:
    return BACKENDS.get(target.factory)


def server_ports(backend: str | None, config: Info) -> frozenset[int] | None:
    """The ports of the server(s) the layer talks to; None when they cannot be told."""
    if backend == "memory":
        return frozenset()
    try:
        if backend == "redis":
            ports = set()
            for host in config.get("hosts") or []:
                address = host.get("address") if isinstance(host, dict) else host
                if not isinstance(address, str) or not address.startswith(("redis", "rediss")):
                    return None
                ports.add(urlsplit(address).port or 6379)
            return frozenset(ports) or None
        if backend == "postgres" and str(config.get("dsn", "")).startswith("postgres"):
            dsn = urlsplit(config["dsn"])
            if not dsn.hostname or "host=" in dsn.query:
                return None  # a Unix socket (libpq's default without a host): no port
            return frozenset({dsn.port or 5432})
        if backend == "amqp":
            url = urlsplit(str(config.get("url", "")))
            return frozenset({url.port or (5671 if url.scheme == "amqps" else 5672)})
    except ValueError:
        return None
    return None


def _point_at(backend: str, config: Info, url: str) -> Info:
    key = {"redis": "hosts", "postgres": "dsn", "amqp": "url"}[backend]
    return {**config, key: [url] if key == "hosts" else url}


def _admin_address(backend: str, config: Info) -> str:
    """Where the fault injector connects: the (first) server the layer uses."""
    if backend == "redis":
        hosts = config.get("hosts")
        first = hosts[0] if isinstance(hosts, list) and hosts else None
        if not isinstance(first, dict) or not isinstance(first.get("address"), str):
            raise RunFailed("--faults on Redis needs the layer given by a redis:// URL", "setup")
        return str(first["address"])
    return str(config["dsn" if backend == "postgres" else "url"])


#: Seconds a fault takes, by kind and backend, on top of the 3 s any fault is given at
#: the end to recover: rabbitmqctl starts an Erlang VM for each call; a restart waits
#: until the server answers again.
FAULT_TAKES = {
    ("kill", "amqp"): 5.0,
    ("restart", "redis"): 1.0,
    ("restart", "postgres"): 4.0,
    ("restart", "amqp"): 20.0,
}


def settle(options: Options, backend: str | None) -> float:
    """The last seconds of traffic in which no fault starts, so that the last one is over
    and recovered from before the senders stop (and the end samples are taken)."""
    if options.settle is not None:
        return options.settle
    kinds = (["kill"] if options.faults else []) + (["restart"] if options.restart else [])
    return 3.0 + max((FAULT_TAKES.get((k, backend or ""), 0.0) for k in kinds), default=0.0)


def schedule(params: SoakParams, options: Options, backend: str | None) -> list[tuple[float, str]]:
    """Fault times (seconds from the start) and kinds: every ``fault_every`` seconds after
    the warm-up, none in the last ``settle`` seconds; kills and restarts alternate."""
    if not options.faults and not options.restart:
        return []
    last = params.duration - settle(options, backend)
    kinds = ["kill", "restart"] if options.faults and options.restart else None
    plan, k = [], 1
    while (at := params.warm + k * options.fault_every) <= last:
        if kinds:
            plan.append((at, kinds[(k - 1) % 2]))
        else:
            plan.append((at, "kill" if options.faults else "restart"))
        k += 1
    return plan


class Injector(threading.Thread):
    """Injects the planned faults, then stays alive until released: a server restarted
    from this thread gets SIGTERM when this thread ends (PR_SET_PDEATHSIG follows the
    thread that forked it), so it must outlive the workers' final flush."""

    def __init__(
        self,
        plan: list[tuple[float, str]],
        t0: float,
        deadline: float,
        killer: Killer | None,
        server: PrivateServer | None,
        down_for: float,
        gap: float,
    ) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.gap = gap
        self.plan, self.t0, self.deadline = plan, t0, deadline
        self.killer, self.server, self.down_for = killer, server, down_for
        self.records: list[Info] = []
        self.stop = threading.Event()  # no more faults
        self.finished = threading.Event()  # none under way either
        self.release = threading.Event()  # the thread may end

    def run(self) -> None:
        try:
            last_end = -math.inf
            for at, kind in self.plan:
                # Never back to back: a fault right after a slow one (a restart) would
                # count the first one's recovery time as the second's.
                due = max(self.t0 + at, last_end + self.gap)
                if self.stop.wait(max(0.0, due - clock())):
                    break
                if clock() > self.deadline + LATE_FAULT:
                    break  # too late to recover before the end
                self.records.append(self._inject(kind))
                last_end = clock()
        finally:
            self.finished.set()
        self.release.wait()

    def _inject(self, kind: str) -> Info:
        start, dropped, error = clock(), None, None
        try:
            if kind == "kill" and self.killer is not None:
                dropped = self.killer.kill()
            elif kind == "restart" and self.server is not None:
                self.server.restart(self.down_for)
        except Exception as exc:  # recorded in the report; the soak goes on
            error = describe(exc)
        return {"kind": kind, "start": start, "end": clock(), "dropped": dropped, "error": error}

    def end(self) -> None:
        self.stop.set()
        self.release.set()
        if self.is_alive():
            self.join(EXIT_TIMEOUT)


Worker = tuple[multiprocessing.process.BaseProcess, Connection, Connection, list[int]]


def _spawn(
    target: Target, params: SoakParams, run: int, prefix: str, in_process: bool
) -> list[Worker]:
    context = multiprocessing.get_context("spawn")
    groups = [list(range(params.nodes))] if in_process else [[i] for i in range(params.nodes)]
    workers: list[Worker] = []
    for nodes in groups:
        control_read, control_write = context.Pipe(duplex=False)
        report_read, report_write = context.Pipe(duplex=False)
        process = context.Process(
            target=worker_main,
            args=(target, nodes, params, run, prefix, control_read, report_write),
            name=f"soak-{'+'.join(map(str, nodes))}",
            daemon=True,
        )
        process.start()
        control_read.close()
        report_write.close()
        workers.append((process, control_write, report_read, nodes))
    return workers


def _read(worker: Worker) -> Any:
    process, _, report, _ = worker
    try:
        reply = report.recv()
    except EOFError:
        process.join(1.0)
        raise RunFailed(
            f"worker {process.name} exited without a report (exit code {process.exitcode})", "run"
        ) from None
    if reply[0] == "error":
        raise RunFailed(f"worker {process.name}: {reply[2]}", reply[1])
    return reply


def _stop(workers: list[Worker], flush_first: bool) -> None:
    for i, (_, control, _, _) in enumerate(workers):
        with contextlib.suppress(OSError):
            control.send(("exit", flush_first and i == 0))
    for process, control, report, _ in workers:
        process.join(EXIT_TIMEOUT)
        if process.is_alive():
            process.terminate()
            process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()
        control.close()
        report.close()


def soak(target: Target, params: SoakParams, options: Options, status: Status) -> Info:
    """One soak of one layer; the report as plain data (see bench.soak.report)."""
    run = secrets.randbits(31)
    prefix = f"soak{run:x}"
    backend = backend_of(target)
    result: Info = {
        "layer": target.label,
        "backend": backend,
        "prefix": prefix,
        "private_server": None,
        "error": None,
        "stage": None,
    }
    if (options.faults or options.restart) and backend in (None, "memory"):
        result["error"] = "faults need a networked layer given by URL (redis, postgres, amqp)"
        result["stage"] = "setup"
        return result
    server: PrivateServer | None = None
    workers: list[Worker] = []
    injector: list[Injector] = []  # one, once the workers are set up
    try:
        config = dict(target.config)
        if options.restart:
            assert backend is not None
            status.show(f"[{target.label}] starting a private {backend} server", force=True)
            server = SERVERS[backend]()
            server.start()
            config = _point_at(backend, config, server.url)
            result["private_server"] = server.url
        if backend is not None:
            config = named_config(backend, config, prefix)
        capacities = {**channel_capacity(run, params), **config.get("channel_capacity", {})}
        config = {"expiry": params.expiry, **config, "channel_capacity": capacities}
        target = dataclasses.replace(target, config=config)
        ports = server_ports(backend, config)
        killer = None
        if options.faults and backend is not None:
            node = server.node if isinstance(server, RabbitServer) else None
            killer = Killer(backend, _admin_address(backend, config), prefix, node)
        return _drive(target, params, options, status, run, prefix, ports, killer, server,
                      workers, injector, result)  # fmt: skip
    except (RunFailed, FaultError, RuntimeError) as exc:
        result["error"] = str(exc) if isinstance(exc, RunFailed) else describe(exc)
        result["stage"] = exc.stage if isinstance(exc, RunFailed) else "setup"
        return result
    finally:
        for thread in injector:
            thread.stop.set()
        _stop(workers, flush_first=result["error"] is None)
        for thread in injector:
            thread.end()
        if server is not None:
            server.remove()


def _drive(
    target: Target,
    params: SoakParams,
    options: Options,
    status: Status,
    run: int,
    prefix: str,
    ports: frozenset[int] | None,
    killer: Killer | None,
    server: PrivateServer | None,
    workers: list[Worker],
    injectors: list[Injector],
    result: Info,
) -> Info:
    label = target.label
    status.show(f"[{label}] starting {params.nodes} nodes", force=True)
    workers += _spawn(target, params, run, prefix, target.in_process)
    peers: dict[int, Info] = {}
    pids: dict[int, int] = {}
    deadline = clock() + SETUP_TIMEOUT
    waiting = {id(w[2]): i for i, w in enumerate(workers)}
    while waiting:
        for conn in wait([workers[i][2] for i in waiting.values()], timeout=0.2):
            index = waiting.pop(id(conn))
            _, pid, infos = _read(workers[index])
            pids[index] = pid
            peers.update(infos)
        if clock() > deadline:
            raise RunFailed("timed out waiting for the workers to be set up", "setup")
        status.show(f"[{label}] setting up ({len(workers) - len(waiting)}/{len(workers)} ready)")
    t0 = clock() + START_DELAY
    t_end = t0 + params.duration
    for _, control, _, _ in workers:
        control.send(("go", peers, t0, t_end))
    plan = schedule(params, options, result["backend"])
    deadline = t_end - settle(options, result["backend"])
    gap = max(MIN_GAP, options.fault_every / 2)
    injector = Injector(plan, t0, deadline, killer, server, options.down_for, gap)
    injectors.append(injector)
    injector.start()
    faults = injector.records
    stats: dict[int, tuple[int, int]] = {}
    done: dict[int, list[Info]] = {}
    warnings: Counter[str] = Counter()
    samples: dict[int, list[tuple[float, Sample]]] = {i: [] for i in pids}
    start_sample: dict[int, Sample] = {}
    end_sample: dict[int, Sample] = {}
    last_sample = 0.0
    deadline = t_end + params.drain_max + params.send_timeout + 30.0
    by_conn = {id(w[2]): i for i, w in enumerate(workers)}
    while len(done) < len(workers):
        pending = [w[2] for i, w in enumerate(workers) if i not in done]
        for conn in wait(pending, timeout=0.2):
            index = by_conn[id(conn)]
            reply = _read(workers[index])
            if reply[0] == "stat":
                stats[index] = (reply[2], reply[3])
            elif reply[0] == "done":
                done[index] = reply[1]
                warnings.update(reply[2])
        now = clock()
        if now - last_sample >= 1.0:
            last_sample = now
            for i, pid in pids.items():
                samples[i].append((now - t0, sample(pid, ports)))
        if not start_sample and now >= t0 + params.warm:
            start_sample = {i: sample(pid, ports) for i, pid in pids.items()}
        if not end_sample and now >= t_end:
            end_sample = {i: sample(pid, ports) for i, pid in pids.items()}
        if now > deadline:
            raise RunFailed("timed out waiting for the workers to finish", "run")
        sent = sum(s for s, _ in stats.values())
        received = sum(r for _, r in stats.values())
        phase = f"{min(now, t_end) - t0:5.1f}/{params.duration:.0f}s" if now < t_end else "draining"
        status.show(
            f"[{label}] {phase} sent {sent:,} received {received:,} faults {len(faults)}/{len(plan)}"
        )
    injector.stop.set()
    injector.finished.wait(EXIT_TIMEOUT)
    nodes = sorted((node for per in done.values() for node in per), key=lambda n: n["node"])
    run_end = clock()
    counted = tally(nodes, faults, params, t0, t_end, run_end)
    # Before any fault, pools fill up to what the load needs: the most connections seen
    # then is the baseline, so only connections left behind by faults count as growth.
    steady = (params.warm, faults[0]["start"] - t0 if faults else params.duration / 2)
    processes = [
        _process(workers[i][3], pids[i], start_sample.get(i), end_sample.get(i), samples[i], steady)
        for i in sorted(pids)
    ]
    result.update(
        {
            "duration": params.duration,
            "nodes": params.nodes,
            "processes": processes,
            "faults": [
                {**f, "start": f["start"] - t0, "end": f["end"] - t0, "recovery": r}
                for f, r in zip(faults, counted.pop("recoveries"), strict=True)
            ],
            "faults_planned": len(plan),
            "layer_warnings": dict(warnings.most_common()),
            **counted,
            "throughput": throughput(nodes, t0),
        }
    )
    result["verdict"] = verdict(result, options)
    return result


def _process(
    nodes: list[int],
    pid: int,
    start: Sample | None,
    end: Sample | None,
    samples: list[tuple[float, Sample]],
    steady: tuple[float, float],
) -> Info:
    first = dataclasses.asdict(start) if start else None
    if first is not None and first["connections"] is not None:
        first["connections_after_warm_up"] = first["connections"]
        seen = [s.connections for t, s in samples if steady[0] <= t <= steady[1]]
        first["connections"] = max([first["connections"], *(n for n in seen if n is not None)])
    return {
        "nodes": nodes,
        "pid": pid,
        "start": first,
        "end": dataclasses.asdict(end) if end else None,
        "peak_rss_mb": max((s.rss_mb or 0.0 for _, s in samples), default=None),
        "samples": [(round(t, 2), s.rss_mb, s.connections) for t, s in samples],
    }


EXIT_OK, EXIT_DUPLICATES, EXIT_USAGE, EXIT_FAILED, EXIT_LEAK, EXIT_CONTRACT = 0, 1, 2, 3, 4, 5


def verdict(result: Info, options: Options) -> Info:
    """What fails the run, with the exit status of the worst: duplicates (1), the run
    itself (3), a contract broken otherwise (5), growth beyond the margins (4)."""
    failures: list[tuple[int, str]] = []
    counts, lost = result["counts"], result["lost"]
    if counts.get("duplicated"):
        failures.append((EXIT_DUPLICATES, f"{counts['duplicated']} messages delivered twice"))
    broken = {
        "unexplained": lost["unexplained"],
        "stray": counts.get("stray", 0),
        "misrouted": counts.get("misrouted", 0),
        "late": counts.get("late", 0),
        "delivered_despite_full": counts.get("delivered_despite_full", 0),
        "group_full": counts.get("group_full", 0),
        "unrecovered": result["unrecovered"],
    }
    for what, n in broken.items():
        if n:
            failures.append((EXIT_CONTRACT, f"{what}: {n}"))
    failed_faults = [f["error"] for f in result["faults"] if f["error"]]
    if failed_faults:
        failures.append((EXIT_FAILED, f"fault injection failed: {failed_faults[0]}"))
    for proc in result["processes"]:
        start, end, name = proc["start"], proc["end"], f"process {proc['pid']}"
        if not start or not end or start["rss_mb"] is None or end["rss_mb"] is None:
            failures.append((EXIT_FAILED, f"{name}: no memory sample (did it die?)"))
            continue
        grown = end["rss_mb"] - start["rss_mb"]
        if grown > options.rss_margin:
            failures.append((EXIT_LEAK, f"{name}: RSS +{grown:.1f} MB > {options.rss_margin} MB"))
        if start["connections"] is not None and end["connections"] is not None:
            limit = start["connections"] + options.conn_margin
            if end["connections"] > limit:
                failures.append((EXIT_LEAK, f"{name}: {end['connections']} connections > {limit}"))
    order = [EXIT_DUPLICATES, EXIT_FAILED, EXIT_CONTRACT, EXIT_LEAK]
    code = min((order.index(c) for c, _ in failures), default=None)
    return {
        "exit": EXIT_OK if code is None else order[code],
        "failures": [text for _, text in failures],
    }
