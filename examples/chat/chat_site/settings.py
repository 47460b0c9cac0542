"""Settings of the chat example. The channel layer is the one thing that changes between
deployments, so it is picked by one environment variable, CHAT_LAYER:

- ``memory`` (default): in-process; one server process, no worker in another process;
- ``redis``: CHAT_REDIS_URL (default redis://127.0.0.1:6379/0);
- ``postgres``: CHAT_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/test);
- ``amqp``: CHAT_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2F).

CHAT_LAYER_PREFIX (default ``chat``) is the layer's ``prefix``: sites sharing a server
with different prefixes do not see each other. The layer's server connections carry it as
their name (Redis CLIENT LIST, PostgreSQL application_name, RabbitMQ connection name), so
an operator can tell them apart. CHAT_LAYER_OPTIONS may add layer options as a JSON object,
e.g. ``{"retry_timeout": 30}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

SECRET_KEY = os.environ.get("CHAT_SECRET_KEY", "chat-example-not-secret")
DEBUG = os.environ.get("CHAT_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "daphne",  # first, so that `manage.py runserver` serves ASGI (WebSockets too)
    "channels",
    "chat",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "chat_site.urls"
ASGI_APPLICATION = "chat_site.asgi.application"
TEMPLATES = [
    {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True},
]
# The chat keeps nothing in a database.
DATABASES: dict[str, Any] = {}
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    # Daphne says where it listens (the port, when started with -p 0) and the worker what
    # it listens to.
    "loggers": {"daphne.server": {"level": "INFO"}, "django.channels": {"level": "INFO"}},
}


def channel_layer(kind: str) -> dict[str, Any]:
    prefix = os.environ.get("CHAT_LAYER_PREFIX", "chat")
    config: dict[str, Any] = {"prefix": prefix}
    if kind == "memory":
        backend = "layers.memory.InMemoryChannelLayer"
    elif kind == "redis":
        backend = "layers.redis.RedisChannelLayer"
        url = os.environ.get("CHAT_REDIS_URL", "redis://127.0.0.1:6379/0")
        config["hosts"] = [{"address": url, "client_name": prefix}]
    elif kind == "postgres":
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        backend = "layers.postgres.PostgresChannelLayer"
        dsn = os.environ.get("CHAT_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
        if "application_name" not in conninfo_to_dict(dsn):
            dsn = make_conninfo(dsn, application_name=prefix)
        config["dsn"] = dsn
    elif kind == "amqp":
        backend = "layers.amqp.AmqpChannelLayer"
        config["url"] = os.environ.get("CHAT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    else:
        raise ValueError(f"CHAT_LAYER must be memory, redis, postgres or amqp, not {kind!r}")
    config.update(json.loads(os.environ.get("CHAT_LAYER_OPTIONS") or "{}"))
    return {"BACKEND": backend, "CONFIG": config}


CHANNEL_LAYERS = {"default": channel_layer(os.environ.get("CHAT_LAYER", "memory"))}
