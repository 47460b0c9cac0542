"""The benchmark harness: every workload end to end on the memory layer, plus the ways it
must not mislead (duplicates fail the run, losses are counted without hanging, a broken
layer gets its own row while the others still run)."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer as ChannelsMemoryLayer

from bench.cli import EXIT_DUPLICATES, EXIT_LAYER_FAILED, EXIT_OK, build_parser, main
from bench.probe import Tally, drain, percentiles, warm_up
from bench.progress import Progress
from bench.report import LOCAL_TARGETS_NOTE, aggregate, markdown
from bench.runner import Measurement
from bench.targets import (
    AMQP_CLASS,
    MEMORY_CLASS,
    POSTGRES_CLASS,
    REDIS_CLASS,
    TargetError,
    accepts_prefix,
    load_factory,
    parse_target,
    redact,
)
from bench.workloads import QUICK, WORKLOADS, Collector, Ctx, GroupSender, RpcServer
from layers.memory import InMemoryChannelLayer as OurMemoryLayer

ROOT = Path(__file__).resolve().parent.parent
HERE = __name__  # spawned workers import the misbehaving layers below by this name


class DuplicatingLayer(ChannelsMemoryLayer):  # type: ignore[misc]
    """Delivers every 50th message twice."""

    async def receive(self, channel: str) -> Any:
        pending = getattr(self, "_pending", None)
        if pending:
            self._pending = None
            return pending
        message = await super().receive(channel)
        if isinstance(message.get("s"), int) and message["s"] % 50 == 7:
            self._pending = dict(message)
        return message


class LossyLayer(ChannelsMemoryLayer):  # type: ignore[misc]
    """Silently drops every 10th message."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if message.get("s", 0) % 10 == 3:
            return
        await super().send(channel, message)


class LocalOnlyLayer(OurMemoryLayer):
    """Our memory layer, refusing normal channels as channels_rabbitmq does (RuntimeError
    for a name without "!"), and receiving only on channels it made with new_channel()."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.made: set[str] = set()

    async def new_channel(self, prefix: str = "specific") -> str:
        name: str = await super().new_channel(prefix)
        self.made.add(name)
        return name

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if "!" not in channel:
            raise RuntimeError(f"normal channel {channel!r} refused")
        await super().send(channel, message)

    async def receive(self, channel: str) -> Any:
        if channel not in self.made:
            raise RuntimeError(f"receive on {channel!r}, not a new_channel() of this layer")
        return await super().receive(channel)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--no-progress", *args])
    return code, capsys.readouterr().out


def results_by_key(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["layer"], r["workload"]): r for r in doc["results"]}


def test_every_workload_quick_on_memory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    code, table = run_cli(capsys, "--quick", "--json", str(out_json), "--plot", str(out_png))
    assert code == EXIT_OK
    doc = json.loads(out_json.read_text())
    assert [r["workload"] for r in doc["results"]] == list(WORKLOADS)
    for row in doc["results"]:
        assert row["layer"] == "memory://"
        assert row["failed_runs"] == 0, row["notes"]
        assert row["lost"] == 0 and row["duplicated"] == 0 and row["stale"] == 0
        assert row["delivered"] == row["expected"] > 0
        assert row["rate"] > 0 and 0 < row["p50"] <= row["p90"] <= row["p99"]
    assert doc["layers"][0]["factory"] == MEMORY_CLASS
    assert doc["layers"][0]["in_process"] is True
    assert "local_targets" not in doc["params"]  # without the flag, the JSON as it was
    assert table.startswith("| layer | workload |")
    lines = [line for line in table.splitlines() if line.startswith("| memory://")]
    assert len(lines) == len(WORKLOADS)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_targets_quick_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    # The memory layer, failing any send to or receive on a channel that is not
    # process-local (counted as errors, or a failed run); 60 sends make the group sender
    # wait for its members' acks.
    code, out = run_cli(
        capsys,
        *("--quick", "--local-targets", "--sends", "60", "--json", "-"),
        *("--layer", f"{HERE}.LocalOnlyLayer", "--in-process"),
    )
    assert code == EXIT_OK
    doc = json.loads(out)
    assert doc["params"]["local_targets"] is True and "--local-targets" in doc["command"]
    assert [r["workload"] for r in doc["results"]] == list(WORKLOADS)
    for row in doc["results"]:
        assert row["failed_runs"] == 0 and row["errors"] == 0, row["notes"]
        assert row["lost"] == 0 and row["duplicated"] == 0 and row["stale"] == 0
        assert row["delivered"] == row["expected"] > 0
    assert markdown([], local_targets=True).startswith(LOCAL_TARGETS_NOTE + "\n\n| layer |")
    assert "--local-targets" in build_parser().format_help()


def test_without_local_targets_a_local_only_layer_fails_its_warm_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run_cli(
        capsys,
        *("--quick", "--workload", "throughput", "--json", "-"),
        *("--layer", f"{HERE}.LocalOnlyLayer", "--in-process"),
    )
    assert code == EXIT_LAYER_FAILED
    (row,) = json.loads(out)["results"]
    assert row["notes"][0].startswith("setup failed: RuntimeError: normal channel")


async def test_receiving_roles_name_their_channel_in_setup() -> None:
    local = dataclasses.replace(QUICK, local_targets=True)
    for role, what in ((Collector, "in"), (RpcServer, "rpc"), (GroupSender, "ack")):
        assert await role(Ctx(7, QUICK, "r")).setup(ChannelsMemoryLayer()) == {
            "channel": f"bench.7.{what}"  # the names runs without --local-targets use
        }
        layer = LocalOnlyLayer()
        info = await role(Ctx(7, local, "r")).setup(layer)
        assert info["channel"] in layer.made
    with pytest.raises(RuntimeError, match="normal channel"):
        await warm_up(LocalOnlyLayer(), 7, "r", 2, 1.0)
    await warm_up(LocalOnlyLayer(), 7, "r", 2, 1.0, local_only=True)


def test_unimportable_layer_gets_its_row_and_others_still_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run_cli(
        capsys,
        *("--quick", "--workload", "rpc", "--workload", "throughput", "--repeat", "2"),
        *("--layer", "no_such_module_anywhere.Layer", "--layer", "memory://", "--json", "-"),
    )
    assert code == EXIT_LAYER_FAILED
    rows = results_by_key(json.loads(out))
    for workload in ("rpc", "throughput"):
        bad = rows[("no_such_module_anywhere.Layer", workload)]
        assert bad["failed_runs"] == 2 and bad["rate"] is None
        assert "ModuleNotFoundError" in bad["notes"][0] and "import" in bad["notes"][0]
        good = rows[("memory://", workload)]
        assert good["failed_runs"] == 0 and good["lost"] == 0 and good["rate"] > 0


def test_third_party_in_process_layer_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, table = run_cli(
        capsys,
        *("--quick", "--workload", "group", "--workload", "many-channels"),
        *("--layer", "channels.layers.InMemoryChannelLayer", "--in-process", "--name", "chan"),
    )
    assert code == EXIT_OK
    lines = table.splitlines()
    assert lines[0].startswith("| layer | workload | rate | p50 ms | p90 ms | p99 ms | lost |")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("chan", "group"), ("chan", "many-channels")]
    assert all(r[6] == "0" and r[7] == "0" for r in rows)  # lost, duplicated


def test_duplicates_fail_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(
        capsys,
        *("--quick", "--workload", "throughput", "--json", "-"),
        *("--layer", f"{HERE}.DuplicatingLayer", "--in-process"),
    )
    assert code == EXIT_DUPLICATES
    row = json.loads(out)["results"][0]
    assert row["duplicated"] > 0 and row["lost"] == 0


def test_losses_are_counted_without_hanging(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(
        capsys,
        *("--quick", "--workload", "throughput", "--idle-timeout", "0.5", "--json", "-"),
        *("--layer", f"{HERE}.LossyLayer", "--in-process"),
    )
    assert code == EXIT_OK  # losing is reported, not fatal: some layers may drop by design
    row = json.loads(out)["results"][0]
    assert row["lost"] == row["expected"] // 10 and row["duplicated"] == 0


def test_a_network_layer_run_in_separate_processes_loses_local_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Without --in-process, a memory layer's consumer process never sees what the
    # producer process sent: everything is lost, and the row says why.
    code, out = run_cli(
        capsys,
        *("--quick", "--messages", "20", "--idle-timeout", "0.3", "--workload", "throughput"),
        *("--layer", "channels.layers.InMemoryChannelLayer", "--json", "-"),
    )
    row = json.loads(out)["results"][0]
    assert code == EXIT_OK and row["lost"] == 20
    assert any("--in-process" in note for note in row["notes"])


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_channels_redis_across_processes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(
        capsys,
        *("--quick", "--workload", "throughput", "--workload", "rpc", "--json", "-"),
        *("--layer", "channels_redis.core.RedisChannelLayer"),
        *("--config", '{"hosts": ["redis://127.0.0.1:6379/0"]}'),
    )
    assert code == EXIT_OK
    doc = json.loads(out)
    assert doc["layers"][0]["in_process"] is False
    for row in doc["results"]:
        assert row["lost"] == 0 and row["duplicated"] == 0 and row["rate"] > 0


def test_python_dash_m_bench() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--workload", "rpc", "--json", "-"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar when stdout carries the JSON
    (row,) = json.loads(proc.stdout)["results"]
    assert row["workload"] == "rpc" and row["delivered"] == row["expected"]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["--config", "{}"],  # --config before any --layer
        ["--layer", "memory://", "--config", "[1]"],
        ["--layer", "ftp://example.com"],
        ["--workload", "nope"],
    ):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    ("text", "factory", "config", "in_process"),
    [
        ("memory://", MEMORY_CLASS, {}, True),
        ("redis://127.0.0.1:6379/0", REDIS_CLASS, {"hosts": ["redis://127.0.0.1:6379/0"]}, False),
        ("rediss://h:1/0", REDIS_CLASS, {"hosts": ["rediss://h:1/0"]}, False),
        ("unix:///tmp/r.sock", REDIS_CLASS, {"hosts": ["unix:///tmp/r.sock"]}, False),
        ("postgres://u@h/db", POSTGRES_CLASS, {"dsn": "postgres://u@h/db"}, False),
        ("postgresql://u@h/db", POSTGRES_CLASS, {"dsn": "postgresql://u@h/db"}, False),
        ("amqp://guest:guest@h/", AMQP_CLASS, {"url": "amqp://guest:guest@h/"}, False),
        ("pkg.mod.Layer", "pkg.mod.Layer", {}, False),
        ("pkg.mod:Layer", "pkg.mod.Layer", {}, False),
    ],
)
def test_parse_target(text: str, factory: str, config: dict[str, Any], in_process: bool) -> None:
    target = parse_target(text)
    assert (target.factory, target.config, target.in_process) == (factory, config, in_process)
    assert "guest:guest" not in target.label


def test_parse_target_rejects_garbage() -> None:
    for text in ("nodots", "bad path.Layer", "gopher://x"):
        with pytest.raises(TargetError):
            parse_target(text)


def test_redact_and_prefix_detection() -> None:
    assert redact("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    from channels_redis.core import RedisChannelLayer

    assert accepts_prefix(RedisChannelLayer)
    assert accepts_prefix(load_factory(MEMORY_CLASS))  # **config forwarded to BaseLayer
    assert not accepts_prefix(ChannelsMemoryLayer)  # takes **kwargs, no prefix of its own


class ScriptedLayer:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages

    async def receive(self, channel: str) -> dict[str, Any]:
        return self.messages.pop(0)


async def test_drain_counts_duplicates_and_foreign_messages() -> None:
    script: list[dict[str, Any]] = [
        {"r": 1, "s": 0, "t": 0.0},
        {"r": 2, "s": 1, "t": 0.0},  # another run's leftover
        {"r": 1, "s": 0, "t": 0.0},  # duplicate
        {"r": 1, "s": 9, "t": 0.0},  # out of this channel's range: misrouted
        {"type": "no tags"},
        {"r": 1, "s": 1, "t": 0.0},
    ]
    tally = Tally(run_id=1)
    await drain(ScriptedLayer(script), "c", bytearray(2), 0, 2, tally, False)
    assert (tally.unique, tally.duplicated, tally.stale, tally.received) == (2, 1, 3, 6)


def test_percentiles_and_median_aggregation() -> None:
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    pct = percentiles([i / 1000 for i in range(1, 101)])
    assert (pct["p50"], pct["p90"], pct["p99"]) == pytest.approx((50, 90, 99))
    runs = [
        Measurement("L", "rpc", "rt/s", rate=r, p50=1.0, expected=10, delivered=10)
        for r in (1.0, 5.0, 3.0)
    ]
    runs.append(Measurement("L", "rpc", "rt/s", error="boom", stage="run"))
    (row,) = aggregate(runs)
    assert row.rate == 3.0 and row.failed_runs == 1 and row.expected == 30
    assert "1 of 4 runs failed" in row.notes[0]
    assert "| L | rpc | 3 rt/s |" in markdown([row])


def test_progress_bar_draws_and_clears() -> None:
    stream = io.StringIO()
    progress = Progress(2, stream, enabled=True)
    progress.start("memory:// rpc #1")
    progress.finish_one()
    progress.close()
    text = stream.getvalue()
    assert "1/2 memory:// rpc #1" in text and "#" * 12 in text
    quiet = io.StringIO()
    Progress(2, quiet, enabled=False).start("x")
    assert quiet.getvalue() == ""
