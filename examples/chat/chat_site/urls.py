from django.urls import re_path

from chat import views
from chat.consumers import ROOM

urlpatterns = [
    re_path(r"^$", views.index),
    re_path(rf"^chat/{ROOM}/$", views.room),
    re_path(r"^task/$", views.task),
    re_path(rf"^push/{ROOM}/$", views.push),
]
