"""The RabbitMQ channel layer: pika, on the shared receive runtime (layers/amqp/README.md)."""

from layers.amqp.layer import AmqpChannelLayer

__all__ = ["AmqpChannelLayer"]
