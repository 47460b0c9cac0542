"""The soak harness (``python -m bench soak``): a short soak of every backend, under faults
on the networked ones, must count no duplicate and no loss it cannot explain, recover from
every fault, keep each process's memory and connections within the margins, and write a
report with every field; and the harness must fail a layer that duplicates or loses.

The counting itself (causes of loss, churning members, recovery times) is checked on
made-up worker reports, without servers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from bench.soak import cli
from bench.soak.account import IN, MAYBE, OUT, Membership, tally
from bench.soak.faults import named_config, with_query
from bench.soak.plan import ERROR, FULL, OK, SoakParams
from bench.soak.resources import sample
from bench.soak.run import (
    EXIT_CONTRACT,
    EXIT_DUPLICATES,
    EXIT_OK,
    Options,
    schedule,
    server_ports,
    settle,
)
from layers.memory import InMemoryChannelLayer
from tests.backends import AMQP_URL, REDIS_URL, _postgres_dsn, backend

pytestmark = [pytest.mark.xdist_group("soak"), pytest.mark.timeout(150)]

HERE = __name__  # spawned workers import the misbehaving layers below by this name

#: Per backend: its URL, the soak's seconds and its fault options: faults every 2-2.5 s
#: after a 2 s warm-up, none in the last 3 s; Redis restarts its private server too (4 s
#: kept free at the end); a RabbitMQ kill takes rabbitmqctl about 5 s (8 s kept free), so
#: that soak is longer, for one kill and its recovery.
CASES: dict[str, tuple[Any, float, list[str]]] = {
    "memory": (lambda: "memory://", 6, []),
    "redis": (lambda: REDIS_URL, 10, ["--faults", "--restart", "--fault-every", "2"]),
    "postgres": (_postgres_dsn, 9, ["--faults", "--fault-every", "2.5"]),
    "amqp": (lambda: AMQP_URL, 13, ["--faults", "--fault-every", "2.5"]),
}


def soak(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "soak.json"
    code = cli.main([*args, "--json", str(report), "--no-progress"])
    document = json.loads(report.read_text())
    return code, document, document["results"][0].get("error") or ""


@pytest.mark.parametrize("name", list(CASES))
def test_short_soak(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backend(name)  # skips (fails in CI) when the server is missing
    url, seconds, faults = CASES[name]
    if "--restart" in faults and shutil.which("redis-server") is None:
        pytest.skip("--restart needs redis-server on PATH")
    code, document, error = soak(
        tmp_path, "--layer", url(), "--duration", str(seconds), *faults, "--plot",
        str(tmp_path / "soak.png"),
    )  # fmt: skip
    assert not error, error
    result = document["results"][0]
    counts, lost = result["counts"], result["lost"]
    assert code == EXIT_OK, (result["verdict"], capsys.readouterr().out)
    assert counts["duplicated"] == 0
    assert lost["unexplained"] == 0 and result["unrecovered"] == 0
    assert counts["delivered"] > 0.9 * counts["expected"] > 1000
    # Every kind of traffic happened: ChannelFull at senders, drops at a full member,
    # cancelled receives, members joining and leaving.
    assert counts["channel_full"] > 0 and lost["capacity"] > 0
    assert counts["cancelled"] > 0 and counts["churn_ops"] > 0
    assert set(lost) == {"expiry", "capacity", "fault", "unexplained"}
    for key in ("prefix", "processes", "faults", "longest_recovery", "throughput", "verdict"):
        assert key in result
    processes = result["processes"]
    assert len(processes) == (1 if name == "memory" else 3)
    for proc in processes:
        start, end = proc["start"], proc["end"]
        assert end["rss_mb"] - start["rss_mb"] <= Options().rss_margin
        assert end["connections"] <= start["connections"] + Options().conn_margin
        assert (start["connections"] > 0) == (name != "memory")
    if name == "memory":
        assert result["faults"] == [] and result["longest_recovery"] is None
    else:
        assert result["faults"], "no fault was injected"
        for fault in result["faults"]:
            assert fault["error"] is None, fault
            assert fault["kind"] == "restart" or fault["dropped"] > 0, fault
            assert fault["recovery"] and all(r is not None for r in fault["recovery"].values())
        assert result["longest_recovery"]["seconds"] < 10
    if "--restart" in faults:
        assert {f["kind"] for f in result["faults"]} == {"kill", "restart"}
        assert result["private_server"] != url()
    assert (tmp_path / "soak.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "| layer |" in table and "| ok |" in table


class DuplicatingLayer(InMemoryChannelLayer):
    """Delivers every 40th message twice (the copy is marked, so it is not copied again)."""

    async def receive(self, channel: str) -> Any:
        message = await super().receive(channel)
        if message.get("s", 0) % 40 == 7 and not message.get("copy"):
            await super().send(channel, {**message, "copy": True})
        return message


class LossyLayer(InMemoryChannelLayer):
    """Silently drops every 25th message sent to a normal channel."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if "!" not in channel and message.get("s", 0) % 25 == 3:
            return
        await super().send(channel, message)


@pytest.mark.parametrize(
    ("layer", "status"), [("DuplicatingLayer", EXIT_DUPLICATES), ("LossyLayer", EXIT_CONTRACT)]
)
def test_a_misbehaving_layer_fails(layer: str, status: int, tmp_path: Path) -> None:
    code, document, error = soak(
        tmp_path, "--layer", f"{HERE}.{layer}", "--in-process", "--duration", "3"
    )
    assert not error, error
    result = document["results"][0]
    assert code == status, result["verdict"]
    if status == EXIT_DUPLICATES:
        assert result["counts"]["duplicated"] > 0
    else:
        assert result["lost"]["unexplained"] > 0 and result["counts"]["duplicated"] == 0


def test_faults_need_a_networked_layer(tmp_path: Path) -> None:
    code, _, error = soak(tmp_path, "--layer", "memory://", "--faults", "--duration", "1")
    assert code == 3 and "networked" in error


# -- the counting, on made-up reports -------------------------------------------------------


def test_membership_of_a_churning_member() -> None:
    events = [(1.0, 1.1, "add", True), (2.0, 2.1, "discard", True), (3.0, 3.1, "add", False)]
    member = Membership(events, stable=False)
    assert member.during(0.5, 0.6) == OUT  # before its first group_add
    assert member.during(1.05, 1.2) == MAYBE  # overlaps the group_add
    assert member.during(1.2, 1.9) == IN
    assert member.during(1.9, 2.05) == MAYBE
    assert member.during(2.2, 2.9) == OUT
    assert member.during(3.2, 3.5) == MAYBE  # the last group_add raised: in or out
    assert Membership([], stable=True).during(0, 1) == IN


def _node(index: int, sent: dict[str, Any], books: list[dict[str, Any]]) -> dict[str, Any]:
    first = [0.05 * i + 0.01 for i in range(100)]  # each bucket delivered 10 ms after it
    return {
        "node": index,
        "sent": sent,
        "books": books,
        "series": {"normal": {"count": [1] * 100, "first": first, "late": 0, "oldest": 0.01}},
        "pauses": [(2.0, 4.0)],
        "cancelled": 5,
        "foreign": 0,
        "misrouted": 0,
        "errors": 0,
        "error": None,
    }


def test_tally_counts_each_message_once_and_names_causes() -> None:
    params = SoakParams(expiry=1.0)
    times = [0.5, 1.5, 2.5, 3.5, 6.0, 7.0]
    status = bytes([OK, OK, OK, FULL, OK, ERROR])
    sent = {
        "work": {"status": status, "times": times, "ends": []},
        "lag": {"status": bytes([OK, OK]), "times": [0.1, 1.5], "ends": []},
    }
    books = [
        # two receivers of "work": seq 0 in both (a duplicate), 1 nowhere, 2 once
        {"dest": "work", "path": "normal", "kind": "", "seen": {0: bytes([1, 0, 1])}, "events": []},
        {
            "dest": "work",
            "path": "normal",
            "kind": "",
            "seen": {0: bytes([1, 0, 0, 0, 0, 1])},
            "events": [],
        },
        {"dest": "lag", "path": "lag", "kind": "", "seen": {}, "events": []},
    ]
    faults = [{"kind": "kill", "start": 1.2, "end": 1.4, "dropped": 3, "error": None}]
    result = tally([_node(0, sent, books)], faults, params, t0=0.0, t_end=10.0, run_end=12.0)
    counts, lost = result["counts"], result["lost"]
    assert counts["duplicated"] == 1 and result["duplicated_by_path"] == {"normal": 1}
    assert counts["channel_full"] == 1 and counts["send_errors"] == 1
    assert counts["uncertain_delivered"] == 1  # the send that raised arrived anyway
    # The fault window: 1 s before the fault to 0.5 s after the paths delivered again.
    assert result["windows"] == [(pytest.approx(0.2), pytest.approx(1.91))]
    assert result["longest_recovery"]["seconds"] == pytest.approx(0.01)
    # work #1 was sent in the fault window, lag #1 expired in the reader's pause (2-4 s);
    # work #4 (sent at 6.0) and lag #0 (sent at 0.1, due at 1.1) have no cause.
    assert lost == {"expiry": 1, "capacity": 0, "fault": 1, "unexplained": 2}
    assert result["lost_by_path"] == {
        "normal": {"fault": 1, "unexplained": 1},
        "lag": {"expiry": 1, "unexplained": 1},
    }


def test_fault_schedule_leaves_time_to_recover() -> None:
    params = SoakParams(duration=20.0, warm=2.0)
    assert schedule(params, Options(), "redis") == []
    kills = schedule(params, Options(faults=True, fault_every=5.0), "redis")
    assert kills == [(7.0, "kill"), (12.0, "kill"), (17.0, "kill")]
    both = schedule(params, Options(faults=True, restart=True, fault_every=5.0), "redis")
    assert [kind for _, kind in both] == ["kill", "restart", "kill"][: len(both)]
    assert settle(Options(faults=True), "amqp") > settle(Options(faults=True), "redis")
    assert settle(Options(faults=True, settle=1.0), "amqp") == 1.0


def test_sockets_are_counted_from_proc() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        before = sample(os.getpid(), frozenset({port}))
        with socket.create_connection(("127.0.0.1", port)):
            during = sample(os.getpid(), frozenset({port}))
    assert during.connections == (before.connections or 0) + 1
    assert during.states.get("ESTABLISHED", 0) >= 1
    assert during.rss_mb is not None and during.rss_mb > 0


def test_layer_connections_are_named_and_found() -> None:
    config = named_config("redis", {"hosts": ["redis://127.0.0.1:6380/0"]}, "soakab")
    assert config["hosts"] == [{"address": "redis://127.0.0.1:6380/0", "client_name": "soakab"}]
    assert server_ports("redis", config) == {6380}
    # urlunsplit would make "postgresql:?..." of a URL without a host
    assert with_query("postgresql://", application_name="soakab") == (
        "postgresql://?application_name=soakab"
    )
    dsn = named_config("postgres", {"dsn": "postgresql://u@h/db?sslmode=require"}, "soakab")
    assert dsn["dsn"] == "postgresql://u@h/db?sslmode=require&application_name=soakab"
    assert server_ports("postgres", dsn) == {5432}
    assert server_ports("postgres", {"dsn": "postgresql:///db"}) is None  # a Unix socket
    assert server_ports("amqp", {"url": "amqps://h/%2F"}) == {5671}
    assert server_ports("memory", {}) == frozenset()
