"""What travels in an AMQP message body: a kind byte, a deadline, and for group messages
and membership changes the group's name, ahead of the payload.

The deadline is wall-clock time (seconds since the epoch) because sender and receiver are
different processes: the message's expiry for a message, the membership's for a
``group_add``. RabbitMQ drops expired messages itself (``x-message-ttl``); the deadline
lets a receiver file what it takes with the time it has left.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MESSAGE = b"m"  # to one channel's queue
GROUP = b"g"  # a group_send, to a member's queue or an instance's inbox
ADD = b"a"  # to an instance's inbox: its channel joined a group
DISCARD = b"d"  # to an instance's inbox: its channel left a group
QUEUE = b"q"  # to an instance's inbox: its channel has a queue (direct sends wait there)

_HEAD = struct.Struct(">cd")


class Envelope(NamedTuple):
    kind: bytes
    deadline: float
    group: str
    rest: bytes  # the payload, or for ADD/DISCARD the channel's name


def pack(kind: bytes, deadline: float, payload: bytes, group: str = "") -> bytes:
    head = _HEAD.pack(kind, deadline)
    if kind == MESSAGE:
        return head + payload
    name = group.encode()
    return head + bytes((len(name),)) + name + payload


def unpack(body: bytes) -> Envelope:
    """Raises ValueError for a body no layer of ours wrote."""
    if len(body) < _HEAD.size:
        raise ValueError("too short")
    kind, deadline = _HEAD.unpack_from(body)
    if kind == MESSAGE:
        return Envelope(kind, deadline, "", body[_HEAD.size :])
    if kind not in (GROUP, ADD, DISCARD, QUEUE) or len(body) <= _HEAD.size:
        raise ValueError(f"unknown kind {kind!r}")
    size = body[_HEAD.size]
    start = _HEAD.size + 1
    if len(body) < start + size:
        raise ValueError("truncated group name")
    group = body[start : start + size].decode()
    return Envelope(kind, deadline, group, body[start + size :])
