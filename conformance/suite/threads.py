"""One instance called from many threads at once, as Django views and Celery tasks do
through ``async_to_sync``, each thread with an event loop of its own.

Synchronous on purpose, like the event-loop checks: every layer call runs in a fresh loop
on its own thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from conformance.constants import BULK_CAPACITY, THREAD_ROUNDS, THREADS, WORKLOAD_TIMEOUT
from conformance.suite.base import LayerFactory
from conformance.suite.helpers import Names, describe, message
from conformance.suite.loops import in_new_loop


class ThreadChecks:
    def test_threads_share_one_instance(self, make_sync_layer: LayerFactory, names: Names) -> None:
        # Capacity out of the way: this row is about threads, not about full channels.
        layer = make_sync_layer(capacity=BULK_CAPACITY)
        group = names.group("threads")
        start = threading.Barrier(THREADS)
        problems: list[str] = []
        group_received: dict[int, list[Any]] = {}

        def worker(index: int) -> None:
            try:
                plain = names.channel(f"thread{index}")
                local = in_new_loop("new_channel", layer.new_channel)
                in_new_loop("group_add", layer.group_add, group, local)
                start.wait(WORKLOAD_TIMEOUT)
                for n in range(THREAD_ROUNDS):
                    sent = message(n, thread=index)
                    in_new_loop("send", layer.send, plain, sent)
                    got = in_new_loop(f"receive({plain!r})", layer.receive, plain)
                    if got != sent:
                        problems.append(f"thread {index} sent {sent!r} and received {got!r}")
                        return
                    in_new_loop("group_send", layer.group_send, group, message(n, thread=index))
                # Every thread's group sends reach every member, this thread's included.
                group_received[index] = [
                    in_new_loop(f"receive({local!r}) of a group message", layer.receive, local)
                    for _ in range(THREADS * THREAD_ROUNDS)
                ]
            except BaseException as exc:  # pytest.fail raises a BaseException
                problems.append(f"thread {index}: {describe(exc)}")

        # Daemons, so a hung layer call fails the test instead of the interpreter's exit.
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WORKLOAD_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = sum(thread.is_alive() for thread in threads)
        if problems:
            pytest.fail(f"{THREADS} threads on one instance: {problems[0]}")
        if hung:
            pytest.fail(f"{hung} of {THREADS} threads had not finished after {WORKLOAD_TIMEOUT}s")
        expected = sorted((i, n) for i in range(THREADS) for n in range(THREAD_ROUNDS))
        for index, got in sorted(group_received.items()):
            seen = sorted((m.get("thread"), m.get("n")) for m in got)
            assert seen == expected, (
                f"thread {index}'s group member received {len(got)} group messages, not each "
                f"of the {len(expected)} sent once: {_difference(seen, expected)}"
            )


def _difference(seen: list[Any], expected: list[Any]) -> str:
    missing = [item for item in expected if item not in seen]
    extra = [item for item in seen if item not in expected or seen.count(item) > 1]
    return f"missing {missing[:5]}, unexpected or repeated {sorted(set(extra))[:5]}"
