"""Redis channel layer: ``layers.redis.RedisChannelLayer`` (install the ``[redis]`` extra).

Layout (every key under the layer's ``prefix``):

- ``<prefix>:c:<channel>``: a list per ordinary channel;
- ``<prefix>:c:<name>.<instance>!``: one list per layer instance (and ``new_channel``
  prefix) for all its process-local channels;
- ``<prefix>:g:<group>``: a sorted set of member channels scored by join time (ms, server
  clock).

Entries are ``b"<expires_ms>:<channel>[,<channel>...]:<payload>"``; expiry is on the server
clock. A channel lives on shard ``jump_hash(blake2b(non_local_name)) % len(hosts)`` and a
group on the shard of its name; see :mod:`layers.redis.sharding` for what adding hosts does.
"""

from layers.redis.layer import RedisChannelLayer

__all__ = ["RedisChannelLayer"]
