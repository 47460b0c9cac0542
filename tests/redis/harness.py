"""Start and stop throwaway redis-server (and sentinel) processes on loopback ports.

Every process is started with ``subprocess`` in the foreground (``--daemonize no``),
remembered by pid and stopped by that pid; nothing here touches the shared server on 6379.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """One redis-server; ``restart()`` brings it back on the same port (empty)."""

    def __init__(
        self,
        workdir: Path,
        extra: list[str] | None = None,
        sentinel: bool = False,
        port: int | None = None,
    ):
        self.port = free_port() if port is None else port
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra or [])
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        if self.sentinel:
            conf = self.workdir / "sentinel.conf"
            return [REDIS_SERVER, str(conf), "--sentinel", *self.extra]
        return [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir),
            *self.extra,
        ]  # fmt: skip

    def start(self) -> RedisProcess:
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited: "
                    + (self.workdir / "server.log").read_text()[-2000:]
                )
            if self._ready():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def _ready(self) -> bool:
        if "--unixsocket" in self.extra:
            return os.path.exists(self.extra[self.extra.index("--unixsocket") + 1])
        if "--tls-port" in self.extra:
            port = int(self.extra[self.extra.index("--tls-port") + 1])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True
        return ping(self.port)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def start_sentinel(workdir: Path, master: RedisProcess, name: str = "mymaster") -> RedisProcess:
    sentinel = RedisProcess(workdir, sentinel=True)
    (workdir / "sentinel.conf").write_text(
        f"port {sentinel.port}\n"
        "bind 127.0.0.1\n"
        f"dir {workdir}\n"
        f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {name} 2000\n"
        f"sentinel failover-timeout {name} 5000\n"
    )
    return sentinel.start()
