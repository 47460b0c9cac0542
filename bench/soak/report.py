"""The soak's report: markdown tables (stdout), a JSON document and a throughput plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Info = dict[str, Any]
SCHEMA_VERSION = 1


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _mb(sample: Info | None) -> str:
    return "-" if not sample or sample["rss_mb"] is None else f"{sample['rss_mb']:.0f}"


def _conns(sample: Info | None) -> str:
    return "-" if not sample or sample["connections"] is None else str(sample["connections"])


def _resources(result: Info) -> tuple[str, str]:
    """Memory and connections, start -> end, of the process that grew most."""
    procs = [p for p in result["processes"] if p["start"] and p["end"]]
    if not procs:
        return "-", "-"

    def grown(p: Info, key: str) -> float:
        return float((p["end"][key] or 0) - (p["start"][key] or 0))

    rss = max(procs, key=lambda p: grown(p, "rss_mb"))
    conns = max(procs, key=lambda p: grown(p, "connections"))
    return (
        f"{_mb(rss['start'])} → {_mb(rss['end'])}",
        f"{_conns(conns['start'])} → {_conns(conns['end'])}",
    )


def markdown(results: list[Info]) -> str:
    lines = [
        "| layer | s | sent | received | lost expiry / capacity / fault / unexplained "
        "| duplicated | ChannelFull | send errors | faults | longest recovery s "
        "| RSS MB start → end | connections start → end | verdict |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        if r.get("error"):
            lines.append(
                f"| {r['layer']} |" + " - |" * 11 + f" {r['stage']} failed: {r['error']} |"
            )
            continue
        c, lost = r["counts"], r["lost"]
        longest = r["longest_recovery"]
        recovery = "-" if longest is None else f"{longest['seconds']:.2f}"
        rss, conns = _resources(r)
        faults = f"{len(r['faults'])}/{r['faults_planned']}" if r["faults_planned"] else "0"
        verdict = "ok" if not r["verdict"]["failures"] else "; ".join(r["verdict"]["failures"])
        lines.append(
            f"| {r['layer']} | {r['duration']:.0f} | {_n(c.get('expected', 0))} "
            f"| {_n(c.get('delivered', 0))} "
            f"| {lost['expiry']} / {lost['capacity']} / {lost['fault']} / {lost['unexplained']} "
            f"| {c.get('duplicated', 0)} | {_n(c.get('channel_full', 0))} "
            f"| {c.get('send_errors', 0)} | {faults} "
            f"| {recovery} | {rss} | {conns} "
            f"| {verdict.replace('|', '/')} |"
        )
    lines.append("")
    for r in results:
        if r.get("error") or not r["layer_warnings"]:
            continue
        logged = "; ".join(f"{n:,}x {text}" for text, n in r["layer_warnings"].items())
        lines += [f"Logged by {r['layer']}: {logged}", ""]
    for r in results:
        if r.get("error") or not r["faults"]:
            continue
        lines += [
            f"Faults on {r['layer']} (seconds from the start; recovery: the slowest path):",
            "",
            "| # | at | kind | dropped | took | recovery | slowest path |",
            "|--:|--:|---|--:|--:|--:|---|",
        ]
        for i, f in enumerate(r["faults"]):
            known = {k: v for k, v in f["recovery"].items() if v is not None}
            never = [k for k, v in f["recovery"].items() if v is None]
            slowest = max(known, key=lambda k: known[k]) if known else None
            took = f"{f['end'] - f['start']:.2f}"
            recovery = "never" if never else (f"{known[slowest]:.2f}" if slowest else "-")
            where = ", ".join(never) if never else (slowest or "-")
            what = f["kind"] + (f" (failed: {f['error']})" if f["error"] else "")
            lines.append(
                f"| {i + 1} | {f['start']:.1f} | {what} | {_n(f['dropped'])} | {took} "
                f"| {recovery} | {where} |"
            )
        lines.append("")
    return "\n".join(lines)


def json_document(results: list[Info], meta: Info) -> Info:
    return {"schema": SCHEMA_VERSION, **meta, "results": results}


def plot(results: list[Info], path: Path) -> None:
    """Deliveries per second over time by path, one chart per layer, faults marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'channel-layers[plot]'") from None
    shown = [r for r in results if not r.get("error")]
    fig, axes = plt.subplots(
        max(1, len(shown)), 1, figsize=(10, 3.2 * max(1, len(shown))), squeeze=False
    )
    for ax, r in zip(axes[:, 0], shown, strict=False):
        step = r["throughput"]["step"]
        paths = r["throughput"]["paths"]
        width = max((len(v) for v in paths.values()), default=0)
        xs = [(i + 0.5) * step for i in range(width)]  # bin centres
        total = [sum(v[i] for v in paths.values()) for i in range(width)]
        ax.plot(xs, total, color="black", linewidth=1.2, label="all")
        calls = r["throughput"].get("calls", [])[:width]
        ax.plot(xs[: len(calls)], calls, color="gray", linestyle="--", linewidth=0.8,
                label="calls (send, group_send)")  # fmt: skip
        for name, values in sorted(paths.items()):
            ax.plot(xs, values, linewidth=0.8, label=name)
        for i, f in enumerate(r["faults"]):
            color = "tab:red" if f["kind"] == "kill" else "tab:purple"
            ax.axvline(f["start"], color=color, linestyle="--", linewidth=1)
            ax.axvspan(f["start"], max(f["end"], f["start"] + step / 4), color=color, alpha=0.15)
            ax.text(f["start"], 1.0, f" {f['kind']} {i + 1}", color=color, fontsize="x-small",
                    va="top", transform=ax.get_xaxis_transform())  # fmt: skip
        ax.axvline(r["duration"], color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{r['layer']}: deliveries/s (dashed: faults; dotted: senders stop)")
        ax.set_xlabel("seconds")
        ax.set_ylabel("deliveries/s")
        ax.legend(fontsize="x-small", ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
