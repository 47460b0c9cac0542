"""How a ``{"cluster": [...]}`` hosts entry is read (no server needed), and the pieces of
cluster mode that can be checked without a cluster: hash-tagged keys and the reading of
redirections. Traffic on a real cluster is in test_cluster.py."""

from __future__ import annotations

from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, ResponseError, TryAgainError

from layers.errors import ConfigurationError
from layers.redis import RedisChannelLayer
from layers.redis.cluster import _redirection
from layers.redis.hosts import ClusterSpec, parse_layout


def test_cluster_entry_names_its_nodes_and_options() -> None:
    spec = parse_layout(
        [{"cluster": ["rediss://:secret@10.0.0.1:7000", ("10.0.0.2", 7001)], "ssl_ca_certs": "ca"}]
    )
    assert isinstance(spec, ClusterSpec)
    assert spec.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert dict(spec.options) == {"ssl": True, "password": "secret", "ssl_ca_certs": "ca"}
    assert spec.node("10.0.0.3", 7002).address == "10.0.0.3:7002"


def test_a_bare_cluster_dict_works_too() -> None:
    assert isinstance(parse_layout({"cluster": ["redis://h:1"]}), ClusterSpec)


@pytest.mark.parametrize(
    ("hosts", "match"),
    [
        ([{"cluster": ["redis://a:1"]}, "redis://b:2"], "beside 1 other entry"),
        ([{"cluster": ["redis://a:1"]}, {"cluster": ["redis://b:2"]}], "2 Redis Clusters"),
        (["redis://b:2", {"cluster": ["redis://a:1"]}], "only hosts entry"),
        ([{"cluster": []}], "must list some nodes"),
        ([{"cluster": ["redis://a:1/3"]}], "only db 0"),
        ([{"cluster": ["unix:///tmp/s"]}], "redis:// or rediss://"),
        ([{"cluster": [42]}], "cannot read cluster node"),
        ([{"cluster": ["redis://a:1"], "host": "x"}], "cannot have 'host'"),
    ],
)
def test_bad_cluster_entries_are_refused(hosts: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RedisChannelLayer(hosts=hosts)


def test_plain_hosts_keep_their_layout() -> None:
    layer = RedisChannelLayer(hosts=["redis://a:1", "redis://b:2"], prefix="p")
    assert layer.cluster is None and len(layer.shards) == 2
    assert layer._route("chat")[1] == "p:c:chat"
    assert layer._group_route("room")[1] == "p:g:room"


def test_cluster_keys_carry_hash_tags() -> None:
    layer = RedisChannelLayer(hosts=[{"cluster": ["redis://a:1"]}], prefix="p")
    assert layer.shards == []
    slot, key = layer._route("chat")
    assert key == "p:c:{chat}" and slot == key_slot(b"chat")
    local = f"specific.{layer.client_prefix}!x"
    assert layer._route(local)[1] == f"p:c:{{specific.{layer.client_prefix}!}}"
    assert layer._route(local) == layer._route(f"specific.{layer.client_prefix}!y")
    assert layer._group_route("room") == (key_slot(b"room"), "p:g:{room}")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MovedError("3999 10.0.0.2:7000"), ("MOVED", (3999, ("10.0.0.2", 7000)))),
        # redis-py 5.0's plain connections leave the code in a ResponseError's text.
        (ResponseError("MOVED 3999 10.0.0.2:7000"), ("MOVED", (3999, ("10.0.0.2", 7000)))),
        (AskError("12 h:1"), ("ASK", (12, ("h", 1)))),
        (ResponseError("ASK 12 h:1"), ("ASK", (12, ("h", 1)))),
        (TryAgainError("Multiple keys request during rehashing"), ("TRYAGAIN", None)),
        (ResponseError("CLUSTERDOWN The cluster is down"), ("CLUSTERDOWN", None)),
        (ResponseError("OOM command not allowed"), ("OOM", None)),
    ],
)
def test_redirections_are_read(error: BaseException, expected: Any) -> None:
    assert _redirection(error) == expected
