"""Bounded, readable wrappers around layer calls.

Every await on the layer goes through here so that a hung layer fails within a few
seconds, and an unexpected exception from deep inside a layer is reported as one line
naming the call, the exception and where it was raised.
"""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import pytest

from conformance.constants import CANCEL_GRACE, OP_TIMEOUT, QUIET_WAIT, RECEIVE_TIMEOUT

T = TypeVar("T")

MESSAGE_TYPE = "conformance.message"


@dataclass(frozen=True)
class Names:
    """Channel and group names unique to one test, so tests can share a server."""

    token: str

    def channel(self, label: str) -> str:
        return f"{self.token}.{label}"

    def group(self, label: str) -> str:
        return f"{self.token}-{label}"


def message(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": MESSAGE_TYPE, "n": n, **extra}


def describe(exc: BaseException) -> str:
    """``ValueError('x') at channels/layers.py:123 in get_capacity``."""
    text = f"{type(exc).__name__}({str(exc)!r})"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" at {last.filename}:{last.lineno} in {last.name}"
    return text


class Unresponsive(Exception):
    """A layer call ran out of time and then ignored being cancelled."""


async def bounded(awaitable: Awaitable[T], within: float) -> T:
    """Like ``asyncio.wait_for``, but never waits unboundedly for a cancelled call to end.

    Raises TimeoutError if the call was cancelled in time, Unresponsive if not. A call
    that completes despite being cancelled returns its result: for ``receive`` that
    message has been taken, and dropping it here would look like the layer lost it.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=within)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
            if not done:
                raise Unresponsive(
                    f"did not return within {within}s, and was still running "
                    f"{CANCEL_GRACE}s after being cancelled"
                )
            if task.cancelled():
                raise TimeoutError
    except asyncio.CancelledError:
        task.cancel()
        raise
    return task.result()


def _fail(text: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(text, pytrace=True)


class _Problem:
    """Why an awaited layer call did not give a result; failing outside the ``except``
    block keeps the report to one line instead of a chain of tracebacks."""

    def __init__(self, text: str) -> None:
        self.text = text


async def _settle(awaitable: Awaitable[T], within: float) -> T | _Problem:
    try:
        return await bounded(awaitable, within)
    except TimeoutError:
        return _Problem(f"did not return within {within}s")
    except Unresponsive as exc:
        return _Problem(str(exc))
    except Exception as exc:
        return _Problem(f"raised {describe(exc)}")


async def call(awaitable: Awaitable[T], what: str, within: float = OP_TIMEOUT) -> T:
    """Await a layer call that must succeed promptly."""
    __tracebackhide__ = True
    outcome = await _settle(awaitable, within)
    if isinstance(outcome, _Problem):
        _fail(f"{what} {outcome.text}")
    return outcome


async def receive(layer: Any, channel: str, what: str = "", within: float = RECEIVE_TIMEOUT) -> Any:
    """Receive a message that must arrive."""
    __tracebackhide__ = True
    outcome = await _settle(layer.receive(channel), within)
    if isinstance(outcome, _Problem):
        _fail(f"{what or f'receive({channel!r})'} {outcome.text}")
    return outcome


async def receive_or_none(layer: Any, channel: str, wait: float = QUIET_WAIT) -> Any:
    """Receive if a message arrives within ``wait``; ``None`` if the channel stays quiet."""
    __tracebackhide__ = True
    try:
        return await bounded(layer.receive(channel), wait)
    except TimeoutError:
        return None
    except Unresponsive as exc:
        problem = str(exc)
    except Exception as exc:
        problem = f"raised {describe(exc)}"
    _fail(f"receive({channel!r}) {problem}")


async def assert_quiet(layer: Any, channel: str, why: str, wait: float = QUIET_WAIT) -> None:
    """Fail if a message arrives on ``channel`` within ``wait``."""
    __tracebackhide__ = True
    got = await receive_or_none(layer, channel, wait)
    if got is not None:
        _fail(f"{why}, but receive({channel!r}) returned {got!r}")


async def assert_all_quiet(
    checks: Iterable[tuple[Any, str]], why: str, wait: float = QUIET_WAIT
) -> None:
    """``assert_quiet`` for many channels at once, so the waits overlap."""
    __tracebackhide__ = True
    await asyncio.gather(*(assert_quiet(layer, channel, why, wait) for layer, channel in checks))


async def expect_error(
    expected: type[BaseException],
    awaitable: Awaitable[Any],
    what: str,
    within: float = OP_TIMEOUT,
) -> BaseException:
    """Await a call that the contract says must raise ``expected``; return the exception."""
    __tracebackhide__ = True
    try:
        result = await bounded(awaitable, within)
    except expected as exc:
        return exc
    except TimeoutError:
        problem = f"did not return within {within}s"
    except Unresponsive as exc:
        problem = str(exc)
    except Exception as exc:
        problem = f"raised {describe(exc)}"
    else:
        problem = f"returned {result!r}"
    _fail(f"{what} {problem}; the contract requires {expected.__name__}")


async def drain(layers: Sequence[Any], channel: str, wait: float = QUIET_WAIT) -> list[Any]:
    """Collect everything still receivable on ``channel`` through any of ``layers``.

    A layer may buffer a message it has taken off the server in the instance that took
    it, so each instance is drained until none of them yields anything.
    """
    __tracebackhide__ = True
    collected: list[Any] = []
    while True:
        found = False
        for layer in layers:
            while (got := await receive_or_none(layer, channel, wait)) is not None:
                collected.append(got)
                found = True
        if not found:
            return collected


def assert_exactly_once(
    received: Iterable[Any], expected: Iterable[int], context: str = ""
) -> None:
    """Every expected message number was received once: none lost, none twice."""
    __tracebackhide__ = True
    counts = Counter(m["n"] if isinstance(m, dict) else m for m in received)
    wanted = set(expected)
    lost = sorted(n for n in wanted if counts[n] == 0)
    twice = sorted(n for n, c in counts.items() if c > 1)
    stray = sorted(str(n) for n in counts if n not in wanted)
    problems = []
    if lost:
        problems.append(f"{len(lost)} lost (e.g. {lost[:10]})")
    if twice:
        problems.append(f"{len(twice)} delivered more than once (e.g. {twice[:10]})")
    if stray:
        problems.append(f"{len(stray)} never sent (e.g. {stray[:10]})")
    if problems:
        _fail(
            f"of {len(wanted)} messages: "
            + "; ".join(problems)
            + (f" ({context})" if context else "")
        )


def require_method(layer: Any, name: str, extension: str) -> Any:
    __tracebackhide__ = True
    method = getattr(layer, name, None)
    if not callable(method):
        _fail(
            f"{type(layer).__name__} has no {name}(); the contract requires the "
            f"{extension!r} extension"
        )
    return method
