"""Every network backend over TLS, against private servers given a throwaway CA.

- Redis over ``rediss://``: a redis-server with only a TLS port (``--port 0``).
- RabbitMQ over ``amqps://``: a private node with a TLS listener, the layer given the CA
  through its ``ssl_options``.
- PostgreSQL with ``sslmode=require`` and ``verify-full``: a private cluster with
  ``ssl=on`` whose ``pg_hba.conf`` admits TCP clients over TLS only.

A part of the conformance suite runs over each; the negative tests check that a client
without the CA, with another CA or without TLS fails within ``retry_timeout`` with
:class:`~layers.errors.BackendUnavailable` naming the server, never hangs. One server per
backend for the whole module (a RabbitMQ node takes ~10 s to start). Without a server
binary, TLS support in it, or the extra a backend needs, its tests skip with the reason,
except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import ssl
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance import LayerSpec
from conformance.suite.base import SuiteBase
from conformance.suite.concurrency import ConcurrentReceiveChecks
from conformance.suite.groups import GroupChecks
from conformance.suite.lifecycle import LifecycleChecks
from conformance.suite.loops import EventLoopChecks
from conformance.suite.send_receive import NewChannelChecks, SendReceiveChecks
from layers.errors import BackendUnavailable, ConfigurationError
from tests.conftest import in_ci

pytestmark = [pytest.mark.xdist_group("tls"), pytest.mark.timeout(120)]

#: What a failing connection may take, at most: retry_timeout (1 s here) plus one connect
#: attempt's timeout, and slack for a loaded machine.
FAIL_WITHIN = 10.0


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _unavailable(f"{module} cannot be imported (the [{extra}] extra?): {exc}")


class TlsChecks(
    SendReceiveChecks,
    NewChannelChecks,
    ConcurrentReceiveChecks,
    GroupChecks,
    LifecycleChecks,
    EventLoopChecks,
    SuiteBase,
):
    """The conformance suite's rows that exercise connections: sends and receives, local
    channels, concurrent and cancelled receives, groups, close and reopen, event loops.
    (Capacity, expiry and bad input do not depend on the transport.)"""


async def _fails_clearly(layer: Any, address: str, *reasons: str) -> BackendUnavailable:
    """``layer.send`` raises BackendUnavailable naming ``address`` and one of ``reasons``
    (case-insensitive) within FAIL_WITHIN seconds."""
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await asyncio.wait_for(layer.send("tls-check", {"type": "m"}), 3 * FAIL_WITHIN)
    finally:
        await layer.close()
    elapsed = time.monotonic() - started
    text = str(caught.value)
    assert address in text, text
    assert any(reason.lower() in text.lower() for reason in reasons), text
    assert elapsed < FAIL_WITHIN, f"took {elapsed:.1f} s to fail: {text}"
    return caught.value


async def _round_trip(layer: Any) -> None:
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "tls.hello", "n": 1})
        received = await asyncio.wait_for(layer.receive(channel), 10)
        assert received == {"type": "tls.hello", "n": 1}
    finally:
        await layer.flush()
        await layer.close()


def _prefix() -> str:
    return "tls" + uuid.uuid4().hex[:10]


# -- the CA --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_dir() -> Iterator[Path]:
    """Under the system temp dir, not pytest's: servers running as another user (the
    ``postgres`` and ``rabbitmq`` users when the tests run as root) cannot enter root's
    0700 directories. Each server gets copies it owns."""
    directory = Path(tempfile.mkdtemp(prefix="tlstest-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(tls_dir: Path) -> Any:
    tls_certs = _need("tests.tls_certs", "crypto")
    return tls_certs.make_certificates(tls_dir / "ca")


@pytest.fixture(scope="module")
def other_ca(tls_dir: Path) -> Path:
    """The certificate of another CA, which did not sign the servers' certificates."""
    tls_certs = _need("tests.tls_certs", "crypto")
    return Path(tls_certs.make_certificates(tls_dir / "other-ca").ca)


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_redis(certs: Any, tls_dir: Path) -> Iterator[int]:
    """A redis-server listening on a TLS port only; its port."""
    _need("redis", "redis")
    from tests.redis.harness import REDIS_SERVER, RedisProcess, free_port

    if not os.path.exists(REDIS_SERVER):
        _unavailable(f"redis-server not found (looked for {REDIS_SERVER})")
    port = free_port()
    server = RedisProcess(
        tls_dir / "redis",
        extra=[
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs.cert),
            "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    try:
        server.start()
    except RuntimeError as exc:
        # Debian's and most builds have TLS; one built without it refuses --tls-port.
        _unavailable(f"redis-server would not start with TLS (built without it?): {exc}")
    try:
        yield port
    finally:
        server.stop()


def _redis_layer(**config: Any) -> Any:
    return _need("layers.redis", "redis").RedisChannelLayer(prefix=_prefix(), **config)


class TestRedisOverTls(TlsChecks):
    @pytest.fixture
    def layer_spec(self, tls_redis: int, certs: Any) -> LayerSpec:
        url = f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={certs.ca}"
        return LayerSpec(_need("layers.redis", "redis").RedisChannelLayer, {"hosts": [url]})


@pytest.mark.parametrize("form", ["url", "address", "kwargs", "localhost"])
async def test_redis_hosts_forms_over_tls(tls_redis: int, certs: Any, form: str) -> None:
    """Each way docs/reliability.md shows of giving the CA (the hostname is checked too,
    against the certificate's names)."""
    hosts = {
        "url": f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={certs.ca}",
        "address": {"address": f"rediss://127.0.0.1:{tls_redis}/0", "ssl_ca_certs": str(certs.ca)},
        "kwargs": {
            "host": "127.0.0.1",
            "port": tls_redis,
            "ssl": True,
            "ssl_ca_certs": str(certs.ca),
        },
        "localhost": {
            "address": f"rediss://localhost:{tls_redis}/0",
            "ssl_ca_certs": str(certs.ca),
            "ssl_check_hostname": True,
        },
    }[form]
    await _round_trip(_redis_layer(hosts=[hosts]))


async def test_redis_without_the_ca_fails_clearly(tls_redis: int) -> None:
    layer = _redis_layer(hosts=[f"rediss://127.0.0.1:{tls_redis}/0"], retry_timeout=1.0)
    await _fails_clearly(layer, f"127.0.0.1:{tls_redis}", "certificate verify failed")


async def test_redis_with_another_ca_fails_clearly(tls_redis: int, other_ca: Path) -> None:
    url = f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={other_ca}"
    layer = _redis_layer(hosts=[url], retry_timeout=1.0)
    await _fails_clearly(layer, f"127.0.0.1:{tls_redis}", "certificate verify failed")


async def test_redis_without_tls_fails_clearly(tls_redis: int) -> None:
    layer = _redis_layer(
        hosts=[f"redis://127.0.0.1:{tls_redis}/0"], retry_timeout=1.0, socket_timeout=2.0
    )
    # The server drops a client that speaks RESP to its TLS port.
    await _fails_clearly(
        layer, f"127.0.0.1:{tls_redis}", "reset by peer", "closed", "timeout", "timed out"
    )


# -- RabbitMQ ------------------------------------------------------------------------------


def _tls_rabbit_class() -> Any:
    from tests.amqp.harness import RabbitProcess, _port_open, free_port

    class TlsRabbit(RabbitProcess):
        """A private node with a TLS listener on ``tls_port`` beside its plain one (which
        the harness uses to see that it is up). The broker asks for no client
        certificate."""

        def __init__(self, certs: Any) -> None:
            workdir = Path(tempfile.mkdtemp(prefix="amqptest-tls-"))
            # Copied before the harness gives the whole directory to the node's user.
            own = certs.copy_to(workdir / "tls")
            super().__init__(workdir)
            self.tls_port = free_port()
            with open(workdir / "rabbitmq.conf", "a") as conf:
                conf.write(
                    f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                    f"ssl_options.cacertfile = {own.ca}\n"
                    f"ssl_options.certfile = {own.cert}\n"
                    f"ssl_options.keyfile = {own.key}\n"
                    "ssl_options.verify = verify_none\n"
                    "ssl_options.fail_if_no_peer_cert = false\n"
                )

        @property
        def tls_url(self) -> str:
            return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/%2F"

        def start(self) -> TlsRabbit:
            super().start()
            deadline = time.monotonic() + 20
            while not _port_open(self.tls_port):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.node} has no TLS listener on {self.tls_port}:\n{self.log_tail()}"
                    )
                time.sleep(0.1)
            return self

    return TlsRabbit


@pytest.fixture(scope="module")
def tls_rabbit(certs: Any) -> Iterator[Any]:
    _need("pika", "amqp")
    from tests.amqp.harness import rabbit_server

    if rabbit_server() is None:
        _unavailable("rabbitmq-server is not on PATH")
    node = _tls_rabbit_class()(certs)
    try:
        node.start()
    except (OSError, RuntimeError) as exc:
        node.remove()
        _unavailable(f"cannot start a private RabbitMQ node with TLS: {exc}")
    except BaseException:
        node.remove()
        raise
    try:
        yield node
    finally:
        node.remove()


def _amqp_layer(**config: Any) -> Any:
    return _need("layers.amqp", "amqp").AmqpChannelLayer(prefix=_prefix(), **config)


class TestAmqpOverTls(TlsChecks):
    @pytest.fixture
    def layer_spec(self, tls_rabbit: Any, certs: Any) -> LayerSpec:
        return LayerSpec(
            _need("layers.amqp", "amqp").AmqpChannelLayer,
            {"url": tls_rabbit.tls_url, "ssl_options": {"ca_certs": str(certs.ca)}},
        )


async def test_amqp_ssl_options_forms(tls_rabbit: Any, certs: Any) -> None:
    """An SSLContext works as well as the dict; so does a server_hostname the certificate
    carries other than the url's host."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    await _round_trip(_amqp_layer(url=tls_rabbit.tls_url, ssl_options=context))
    options = {"ca_certs": str(certs.ca), "server_hostname": "localhost"}
    await _round_trip(_amqp_layer(url=tls_rabbit.tls_url, ssl_options=options))


async def test_amqp_without_the_ca_fails_clearly(tls_rabbit: Any) -> None:
    layer = _amqp_layer(url=tls_rabbit.tls_url, retry_timeout=1.0, connect_timeout=2.0)
    await _fails_clearly(layer, f"127.0.0.1:{tls_rabbit.tls_port}", "certificate verify failed")


async def test_amqp_with_another_ca_fails_clearly(tls_rabbit: Any, other_ca: Path) -> None:
    layer = _amqp_layer(
        url=tls_rabbit.tls_url,
        ssl_options={"ca_certs": str(other_ca)},
        retry_timeout=1.0,
        connect_timeout=2.0,
    )
    await _fails_clearly(layer, f"127.0.0.1:{tls_rabbit.tls_port}", "certificate verify failed")


async def test_amqp_wrong_server_hostname_fails_clearly(tls_rabbit: Any, certs: Any) -> None:
    options = {"ca_certs": str(certs.ca), "server_hostname": "broker.example"}
    layer = _amqp_layer(
        url=tls_rabbit.tls_url, ssl_options=options, retry_timeout=1.0, connect_timeout=2.0
    )
    await _fails_clearly(
        layer, f"127.0.0.1:{tls_rabbit.tls_port}", "hostname mismatch", "doesn't match"
    )


async def test_amqp_without_tls_fails_clearly(tls_rabbit: Any) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{tls_rabbit.tls_port}/%2F"
    layer = _amqp_layer(url=url, retry_timeout=1.0, connect_timeout=2.0)
    # The broker drops a client that speaks AMQP to its TLS port.
    await _fails_clearly(
        layer, f"127.0.0.1:{tls_rabbit.tls_port}", "reset by peer", "connection lost", "closed"
    )


async def test_amqp_connect_failure_names_its_cause() -> None:
    """pika reports a failed connection attempt as an AMQPConnectionWorkflowFailed whose
    str() is empty; the layer's error carries what was under it."""
    from tests.amqp.harness import free_port

    port = free_port()
    layer = _amqp_layer(
        url=f"amqps://guest:guest@127.0.0.1:{port}/%2F", retry_timeout=0.5, connect_timeout=1.0
    )
    error = await _fails_clearly(layer, f"127.0.0.1:{port}", "connection refused")
    assert "AMQPConnectionWorkflowFailed" not in str(error)


def test_amqp_ssl_options_are_checked(certs: Any, tmp_path: Path) -> None:
    amqp = _need("layers.amqp", "amqp")
    tls_url = "amqps://guest:guest@127.0.0.1:5671/%2F"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"url": "amqp://guest:guest@127.0.0.1/%2F", "ssl_options": {}}, "is not amqps://"),
        ({"url": tls_url, "ssl_options": {"cafile": "x"}}, "unknown keys ['cafile']"),
        ({"url": tls_url, "ssl_options": {"ca_certs": 3}}, "ssl_options['ca_certs']"),
        ({"url": tls_url, "ssl_options": {"keyfile": str(certs.key)}}, "no certfile"),
        ({"url": tls_url, "ssl_options": "ca.pem"}, "must be a dict"),
        ({"url": tls_url, "ssl_options": {"ca_certs": str(tmp_path / "no.pem")}}, "no.pem"),
    ]
    for config, needle in bad:
        with pytest.raises(ConfigurationError) as caught:
            amqp.AmqpChannelLayer(**config)
        assert needle in str(caught.value), (config, str(caught.value))
    # A client certificate loads (the test server's own pair stands in for one).
    options = {"ca_certs": str(certs.ca), "certfile": str(certs.cert), "keyfile": str(certs.key)}
    layer = amqp.AmqpChannelLayer(url=tls_url, ssl_options=options)
    assert layer.parameters.ssl_options is not None


# -- PostgreSQL ----------------------------------------------------------------------------

#: TCP clients on loopback over TLS only; the unix socket stays open for the harness.
PG_HBA = """\
local all all trust
hostssl all all 127.0.0.1/32 trust
hostnossl all all 127.0.0.1/32 reject
"""


@pytest.fixture(scope="module")
def tls_postgres(certs: Any) -> Iterator[Any]:
    _need("psycopg", "postgres")
    from tests.postgres.harness import INITDB, POSTGRES, PostgresProcess, make_workdir

    for binary in (INITDB, POSTGRES):
        if not os.path.exists(binary):
            _unavailable(f"PostgreSQL binary not found: {binary} (set PG_BIN)")

    class TlsPostgres(PostgresProcess):
        def _command(self) -> list[str]:
            tls = self.workdir / "tls"
            return [
                *super()._command(),
                "-c", "ssl=on", "-c", f"ssl_cert_file={tls / certs.cert.name}",
                "-c", f"ssl_key_file={tls / certs.key.name}",
                "-c", f"hba_file={self.workdir / 'pg_hba.conf'}",
            ]  # fmt: skip

    workdir = make_workdir("tls")
    # The key must belong to the user the server runs as, and be 0600; the harness gives
    # the whole work directory to that user when the tests run as root.
    certs.copy_to(workdir / "tls")
    (workdir / "pg_hba.conf").write_text(PG_HBA)
    try:
        server = TlsPostgres(workdir)
        server.start()
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        _unavailable(f"cannot start a private PostgreSQL cluster with TLS: {exc}")
    try:
        yield server
    finally:
        server.remove()


def _postgres_layer(dsn: str, **config: Any) -> Any:
    return _need("layers.postgres", "postgres").PostgresChannelLayer(
        dsn=dsn, prefix=_prefix(), **config
    )


class TestPostgresOverTls(TlsChecks):
    @pytest.fixture
    def layer_spec(self, tls_postgres: Any) -> LayerSpec:
        return LayerSpec(
            _need("layers.postgres", "postgres").PostgresChannelLayer,
            {"dsn": tls_postgres.dsn(sslmode="require")},
        )


async def test_postgres_verify_full(tls_postgres: Any, certs: Any) -> None:
    """verify-full with the CA: the chain and the host name are checked (as a URL, and
    as conninfo for both names the certificate carries)."""
    dsns = [tls_postgres.dsn(sslmode="verify-full", sslrootcert=str(certs.ca))]
    for host in ("127.0.0.1", "localhost"):
        dsns.append(
            f"host={host} port={tls_postgres.port} dbname=postgres user=postgres"
            f" sslmode=verify-full sslrootcert={certs.ca}"
        )
    for dsn in dsns:
        await _round_trip(_postgres_layer(dsn))


async def test_postgres_connections_use_tls(tls_postgres: Any) -> None:
    from tests.postgres.harness import query

    name = _prefix()
    layer = _postgres_layer(tls_postgres.dsn(sslmode="require", application_name=name))
    try:
        await layer.send("tls-check", {"type": "m"})
        rows = await asyncio.to_thread(
            query,
            tls_postgres.dsn(sslmode="require"),
            "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = %s",
            (name,),
        )
    finally:
        await layer.flush()
        await layer.close()
    assert rows, "the layer's connection is not in pg_stat_activity"
    assert all(ssl_on for ssl_on, _ in rows), rows


async def test_postgres_without_tls_is_refused_clearly(tls_postgres: Any) -> None:
    layer = _postgres_layer(tls_postgres.dsn(sslmode="disable"), retry_timeout=1.0)
    await _fails_clearly(layer, f"127.0.0.1:{tls_postgres.port}", "no encryption")


async def test_postgres_with_another_ca_fails_clearly(tls_postgres: Any, other_ca: Path) -> None:
    dsn = tls_postgres.dsn(sslmode="verify-full", sslrootcert=str(other_ca))
    layer = _postgres_layer(dsn, retry_timeout=1.0)
    await _fails_clearly(layer, f"127.0.0.1:{tls_postgres.port}", "certificate verify failed")
