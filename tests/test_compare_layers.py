"""scripts/compare_layers.py without servers: JUnit parsing, the tables, the doc markers and
the registry of layers."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

from compare_layers import parse_junit  # noqa: E402
from compare_registry import LAYERS, Servers  # noqa: E402
from compare_tables import (  # noqa: E402
    DOCS,
    render,
    replace_between,
    suite_areas,
    write_docs,
)

from bench.runner import Measurement  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="conformance.test_layer.TestLayer" name="test_send_receive_roundtrip" time="0.1"/>
<testcase classname="conformance.test_layer.TestLayer" name="test_flush_removes_messages" time="0.1">
  <failure message="Failed: flush left a message&#10;second line">trace</failure>
</testcase>
<testcase classname="conformance.test_layer.TestLayer" name="test_close_twice_in_a_row" time="0.1">
  <error message="failed on setup with &quot;boom&quot;">trace</error>
</testcase>
<testcase classname="conformance.test_layer.TestLayer" name="test_threads_share_one_instance" time="0">
  <skipped message="no threads here"/>
</testcase>
</testsuite></testsuites>
"""


def test_parse_junit_reads_outcomes_and_first_lines(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    tests = parse_junit(path)
    assert [(t["name"], t["outcome"]) for t in tests] == [
        ("test_send_receive_roundtrip", "passed"),
        ("test_flush_removes_messages", "failed"),
        ("test_close_twice_in_a_row", "error"),
        ("test_threads_share_one_instance", "skipped"),
    ]
    assert tests[1]["message"] == "Failed: flush left a message"


def test_every_suite_test_has_an_area() -> None:
    areas = suite_areas()
    assert areas["test_send_receive_roundtrip"] == "send/receive"
    assert areas["test_threads_share_one_instance"] == "threads"
    assert not [name for name, area in areas.items() if area.endswith("Checks")]


def run(layer: str, workload: str, **values: Any) -> dict[str, Any]:
    unit = {"rpc": "rt/s", "group": "deliveries/s"}.get(workload, "msg/s")
    return asdict(Measurement(layer=layer, workload=workload, unit=unit, **values))


def results() -> dict[str, Any]:
    memory = next(layer for layer in LAYERS if layer.key == "memory")
    lite = next(layer for layer in LAYERS if layer.key == "channels-lite")
    passed = {"name": "test_send_receive_roundtrip", "outcome": "passed", "message": ""}
    failed = {"name": "test_flush_removes_messages", "outcome": "failed", "message": "x"}
    return {
        "versions": {"channel-layers": "0.1.0", "channels-lite": "0.4.0"},
        "conformance": {
            "memory": {"tests": [passed], "crash": None},
            "channels-lite": {"tests": [passed, failed], "crash": None},
        },
        "bench": {
            "memory": {
                "runs": [
                    run(memory.bench_name, "rpc", repeat=r, rate=1000.0 * r, p50=0.5)
                    for r in (1, 2, 3)
                ]
            },
            "channels-lite": {
                "runs": [
                    run(lite.bench_name, "group", rate=500.0, lost=7, expected=100),
                    run(lite.bench_name, "throughput", error="boom", stage="setup"),
                ]
            },
        },
    }


def test_tables_show_counts_medians_and_losses() -> None:
    tables = render(results(), LAYERS)
    conformance = tables["conformance"]
    assert "| **ours: memory** | nothing (one process) | channel-layers 0.1.0 | 1 | 0 |  |" in (
        conformance
    )
    assert "| channels-lite SQLiteChannelLayer |" in conformance
    assert "| 1 | 1 | flush/close 1/1 |" in conformance
    summary = tables["bench-summary"]
    assert "| **ours: memory** |  |  | 2,000 (0.50 ms) |  |  |" in summary  # the median
    assert "| failed |  |  | 500 (7 of 100 lost) |  |" in summary
    assert "setup failed: boom" in tables["bench-detail"]


def test_replace_between_markers(tmp_path: Path) -> None:
    text = "a\n<!-- compare_layers:x -->\nold\n<!-- /compare_layers:x -->\nb\n"
    assert replace_between(text, "x", "new\n") == (
        "a\n<!-- compare_layers:x -->\nnew\n<!-- /compare_layers:x -->\nb\n"
    )
    with pytest.raises(ValueError, match="compare_layers:y"):
        replace_between(text, "y", "new\n")
    docs = tmp_path
    for name in set(DOCS.values()):
        (docs / name).write_text(
            "".join(
                f"<!-- compare_layers:{t} -->\n<!-- /compare_layers:{t} -->\n"
                for t, doc in DOCS.items()
                if doc == name
            )
        )
    written = write_docs({t: f"table {t}\n" for t in DOCS}, docs)
    assert sorted(p.name for p in written) == sorted(set(DOCS.values()))
    assert "table bench-detail\n" in (docs / "benchmarks.md").read_text()


def test_registry_names_are_unique_and_servers_known() -> None:
    assert len({layer.key for layer in LAYERS}) == len(LAYERS)
    benched = [layer.bench_name for layer in LAYERS if layer.bench]
    assert len(set(benched)) == len(benched)
    servers = Servers()
    for layer in LAYERS:
        assert layer.conformance or layer.bench
        if layer.server:
            assert servers.address(layer.server) is not None
