"""Private servers for ``--restart``: a redis-server, a PostgreSQL cluster or a RabbitMQ node
that the soak starts itself on a free loopback port, restarts as its fault, and stops by
pid (and the node's process group) at the end. Shared servers are never restarted.

Each keeps its data across a restart, as a production server would: Redis writes an
append-only file synced on every write and is killed (a crash that loses nothing
acknowledged), PostgreSQL gets a fast shutdown (its UNLOGGED tables survive a clean one),
RabbitMQ a clean stop (durable queues come back). Servers refuse to run as root, so as
root they run as the ``postgres`` and ``rabbitmq`` users their packages create.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class ServerError(RuntimeError):
    """A private server could not be started (its log tail is in the message)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _as_user(name: str) -> dict[str, Any]:
    """Popen keywords to run as ``name`` when we are root (servers refuse root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ServerError(f"running as root, and there is no {name!r} user to run as") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _give(path: Path, user: str) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the soak dies, so no server outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrivateServer:
    """One server process; subclasses say how to start it and when it is ready."""

    kind = ""
    user = ""  # the OS user it runs as when we are root
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"soak-{self.kind}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        return _port_open(self.port)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "server.log").read_text(errors="replace")[-1500:]
        return ""

    def start(self) -> None:
        with open(self.workdir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.environment(),
                start_new_session=True,  # its own process group: the node's VM is a child
                preexec_fn=_die_with_parent,
                **(_as_user(self.user) if self.user else {}),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise ServerError(f"private {self.kind} server exited:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"private {self.kind} server did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class RedisServer(PrivateServer):
    kind = "redis"
    stop_signal = signal.SIGKILL  # a crash; the fsynced append-only file keeps the data

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "redis-server"
        return [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresServer(PrivateServer):
    kind = "postgres"
    user = "postgres"
    stop_signal = signal.SIGINT  # a fast shutdown

    def __init__(self) -> None:
        super().__init__()
        _give(self.workdir, self.user)
        result = subprocess.run(
            [
                str(PG_BIN / "initdb"), "-D", str(self.workdir / "data"), "-U", "postgres",
                "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C", "--no-instructions",
            ],
            capture_output=True, text=True, timeout=120, cwd="/",
            env={**os.environ, "LC_ALL": "C"}, **_as_user(self.user),
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerError(f"initdb failed ({result.returncode}): {result.stderr[-1500:]}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def command(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"), "-D", str(self.workdir / "data"), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-k", str(self.workdir),
            "-c", "fsync=off", "-c", "max_connections=100",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {**os.environ, "LC_ALL": "C"}

    def ready(self) -> bool:
        binary = PG_BIN / "pg_isready"
        if not binary.exists():
            return _port_open(self.port)
        probe = [str(binary), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        return subprocess.run(probe, check=False, timeout=10).returncode == 0


class RabbitServer(PrivateServer):
    kind = "amqp"
    user = "rabbitmq"

    def __init__(self) -> None:
        super().__init__()
        self.dist_port = free_port()
        self.node = f"soak{self.port}@localhost"  # the port makes the name unique
        work = self.workdir
        for sub in ("log", "mnesia"):
            (work / sub).mkdir()
        (work / "enabled_plugins").write_text("[].\n")  # no management plugin: no more ports
        (work / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's NODENAME
        (work / "rabbitmq.conf").write_text("disk_free_limit.absolute = 1MB\n")
        if os.geteuid() == 0 and _as_user(self.user):
            _give(work, self.user)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def command(self) -> list[str]:
        found = shutil.which("rabbitmq-server")
        if found is None:
            raise ServerError("rabbitmq-server is not on PATH")
        # The start script itself, not the distribution's wrapper, whose su would kill
        # the node two seconds into a clean stop.
        real = Path(os.path.realpath(found))
        sibling = real.parent / "rabbitmq-server"
        return [str(sibling if sibling.exists() else real)]

    def environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        work = str(self.workdir)
        uid = _as_user(self.user).get("user")
        home = pwd.getpwuid(uid).pw_dir if uid is not None else base.get("HOME", "/")
        return {
            **base,
            "HOME": home,  # the Erlang cookie rabbitmqctl presents lives there
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": f"{work}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{work}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{work}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{work}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{work}/mnesia",
            "RABBITMQ_LOG_BASE": f"{work}/log",
        }

    def ready(self) -> bool:
        if not _port_open(self.port):
            return False
        # The port opens before the broker takes logins: wait for a handshake's answer.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(8)[:1] == b"\x01"  # a frame: connection.start
        except OSError:
            return False


SERVERS: dict[str, type[PrivateServer]] = {
    "redis": RedisServer,
    "postgres": PostgresServer,
    "amqp": RabbitServer,
}
