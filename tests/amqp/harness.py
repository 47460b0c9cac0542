"""Throwaway RabbitMQ nodes on loopback ports, and what a test asks a broker.

A private node runs ``rabbitmq-server`` in the foreground as a child of the test, is
remembered by pid and stopped by that pid (and its process group), never by name; it has a
node name, ports, data, logs and config of its own, so the shared node ``rabbit@localhost``
on 5672 is never touched. Queries go through ``rabbitmqctl``: they see every vhost object
and every connection, including other tests', so each one filters on a name prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import pika
import pika.exceptions

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
RABBITMQCTL = shutil.which("rabbitmqctl") or "rabbitmqctl"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CTL_TIMEOUT = 60.0
#: The OS user a private node runs as when the tests run as root: the packaged
#: ``rabbitmqctl`` wrapper always becomes this user, so the node must share its Erlang cookie.
NODE_USER = "rabbitmq"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node binds it
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def reachable(url: str, timeout: float = 2.0) -> str | None:
    """None if an AMQP connection to ``url`` opens, else why not."""
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
    # Not just AMQPError: a handshake timeout is an AMQPConnectorStackTimeout, outside it.
    except Exception as exc:
        return str(exc).strip() or repr(exc)
    return None


def rabbit_server() -> str | None:
    """The foreground start script, not the distribution's wrapper: run as root, the wrapper
    ``su``s to the rabbitmq user and that ``su`` SIGKILLs its child two seconds after a
    SIGTERM, which would orphan a node in the middle of its shutdown."""
    found = shutil.which("rabbitmq-server")
    if found is None:
        return None
    real = Path(os.path.realpath(found))
    sibling = real.parent / "rabbitmq-server"  # the wrapper lives beside the real script
    return str(sibling if sibling.exists() else real)


def rabbitmqctl(*args: str, node: str | None = None, timeout: float = CTL_TIMEOUT) -> str:
    """``rabbitmqctl [-n node] args...``; its stdout, or RuntimeError with its stderr."""
    command = [RABBITMQCTL, *(["-n", node] if node else []), *args]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LC_ALL": "C.UTF-8"},  # the Elixir CLI warns under a non-UTF-8 locale
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result.stdout


def _json_rows(*args: str, node: str | None) -> list[dict[str, Any]]:
    out = rabbitmqctl(*args, "-q", "--formatter", "json", node=node).strip()
    rows: list[dict[str, Any]] = json.loads(out) if out else []
    return rows


def queues(prefix: str, node: str | None = None, vhost: str = "/") -> dict[str, int]:
    """Queue name -> messages ready, for the queues whose name starts with ``prefix``."""
    rows = _json_rows("list_queues", "-p", vhost, "name", "messages_ready", node=node)
    # messages_ready is blank while a queue is down (e.g. recovering); count that as 0.
    return {
        row["name"]: int(row.get("messages_ready") or 0)
        for row in rows
        if row["name"].startswith(prefix)
    }


class Binding(NamedTuple):
    source: str
    destination: str
    routing_key: str


def bindings(prefix: str, node: str | None = None, vhost: str = "/") -> list[Binding]:
    """Bindings whose source or destination starts with ``prefix``, sorted. Those of the
    default exchange are left out: every queue has one, nobody can add or remove them, and
    they would repeat :func:`queues`."""
    rows = _json_rows(
        "list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key", node=node
    )
    return sorted(
        Binding(row["source_name"], row["destination_name"], row["routing_key"])
        for row in rows
        if row["source_name"]
        and (row["source_name"].startswith(prefix) or row["destination_name"].startswith(prefix))
    )


def exchanges(prefix: str, node: str | None = None, vhost: str = "/") -> dict[str, str]:
    """Exchange name -> type, for the exchanges whose name starts with ``prefix``."""
    rows = _json_rows("list_exchanges", "-p", vhost, "name", "type", node=node)
    return {row["name"]: row["type"] for row in rows if row["name"].startswith(prefix)}


class Connection(NamedTuple):
    #: As rabbitmqctl prints it (``<rabbit@localhost.1795972690.842.0>``), for close_connection.
    pid: str
    #: The client's ``connection_name`` property ("" if it gave none).
    name: str


_CONNECTION_NAME = re.compile(r'\{"connection_name","((?:[^"\\]|\\.)*)"\}')


def _unescape(quoted: str) -> str:
    # Erlang escapes a string much as JSON does; the rare one that differs stays as printed.
    try:
        return str(json.loads(f'"{quoted}"'))
    except ValueError:
        return quoted


def connections(name_filter: str, node: str | None = None) -> list[Connection]:
    """The connections whose ``connection_name`` client property starts with
    ``name_filter`` (the layer sets it to its prefix)."""
    # Not --formatter json: it prints pids as #PID<12576.804.0>, numbered by the CLI's own
    # node, which close_connection cannot use. The table prints the real pid, then the
    # client properties as Erlang terms with tabs escaped, so splitting on a tab is safe.
    out = rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "client_properties", node=node
    )
    found = []
    for line in out.splitlines():
        pid, _, properties = line.partition("\t")
        match = _CONNECTION_NAME.search(properties)
        name = _unescape(match.group(1)) if match else ""
        if pid.startswith("<") and name.startswith(name_filter):
            found.append(Connection(pid, name))
    return found


def close_connections(
    name_filter: str, reason: str = "closed by a test", node: str | None = None
) -> int:
    """``rabbitmqctl close_connection`` on each of :func:`connections`; how many."""
    closed = 0
    for connection in connections(name_filter, node):
        try:
            rabbitmqctl("close_connection", connection.pid, reason, node=node)
        except RuntimeError:
            continue  # it went away between the listing and the close
        closed += 1
    return closed


def _run_as() -> dict[str, Any]:
    """Popen keywords for NODE_USER when we are root (and that user exists)."""
    if os.geteuid() != 0:
        return {}
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(NODE_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return {}


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (strictly, the thread
    that started the node), which the start script turns into a clean stop, so a killed
    test run leaves no node behind."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _home() -> str:
    """HOME for the node: it holds the Erlang cookie that rabbitmqctl will present."""
    user = _run_as().get("user")
    return pwd.getpwuid(user).pw_dir if user is not None else os.environ.get("HOME", "/")


class RabbitProcess:
    """One private RabbitMQ node on 127.0.0.1; ``restart()`` keeps its ports and data."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="amqptest-"))
        self.port = free_port()
        self.dist_port = free_port()
        # The port makes the name unique among nodes that run at the same time.
        self.node = f"ltest{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.workdir / "log").mkdir(parents=True, exist_ok=True)
        (self.workdir / "mnesia").mkdir(exist_ok=True)
        (self.workdir / "enabled_plugins").write_text("[].\n")  # no management: no more ports
        (self.workdir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's NODENAME
        # Disk alarms would block publishers on a full-ish /tmp; this node is throwaway.
        (self.workdir / "rabbitmq.conf").write_text("disk_free_limit.absolute = 1MB\n")
        run_as = _run_as()
        if run_as:
            for path in [self.workdir, *self.workdir.rglob("*")]:
                os.chown(path, run_as["user"], run_as["group"])

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.out"

    def _environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        work = str(self.workdir)
        return {
            **base,
            "HOME": _home(),
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            # Without this the distribution port listens on every interface.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": f"{work}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{work}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{work}/advanced.config",  # absent on purpose
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{work}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{work}/mnesia",
            "RABBITMQ_LOG_BASE": f"{work}/log",
            "RABBITMQ_PID_FILE": f"{work}/rabbit.pid",  # the VM's pid, for a human debugging
        }

    def log_tail(self) -> str:
        tails = []
        for path in [self.log_path, *sorted((self.workdir / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                tails.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(tails)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RabbitProcess:
        if self.running:
            return self
        script = rabbit_server()
        if script is None:
            raise RuntimeError("rabbitmq-server is not on PATH")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._environment(),
                start_new_session=True,  # its own process group, for _signal_group
                preexec_fn=_die_with_parent,  # after the switch of user, which would clear it
                **_run_as(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"{self.node} exited while starting:\n{self.log_tail()}")
            # A bare TCP probe first: pika logs an ERROR for each refused attempt.
            if _port_open(self.port) and reachable(self.url, timeout=1.0) is None:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.node} did not start in {START_TIMEOUT:.0f} s:\n{self.log_tail()}"
        )

    def _signal_group(self, pid: int, how: signal.Signals) -> None:
        # The Erlang VM is a child of the start script in the same process group; after the
        # script is gone only the group still reaches it. (The VM's port helpers such as
        # erl_child_setup make sessions of their own and exit when the VM does; epmd is
        # shared and is left alone.)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, how)

    def stop(self) -> None:
        """SIGTERM to the start script, which stops the node cleanly (queues are saved);
        SIGKILL to its process group if that takes longer than STOP_TIMEOUT."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # A VM the script left behind (the script was killed) still holds the node name.
        self._signal_group(proc.pid, signal.SIGKILL)
        self._wait_ports_free()

    def kill(self) -> None:
        """SIGKILL to the node and its script at once: a crash, nothing saved on the way."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self._wait_ports_free()

    def _wait_ports_free(self, timeout: float = 10.0) -> None:
        """Until the node's ports are free again, so that a restart can bind them (a start
        that still cannot fails with the node's log)."""
        deadline = time.monotonic() + timeout
        for port in (self.port, self.dist_port):
            while not _port_free(port) and time.monotonic() < deadline:
                time.sleep(0.1)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, then start on the same ports, name and data: durable queues and their
        persistent messages come back."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n <this node> args...``; its stdout."""
        return rabbitmqctl(*args, node=self.node, timeout=timeout)
