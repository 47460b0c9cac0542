"""Hostile input on every backend (issue #11): names, messages, bytes no layer wrote, and
bad calls mixed with good ones from several threads and event loops.

Every input gets the contract's answer (docs/design.md): a ``TypeError`` naming what was
wrong for a bad name or message, ``MessageTooLarge`` past ``max_message_size``,
``ForeignChannel`` for a receive on another instance's process-local channel, and
otherwise a round trip that gives back an equal message. Never another exception, never a
hang (each call has WITHIN seconds), and never a lost message: around every input, a
message waits on an ordinary channel and on a process-local one, and must still arrive
after it. Inputs come from hypothesis, derandomized (the same ones every run), plus a
fixed list of names known to matter (tests/hostile.py).

Where names end up on the server, they cannot leave the layer's prefix: after the names
test, a private Redis server holds only keys under ``<prefix>:``, RabbitMQ has no queue
named after an invalid name, and PostgreSQL's tables are still there with only valid
channel names under the prefix (every statement binds its values).
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from hypothesis import strategies as st

from layers.errors import ForeignChannel
from tests.backends import NAMES, Backend, backend
from tests.hostile import (
    ANY_NAMES,
    FIXED_CASES,
    FIXED_NAMES,
    NAME_CHARS,
    Case,
    Session,
    check_all,
    message_cases,
    same,
    session,
    valid_name,
)

pytestmark = pytest.mark.timeout(240)

#: Hypothesis examples per backend: the memory layer costs nothing a call.
EXAMPLES = {"memory": 300, "redis": 60, "postgres": 60, "amqp": 60}
#: new_channel(prefix) appends ".<12 hex>!<16 hex>".
NEW_CHANNEL_TAIL = 30
OPS = (
    "send",
    "receive",
    "receive_many",
    "group_add",
    "group_discard",
    "group_send",
    "group_add_channel",
    "group_discard_channel",
    "new_channel",
)
GROUP_ROLE = ("group_add", "group_discard", "group_send")

#: What each test tried, for docs/reliability.md (printed with -s).
TRIED: dict[str, int] = {}


@pytest.fixture(autouse=True, scope="module")
def report_tried() -> Iterator[None]:
    yield
    for what, count in sorted(TRIED.items()):
        print(f"tried: {what}: {count}")


@pytest.fixture(params=NAMES)
def each(request: pytest.FixtureRequest) -> Backend:
    return backend(request.param)


# -- names ---------------------------------------------------------------------------------


def name_is_valid(op: str, name: Any) -> bool:
    if op == "new_channel":
        return valid_name(name, group=True) and len(name) + NEW_CHANNEL_TAIL < 100
    return valid_name(name, group=op in GROUP_ROLE)


def refuse(s: Session, op: str, name: Any) -> None:
    """A call with an invalid name raises TypeError naming it, at once."""
    layer, message = s.layer, {"type": "m"}
    work = {
        "send": lambda: layer.send(name, message),
        "receive": lambda: layer.receive(name),
        "receive_many": lambda: layer.receive_many([name]),
        "group_add": lambda: layer.group_add(name, s.member),
        "group_discard": lambda: layer.group_discard(name, s.member),
        "group_send": lambda: layer.group_send(name, message),
        "group_add_channel": lambda: layer.group_add("g", name),
        "group_discard_channel": lambda: layer.group_discard("g", name),
        "new_channel": lambda: layer.new_channel(name),
    }[op]()
    with pytest.raises(TypeError) as raised:
        s.call(work, f"{op}({name!r})")
    text = str(raised.value)
    assert repr(name) in text, f"{op}({name!r}) raised {text!r}, which does not name it"
    if op == "new_channel":
        assert "prefix" in text, text


def round_trip(s: Session, op: str, name: str) -> None:
    """A call with a valid name works, and what is sent arrives, equal."""
    layer = s.layer
    n = next(s.count)
    message = {"type": "hostile.name", "name": name, "n": n}
    foreign = "!" in name and not layer.is_local_channel(name)
    if op in ("send", "receive", "receive_many"):
        s.call(layer.send(name, message), f"send to {name!r}")
        if foreign:
            # Sent to another instance's channel, which only it may read.
            with pytest.raises(ForeignChannel):
                s.call(layer.receive_many([name]), f"receive on {name!r}")
            return
        if op == "receive_many":
            got = s.call(layer.receive_many([name, s.member]), f"receive_many on {name!r}")
            assert got == (name, message)
        else:
            assert s.call(layer.receive(name), f"receive on {name!r}") == message
    elif op == "new_channel":
        made = s.call(layer.new_channel(name), f"new_channel({name!r})")
        assert made.startswith(f"{name}.") and valid_name(made), made
        s.call(layer.send(made, message), f"send to {made!r}")
        assert s.call(layer.receive(made), f"receive on {made!r}") == message
    elif op in GROUP_ROLE:
        s.call(layer.group_add(name, s.member), f"group_add({name!r})")
        s.call(layer.group_send(name, message), f"group_send({name!r})")
        assert s.call(layer.receive(s.member), "receive on a member") == message
        s.call(layer.group_discard(name, s.member), f"group_discard({name!r})")
        s.call(layer.group_send(name, {"type": "after.discard"}), f"group_send({name!r})")
        marker = {"type": "direct", "n": n}
        s.call(layer.send(s.member, marker), "send to a member")
        assert s.call(layer.receive(s.member), "receive on a member") == marker
    else:
        group = f"g{n}"
        s.call(layer.group_add(group, name), f"group_add({group!r}, {name!r})")
        s.call(layer.group_send(group, message), f"group_send({group!r})")
        if not foreign:
            assert s.call(layer.receive(name), f"receive on {name!r}") == message
        s.call(layer.group_discard(group, name), f"group_discard({group!r}, {name!r})")


@pytest.fixture
def private_redis(each: Backend, tmp_path: Path) -> Iterator[str | None]:
    """For Redis, a server of the test's own (every key there is one the layer made)."""
    if each.name != "redis":
        yield None
        return
    from tests.redis.harness import REDIS_SERVER, RedisProcess

    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"redis-server not found at {REDIS_SERVER}")
    server = RedisProcess(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


def make_layer(
    each: Backend, redis_url: str | None, refused: list[Any]
) -> tuple[Any, Callable[[], None]]:
    """The layer for the names test, and a check that the names it was given (``refused``:
    the invalid ones) left nothing outside its prefix."""
    if redis_url is not None:
        from layers.redis import RedisChannelLayer
        from tests.raw_servers import RedisRaw

        def redis_contained() -> None:
            raw = RedisRaw(each.prefix, redis_url)
            try:
                keys = raw.all_keys()
            finally:
                raw.close()
            outside = [key for key in keys if not key.startswith(f"{each.prefix}:")]
            assert not outside, f"keys outside the prefix: {outside[:5]}"
            # Messages to other instances' channels are still there: the check saw keys.
            assert keys, "no keys at all: the check would prove nothing"

        return RedisChannelLayer(hosts=[redis_url], prefix=each.prefix), redis_contained
    layer = each.make()
    if each.name == "amqp":
        from tests.amqp.harness import queues

        before = set(queues(""))

        def amqp_contained() -> None:
            # Names no layer could have made a queue from (other tests' queues come and go
            # on the shared broker meanwhile, always named from valid names).
            odd = [
                name
                for name in refused
                if isinstance(name, str) and len(name) >= 2 and set(name) - set(NAME_CHARS + "!:")
            ]
            for queue in set(queues("")) - before:
                if queue.startswith(f"{each.prefix}:"):
                    rest = queue[len(each.prefix) + 1 :]
                    assert rest.startswith("!") or valid_name(rest), f"queue {queue!r}"
                else:
                    assert not any(queue.endswith(name) for name in odd), (
                        f"queue {queue!r} is named after an invalid name, outside the prefix"
                    )

        return layer, amqp_contained
    if each.name == "postgres":
        from tests.raw_servers import PostgresRaw

        def postgres_intact() -> None:
            raw = PostgresRaw(each.prefix, each.config()["dsn"])
            try:
                assert raw.tables() == ["channel_layers_v2_groups", "channel_layers_v2_messages"]
                assert all(valid_name(channel) for channel in raw.channels())
            finally:
                raw.close()

        return layer, postgres_intact
    return layer, lambda: None


def test_names(each: Backend, private_redis: str | None) -> None:
    refused: list[Any] = []
    layer, contained = make_layer(each, private_redis, refused)
    tried = 0
    with session(layer) as s:

        def check(drawn: tuple[str, Any]) -> None:
            op, name = drawn
            if name_is_valid(op, name):
                s.guarded(lambda: round_trip(s, op, name))
            else:
                refused.append(name)
                s.guarded(lambda: refuse(s, op, name))

        tried += check_all(st.tuples(st.sampled_from(OPS), ANY_NAMES), EXAMPLES[each.name], check)

        def fixed() -> None:
            nonlocal tried
            for name in FIXED_NAMES:
                for op in OPS:
                    tried += 1
                    if name_is_valid(op, name):
                        round_trip(s, op, name)
                    else:
                        refused.append(name)
                        refuse(s, op, name)

        s.guarded(fixed)
        # An empty list and a bare string are not lists of channel names.
        for channels in ([], "abc", None, 5):
            with pytest.raises(TypeError):
                s.call(layer.receive_many(channels), f"receive_many({channels!r})")
        contained()  # before the flush that ends the session
    TRIED[f"names {each.name}"] = tried


# -- messages ------------------------------------------------------------------------------


def test_messages(each: Backend) -> None:
    layer = each.make()
    channel = f"messages-{uuid.uuid4().hex[:8]}"
    with session(layer) as s:
        s.call(layer.group_add("messages", s.member), "group_add")
        routes = ("send", "local", "group_send")

        def check(drawn: tuple[Case, str]) -> None:
            case, route = drawn
            target = {"send": channel, "local": s.member, "group_send": "messages"}[route]
            reader = s.member if route != "send" else channel
            sending = layer.group_send if route == "group_send" else layer.send

            def action() -> None:
                what = f"{route} of {type(case.message).__name__}"
                if case.error is not None:
                    with pytest.raises(case.error) as raised:
                        s.call(sending(target, case.message), what)
                    assert case.mention in str(raised.value), (case, str(raised.value))
                    return
                s.call(sending(target, case.message), what)
                got = s.call(layer.receive(reader), f"receive after {what}")
                assert same(case.message, got), (case.message, got)

            s.guarded(action)

        strategy = st.tuples(message_cases(layer.max_message_size), st.sampled_from(routes))
        tried = check_all(strategy, EXAMPLES[each.name], check)
        for case in FIXED_CASES:
            for route in routes:
                check((case, route))
        TRIED[f"messages {each.name}"] = tried + len(FIXED_CASES) * len(routes)


# -- several threads and event loops at once -----------------------------------------------

THREADS = 4
PER_THREAD = 25


def _bad_call(layer: Any, rng: random.Random) -> Any:
    """A call that must fail at once, and the error it must raise."""
    choice = rng.randrange(5)
    if choice == 0:
        return layer.send("bad name!!", {"type": "m"}), TypeError
    if choice == 1:
        return layer.send("fine", {"type": "m", "v": {1, 2}}), TypeError
    if choice == 2:
        return layer.group_add("bad group!", "fine"), TypeError
    if choice == 3:
        return layer.receive("other.abcdef012345!x"), ForeignChannel
    return layer.group_send("g", ["not", "a", "dict"]), TypeError


def test_threads_and_loops_mixing_bad_and_good_calls(each: Backend) -> None:
    """Threads each running event loops of their own (asyncio.run per batch) and threads
    calling through async_to_sync, all on one instance, bad calls between the good ones:
    every good message arrives once, in order per sender; every bad call fails as it must."""
    layer = each.make()
    failures: list[str] = []
    results: dict[str, list[dict[str, Any]]] = {}
    with session(layer) as s:
        channels = [f"conc{t}-{uuid.uuid4().hex[:6]}" for t in range(THREADS)]
        # Half the senders write to the process-local sentinel's neighbour: a local channel.
        local = s.call(layer.new_channel("conc"), "new_channel")
        targets = [local if t % 2 else channels[t] for t in range(THREADS)]

        async def one_batch(t: int, start: int, rng: random.Random) -> None:
            for n in range(start, min(start + 5, PER_THREAD)):
                work, error = _bad_call(layer, rng)
                try:
                    await asyncio.wait_for(work, 10)
                    failures.append(f"thread {t}: a bad call succeeded")
                except error:
                    pass
                except Exception as exc:
                    failures.append(f"thread {t}: {type(exc).__name__}: {exc}")
                await layer.send(targets[t], {"type": "m", "t": t, "n": n})

        def sender(t: int) -> None:
            rng = random.Random(t)
            try:
                for start in range(0, PER_THREAD, 5):
                    if t < 2:
                        asyncio.run(one_batch(t, start, rng))
                    else:
                        async_to_sync(one_batch)(t, start, rng)
            except Exception as exc:
                failures.append(f"thread {t} stopped: {type(exc).__name__}: {exc}")

        async def receive_all() -> dict[str, list[dict[str, Any]]]:
            got: dict[str, list[dict[str, Any]]] = {name: [] for name in set(targets)}
            want = {name: PER_THREAD * targets.count(name) for name in got}

            async def drain(name: str) -> None:
                while len(got[name]) < want[name]:
                    got[name].append(await layer.receive(name))

            await asyncio.wait_for(asyncio.gather(*(drain(name) for name in got)), 60)
            return got

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(THREADS)]

        def run_all() -> dict[str, list[dict[str, Any]]]:
            for thread in threads:
                thread.start()
            try:
                return s.runner.run(receive_all())
            finally:
                for thread in threads:
                    thread.join(60)

        s.guarded(lambda: results.update(run_all()))
        assert not failures, failures
        for t in range(THREADS):
            mine = [m["n"] for m in results[targets[t]] if m["t"] == t]
            assert mine == list(range(PER_THREAD)), f"thread {t}: {mine}"
        TRIED[f"threads {each.name}"] = THREADS * PER_THREAD * 2


# -- found by the tests above --------------------------------------------------------------

DUPLICATES_N = 120


def test_local_channels_of_two_prefixes_deliver_once(each: Backend) -> None:
    """Process-local channels of one instance made with different new_channel prefixes,
    received on at once, with receive_many over a local and an ordinary channel beside:
    every message arrives exactly once.

    PostgreSQL kept a local queue per prefix but one list of rows read-and-not-yet-deleted
    per instance, so two receive loops overwrote each other's list and rows were read
    again (about 1 message in 5 arrived twice); and receive_many claimed rows of the local
    queue that its loop had read already."""
    layer = each.make()
    with session(layer) as s:

        async def run() -> list[Any]:
            first = await layer.new_channel("first")
            second = await layer.new_channel("second")
            got: list[Any] = []

            async def receive(channel: str, count: int) -> None:
                for _ in range(count):
                    got.append(await layer.receive(channel))

            async def receive_many(count: int) -> None:
                for _ in range(count):
                    got.append((await layer.receive_many(["plain-none", second]))[1])

            async def send() -> None:
                for n in range(DUPLICATES_N):
                    await layer.send(first, {"type": "m", "to": "first", "n": n})
                    await layer.send(second, {"type": "m", "to": "second", "n": n})
                    if n % 10 == 0:
                        await asyncio.sleep(0.005)

            await asyncio.gather(
                receive(first, DUPLICATES_N),
                receive(second, DUPLICATES_N // 2),
                receive_many(DUPLICATES_N // 2),
                send(),
            )
            return got

        got = s.runner.run(asyncio.wait_for(run(), 60))
        keys = [(m["to"], m["n"]) for m in got]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        assert not twice, f"{len(twice)} messages arrived twice, first {twice[:5]}"
        assert len(set(keys)) == 2 * DUPLICATES_N
