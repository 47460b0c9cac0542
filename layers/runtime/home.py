"""A layer instance's own long-lived event loop, for calls from loops that live for one call.

``async_to_sync`` (a Django view under WSGI, a Celery task, a script) runs every call in a
new event loop on a new thread and closes that loop when the call returns. Connections
belong to the loop that opened them, so a layer serving such a call from that loop opens
its connections (connect, authenticate, load scripts, open AMQP channels), uses them once
and closes them: most of what a sync ``group_send`` cost.

So each layer instance keeps one *home* loop on a daemon thread of its own, started on the
first such call. A call made from a loop that ``async_to_sync`` made is handed to the home
loop (:meth:`Home.run`, through ``run_coroutine_threadsafe``) and its caller waits for the
result in its own loop; the home loop's connections serve the next call. Calls from any
other loop (a server's loop, ``asyncio.run`` in a script, the home loop itself) run where
they are, as before: handing them over would only add a thread switch.

Thread ownership:

- the home loop's thread runs only the layer coroutines handed to it, and never waits for
  another loop or thread, so any thread may wait for it (:meth:`Home.close` does);
- :class:`Home`'s bookkeeping (which loop is current, calls in flight, when it was last
  used) is shared by every caller thread and the home thread, behind ``Home._lock``, never
  held across an await;
- what the loop owns (connections, tasks) is made and closed only in the home thread: the
  loop ends the way ``asyncio.run`` ends one (remaining tasks cancelled, then ``close()``,
  where the layer's per-loop state closes its connections, see
  :func:`layers.runtime.loops.close_with_loop`).

A home loop ends when the layer is closed, after ``idle`` seconds without a call handed to
it, or with the process (at exit it is given a moment to close its connections politely).
A call that arrives as it ends starts a new one; a loop never ends with a call in flight. A
forked child starts its own and never touches its parent's (its connections included).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from asgiref.sync import AsyncToSync

logger = logging.getLogger("layers")

T = TypeVar("T")

#: The loops ``async_to_sync`` made and will close when their one call returns (asgiref
#: keeps them there, each while it runs). Without it, nothing is handed over.
_ONE_CALL_LOOPS: dict[asyncio.AbstractEventLoop, Any] = getattr(
    AsyncToSync, "loop_thread_executors", {}
)

#: Seconds the process's exit waits, in all, for home loops to close their connections.
_EXIT_GRACE = 2.0


def one_call_loop() -> bool:
    """True when the running loop is one ``async_to_sync`` made for a single call."""
    return asyncio.get_running_loop() in _ONE_CALL_LOOPS


class _Run:
    """One home loop and its thread, from start to end."""

    def __init__(self, home: Home) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        # Guarded by home._lock.
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.ending = False
        # Made here, used only in the home loop (an Event binds to a loop on first use).
        self.wake = asyncio.Event()
        #: Set by the home thread once the loop is closed.
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._home = home
        self.thread = threading.Thread(
            target=self._main, name=f"layers home loop {home.name}", daemon=True
        )

    def _main(self) -> None:
        # asyncio.Runner ends the loop as asyncio.run does: tasks still running (a
        # janitor) are cancelled, then loop.close() runs the per-loop cleanups.
        try:
            with asyncio.Runner(loop_factory=lambda: self.loop) as runner:
                runner.run(self._serve())
        except BaseException:
            logger.exception("the home loop of %s failed", self._home.name)
        finally:
            self.done.set_result(None)

    async def _serve(self) -> None:
        """Wait, in the home loop, until the loop may end: closed or idle, nothing in
        flight. Marked ending under the lock, so no call is handed over after that."""
        home = self._home
        while True:
            # Every wake.set() runs in this thread too, so none falls between here and the
            # wait below.
            self.wake.clear()
            with home._lock:
                if self.in_flight == 0:
                    idle_for = time.monotonic() - self.last_used
                    if self.ending or idle_for >= home.idle:
                        self.ending = True
                        return
                    timeout: float | None = home.idle - idle_for
                else:
                    timeout = None  # woken when the last call in flight ends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    async def track(self, work: Coroutine[Any, Any, T]) -> T:
        """Runs in the home loop: ``work``, counted in flight until it ends."""
        home = self._home
        try:
            return await work
        finally:
            with home._lock:
                self.in_flight -= 1
                self.last_used = time.monotonic()
                last = self.in_flight == 0
            if last:
                self.wake.set()

    def end_soon(self) -> None:
        """From any thread: let the loop end once nothing is in flight."""
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.wake.set)


_runs: weakref.WeakSet[_Run] = weakref.WeakSet()
_homes: weakref.WeakSet[Home] = weakref.WeakSet()


class Home:
    """The home loop of one layer instance (see the module docstring)."""

    def __init__(self, name: str, idle: float = 60.0) -> None:
        self.name = name
        self.idle = idle
        self._lock = threading.Lock()
        self._run: _Run | None = None
        _homes.add(self)

    def _forget(self) -> None:
        """In a forked child: the parent's loop has no thread here, and the lock may have
        been held by a thread that is not here either."""
        self._lock = threading.Lock()
        self._run = None

    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The current home loop, if one runs in this process."""
        run = self._run
        return run.loop if run is not None and run.pid == os.getpid() else None

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` in the home loop and wait for it here. Cancelling the wait cancels
        ``work`` (as cancelling an awaited coroutine would, a moment later)."""
        try:
            future = self._submit(work)
        except BaseException:
            work.close()
            raise
        return await asyncio.wrap_future(future)

    def _submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        start = None
        with self._lock:
            run = self._run
            if run is None or run.ending or run.pid != os.getpid():
                # After a fork the parent's loop has no thread here: never touch it.
                run = start = self._run = _Run(self)
                _runs.add(run)
            run.in_flight += 1
            run.last_used = time.monotonic()
        if start is not None:
            start.thread.start()
        # Outside the lock: the loop cannot end while this call counts as in flight.
        return asyncio.run_coroutine_threadsafe(run.track(work), run.loop)

    async def close(self) -> None:
        """End the home loop once the calls in flight are done, its connections closed in
        it; a later call starts a new one."""
        with self._lock:
            run, self._run = self._run, None
            if run is None or run.pid != os.getpid():
                return
            run.ending = True
        run.end_soon()
        if asyncio.get_running_loop() is not run.loop:
            await asyncio.wrap_future(run.done)


@atexit.register
def _end_all() -> None:
    """Let home loops close their connections (an AMQP broker logs a dropped one)."""
    runs = [run for run in list(_runs) if run.pid == os.getpid() and run.thread.is_alive()]
    for run in runs:
        with run._home._lock:
            run.ending = True
        run.end_soon()
    deadline = time.monotonic() + _EXIT_GRACE
    for run in runs:
        try:
            run.done.result(max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            return


def _after_fork() -> None:
    for home in list(_homes):
        home._forget()
    _runs.clear()


os.register_at_fork(after_in_child=_after_fork)
