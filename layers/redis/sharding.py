"""Which shard a channel or group lives on.

``shard_index(name, n)`` is Lamping and Veach's *jump consistent hash* ("A Fast, Minimal
Memory, Consistent Hash Algorithm", 2014) of the first 8 bytes of ``blake2b(name)``. The
name hashed is a channel's non-local part (``specific.abc123!`` for every process-local
channel of one instance, so direct sends and group sends reach the list its owner reads) or
a group's name (its member set lives there).

The hash depends only on the name and the number of hosts, never on the process, so every
instance of every project configured with the same ``hosts`` list agrees. Growing the list
from ``n`` to ``n + 1`` hosts moves about ``1 / (n + 1)`` of the names, all of them to the
new last host; nothing moves between the old hosts. Messages and group memberships of moved
names stay behind on the old shard, unread until they expire: drain or ``flush()`` before
resizing, and append new hosts at the end (reordering the list remaps everything).
"""

from __future__ import annotations

import hashlib

_MULTIPLIER = 2862933555777941757
_MASK = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _MULTIPLIER + 1) & _MASK
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_index(name: str, buckets: int) -> int:
    if buckets == 1:
        return 0
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), buckets)
