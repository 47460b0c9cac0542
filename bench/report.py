"""Turn measurements into the markdown table, the JSON document and the plot."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.runner import Measurement

SCHEMA_VERSION = 1


@dataclass
class Row:
    """All repeats of one (layer, workload): medians of the rates, totals of the counts."""

    layer: str
    workload: str
    unit: str
    runs: int = 0
    failed_runs: int = 0
    rate: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    stale: int = 0
    retries: int = 0
    errors: int = 0
    notes: list[str] = field(default_factory=list)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def aggregate(runs: list[Measurement]) -> list[Row]:
    """Group runs by (layer, workload), keeping the order in which they first appear."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for run in runs:
        groups.setdefault((run.layer, run.workload), []).append(run)
    rows = []
    for (layer, workload), group in groups.items():
        ok = [m for m in group if m.error is None]
        row = Row(layer, workload, group[0].unit, runs=len(group), failed_runs=len(group) - len(ok))
        row.rate = _median([m.rate for m in ok])
        row.p50 = _median([m.p50 for m in ok])
        row.p90 = _median([m.p90 for m in ok])
        row.p99 = _median([m.p99 for m in ok])
        for m in ok:
            row.expected += m.expected
            row.delivered += m.delivered
            row.lost += m.lost
            row.duplicated += m.duplicated
            row.stale += m.stale
            row.retries += m.retries
            row.errors += m.errors
        errors = sorted({f"{m.stage or 'run'} failed: {m.error}" for m in group if m.error})
        if errors and ok:
            row.notes.append(f"{row.failed_runs} of {row.runs} runs failed")
        row.notes.extend(errors)
        if row.errors:
            first = next(m.extra["first_error"] for m in ok if "first_error" in m.extra)
            row.notes.append(f"layer raised {row.errors} errors, first: {first}")
        if row.stale:
            row.notes.append(f"{row.stale} stale/foreign messages ignored")
        if ok and row.delivered == 0:
            row.notes.append("nothing delivered (an in-process layer needs --in-process)")
        rows.append(row)
    return rows


def has_duplicates(rows: list[Row]) -> bool:
    return any(row.duplicated for row in rows)


def has_errors(rows: list[Row]) -> bool:
    return any(row.failed_runs for row in rows)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


LOCAL_TARGETS_NOTE = (
    "--local-targets: every channel a workload receives on is process-local, made by its "
    "receiver with new_channel(); the warm-up used process-local channels only."
)


def markdown(rows: list[Row], local_targets: bool = False) -> str:
    """The table; with ``local_targets`` a line above it says how the run was made."""
    header = (
        "| layer | workload | rate | p50 ms | p90 ms | p99 ms | lost | duplicated "
        "| full retries | notes |"
    )
    lines = [LOCAL_TARGETS_NOTE, ""] if local_targets else []
    lines += [header, "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        rate = "-" if r.rate is None else f"{r.rate:,.0f} {r.unit}"
        counted = r.runs > r.failed_runs
        lost, dup, retries = (
            (f"{r.lost:,}", f"{r.duplicated:,}", f"{r.retries:,}") if counted else ("-",) * 3
        )
        notes = "; ".join(n.replace("|", "/") for n in r.notes)
        lines.append(
            f"| {r.layer} | {r.workload} | {rate} | {_num(r.p50, 3)} | {_num(r.p90, 3)} "
            f"| {_num(r.p99, 3)} | {lost} | {dup} | {retries} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def json_document(rows: list[Row], runs: list[Measurement], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        **meta,
        "results": [asdict(row) for row in rows],
        "runs": [asdict(run) for run in runs],
    }


def plot(rows: list[Row], path: Path) -> None:
    """Rates (log scale) and latency percentiles per workload, one bar per layer."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'channel-layers[plot]'") from None
    layers = list(dict.fromkeys(r.layer for r in rows))
    workloads = list(dict.fromkeys(r.workload for r in rows))
    by_key = {(r.layer, r.workload): r for r in rows}
    width = 0.8 / max(1, len(layers))
    fig, (ax_rate, ax_lat) = plt.subplots(2, 1, figsize=(max(8, 2 * len(workloads)), 9))
    for i, layer in enumerate(layers):
        xs = [w + (i - (len(layers) - 1) / 2) * width for w in range(len(workloads))]
        picked = [by_key.get((layer, w)) for w in workloads]
        rates = [r.rate if r and r.rate else 0.0 for r in picked]
        p50 = [r.p50 if r and r.p50 is not None else 0.0 for r in picked]
        p99 = [r.p99 if r and r.p99 is not None else 0.0 for r in picked]
        ax_rate.bar(xs, rates, width, label=layer)
        spread = [max(0.0, hi - lo) for lo, hi in zip(p50, p99, strict=True)]
        ax_lat.bar(xs, p50, width, yerr=[[0.0] * len(p50), spread], capsize=3, label=layer)
    for ax, title, unit in (
        (ax_rate, "rate (median; msg/s, rt/s or deliveries/s)", "per second"),
        (ax_lat, "latency p50, whisker to p99", "ms"),
    ):
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        ax.set_xticks(range(len(workloads)), workloads)
    handles, labels = ax_rate.get_legend_handles_labels()
    # One legend above both charts: inside either it would cover the tallest bars.
    fig.legend(handles, labels, loc="upper center", ncol=min(3, len(layers)), fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
