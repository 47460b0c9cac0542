"""The sync path: ``async_to_sync(layer.group_send)`` and ``async_to_sync(layer.send)`` from a
Django view and from a plain script, on every backend.

A Django view under WSGI, a Celery task or a management command reaches the layer this
way: every call in a new event loop on a new thread, closed when the call returns. Each
message must arrive once, and nothing may leak: the server's count of the layer's
connections (Redis ``CLIENT LIST`` by client name, PostgreSQL ``pg_stat_activity`` by
``application_name``, RabbitMQ connections by ``connection_name``) stays where the first
call left it through 200 calls in turn and through 8 threads calling at once, and goes back
to none after ``close()`` (or the script's exit). The calls run in the layer's home loop
(layers/runtime/home.py), whose connections serve them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from tests.backends import NAMES, NETWORKED, Backend, backend
from tests.collector import Collector

pytestmark = pytest.mark.timeout(180)

GROUP = "room"
SEQUENTIAL = 200
THREADS = 8
PER_THREAD = 10
SETTLE = 10.0


@pytest.fixture(params=NAMES)
def each(request: pytest.FixtureRequest) -> Backend:
    return backend(request.param)


@pytest.fixture(params=NETWORKED)
def networked(request: pytest.FixtureRequest) -> Backend:
    return backend(request.param)


def settled(count: Callable[[], int], expected: Callable[[int], bool]) -> int:
    """The count once ``expected(count)`` holds, or at the deadline (servers see a closed
    connection a moment after the client closed it)."""
    deadline = time.monotonic() + SETTLE
    while True:
        value = count()
        if expected(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def message(via: str, n: int) -> dict[str, Any]:
    return {"type": "m", "via": via, "n": n}


def check_arrived(got: list[dict[str, Any]], sent: list[dict[str, Any]], ordered: bool) -> None:
    missing = [m for m in sent if m not in got]
    assert not missing, f"{len(missing)} of {len(sent)} never arrived, first {missing[:3]}"
    assert len(got) == len(sent), f"{len(got) - len(sent)} arrived twice or were not sent"
    if ordered:
        for via in ("group_send", "send"):
            mine = [m for m in got if m["via"] == via]
            assert mine == [m for m in sent if m["via"] == via], f"{via} out of order"


def push(layer: Any, channel: str, n: int, via: str = "") -> list[dict[str, Any]]:
    """One sync group_send and one sync send, as a view or script makes them."""
    sent = [message("group_send", n), message("send", n)]
    if via:
        sent = [{**m, "from": via} for m in sent]
    async_to_sync(layer.group_send)(GROUP, sent[0])
    async_to_sync(layer.send)(channel, sent[1])
    return sent


# -- from plain sync code ------------------------------------------------------------------


def test_sequential_and_threaded_calls_keep_one_set_of_connections(each: Backend) -> None:
    sender = each.make("sender", capacity=1000)
    receiver = each.make("receiver", capacity=1000) if each.networked else sender
    collector = Collector(receiver, GROUP)
    counts: dict[str, int] = {}

    def count() -> int:
        return each.count(sender, "sender")

    try:
        if each.networked:
            counts["before"] = count()
        sent = push(sender, collector.channel, -1)
        check_arrived(collector.take(2), sent, ordered=True)
        if each.networked:
            counts["after the first call"] = first = count()
            assert 1 <= first <= each.kept_at_most, counts

        sent = [m for n in range(SEQUENTIAL) for m in push(sender, collector.channel, n)]
        check_arrived(collector.take(len(sent)), sent, ordered=True)
        if each.networked:
            counts[f"after {SEQUENTIAL} calls"] = settled(count, lambda c: c == first)
            assert counts[f"after {SEQUENTIAL} calls"] == first, counts

        def calls(thread: int) -> list[dict[str, Any]]:
            return [
                m
                for n in range(PER_THREAD)
                for m in push(sender, collector.channel, n, via=f"thread{thread}")
            ]

        results: dict[int, list[dict[str, Any]]] = {}
        workers = [
            threading.Thread(target=lambda t=t: results.__setitem__(t, calls(t)), daemon=True)
            for t in range(THREADS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert len(results) == THREADS, "a thread's calls failed or hung"
        sent = [m for t in range(THREADS) for m in results[t]]
        check_arrived(collector.take(len(sent)), sent, ordered=False)
        if each.networked:
            bound = each.kept_at_most
            counts[f"after {THREADS} threads"] = after = settled(count, lambda c: c <= bound)
            assert first <= after <= bound, counts
            # A burst leaves at most a pool's idle connections; more calls add none.
            sent = [m for n in range(50) for m in push(sender, collector.channel, n)]
            check_arrived(collector.take(len(sent)), sent, ordered=True)
            counts["after 50 more calls"] = settled(count, lambda c: c <= after)
            assert counts["after 50 more calls"] <= after, counts

        async_to_sync(sender.close)()
        if each.networked:
            counts["after close()"] = settled(count, lambda c: c == 0)
            assert counts["after close()"] == 0, counts
        # Closed, it reopens on the next call.
        sent = push(sender, collector.channel, -2)
        check_arrived(collector.take(2), sent, ordered=True)
        print(f"\n{each.name} connections of the sending instance: {counts}")
    finally:
        collector.close()
        if receiver is not sender:
            async_to_sync(sender.close)()


def test_a_call_cancelled_in_its_loop_neither_hangs_nor_breaks_the_next(each: Backend) -> None:
    """A sync caller giving up (a timeout inside its async_to_sync) ends at once; the
    layer serves the next calls as before."""

    layer = each.make("sender")
    collector = Collector(each.make("receiver") if each.networked else layer, GROUP)
    try:

        async def give_up() -> None:
            task = asyncio.ensure_future(layer.group_send(GROUP, message("group_send", 0)))
            await asyncio.sleep(0)
            task.cancel()
            # The memory layer's group_send never waits, so it may be done already.
            with contextlib.suppress(asyncio.CancelledError):
                await task

        for _ in range(5):
            async_to_sync(give_up)()
        collector.take(5, timeout=1)  # cancelled sends may or may not have gone out
        sent = [m for n in range(1, 20) for m in push(layer, collector.channel, n)]
        check_arrived(collector.take(len(sent)), sent, ordered=True)
    finally:
        collector.close(close_layer=each.networked)
        async_to_sync(layer.close)()


def test_calls_go_on_after_the_server_dropped_the_connections(networked: Backend) -> None:
    """The connections kept between calls may be gone by the next one (a server restart,
    an idle timeout, a proxy): the next call makes new ones, and nothing is lost."""
    sender = networked.make("sender")
    collector = Collector(networked.make("receiver"), GROUP)
    try:
        for round_ in range(3):
            sent = [m for n in range(5) for m in push(sender, collector.channel, 10 * round_ + n)]
            check_arrived(collector.take(len(sent)), sent, ordered=True)
            assert networked.cut(sender, "sender") >= 1
            settled(lambda: networked.count(sender, "sender"), lambda c: c == 0)
        sent = [m for n in range(5) for m in push(sender, collector.channel, 100 + n)]
        check_arrived(collector.take(len(sent)), sent, ordered=True)
    finally:
        collector.close()
        async_to_sync(sender.close)()


# -- from a plain script -------------------------------------------------------------------

SCRIPT = """
import importlib, json, sys
from asgiref.sync import async_to_sync

path, config, group, channel, count = json.loads(sys.argv[1])
module, _, name = path.rpartition(".")
layer = getattr(importlib.import_module(module), name)(**config)
print(layer.client_prefix, flush=True)
for n in range(count):
    async_to_sync(layer.group_send)(group, {"type": "m", "via": "group_send", "n": n})
    async_to_sync(layer.send)(channel, {"type": "m", "via": "send", "n": n})
sys.stdin.readline()  # hold the connections open until the test has counted them
# No close(): a script just ends.
"""


def test_a_plain_script_delivers_and_leaves_nothing_behind(
    networked: Backend, tmp_path: Path
) -> None:
    script = tmp_path / "push.py"
    script.write_text(SCRIPT)
    receiver = networked.make("receiver")
    collector = Collector(receiver, GROUP)
    count = SEQUENTIAL
    try:
        argument = json.dumps(
            [networked.path, networked.config("script"), GROUP, collector.channel, count]
        )
        with subprocess.Popen(
            [sys.executable, str(script), argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None and process.stdin is not None
            client_prefix = process.stdout.readline().strip()
            sent = [m for n in range(count) for m in (message("group_send", n), message("send", n))]
            check_arrived(collector.take(len(sent)), sent, ordered=True)
            while_running = networked.connections("script", client_prefix)
            assert 1 <= while_running <= networked.kept_at_most
            _, errors = process.communicate("\n", timeout=30)
            assert process.returncode == 0, errors
        after = settled(lambda: networked.connections("script", client_prefix), lambda c: c == 0)
        print(f"\n{networked.name}: script's connections {while_running} -> {after} after exit")
        assert after == 0
        assert "Traceback" not in errors, errors
    finally:
        collector.close()


# -- from a Django view --------------------------------------------------------------------


def push_view(request: HttpRequest) -> HttpResponse:
    layer = get_channel_layer()
    n = int(request.GET["n"])
    async_to_sync(layer.group_send)(GROUP, message("group_send", n))
    async_to_sync(layer.send)(request.GET["channel"], message("send", n))
    return HttpResponse("pushed")


urlpatterns = [path("push/", push_view)]


@pytest.fixture
def site(each: Backend) -> Iterator[Backend]:
    layers = {"default": each.settings("view", capacity=1000)}
    with override_settings(CHANNEL_LAYERS=layers, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"]):
        try:
            yield each
        finally:
            async_to_sync(channel_layers["default"].close)()


def test_a_django_view_pushes_on_every_request(site: Backend) -> None:
    layer = get_channel_layer()
    receiver = site.make("receiver", capacity=1000) if site.networked else layer
    collector = Collector(receiver, GROUP)

    def get(client: Client, n: int) -> None:
        response = client.get("/push/", {"n": n, "channel": collector.channel})
        assert response.status_code == 200, response.content

    try:
        client = Client()
        get(client, 0)
        first = site.count(layer, "view") if site.networked else 0
        for n in range(1, 100):
            get(client, n)
        sent = [m for n in range(100) for m in (message("group_send", n), message("send", n))]
        check_arrived(collector.take(len(sent)), sent, ordered=True)

        def requests(thread: int) -> None:
            own = Client()
            for n in range(PER_THREAD):
                get(own, 1000 * (thread + 1) + n)

        workers = [
            threading.Thread(target=requests, args=(t,), daemon=True) for t in range(THREADS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        sent = [
            m
            for t in range(THREADS)
            for n in range(PER_THREAD)
            for m in (
                message("group_send", 1000 * (t + 1) + n),
                message("send", 1000 * (t + 1) + n),
            )
        ]
        check_arrived(collector.take(len(sent)), sent, ordered=False)
        if site.networked:
            bound = site.kept_at_most
            after = settled(lambda: site.count(layer, "view"), lambda c: c <= bound)
            print(f"\n{site.name}: the view's layer connections {first} -> {after}")
            assert 1 <= first <= after <= bound
    finally:
        collector.close(close_layer=site.networked)
