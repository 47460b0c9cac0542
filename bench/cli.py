"""``python -m bench`` / ``layers-bench``: measure channel layers side by side."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.progress import Progress
from bench.report import aggregate, has_duplicates, has_errors, json_document, markdown, plot
from bench.runner import Job, Measurement, run_job
from bench.targets import DEFAULT_LAYER, Target, TargetError, parse_config, parse_target, redact
from bench.workloads import QUICK, WORKLOADS, Params

EXIT_OK, EXIT_DUPLICATES, EXIT_USAGE, EXIT_LAYER_FAILED = 0, 1, 2, 3

EPILOG = """\
layers are URLs (memory://, redis://host:6379/0, rediss://, unix://, postgresql://...,
amqp://...) or dotted paths (module.Class). --config, --in-process and --name apply to the
--layer just before them. Exit status: 0 ok, 1 a message was delivered twice, 2 usage
error, 3 a layer failed to import, connect or finish (see its row).

python -m bench soak --help: the soak harness (mixed traffic under faults, counted exactly).

example:
  python -m bench --layer memory:// \\
      --layer channels.layers.InMemoryChannelLayer --in-process \\
      --layer channels_redis.core.RedisChannelLayer \\
      --config '{"hosts": ["redis://127.0.0.1:6379/0"]}' --repeat 5
"""


class _AddLayer(argparse.Action):
    def __call__(self, parser: Any, ns: Any, values: Any, option: str | None = None) -> None:
        entry = {"spec": values, "config": {}, "in_process": False, "name": None}
        ns.layers = [*(ns.layers or []), entry]


class _Attach(argparse.Action):
    """Options that modify the most recent --layer, so their order on the line matters."""

    def __call__(self, parser: Any, ns: Any, values: Any, option: str | None = None) -> None:
        if not ns.layers:
            parser.error(f"{option} must come after the --layer it applies to")
        entry = ns.layers[-1]
        if option == "--config":
            try:
                entry["config"] = {**entry["config"], **parse_config(values)}
            except TargetError as exc:
                parser.error(str(exc))
        elif option == "--in-process":
            entry["in_process"] = True
        else:
            entry["name"] = values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layers-bench",
        description="Measure channel layers with the same workloads, side by side.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--layer",
        action=_AddLayer,
        dest="layers",
        metavar="URL_OR_PATH",
        default=[],
        help=f"a layer to measure (repeatable; default {DEFAULT_LAYER})",
    )
    add("--config", action=_Attach, metavar="JSON", help="keyword arguments for that layer")
    add(
        "--in-process",
        action=_Attach,
        nargs=0,
        help="that layer keeps its state in one process: run all roles in one worker",
    )
    add("--name", action=_Attach, metavar="LABEL", help="label for that layer in the table")
    add(
        "--workload",
        action="append",
        choices=list(WORKLOADS),
        help="workload to run (repeatable; default: all)",
    )
    add(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="runs of each (layer, workload), interleaved; the median is reported",
    )
    add("--quick", action="store_true", help="tiny sizes, for smoke tests")
    add(
        "--local-targets",
        action="store_true",
        help="receive only on process-local channels: each receiving role makes its "
        "channel with new_channel() and hands it to the senders, and the warm-up skips "
        "the normal channel (for layers that refuse normal channels, like channels_rabbitmq)",
    )
    sizes = parser.add_argument_group("sizes (defaults follow docs/benchmarks.md)")
    for name, help_text in (
        ("messages", "messages in throughput and fan-in"),
        ("producers", "concurrent producer tasks in fan-in"),
        ("round-trips", "request/reply round trips in rpc"),
        ("members", "process-local channels in the group"),
        ("sends", "group_send calls in group"),
        ("channels", "process-local channels in many-channels"),
        ("per-channel", "messages to each channel in many-channels"),
        ("payload", "bytes of text in each message"),
    ):
        field = name.replace("-", "_")
        default, quick = getattr(Params(), field), getattr(QUICK, field)
        sizes.add_argument(
            f"--{name}", type=int, metavar="N", help=f"{help_text} ({default}; quick {quick})"
        )
    sizes.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="give up waiting after this long without progress",
    )
    add(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="hard limit for one run of one workload (default 600)",
    )
    add("--json", metavar="FILE", help="write results as JSON ('-' for stdout, no table)")
    add("--plot", metavar="FILE.png", help="draw rates and latencies (needs matplotlib)")
    add("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def build_params(args: argparse.Namespace) -> Params:
    base = QUICK if args.quick else Params()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Params)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(base, **overrides)


def build_targets(args: argparse.Namespace) -> list[Target]:
    entries = args.layers or [{"spec": DEFAULT_LAYER, "config": {}, "in_process": False}]
    targets, seen = [], set()
    for entry in entries:
        target = parse_target(entry["spec"]).with_config(entry["config"])
        label = entry.get("name") or target.label
        base, n = label, 1
        while label in seen:  # the same layer twice (say, two configs) needs two rows
            n += 1
            label = f"{base} #{n}"
        seen.add(label)
        targets.append(
            dataclasses.replace(
                target, label=label, in_process=target.in_process or entry["in_process"]
            )
        )
    return targets


def _scrub(value: Any) -> Any:
    """Config goes into the JSON file: keep passwords out of it."""
    if isinstance(value, str):
        return redact(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: "***" if "password" in str(k).lower() else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _recorded(params: Params) -> dict[str, Any]:
    """The params for the JSON file; ``local_targets`` only when set, so a run without
    ``--local-targets`` writes the same document as before the option existed."""
    recorded = dataclasses.asdict(params)
    if not params.local_targets:
        del recorded["local_targets"]
    return recorded


def _meta(
    argv: Sequence[str], targets: list[Target], params: Params, repeat: int
) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", "-m", "bench", *(_scrub(a) for a in argv)]),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "repeat": repeat,
        "params": _recorded(params),
        "layers": [
            {
                "label": t.label,
                "factory": t.factory,
                "in_process": t.in_process,
                "config": _scrub(t.config),
            }
            for t in targets
        ],
    }


def run_all(jobs: list[Job], timeout: float, progress: Progress) -> list[Measurement]:
    runs: list[Measurement] = []
    unimportable: dict[str, Measurement] = {}
    for job in jobs:
        label = job.target.label
        progress.start(f"{label} {job.workload} #{job.repeat + 1}")
        failed = unimportable.get(label)
        if failed is not None:
            # Importing fails the same way every time: don't spawn again to learn it.
            result = dataclasses.replace(
                failed, workload=job.workload, unit=WORKLOADS[job.workload].unit, repeat=job.repeat
            )
        else:
            result = run_job(job, timeout, progress.draw)
            if result.stage == "import":
                unimportable[label] = result
        runs.append(result)
        progress.finish_one()
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["soak"]:
        from bench.soak.cli import main as soak

        return soak(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'channel-layers[plot]'")
    try:
        targets = build_targets(args)
    except TargetError as exc:
        parser.error(str(exc))
    params = build_params(args)
    workloads = list(dict.fromkeys(args.workload or WORKLOADS))
    jobs = [
        Job(target, workload, params, rep)
        for rep in range(args.repeat)
        for workload in workloads
        for target in targets
    ]
    to_stdout = args.json == "-"
    show = not (args.no_progress or to_stdout) and sys.stderr.isatty()
    progress = Progress(len(jobs), sys.stderr, enabled=show)
    meta = _meta(argv, targets, params, args.repeat)  # taken now: start time, load before
    try:
        runs = run_all(jobs, args.timeout, progress)
    finally:
        progress.close()
    rows = aggregate(runs)
    if not to_stdout:
        sys.stdout.write(markdown(rows, local_targets=params.local_targets))
    if args.json:
        text = json.dumps(json_document(rows, runs, meta))
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.plot:
        plot(rows, Path(args.plot))
    if has_duplicates(rows):
        print("error: some messages were delivered twice", file=sys.stderr)
        return EXIT_DUPLICATES
    return EXIT_LAYER_FAILED if has_errors(rows) else EXIT_OK
