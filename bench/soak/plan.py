"""What a soak run does, as plain data that crosses the spawn boundary.

Every message names its sender node ``n``, its destination ``d`` and a sequence ``s`` that
counts up per (sender, destination), so the parent can tick off each message exactly
once in the end, wherever it was received.

Destinations (``d``) and the paths they are counted on:

- ``work``: one normal channel; every node sends, nodes 0 and 1 receive (competing, two
  tasks each). Path ``normal``.
- ``inbox<j>``: node j's process-local channel (``new_channel()``); the others send to it
  round-robin. Path ``local``.
- ``g<k>``: group k; every node holds one member that stays in it from the start
  (``stable``), one that joins and leaves at random (``churn``), and the last node one more
  with a capacity of ``tight_capacity`` that reads slowly (``tight``): what it misses is
  dropped by capacity. Path ``group`` (``tight-member`` for the slow ones).
- ``lag``: a normal channel the last node reads in bursts, pausing longer than ``expiry``:
  what expires in a pause is lost by expiry. Path ``lag``.
- ``tight``: a normal channel of ``tight_capacity`` read slowly by node 1: senders meet
  ``ChannelFull``, which is counted, not lost. Path ``tight``.
"""

from __future__ import annotations

from dataclasses import dataclass

MESSAGE_TYPE = "soak.message"
#: Width of the time buckets of the series the workers keep (throughput, recovery).
BUCKET = 0.05
#: A delivery this long past ``expiry`` counts as a late (expired) message returned.
LATE_TOLERANCE = 1.0
#: The paths a fault's recovery is measured on: those read without pauses.
FAST_PATHS = ("normal", "local", "group")
PATHS = (*FAST_PATHS, "lag", "tight", "tight-member")

# A sender's record of each message, one byte per sequence number.
PENDING, OK, FULL, ERROR = 0, 1, 2, 3


@dataclass(frozen=True)
class SoakParams:
    duration: float = 20.0
    nodes: int = 3
    rate: float = 100.0  # sends/s of each node to "work", and to the inboxes
    group_rate: float = 20.0  # group_send/s of each node, round-robin over the groups
    groups: int = 3
    expiry: float = 5.0
    warm: float = 2.0  # seconds of traffic before the start sample of memory/connections
    payload: int = 100
    lag_rate: float = 2.0  # sends/s of each node to "lag"
    lag_active: float = 2.0  # seconds the lag reader reads between pauses
    tight_rate: float = 6.0  # sends/s of each node to "tight"
    tight_capacity: int = 5
    slow_rate: float = 10.0  # receives/s of the slow (tight) readers
    drain_quiet: float = 1.5  # the drain ends after this long without a message...
    drain_max: float = 15.0  # ...or this long after the senders stopped
    send_timeout: float = 30.0  # a layer call that takes longer is abandoned (an error)

    @property
    def lag_pause(self) -> float:
        return self.expiry + 2.0


def channel_capacity(run: int, params: SoakParams) -> dict[str, int]:
    """The layer's ``channel_capacity``: small for the ``tight`` channel and members (whose
    process-local names start with ``tight.``)."""
    return {normal_channel(run, "tight"): params.tight_capacity, "tight.*": params.tight_capacity}


def normal_channel(run: int, what: str) -> str:
    return f"soak.{run:x}.{what}"


def path_of(dest: str, member_kind: str | None = None) -> str:
    if dest == "work":
        return "normal"
    if dest.startswith("inbox"):
        return "local"
    if dest.startswith("g"):
        return "tight-member" if member_kind == "tight" else "group"
    return dest  # "lag", "tight"
