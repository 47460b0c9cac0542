"""The example chat site (examples/chat) as a user deploys it: two Daphne processes and a
``runworker`` process sharing one networked layer, real WebSocket clients on both servers.

Per backend (redis, postgres, amqp), on the shared server: a room's messages reach every
member on both servers exactly once; a member who left hears nothing more; the task view
gets its answer from the worker; the sync push view reaches the room; the layer's server
connections cut mid-chat are recovered from. On a private server of the test's own: the
server restarted mid-chat is recovered from. Recovery times are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.servers import (
    BACKENDS,
    ENV_KEYS,
    connection_count,
    flush,
    kill_connections,
    members,
    private_server,
    shared_server,
)
from tests.e2e.site import Site, http_get
from tests.waiting import wait_until

#: Quiet time after the last expected message in which a duplicate would show.
QUIET = 0.5
#: Longest the chat may take to come back once the fault is over (generous: CI is slower).
RECOVERY_LIMIT = 10.0


class Client:
    """One browser tab's WebSocket in a room: what it heard, and when."""

    def __init__(self, name: str, room: str, ws: ClientConnection) -> None:
        self.name = name
        self.room = room
        self.ws = ws
        self.texts: list[str] = []
        self.arrived: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, name: str, base: str, room: str) -> Client:
        ws = await connect(f"{base}/ws/chat/{room}/", proxy=None, open_timeout=10, close_timeout=2)
        return cls(name, room, ws)

    async def _read(self) -> None:
        async for raw in self.ws:
            data = json.loads(raw)
            if "text" in data:
                self.texts.append(data["text"])
                self.arrived.setdefault(data["text"], time.monotonic())
            else:
                self.events.append(data)

    @property
    def open_(self) -> bool:
        return not self.reader.done()

    async def say(self, text: str) -> None:
        await self.ws.send(json.dumps({"text": text}))

    async def command(self, name: str, answer: str) -> None:
        """``{name: true}``, then wait for the consumer's ``{answer: room}``."""
        before = len(self.events)
        await self.ws.send(json.dumps({name: True}))
        await wait_until(
            lambda: any(answer in e for e in self.events[before:]), f"{self.name} got {answer}"
        )

    def has(self, texts: list[str]) -> bool:
        return all(text in self.arrived for text in texts)

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(self.reader, 5)


Opener = Callable[[str, str, str], Awaitable[Client]]


@pytest.fixture
async def open_client() -> AsyncIterator[Opener]:
    """``await open_client(name, ws_url, room)``; every client opened is closed after the
    test, passed or failed."""
    opened: list[Client] = []

    async def open_(name: str, base: str, room: str) -> Client:
        client = await Client.open(name, base, room)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.close()


async def wait_all_heard(clients: list[Client], texts: list[str], within: float = 10.0) -> None:
    def done() -> bool:
        return all(client.has(texts) for client in clients)

    try:
        await wait_until(done, f"all of {len(clients)} clients heard {len(texts)} messages", within)
    except AssertionError as exc:
        missing = {c.name: [t for t in texts if t not in c.arrived][:5] for c in clients}
        raise AssertionError(f"{exc}; missing (first 5 each): {missing}") from None


def assert_no_duplicates(clients: list[Client]) -> None:
    for client in clients:
        twice = {text: n for text, n in Counter(client.texts).items() if n > 1}
        assert not twice, f"{client.name} heard messages more than once: {twice}"


def new_room() -> str:
    return "r" + uuid.uuid4().hex[:10]


@pytest.fixture(
    scope="module",
    params=[pytest.param(b, marks=pytest.mark.xdist_group(f"e2e-{b}")) for b in BACKENDS],
)
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    """One site per backend on its shared server, shared by that backend's tests (each in
    a room of its own)."""
    backend: str = request.param
    server = shared_server(backend)
    with Site(backend, env={ENV_KEYS[backend]: server}) as running:
        yield running
    asyncio.run(flush(backend, server, running.prefix))


def server_of(site: Site) -> str:
    """The URL (DSN) of the server the site's layer uses."""
    return site.env[ENV_KEYS[site.backend]]


async def clients_in(
    open_client: Opener, site: Site, room: str, per_server: int = 3
) -> list[Client]:
    """``per_server`` clients on each of the site's servers, in ``room``."""
    return [
        await open_client(f"s{i}c{j}", url, room)
        for i, url in enumerate(site.ws_urls)
        for j in range(per_server)
    ]


async def test_a_message_reaches_every_member_on_both_servers_once(
    site: Site, open_client: Opener
) -> None:
    clients = await clients_in(open_client, site, new_room())
    stranger = await open_client("stranger", site.ws_urls[1], new_room())
    senders = (clients[0], clients[4])  # one on each server
    texts = {s.name: [f"{s.name}-{n}" for n in range(10)] for s in senders}
    for n in range(10):
        for sender in senders:
            await sender.say(texts[sender.name][n])
    everything = [text for batch in texts.values() for text in batch]
    await wait_all_heard(clients, everything)
    await asyncio.sleep(QUIET)
    assert_no_duplicates(clients)
    for client in clients:
        assert sorted(client.texts) == sorted(everything), client.name
        for name, batch in texts.items():
            heard = [t for t in client.texts if t.startswith(name + "-")]
            assert heard == batch, f"{client.name} heard {name}'s messages out of order"
    assert stranger.texts == []


async def test_a_member_who_left_hears_nothing_more(site: Site, open_client: Opener) -> None:
    room = new_room()
    group = f"chat.{room}"
    stay = [await open_client(f"stay{i}", url, room) for i, url in enumerate(site.ws_urls)]
    # Leave with the socket still open: had group_discard done nothing, the group would
    # still route to these consumers and they would pass the message on.
    leave = [await open_client(f"leave{i}", url, room) for i, url in enumerate(site.ws_urls)]
    # Leave by closing the socket: the consumer's disconnect calls group_discard, seen
    # here in the memberships the server stores (RabbitMQ keeps a process-local channel's
    # membership in the process that owns it, out of the test's sight).
    gone = [await open_client(f"gone{i}", url, room) for i, url in enumerate(site.ws_urls)]
    server = server_of(site)
    assert await asyncio.to_thread(members, site.backend, server, site.prefix, group) in (6, None)
    await stay[0].say("everyone")
    await wait_all_heard([*stay, *leave, *gone], ["everyone"])

    for client in leave:
        await client.command("leave", "left")
    for client in gone:
        await client.close()

    async def stored_members() -> bool:
        count = await asyncio.to_thread(members, site.backend, server, site.prefix, group)
        return count in (len(stay), None)

    await wait_until(stored_members, f"{group} on the server has only the {len(stay)} who stayed")
    await stay[0].say("after-leave-0")
    await stay[1].say("after-leave-1")
    await wait_all_heard(stay, ["after-leave-0", "after-leave-1"])
    await asyncio.sleep(QUIET)
    for client in leave:
        assert client.open_, f"{client.name}'s socket closed"
        assert client.texts == ["everyone"], f"{client.name} heard the room after leaving"
    assert_no_duplicates(stay)

    # The same sockets join again and hear the room: their silence was the leaving.
    for client in leave:
        await client.command("join", "joined")
    await stay[1].say("after-join")
    await wait_all_heard([*stay, *leave], ["after-join"])
    await asyncio.sleep(QUIET)
    assert_no_duplicates([*stay, *leave])


def test_a_view_hands_a_task_to_the_worker_and_gets_its_answer(site: Site) -> None:
    workers = set()
    for url, text in itertools.product(site.urls, ("abc", "hello world", "")):
        status, body = http_get(f"{url}/task/?text={text.replace(' ', '+')}")
        assert status == 200, body
        answer = json.loads(body)
        assert answer["result"] == text[::-1]
        workers.add(answer["worker"])
    worker = next(p for p in site.processes if p.name == "worker")
    assert workers == {worker.pid}


async def test_the_sync_push_view_reaches_the_room_on_both_servers(
    site: Site, open_client: Opener
) -> None:
    room = new_room()
    room_clients = await clients_in(open_client, site, room)
    pushed = []
    for n, url in enumerate(site.urls * 5):
        text = f"pushed-{n}"
        status, body = await asyncio.to_thread(http_get, f"{url}/push/{room}/?text={text}")
        assert status == 200, body
        pushed.append(text)
    await wait_all_heard(room_clients, pushed)
    await asyncio.sleep(QUIET)
    assert_no_duplicates(room_clients)
    assert all(sorted(c.texts) == sorted(pushed) for c in room_clients)


class Chatter:
    """Clients on both servers chatting as people do: each says something every ``every``
    seconds, but not while three of its own recent messages have not come back (a stalled
    room makes people wait; it does not make them type faster). Without that, an outage
    queues a backlog in the senders' sockets that, once the layer is back, overflows the
    members' channels (capacity 100), and the layer drops what does not fit."""

    def __init__(self, senders: list[Client], every: float = 0.05, patience: float = 2.0):
        self.senders = senders
        self.every = every
        self.patience = patience
        self.sent: list[tuple[str, float]] = []
        self.task = asyncio.create_task(self._run())

    def _waiting_for(self, sender: Client, now: float) -> int:
        return sum(
            1
            for text, at in self.sent[-200:]
            if text.startswith(sender.name + "-")
            and now - at < self.patience
            and text not in sender.arrived
        )

    async def _run(self) -> None:
        for n in itertools.count():
            for sender in self.senders:
                now = time.monotonic()
                if self._waiting_for(sender, now) >= 3:
                    continue
                text = f"{sender.name}-{n}"
                self.sent.append((text, now))
                await sender.say(text)
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        self.task.cancel()
        # A sender whose socket the server closed ends the chatter (the test says so).
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await self.task


async def recovery_after(clients: list[Client], chatter: Chatter, since: float) -> float:
    """Seconds from ``since`` until a message said after it had reached every client."""
    recovered: list[float] = []

    def back() -> bool:
        closed = [f"{c.name} ({c.ws.close_code})" for c in clients if not c.open_]
        assert not closed, f"the servers closed these sockets: {closed}"
        for text, at in chatter.sent:
            if at >= since and all(text in c.arrived for c in clients):
                recovered.append(max(c.arrived[text] for c in clients) - since)
                return True
        return False

    await wait_until(back, "the chat came back", timeout=RECOVERY_LIMIT, poll=0.05)
    return recovered[0]


async def chat_through(
    fault_name: str,
    site: Site,
    clients: list[Client],
    fault: Callable[[], Awaitable[dict[str, float]]],
) -> dict[str, float]:
    """Chat on both servers while ``fault()`` runs. ``fault`` returns ``since`` (from when
    the chat should work again) and anything else to report. Measures the recovery from
    ``since``, then checks every socket still open, everything said afterwards heard by all
    exactly once, nothing heard twice, the worker and the push view working."""
    senders = [clients[0], clients[-1]]
    chatter = Chatter(senders)
    try:
        await wait_all_heard(clients, [f"{s.name}-0" for s in senders])
        started = time.monotonic()
        times: dict[str, float] = await fault()
        recovery = await recovery_after(clients, chatter, times.pop("since"))
        await asyncio.sleep(0.5)
    finally:
        await chatter.stop()
    # Times (keys ending in _s) are reported from when the fault began; the rest as given.
    report = {
        "recovery_s": round(recovery, 3),
        **{k: round(v - started, 3) if k.endswith("_s") else v for k, v in times.items()},
    }
    print(f"\n{site.backend} {fault_name}: {report}")
    closed = [c.name for c in clients if not c.open_]
    assert not closed, f"the servers closed these sockets during {fault_name}: {closed}"
    after = [f"{s.name}-after-{n}" for s in senders for n in range(5)]
    for n in range(5):
        for sender in senders:
            await sender.say(f"{sender.name}-after-{n}")
    await wait_all_heard(clients, after)
    await asyncio.sleep(QUIET)
    assert_no_duplicates(clients)
    lost = sum(1 for text, _ in chatter.sent for c in clients if text not in c.arrived)
    report["said"] = len(chatter.sent)
    # Sends the layer refused (BackendUnavailable: in flight at the fault, or past its
    # retry_timeout); the consumer told the sender and kept the socket.
    report["unsent"] = sum(1 for c in clients for e in c.events if "unsent" in e)
    report["lost_deliveries"] = lost
    room = clients[0].room
    for url in site.urls:
        status, body = await asyncio.to_thread(http_get, f"{url}/task/?text=back")
        assert status == 200 and json.loads(body)["result"] == "kcab", body
        status, body = await asyncio.to_thread(http_get, f"{url}/push/{room}/?text=push-{url[-5:]}")
        assert status == 200, body
    await wait_all_heard(clients, [f"push-{url[-5:]}" for url in site.urls])
    print(f"{site.backend} {fault_name}, afterwards: {report}")
    return report


async def test_the_chat_recovers_from_cut_server_connections(
    site: Site, open_client: Opener
) -> None:
    server = server_of(site)
    clients = await clients_in(open_client, site, new_room(), per_server=2)

    async def cut() -> dict[str, float]:
        before = await asyncio.to_thread(connection_count, site.backend, server, site.prefix)
        killed = await asyncio.to_thread(kill_connections, site.backend, server, site.prefix)
        # At least one for each of the three processes.
        assert killed >= 3, f"only {killed} of {before} connections of the site were cut"
        # The chat is measured from the last cut (closing RabbitMQ's takes seconds).
        return {"since": time.monotonic(), "cut_done_s": time.monotonic(), "cut": killed}

    await chat_through("connections cut", site, clients, cut)


#: (backend, crash). Redis is always killed (SIGKILL), with an append-only file synced on
#: every write. A crashed PostgreSQL empties UNLOGGED tables, the layer's default, and
#: with them every room's members: the crash runs with durable=True.
RESTARTS = [
    ("redis", True),
    ("postgres", False),
    ("postgres", True),
    ("amqp", False),
    ("amqp", True),
]


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("backend", "crash"),
    [
        pytest.param(
            b, c, marks=pytest.mark.xdist_group("e2e-restart"), id=f"{b}-{'crash' if c else 'stop'}"
        )
        for b, c in RESTARTS
    ],
)
async def test_the_chat_recovers_from_a_server_restart(
    backend: str, crash: bool, tmp_path: Path, open_client: Opener
) -> None:
    pytest.importorskip(
        {"redis": "redis", "postgres": "psycopg", "amqp": "pika"}[backend],
        reason=f"the [{backend}] extra is not installed",
    )
    with private_server(backend, tmp_path) as server:
        site_env = {ENV_KEYS[backend]: server.url}
        if backend == "postgres" and crash:
            site_env["CHAT_LAYER_OPTIONS"] = json.dumps({"durable": True})
        if backend == "amqp":
            # A RabbitMQ node takes about as long to come back as the default retry_timeout
            # (5 s); past it, a consumer's group_send raises and Daphne closes its socket.
            site_env["CHAT_LAYER_OPTIONS"] = json.dumps({"retry_timeout": 30})
        with Site(backend, env=site_env) as running:
            clients = await clients_in(open_client, running, "restart", per_server=2)

            async def restart() -> dict[str, float]:
                await asyncio.to_thread(server.restart, crash)
                # Measured from when the server answers again (RabbitMQ takes seconds).
                return {"since": time.monotonic(), "server_back_s": time.monotonic()}

            try:
                await chat_through(
                    "server crash" if crash else "server restart", running, clients, restart
                )
            except BaseException:
                print(running.logs())
                raise
