"""Tests for the RabbitMQ layer (layers.amqp) and the harness they run on."""
