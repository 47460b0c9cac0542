"""What the hostile-input and encryption tests share: hypothesis strategies for names and
messages, an oracle for each written from the contract (docs/design.md) rather than from
``layers.base``, a comparison of messages after a round trip, and raw access to each
server (to inject bytes no layer wrote, and to read what a layer stored).

The oracles decide what a call must do with an input: a name is valid when it is a
``str`` of ASCII letters, digits, ``-``, ``_`` and ``.``, shorter than 100 characters, with
at most one ``!`` that is not its first character; a message must be a ``dict`` that
msgpack can pack, of at most ``max_message_size`` bytes packed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import itertools
import math
import string
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from channels.exceptions import MessageTooLarge
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T = TypeVar("T")

#: Seconds any one call may take before the test calls it a hang.
WITHIN = 10.0
NAME_CHARS = string.ascii_letters + string.digits + "-_."
#: Characters that would mean something to Redis (glob, key separator, hash tags), SQL,
#: AMQP or a shell, beside the valid ones.
ODD_CHARS = NAME_CHARS + "!:*?[]{}\\/ \t\n\r\x00\x7f'\";%$#@,|&<>=+~`^()"
SQL = [
    "'; DROP TABLE channel_layers_v2_messages; --",
    "x'); DELETE FROM channel_layers_v2_groups; --",
    "$1",
    "%(prefix)s",
    '"; DROP TABLE channel_layers_v2_groups; --',
    "\\x00",
]
FIXED_NAMES: list[Any] = [
    "", ".", "..", "...", "-", "_", "!", "a!", "!a", "a!!b", "a!b!c", "a.b!c.d", " a", "a ",
    "a\n", "\na", "a\x00b", "a\tb", "é", "\uff41", "١٢٣", "a" * 99, "a" * 100, "a" * 101,
    "a" * 500, "a" * 98 + "!", "a" * 98 + "!b", "*", "a*", "?", "[a]", "{a}", "a:b", ":",
    "asgi:c:x", "../x", "x/../../y", "a,b", "\ud800", "\U0001f600", *SQL,
    None, 0, 1.5, b"abc", bytearray(b"abc"), ["a"], ("a",), {"a": 1}, object(), True,
]  # fmt: skip

_valid_part = st.text(alphabet=NAME_CHARS, min_size=1, max_size=24)
ANY_NAMES: st.SearchStrategy[Any] = st.one_of(
    _valid_part,
    st.builds(lambda a, b: f"{a}!{b}", _valid_part, st.text(NAME_CHARS, max_size=24)),
    st.text(alphabet=ODD_CHARS, max_size=30),
    st.text(max_size=40),
    st.integers(95, 104).flatmap(lambda n: st.text(NAME_CHARS, min_size=n, max_size=n)),
    st.sampled_from(FIXED_NAMES),
    st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8)),
)


def valid_name(name: Any, group: bool = False) -> bool:
    """The contract's rule for a channel name (a group name takes no ``!``)."""
    if type(name) is not str or not 0 < len(name) < 100:
        return False
    head, bang, tail = name.partition("!")
    if bang and group:
        return False
    return bool(head) and all(c in NAME_CHARS for c in head + tail)


# -- messages ------------------------------------------------------------------------------

_texts = st.one_of(st.text(max_size=40), st.sampled_from(SQL))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),  # nan, inf and -0.0 included
    _texts,
    st.binary(max_size=40),
)
_keys = st.one_of(_texts, st.integers(-(2**63), 2**64 - 1), st.binary(max_size=8))
VALUES = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=25,
)
#: Dicts msgpack can carry, with and without a "type".
GOOD_MESSAGES = st.one_of(
    st.dictionaries(_keys, VALUES, max_size=6),
    st.builds(lambda rest, kind: {**rest, "type": kind}, st.dictionaries(_texts, VALUES), _texts),
)


class Custom:
    """A value of a class msgpack knows nothing of."""


def _bad_leaves() -> st.SearchStrategy[tuple[Any, str]]:
    """A value msgpack cannot carry, and what the error must say about it."""
    typed = st.sampled_from(
        [
            {1, 2},
            frozenset({1}),
            complex(1, 2),
            decimal.Decimal("1.5"),
            datetime.datetime(2024, 1, 1),
            datetime.date(2024, 1, 1),
            Custom(),
            object,
            len,
            Ellipsis,
            NotImplemented,
            range(3),
            uuid.UUID(int=1),
        ]
    ).map(lambda value: (value, type(value).__name__))
    big = st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1))
    return st.one_of(typed, big.map(lambda value: (value, "64-bit")))


def _plant(message: dict[Any, Any], leaf: Any, where: int) -> dict[Any, Any]:
    """``message`` with ``leaf`` put at some depth (one planted value only)."""
    holder: Any = {"in": [leaf]} if where % 3 == 1 else leaf
    if where % 3 == 2:
        holder = [[holder]]
    return {**message, f"bad{where}": holder}


@dataclass(frozen=True)
class Case:
    """A message to send, and what must happen: None for a round trip, else the error type
    and a text its message must contain."""

    message: Any
    error: type[BaseException] | None = None
    mention: str = ""


def _nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return {"type": "deep", "v": value}


def _holding_itself() -> dict[str, Any]:
    message: dict[str, Any] = {"type": "loop"}
    message["self"] = message
    return message


def _size_case(limit: int) -> st.SearchStrategy[Case]:
    def case(extra: int) -> Case:
        message = {"type": "big", "blob": b"x" * (limit - 24 + extra)}
        too_big = len(msgpack.packb(message, use_bin_type=True)) > limit
        return Case(message, MessageTooLarge if too_big else None, "max_message_size")

    return st.integers(-16, 16).map(case)


#: Messages known to matter, tried once each besides hypothesis's.
FIXED_CASES = [
    Case({frozenset({1}): 1}, TypeError, "frozenset"),
    Case({Custom(): 1}, TypeError, "Custom"),
    Case({(1, 2): [3]}),  # a tuple key packs as an array: it comes back a tuple
    Case({(1, frozenset({2})): 3}, TypeError, "frozenset"),
    Case({None: 1, True: 2, 1.5: 3}),
    Case(_holding_itself(), TypeError, "itself"),
    Case({"type": "m", "list": [[_holding_itself()]]}, TypeError, "itself"),
    Case(_nested(5000), TypeError, "deep"),
    Case(_nested(300)),
    Case({"type": "n", "v": [math.nan, math.inf, -math.inf, -0.0, 2**64 - 1, -(2**63)]}),
    Case({"type": "n", "v": 2**64}, TypeError, "64-bit"),
    Case({"type": "b", "v": bytearray(b"\x00\xff"), "m": memoryview(b"ab")}),
    Case({"type": "s", "text": "'; DROP TABLE channel_layers_v2_messages; --"}),
    Case({"'; DROP TABLE channel_layers_v2_groups; --": "$1 %(prefix)s \\x00"}),
    Case({}),
    Case([("type", "m")], TypeError, "list"),
    Case(None, TypeError, "NoneType"),
    Case(b"\x81\xa4type\xa1m", TypeError, "bytes"),
]


def message_cases(limit: int) -> st.SearchStrategy[Case]:
    """Messages of every kind, each with its expected outcome; ``limit`` is the layer's
    max_message_size (the oversize ones are built around it)."""
    not_dicts = st.one_of(
        VALUES.filter(lambda v: not isinstance(v, dict)),
        st.tuples(_scalars),
        st.sampled_from([Custom(), b"\x80", "{}", [("type", "x")], 0]),
    ).map(lambda value: Case(value, TypeError, type(value).__name__))
    planted = st.builds(
        lambda message, bad, where: Case(_plant(message, bad[0], where), TypeError, bad[1]),
        GOOD_MESSAGES,
        _bad_leaves(),
        st.integers(0, 5),
    )
    return st.one_of(
        GOOD_MESSAGES.map(Case),
        not_dicts,
        planted,
        st.sampled_from(FIXED_CASES),
        _size_case(limit),
    )


def same(sent: Any, got: Any) -> bool:
    """Equal after a msgpack round trip: tuples come back as lists (and lists as tuples in
    a message holding a tuple key), bytearrays as bytes, nan as a nan."""
    if isinstance(sent, float) and isinstance(got, float) and math.isnan(sent):
        return math.isnan(got)
    if isinstance(sent, dict):
        return (
            isinstance(got, dict)
            and len(sent) == len(got)
            and all(key in got and same(value, got[key]) for key, value in sent.items())
        )
    if isinstance(sent, list | tuple):
        return (
            isinstance(got, list | tuple)
            and len(sent) == len(got)
            and all(same(a, b) for a, b in zip(sent, got, strict=True))
        )
    if isinstance(sent, bytearray | memoryview):
        sent = bytes(sent)
    return bool(sent == got) and isinstance(sent, bool) == isinstance(got, bool)


# -- running -------------------------------------------------------------------------------


def check_all(strategy: st.SearchStrategy[T], examples: int, check: Callable[[T], None]) -> int:
    """Run ``check`` on ``examples`` inputs from ``strategy``; how many it saw.

    Derandomized and without an example database, so CI runs the same inputs every time;
    no deadline, since a round trip through a server under load takes what it takes.
    """
    seen = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: T) -> None:
        nonlocal seen
        seen += 1
        check(value)

    run()
    return seen


def within(runner: asyncio.Runner, work: Awaitable[T], what: str) -> T:
    """Run ``work`` in ``runner``; a call that does not end in WITHIN seconds is a hang."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(work, WITHIN)
        except TimeoutError:
            raise AssertionError(f"{what} hung (no answer in {WITHIN} s)") from None

    return runner.run(bounded())


class Session:
    """One layer instance in one event loop for all of a test's examples, with a sentinel
    message waiting on an ordinary and on a process-local channel around each."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.runner = asyncio.Runner()
        self.count = itertools.count()
        self.sentinel = f"sentinel-{uuid.uuid4().hex}"
        self.local: str = self.call(layer.new_channel("sentinel"), "new_channel")
        self.member: str = self.call(layer.new_channel("member"), "new_channel")

    def call(self, work: Any, what: str) -> Any:
        return within(self.runner, work, what)

    def guarded(self, action: Callable[[], None]) -> None:
        n = next(self.count)
        waiting = {"type": "sentinel", "n": n}
        for channel in (self.sentinel, self.local):
            self.call(self.layer.send(channel, waiting), f"send to {channel}")
        try:
            action()
        finally:
            # Taken even when the action failed, so that hypothesis's next tries start from
            # empty sentinels.
            for channel in (self.sentinel, self.local):
                got = self.call(self.layer.receive(channel), f"receive on {channel}")
                assert got == waiting, f"{channel} lost its message to a bad call: got {got!r}"

    def close(self) -> None:
        try:
            self.call(self.layer.flush(), "flush")
            self.call(self.layer.close(), "close")
        finally:
            self.runner.close()


@contextlib.contextmanager
def session(layer: Any) -> Iterator[Session]:
    opened = Session(layer)
    try:
        yield opened
    finally:
        opened.close()
