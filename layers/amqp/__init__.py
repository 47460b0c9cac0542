"""The RabbitMQ channel layer (issue #9, in progress): pika, on the shared receive runtime."""
