"""Each server as the tests see it beneath a layer: bytes put where the layer reads (as a
program that is not a layer of ours might put them), and what the layer stored, read back
raw. The layouts are the ones the backends' READMEs document:

- Redis: a list ``<prefix>:c:<channel>`` per channel (``<prefix>:c:<name>.<instance>!`` for
  all process-local channels of one instance), entries ``<expires_ms>:<channels>:<payload>``;
- PostgreSQL: rows of ``channel_layers_v2_messages`` (prefix, queue, channel, expires_at,
  payload), where queue is the channel, or ``<instance>!`` for a process-local one;
- RabbitMQ: a queue ``<prefix>:<channel>`` per channel and an inbox ``<prefix>:!<instance>``
  per instance, bodies ``kind (1 byte) + deadline (float64) + ...`` (layers/amqp/envelope.py).
"""

from __future__ import annotations

from typing import Any

from tests.backends import AMQP_URL, REDIS_URL


def redis_list(channel: str) -> str:
    """The list a channel's messages wait in: ``<name>.<instance>!`` for a local one."""
    return channel[: channel.index("!") + 1] if "!" in channel else channel


def postgres_queue(channel: str) -> str:
    """The queue column of a channel's rows: ``<instance>!`` for a local one."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[channel.rfind(".", 0, bang) + 1 : bang + 1]


class RedisRaw:
    def __init__(self, prefix: str, url: str = REDIS_URL) -> None:
        import redis

        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=10)

    def key(self, channel: str) -> str:
        return f"{self.prefix}:c:{redis_list(channel)}"

    def inject(self, channel: str, entries: list[bytes]) -> None:
        """Append raw entries where ``channel``'s messages wait (receivers pop the head)."""
        self.client.rpush(self.key(channel), *entries)

    def stored(self, channel: str) -> list[bytes]:
        entries: list[bytes] = self.client.lrange(self.key(channel), 0, -1)
        return entries

    def all_keys(self) -> list[str]:
        return [key.decode(errors="replace") for key in self.client.scan_iter(count=1000)]

    def close(self) -> None:
        self.client.close()


class PostgresRaw:
    def __init__(self, prefix: str, dsn: str) -> None:
        import psycopg

        self.prefix = prefix
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)

    def inject(self, channel: str, payloads: list[bytes], expires: str | None = None) -> None:
        """Rows as a layer's send would write them, with these payloads; ``expires`` a
        timestamp ('infinity', '2000-01-01'), else a minute from now."""
        for payload in payloads:
            self.conn.execute(
                "INSERT INTO channel_layers_v2_messages"
                " (prefix, queue, channel, expires_at, payload)"
                " VALUES (%s, %s, %s, coalesce(%s::timestamptz, now() + interval '60 s'), %s)",
                (self.prefix, postgres_queue(channel), channel, expires, payload),
            )

    def stored(self, channel: str) -> list[bytes]:
        rows = self.conn.execute(
            "SELECT payload FROM channel_layers_v2_messages"
            " WHERE prefix = %s AND channel = %s ORDER BY id",
            (self.prefix, channel),
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def tables(self) -> list[str]:
        """The layer's tables that the connection's search path finds."""
        names = ("channel_layers_v2_groups", "channel_layers_v2_messages")
        rows = self.conn.execute(
            "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
            (list(names),),
        ).fetchall()
        return sorted(row[0] for row in rows)

    def channels(self) -> list[str]:
        """Every channel named in the layer's rows (messages and memberships)."""
        rows = self.conn.execute(
            "SELECT channel FROM channel_layers_v2_messages WHERE prefix = %(p)s"
            " UNION SELECT channel FROM channel_layers_v2_groups WHERE prefix = %(p)s",
            {"p": self.prefix},
        ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self.conn.close()


class AmqpRaw:
    def __init__(self, prefix: str) -> None:
        import pika

        self.prefix = prefix
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def queue(self, channel: str) -> str:
        return f"{self.prefix}:{channel}"

    def inbox(self, layer: Any) -> str:
        return f"{self.prefix}:!{layer.client_prefix}"

    def inject(self, queue: str, bodies: list[bytes]) -> None:
        """Publish raw bodies to an existing queue (mandatory: an unroutable one fails)."""
        import pika

        for body in bodies:
            self.channel.basic_publish("", queue, body, pika.BasicProperties(), mandatory=True)

    def stored(self, queue: str) -> list[bytes]:
        """The bodies waiting in ``queue``, left there (taken and given back unacked)."""
        bodies = []
        tags = []
        while True:
            method, _, body = self.channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            bodies.append(body)
            tags.append(method.delivery_tag)
        if tags:
            self.channel.basic_nack(tags[-1], multiple=True, requeue=True)
        return bodies

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()
