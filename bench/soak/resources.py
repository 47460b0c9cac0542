"""A process's memory and its sockets to one server port, read from ``/proc`` (Linux).

The parent reads these for its workers from outside, so the measurement costs the workers
nothing and sees exactly what the kernel charges them: resident memory (``VmRSS``) and
every TCP socket they hold to the server's port, in any state (a socket left in
CLOSE_WAIT after the server closed its end is a leak too).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

# /proc/net/tcp's "st" column (include/net/tcp_states.h).
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass
class Sample:
    """One reading of one process; ``rss_mb`` None when the process is gone."""

    rss_mb: float | None
    connections: int | None
    states: dict[str, int] = field(default_factory=dict)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed between the listing and the read
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def sockets_to(pid: int, ports: frozenset[int]) -> Counter[str]:
    """States of the TCP sockets ``pid`` holds whose remote port is one of ``ports``."""
    inodes = _socket_inodes(pid)
    states: Counter[str] = Counter()
    if not inodes or not ports:
        return states
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as rows:
                next(rows, None)  # the header
                for row in rows:
                    cols = row.split()
                    if len(cols) < 10 or cols[9] not in inodes:
                        continue
                    if int(cols[2].rsplit(":", 1)[1], 16) in ports:
                        states[TCP_STATES.get(cols[3], cols[3])] += 1
        except OSError:
            continue
    return states


def sample(pid: int, ports: frozenset[int] | None) -> Sample:
    """Memory and, when the server's ports are known, the sockets to them."""
    if ports is None:
        return Sample(rss_mb(pid), None)
    states = sockets_to(pid, ports)
    return Sample(rss_mb(pid), sum(states.values()), dict(states))
