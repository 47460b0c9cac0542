"""The harness itself: the queries see and affect only what a test made, and a private node
keeps a durable queue's persistent messages over a restart."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from tests.amqp.harness import (
    Binding,
    RabbitProcess,
    bindings,
    close_connections,
    connections,
    exchanges,
    queues,
    reachable,
)
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.timeout(60)


def connect(url: str, name: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": name}
    params.socket_timeout = params.stack_timeout = 5.0
    return pika.BlockingConnection(params)


def close_quietly(conn: pika.BlockingConnection) -> None:
    with contextlib.suppress(pika.exceptions.AMQPError):
        conn.close()


@pytest.fixture
def connection(shared_amqp: str, prefix: str) -> Iterator[pika.BlockingConnection]:
    conn = connect(shared_amqp, prefix)
    try:
        yield conn
    finally:
        close_quietly(conn)


def test_shared_broker_answers(shared_amqp: str) -> None:
    assert reachable(shared_amqp) is None
    assert reachable("amqp://guest:guest@127.0.0.1:1/%2F", timeout=1.0) is not None


def test_queries_see_only_this_tests_objects(
    shared_amqp: str, prefix: str, connection: pika.BlockingConnection
) -> None:
    # Each query is a rabbitmqctl run (1-3 s), so the test makes few of them.
    channel = connection.channel()
    queue, exchange = f"{prefix}.q", f"{prefix}.x"
    bystander = f"x{prefix}"  # contains the prefix but does not start with it
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.queue_declare(queue)
    channel.queue_declare(bystander, auto_delete=True)
    channel.queue_bind(queue, exchange, routing_key="key")
    channel.queue_bind(bystander, exchange, routing_key="other")
    channel.confirm_delivery()  # so the messages are in the queue before we count
    for _ in range(3):
        channel.basic_publish(exchange, "key", b"hello")
    try:
        assert queues(prefix) == {queue: 3}
        assert exchanges(prefix) == {exchange: "direct"}
        # Ours to the bystander too (its source is ours), sorted; none of the default exchange.
        assert bindings(prefix) == [
            Binding(exchange, queue, "key"),
            Binding(exchange, bystander, "other"),
        ]
    finally:
        channel.queue_delete(queue)
        channel.queue_delete(bystander)
        channel.exchange_delete(exchange)
    assert queues(prefix) == {} and bindings(prefix) == []


def test_connections_are_found_and_closed_by_name(
    shared_amqp: str, prefix: str, connection: pika.BlockingConnection
) -> None:
    with contextlib.ExitStack() as cleanup:
        second = connect(shared_amqp, f"{prefix}/second")
        cleanup.callback(close_quietly, second)
        bystander = connect(shared_amqp, f"x{prefix}")  # contains the prefix, not at the start
        cleanup.callback(close_quietly, bystander)

        found = connections(prefix)
        assert sorted(c.name for c in found) == [prefix, f"{prefix}/second"]
        assert all(c.pid.startswith("<") for c in found)

        assert close_connections(prefix, "harness test") == 2
        for conn in (connection, second):
            with pytest.raises(pika.exceptions.ConnectionClosed, match="harness test"):
                conn.process_data_events(time_limit=5)
        wait_until_sync(lambda: connections(prefix) == [], "they are gone", timeout=20, poll=0.2)
        bystander.process_data_events(time_limit=0)
        assert bystander.is_open


@pytest.mark.xdist_group("amqp-faults")
@pytest.mark.timeout(180)
def test_private_node_keeps_persistent_messages_over_a_restart(
    own_rabbit: RabbitProcess, prefix: str
) -> None:
    queue = f"{prefix}.durable"
    conn = connect(own_rabbit.url, prefix)
    channel = conn.channel()
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()  # confirmed persistent messages are on disk
    channel.basic_publish(
        "", queue, b"survivor", pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    )
    assert [c.name for c in connections(prefix, node=own_rabbit.node)] == [prefix]
    close_quietly(conn)

    own_rabbit.restart()

    assert queues(prefix, node=own_rabbit.node) == {queue: 1}
    assert own_rabbit.ctl("eval", "node().").strip() == own_rabbit.node
    conn = connect(own_rabbit.url, prefix)
    try:
        _, _, body = conn.channel().basic_get(queue, auto_ack=True)
        assert body == b"survivor"
    finally:
        close_quietly(conn)
