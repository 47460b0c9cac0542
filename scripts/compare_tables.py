"""Markdown tables from scripts/compare_layers.py's results, and writing them into docs."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compare_registry import Layer

# The suite's parts (conformance/suite/__init__.py), as a reader knows them.
AREAS = {
    "SendReceiveChecks": "send/receive",
    "NewChannelChecks": "new_channel",
    "ConcurrentReceiveChecks": "concurrent receives",
    "ReceiveManyChecks": "receive_many",
    "CapacityChecks": "capacity",
    "ExpiryChecks": "expiry",
    "GroupChecks": "groups",
    "LifecycleChecks": "flush/close",
    "EventLoopChecks": "event loops",
    "ThreadChecks": "threads",
    "BadInputChecks": "bad input",
}
WORKLOADS = ("throughput", "fan-in", "rpc", "group", "many-channels")
# Which document each table goes into.
DOCS = {
    "conformance": "conformance.md",
    "bench-summary": "benchmarks.md",
    "bench-detail": "benchmarks.md",
}


def suite_areas() -> dict[str, str]:
    """Test function name -> area, from the mixin of ConformanceSuite that defines it."""
    from conformance import ConformanceSuite

    areas: dict[str, str] = {}
    for cls in reversed(ConformanceSuite.__mro__):
        for name in vars(cls):
            if name.startswith("test_"):
                areas[name] = AREAS.get(cls.__name__, cls.__name__)
    return areas


def render(results: dict[str, Any], layers: Sequence[Layer]) -> dict[str, str]:
    return {
        "conformance": conformance_table(results, layers),
        "bench-summary": bench_summary(results, layers),
        "bench-detail": bench_detail(results, layers),
    }


def _version(results: dict[str, Any], layer: Layer) -> str:
    dist = layer.dists[0]
    found = results.get("versions", {}).get(dist, "?")
    return f"{dist} {found}"


def _when(entry: dict[str, Any] | None) -> str:
    if not entry:
        return ""
    return f"{entry.get('date', '?')}, {entry.get('cpus', '?')} vCPU, Python {entry.get('python', '?')}"


def conformance_table(results: dict[str, Any], layers: Sequence[Layer]) -> str:
    areas = suite_areas()
    lines = [
        f"Run by `scripts/compare_layers.py` ({_when(results.get('conformance_machine'))}); "
        f"one serial run of the suite per layer ({len(areas)} test functions, some "
        "parametrised). *Fails in* counts failed tests per part of the suite, out of its "
        "tests.",
        "",
        "| layer | needs | version | passed | failed | fails in |",
        "|---|---|---|--:|--:|---|",
    ]
    for layer in layers:
        entry = results.get("conformance", {}).get(layer.key)
        if layer.conformance is None or entry is None:
            continue
        tests = entry.get("tests", [])
        outcomes = Counter(t["outcome"] for t in tests)
        failed = [t for t in tests if t["outcome"] in ("failed", "error")]
        per_area = Counter(areas.get(t["name"].split("[")[0], "?") for t in failed)
        in_area = Counter(areas.get(t["name"].split("[")[0], "?") for t in tests)
        where = ", ".join(f"{a} {n}/{in_area[a]}" for a, n in per_area.most_common())
        if entry.get("crash"):
            where = (where + "; " if where else "") + _cell(entry["crash"], 120)
        skipped = f" ({outcomes['skipped']} skipped)" if outcomes["skipped"] else ""
        lines.append(
            f"| {_name(layer)} | {layer.needs} | {_version(results, layer)} "
            f"| {outcomes['passed']}{skipped} | {len(failed)} | {where} |"
        )
    return "\n".join(lines) + "\n"


def _name(layer: Layer) -> str:
    return f"**{layer.label}**" if layer.ours else layer.label


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _rows(results: dict[str, Any], layers: Sequence[Layer]) -> list[tuple[Layer, list[Any]]]:
    """bench.report's rows (medians over rounds) per layer that has runs."""
    from bench.report import aggregate
    from bench.runner import Measurement

    out = []
    for layer in layers:
        entry = results.get("bench", {}).get(layer.key)
        if layer.bench is None or not entry or not entry.get("runs"):
            continue
        runs = [Measurement(**run) for run in entry["runs"]]
        out.append((layer, aggregate(runs)))
    return out


def _bench_header(results: dict[str, Any]) -> str:
    meta = results.get("bench_machine", {})
    sizes = " ".join(meta.get("sizes", []))
    text = (
        f"Run by `scripts/compare_layers.py` ({_when(meta)}; load average before each round "
        f"{meta.get('load_before_rounds', '?')}): `python -m bench {sizes}` once per layer "
        f"per round, {meta.get('repeat', '?')} rounds, every layer once in each round. Rates "
        "and latencies are medians over the rounds; lost and duplicated are totals, out of "
        "what the runs that started sent."
    )
    for rerun in results.get("bench_reruns", []):
        names = ", ".join(rerun.get("labels", []))
        text += (
            f" Run afterwards on their own ({_when(rerun)}, {rerun.get('repeat', '?')} "
            f"rounds, load average {rerun.get('load_before_rounds', '?')}): {names}."
        )
    return text


def _summary_cell(row: Any) -> str:
    if row is None:
        return ""
    if row.rate is None:
        return "failed" if row.failed_runs else "nothing delivered"
    text = f"{row.rate:,.0f}"
    if row.workload == "rpc" and row.p50 is not None:
        text += f" ({row.p50:.2f} ms)"
    flags = []
    if row.lost:
        flags.append(f"{row.lost:,} of {row.expected:,} lost")
    if row.duplicated:
        flags.append(f"{row.duplicated:,} dup")
    if row.failed_runs:
        flags.append(f"{row.failed_runs} of {row.runs} runs failed")
    return text + (f" ({', '.join(flags)})" if flags else "")


def bench_summary(results: dict[str, Any], layers: Sequence[Layer]) -> str:
    lines = [
        _bench_header(results),
        "",
        "| layer | throughput msg/s | fan-in msg/s | rpc rt/s (p50) | group deliveries/s "
        "| many-channels msg/s |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for layer, rows in _rows(results, layers):
        by_workload = {row.workload: row for row in rows}
        cells = " | ".join(_summary_cell(by_workload.get(w)) for w in WORKLOADS)
        name = f"**{layer.bench_name}**" if layer.ours else layer.bench_name
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def bench_detail(results: dict[str, Any], layers: Sequence[Layer]) -> str:
    from bench.report import markdown

    body: list[str] = []
    for _, rows in _rows(results, layers):
        table = markdown(rows).splitlines()
        if not body:
            body = table[:2]
        body += table[2:]
    return "\n".join(body) + "\n"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- compare_layers:{name} -->", f"<!-- /compare_layers:{name} -->"


def replace_between(text: str, name: str, table: str) -> str:
    """``text`` with what stands between ``name``'s two marker comments replaced."""
    start, end = _markers(name)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no {start} ... {end} in the document")
    return pattern.sub(lambda _: f"{start}\n{table}{end}", text, count=1)


def write_docs(tables: dict[str, str], docs: Path) -> list[Path]:
    """Each table into its document; the documents that changed."""
    written = []
    for doc in dict.fromkeys(DOCS.values()):
        path = docs / doc
        text = updated = path.read_text(encoding="utf-8")
        for name, table in tables.items():
            if DOCS[name] != doc:
                continue
            try:
                updated = replace_between(updated, name, table)
            except ValueError as exc:
                raise SystemExit(f"{path}: {exc}") from None
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            written.append(path)
    return written
