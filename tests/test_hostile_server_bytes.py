"""Bytes no layer wrote, arriving from the server, on every networked backend (issue #11).

Garbage is put straight where a layer reads (tests/raw_servers.py: a Redis list, a row of
the PostgreSQL messages table, a RabbitMQ queue or an instance's inbox), followed by a
valid message. The receive loop must drop the garbage, log a warning for what it could not
read, and deliver the valid message next; no receive may fail or hang, and the sentinel
channels (tests/hostile.py) lose nothing.

What "garbage" means follows each backend's documented layout: entries
``<expires_ms>:<channels>:<payload>`` (Redis), rows with any payload (PostgreSQL), bodies
``kind + deadline (float64) + ...`` (RabbitMQ). Garbage that happens to spell a valid,
unexpired message for the channel is not garbage: hypothesis is told to leave it out.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import assume
from hypothesis import strategies as st

from tests.backends import backend
from tests.hostile import Session, check_all, session

pytestmark = pytest.mark.timeout(240)

EXAMPLES = {"redis": 60, "postgres": 50, "amqp": 50}
#: Garbage bodies per example.
BATCH = st.integers(1, 3)

Expect = bool | None  # True: a warning must be logged; None: it may be dropped silently


def is_message(data: bytes) -> bool:
    """Whether bytes decode to a message (a dict), as an unencrypted layer reads them."""
    try:
        return isinstance(msgpack.unpackb(data, raw=False, strict_map_key=False), dict)
    except Exception:
        return False


PAYLOADS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [b"", b"\xc1", b"\x93\x01\x02\x03", b"\xa3abc", b"\x81\xa4type", b"gAAAAABgarbage"]
    ),
).filter(lambda data: not is_message(data))


def warnings_in(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        record.levelno == logging.WARNING and record.name.startswith("layers")
        for record in caplog.records
    )


def run_garbage(
    s: Session,
    caplog: pytest.LogCaptureFixture,
    garbage: st.SearchStrategy[tuple[str, list[tuple[bytes, Expect]]]],
    inject: Callable[[str, list[bytes]], None],
    examples: int,
) -> int:
    """Inject each example's garbage where a channel's messages wait, send a valid message
    and receive: the valid one must come, with a warning for each garbage body that must
    log one. ``garbage`` draws (which channel: "plain" or "local", bodies)."""
    layer = s.layer
    targets = {"plain": f"garbage-{s.sentinel[-8:]}", "local": s.member}

    def check(drawn: tuple[str, list[tuple[bytes, Expect]]]) -> None:
        which, bodies = drawn
        channel = targets[which]

        def action() -> None:
            n = next(s.count)
            before = warnings_in(caplog)
            inject(channel, [body for body, _ in bodies])
            valid = {"type": "valid", "n": n}
            s.call(layer.send(channel, valid), f"send to {channel}")
            got = s.call(layer.receive(channel), f"receive on {channel} after garbage")
            assert got == valid, f"{channel} gave {got!r} after garbage {bodies!r}"
            must_warn = sum(1 for _, expect in bodies if expect)
            logged = warnings_in(caplog) - before
            assert logged >= must_warn, f"{logged} warnings for {must_warn} bad bodies {bodies!r}"

        s.guarded(action)

    # A message first, so that the channel's queue exists (RabbitMQ) before garbage goes in.
    for channel in targets.values():
        s.call(layer.send(channel, {"type": "warm"}), "send")
        s.call(layer.receive(channel), "receive")
    caplog.set_level(logging.WARNING, logger="layers")
    return check_all(garbage, examples, check)


# -- Redis ---------------------------------------------------------------------------------


def redis_expect(entry: bytes, channel: str) -> Expect:
    """What the layer must do with one entry (README: ``<expires_ms>:<channels>:<payload>``)."""
    parts = entry.split(b":", 2)
    if len(parts) < 3:
        return True
    try:
        left = int(parts[0]) - time.time() * 1000
        names = parts[1].decode()
    except (ValueError, OverflowError):
        return True
    if left <= 5000:
        return None  # expired (or about to be) entries go silently
    if channel in names.split(","):
        assume(not is_message(parts[2]))
        return True
    return None  # filed under other names: dropped when those are read


def redis_garbage(channel_of: dict[str, str]) -> Any:
    future = int((time.time() + 600) * 1000)

    @st.composite
    def entries(draw: st.DrawFn) -> tuple[str, list[tuple[bytes, Expect]]]:
        which = draw(st.sampled_from(["plain", "local"]))
        channel = channel_of[which]
        name = channel.encode()
        one = st.one_of(
            st.binary(max_size=48),
            PAYLOADS.map(lambda p: b"%d:%s:%s" % (future, name, p)),
            st.tuples(st.binary(min_size=1, max_size=12), PAYLOADS).map(
                lambda np: b"%d:%s:%s" % (future, np[0], np[1])
            ),
            st.sampled_from([b"9" * 400, b"nan", b"", b"1e30", b"0x10", b"-1", b"\xff", b" 1"]).map(
                lambda stamp: stamp + b":" + name + b":\x81\xa4type\xa1m"
            ),
        )
        bodies = [draw(one) for _ in range(draw(BATCH))]
        return which, [(body, redis_expect(body, channel)) for body in bodies]

    return entries()


def test_redis_garbage_entries(caplog: pytest.LogCaptureFixture) -> None:
    from tests.raw_servers import RedisRaw

    each = backend("redis")
    raw = RedisRaw(each.prefix)
    try:
        with session(each.make()) as s:
            targets = {"plain": f"garbage-{s.sentinel[-8:]}", "local": s.member}
            tried = run_garbage(s, caplog, redis_garbage(targets), raw.inject, EXAMPLES["redis"])
    finally:
        raw.close()
    print(f"tried: garbage redis: {tried}")


# -- PostgreSQL ----------------------------------------------------------------------------


def test_postgres_garbage_rows(caplog: pytest.LogCaptureFixture) -> None:
    from tests.raw_servers import PostgresRaw

    each = backend("postgres")
    raw = PostgresRaw(each.prefix, each.config()["dsn"])
    rows = st.tuples(
        st.sampled_from(["plain", "local"]),
        st.lists(PAYLOADS.map(lambda p: (p, True)), min_size=1, max_size=3),
    )
    try:
        with session(each.make()) as s:
            tried = run_garbage(s, caplog, rows, raw.inject, EXAMPLES["postgres"])
            # Rows for channels nobody here reads, and expired ones: never delivered to ours.
            raw.inject("garbage-other", [b"\xc1"])
            raw.inject(s.member, [b"\xc1"], expires="2000-01-01")
            s.guarded(lambda: None)
            # A row that never expires: read (and dropped) like any other, not a claim
            # that fails for good ("cannot subtract infinite timestamps").
            channel = f"garbage-{s.sentinel[-8:]}"
            for target in (channel, s.member):
                before = warnings_in(caplog)
                raw.inject(target, [b"\xc1"], expires="infinity")
                s.call(layer_send(s, target), "send")
                assert s.call(s.layer.receive(target), "receive") == {"type": "after.infinity"}
                assert warnings_in(caplog) > before
    finally:
        raw.close()
    print(f"tried: garbage postgres: {tried}")


def layer_send(s: Session, channel: str) -> Any:
    return s.layer.send(channel, {"type": "after.infinity"})


# -- RabbitMQ ------------------------------------------------------------------------------

KINDS = [b"m", b"g", b"a", b"d", b"q"]


def envelope(kind: bytes, deadline: float, rest: bytes, group: bytes | None = None) -> bytes:
    head = kind + struct.pack(">d", deadline)
    return head + rest if group is None else head + bytes((len(group),)) + group + rest


def amqp_expect(body: bytes) -> Expect:
    """What a consumer of a channel's queue must do with a body (layers/amqp/envelope.py)."""
    if len(body) < 9 or body[:1] not in KINDS:
        return True
    (deadline,) = struct.unpack_from(">d", body, 1)
    rest = body[9:]
    if body[:1] != b"m":
        if not rest or len(rest) < 1 + rest[0]:
            return True
        try:
            rest[1 : 1 + rest[0]].decode()
        except UnicodeDecodeError:
            return True
        rest = rest[1 + rest[0] :]
    if body[:1] not in (b"m", b"g") or math.isnan(deadline) or deadline - time.time() <= 5:
        return None
    assume(not is_message(rest))
    return True


def amqp_bodies() -> st.SearchStrategy[bytes]:
    deadlines = st.one_of(
        st.just(time.time() + 600),
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e308, -1.0]),
    )
    names = st.one_of(st.binary(max_size=12), st.text(max_size=12).map(str.encode))
    return st.one_of(
        st.binary(max_size=40),
        st.builds(envelope, st.sampled_from(KINDS), deadlines, PAYLOADS),
        st.builds(envelope, st.sampled_from(KINDS), deadlines, PAYLOADS, names),
    )


def test_amqp_garbage_bodies(caplog: pytest.LogCaptureFixture) -> None:
    """Bodies on a channel's own queue: an ordinary channel's, and a process-local
    channel's (made by a direct send to it)."""
    from tests.raw_servers import AmqpRaw

    each = backend("amqp")
    raw = AmqpRaw(each.prefix)

    @st.composite
    def bodies(draw: st.DrawFn) -> tuple[str, list[tuple[bytes, Expect]]]:
        which = draw(st.sampled_from(["plain", "local"]))
        drawn = [draw(amqp_bodies()) for _ in range(draw(BATCH))]
        return which, [(body, amqp_expect(body)) for body in drawn]

    try:
        with session(each.make()) as s:

            def inject(channel: str, data: list[bytes]) -> None:
                raw.inject(raw.queue(channel), data)

            tried = run_garbage(s, caplog, bodies(), inject, EXAMPLES["amqp"])
    finally:
        raw.close()
    print(f"tried: garbage amqp: {tried}")


def test_amqp_garbage_in_the_inbox(caplog: pytest.LogCaptureFixture) -> None:
    """Bodies in an instance's inbox, where group messages for its process-local channels
    and membership notices arrive: the owner drops what no layer wrote and goes on
    delivering group messages and direct ones."""
    from tests.raw_servers import AmqpRaw

    each = backend("amqp")
    raw = AmqpRaw(each.prefix)
    try:
        with session(each.make()) as s:
            layer = s.layer
            s.call(layer.group_add("inbox-group", s.member), "group_add")
            inbox = raw.inbox(layer)
            long_name = b"x" * 300

            def check(drawn: list[bytes]) -> None:
                def action() -> None:
                    n = next(s.count)
                    raw.inject(inbox, drawn)
                    grouped = {"type": "group", "n": n}
                    s.call(layer.group_send("inbox-group", grouped), "group_send")
                    assert s.call(layer.receive(s.member), "receive") == grouped
                    direct = {"type": "direct", "n": n}
                    s.call(layer.send(s.member, direct), "send")
                    assert s.call(layer.receive(s.member), "receive") == direct

                s.guarded(action)

            notices = st.builds(
                envelope,
                st.sampled_from(KINDS),
                st.sampled_from([time.time() + 600, math.inf, math.nan, 0.0]),
                st.one_of(
                    st.binary(max_size=12),
                    st.just(long_name),
                    st.sampled_from([b"\xff\xfe", b"a!b", b"", b"x" * 120]),
                ),
                st.one_of(st.just(b"inbox-group"), st.binary(max_size=8)),
            )
            garbage = st.lists(st.one_of(st.binary(max_size=40), notices), min_size=1, max_size=3)
            tried = check_all(garbage, EXAMPLES["amqp"], check)
    finally:
        raw.close()
    print(f"tried: garbage amqp inbox: {tried}")
