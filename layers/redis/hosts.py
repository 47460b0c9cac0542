"""Turn the ``hosts`` setting into one :class:`ShardSpec` per server.

Accepted forms, one per shard:

- ``"redis://[:password@]host[:port][/db]"``, ``"rediss://..."`` (TLS; redis-py's ``ssl_*``
  options may be given as URL query arguments, e.g. ``?ssl_ca_certs=/path/ca.pem``),
  ``"unix:///path/to/redis.sock[?db=N]"``;
- ``("host", port)`` (a list of two works too, as JSON settings produce);
- a dict of redis-py connection keywords (``host``, ``port``, ``db``, ``password``,
  ``ssl=True``, ``ssl_ca_certs`` ...), optionally with ``"address": <URL>`` for the rest;
- a Sentinel dict: ``{"sentinels": [("host", port), ...], "master_name": "mymaster",
  "sentinel_kwargs": {...}, ...}``; the other keys go to the master connections.

Or, as the only entry, a Redis Cluster named by some of its nodes:
``{"cluster": ["redis://h1:7000", "rediss://h2:7000", ("h3", 7000)], ...options}``; the
other keys (``password``, ``username``, ``ssl_*``...) go to the connections to every node
(:class:`ClusterSpec`). A cluster beside other entries is refused: the layer cannot both
shard by itself and let the cluster place keys.

Every connection is made with redis-py's own retry turned off: a retried script after a
lost reply could deliver a message twice, so the layer decides itself what may be retried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from layers.errors import ConfigurationError

DEFAULT_HOST = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class ShardSpec:
    """How to reach one shard: a printable address and a pool factory (one pool per loop)."""

    address: str
    make_pool: Callable[[dict[str, Any]], ConnectionPool]


@dataclass(frozen=True)
class ClusterSpec:
    """A Redis Cluster: the nodes to ask for the slot map, and how to reach any node."""

    seeds: tuple[tuple[str, int], ...]
    options: tuple[tuple[str, Any], ...]

    @property
    def address(self) -> str:
        return "cluster " + ",".join(f"{host}:{port}" for host, port in self.seeds)

    def node(self, host: str, port: int) -> ShardSpec:
        """How to reach one node (a seed, or a master the slot map names)."""
        return _from_kwargs({**dict(self.options), "host": host, "port": port})


def parse_layout(hosts: Any) -> list[ShardSpec] | ClusterSpec:
    """``hosts`` as plain shards, or as one cluster."""
    if isinstance(hosts, Mapping) and "cluster" in hosts:
        return _from_cluster(dict(hosts))
    if isinstance(hosts, list | tuple):
        clusters = sum(1 for host in hosts if isinstance(host, Mapping) and "cluster" in host)
        if clusters > 1:
            raise ConfigurationError(
                f"hosts names {clusters} Redis Clusters: one layer uses one cluster"
            )
        if clusters and len(hosts) > 1:
            raise ConfigurationError(
                f"hosts names a Redis Cluster beside {len(hosts) - 1} other entr"
                f"{'y' if len(hosts) == 2 else 'ies'}: a cluster must be the only hosts "
                "entry (the cluster places keys itself; use one cluster or plain servers)"
            )
        if clusters:
            return _from_cluster(dict(hosts[0]))
    return parse_hosts(hosts)


def _from_cluster(options: dict[str, Any]) -> ClusterSpec:
    nodes = options.pop("cluster")
    if isinstance(nodes, str):
        nodes = [nodes]
    if not isinstance(nodes, Sequence) or not nodes:
        raise ConfigurationError(
            f"'cluster' must list some nodes of the cluster, like "
            f"['redis://10.0.0.1:7000'], not {nodes!r}"
        )
    for key in ("address", "host", "port", "path", "sentinels", "db"):
        if key in options and not (key == "db" and options[key] in (0, None)):
            raise ConfigurationError(
                f"a cluster hosts entry cannot have {key!r}: name its nodes in 'cluster'"
            )
    seeds: list[tuple[str, int]] = []
    for node in nodes:
        if isinstance(node, str):
            parts = urlsplit(node)
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ConfigurationError(
                    f"cluster node {node!r} must be a redis:// or rediss:// URL with a host"
                )
            if parts.path not in ("", "/", "/0"):
                raise ConfigurationError(
                    f"cluster node {node!r} names a database: a cluster has only db 0"
                )
            if parts.scheme == "rediss":
                options.setdefault("ssl", True)
            if parts.password is not None:
                options.setdefault("password", parts.password)
            if parts.username:
                options.setdefault("username", parts.username)
            seeds.append((parts.hostname, parts.port or 6379))
        elif (
            isinstance(node, Sequence)
            and len(node) == 2
            and isinstance(node[0], str)
            and isinstance(node[1], int)
        ):
            seeds.append((node[0], node[1]))
        else:
            raise ConfigurationError(
                f"cannot read cluster node {node!r}: use a redis:// URL or a (host, port) pair"
            )
    return ClusterSpec(tuple(seeds), tuple(sorted(options.items())))


def parse_hosts(hosts: Any) -> list[ShardSpec]:
    # An empty list means the default server, as it does for channels_redis.
    if hosts is None or (isinstance(hosts, list | tuple) and len(hosts) == 0):
        hosts = [DEFAULT_HOST]
    if isinstance(hosts, str | Mapping) or (
        isinstance(hosts, tuple) and len(hosts) == 2 and isinstance(hosts[1], int)
    ):
        hosts = [hosts]
    if not isinstance(hosts, Sequence) or not hosts:
        raise ConfigurationError(f"hosts must be a non-empty list of servers, not {hosts!r}")
    return [_parse_host(host) for host in hosts]


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _parse_host(host: Any) -> ShardSpec:
    if isinstance(host, str):
        return _from_url(host, {})
    if isinstance(host, Mapping):
        options = dict(host)
        if "cluster" in options:
            raise ConfigurationError(
                "a Redis Cluster entry ('cluster': [...]) must be the only hosts entry"
            )
        if "sentinels" in options:
            return _from_sentinel(options)
        address = options.pop("address", None)
        if isinstance(address, str):
            return _from_url(address, options)
        if address is not None:
            raise ConfigurationError(f"hosts entry 'address' must be a URL, not {address!r}")
        return _from_kwargs(options)
    if (
        isinstance(host, Sequence)
        and len(host) == 2
        and isinstance(host[0], str)
        and isinstance(host[1], int)
    ):
        return _from_kwargs({"host": host[0], "port": host[1]})
    raise ConfigurationError(
        f"cannot read hosts entry {host!r}: use a redis://, rediss:// or unix:// URL, "
        "a (host, port) pair, a dict of redis-py options or a Sentinel dict"
    )


def _from_url(url: str, options: dict[str, Any]) -> ShardSpec:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"hosts URL {url!r} must start with redis://, rediss:// or unix://"
        )
    if parts.scheme == "unix":
        address = f"unix:{parts.path}"
    else:
        address = f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}"
        if parts.path not in ("", "/"):
            address += parts.path

    def make_pool(defaults: dict[str, Any]) -> ConnectionPool:
        if parts.scheme == "unix":
            defaults = _without_tcp_options(defaults)
        return ConnectionPool.from_url(url, **{**defaults, **options, "retry": _no_retry()})

    return ShardSpec(address, make_pool)


def _from_kwargs(options: dict[str, Any]) -> ShardSpec:
    if "path" in options:
        address = f"unix:{options['path']}"
    else:
        address = f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
    if options.get("db"):
        address += f"/{options['db']}"

    def make_pool(defaults: dict[str, Any]) -> ConnectionPool:
        if "path" in options:
            defaults = _without_tcp_options(defaults)
        kwargs = {**defaults, **options, "retry": _no_retry()}
        if kwargs.pop("ssl", False):
            kwargs["connection_class"] = SSLConnection
        if "path" in kwargs:
            from redis.asyncio.connection import UnixDomainSocketConnection

            kwargs["connection_class"] = UnixDomainSocketConnection
        return ConnectionPool(**kwargs)

    return ShardSpec(address, make_pool)


def _without_tcp_options(defaults: dict[str, Any]) -> dict[str, Any]:
    # redis-py's unix socket connections reject TCP-only keywords.
    return {key: value for key, value in defaults.items() if key != "socket_keepalive"}


def _from_sentinel(options: dict[str, Any]) -> ShardSpec:
    sentinels = [tuple(item) for item in options.pop("sentinels")]
    master_name = options.pop("master_name", None)
    if not isinstance(master_name, str) or not sentinels:
        raise ConfigurationError(
            "a Sentinel hosts entry needs 'sentinels': [(host, port), ...] and 'master_name'"
        )
    sentinel_kwargs = dict(options.pop("sentinel_kwargs", None) or {})
    where = ",".join(f"{host}:{port}" for host, port in sentinels)
    address = f"sentinel master {master_name!r} via {where}"

    def make_pool(defaults: dict[str, Any]) -> ConnectionPool:
        kwargs = {**defaults, **options, "retry": _no_retry()}
        probe = {
            "socket_timeout": kwargs.get("socket_timeout"),
            "socket_connect_timeout": kwargs.get("socket_connect_timeout"),
            **sentinel_kwargs,
            "retry": _no_retry(),
        }
        manager = Sentinel(sentinels, sentinel_kwargs=probe, **kwargs)  # type: ignore[no-untyped-call]
        return SentinelConnectionPool(master_name, manager, **kwargs)  # type: ignore[no-untyped-call]

    return ShardSpec(address, make_pool)
