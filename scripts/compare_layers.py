"""Run every channel layer a Django user might pick (ours and the third parties on PyPI)
through the conformance suite and the bench, and write the comparison tables.

    python scripts/compare_layers.py                    # both, every layer, tables to stdout
    python scripts/compare_layers.py --only channels-nats --skip-bench
    python scripts/compare_layers.py --tables-only --write-docs

Run it with an interpreter where this repository and the third-party layers are installed
(``pip install -e '.[all,test,compare]'``, in a virtualenv of its own). Results go to
``--results`` (JSON): a run of some layers replaces theirs and keeps the others', so the
tables can be redrawn without running anything.
``--write-docs`` puts the tables into docs/conformance.md and docs/benchmarks.md between
``<!-- compare_layers:NAME -->`` and ``<!-- /compare_layers:NAME -->``.

Each layer's conformance run is ``python -m pytest --pyargs conformance --layer ...``
(serial, JUnit XML parsed); its bench is ``python -m bench --json`` once per round, each
round running every layer once (interleaved; medians over rounds). With ``--lock FILE``
every round waits until FILE does not exist and holds it while it runs (a machine shared
with other people measuring).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from compare_registry import LAYERS, Layer, Servers  # noqa: E402
from compare_tables import render, write_docs  # noqa: E402

DEFAULT_RESULTS = ROOT / "docs" / "compare_layers.json"
# Modest sizes: about 20 s of bench per layer and round on 2 vCPUs (defaults are 10x).
BENCH_SIZES = (
    "--messages=2000",
    "--round-trips=300",
    "--members=100",
    "--sends=50",
    "--channels=500",
    "--per-channel=2",
)
CONFORMANCE_TIMEOUT = 1800.0
BENCH_TIMEOUT = 900.0


def run_conformance(
    layer: Layer, python: str, servers: Servers, test_timeout: int
) -> dict[str, Any]:
    """One serial run of the suite against ``layer``; every test's outcome and message."""
    spec = layer.conformance
    assert spec is not None
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        junit = Path(tmp) / "junit.xml"
        config = spec.config(servers, Path(tmp))
        command = [
            python, "-m", "pytest", "--pyargs", "conformance", "-q", "-p", "no:cacheprovider",
            # --tb=line: CPython 3.11.7 crashed pytest while formatting one very deep
            # traceback ("AST constructor recursion depth mismatch").
            "--tb=line", "-o", f"timeout={test_timeout}", f"--junitxml={junit}",
            "--layer", spec.factory,
        ]  # fmt: skip
        if config:
            command += ["--layer-config", json.dumps(config)]
        if spec.local:
            command.append("--layer-local")
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=CONFORMANCE_TIMEOUT
            )
            crash = None if junit.exists() else (done.stdout + done.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            crash = f"the run did not finish in {CONFORMANCE_TIMEOUT:.0f} s"
        tests = parse_junit(junit) if junit.exists() else []
    return {
        "label": layer.label,
        "date": datetime.date.today().isoformat(),
        "command": _shown(command, config),
        "seconds": round(time.monotonic() - started, 1),
        "tests": tests,
        "crash": crash,
    }


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """``name``, ``outcome`` (passed, failed, error, skipped) and the first line of its
    message for every test case in a JUnit XML file."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                message = node.get("message") or (node.text or "")
                break
        first = " ".join(message.strip().splitlines()[:1])
        tests.append({"name": case.get("name", ""), "outcome": outcome, "message": first[:400]})
    return tests


def run_bench(
    layer: Layer, python: str, servers: Servers, sizes: Sequence[str], round_no: int, tmp: Path
) -> dict[str, Any]:
    """One ``python -m bench`` of every workload on ``layer``; its runs and command."""
    spec = layer.bench
    assert spec is not None
    out = tmp / f"{layer.key}-{round_no}.json"
    config = spec.config(servers, tmp / f"{layer.key}-{round_no}")
    command = [python, "-m", "bench", "--layer", spec.factory]
    if config:
        command += ["--config", json.dumps(config)]
    if spec.in_process:
        command.append("--in-process")
    command += ["--name", layer.bench_name, "--repeat", "1", "--no-progress", "--json", str(out)]
    if spec.local_targets:
        command.append("--local-targets")
    command += list(sizes)
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT
        )
        failure = None if out.exists() else (done.stdout + done.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        failure = f"the bench did not finish in {BENCH_TIMEOUT:.0f} s"
    document = json.loads(out.read_text()) if out.exists() else {}
    runs = document.get("runs", [])
    for run in runs:
        run["repeat"] = round_no
    return {
        "label": layer.label,
        "command": _shown(command, config),
        "runs": runs,
        "params": document.get("params"),
        "failure": failure,
        "seconds": round(time.monotonic() - started, 1),
    }


def _shown(command: list[str], config: dict[str, Any]) -> str:
    """The command as a reader would type it: ``python``, temporary paths generalised."""
    import shlex

    shown = ["python", *command[1:]]
    text = shlex.join(shown)
    return text.replace(tempfile.gettempdir() + "/", "$TMP/")


@contextmanager
def held(lock: Path | None) -> Iterator[None]:
    """Wait until ``lock`` does not exist, create it, remove it afterwards."""
    if lock is None:
        yield
        return
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            print(f"waiting for {lock} to go away", file=sys.stderr)
            time.sleep(10)
            continue
        os.write(fd, f"{os.getpid()} scripts/compare_layers.py\n".encode())
        os.close(fd)
        break
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            lock.unlink()


def versions(python: str, layers: Sequence[Layer]) -> dict[str, str]:
    dists = sorted({d for layer in layers for d in layer.dists} | {"channels", "Django"})
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([python, "-c", code, *dists], capture_output=True, text=True)
    parsed: dict[str, str] = json.loads(done.stdout) if done.returncode == 0 else {}
    return parsed


def machine(python: str) -> dict[str, Any]:
    done = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
    )
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "python": done.stdout.strip() or platform.python_version(),
        "platform": platform.platform(),
    }


def reachable(address: tuple[str, int]) -> bool:
    with suppress(OSError), socket.create_connection(address, timeout=2):
        return True
    return False


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {"conformance": {}, "bench": {}}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--only", action="append", metavar="KEY", help="only this layer (repeatable): "
        + ", ".join(layer.key for layer in LAYERS))  # fmt: skip
    add("--skip-conformance", action="store_true")
    add("--skip-bench", action="store_true")
    add("--tables-only", action="store_true", help="run nothing: tables from --results")
    add("--python", default=sys.executable, help="interpreter the runs use (default: this one)")
    add("--results", type=Path, default=DEFAULT_RESULTS, help="JSON file read and updated")
    add("--write-docs", action="store_true", help="write the tables into docs/*.md")
    add("--repeat", type=int, default=3, help="bench rounds; medians over them (default 3)")
    add("--quick", action="store_true", help="bench at --quick sizes (a smoke test)")
    add("--bench-arg", action="append", default=[], metavar="ARG",
        help="extra argument for every bench run, e.g. --bench-arg=--messages=5000")  # fmt: skip
    add("--test-timeout", type=int, default=60, help="pytest-timeout for one test (s)")
    add("--lock", type=Path, help="hold this file while a bench round runs (wait for it first)")
    Servers.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - {layer.key for layer in LAYERS}
    if unknown:
        parser.error(f"unknown --only {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    servers = Servers.from_args(args)
    results = load(args.results)
    chosen = [layer for layer in LAYERS if not args.only or layer.key in args.only]
    if not args.tables_only:
        results.setdefault("versions", {}).update(versions(args.python, chosen))
        with servers.valkey_running(args.python):
            if not args.skip_conformance:
                _conformance_all(chosen, args, servers, results)
            if not args.skip_bench:
                _bench_all(chosen, args, servers, results)
    tables = render(results, LAYERS)
    if args.write_docs:
        for path in write_docs(tables, ROOT / "docs"):
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    else:
        for name, text in tables.items():
            print(f"<!-- {name} -->\n{text}")
    return 0


def _skip_reason(layer: Layer, servers: Servers) -> str | None:
    address = servers.address(layer.server)
    if address is not None and not reachable(address):
        return f"not run: nothing listens on {address[0]}:{address[1]} ({layer.server})"
    return None


def _save(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def _conformance_all(
    chosen: list[Layer], args: argparse.Namespace, servers: Servers, results: dict[str, Any]
) -> None:
    results["conformance_machine"] = machine(args.python)
    for layer in chosen:
        if layer.conformance is None:
            continue
        skip = _skip_reason(layer, servers)
        print(f"conformance: {layer.label} ...", file=sys.stderr, flush=True)
        if skip:
            results["conformance"][layer.key] = {"label": layer.label, "tests": [], "crash": skip}
        else:
            results["conformance"][layer.key] = run_conformance(
                layer, args.python, servers, args.test_timeout
            )
        _save(results, args.results)


def _bench_all(
    chosen: list[Layer], args: argparse.Namespace, servers: Servers, results: dict[str, Any]
) -> None:
    sizes = ["--quick"] if args.quick else list(BENCH_SIZES)
    sizes += args.bench_arg
    benched = [layer for layer in chosen if layer.bench is not None]
    fresh: dict[str, dict[str, Any]] = {}
    started = machine(args.python)
    with tempfile.TemporaryDirectory(prefix="compare-bench-") as tmp:
        for round_no in range(args.repeat):
            with held(args.lock):
                load_before = os.getloadavg()[0]
                for layer in benched:
                    print(f"bench round {round_no + 1}: {layer.label} ...", file=sys.stderr)
                    skip = _skip_reason(layer, servers)
                    if skip:
                        fresh[layer.key] = {"label": layer.label, "runs": [], "failures": [skip]}
                        continue
                    one = run_bench(layer, args.python, servers, sizes, round_no, Path(tmp))
                    entry = fresh.setdefault(
                        layer.key,
                        {key: one[key] for key in ("label", "command", "params")}
                        | {"date": started["date"], "runs": [], "failures": [], "seconds": []},
                    )
                    entry["runs"].extend(one["runs"])
                    entry["seconds"].append(one["seconds"])
                    if one["failure"]:
                        entry["failures"].append(one["failure"])
            started.setdefault("load_before_rounds", []).append(round(load_before, 2))
    results["bench"].update(fresh)
    meta = {**started, "repeat": args.repeat, "sizes": sizes}
    if {layer.key for layer in benched} == {layer.key for layer in LAYERS if layer.bench}:
        results["bench_machine"], results["bench_reruns"] = meta, []
    else:
        # Rounds of these layers alone: the table says so, since they were not interleaved
        # with the rest.
        rerun = {**meta, "labels": [layer.bench_name for layer in benched]}
        results.setdefault("bench_reruns", []).append(rerun)
    _save(results, args.results)


if __name__ == "__main__":
    sys.exit(main())
