"""Count a soak run exactly from what the workers report: every message each sender sent,
against every receipt of it anywhere, with a cause for each loss where one can be told.

A loss is put down to, in this order:

- ``capacity``: it was for a ``tight`` group member, which reads slower than it is sent to
  (a ``group_send`` skips a full member, as the contract says);
- ``expiry``: it was for the ``lag`` channel and its expiry time fell while that channel's
  reader paused;
- ``fault``: it was sent in a fault window, from a second before the fault until the last
  path had delivered again (or the end, if one never did);
- ``unexplained``: none of these; at-most-once does not allow it.

Churning group members count a message as due only when the member was certainly in the
group for the whole ``group_send`` call (its last ``group_add`` had returned before the
call and no ``group_discard`` overlapped it); a message it got while certainly out of the
group is a stray. ``ChannelFull`` at the sender is counted, not lost; a send that raised
anything else may or may not have been delivered, so it is never lost either.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from typing import Any

from bench.soak.plan import BUCKET, ERROR, FAST_PATHS, FULL, OK, PENDING, SoakParams

Info = dict[str, Any]
#: A fault window starts this long before the fault: what was taken off the server just
#: before a connection dropped may be lost with it.
WINDOW_BEFORE = 1.0
#: ...and ends this long after the last path delivered again.
WINDOW_AFTER = 0.5
#: Slack around a pause of the lag reader when a loss is put down to expiry.
PAUSE_SLACK = 0.5
IN, OUT, MAYBE = "in", "out", "maybe"
#: A fault must end this long before the senders stop for its recovery to be measured.
MEASURABLE = 1.0
CAUSES = ("expiry", "capacity", "fault", "unexplained")


def recoveries(
    nodes: list[Info], faults: list[Info], t0: float, t_end: float
) -> list[dict[str, float | None]]:
    """Per fault, per ``path@node``: seconds from the fault's end to the first delivery of
    a message sent after it (None: nothing sent after it arrived). A fault that ended
    too close to the end of the sends to tell gets no figures (an empty dict)."""
    out: list[dict[str, float | None]] = []
    for fault in faults:
        end = fault["end"]
        if end > t_end - MEASURABLE:
            out.append({})
            continue
        first_slot = max(0, math.ceil((end - t0) / BUCKET))
        per_path: dict[str, float | None] = {}
        for node in nodes:
            for path, series in node["series"].items():
                if path not in FAST_PATHS:
                    continue
                later = [t for t in series["first"][first_slot:] if t != math.inf]
                per_path[f"{path}@{node['node']}"] = min(later) - end if later else None
        out.append(per_path)
    return out


def fault_windows(
    faults: list[Info], recovered: list[dict[str, float | None]], run_end: float
) -> list[tuple[float, float]]:
    windows = []
    for fault, per_path in zip(faults, recovered, strict=True):
        if not per_path or any(r is None for r in per_path.values()):
            until = run_end
        else:
            until = max([fault["end"], *(fault["end"] + r for r in per_path.values() if r)])
        windows.append((fault["start"] - WINDOW_BEFORE, until + WINDOW_AFTER))
    return windows


class Membership:
    """Whether a churning member was certainly in, certainly out, or maybe in its group
    during a call, from its (called, returned, op, ok) events."""

    def __init__(self, events: list[tuple[float, float, str, bool]], stable: bool) -> None:
        self.stable = stable
        self.events = sorted(events)
        self.ends = [e[1] for e in self.events]
        self.starts = [e[0] for e in self.events]

    def during(self, start: float, end: float) -> str:
        if self.stable:
            return IN
        # A call that overlaps [start, end] leaves it undecided. A member's calls come one
        # after another, so only the last one to start before ``end`` can overlap.
        before_end = bisect.bisect_right(self.starts, end)
        if before_end and self.events[before_end - 1][1] >= start:
            return MAYBE
        done = bisect.bisect_left(self.ends, start)
        if done == 0:
            return OUT  # a churning member starts outside its group
        _, _, op, ok = self.events[done - 1]
        if not ok:
            return MAYBE
        return IN if op == "add" else OUT


def _count(seen: list[bytes], seq: int) -> int:
    return sum(counts[seq] for counts in seen if seq < len(counts))


def tally(
    nodes: list[Info],
    faults: list[Info],
    params: SoakParams,
    t0: float,
    t_end: float,
    run_end: float,
) -> Info:
    recovered = recoveries(nodes, faults, t0, t_end)
    windows = fault_windows(faults, recovered, run_end)
    pauses = sorted(pause for node in nodes for pause in node["pauses"])
    c: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    doubled: Counter[str] = Counter()  # duplicates by path
    by_path: dict[str, Counter[str]] = {}  # losses by path, by cause

    def cause(path: str, dest: str, sent_at: float) -> str:
        found = _cause(path, dest, sent_at)
        by_path.setdefault(path, Counter())[found] += 1
        return found

    def _cause(path: str, dest: str, sent_at: float) -> str:
        if path == "tight-member":
            return "capacity"
        due = sent_at + params.expiry
        if dest == "lag" and any(a - PAUSE_SLACK <= due <= b + PAUSE_SLACK for a, b in pauses):
            return "expiry"
        if any(a <= sent_at <= b for a, b in windows):
            return "fault"
        return "unexplained"

    books = [book for node in nodes for book in node["books"]]
    by_dest: dict[str, list[Info]] = {}
    for book in books:
        by_dest.setdefault(book["dest"], []).append(book)
    for node in nodes:
        sender = node["node"]
        for dest, data in node["sent"].items():
            status, times, ends = data["status"], data["times"], data["ends"]
            targets = by_dest.get(dest, [])
            if dest.startswith("g"):
                c["group_sends"] += len(status)
                receivers = [
                    (b, b["seen"].get(sender, b""), Membership(b["events"], b["kind"] != "churn"))
                    for b in targets
                ]
                for seq, st in enumerate(status):
                    if st == FULL:
                        c["group_full"] += 1  # the contract says group_send never raises it
                    elif st in (ERROR, PENDING):
                        c["send_errors"] += 1
                    for book, seen, member in receivers:
                        n = seen[seq] if seq < len(seen) else 0
                        if n > 1:
                            doubled[book["path"]] += n - 1
                        state = member.during(times[seq], ends[seq]) if st == OK else MAYBE
                        if state == IN:
                            c["expected"] += 1
                            if n:
                                c["delivered"] += 1
                            else:
                                lost[cause(book["path"], dest, times[seq])] += 1
                        elif n and state == OUT:
                            c["stray"] += 1
                        elif n:
                            c["uncertain_delivered"] += 1
                continue
            seen = [b["seen"].get(sender, b"") for b in targets]
            c["sends"] += len(status)
            path = targets[0]["path"] if targets else dest
            for seq, st in enumerate(status):
                n = _count(seen, seq)
                if n > 1:
                    doubled[path] += n - 1
                if st == OK:
                    c["expected"] += 1
                    if n:
                        c["delivered"] += 1
                    else:
                        lost[cause(path, dest, times[seq])] += 1
                elif st == FULL:
                    c["channel_full"] += 1
                    c["delivered_despite_full"] += min(n, 1)
                else:
                    c["send_errors"] += 1
                    c["uncertain_delivered"] += min(n, 1)
    for node in nodes:
        for key in ("cancelled", "foreign", "misrouted", "errors"):
            c[key] += node[key]
        for series in node["series"].values():
            c["late"] += series["late"]
    c["duplicated"] = sum(doubled.values())
    churn_ops = sum(len(book["events"]) for book in books)
    longest = _longest(recovered)
    first_error = next((node["error"] for node in nodes if node["error"]), None)
    return {
        "counts": {**dict(c), "churn_ops": churn_ops},
        "lost": {cause: lost.get(cause, 0) for cause in CAUSES},
        "duplicated_by_path": dict(doubled),
        "lost_by_path": {path: dict(causes) for path, causes in by_path.items()},
        "recoveries": recovered,
        "windows": [(a - t0, b - t0) for a, b in windows],
        "longest_recovery": longest,
        "unrecovered": sum(r is None for per in recovered for r in per.values()),
        "unmeasured": sum(not per for per in recovered),
        "oldest": max(
            (s["oldest"] for n in nodes for p, s in n["series"].items() if p in FAST_PATHS),
            default=0.0,
        ),
        "first_error": first_error,
    }


def _longest(recovered: list[dict[str, float | None]]) -> Info | None:
    best: Info | None = None
    for index, per_path in enumerate(recovered):
        for where, seconds in per_path.items():
            if seconds is not None and (best is None or seconds > best["seconds"]):
                best = {"seconds": seconds, "fault": index, "path": where}
    return best


def throughput(nodes: list[Info], t0: float, step: float = 0.5) -> Info:
    """Deliveries per second by path, and layer calls (send, group_send) per second, in
    ``step``-second bins from the start: a dip in calls is the layer slow to take them,
    a dip in deliveries alone is messages late or lost."""
    per = max(1, round(step / BUCKET))
    width = per * BUCKET
    paths: dict[str, list[float]] = {}
    for node in nodes:
        for path, series in node["series"].items():
            counts = series["count"]
            bins = paths.setdefault(path, [])
            for i in range(0, len(counts), per):
                slot = i // per
                if slot >= len(bins):
                    bins.extend([0.0] * (slot + 1 - len(bins)))
                bins[slot] += sum(counts[i : i + per]) / width
    calls: list[float] = []
    for node in nodes:
        for sent in node["sent"].values():
            for at in sent["times"]:
                slot = max(0, int((at - t0) / width))
                if slot >= len(calls):
                    calls.extend([0.0] * (slot + 1 - len(calls)))
                calls[slot] += 1 / width
    size = max([len(calls), *(len(b) for b in paths.values())])
    for bins in [*paths.values(), calls]:
        bins.extend([0.0] * (size - len(bins)))
    return {"step": width, "paths": paths, "calls": calls}
