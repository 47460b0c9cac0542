"""``python -m bench soak`` (also ``python -m bench.soak``): mixed traffic from several
processes for a fixed time, under faults, counted exactly."""

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

from bench.cli import _AddLayer, _Attach, _scrub, build_targets
from bench.soak.plan import SoakParams
from bench.soak.report import json_document, markdown, plot
from bench.soak.run import (
    EXIT_CONTRACT,
    EXIT_DUPLICATES,
    EXIT_FAILED,
    EXIT_LEAK,
    EXIT_OK,
    EXIT_USAGE,
    Options,
    Status,
    soak,
)
from bench.targets import DEFAULT_LAYER, TargetError

EXIT_INTERRUPTED = 130  # as a shell reports a SIGINT

EPILOG = """\
Each layer is soaked in turn: --nodes processes (all in one for memory://) send to a normal
channel read by two competing processes, to each other's process-local channels, to groups
whose members join and leave, to a channel read in bursts (losses by expiry) and to a
channel of small capacity (ChannelFull); receives are cancelled by timeouts all along.

Exit status: 0 ok; 1 a message was delivered twice; 2 usage error; 3 the run failed (a
layer or a fault injection); 4 a process's memory or connections grew beyond the margins;
5 a loss no expiry, capacity or fault explains, or another broken promise (a message to a
non-member, an expired one returned, a path that never recovered).

examples:
  python -m bench soak                                   # memory://, 20 s
  python -m bench soak --layer redis://127.0.0.1:6379/0 --faults --duration 120
  python -m bench soak --layer redis:// --restart --faults --json soak.json --plot soak.png
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = SoakParams()
    parser = argparse.ArgumentParser(
        prog="layers-bench soak",
        description="Soak channel layers: mixed traffic from several processes under faults.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--layer", action=_AddLayer, dest="layers", metavar="URL_OR_PATH", default=[],
        help=f"a layer to soak (repeatable; default {DEFAULT_LAYER})")  # fmt: skip
    add("--config", action=_Attach, metavar="JSON", help="keyword arguments for that layer")
    add("--in-process", action=_Attach, nargs=0,
        help="that layer keeps its state in one process: run every node in one worker")  # fmt: skip
    add("--name", action=_Attach, metavar="LABEL", help="label for that layer in the table")
    add("--duration", type=float, default=defaults.duration, metavar="SECONDS",
        help=f"seconds of traffic (default {defaults.duration:.0f})")  # fmt: skip
    add("--nodes", type=int, default=defaults.nodes, metavar="N",
        help=f"sending and receiving processes, at least 3 (default {defaults.nodes})")  # fmt: skip
    add("--rate", type=float, default=defaults.rate, metavar="PER_SECOND",
        help=f"sends/s of each node to the normal channel, and to process-local ones "
        f"(default {defaults.rate:.0f})")  # fmt: skip
    add("--group-rate", type=float, default=defaults.group_rate, metavar="PER_SECOND",
        help=f"group_send/s of each node (default {defaults.group_rate:.0f})")  # fmt: skip
    add("--expiry", type=float, default=defaults.expiry, metavar="SECONDS",
        help=f"the layer's expiry (default {defaults.expiry:.0f})")  # fmt: skip
    faults = parser.add_argument_group("faults")
    faults.add_argument("--faults", action="store_true",
        help="have the server drop every connection of the layer periodically")  # fmt: skip
    faults.add_argument("--restart", action="store_true",
        help="run the layer on a private server of its kind (a free loopback port; the URL's "
        "host and port are ignored) and restart it periodically; with --faults the two "
        "alternate")  # fmt: skip
    faults.add_argument("--fault-every", type=float, default=Options().fault_every,
        metavar="SECONDS", help="seconds between faults (default %(default)s)")  # fmt: skip
    faults.add_argument("--settle", type=float, metavar="SECONDS",
        help="no fault starts in the last SECONDS of traffic (default 3, plus what the "
        "fault takes: 5 for a RabbitMQ kill, 1/4/20 for a Redis/PostgreSQL/RabbitMQ restart)")  # fmt: skip
    faults.add_argument("--down-for", type=float, default=Options().down_for, metavar="SECONDS",
        help="seconds a restarted server stays down (default %(default)s)")  # fmt: skip
    margins = parser.add_argument_group("margins (a process beyond them fails the run)")
    margins.add_argument("--rss-margin", type=float, default=Options().rss_margin, metavar="MB",
        help="growth of resident memory from after the warm-up to the end (default %(default)s)")  # fmt: skip
    margins.add_argument("--conn-margin", type=int, default=Options().conn_margin, metavar="N",
        help="connections to the server above the count after the warm-up (default %(default)s)")  # fmt: skip
    add("--json", metavar="FILE", help="write the report as JSON ('-' for stdout, no table)")
    add("--plot", metavar="FILE.png", help="draw throughput over time with the faults marked")
    add("--no-progress", action="store_true", help="no progress on stderr")
    return parser


def _meta(argv: Sequence[str], params: SoakParams, options: Options) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", "-m", "bench", "soak", *(_scrub(a) for a in argv)]),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "params": dataclasses.asdict(params),
        "options": dataclasses.asdict(options),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3 (two competing readers and a third process)")
    if args.duration <= 0 or args.rate <= 0 or args.group_rate < 0 or args.expiry <= 0:
        parser.error("--duration, --rate and --expiry must be positive")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'channel-layers[plot]'")
    try:
        targets = build_targets(args)
    except TargetError as exc:
        parser.error(str(exc))
    params = dataclasses.replace(
        SoakParams(),
        duration=args.duration,
        nodes=args.nodes,
        rate=args.rate,
        group_rate=args.group_rate,
        expiry=args.expiry,
        warm=min(SoakParams().warm, args.duration / 4),
    )
    options = Options(
        faults=args.faults,
        restart=args.restart,
        fault_every=args.fault_every,
        settle=args.settle,
        down_for=args.down_for,
        rss_margin=args.rss_margin,
        conn_margin=args.conn_margin,
    )
    to_stdout = args.json == "-"
    status = Status(sys.stderr, enabled=not (args.no_progress or to_stdout))
    meta = _meta(argv, params, options)
    results = []
    try:
        for target in targets:
            results.append(soak(target, params, options, status))
            status.show(f"[{target.label}] done", force=True)
    except KeyboardInterrupt:  # the workers and any private server are stopped by now
        status.close()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        status.close()
    if not to_stdout:
        sys.stdout.write(markdown(results))
    if args.json:
        text = json.dumps(json_document(results, meta))
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.plot:
        plot(results, Path(args.plot))
    codes = [EXIT_FAILED if r.get("error") else r["verdict"]["exit"] for r in results]
    for code in (EXIT_DUPLICATES, EXIT_FAILED, EXIT_CONTRACT, EXIT_LEAK):
        if code in codes:
            return code
    return EXIT_OK


__all__ = ["EXIT_USAGE", "build_parser", "main"]
