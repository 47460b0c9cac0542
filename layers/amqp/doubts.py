"""Deliveries handed out before the broker confirmed their acks, for queues only this
instance consumes (its inbox, its process-local channels' queues).

Those queues have one consumer, so the layer need not wait for its acks to settle before
handing out what it took: it writes the acks, hands the messages out at once, and sends a
barrier (``basic.qos``) behind the acks. When the barrier answers, the broker has handled
the acks and the messages are settled. If the connection goes first, the broker may or may
not have handled them: if it did not, it delivers those messages again, marked
``redelivered``, to this same instance (nobody else consumes these queues), and the ledger
recognises them and drops them. Nothing is delivered twice, and nothing acknowledged is
lost on the way, whichever side of the acks the connection went.

A message is recognised by its body, which carries its wall-clock deadline: two messages
are confused only if they carry the same payload and were sent in the same instant, and
then one of them is lost, never duplicated. Entries go once their deadline has passed
(the broker would have dropped the message by then).
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter


class Doubts:
    """Shared by every event loop of one layer instance (the duty that consumes its
    queues can move between loops, and a redelivery reaches whichever holds it)."""

    def __init__(self) -> None:
        # Batches whose barrier has not answered yet, by token.
        self._pending: dict[int, list[tuple[bytes, float]]] = {}
        self._next = 0
        # Bodies whose barrier failed (their channel closed), with their deadlines.
        self._orphans: Counter[bytes] = Counter()
        self._deadlines: list[tuple[float, int, bytes]] = []
        self._lock = threading.Lock()

    def hold(self, entries: list[tuple[bytes, float]]) -> int:
        """Record a batch handed out whose acks are not confirmed yet (bodies with their
        deadlines, wall clock); a token for :meth:`settle` or :meth:`orphan`."""
        with self._lock:
            self._next += 1
            self._pending[self._next] = entries
            return self._next

    def settle(self, token: int) -> None:
        """The broker handled the batch's acks: none of it can come again."""
        with self._lock:
            self._pending.pop(token, None)

    def orphan(self, token: int) -> None:
        """The batch's barrier failed: some of it may come again, until its deadline."""
        with self._lock:
            for body, deadline in self._pending.pop(token, ()):
                self._orphans[body] += 1
                self._next += 1
                heapq.heappush(self._deadlines, (deadline, self._next, body))

    def redelivered(self, body: bytes, now: float) -> bool:
        """Whether a redelivered ``body`` was handed out already (it is then forgotten:
        one redelivery answers one doubt). ``now`` is wall clock."""
        with self._lock:
            self._expire(now)
            if self._orphans[body] > 0:
                self._take(body)
                return True
            self._orphans.pop(body, None)
            for token, entries in self._pending.items():
                for index, (held, _) in enumerate(entries):
                    if held == body:
                        self._pending[token] = entries[:index] + entries[index + 1 :]
                        return True
            return False

    def __len__(self) -> int:
        with self._lock:
            return self._orphans.total() + sum(map(len, self._pending.values()))

    def _take(self, body: bytes) -> None:
        left = self._orphans[body] - 1
        if left > 0:
            self._orphans[body] = left
        else:
            del self._orphans[body]

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, body = heapq.heappop(deadlines)
            if self._orphans[body] > 0:
                self._take(body)
            else:
                self._orphans.pop(body, None)
