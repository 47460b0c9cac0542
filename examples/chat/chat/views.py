"""The chat page, a view that hands work to the worker, and a view that pushes to a room."""

from __future__ import annotations

import asyncio

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from chat.consumers import TASKS, group_of

#: How long the task view waits for the worker before answering 504.
TASK_TIMEOUT = 10.0


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html")


def room(request: HttpRequest, room: str) -> HttpResponse:
    return render(request, "chat/room.html", {"room": room})


async def task(request: HttpRequest) -> JsonResponse:
    """``/task/?text=abc``: the worker reverses the text; its answer comes back as JSON.

    The reply comes on a channel of this process's own (``new_channel``), the way a
    consumer gets answers from a worker."""
    layer = get_channel_layer()
    reply_to = await layer.new_channel("task-reply")
    text = request.GET.get("text", "")
    await layer.send(TASKS, {"type": "task.reverse", "text": text, "reply_to": reply_to})
    try:
        answer = await asyncio.wait_for(layer.receive(reply_to), TASK_TIMEOUT)
    except TimeoutError:
        error = f"no worker answered on {TASKS!r} within {TASK_TIMEOUT:.0f} s"
        return JsonResponse({"error": error}, status=504)
    return JsonResponse({"text": text, "result": answer["result"], "worker": answer["worker"]})


@csrf_exempt
def push(request: HttpRequest, room: str) -> JsonResponse:
    """``/push/<room>/?text=...`` (GET or POST): says ``text`` in the room from plain sync
    code, as a management command or a signal handler would."""
    text = request.POST.get("text") or request.GET.get("text")
    if not text:
        return JsonResponse({"error": "give the message as ?text=..."}, status=400)
    async_to_sync(get_channel_layer().group_send)(
        group_of(room), {"type": "chat.message", "text": text, "sender": "push"}
    )
    return JsonResponse({"room": room, "text": text})
