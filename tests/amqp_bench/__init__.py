"""Layers the bench measures beside ours on RabbitMQ: a bare pika yardstick and
channels_rabbitmq made runnable by the bench."""
