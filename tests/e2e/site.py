"""Run the example chat site (examples/chat) as a real deployment for end-to-end tests:
``servers`` Daphne processes on free loopback ports and one ``runworker chat-tasks``
process, all sharing one channel layer picked by ``CHAT_LAYER``.

    with Site("redis") as site:
        site.urls      # ["http://127.0.0.1:40123", "http://127.0.0.1:40125"]
        site.ws_urls   # ["ws://127.0.0.1:40123", "ws://127.0.0.1:40125"]

Every process runs in a session of its own, is remembered by pid and stopped with its
process group on exit (SIGTERM, then SIGKILL after a bounded wait); each also gets SIGTERM
if the test process dies first. Each Site has a layer prefix of its own (``site.prefix``,
also the name its connections carry on the server), so sites and tests sharing a server do
not see each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chat"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
_LISTENING = re.compile(r"Listening on TCP address 127\.0\.0\.1:(\d+)")
#: Straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 15.0) -> tuple[int, bytes]:
    """GET ``url`` on loopback: (status, body), error statuses included."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process goes, so that a killed test
    run leaves no server behind."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class SiteProcess:
    """One process of the site, its output in a file of its own."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logdir: Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=EXAMPLE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as one
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} (pid {self.pid}, exit {self.proc.poll()}):\n{self.log()[-chars:]}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
        # Whatever else the group still holds (the leader may be gone already).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)


class Site:
    """The example chat site on ``backend`` (memory, redis, postgres, amqp).

    ``env`` adds to or overrides the processes' environment (``CHAT_REDIS_URL`` for a
    private server, ``CHAT_LAYER_OPTIONS``...); ``CHAT_LAYER_PREFIX`` given there is used,
    else a unique one is made. Entering waits until every server answers HTTP and, with a
    worker on a networked backend, until a task has made the round trip through it.
    """

    def __init__(
        self,
        backend: str,
        env: dict[str, str] | None = None,
        servers: int = 2,
        worker: bool = True,
    ) -> None:
        self.backend = backend
        self.prefix = (env or {}).get("CHAT_LAYER_PREFIX") or "e2e" + uuid.uuid4().hex[:12]
        pythonpath = os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH")) if p)
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "chat_site.settings",
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
            "CHAT_LAYER": backend,
            "CHAT_LAYER_PREFIX": self.prefix,
        }
        self.servers = servers
        self.worker = worker
        self.processes: list[SiteProcess] = []
        self.urls: list[str] = []
        self.ws_urls: list[str] = []
        self._logdir: Path | None = None

    def __enter__(self) -> Site:
        self._logdir = Path(tempfile.mkdtemp(prefix=f"site-{self.prefix}-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, name: str, *args: str) -> SiteProcess:
        assert self._logdir is not None
        process = SiteProcess(name, [sys.executable, *args], self.env, self._logdir)
        self.processes.append(process)
        return process

    def _start(self) -> None:
        daphne = ["-m", "daphne", "-b", "127.0.0.1", "-p", "0", "chat_site.asgi:application"]
        daphnes = [self._spawn(f"daphne{i}", *daphne) for i in range(self.servers)]
        if self.worker:
            self._spawn("worker", "manage.py", "runworker", "chat-tasks")
        deadline = time.monotonic() + START_TIMEOUT
        for server in daphnes:
            port = self._wait_for_port(server, deadline)
            url = f"http://127.0.0.1:{port}"
            self._wait_for_http(url + "/", deadline)
            self.urls.append(url)
            self.ws_urls.append(f"ws://127.0.0.1:{port}")
        if self.worker and self.backend != "memory" and self.urls:
            # The worker lives in another process: only a shared layer reaches it.
            self._wait_for_http(self.urls[0] + "/task/?text=ready", deadline)

    def _failed(self, what: str) -> RuntimeError:
        tails = "\n".join(process.tail() for process in self.processes)
        return RuntimeError(f"site on {self.backend} ({self.prefix}): {what}\n{tails}")

    def _check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise self._failed(f"{process.name} exited with {process.proc.returncode}")

    def _wait_for_port(self, server: SiteProcess, deadline: float) -> int:
        while time.monotonic() < deadline:
            self._check_alive()
            found = _LISTENING.search(server.log())
            if found:
                return int(found.group(1))
            time.sleep(0.05)
        raise self._failed(f"{server.name} did not say where it listens in {START_TIMEOUT:.0f} s")

    def _wait_for_http(self, url: str, deadline: float) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status, body = http_get(url, timeout=max(0.5, deadline - time.monotonic()))
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:300]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise self._failed(f"{url} did not answer 200 in {START_TIMEOUT:.0f} s ({last})")

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def logs(self) -> str:
        """Every process's output so far, for a failing test's message."""
        return "\n".join(process.tail() for process in self.processes)
