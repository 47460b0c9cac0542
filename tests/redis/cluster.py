"""A throwaway Redis Cluster on loopback ports: three masters, each with one replica.

Every redis-server runs in the foreground, is remembered by pid and stopped by that pid
(on Linux each also dies with the process that started it, through PR_SET_PDEATHSIG, so an
interrupted test run leaves no cluster behind). Nothing here touches the shared server on
6379.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.redis.harness import REDIS_SERVER

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
START_TIMEOUT = 30.0
RESHARD_TIMEOUT = 120.0
FAILOVER_TIMEOUT = 30.0
NODE_TIMEOUT_MS = 3000  # room for a loaded CI machine: at 1 s a slow node risks being failed
# The cluster bus listens on port + 10000, so a node's port must leave room for it.
PORT_RANGE = (20000, 55000)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(*PORT_RANGE)
        if port not in ports and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


def _server_version() -> tuple[int, ...]:
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10
        )
        version = out.stdout.split("v=", 1)[1].split()[0]
        return tuple(int(part) for part in version.split("."))
    return (0,)


# Redis 7.0 added the option (and the behaviour it turns off).
_NO_EMPTIED_MASTER_MIGRATION = (
    ["--cluster-allow-replica-migration", "no"] if _server_version() >= (7, 0) else []
)


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def cluster_support() -> str | None:
    """Why this machine cannot run a test cluster, or None when it can."""
    for binary in (REDIS_SERVER, REDIS_CLI):
        if not os.path.exists(binary):
            return f"{os.path.basename(binary)} not found (looked for {binary})"
    try:
        out = subprocess.run(
            [REDIS_CLI, "--cluster", "help"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{REDIS_CLI} --cluster help failed: {exc}"
    if "reshard" not in out.stdout + out.stderr:
        return f"{REDIS_CLI} has no --cluster support (redis-cli 5.0 or later is needed)"
    return None


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    master: bool
    master_id: str | None
    failed: bool
    slots: tuple[tuple[int, int], ...] = field(default=())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def parse_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flags, master_id = parts[0], parts[1], parts[2].split(","), parts[3]
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            ClusterNode(
                id=node_id,
                port=int(address.split("@")[0].rsplit(":", 1)[1] or 0),
                master="master" in flags,
                master_id=None if master_id == "-" else master_id,
                failed="fail" in flags or "fail?" in flags,
                slots=tuple(slots),
            )
        )
    return nodes


class RedisCluster:
    """Six redis-servers made into a cluster; ``start()`` takes a few seconds."""

    def __init__(self, size: int = 6, replicas: int = 1) -> None:
        self.size = size
        self.replicas_per_master = replicas
        self.ports = _free_ports(size)
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}" for port in self.ports]

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        log = open(node_dir / "server.log", "ab")  # noqa: SIM115
        self.procs[port] = subprocess.Popen(
            [
                REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # Replicas sync at once instead of after the default 5 s wait for others.
                "--repl-diskless-sync-delay", "0",
                # A master emptied by a reshard stays a master (Redis 7 would make it a
                # replica), and replicas stay with their masters, so the tests' topology
                # stays three masters with a replica each.
                "--cluster-migration-barrier", "999", *_NO_EMPTIED_MASTER_MIGRATION,
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=node_dir,
            preexec_fn=_die_with_parent(),
        )  # fmt: skip
        log.close()

    def _log_tail(self, port: int) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / str(port) / "server.log").read_text()[-1500:]
        return ""

    def _wait_answering(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            proc = self.procs[port]
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited: {self._log_tail(port)}")
            with contextlib.suppress(redis.RedisError), self.client(port) as client:
                if client.ping():
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on {port} did not start")

    def start(self) -> RedisCluster:
        try:
            deadline = time.monotonic() + START_TIMEOUT
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_answering(port, deadline)
            out = subprocess.run(
                [
                    REDIS_CLI, "--cluster", "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes",
                ],
                capture_output=True, text=True, timeout=START_TIMEOUT,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
            self.wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        for proc in procs.values():
            proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, node: ClusterNode, timeout: float = FAILOVER_TIMEOUT) -> None:
        """Bring a killed node back on its port; with its nodes.conf it rejoins as a replica."""
        self._spawn(node.port)
        deadline = time.monotonic() + timeout
        self._wait_answering(node.port, deadline)
        self.wait_healthy(deadline)

    # -- state -----------------------------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        client = redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=2)
        # The raw text is parsed here, the same way whatever redis-py version is installed.
        for command in ("CLUSTER INFO", "CLUSTER NODES"):
            client.set_response_callback(command, lambda response, **_: response)
        return client

    def alive_ports(self) -> list[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def nodes(self) -> list[ClusterNode]:
        """CLUSTER NODES as the first live node sees it."""
        last: Exception | None = None
        for port in self.alive_ports():
            try:
                with self.client(port) as client:
                    return parse_nodes(client.execute_command("CLUSTER NODES").decode())
            except redis.RedisError as exc:
                last = exc
        raise RuntimeError(f"no cluster node answers CLUSTER NODES: {last}")

    def masters(self) -> list[ClusterNode]:
        return [node for node in self.nodes() if node.master and not node.failed]

    def replicas(self) -> list[ClusterNode]:
        return [node for node in self.nodes() if not node.master and not node.failed]

    def master_of_slot(self, slot: int) -> ClusterNode:
        for node in self.masters():
            if node.owns(slot):
                return node
        raise LookupError(f"no master owns slot {slot}")

    def _healthy(self) -> str | None:
        """What is not yet right, or None once every live node agrees all is well."""
        views = []
        for port in self.alive_ports():
            try:
                with self.client(port) as client:
                    info = client.execute_command("CLUSTER INFO").decode()
                    if "cluster_state:ok" not in info:
                        return f"node {port} is not cluster_state:ok"
                    text = client.execute_command("CLUSTER NODES").decode()
                    replication = client.info("replication")
            except redis.RedisError as exc:
                return f"node {port}: {exc}"
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return f"replica {port} is not in sync with its master"
            nodes = [node for node in parse_nodes(text) if node.port in self.alive_ports()]
            views.append(sorted((n.port, n.master, n.master_id, n.slots) for n in nodes))
        if any(view != views[0] for view in views):
            return "the nodes do not agree on the topology yet"
        masters = [node for node in self.masters() if node.slots]
        if sum(node.slot_count for node in masters) != 16384:
            return "not every slot has a master"
        return None

    def wait_healthy(self, deadline: float) -> None:
        problem: str | None = "not checked"
        while time.monotonic() < deadline:
            problem = self._healthy()
            if problem is None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the cluster did not become healthy: {problem}\n{self.describe()}")

    def describe(self) -> str:
        """Every live node's view of the cluster, for failure messages."""
        views = []
        for port in self.alive_ports():
            try:
                with self.client(port) as client:
                    text = client.execute_command("CLUSTER NODES").decode()
            except redis.RedisError as exc:
                text = repr(exc)
            views.append(f"node {port} sees:\n{text}")
        return "\n".join(views)

    # -- changes ---------------------------------------------------------------------------

    def reshard(
        self,
        from_node: ClusterNode,
        to_node: ClusterNode,
        slots: int,
        timeout: float = RESHARD_TIMEOUT,
    ) -> None:
        """Move ``slots`` slots (with their keys) from one master to another."""
        out = subprocess.run(
            [
                REDIS_CLI, "--cluster", "reshard", f"127.0.0.1:{to_node.port}",
                "--cluster-from", from_node.id, "--cluster-to", to_node.id,
                "--cluster-slots", str(slots), "--cluster-yes",
            ],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster reshard failed: {out.stdout[-2000:]}{out.stderr}"
            )
        self.wait_healthy(time.monotonic() + timeout)

    def kill_master(self, node: ClusterNode, timeout: float = FAILOVER_TIMEOUT) -> float:
        """SIGKILL a master; return the seconds until its replica took over its slots."""
        if not node.master or not node.slots:
            raise ValueError(f"node {node.port} is not a master with slots")
        if not any(replica.master_id == node.id for replica in self.replicas()):
            raise ValueError(f"master {node.port} has no replica to take over")
        proc = self.procs[node.port]
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = started + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                owners = [
                    other for other in self.masters() if other.port != node.port and other.slots
                ]
                taken = any(set(node.slots) <= set(other.slots) for other in owners)
                if taken and self._healthy() is None:
                    return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"no replica took over from master {node.port} within {timeout} s")

    def rebalance(self, timeout: float = RESHARD_TIMEOUT) -> None:
        """Spread the slots evenly again over every master, empty ones included."""
        port = self.alive_ports()[0]
        out = subprocess.run(
            [
                REDIS_CLI, "--cluster", "rebalance", f"127.0.0.1:{port}",
                "--cluster-use-empty-masters", "--cluster-yes",
            ],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster rebalance failed: {out.stdout[-2000:]}{out.stderr}"
            )
        self.wait_healthy(time.monotonic() + timeout)

    def keys_by_master(self, pattern: str) -> dict[int, int]:
        """How many keys matching ``pattern`` each live master holds, by port."""
        counts = {}
        for node in self.masters():
            with self.client(node.port) as client:
                counts[node.port] = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        return counts
