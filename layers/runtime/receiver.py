"""The receive loop: one task per (event loop, source) fetching into the layer's buffer.

Receivers never talk to the server themselves. A receive registers with the loop of every
source that can bring its channels' messages and waits on the layer's in-process buffer
(:class:`layers.queues.LocalQueues`); the loop fetches while receivers wait and files what
it fetches there. So:

- cancelling a receive never loses a message: what a fetch brings back lands in the buffer
  (or goes back to the server, see below), where the next receive finds it;
- all receivers of one event loop on the same source share one fetch at a time;
- a *draining* source (an instance's own process-local channels, which nobody else may
  read) fetches up to ``batch`` entries at once and keeps running ``linger`` seconds after
  its last receiver left, so thousands of local channels cost one fetch per burst;
- an ordinary source fetches at most as many messages as receivers wait (plus
  ``prefetch``), so one process does not hoard messages others could serve, and gives back
  to the server whatever a fetch brought once nobody waits for it any more.

When the last receiver leaves while a fetch is blocked, the layer interrupts that fetch
(:meth:`Source.interrupt`); where a server does not allow that, the fetch runs out by
itself and what it takes is given back.

Failures: a source that cannot reach its server, or whose server refuses the fetch, is
retried with backoff; one failing for ``retry_timeout`` seconds hands the error to every
receiver waiting on it (they raise it), and keeps trying for receivers that come later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from layers.errors import BackendUnavailable, LayerError
from layers.runtime.loops import Turn

logger = logging.getLogger("layers")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class Fetched(NamedTuple):
    """One message taken off a server, for one or more channels of this instance."""

    channels: Sequence[str]
    payload: bytes
    #: On this process's monotonic clock.
    expires_at: float
    #: The backend's handle for giving the message back (its raw entry, its queue...).
    origin: Any = None


class Source(Protocol):
    """Where one receive loop fetches from: the transport's part of receiving."""

    #: The server's address, for logs and errors.
    address: str
    #: True for an instance's own process-local channels: batch, linger, never give back.
    drain: bool

    async def fetch(self, count: int) -> list[Fetched]:
        """Wait (for a bounded time of the source's choosing) and take up to ``count``
        messages; an empty list when none came. Cancelling it may lose what it was taking
        (at most once), never duplicates it."""

    async def interrupt(self) -> bool:
        """End a fetch blocked right now so it takes nothing; True if nothing is blocked
        any more, False if the server does not allow it (the fetch runs out by itself)."""

    async def give_back(self, items: list[Fetched]) -> None:
        """Return messages fetched for nobody to the head of their queues, in order."""

    def release(self) -> None:
        """Its receive loop stopped: let go of what only a running loop needs (consumers
        the server pushes to). Called synchronously, in the loop's last step."""


Filer = Callable[[list[Fetched], bool], None]
Failures = dict["asyncio.Task[Any]", BaseException]


class ReceiveLoop:
    def __init__(
        self,
        source: Source,
        *,
        batch: int,
        prefetch: int,
        linger: float,
        retry_timeout: float,
        file: Filer,
        failures: Failures,
        on_exit: Callable[[ReceiveLoop], None],
        turn: Turn | None = None,
    ) -> None:
        self.source = source
        self.drain = source.drain
        self._batch = batch
        self._prefetch = 0 if source.drain else prefetch
        self._linger = linger
        self._retry_timeout = retry_timeout
        self._file = file
        self._failures = failures
        self._on_exit = on_exit
        # Shared with the receive loops of other event loops on the same queue.
        self._turn = turn
        self._holding = False
        self.receivers: set[asyncio.Task[Any]] = set()
        self._last_receiver = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._fetching = False

    # -- receivers -------------------------------------------------------------------------

    def add(self, task: asyncio.Task[Any]) -> None:
        self.receivers.add(task)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, task: asyncio.Task[Any]) -> bool:
        """Forget a receiver; True if a fetch is now blocked for nobody (to interrupt)."""
        self.receivers.discard(task)
        if self.receivers:
            return False
        self._last_receiver = time.monotonic()
        return self._fetching and not self.drain

    def hand_over(self, error: BaseException) -> None:
        """Make every waiting receiver raise ``error`` (or, for ``REOPEN``, start again)."""
        for task in list(self.receivers):
            if task in self._failures:
                continue
            self._failures[task] = error
            if not task.cancel():
                del self._failures[task]

    # -- the loop --------------------------------------------------------------------------

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def abandon(self) -> None:
        """Its event loop closed under it: let the other loops take their turns."""
        if self._holding and self._turn is not None:
            self._holding = False
            self._turn.release()

    def _wanted(self) -> bool:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled, but a library swallowed it on the way.
            return False
        if self.receivers:
            return True
        return self.drain and time.monotonic() - self._last_receiver < self._linger

    def _count(self) -> int:
        if self.drain:
            return self._batch
        return max(1, min(len(self.receivers) + self._prefetch, self._batch))

    async def _run(self) -> None:
        failing_since: float | None = None
        backoff = _FIRST_BACKOFF
        address = self.source.address
        try:
            while self._wanted():
                started = time.monotonic()
                turn = self._turn
                if turn is not None:
                    await turn.acquire()
                    self._holding = True
                self._fetching = True
                try:
                    items = await self.source.fetch(self._count())
                    if items:
                        await self._place(items)
                except LayerError as exc:
                    failing_since = failing_since or started
                    if time.monotonic() - failing_since >= self._retry_timeout:
                        self.hand_over(exc)
                    logger.debug("receive loop on %s: %s", address, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                finally:
                    self._fetching = False
                    if turn is not None:
                        self._holding = False
                        turn.release()
                failing_since, backoff = None, _FIRST_BACKOFF
                if items:
                    # Let the receivers just woken take their messages (and leave) before
                    # counting who still waits, or the next fetch would be for nobody.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("receive loop on %s stopped", address)
            self.hand_over(BackendUnavailable(address, "receive loop failed"))
        finally:
            self._task = None
            self.source.release()
            self._on_exit(self)

    async def _place(self, items: list[Fetched]) -> None:
        if self.drain:
            self._file(items, True)
            return
        keep = len(self.receivers) + self._prefetch
        # Filed before anything is awaited, so a cancel cannot strand them.
        self._file(items[:keep], False)
        if keep < len(items):
            # Receivers left while the fetch was under way: what they will not take goes
            # back to the server for other processes, rather than waiting here.
            spare = items[keep:]
            try:
                await asyncio.shield(self.source.give_back(spare))
            except LayerError as exc:
                logger.warning("%d message(s) fetched for nobody were lost: %s", len(spare), exc)
