"""Fixtures for the RabbitMQ layer's tests.

- ``shared_amqp``: the URL of the shared node on 127.0.0.1:5672 (vhost ``/``, guest), for
  tests that neither stop nor break their broker.
- ``prefix``: a layer prefix of the test's own, which is also the ``connection_name`` the
  layer gives its connections, so ``queues(prefix)``, ``connections(prefix)`` and
  ``close_connections(prefix)`` see exactly the test's own objects while other tests use
  the same broker.
- ``own_rabbit``: a private node on free loopback ports, for tests that restart, stop, kill
  or break their broker (about 10 s to start: mark such tests
  ``xdist_group("amqp-faults")`` and give them a timeout).

Without a reachable shared node, or without ``rabbitmq-server`` for a private one, these
tests skip with the reason, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import in_ci

pytest.importorskip("pika", reason="the [amqp] extra is not installed")

from tests.amqp.harness import SHARED_URL, RabbitProcess, rabbit_server, reachable


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_amqp() -> str:
    """The shared node's URL, for tests that do not stop or break their broker."""
    reason = reachable(SHARED_URL)
    if reason is not None:
        _unavailable(f"no RabbitMQ broker usable at {SHARED_URL} ({reason})")
    return SHARED_URL


@pytest.fixture
def prefix() -> str:
    """A layer prefix (and connection_name) of this test's own."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def own_rabbit() -> Iterator[RabbitProcess]:
    """A private, empty node that the test may restart, stop, kill or break; stopped (by
    pid) and its files removed afterwards."""
    if rabbit_server() is None:
        _unavailable("rabbitmq-server is not on PATH")
    node = RabbitProcess()
    try:
        node.start()
    except (OSError, RuntimeError) as exc:
        node.remove()
        _unavailable(f"cannot start a private RabbitMQ node: {exc}")
    except BaseException:
        node.remove()
        raise
    try:
        yield node
    finally:
        node.remove()
