"""The PostgreSQL channel layer (extra ``[postgres]``)."""

from layers.postgres.layer import PostgresChannelLayer

__all__ = ["PostgresChannelLayer"]
