from channels.routing import URLRouter
from django.urls import path

from tests.chat.consumers import ChatConsumer

application = URLRouter([path("ws/chat/<str:room>/", ChatConsumer.as_asgi())])
