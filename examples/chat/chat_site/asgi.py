"""The ASGI application: HTTP to Django's views, WebSockets to the chat consumer, and the
``chat-tasks`` channel to the worker that ``manage.py runworker chat-tasks`` runs."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_site.settings")
# Django first: the consumers' imports need the settings loaded.
django_asgi_app = get_asgi_application()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from chat.consumers import ROOM, ChatConsumer, TaskConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([re_path(rf"^ws/chat/{ROOM}/$", ChatConsumer.as_asgi())]),
        "channel": ChannelNameRouter({"chat-tasks": TaskConsumer.as_asgi()}),
    }
)
